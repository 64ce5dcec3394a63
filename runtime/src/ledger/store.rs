//! The ledger's SQLite database: two tables (runs, records), WAL, `synchronous=FULL`,
//! one transaction per write. Several kiln processes share it; SQLite's own locking and
//! a busy timeout serialise their writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Kind, LedgerError, NewRecord, Resolution};

/// Writers wait this long for another process's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started TEXT NOT NULL,
    started_unix INTEGER NOT NULL,
    status TEXT NOT NULL,
    ended TEXT
);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    build TEXT NOT NULL,
    kind TEXT NOT NULL,
    scope TEXT NOT NULL,
    name TEXT,
    token TEXT,
    tags TEXT NOT NULL,
    resource_id TEXT,
    state TEXT NOT NULL,
    detail TEXT NOT NULL,
    note TEXT,
    created TEXT NOT NULL,
    created_unix INTEGER NOT NULL,
    updated TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_run ON records (run, state);
";

/// A record's id in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordId(pub i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    /// The create call is about to be (or was) made; the id is not known.
    Intent,
    Created,
    Deleted,
    Released,
    NotCreated,
    /// Not a resource (how a machine was reached).
    Info,
}

impl RecordState {
    fn as_str(self) -> &'static str {
        match self {
            RecordState::Intent => "intent",
            RecordState::Created => "created",
            RecordState::Deleted => "deleted",
            RecordState::Released => "released",
            RecordState::NotCreated => "not-created",
            RecordState::Info => "info",
        }
    }

    fn parse(s: &str) -> RecordState {
        match s {
            "intent" => RecordState::Intent,
            "created" => RecordState::Created,
            "deleted" => RecordState::Deleted,
            "released" => RecordState::Released,
            "not-created" => RecordState::NotCreated,
            _ => RecordState::Info,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Started and not ended (alive if its lock is held, else killed).
    Running,
    /// Ended with leftovers (an undo failed, or `--on-error=abort` kept them).
    Ended,
    /// Nothing left.
    Cleaned,
}

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Ended => "ended",
            RunStatus::Cleaned => "cleaned",
        }
    }

    fn parse(s: &str) -> RunStatus {
        match s {
            "ended" => RunStatus::Ended,
            "cleaned" => RunStatus::Cleaned,
            _ => RunStatus::Running,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunInfo {
    pub run: String,
    pub project: String,
    pub pid: u32,
    /// RFC 3339.
    pub started: String,
    pub started_unix: i64,
    pub status: RunStatus,
}

#[derive(Debug, Clone)]
pub struct Record {
    pub id: RecordId,
    pub run: String,
    pub build: String,
    pub kind: Kind,
    pub scope: String,
    pub name: Option<String>,
    pub token: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub resource_id: Option<String>,
    pub state: RecordState,
    pub detail: serde_json::Value,
    pub note: Option<String>,
    /// When the intent was written (unix seconds).
    pub created_unix: i64,
}

impl Record {
    /// Still there as far as the ledger knows (intent or created, not info).
    pub fn is_leftover(&self) -> bool {
        matches!(self.state, RecordState::Intent | RecordState::Created)
            && self.kind != Kind::SshTarget
    }

    /// "instance i-0abc (us-east-1)", "output directory /p/output".
    pub fn describe(&self) -> String {
        let what = self.kind.describe();
        let id = match (&self.resource_id, &self.name) {
            (Some(id), Some(name)) if id != name => format!("{id} ({name})"),
            (Some(id), _) => id.clone(),
            (None, Some(name)) => format!("named {name:?} (id not recorded)"),
            (None, None) => match &self.token {
                Some(t) => format!("with client token {t} (id not recorded)"),
                None => "(id not recorded)".into(),
            },
        };
        if self.scope.is_empty() {
            format!("{what} {id}")
        } else {
            format!("{what} {id} in {}", self.scope)
        }
    }
}

pub(super) struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

fn now() -> (String, i64) {
    let t = time::OffsetDateTime::now_utc();
    (
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        t.unix_timestamp(),
    )
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, LedgerError> {
        let err = |e: rusqlite::Error| LedgerError::Db {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // WAL: readers never block the writer of another run; FULL: a committed record
        // is on disk (WAL fsynced) before the call it announces is made.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, LedgerError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|e| LedgerError::Db {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    pub fn insert_run(&self, run: &str, project: &Path, pid: u32) -> Result<(), LedgerError> {
        let (ts, unix) = now();
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (run, project, pid, started, started_unix, status) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'running')",
                params![run, project.display().to_string(), pid, ts, unix],
            )
            .map(|_| ())
        })
    }

    pub fn set_run_status(&self, run: &str, status: RunStatus) -> Result<(), LedgerError> {
        let (ts, _) = now();
        self.with(|c| {
            c.execute(
                "UPDATE runs SET status = ?2, ended = COALESCE(ended, ?3) WHERE run = ?1",
                params![run, status.as_str(), ts],
            )
            .map(|_| ())
        })
    }

    fn run_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunInfo> {
        let status: String = row.get(5)?;
        Ok(RunInfo {
            run: row.get(0)?,
            project: row.get(1)?,
            pid: row.get(2)?,
            started: row.get(3)?,
            started_unix: row.get(4)?,
            status: RunStatus::parse(&status),
        })
    }

    /// Newest first.
    pub fn runs(&self) -> Result<Vec<RunInfo>, LedgerError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT run, project, pid, started, started_unix, status FROM runs \
                 ORDER BY started_unix DESC, rowid DESC",
            )?;
            st.query_map([], Self::run_of)?.collect()
        })
    }

    pub fn run(&self, run: &str) -> Result<Option<RunInfo>, LedgerError> {
        self.with(|c| {
            c.query_row(
                "SELECT run, project, pid, started, started_unix, status FROM runs WHERE run = ?1",
                [run],
                Self::run_of,
            )
            .optional()
        })
    }

    pub fn insert_record(
        &self,
        run: &str,
        build: &str,
        rec: &NewRecord,
    ) -> Result<RecordId, LedgerError> {
        let (ts, unix) = now();
        let state = if rec.kind == Kind::SshTarget {
            RecordState::Info
        } else if rec.resource_id.is_some() {
            RecordState::Created
        } else {
            RecordState::Intent
        };
        let tags = serde_json::to_string(&rec.tags).unwrap_or_else(|_| "{}".into());
        let detail = if rec.detail.is_null() {
            "{}".to_string()
        } else {
            rec.detail.to_string()
        };
        self.with(|c| {
            c.execute(
                "INSERT INTO records (run, build, kind, scope, name, token, tags, resource_id, \
                 state, detail, created, created_unix, updated) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?11)",
                params![
                    run,
                    build,
                    rec.kind.as_str(),
                    rec.scope,
                    rec.name,
                    rec.token,
                    tags,
                    rec.resource_id,
                    state.as_str(),
                    detail,
                    ts,
                    unix
                ],
            )?;
            Ok(RecordId(c.last_insert_rowid()))
        })
    }

    pub fn set_created(&self, id: RecordId, resource_id: &str) -> Result<(), LedgerError> {
        let (ts, _) = now();
        self.with(|c| {
            c.execute(
                "UPDATE records SET resource_id = ?2, updated = ?3, \
                 state = CASE WHEN state = 'intent' THEN 'created' ELSE state END WHERE id = ?1",
                params![id.0, resource_id, ts],
            )
            .map(|_| ())
        })
    }

    pub fn merge_detail(&self, id: RecordId, patch: &serde_json::Value) -> Result<(), LedgerError> {
        let (ts, _) = now();
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            let current: Option<String> = tx
                .query_row("SELECT detail FROM records WHERE id = ?1", [id.0], |r| {
                    r.get(0)
                })
                .optional()?;
            let mut detail: serde_json::Value = current
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_else(|| serde_json::json!({}));
            if let (Some(d), Some(p)) = (detail.as_object_mut(), patch.as_object()) {
                for (k, v) in p {
                    d.insert(k.clone(), v.clone());
                }
            }
            tx.execute(
                "UPDATE records SET detail = ?2, updated = ?3 WHERE id = ?1",
                params![id.0, detail.to_string(), ts],
            )?;
            tx.commit()
        })
    }

    pub fn resolve(
        &self,
        id: RecordId,
        how: Resolution,
        note: Option<&str>,
    ) -> Result<(), LedgerError> {
        let state = match how {
            Resolution::Deleted => RecordState::Deleted,
            Resolution::Released => RecordState::Released,
            Resolution::NotCreated => RecordState::NotCreated,
        };
        let (ts, _) = now();
        self.with(|c| {
            c.execute(
                "UPDATE records SET state = ?2, note = COALESCE(?3, note), updated = ?4 WHERE id = ?1",
                params![id.0, state.as_str(), note, ts],
            )
            .map(|_| ())
        })
    }

    pub fn supersede(
        &self,
        kind: Kind,
        name: &str,
        mine: RecordId,
        run: &str,
    ) -> Result<(), LedgerError> {
        let (ts, _) = now();
        let note = format!("taken over by run {run}");
        self.with(|c| {
            c.execute(
                "UPDATE records SET state = 'released', note = ?4, updated = ?5 \
                 WHERE kind = ?1 AND name = ?2 AND id != ?3 AND state IN ('intent', 'created')",
                params![kind.as_str(), name, mine.0, note, ts],
            )
            .map(|_| ())
        })
    }

    pub fn note(&self, id: RecordId, note: &str) -> Result<(), LedgerError> {
        let (ts, _) = now();
        self.with(|c| {
            c.execute(
                "UPDATE records SET note = ?2, updated = ?3 WHERE id = ?1",
                params![id.0, note, ts],
            )
            .map(|_| ())
        })
    }

    /// Oldest first.
    pub fn records(&self, run: &str) -> Result<Vec<Record>, LedgerError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, run, build, kind, scope, name, token, tags, resource_id, state, \
                 detail, note, created_unix FROM records WHERE run = ?1 ORDER BY id",
            )?;
            let rows = st.query_map([run], |row| {
                let kind: String = row.get(3)?;
                let tags: String = row.get(7)?;
                let state: String = row.get(9)?;
                let detail: String = row.get(10)?;
                Ok((
                    kind,
                    Record {
                        id: RecordId(row.get(0)?),
                        run: row.get(1)?,
                        build: row.get(2)?,
                        kind: Kind::SshTarget,
                        scope: row.get(4)?,
                        name: row.get(5)?,
                        token: row.get(6)?,
                        tags: serde_json::from_str(&tags).unwrap_or_default(),
                        resource_id: row.get(8)?,
                        state: RecordState::parse(&state),
                        detail: serde_json::from_str(&detail)
                            .unwrap_or_else(|_| serde_json::json!({})),
                        note: row.get(11)?,
                        created_unix: row.get(12)?,
                    },
                ))
            })?;
            let mut out = Vec::new();
            for r in rows {
                let (kind, mut rec) = r?;
                // A kind this kiln does not know (written by a newer one) is skipped,
                // not guessed at.
                match Kind::parse(&kind) {
                    Some(k) => {
                        rec.kind = k;
                        out.push(rec);
                    }
                    None => tracing::warn!(kind, "unknown record kind in the ledger; skipped"),
                }
            }
            Ok(out)
        })
    }
}
