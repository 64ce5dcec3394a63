//! [`Store`]: the async API over the two backends.
//!
//! A location string picks the backend: `postgres://…` / `postgresql://…` is PostgreSQL,
//! anything else (a path, or `sqlite:PATH`) is an SQLite file. Every operation is one
//! transaction; the same logic (`ops`) runs on both.

mod ops;
mod postgres;
mod schema;
mod sql;
mod sqlite;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::RegistryError;
use crate::limits;
use crate::model::{
    Ancestry, ArtifactQuery, BucketSummary, ChannelInfo, ChannelsView, Promotion, RecordBuild,
    Recorded, ResolvedArtifact, Restored, RevocationRecord, RevokeRequest, Revoked, TokenInfo,
    VersionDetail, VersionPage, VersionRef,
};
use crate::timestamp::Timestamp;
use crate::token::{self, SecretToken};

/// The environment variable naming the registry (a path or a `postgres://` URL).
pub const REGISTRY_ENV: &str = "KILN_REGISTRY";

/// Where the registry lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (it may carry a password: `Debug`/`Display` redact it).
    Postgres(String),
}

impl Location {
    /// `postgres://…` / `postgresql://…`, `sqlite:PATH`, or a plain path.
    pub fn parse(s: &str) -> Result<Location, RegistryError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(RegistryError::invalid(
                "registry location",
                "empty; give a file path or a postgres:// URL",
            ));
        }
        if t.starts_with("postgres://") || t.starts_with("postgresql://") {
            return Ok(Location::Postgres(t.to_string()));
        }
        if let Some(rest) = t.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(RegistryError::invalid(
                    "registry location",
                    "`sqlite:` needs a path, e.g. sqlite:.kiln/registry.db",
                ));
            }
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = t.split_once("://") {
            return Err(RegistryError::invalid(
                "registry location",
                format!("unknown scheme {scheme:?}; use a file path, sqlite:PATH or postgres://"),
            ));
        }
        Ok(Location::Sqlite(PathBuf::from(t)))
    }

    /// `KILN_REGISTRY` when set, else `<project>/.kiln/registry.db`.
    pub fn from_env(project_dir: &Path) -> Result<Location, RegistryError> {
        match std::env::var(REGISTRY_ENV) {
            Ok(v) if !v.trim().is_empty() => Location::parse(&v),
            _ => Ok(Location::Sqlite(
                project_dir.join(".kiln").join("registry.db"),
            )),
        }
    }
}

/// A PostgreSQL URL with its password replaced.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable URL>".into();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:<redacted>@{host}{}", redact_query(tail))
            } else {
                format!("{scheme}://{user}@{host}{}", redact_query(tail))
            }
        }
        None => format!("{scheme}://{authority}{}", redact_query(tail)),
    }
}

/// `?password=` in the query string is redacted too.
fn redact_query(tail: &str) -> String {
    match tail.split_once('?') {
        Some((path, q)) => {
            let parts: Vec<String> = q
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=<redacted>"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", parts.join("&"))
        }
        None => tail.to_string(),
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            Location::Postgres(u) => f.write_str(&redact_url(u)),
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Location({self})")
    }
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<sqlite::SqlitePool>),
    Postgres(Arc<postgres::PgPool>),
}

/// A handle on the registry; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    location: Location,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Store({})", self.location)
    }
}

/// Runs `$body` in one transaction on whichever backend the store has. `$body` may only use
/// owned values (the SQLite arm runs on the blocking pool) and is retried on transient
/// failures, so it must not consume them.
macro_rules! transact {
    ($store:expr, $write:expr, |$tx:ident| $body:expr) => {{
        match &$store.backend {
            Backend::Sqlite(pool) => {
                pool.run(move |conn| {
                    sqlite::transact(conn, $write, |$tx| {
                        futures_executor::block_on(async { $body })
                    })
                })
                .await
            }
            Backend::Postgres(pool) => {
                let mut attempt = 0u32;
                loop {
                    attempt += 1;
                    let mut client = pool.client().await?;
                    let mut tx_ = postgres::PgTx::begin(&mut client, $write).await?;
                    let result = {
                        let $tx = &mut tx_;
                        $body
                    };
                    let result = match result {
                        Ok(v) => tx_.commit().await.map(|()| v),
                        Err(e) => Err(e),
                    };
                    match result {
                        Err(e) if postgres::is_transient(&e) && attempt < postgres::ATTEMPTS => {
                            tracing::debug!(attempt, error = %e, "postgres transaction failed; retrying");
                            tokio::time::sleep(postgres::backoff(attempt)).await;
                        }
                        other => break other,
                    }
                }
            }
        }
    }};
}

impl Store {
    /// Opens (creating and migrating) the registry at `location` (see [`Location::parse`]).
    pub async fn open(location: &str) -> Result<Store, RegistryError> {
        Self::open_location(&Location::parse(location)?).await
    }

    /// Opens the registry at a parsed location.
    pub async fn open_location(location: &Location) -> Result<Store, RegistryError> {
        let backend = match location {
            Location::Sqlite(path) => Backend::Sqlite(sqlite::SqlitePool::open(path).await?),
            Location::Postgres(url) => {
                Backend::Postgres(Arc::new(postgres::PgPool::open(url).await?))
            }
        };
        tracing::debug!(%location, "registry opened");
        Ok(Store {
            backend,
            location: location.clone(),
        })
    }

    /// `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Where the store is (password redacted).
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Records one build (at the end of the build). Validates everything first.
    pub async fn record(&self, input: RecordBuild) -> Result<Recorded, RegistryError> {
        input.validate()?;
        let provenance = input.provenance.canonical()?;
        let labels = serde_json::to_string(&input.build.labels)
            .map_err(|e| RegistryError::invalid("labels", e))?;
        let error_text = input
            .build
            .error
            .as_deref()
            .map(|e| limits::truncate(e, limits::MAX_ERROR_TEXT));
        let now = Timestamp::now();
        let out = transact!(self, true, |tx| ops::record::record(
            tx,
            &input,
            &provenance,
            &labels,
            error_text.as_deref(),
            now
        )
        .await)?;
        tracing::info!(
            bucket = %out.bucket, fingerprint = %out.fingerprint, build = %out.build,
            complete = out.version_complete, "registry: build recorded"
        );
        Ok(out)
    }

    /// Every bucket with its channels.
    pub async fn buckets(&self) -> Result<Vec<BucketSummary>, RegistryError> {
        transact!(self, false, |tx| ops::read::buckets(tx).await)
    }

    /// A page of a bucket's versions, newest first; `before` is the previous page's
    /// `next_before`.
    pub async fn versions(
        &self,
        bucket: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<VersionPage, RegistryError> {
        limits::check_name("bucket", bucket)?;
        if let Some(b) = before {
            limits::check_name("before", b)?;
        }
        let (bucket, before) = (bucket.to_string(), before.map(str::to_string));
        let now = Timestamp::now();
        transact!(self, false, |tx| ops::read::versions(
            tx,
            &bucket,
            limit,
            before.as_deref(),
            now
        )
        .await)
    }

    /// Everything about one version.
    pub async fn version(
        &self,
        bucket: &str,
        version: &VersionRef,
    ) -> Result<VersionDetail, RegistryError> {
        limits::check_name("bucket", bucket)?;
        version.validate()?;
        let (bucket, version) = (bucket.to_string(), version.clone());
        let now = Timestamp::now();
        transact!(self, false, |tx| ops::read::version(
            tx, &bucket, &version, now
        )
        .await)
    }

    /// The version a channel points at, with the channel.
    pub async fn channel(
        &self,
        bucket: &str,
        channel: &str,
    ) -> Result<(VersionDetail, ChannelInfo), RegistryError> {
        limits::check_name("bucket", bucket)?;
        limits::check_name("channel", channel)?;
        let (bucket, channel) = (bucket.to_string(), channel.to_string());
        let now = Timestamp::now();
        transact!(self, false, |tx| ops::read::channel(
            tx, &bucket, &channel, now
        )
        .await)
    }

    /// A bucket's channels and the last `history` moves.
    pub async fn channels(
        &self,
        bucket: &str,
        history: usize,
    ) -> Result<ChannelsView, RegistryError> {
        limits::check_name("bucket", bucket)?;
        let bucket = bucket.to_string();
        let now = Timestamp::now();
        transact!(self, false, |tx| ops::read::channels(
            tx, &bucket, history, now
        )
        .await)
    }

    /// A bucket's revocations, lifted ones included, newest first.
    pub async fn revocations(&self, bucket: &str) -> Result<Vec<RevocationRecord>, RegistryError> {
        limits::check_name("bucket", bucket)?;
        let bucket = bucket.to_string();
        transact!(self, false, |tx| ops::read::revocations(tx, &bucket).await)
    }

    /// Points `channel` at a complete, unrevoked version.
    pub async fn promote(
        &self,
        bucket: &str,
        version: &VersionRef,
        channel: &str,
        actor: &str,
    ) -> Result<Promotion, RegistryError> {
        limits::check_name("bucket", bucket)?;
        version.validate()?;
        limits::check_name("channel", channel)?;
        check_actor(actor)?;
        let (bucket, version, channel, actor) = (
            bucket.to_string(),
            version.clone(),
            channel.to_string(),
            actor.to_string(),
        );
        let now = Timestamp::now();
        transact!(self, true, |tx| ops::mutate::promote(
            tx, &bucket, &version, &channel, &actor, now
        )
        .await)
    }

    /// Revokes a version, now or at `req.at`, optionally for every descendant.
    pub async fn revoke(
        &self,
        bucket: &str,
        version: &VersionRef,
        req: &RevokeRequest,
        actor: &str,
    ) -> Result<Revoked, RegistryError> {
        limits::check_name("bucket", bucket)?;
        version.validate()?;
        if req.reason.trim().is_empty() {
            return Err(RegistryError::invalid(
                "reason",
                "say why the version is revoked (it is shown to everyone who uses it)",
            ));
        }
        limits::check_text("reason", &req.reason, limits::MAX_REASON, false)?;
        check_actor(actor)?;
        let (bucket, version, req, actor) = (
            bucket.to_string(),
            version.clone(),
            req.clone(),
            actor.to_string(),
        );
        let now = Timestamp::now();
        transact!(self, true, |tx| ops::mutate::revoke(
            tx, &bucket, &version, &req, &actor, now
        )
        .await)
    }

    /// Lifts a version's own revocation (history is kept).
    pub async fn restore(
        &self,
        bucket: &str,
        version: &VersionRef,
        actor: &str,
    ) -> Result<Restored, RegistryError> {
        limits::check_name("bucket", bucket)?;
        version.validate()?;
        check_actor(actor)?;
        let (bucket, version, actor) = (bucket.to_string(), version.clone(), actor.to_string());
        let now = Timestamp::now();
        transact!(self, true, |tx| ops::mutate::restore(
            tx, &bucket, &version, &actor, now
        )
        .await)
    }

    /// Ancestors and children of a version, children marked up to date or out of date.
    pub async fn ancestry(
        &self,
        bucket: &str,
        version: &VersionRef,
    ) -> Result<Ancestry, RegistryError> {
        limits::check_name("bucket", bucket)?;
        version.validate()?;
        let (bucket, version) = (bucket.to_string(), version.clone());
        let now = Timestamp::now();
        transact!(self, false, |tx| ops::read::ancestry(
            tx, &bucket, &version, now
        )
        .await)
    }

    /// The artifact a chained build starts from (`registry_artifact(...)`); a revoked
    /// version fails with [`RegistryError::Revoked`].
    pub async fn resolve_artifact(
        &self,
        query: &ArtifactQuery,
    ) -> Result<ResolvedArtifact, RegistryError> {
        limits::check_name("bucket", &query.bucket)?;
        if let Some(c) = &query.channel {
            limits::check_name("channel", c)?;
        }
        if let Some(b) = &query.build {
            limits::check_name("build", b)?;
        }
        limits::check_region(&query.region)?;
        let query = query.clone();
        let now = Timestamp::now();
        transact!(self, false, |tx| ops::read::resolve_artifact(
            tx, &query, now
        )
        .await)
    }

    /// Creates a bearer token for the server's write endpoints. The clear token is returned
    /// only here; only its hash is stored.
    pub async fn create_token(
        &self,
        name: &str,
    ) -> Result<(TokenInfo, SecretToken), RegistryError> {
        limits::check_name("token name", name)?;
        let (id, secret) = SecretToken::generate()?;
        let hash = match secret.parts() {
            Some((_, s)) => token::hash_secret(s),
            None => {
                return Err(RegistryError::conflict(
                    "generated token has an unexpected shape",
                ));
            }
        };
        let name = name.to_string();
        let now = Timestamp::now();
        let info = transact!(self, true, |tx| ops::tokens::create(
            tx, &id, &name, &hash, now
        )
        .await)?;
        Ok((info, secret))
    }

    /// The name of the token if `presented` is a valid one.
    pub async fn verify_token(
        &self,
        presented: &SecretToken,
    ) -> Result<Option<String>, RegistryError> {
        let Some((id, secret)) = presented.parts() else {
            return Ok(None);
        };
        let (id, secret) = (id.to_string(), secret.to_string());
        let found = transact!(self, false, |tx| ops::tokens::lookup(tx, &id).await)?;
        Ok(found.and_then(|(name, hash)| token::matches(&hash, &secret).then_some(name)))
    }

    /// Every token's public record.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, RegistryError> {
        transact!(self, false, |tx| ops::tokens::list(tx).await)
    }

    /// Deletes a token; false when none had that name.
    pub async fn delete_token(&self, name: &str) -> Result<bool, RegistryError> {
        limits::check_name("token name", name)?;
        let name = name.to_string();
        transact!(self, true, |tx| ops::tokens::delete(tx, &name).await)
    }
}

fn check_actor(actor: &str) -> Result<(), RegistryError> {
    if actor.is_empty() {
        return Err(RegistryError::invalid("actor", "must not be empty"));
    }
    limits::check_text("actor", actor, limits::MAX_ACTOR, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("postgres://u:pw@h:5432/db").ok(),
            Some(Location::Postgres("postgres://u:pw@h:5432/db".into()))
        );
        assert_eq!(
            Location::parse("sqlite:.kiln/r.db").ok(),
            Some(Location::Sqlite(".kiln/r.db".into()))
        );
        assert_eq!(
            Location::parse("sqlite:///abs/r.db").ok(),
            Some(Location::Sqlite("/abs/r.db".into()))
        );
        assert_eq!(
            Location::parse("/var/r.db").ok(),
            Some(Location::Sqlite("/var/r.db".into()))
        );
        assert!(Location::parse("mysql://x").is_err());
        assert!(Location::parse("").is_err());
    }

    #[tokio::test]
    async fn newer_schema_refused_and_reopen_is_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested").join("r.db");
        let loc = path.to_string_lossy().to_string();
        let store = Store::open(&loc).await.expect("open");
        drop(store);
        let store = Store::open(&loc).await.expect("reopen");
        if let Backend::Sqlite(pool) = &store.backend {
            pool.run(|conn| {
                conn.execute(
                    "INSERT INTO kiln_registry_migrations (version, applied_at) VALUES (99, 0)",
                    [],
                )
                .map(|_| ())
                .map_err(|e| RegistryError::conflict(e.to_string()))
            })
            .await
            .expect("insert");
        }
        drop(store);
        let e = Store::open(&loc).await.expect_err("newer schema");
        assert_eq!(
            e,
            RegistryError::SchemaTooNew {
                found: 99,
                supported: schema::LATEST
            }
        );
    }

    #[test]
    fn password_never_shown() {
        let l = Location::parse(
            "postgresql://kiln:s3cret@127.0.0.1:5433/kiln?password=s3cret&sslmode=disable",
        )
        .expect("parse");
        let shown = format!("{l} {l:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("kiln:<redacted>@127.0.0.1:5433/kiln"),
            "{shown}"
        );
        assert!(shown.contains("sslmode=disable"), "{shown}");
    }
}
