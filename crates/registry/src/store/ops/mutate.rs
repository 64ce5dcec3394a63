//! Promotion, revocation and restore.

use crate::error::RegistryError;
use crate::model::{
    LATEST, Promotion, Restored, RevocationRecord, RevokeRequest, Revoked, VersionRef,
};
use crate::store::ops::common::{
    bucket, descendants, missing_builds, move_channel, resolve_version, revocation_of,
};
use crate::store::sql::{Tx, Value};
use crate::timestamp::Timestamp;

pub(crate) async fn promote<T: Tx>(
    tx: &mut T,
    bucket_name: &str,
    version: &VersionRef,
    channel: &str,
    actor: &str,
    now: Timestamp,
) -> Result<Promotion, RegistryError> {
    if channel == LATEST {
        return Err(RegistryError::invalid(
            "channel",
            "`latest` is kept by kiln (it follows the newest complete version); promote to another channel such as dev or prod",
        ));
    }
    let b = bucket(tx, bucket_name, true).await?;
    let v = resolve_version(tx, &b, version).await?;
    if v.completed_at.is_none() {
        return Err(RegistryError::Incomplete {
            bucket: b.name.clone(),
            fingerprint: v.fingerprint.clone(),
            missing: missing_builds(tx, v.id).await?,
        });
    }
    let revocation = revocation_of(tx, v.id, now).await?;
    if let Some(r) = revocation.as_ref().filter(|r| r.effective) {
        return Err(RegistryError::Revoked {
            bucket: b.name.clone(),
            fingerprint: v.fingerprint.clone(),
            reason: r.reason.clone(),
            inherited_from: r.inherited_from.as_ref().map(|k| k.to_string()),
        });
    }
    let (previous, changed) = move_channel(tx, b.id, channel, v.id, actor, now).await?;
    Ok(Promotion {
        bucket: b.name,
        channel: channel.to_string(),
        fingerprint: v.fingerprint,
        previous,
        changed,
        at: now,
        scheduled_revocation: revocation,
    })
}

pub(crate) async fn revoke<T: Tx>(
    tx: &mut T,
    bucket_name: &str,
    version: &VersionRef,
    req: &RevokeRequest,
    actor: &str,
    now: Timestamp,
) -> Result<Revoked, RegistryError> {
    let b = bucket(tx, bucket_name, true).await?;
    let v = resolve_version(tx, &b, version).await?;
    if let Some(r) = tx
        .query_opt(
            "SELECT reason, effective_at FROM revocations WHERE version_id = $1 AND lifted_at IS NULL",
            &[Value::Int(v.id)],
        )
        .await?
    {
        return Err(RegistryError::conflict(format!(
            "version {} of {:?} is already revoked (from {}: {}); restore it first to change the revocation",
            v.fingerprint,
            b.name,
            Timestamp::from_millis(r.int(1)?),
            r.text(0)?
        )));
    }
    let effective_at = req.at.unwrap_or(now);
    tx.execute(
        "INSERT INTO revocations (version_id, reason, effective_at, inherit, created_at, actor) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            Value::Int(v.id),
            Value::Text(&req.reason),
            Value::Int(effective_at.as_millis()),
            Value::Bool(req.inherit),
            Value::Int(now.as_millis()),
            Value::Text(actor),
        ],
    )
    .await?;
    let descendants = if req.inherit {
        descendants(tx, v.id)
            .await?
            .into_iter()
            .map(|(_, k)| k)
            .collect()
    } else {
        Vec::new()
    };
    Ok(Revoked {
        revocation: RevocationRecord {
            bucket: b.name,
            fingerprint: v.fingerprint,
            reason: req.reason.clone(),
            effective_at,
            inherit: req.inherit,
            revoked_at: now,
            revoked_by: actor.to_string(),
            lifted_at: None,
            lifted_by: None,
        },
        descendants,
    })
}

pub(crate) async fn restore<T: Tx>(
    tx: &mut T,
    bucket_name: &str,
    version: &VersionRef,
    actor: &str,
    now: Timestamp,
) -> Result<Restored, RegistryError> {
    let b = bucket(tx, bucket_name, true).await?;
    let v = resolve_version(tx, &b, version).await?;
    let row = tx
        .query_opt(
            "SELECT id, reason, effective_at, inherit, created_at, actor FROM revocations \
             WHERE version_id = $1 AND lifted_at IS NULL",
            &[Value::Int(v.id)],
        )
        .await?;
    let Some(r) = row else {
        let inherited = revocation_of(tx, v.id, now)
            .await?
            .and_then(|s| s.inherited_from)
            .map(|k| k.to_string());
        return Err(RegistryError::NotRevoked {
            bucket: b.name,
            fingerprint: v.fingerprint,
            inherited_from: inherited,
        });
    };
    tx.execute(
        "UPDATE revocations SET lifted_at = $1, lifted_by = $2 WHERE id = $3",
        &[
            Value::Int(now.as_millis()),
            Value::Text(actor),
            Value::Int(r.int(0)?),
        ],
    )
    .await?;
    Ok(Restored {
        revocation: RevocationRecord {
            bucket: b.name,
            fingerprint: v.fingerprint,
            reason: r.text(1)?,
            effective_at: Timestamp::from_millis(r.int(2)?),
            inherit: r.bool(3)?,
            revoked_at: Timestamp::from_millis(r.int(4)?),
            revoked_by: r.text(5)?,
            lifted_at: Some(now),
            lifted_by: Some(actor.to_string()),
        },
    })
}
