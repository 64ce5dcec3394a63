//! Read views: buckets, version pages, version details, channels, revocations, ancestry and
//! artifact resolution for chained builds.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::RegistryError;
use crate::model::{
    AncestorLink, Ancestry, Artifact, ArtifactQuery, BucketSummary, Build, BuildStatus,
    BuildSummary, ChannelInfo, ChannelMove, ChannelPointer, ChannelsView, ChildLink, Freshness,
    LATEST, ParentLink, Platform, ProvenanceRecord, ResolvedArtifact, RevocationRecord,
    VersionDetail, VersionKey, VersionPage, VersionRef, VersionSummary,
};
use crate::provenance::{ParentRef, Provenance};
use crate::store::ops::common::{
    BucketRow, MAX_DEPTH, VersionRow, bucket, channels_of, resolve_version, revocation_of,
    revocation_status,
};
use crate::store::ops::record::available_artifacts;
use crate::store::sql::{Row, Tx, Value, placeholders};
use crate::timestamp::Timestamp;

const MAX_CHILDREN: i64 = 500;

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn status(r: &Row, i: usize) -> Result<BuildStatus, RegistryError> {
    let s = r.text(i)?;
    BuildStatus::parse(&s).ok_or_else(|| RegistryError::Storage {
        backend: r.backend,
        operation: "reading a build",
        message: format!("unknown build status {s:?}"),
        transient: false,
    })
}

fn platform(r: &Row, i: usize) -> Result<Platform, RegistryError> {
    let s = r.text(i)?;
    s.parse::<Platform>().map_err(|_| RegistryError::Storage {
        backend: r.backend,
        operation: "reading an artifact",
        message: format!("unknown platform {s:?}"),
        transient: false,
    })
}

pub(crate) async fn buckets<T: Tx>(tx: &mut T) -> Result<Vec<BucketSummary>, RegistryError> {
    let rows = tx
        .query(
            "SELECT id, name, description, created_at, updated_at, version_count FROM buckets ORDER BY name",
            &[],
        )
        .await?;
    let mut channels: HashMap<i64, Vec<ChannelPointer>> = HashMap::new();
    for r in tx
        .query(
            "SELECT c.bucket_id, c.name, v.fingerprint FROM channels c \
             JOIN versions v ON v.id = c.version_id ORDER BY c.name",
            &[],
        )
        .await?
    {
        channels.entry(r.int(0)?).or_default().push(ChannelPointer {
            name: r.text(1)?,
            fingerprint: r.text(2)?,
        });
    }
    rows.iter()
        .map(|r| {
            let id = r.int(0)?;
            Ok(BucketSummary {
                name: r.text(1)?,
                description: r.text(2)?,
                created_at: ts(r.int(3)?),
                updated_at: ts(r.int(4)?),
                version_count: r.int(5)?,
                channels: channels.remove(&id).unwrap_or_default(),
            })
        })
        .collect()
}

pub(crate) async fn versions<T: Tx>(
    tx: &mut T,
    bucket_name: &str,
    limit: usize,
    before: Option<&str>,
    now: Timestamp,
) -> Result<VersionPage, RegistryError> {
    let b = bucket(tx, bucket_name, false).await?;
    let before_id = match before {
        Some(fp) => {
            resolve_version(tx, &b, &VersionRef::Fingerprint(fp.to_string()))
                .await?
                .id
        }
        None => i64::MAX,
    };
    let limit = i64::try_from(limit.clamp(1, crate::limits::MAX_PAGE)).unwrap_or(50);
    let rows = tx
        .query(
            "SELECT id, fingerprint, created_at, completed_at FROM versions \
             WHERE bucket_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            &[Value::Int(b.id), Value::Int(before_id), Value::Int(limit)],
        )
        .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.int(0)).collect::<Result<_, _>>()?;
    let mut builds: HashMap<i64, Vec<BuildSummary>> = HashMap::new();
    let mut counts: HashMap<i64, i64> = HashMap::new();
    if !ids.is_empty() {
        let params: Vec<Value<'_>> = ids.iter().map(|i| Value::Int(*i)).collect();
        let list = placeholders(1, ids.len());
        let sql = format!(
            "SELECT version_id, name, status FROM builds WHERE version_id IN {list} ORDER BY name"
        );
        for r in tx.query(&sql, &params).await? {
            builds.entry(r.int(0)?).or_default().push(BuildSummary {
                name: r.text(1)?,
                status: status(&r, 2)?,
            });
        }
        let sql = format!(
            "SELECT b.version_id, COUNT(*) FROM artifacts a JOIN builds b ON b.id = a.build_id \
             WHERE b.version_id IN {list} GROUP BY b.version_id"
        );
        for r in tx.query(&sql, &params).await? {
            counts.insert(r.int(0)?, r.int(1)?);
        }
    }
    let mut channels = channels_of(tx, &ids).await?;
    let mut revoked = revocation_status(tx, &ids, now).await?;
    let versions: Vec<VersionSummary> = rows
        .iter()
        .map(|r| {
            let id = r.int(0)?;
            let completed_at = r.opt_int(3)?.map(ts);
            Ok(VersionSummary {
                fingerprint: r.text(1)?,
                created_at: ts(r.int(2)?),
                completed_at,
                complete: completed_at.is_some(),
                builds: builds.remove(&id).unwrap_or_default(),
                artifact_count: counts.get(&id).copied().unwrap_or(0),
                channels: channels.remove(&id).unwrap_or_default(),
                revocation: revoked.remove(&id),
            })
        })
        .collect::<Result<_, RegistryError>>()?;
    let next_before = if i64::try_from(versions.len()).ok() == Some(limit) {
        versions.last().map(|v| v.fingerprint.clone())
    } else {
        None
    };
    Ok(VersionPage {
        bucket: b.name,
        description: b.description,
        version_count: b.version_count,
        versions,
        next_before,
    })
}

pub(crate) async fn version<T: Tx>(
    tx: &mut T,
    bucket_name: &str,
    r: &VersionRef,
    now: Timestamp,
) -> Result<VersionDetail, RegistryError> {
    let b = bucket(tx, bucket_name, false).await?;
    let v = resolve_version(tx, &b, r).await?;
    detail(tx, &b, &v, now).await
}

pub(crate) async fn detail<T: Tx>(
    tx: &mut T,
    b: &BucketRow,
    v: &VersionRow,
    now: Timestamp,
) -> Result<VersionDetail, RegistryError> {
    let id = Value::Int(v.id);
    // Expected builds and channels in one round trip.
    let mut expected = Vec::new();
    let mut channels = Vec::new();
    for r in tx
        .query(
            "SELECT 0, name FROM expected_builds WHERE version_id = $1 \
             UNION ALL SELECT 1, name FROM channels WHERE version_id = $1 ORDER BY 1, 2",
            &[id],
        )
        .await?
    {
        if r.int(0)? == 0 {
            expected.push(r.text(1)?);
        } else {
            channels.push(r.text(1)?);
        }
    }
    // Builds with their artifacts in one round trip (a build without artifacts has one row
    // of nulls).
    let rows = tx
        .query(
            "SELECT b.id, b.name, b.status, b.labels, b.error, b.started_at, b.finished_at, \
             b.recorded_at, p.digest, a.platform, a.region, a.external_id, a.sha256, a.size, a.path, \
             p.document FROM builds b LEFT JOIN provenances p ON p.id = b.provenance_id \
             LEFT JOIN artifacts a ON a.build_id = b.id \
             WHERE b.version_id = $1 ORDER BY b.name, a.id",
            &[id],
        )
        .await?;
    let mut builds: Vec<Build> = Vec::new();
    let mut provenance: Vec<ProvenanceRecord> = Vec::new();
    let mut last_build = None;
    for r in &rows {
        let build_id = r.int(0)?;
        if last_build != Some(build_id) {
            last_build = Some(build_id);
            let labels: BTreeMap<String, String> =
                serde_json::from_str(&r.text(3)?).map_err(|e| RegistryError::Storage {
                    backend: r.backend,
                    operation: "reading build labels",
                    message: e.to_string(),
                    transient: false,
                })?;
            builds.push(Build {
                name: r.text(1)?,
                status: status(r, 2)?,
                labels,
                error: r.opt_text(4)?,
                started_at: r.opt_int(5)?.map(ts),
                finished_at: r.opt_int(6)?.map(ts),
                recorded_at: ts(r.int(7)?),
                artifacts: Vec::new(),
                provenance_digest: r.opt_text(8)?,
            });
            let name = r.text(1)?;
            if let Some(digest) = r.opt_text(8)? {
                match provenance.iter_mut().find(|p| p.digest == digest) {
                    Some(p) => p.builds.push(name),
                    None => {
                        let document = Provenance::from_json(&r.text(15)?).map_err(|e| {
                            RegistryError::Storage {
                                backend: r.backend,
                                operation: "reading provenance",
                                message: e.to_string(),
                                transient: false,
                            }
                        })?;
                        provenance.push(ProvenanceRecord {
                            digest,
                            builds: vec![name],
                            document,
                        });
                    }
                }
            }
        }
        if r.opt_text(9)?.is_some()
            && let Some(b) = builds.last_mut()
        {
            b.artifacts.push(Artifact {
                platform: platform(r, 9)?,
                region: r.text(10)?,
                external_id: r.text(11)?,
                sha256: r.opt_text(12)?,
                size: r.opt_int(13)?.and_then(|s| u64::try_from(s).ok()),
                path: r.opt_text(14)?,
            });
        }
    }
    let revocation = revocation_of(tx, v.id, now).await?;
    let parents = parent_links(tx, v.id, now)
        .await?
        .into_iter()
        .map(|(_, link)| link)
        .collect();
    let succeeded: HashSet<&str> = builds
        .iter()
        .filter(|b| b.status == BuildStatus::Succeeded)
        .map(|b| b.name.as_str())
        .collect();
    let missing_builds = expected
        .iter()
        .filter(|e| !succeeded.contains(e.as_str()))
        .cloned()
        .collect();
    Ok(VersionDetail {
        bucket: b.name.clone(),
        fingerprint: v.fingerprint.clone(),
        created_at: ts(v.created_at),
        completed_at: v.completed_at.map(ts),
        complete: v.completed_at.is_some(),
        expected_builds: expected,
        missing_builds,
        builds,
        channels,
        revocation,
        parents,
        provenance,
    })
}

fn freshness(
    channel: &Option<String>,
    parent_id: i64,
    now_id: Option<i64>,
    now_fp: Option<String>,
) -> Freshness {
    match (channel, now_id) {
        (None, _) => Freshness::Pinned,
        (Some(_), Some(id)) if id == parent_id => Freshness::UpToDate,
        (Some(_), _) => Freshness::OutOfDate { current: now_fp },
    }
}

/// The parents of a version's builds.
async fn parent_links<T: Tx>(
    tx: &mut T,
    child_id: i64,
    now: Timestamp,
) -> Result<Vec<(i64, ParentLink)>, RegistryError> {
    let rows = tx
        .query(
            "SELECT p.parent_version_id, pb.name, pv.fingerprint, b.name, p.channel, p.platform, \
             p.region, p.external_id, c.version_id, cv.fingerprint \
             FROM parents p JOIN builds b ON b.id = p.build_id \
             JOIN versions pv ON pv.id = p.parent_version_id JOIN buckets pb ON pb.id = pv.bucket_id \
             LEFT JOIN channels c ON c.bucket_id = pv.bucket_id AND c.name = p.channel \
             LEFT JOIN versions cv ON cv.id = c.version_id \
             WHERE p.child_version_id = $1 ORDER BY b.name, p.id",
            &[Value::Int(child_id)],
        )
        .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.int(0)).collect::<Result<_, _>>()?;
    let revoked = revocation_status(tx, &ids, now).await?;
    rows.iter()
        .map(|r| {
            let parent_id = r.int(0)?;
            let channel = r.opt_text(4)?;
            let link = ParentLink {
                build: r.text(3)?,
                parent: VersionKey {
                    bucket: r.text(1)?,
                    fingerprint: r.text(2)?,
                },
                freshness: freshness(&channel, parent_id, r.opt_int(8)?, r.opt_text(9)?),
                channel,
                platform: platform(r, 5)?,
                region: r.text(6)?,
                external_id: r.text(7)?,
                revocation: revoked.get(&parent_id).cloned(),
            };
            Ok((parent_id, link))
        })
        .collect()
}

pub(crate) async fn ancestry<T: Tx>(
    tx: &mut T,
    bucket_name: &str,
    r: &VersionRef,
    now: Timestamp,
) -> Result<Ancestry, RegistryError> {
    let b = bucket(tx, bucket_name, false).await?;
    let v = resolve_version(tx, &b, r).await?;
    let me = VersionKey {
        bucket: b.name.clone(),
        fingerprint: v.fingerprint.clone(),
    };

    // Ancestors, breadth first; parent links form a DAG (cycles are refused on record) but a
    // visited set keeps a hand-edited database from looping.
    let mut ancestors = Vec::new();
    let mut frontier = vec![(v.id, me.clone())];
    let mut seen = HashSet::from([v.id]);
    for depth in 1..=MAX_DEPTH {
        let mut next = Vec::new();
        for (id, key) in &frontier {
            for (pid, link) in parent_links(tx, *id, now).await? {
                if seen.insert(pid) {
                    next.push((pid, link.parent.clone()));
                }
                ancestors.push(AncestorLink {
                    depth: u32::try_from(depth).unwrap_or(u32::MAX),
                    child: key.clone(),
                    link,
                });
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }

    let rows = tx
        .query(
            "SELECT p.child_version_id, cb.name, cv.fingerprint, b.name, p.channel, p.platform, \
             p.region, p.external_id, cv.completed_at, c.version_id, chv.fingerprint \
             FROM parents p JOIN builds b ON b.id = p.build_id \
             JOIN versions cv ON cv.id = p.child_version_id JOIN buckets cb ON cb.id = cv.bucket_id \
             JOIN versions pv ON pv.id = p.parent_version_id \
             LEFT JOIN channels c ON c.bucket_id = pv.bucket_id AND c.name = p.channel \
             LEFT JOIN versions chv ON chv.id = c.version_id \
             WHERE p.parent_version_id = $1 ORDER BY cb.name, cv.id DESC LIMIT $2",
            &[Value::Int(v.id), Value::Int(MAX_CHILDREN)],
        )
        .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.int(0)).collect::<Result<_, _>>()?;
    let revoked = revocation_status(tx, &ids, now).await?;
    let children = rows
        .iter()
        .map(|r| {
            let child_id = r.int(0)?;
            let channel = r.opt_text(4)?;
            Ok(ChildLink {
                child: VersionKey {
                    bucket: r.text(1)?,
                    fingerprint: r.text(2)?,
                },
                build: r.text(3)?,
                freshness: freshness(&channel, v.id, r.opt_int(9)?, r.opt_text(10)?),
                channel,
                platform: platform(r, 5)?,
                region: r.text(6)?,
                external_id: r.text(7)?,
                complete: r.opt_int(8)?.is_some(),
                revocation: revoked.get(&child_id).cloned(),
            })
        })
        .collect::<Result<_, RegistryError>>()?;
    Ok(Ancestry {
        version: me,
        revocation: revocation_of(tx, v.id, now).await?,
        ancestors,
        children,
    })
}

/// The channel's version, with the channel's serial (for the Terraform state).
pub(crate) async fn channel<T: Tx>(
    tx: &mut T,
    bucket_name: &str,
    channel: &str,
    now: Timestamp,
) -> Result<(VersionDetail, ChannelInfo), RegistryError> {
    // Bucket, channel and version in one round trip; the slow paths find the suggestions.
    let row = tx
        .query_opt(
            "SELECT b.id, b.name, b.description, b.version_count, v.id, v.fingerprint, v.created_at, \
             v.completed_at, c.updated_at, c.serial FROM buckets b \
             LEFT JOIN channels c ON c.bucket_id = b.id AND c.name = $2 \
             LEFT JOIN versions v ON v.id = c.version_id WHERE b.name = $1",
            &[Value::Text(bucket_name), Value::Text(channel)],
        )
        .await?;
    let Some(r) = row else {
        return Err(bucket(tx, bucket_name, false)
            .await
            .err()
            .unwrap_or_else(|| {
                RegistryError::conflict("the bucket appeared during the lookup; try again")
            }));
    };
    let b = BucketRow {
        id: r.int(0)?,
        name: r.text(1)?,
        description: r.text(2)?,
        version_count: r.int(3)?,
    };
    if r.opt_int(4)?.is_none() {
        return Err(crate::store::ops::common::unknown_channel(tx, &b, channel).await);
    }
    let v = VersionRow {
        id: r.int(4)?,
        fingerprint: r.text(5)?,
        created_at: r.int(6)?,
        completed_at: r.opt_int(7)?,
    };
    let (updated_at, serial) = (r.int(8)?, r.int(9)?);
    let d = detail(tx, &b, &v, now).await?;
    let info = ChannelInfo {
        name: channel.to_string(),
        fingerprint: v.fingerprint,
        updated_at: ts(updated_at),
        serial,
        managed: channel == LATEST,
        revocation: d.revocation.clone(),
    };
    Ok((d, info))
}

pub(crate) async fn channels<T: Tx>(
    tx: &mut T,
    bucket_name: &str,
    history: usize,
    now: Timestamp,
) -> Result<ChannelsView, RegistryError> {
    let b = bucket(tx, bucket_name, false).await?;
    let rows = tx
        .query(
            "SELECT c.name, v.fingerprint, c.updated_at, c.serial, c.version_id FROM channels c \
             JOIN versions v ON v.id = c.version_id WHERE c.bucket_id = $1 ORDER BY c.name",
            &[Value::Int(b.id)],
        )
        .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.int(4)).collect::<Result<_, _>>()?;
    let revoked = revocation_status(tx, &ids, now).await?;
    let channels = rows
        .iter()
        .map(|r| {
            let name = r.text(0)?;
            Ok(ChannelInfo {
                managed: name == LATEST,
                name,
                fingerprint: r.text(1)?,
                updated_at: ts(r.int(2)?),
                serial: r.int(3)?,
                revocation: revoked.get(&r.int(4)?).cloned(),
            })
        })
        .collect::<Result<_, RegistryError>>()?;
    let limit = i64::try_from(history.min(10_000)).unwrap_or(100);
    let history = tx
        .query(
            "SELECT h.channel, v.fingerprint, pv.fingerprint, h.at, h.actor FROM channel_history h \
             JOIN versions v ON v.id = h.version_id LEFT JOIN versions pv ON pv.id = h.previous_version_id \
             WHERE h.bucket_id = $1 ORDER BY h.id DESC LIMIT $2",
            &[Value::Int(b.id), Value::Int(limit)],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(ChannelMove {
                channel: r.text(0)?,
                fingerprint: r.text(1)?,
                previous: r.opt_text(2)?,
                at: ts(r.int(3)?),
                actor: r.text(4)?,
            })
        })
        .collect::<Result<_, RegistryError>>()?;
    Ok(ChannelsView {
        bucket: b.name,
        channels,
        history,
    })
}

pub(crate) async fn revocations<T: Tx>(
    tx: &mut T,
    bucket_name: &str,
) -> Result<Vec<RevocationRecord>, RegistryError> {
    let b = bucket(tx, bucket_name, false).await?;
    let rows = tx
        .query(
            "SELECT v.fingerprint, r.reason, r.effective_at, r.inherit, r.created_at, r.actor, \
             r.lifted_at, r.lifted_by FROM revocations r JOIN versions v ON v.id = r.version_id \
             WHERE v.bucket_id = $1 ORDER BY r.id DESC LIMIT 500",
            &[Value::Int(b.id)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(RevocationRecord {
                bucket: b.name.clone(),
                fingerprint: r.text(0)?,
                reason: r.text(1)?,
                effective_at: ts(r.int(2)?),
                inherit: r.bool(3)?,
                revoked_at: ts(r.int(4)?),
                revoked_by: r.text(5)?,
                lifted_at: r.opt_int(6)?.map(ts),
                lifted_by: r.opt_text(7)?,
            })
        })
        .collect()
}

pub(crate) async fn resolve_artifact<T: Tx>(
    tx: &mut T,
    q: &ArtifactQuery,
    now: Timestamp,
) -> Result<ResolvedArtifact, RegistryError> {
    let channel = q.channel.clone().unwrap_or_else(|| LATEST.to_string());
    let b = bucket(tx, &q.bucket, false).await?;
    let v = resolve_version(tx, &b, &VersionRef::Channel(channel.clone())).await?;
    let revocation = revocation_of(tx, v.id, now).await?;
    if let Some(r) = revocation.as_ref().filter(|r| r.effective) {
        return Err(RegistryError::Revoked {
            bucket: b.name.clone(),
            fingerprint: v.fingerprint.clone(),
            reason: r.reason.clone(),
            inherited_from: r.inherited_from.as_ref().map(|k| k.to_string()),
        });
    }
    let rows = tx
        .query(
            "SELECT b.name, a.platform, a.region, a.external_id, a.sha256, a.size, a.path \
             FROM artifacts a JOIN builds b ON b.id = a.build_id \
             WHERE b.version_id = $1 AND a.platform = $2 AND a.region = $3 ORDER BY b.name, a.id",
            &[
                Value::Int(v.id),
                Value::Text(q.platform.as_str()),
                Value::Text(&q.region),
            ],
        )
        .await?;
    let mut matches: Vec<(String, Artifact)> = Vec::new();
    for r in &rows {
        let build = r.text(0)?;
        if q.build.as_ref().is_some_and(|b| *b != build) {
            continue;
        }
        matches.push((
            build,
            Artifact {
                platform: platform(r, 1)?,
                region: r.text(2)?,
                external_id: r.text(3)?,
                sha256: r.opt_text(4)?,
                size: r.opt_int(5)?.and_then(|s| u64::try_from(s).ok()),
                path: r.opt_text(6)?,
            },
        ));
    }
    let builds: HashSet<&str> = matches.iter().map(|(b, _)| b.as_str()).collect();
    if builds.len() > 1 {
        let mut names: Vec<&str> = builds.into_iter().collect();
        names.sort();
        return Err(RegistryError::conflict(format!(
            "builds {} of {}/{} each have a {} artifact in {}; say which with `build`",
            names.join(", "),
            b.name,
            v.fingerprint,
            q.platform,
            q.region
        )));
    }
    let Some((build, artifact)) = matches.into_iter().next() else {
        return Err(RegistryError::UnknownArtifact {
            bucket: b.name.clone(),
            fingerprint: v.fingerprint.clone(),
            platform: q.platform.to_string(),
            region: q.region.clone(),
            available: available_artifacts(tx, v.id).await?,
        });
    };
    Ok(ResolvedArtifact {
        parent: ParentRef {
            bucket: b.name,
            fingerprint: v.fingerprint,
            channel: Some(channel),
            build: Some(build.clone()),
            platform: artifact.platform,
            region: artifact.region.clone(),
            external_id: artifact.external_id.clone(),
        },
        build,
        artifact,
        scheduled_revocation: revocation,
    })
}
