//! Lookups every operation shares: buckets, version references, revocation status, channel
//! moves, descendants.

use std::collections::HashMap;

use crate::error::RegistryError;
use crate::model::{RevocationStatus, VersionKey, VersionRef};
use crate::store::sql::{Tx, Value, placeholders};
use crate::suggest;
use crate::timestamp::Timestamp;

/// How deep parent links are followed (a chain longer than this is not a real image lineage).
pub(crate) const MAX_DEPTH: i64 = 16;
/// Ids per `IN (…)` list.
const CHUNK: usize = 200;

#[derive(Debug, Clone)]
pub(crate) struct BucketRow {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) version_count: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct VersionRow {
    pub(crate) id: i64,
    pub(crate) fingerprint: String,
    pub(crate) created_at: i64,
    pub(crate) completed_at: Option<i64>,
}

/// The bucket named `name`, locked for the transaction when `lock` (PostgreSQL).
pub(crate) async fn bucket<T: Tx>(
    tx: &mut T,
    name: &str,
    lock: bool,
) -> Result<BucketRow, RegistryError> {
    let sql = if lock {
        match tx.dialect().for_update() {
            "" => "SELECT id, name, description, version_count FROM buckets WHERE name = $1",
            _ => {
                "SELECT id, name, description, version_count FROM buckets WHERE name = $1 FOR UPDATE"
            }
        }
    } else {
        "SELECT id, name, description, version_count FROM buckets WHERE name = $1"
    };
    match tx.query_opt(sql, &[Value::Text(name)]).await? {
        Some(r) => Ok(BucketRow {
            id: r.int(0)?,
            name: r.text(1)?,
            description: r.text(2)?,
            version_count: r.int(3)?,
        }),
        None => {
            let names = tx
                .query("SELECT name FROM buckets ORDER BY name LIMIT 1000", &[])
                .await?;
            let names: Vec<String> = names.iter().filter_map(|r| r.text(0).ok()).collect();
            Err(RegistryError::UnknownBucket {
                bucket: name.to_string(),
                suggestions: suggest::nearest(name, names.iter().map(String::as_str)),
            })
        }
    }
}

fn version_row(r: &crate::store::sql::Row) -> Result<VersionRow, RegistryError> {
    Ok(VersionRow {
        id: r.int(0)?,
        fingerprint: r.text(1)?,
        created_at: r.int(2)?,
        completed_at: r.opt_int(3)?,
    })
}

/// Resolves a fingerprint, a unique fingerprint prefix (≥ 4 characters) or `@channel`.
pub(crate) async fn resolve_version<T: Tx>(
    tx: &mut T,
    bucket: &BucketRow,
    r: &VersionRef,
) -> Result<VersionRow, RegistryError> {
    match r {
        VersionRef::Channel(channel) => {
            let row = tx
                .query_opt(
                    "SELECT v.id, v.fingerprint, v.created_at, v.completed_at FROM channels c \
                     JOIN versions v ON v.id = c.version_id WHERE c.bucket_id = $1 AND c.name = $2",
                    &[Value::Int(bucket.id), Value::Text(channel)],
                )
                .await?;
            match row {
                Some(r) => version_row(&r),
                None => Err(unknown_channel(tx, bucket, channel).await),
            }
        }
        VersionRef::Fingerprint(fp) => {
            if let Some(r) = tx
                .query_opt(
                    "SELECT id, fingerprint, created_at, completed_at FROM versions \
                     WHERE bucket_id = $1 AND fingerprint = $2",
                    &[Value::Int(bucket.id), Value::Text(fp)],
                )
                .await?
            {
                return version_row(&r);
            }
            if fp.len() >= 4 {
                let rows = tx
                    .query(
                        "SELECT id, fingerprint, created_at, completed_at FROM versions \
                         WHERE bucket_id = $1 AND substr(fingerprint, 1, length($2)) = $2 \
                         ORDER BY id DESC LIMIT 6",
                        &[Value::Int(bucket.id), Value::Text(fp)],
                    )
                    .await?;
                match rows.len() {
                    0 => {}
                    1 => return version_row(&rows[0]),
                    _ => {
                        return Err(RegistryError::AmbiguousVersion {
                            bucket: bucket.name.clone(),
                            prefix: fp.clone(),
                            candidates: rows.iter().filter_map(|r| r.text(1).ok()).collect(),
                        });
                    }
                }
            }
            let recent = tx
                .query(
                    "SELECT fingerprint FROM versions WHERE bucket_id = $1 ORDER BY id DESC LIMIT 200",
                    &[Value::Int(bucket.id)],
                )
                .await?;
            let recent: Vec<String> = recent.iter().filter_map(|r| r.text(0).ok()).collect();
            Err(RegistryError::UnknownVersion {
                bucket: bucket.name.clone(),
                fingerprint: fp.clone(),
                suggestions: suggest::nearest(fp, recent.iter().map(String::as_str)),
            })
        }
    }
}

pub(crate) async fn unknown_channel<T: Tx>(
    tx: &mut T,
    bucket: &BucketRow,
    channel: &str,
) -> RegistryError {
    let names: Vec<String> = match tx
        .query(
            "SELECT name FROM channels WHERE bucket_id = $1 ORDER BY name",
            &[Value::Int(bucket.id)],
        )
        .await
    {
        Ok(rows) => rows.iter().filter_map(|r| r.text(0).ok()).collect(),
        Err(e) => return e,
    };
    RegistryError::UnknownChannel {
        bucket: bucket.name.clone(),
        channel: channel.to_string(),
        suggestions: suggest::nearest(channel, names.iter().map(String::as_str)),
    }
}

/// The revocation that applies to each of `ids` now: its own, or an inheritable one of an
/// ancestor; effective ones win over scheduled ones, the version's own over inherited, nearer
/// ancestors over farther.
pub(crate) async fn revocation_status<T: Tx>(
    tx: &mut T,
    ids: &[i64],
    now: Timestamp,
) -> Result<HashMap<i64, RevocationStatus>, RegistryError> {
    let mut best: HashMap<i64, ((bool, i64, i64), RevocationStatus)> = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "WITH RECURSIVE anc (root, vid, depth) AS ( \
                 SELECT id, id, 0 FROM versions WHERE id IN {} \
                 UNION ALL \
                 SELECT a.root, p.parent_version_id, a.depth + 1 FROM anc a \
                 JOIN parents p ON p.child_version_id = a.vid WHERE a.depth < {MAX_DEPTH} \
             ) \
             SELECT a.root, a.depth, r.reason, r.effective_at, r.created_at, r.actor, v.fingerprint, b.name \
             FROM anc a JOIN revocations r ON r.version_id = a.vid AND r.lifted_at IS NULL \
             JOIN versions v ON v.id = a.vid JOIN buckets b ON b.id = v.bucket_id \
             WHERE a.depth = 0 OR r.inherit",
            placeholders(1, chunk.len())
        );
        let params: Vec<Value<'_>> = chunk.iter().map(|id| Value::Int(*id)).collect();
        for r in tx.query(&sql, &params).await? {
            let root = r.int(0)?;
            let depth = r.int(1)?;
            let effective_at = r.int(3)?;
            let effective = effective_at <= now.as_millis();
            let status = RevocationStatus {
                reason: r.text(2)?,
                effective_at: Timestamp::from_millis(effective_at),
                effective,
                inherited_from: (depth > 0)
                    .then(|| -> Result<VersionKey, RegistryError> {
                        Ok(VersionKey {
                            bucket: r.text(7)?,
                            fingerprint: r.text(6)?,
                        })
                    })
                    .transpose()?,
                revoked_at: Timestamp::from_millis(r.int(4)?),
                revoked_by: r.text(5)?,
            };
            // Smaller is better: effective first, then nearer, then sooner.
            let key = (!effective, depth, effective_at);
            match best.get(&root) {
                Some((k, _)) if *k <= key => {}
                _ => {
                    best.insert(root, (key, status));
                }
            }
        }
    }
    Ok(best.into_iter().map(|(k, (_, s))| (k, s)).collect())
}

/// The status for one version.
pub(crate) async fn revocation_of<T: Tx>(
    tx: &mut T,
    id: i64,
    now: Timestamp,
) -> Result<Option<RevocationStatus>, RegistryError> {
    Ok(revocation_status(tx, &[id], now).await?.remove(&id))
}

/// Every version built (transitively) from `id`, nearest first.
pub(crate) async fn descendants<T: Tx>(
    tx: &mut T,
    id: i64,
) -> Result<Vec<(i64, VersionKey)>, RegistryError> {
    let sql = format!(
        "WITH RECURSIVE d (vid, depth) AS ( \
             SELECT CAST($1 AS BIGINT), 0 \
             UNION ALL \
             SELECT p.child_version_id, d.depth + 1 FROM d \
             JOIN parents p ON p.parent_version_id = d.vid WHERE d.depth < {MAX_DEPTH} \
         ) \
         SELECT d.vid, MIN(d.depth), v.fingerprint, b.name FROM d \
         JOIN versions v ON v.id = d.vid JOIN buckets b ON b.id = v.bucket_id \
         WHERE d.depth > 0 GROUP BY d.vid, v.fingerprint, b.name ORDER BY MIN(d.depth), d.vid"
    );
    let rows = tx.query(&sql, &[Value::Int(id)]).await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.int(0)?,
                VersionKey {
                    fingerprint: r.text(2)?,
                    bucket: r.text(3)?,
                },
            ))
        })
        .collect()
}

/// Expected builds of a version without a successful build.
pub(crate) async fn missing_builds<T: Tx>(
    tx: &mut T,
    version_id: i64,
) -> Result<Vec<String>, RegistryError> {
    let rows = tx
        .query(
            "SELECT e.name FROM expected_builds e \
             LEFT JOIN builds b ON b.version_id = e.version_id AND b.name = e.name AND b.status = 'succeeded' \
             WHERE e.version_id = $1 AND b.id IS NULL ORDER BY e.name",
            &[Value::Int(version_id)],
        )
        .await?;
    rows.iter().map(|r| r.text(0)).collect()
}

/// Points `channel` of the bucket at `version_id`, recording the move. Returns the previous
/// fingerprint and whether anything changed.
pub(crate) async fn move_channel<T: Tx>(
    tx: &mut T,
    bucket_id: i64,
    channel: &str,
    version_id: i64,
    actor: &str,
    now: Timestamp,
) -> Result<(Option<String>, bool), RegistryError> {
    let prev = tx
        .query_opt(
            "SELECT c.version_id, v.fingerprint FROM channels c JOIN versions v ON v.id = c.version_id \
             WHERE c.bucket_id = $1 AND c.name = $2",
            &[Value::Int(bucket_id), Value::Text(channel)],
        )
        .await?;
    let (prev_id, prev_fp) = match prev {
        Some(r) => (Some(r.int(0)?), Some(r.text(1)?)),
        None => (None, None),
    };
    if prev_id == Some(version_id) {
        return Ok((prev_fp, false));
    }
    tx.execute(
        "INSERT INTO channels (bucket_id, name, version_id, updated_at, serial) VALUES ($1, $2, $3, $4, 1) \
         ON CONFLICT (bucket_id, name) DO UPDATE SET version_id = excluded.version_id, \
         updated_at = excluded.updated_at, serial = channels.serial + 1",
        &[
            Value::Int(bucket_id),
            Value::Text(channel),
            Value::Int(version_id),
            Value::Int(now.as_millis()),
        ],
    )
    .await?;
    tx.execute(
        "INSERT INTO channel_history (bucket_id, channel, version_id, previous_version_id, at, actor) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            Value::Int(bucket_id),
            Value::Text(channel),
            Value::Int(version_id),
            Value::OptInt(prev_id),
            Value::Int(now.as_millis()),
            Value::Text(actor),
        ],
    )
    .await?;
    Ok((prev_fp, true))
}

/// Channel names per version id.
pub(crate) async fn channels_of<T: Tx>(
    tx: &mut T,
    ids: &[i64],
) -> Result<HashMap<i64, Vec<String>>, RegistryError> {
    let mut out: HashMap<i64, Vec<String>> = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT version_id, name FROM channels WHERE version_id IN {} ORDER BY name",
            placeholders(1, chunk.len())
        );
        let params: Vec<Value<'_>> = chunk.iter().map(|id| Value::Int(*id)).collect();
        for r in tx.query(&sql, &params).await? {
            out.entry(r.int(0)?).or_default().push(r.text(1)?);
        }
    }
    Ok(out)
}
