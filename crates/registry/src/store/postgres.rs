//! The shared backend: PostgreSQL through `tokio-postgres` with a `deadpool` pool.
//!
//! Write transactions run at READ COMMITTED (reads run statement by statement, see
//! [`PgTx::Read`]); writers serialise per bucket by locking the bucket row
//! (`SELECT … FOR UPDATE`), so two recorders adding builds to one version see each other's
//! builds and exactly one of them marks the version complete. Serialization failures,
//! deadlocks and lost connections are retried.

use std::error::Error as _;
use std::str::FromStr;
use std::time::Duration;

use bytes::BytesMut;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::error::RegistryError;
use crate::store::sql::{Cell, Dialect, Row, Tx, Value};

/// Connections per store.
const MAX_CONNECTIONS: usize = 16;
/// Attempts of a transaction that failed transiently.
pub(crate) const ATTEMPTS: u32 = 5;

pub(crate) struct PgPool {
    pool: Pool,
}

/// Converts a driver error; never includes the connection string (it may hold a password).
fn err(operation: &'static str) -> impl Fn(tokio_postgres::Error) -> RegistryError {
    move |e| {
        let transient = e.is_closed()
            || matches!(
                e.code(),
                Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::ADMIN_SHUTDOWN
                    || *c == SqlState::CANNOT_CONNECT_NOW
            );
        RegistryError::Storage {
            backend: "postgres",
            operation,
            message: describe(&e),
            transient,
        }
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match e.source() {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

impl PgPool {
    /// Connects (checking the server answers) and applies migrations.
    pub(crate) async fn open(url: &str) -> Result<PgPool, RegistryError> {
        let config = tokio_postgres::Config::from_str(url).map_err(|e| RegistryError::Storage {
            backend: "postgres",
            operation: "parsing the registry URL",
            message: format!("not a valid postgres:// URL: {e}"),
            transient: false,
        })?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(MAX_CONNECTIONS)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(60)))
            .create_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| RegistryError::Storage {
                backend: "postgres",
                operation: "creating the connection pool",
                message: e.to_string(),
                transient: false,
            })?;
        let pg = PgPool { pool };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut client = pg.client().await?;
            let mut tx = PgTx::begin(&mut client, true).await?;
            let r = crate::store::schema::migrate(&mut tx).await;
            let r = match r {
                Ok(()) => tx.commit().await,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => return Ok(pg),
                Err(e) if is_transient(&e) && attempt < ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client, RegistryError> {
        self.pool.get().await.map_err(|e| {
            let message = match &e {
                deadpool_postgres::PoolError::Backend(be) => describe(be),
                other => other.to_string(),
            };
            RegistryError::Storage {
                backend: "postgres",
                operation: "connecting",
                message,
                transient: true,
            }
        })
    }
}

pub(crate) fn is_transient(e: &RegistryError) -> bool {
    matches!(
        e,
        RegistryError::Storage {
            transient: true,
            ..
        }
    )
}

pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(25 * u64::from(attempt))
}

/// Where a PostgreSQL operation runs.
pub(crate) enum PgTx<'c> {
    /// A write transaction (READ COMMITTED; writers lock the bucket row).
    Write(deadpool_postgres::Transaction<'c>),
    /// Reads run statement by statement (autocommit): no BEGIN/COMMIT round trips, which
    /// are a third of a channel lookup's latency. Each statement sees committed data only;
    /// complete versions never change, so their reads are always consistent, and a version
    /// being recorded meanwhile may at worst look half-recorded for one request.
    Read(&'c deadpool_postgres::Client),
}

impl<'c> PgTx<'c> {
    pub(crate) async fn begin(
        client: &'c mut deadpool_postgres::Client,
        write: bool,
    ) -> Result<PgTx<'c>, RegistryError> {
        if !write {
            return Ok(PgTx::Read(client));
        }
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(err("beginning a transaction"))?;
        Ok(PgTx::Write(tx))
    }

    pub(crate) async fn commit(self) -> Result<(), RegistryError> {
        match self {
            PgTx::Write(tx) => tx.commit().await.map_err(err("committing")),
            PgTx::Read(_) => Ok(()),
        }
    }
}

async fn query_on<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[Value<'_>],
) -> Result<Vec<Row>, RegistryError> {
    let stmt = c
        .prepare_cached(sql)
        .await
        .map_err(err("preparing a query"))?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let rows = c.query(&stmt, &refs).await.map_err(err("querying"))?;
    rows.iter()
        .map(|r| {
            Ok(Row {
                cells: cells(r)?,
                backend: "postgres",
            })
        })
        .collect()
}

async fn execute_on<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[Value<'_>],
) -> Result<u64, RegistryError> {
    let stmt = c
        .prepare_cached(sql)
        .await
        .map_err(err("preparing a statement"))?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    c.execute(&stmt, &refs).await.map_err(err("writing"))
}

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            // A parameter PostgreSQL typed as int4 still takes our i64 when it fits.
            Value::Int(v) | Value::OptInt(Some(v)) if *ty == Type::INT4 => {
                i32::try_from(*v)?.to_sql_checked(ty, out)
            }
            Value::Int(v) => v.to_sql_checked(ty, out),
            Value::OptInt(v) => v.to_sql_checked(ty, out),
            Value::Text(s) => s.to_sql_checked(ty, out),
            Value::OptText(s) => s.to_sql_checked(ty, out),
            Value::Bool(b) => b.to_sql_checked(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty)
            || <i32 as ToSql>::accepts(ty)
            || <&str as ToSql>::accepts(ty)
            || <bool as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

fn cells(row: &tokio_postgres::Row) -> Result<Vec<Cell>, RegistryError> {
    let bad = |i: usize, e: tokio_postgres::Error| err("reading a column")(e).with_column(i);
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let ty = col.type_();
        let cell = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)
                .map_err(|e| bad(i, e))?
                .map_or(Cell::Null, Cell::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)
                .map_err(|e| bad(i, e))?
                .map_or(Cell::Null, |v| Cell::Int(i64::from(v)))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)
                .map_err(|e| bad(i, e))?
                .map_or(Cell::Null, |v| Cell::Int(i64::from(v)))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)
                .map_err(|e| bad(i, e))?
                .map_or(Cell::Null, Cell::Bool)
        } else if *ty == Type::TEXT
            || *ty == Type::VARCHAR
            || *ty == Type::NAME
            || *ty == Type::BPCHAR
        {
            row.try_get::<_, Option<String>>(i)
                .map_err(|e| bad(i, e))?
                .map_or(Cell::Null, Cell::Text)
        } else {
            return Err(RegistryError::Storage {
                backend: "postgres",
                operation: "reading a column",
                message: format!("column {i} has the unexpected type {ty}"),
                transient: false,
            });
        };
        out.push(cell);
    }
    Ok(out)
}

trait WithColumn {
    fn with_column(self, i: usize) -> Self;
}

impl WithColumn for RegistryError {
    fn with_column(self, i: usize) -> Self {
        match self {
            RegistryError::Storage {
                backend,
                operation,
                message,
                transient,
            } => RegistryError::Storage {
                backend,
                operation,
                message: format!("column {i}: {message}"),
                transient,
            },
            other => other,
        }
    }
}

impl Tx for PgTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, RegistryError> {
        match self {
            PgTx::Write(tx) => query_on(tx, sql, params).await,
            PgTx::Read(c) => query_on(*c, sql, params).await,
        }
    }

    async fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, RegistryError> {
        match self {
            PgTx::Write(tx) => execute_on(tx, sql, params).await,
            PgTx::Read(c) => execute_on(*c, sql, params).await,
        }
    }

    async fn batch(&mut self, sql: &str) -> Result<(), RegistryError> {
        match self {
            PgTx::Write(tx) => tx.batch_execute(sql).await.map_err(err("migrating")),
            PgTx::Read(c) => c.batch_execute(sql).await.map_err(err("migrating")),
        }
    }
}
