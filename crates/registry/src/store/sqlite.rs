//! The embedded backend: one SQLite file (bundled SQLite, WAL).
//!
//! Safe for several processes writing one file: every write transaction starts with
//! `BEGIN IMMEDIATE` (takes the write lock up front, so a transaction never has to upgrade a
//! read lock and fail), waits up to [`BUSY_TIMEOUT`] for the lock, and is retried a few times
//! on `SQLITE_BUSY`. rusqlite is blocking, so each transaction runs on tokio's blocking pool
//! with a connection from a small pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::Semaphore;

use crate::error::RegistryError;
use crate::store::sql::{Cell, Dialect, Row, Tx, Value};

/// How long a writer waits for another process's write lock before the attempt fails.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections kept open (and so transactions in flight) per store.
const MAX_CONNECTIONS: usize = 8;
/// Attempts of a transaction that failed with `SQLITE_BUSY`.
const ATTEMPTS: u32 = 5;

pub(crate) struct SqlitePool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

/// `PRAGMA journal_mode=WAL`, retried while another process holds the lock it needs.
/// Switching a new file to WAL takes an exclusive lock, and SQLite answers `SQLITE_BUSY`
/// at once, without the busy handler, where waiting could deadlock: several processes
/// opening one new registry at the same moment (CI saw "database is locked" with 8).
/// Once one of them has switched the file, WAL persists in it and the pragma is a no-op.
fn enable_wal(conn: &Connection) -> Result<String, RegistryError> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(5);
    loop {
        // journal_mode answers a row: the mode now in force.
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
            Ok(mode) => return Ok(mode),
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(err("enabling WAL")(e)),
        }
    }
}

fn err(operation: &'static str) -> impl Fn(rusqlite::Error) -> RegistryError {
    move |e| {
        let transient = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        RegistryError::Storage {
            backend: "sqlite",
            operation,
            message: e.to_string(),
            transient,
        }
    }
}

impl SqlitePool {
    /// Opens (creating) the file, sets WAL and applies migrations.
    pub(crate) async fn open(path: &Path) -> Result<Arc<SqlitePool>, RegistryError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.exists()
        {
            std::fs::create_dir_all(parent).map_err(|e| RegistryError::Storage {
                backend: "sqlite",
                operation: "creating the registry directory",
                message: format!("{}: {e}", parent.display()),
                transient: false,
            })?;
        }
        let pool = Arc::new(SqlitePool {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        });
        pool.run(|conn| {
            transact(conn, true, |tx| {
                futures_executor::block_on(crate::store::schema::migrate(tx))
            })
        })
        .await?;
        Ok(pool)
    }

    fn connect(&self) -> Result<Connection, RegistryError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| RegistryError::Storage {
            backend: "sqlite",
            operation: "opening the registry",
            message: format!("{}: {e}", self.path.display()),
            transient: false,
        })?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(err("setting the busy timeout"))?;
        let mode = enable_wal(&conn)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(RegistryError::Storage {
                backend: "sqlite",
                operation: "enabling WAL",
                message: format!(
                    "{} stays in journal mode {mode:?}; is it on a filesystem without shared memory (NFS)?",
                    self.path.display()
                ),
                transient: false,
            });
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
            .map_err(err("setting pragmas"))?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    /// Runs `f` with a pooled connection on the blocking pool.
    pub(crate) async fn run<R, F>(self: &Arc<Self>, f: F) -> Result<R, RegistryError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, RegistryError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| RegistryError::Storage {
                backend: "sqlite",
                operation: "waiting for a connection",
                message: "the store is closed".into(),
                transient: false,
            })?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = pool.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut conn = match conn {
                Some(c) => c,
                None => pool.connect()?,
            };
            let out = f(&mut conn);
            pool.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
            out
        })
        .await
        .map_err(|e| RegistryError::Storage {
            backend: "sqlite",
            operation: "running a transaction",
            message: format!("the worker thread failed: {e}"),
            transient: false,
        })?
    }
}

/// Runs `body` in a transaction (`BEGIN IMMEDIATE` when `write`), committing on success and
/// retrying on `SQLITE_BUSY`.
pub(crate) fn transact<R>(
    conn: &mut Connection,
    write: bool,
    mut body: impl FnMut(&mut SqliteTx<'_>) -> Result<R, RegistryError>,
) -> Result<R, RegistryError> {
    let behavior = if write {
        TransactionBehavior::Immediate
    } else {
        TransactionBehavior::Deferred
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = conn
            .transaction_with_behavior(behavior)
            .map_err(err("beginning a transaction"))
            .and_then(|tx| {
                let mut stx = SqliteTx { tx };
                let out = body(&mut stx)?;
                stx.tx.commit().map_err(err("committing"))?;
                Ok(out)
            });
        match result {
            Err(RegistryError::Storage {
                transient: true, ..
            }) if attempt < ATTEMPTS => {
                tracing::debug!(attempt, "sqlite busy; retrying the transaction");
                std::thread::sleep(Duration::from_millis(20 * u64::from(attempt)));
            }
            other => return other,
        }
    }
}

/// An open SQLite transaction.
pub(crate) struct SqliteTx<'c> {
    tx: rusqlite::Transaction<'c>,
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Int(v) | Value::OptInt(Some(v)) => ValueRef::Integer(*v),
            Value::Bool(b) => ValueRef::Integer(i64::from(*b)),
            Value::Text(s) | Value::OptText(Some(s)) => ValueRef::Text(s.as_bytes()),
            Value::OptInt(None) | Value::OptText(None) => ValueRef::Null,
        }))
    }
}

/// `$1` → `?1`: SQLite's numbered parameters. Statements never contain `$` otherwise.
fn numbered(sql: &str) -> String {
    sql.replace('$', "?")
}

impl Tx for SqliteTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, RegistryError> {
        let mut stmt = self
            .tx
            .prepare_cached(&numbered(sql))
            .map_err(err("preparing a query"))?;
        let n = stmt.column_count();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(err("querying"))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(err("reading rows"))? {
            let mut cells = Vec::with_capacity(n);
            for i in 0..n {
                let cell = match r.get_ref(i).map_err(err("reading a column"))? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(v) => Cell::Int(v),
                    ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Real(_) | ValueRef::Blob(_) => {
                        return Err(RegistryError::Storage {
                            backend: "sqlite",
                            operation: "reading a column",
                            message: format!("column {i} has an unexpected type"),
                            transient: false,
                        });
                    }
                };
                cells.push(cell);
            }
            out.push(Row {
                cells,
                backend: "sqlite",
            });
        }
        Ok(out)
    }

    async fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, RegistryError> {
        let mut stmt = self
            .tx
            .prepare_cached(&numbered(sql))
            .map_err(err("preparing a statement"))?;
        let n = stmt
            .execute(rusqlite::params_from_iter(params.iter()))
            .map_err(err("writing"))?;
        Ok(n as u64)
    }

    async fn batch(&mut self, sql: &str) -> Result<(), RegistryError> {
        self.tx.execute_batch(sql).map_err(err("migrating"))
    }
}
