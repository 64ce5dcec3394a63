//! Stored bearer tokens (hashes only).

use crate::error::RegistryError;
use crate::model::TokenInfo;
use crate::store::sql::{Tx, Value};
use crate::timestamp::Timestamp;

pub(crate) async fn create<T: Tx>(
    tx: &mut T,
    id: &str,
    name: &str,
    hash: &str,
    now: Timestamp,
) -> Result<TokenInfo, RegistryError> {
    if tx
        .query_opt(
            "SELECT id FROM tokens WHERE name = $1",
            &[Value::Text(name)],
        )
        .await?
        .is_some()
    {
        return Err(RegistryError::conflict(format!(
            "a token named {name:?} exists; delete it first or choose another name"
        )));
    }
    tx.execute(
        "INSERT INTO tokens (id, name, hash, created_at) VALUES ($1, $2, $3, $4)",
        &[
            Value::Text(id),
            Value::Text(name),
            Value::Text(hash),
            Value::Int(now.as_millis()),
        ],
    )
    .await?;
    Ok(TokenInfo {
        id: id.to_string(),
        name: name.to_string(),
        created_at: now,
    })
}

/// The token's name and stored hash.
pub(crate) async fn lookup<T: Tx>(
    tx: &mut T,
    id: &str,
) -> Result<Option<(String, String)>, RegistryError> {
    match tx
        .query_opt(
            "SELECT name, hash FROM tokens WHERE id = $1",
            &[Value::Text(id)],
        )
        .await?
    {
        Some(r) => Ok(Some((r.text(0)?, r.text(1)?))),
        None => Ok(None),
    }
}

pub(crate) async fn list<T: Tx>(tx: &mut T) -> Result<Vec<TokenInfo>, RegistryError> {
    tx.query("SELECT id, name, created_at FROM tokens ORDER BY name", &[])
        .await?
        .iter()
        .map(|r| {
            Ok(TokenInfo {
                id: r.text(0)?,
                name: r.text(1)?,
                created_at: Timestamp::from_millis(r.int(2)?),
            })
        })
        .collect()
}

pub(crate) async fn delete<T: Tx>(tx: &mut T, name: &str) -> Result<bool, RegistryError> {
    Ok(tx
        .execute("DELETE FROM tokens WHERE name = $1", &[Value::Text(name)])
        .await?
        > 0)
}
