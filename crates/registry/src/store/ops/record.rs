//! Recording a build into a version.
//!
//! Rules: a succeeded build is immutable (recording it again is a conflict); a failed or
//! cancelled build is replaced by the next record of the same name; a complete version accepts
//! no new builds; the version becomes complete when every expected build has succeeded, and
//! then `latest` moves to it (unless it is revoked).

use crate::error::RegistryError;
use crate::model::{LATEST, RecordBuild, Recorded, VersionRef};
use crate::store::ops::common::{
    self, bucket, descendants, missing_builds, move_channel, resolve_version,
};
use crate::store::sql::{Tx, Value};
use crate::timestamp::Timestamp;

/// The actor name kiln uses for the channel moves it makes itself.
pub(crate) const KILN_ACTOR: &str = "kiln";

pub(crate) async fn record<T: Tx>(
    tx: &mut T,
    input: &RecordBuild,
    provenance: &(String, String),
    labels_json: &str,
    error_text: Option<&str>,
    now: Timestamp,
) -> Result<Recorded, RegistryError> {
    let (prov_text, prov_digest) = provenance;
    let at = now.as_millis();
    tx.execute(
        "INSERT INTO buckets (name, description, created_at, updated_at, version_count) \
         VALUES ($1, $2, $3, $3, 0) ON CONFLICT (name) DO NOTHING",
        &[
            Value::Text(&input.bucket),
            Value::Text(input.description.as_deref().unwrap_or("")),
            Value::Int(at),
        ],
    )
    .await?;
    let b = bucket(tx, &input.bucket, true).await?;
    match &input.description {
        Some(d) if *d != b.description => {
            tx.execute(
                "UPDATE buckets SET description = $1, updated_at = $2 WHERE id = $3",
                &[Value::Text(d), Value::Int(at), Value::Int(b.id)],
            )
            .await?;
        }
        _ => {
            tx.execute(
                "UPDATE buckets SET updated_at = $1 WHERE id = $2",
                &[Value::Int(at), Value::Int(b.id)],
            )
            .await?;
        }
    }

    let fp = input.fingerprint.as_str();
    let existing = tx
        .query_opt(
            "SELECT id, completed_at FROM versions WHERE bucket_id = $1 AND fingerprint = $2",
            &[Value::Int(b.id), Value::Text(fp)],
        )
        .await?;
    let (version_id, completed) = match existing {
        Some(r) => (r.int(0)?, r.opt_int(1)?.is_some()),
        None => {
            let id = tx
                .query_one(
                    "INSERT INTO versions (bucket_id, fingerprint, created_at, completed_at) \
                     VALUES ($1, $2, $3, NULL) RETURNING id",
                    &[Value::Int(b.id), Value::Text(fp), Value::Int(at)],
                )
                .await?
                .int(0)?;
            tx.execute(
                "UPDATE buckets SET version_count = version_count + 1 WHERE id = $1",
                &[Value::Int(b.id)],
            )
            .await?;
            (id, false)
        }
    };

    let expected = input.all_expected();
    if completed {
        let have: Vec<String> = tx
            .query(
                "SELECT name FROM expected_builds WHERE version_id = $1 ORDER BY name",
                &[Value::Int(version_id)],
            )
            .await?
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<_, _>>()?;
        if let Some(extra) = expected.iter().find(|e| !have.contains(e)) {
            return Err(RegistryError::conflict(format!(
                "version {fp} of {:?} is complete (builds {}); build {extra:?} cannot join it: \
                 record it under a new fingerprint (unset KILN_BUILD_FINGERPRINT)",
                input.bucket,
                have.join(", ")
            )));
        }
    } else {
        for name in &expected {
            tx.execute(
                "INSERT INTO expected_builds (version_id, name) VALUES ($1, $2) \
                 ON CONFLICT (version_id, name) DO NOTHING",
                &[Value::Int(version_id), Value::Text(name)],
            )
            .await?;
        }
    }

    let name = input.build.name.as_str();
    if let Some(r) = tx
        .query_opt(
            "SELECT id, status FROM builds WHERE version_id = $1 AND name = $2",
            &[Value::Int(version_id), Value::Text(name)],
        )
        .await?
    {
        let old_id = r.int(0)?;
        if r.text(1)? == "succeeded" {
            return Err(RegistryError::conflict(format!(
                "build {name:?} of {}/{fp} already succeeded and is immutable; \
                 record the rebuild under a new fingerprint (unset KILN_BUILD_FINGERPRINT)",
                input.bucket
            )));
        }
        for sql in [
            "DELETE FROM parents WHERE build_id = $1",
            "DELETE FROM artifacts WHERE build_id = $1",
            "DELETE FROM builds WHERE id = $1",
        ] {
            tx.execute(sql, &[Value::Int(old_id)]).await?;
        }
    }

    tx.execute(
        "INSERT INTO provenances (version_id, digest, document) VALUES ($1, $2, $3) \
         ON CONFLICT (version_id, digest) DO NOTHING",
        &[
            Value::Int(version_id),
            Value::Text(prov_digest),
            Value::Text(prov_text),
        ],
    )
    .await?;
    let prov_id = tx
        .query_one(
            "SELECT id FROM provenances WHERE version_id = $1 AND digest = $2",
            &[Value::Int(version_id), Value::Text(prov_digest)],
        )
        .await?
        .int(0)?;

    let build_id = tx
        .query_one(
            "INSERT INTO builds (version_id, name, status, labels, error, started_at, finished_at, \
             recorded_at, provenance_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            &[
                Value::Int(version_id),
                Value::Text(name),
                Value::Text(input.build.status.as_str()),
                Value::Text(labels_json),
                Value::OptText(error_text),
                Value::OptInt(input.build.started_at.map(Timestamp::as_millis)),
                Value::OptInt(input.build.finished_at.map(Timestamp::as_millis)),
                Value::Int(at),
                Value::Int(prov_id),
            ],
        )
        .await?
        .int(0)?;

    for a in &input.build.artifacts {
        let size = a.size.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
        tx.execute(
            "INSERT INTO artifacts (build_id, platform, region, external_id, sha256, size, path) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                Value::Int(build_id),
                Value::Text(a.platform.as_str()),
                Value::Text(&a.region),
                Value::Text(&a.external_id),
                Value::OptText(a.sha256.as_deref()),
                Value::OptInt(size),
                Value::OptText(a.path.as_deref()),
            ],
        )
        .await?;
    }

    if let Some(p) = &input.provenance.parent {
        let pb = bucket(tx, &p.bucket, false).await?;
        let pv = resolve_version(tx, &pb, &VersionRef::Fingerprint(p.fingerprint.clone())).await?;
        if pv.fingerprint != p.fingerprint {
            return Err(RegistryError::invalid(
                "provenance.parent.fingerprint",
                format!(
                    "{:?} is a prefix; record the parent's full fingerprint {}",
                    p.fingerprint, pv.fingerprint
                ),
            ));
        }
        if pv.id == version_id {
            return Err(RegistryError::invalid(
                "provenance.parent",
                "a version cannot be its own parent",
            ));
        }
        if descendants(tx, version_id)
            .await?
            .iter()
            .any(|(id, _)| *id == pv.id)
        {
            return Err(RegistryError::invalid(
                "provenance.parent",
                format!(
                    "{}/{} descends from {}/{fp}; parent links cannot form a cycle",
                    p.bucket, p.fingerprint, input.bucket
                ),
            ));
        }
        let found = tx
            .query_opt(
                "SELECT b.name FROM artifacts a JOIN builds b ON b.id = a.build_id \
                 WHERE b.version_id = $1 AND a.platform = $2 AND a.region = $3 AND a.external_id = $4",
                &[
                    Value::Int(pv.id),
                    Value::Text(p.platform.as_str()),
                    Value::Text(&p.region),
                    Value::Text(&p.external_id),
                ],
            )
            .await?;
        let parent_build = match found {
            Some(r) => r.text(0)?,
            None => {
                return Err(RegistryError::UnknownArtifact {
                    bucket: p.bucket.clone(),
                    fingerprint: p.fingerprint.clone(),
                    platform: p.platform.to_string(),
                    region: p.region.clone(),
                    available: available_artifacts(tx, pv.id).await?,
                });
            }
        };
        tx.execute(
            "INSERT INTO parents (build_id, child_version_id, parent_version_id, parent_build, channel, \
             platform, region, external_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                Value::Int(build_id),
                Value::Int(version_id),
                Value::Int(pv.id),
                Value::Text(&parent_build),
                Value::OptText(p.channel.as_deref()),
                Value::Text(p.platform.as_str()),
                Value::Text(&p.region),
                Value::Text(&p.external_id),
            ],
        )
        .await?;
    }

    let missing = missing_builds(tx, version_id).await?;
    let mut complete = completed;
    let mut latest_moved = false;
    if !completed && missing.is_empty() {
        tx.execute(
            "UPDATE versions SET completed_at = $1 WHERE id = $2",
            &[Value::Int(at), Value::Int(version_id)],
        )
        .await?;
        complete = true;
        let revoked = common::revocation_of(tx, version_id, now)
            .await?
            .is_some_and(|r| r.effective);
        if !revoked {
            let (_, changed) = move_channel(tx, b.id, LATEST, version_id, KILN_ACTOR, now).await?;
            latest_moved = changed;
        }
    }
    Ok(Recorded {
        bucket: input.bucket.clone(),
        fingerprint: fp.to_string(),
        build: name.to_string(),
        status: input.build.status,
        version_complete: complete,
        missing_builds: missing,
        latest_moved,
    })
}

/// `platform/region` pairs a version has, for error messages.
pub(crate) async fn available_artifacts<T: Tx>(
    tx: &mut T,
    version_id: i64,
) -> Result<Vec<String>, RegistryError> {
    let rows = tx
        .query(
            "SELECT DISTINCT a.platform, a.region FROM artifacts a JOIN builds b ON b.id = a.build_id \
             WHERE b.version_id = $1 ORDER BY a.platform, a.region",
            &[Value::Int(version_id)],
        )
        .await?;
    rows.iter()
        .map(|r| Ok(format!("{}/{}", r.text(0)?, r.text(1)?)))
        .collect()
}
