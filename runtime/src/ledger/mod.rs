//! The resource ledger: a durable, local record of everything a run creates that could
//! outlive it (cloud resources, `/tmp/kiln-qemu-*` dirs, partial output directories,
//! processes of a step on an `ssh_host`), so that `kiln cleanup` can find and remove
//! what a killed run left behind.
//!
//! The protocol, for each thing created:
//! 1. **intent**: before the call that creates it, a record with the run, build, kind,
//!    region or host, the name / client token it will carry, and its tags;
//! 2. **created**: its id, as soon as the call returns;
//! 3. **resolved**: `deleted` (the undo ran), `released` (it became an artifact or ended
//!    by itself), or `not created` (the call definitely failed).
//!
//! A record that is still `intent` or `created` when its run is dead is a leftover. An
//! `intent` without an id is resolved by `kiln cleanup` through the name, client token or
//! tags it recorded.
//!
//! Invariants:
//! - Every write is its own transaction on an SQLite database in WAL mode with
//!   `synchronous=FULL`, so a record is on disk before the create call is sent, and
//!   survives SIGKILL and power loss.
//! - A live run holds an exclusive lock on `<state>/locks/<run>.lock` for as long as its
//!   process lives (the kernel drops it when the process dies, however it dies).
//!   `kiln cleanup` takes the same lock before it touches a run, so it never touches a
//!   live run and two cleanups never work on the same run.
//! - Records hold no secrets: names, ids, tags, paths, and for remote processes the
//!   *paths* of the key and known_hosts files (never their contents, never passwords).
//!
//! The ledger lives in kiln's state directory ([`state_dir`]): `$KILN_STATE_DIR`, else
//! `$XDG_STATE_HOME/kiln`, else `~/.local/state/kiln`. Host code reaches the build's
//! ledger through its cleanup stack ([`crate::cleanup::CleanupStack::ledger`]), so nothing
//! below the runner depends on the runner.

mod lock;
mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use lock::RunLock;
pub use store::{Record, RecordId, RecordState, RunInfo, RunStatus};

/// kiln's state directory: `$KILN_STATE_DIR`, else `$XDG_STATE_HOME/kiln`, else
/// `~/.local/state/kiln`.
pub fn state_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
    };
    var("KILN_STATE_DIR")
        .or_else(|| var("XDG_STATE_HOME").map(|d| d.join("kiln")))
        .or_else(|| var("HOME").map(|h| h.join(".local").join("state").join("kiln")))
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(
        "no state directory: set KILN_STATE_DIR (or HOME) so kiln can keep its resource ledger"
    )]
    NoStateDir,
    #[error("cannot open the resource ledger in {}: {reason}", .dir.display())]
    Open { dir: PathBuf, reason: String },
    #[error("resource ledger {}: {reason}", .path.display())]
    Db { path: PathBuf, reason: String },
    #[error("no run {run} in the resource ledger {}", .path.display())]
    NoSuchRun { run: String, path: PathBuf },
}

/// What a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Instance,
    KeyPair,
    SecurityGroup,
    Image,
    Snapshot,
    Volume,
    /// A QEMU runtime dir (`/tmp/kiln-qemu-*`: QMP socket, pidfile).
    QemuRuntimeDir,
    /// A build's output directory, until its artifact is kept.
    OutputDir,
    /// A step's script running on a machine (its pid file and script path).
    RemoteProcess,
    /// How a machine was reached (no resource: what `kiln cleanup` needs to reach it
    /// again to stop a remote process).
    SshTarget,
}

impl Kind {
    pub const ALL: &[Kind] = &[
        Kind::Instance,
        Kind::KeyPair,
        Kind::SecurityGroup,
        Kind::Image,
        Kind::Snapshot,
        Kind::Volume,
        Kind::QemuRuntimeDir,
        Kind::OutputDir,
        Kind::RemoteProcess,
        Kind::SshTarget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Instance => "ec2:instance",
            Kind::KeyPair => "ec2:key-pair",
            Kind::SecurityGroup => "ec2:security-group",
            Kind::Image => "ec2:image",
            Kind::Snapshot => "ec2:snapshot",
            Kind::Volume => "ec2:volume",
            Kind::QemuRuntimeDir => "path:qemu-runtime-dir",
            Kind::OutputDir => "path:output-dir",
            Kind::RemoteProcess => "remote-process",
            Kind::SshTarget => "ssh-target",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// What a person calls it ("instance", "output directory").
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Instance => "instance",
            Kind::KeyPair => "key pair",
            Kind::SecurityGroup => "security group",
            Kind::Image => "AMI",
            Kind::Snapshot => "snapshot",
            Kind::Volume => "volume",
            Kind::QemuRuntimeDir => "QEMU runtime directory",
            Kind::OutputDir => "output directory",
            Kind::RemoteProcess => "remote process",
            Kind::SshTarget => "SSH target",
        }
    }

    /// An EC2 resource.
    pub fn is_cloud(self) -> bool {
        matches!(
            self,
            Kind::Instance
                | Kind::KeyPair
                | Kind::SecurityGroup
                | Kind::Image
                | Kind::Snapshot
                | Kind::Volume
        )
    }
}

/// A record about to be written.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub kind: Kind,
    /// The region (EC2), the `user@host:port` (remote processes), or empty (paths).
    pub scope: String,
    /// The AMI, key pair or security group name; the path for local directories; the
    /// remote script path for remote processes.
    pub name: Option<String>,
    /// The idempotency token the create call carries.
    pub token: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// Known already (a path, a remote pid file): the record starts as `created`.
    pub resource_id: Option<String>,
    /// Whatever else cleanup needs (an EC2 endpoint, a pid file path); never secrets.
    pub detail: serde_json::Value,
}

impl NewRecord {
    pub fn new(kind: Kind, scope: impl Into<String>) -> Self {
        NewRecord {
            kind,
            scope: scope.into(),
            name: None,
            token: None,
            tags: BTreeMap::new(),
            resource_id: None,
            detail: serde_json::Value::Null,
        }
    }
}

/// How a record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// kiln removed it.
    Deleted,
    /// Its owner disposed of it: it became an artifact, or it ended by itself.
    Released,
    /// The create call failed: it never existed.
    NotCreated,
}

/// The ledger database. Shared by every build of a run (and by `kiln cleanup`).
pub struct Ledger {
    store: store::Store,
    dir: PathBuf,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("dir", &self.dir).finish()
    }
}

impl Ledger {
    /// Opens (creating) the ledger in `dir`.
    pub fn open(dir: &Path) -> Result<Arc<Ledger>, LedgerError> {
        std::fs::create_dir_all(dir.join("locks")).map_err(|e| LedgerError::Open {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let store = store::Store::open(&dir.join("ledger.sqlite"))?;
        Ok(Arc::new(Ledger {
            store,
            dir: dir.to_path_buf(),
        }))
    }

    /// Opens the ledger in [`state_dir`].
    pub fn open_default() -> Result<Arc<Ledger>, LedgerError> {
        Self::open(&state_dir().ok_or(LedgerError::NoStateDir)?)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn db_path(&self) -> &Path {
        self.store.path()
    }

    /// Starts a run: takes its lock, then records it. The lock lives as long as the
    /// returned handle (and its clones).
    pub fn begin_run(
        self: &Arc<Self>,
        run: &str,
        project: &Path,
    ) -> Result<RunLedger, LedgerError> {
        let lock = RunLock::acquire(&self.lock_path(run)).map_err(|e| LedgerError::Open {
            dir: self.dir.clone(),
            reason: format!("cannot lock run {run}: {e}"),
        })?;
        self.store.insert_run(run, project, std::process::id())?;
        Ok(RunLedger {
            inner: Arc::new(RunInner {
                ledger: self.clone(),
                run: run.to_string(),
                _lock: lock,
            }),
        })
    }

    fn lock_path(&self, run: &str) -> PathBuf {
        // Run ids are uuids; anything else is refused by the caller before it gets here,
        // but keep the file name safe regardless.
        let safe: String = run
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        self.dir.join("locks").join(format!("{safe}.lock"))
    }

    /// Takes a run's lock if its process is gone; `None` while it is live (or another
    /// `kiln cleanup` works on it).
    pub fn try_lock(&self, run: &str) -> Result<Option<RunLock>, LedgerError> {
        RunLock::try_acquire(&self.lock_path(run)).map_err(|e| LedgerError::Db {
            path: self.lock_path(run),
            reason: e.to_string(),
        })
    }

    pub fn runs(&self) -> Result<Vec<RunInfo>, LedgerError> {
        self.store.runs()
    }

    pub fn run(&self, run: &str) -> Result<RunInfo, LedgerError> {
        self.store.run(run)?.ok_or_else(|| LedgerError::NoSuchRun {
            run: run.to_string(),
            path: self.db_path().to_path_buf(),
        })
    }

    /// Every record of a run, oldest first.
    pub fn records(&self, run: &str) -> Result<Vec<Record>, LedgerError> {
        self.store.records(run)
    }

    /// Records an intent (or, with a `resource_id`, something that exists already).
    pub fn intent(&self, run: &str, build: &str, rec: &NewRecord) -> Result<RecordId, LedgerError> {
        self.store.insert_record(run, build, rec)
    }

    /// The create call returned `resource_id`.
    pub fn created(&self, id: RecordId, resource_id: &str) -> Result<(), LedgerError> {
        self.store.set_created(id, resource_id)
    }

    /// Merges `patch` (an object) into the record's detail.
    pub fn add_detail(&self, id: RecordId, patch: &serde_json::Value) -> Result<(), LedgerError> {
        self.store.merge_detail(id, patch)
    }

    pub fn resolve(
        &self,
        id: RecordId,
        how: Resolution,
        note: Option<&str>,
    ) -> Result<(), LedgerError> {
        self.store.resolve(id, how, note)
    }

    /// Notes why a removal failed (the record stays open).
    pub fn note(&self, id: RecordId, note: &str) -> Result<(), LedgerError> {
        self.store.note(id, note)
    }

    pub fn set_run_status(&self, run: &str, status: RunStatus) -> Result<(), LedgerError> {
        self.store.set_run_status(run, status)
    }

    /// Dead runs (lock free) with open records, newest first: what `kiln cleanup` would
    /// work on. Runs whose process is alive are left out.
    pub fn stale_runs(&self) -> Result<Vec<(RunInfo, Vec<Record>)>, LedgerError> {
        let mut out = Vec::new();
        for run in self.store.runs()? {
            if run.status == RunStatus::Cleaned {
                continue;
            }
            let open: Vec<Record> = self
                .store
                .records(&run.run)?
                .into_iter()
                .filter(Record::is_leftover)
                .collect();
            if open.is_empty() {
                continue;
            }
            // Probe the lock without keeping it: a live run holds it.
            if self.try_lock(&run.run)?.is_none() {
                continue;
            }
            out.push((run, open));
        }
        Ok(out)
    }

    /// Drops a cleaned run's lock file (the run is over; nobody locks it again for work).
    pub fn forget_lock(&self, run: &str) {
        let _ = std::fs::remove_file(self.lock_path(run));
    }
}

/// One run's handle on the ledger; holds the run's lock. Cheap to clone.
#[derive(Clone)]
pub struct RunLedger {
    inner: Arc<RunInner>,
}

struct RunInner {
    ledger: Arc<Ledger>,
    run: String,
    _lock: RunLock,
}

impl RunLedger {
    pub fn run_id(&self) -> &str {
        &self.inner.run
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.inner.ledger
    }

    /// The handle host code of one build uses.
    pub fn for_build(&self, build: &str) -> BuildLedger {
        BuildLedger {
            run: self.clone(),
            build: build.to_string(),
        }
    }

    /// The run is over: `cleaned` if nothing it recorded is left, else `ended` (what is
    /// left waits for `kiln cleanup`). Returns the open records.
    pub fn finish(&self) -> Result<Vec<Record>, LedgerError> {
        let l = &self.inner.ledger;
        let open: Vec<Record> = l
            .records(&self.inner.run)?
            .into_iter()
            .filter(Record::is_leftover)
            .collect();
        let status = if open.is_empty() {
            RunStatus::Cleaned
        } else {
            RunStatus::Ended
        };
        l.set_run_status(&self.inner.run, status)?;
        Ok(open)
    }
}

/// One build's handle on the ledger.
#[derive(Clone)]
pub struct BuildLedger {
    run: RunLedger,
    build: String,
}

impl std::fmt::Debug for BuildLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildLedger")
            .field("run", &self.run.run_id())
            .field("build", &self.build)
            .finish()
    }
}

impl BuildLedger {
    pub fn run_id(&self) -> &str {
        self.run.run_id()
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        self.run.ledger()
    }

    pub fn intent(&self, rec: &NewRecord) -> Result<RecordId, LedgerError> {
        self.ledger().intent(self.run_id(), &self.build, rec)
    }

    pub fn created(&self, id: RecordId, resource_id: &str) -> Result<(), LedgerError> {
        self.ledger().created(id, resource_id)
    }

    pub fn add_detail(&self, id: RecordId, patch: &serde_json::Value) -> Result<(), LedgerError> {
        self.ledger().add_detail(id, patch)
    }

    pub fn resolve(&self, id: RecordId, how: Resolution) -> Result<(), LedgerError> {
        self.ledger().resolve(id, how, None)
    }

    /// Records a step's script about to run on `target` (`user@host:port`): `script` is
    /// its remote path, whose `.pid` sibling holds its pid while it runs.
    pub fn record_remote_process(&self, target: &str, script: &str) -> Option<RecordId> {
        let mut rec = NewRecord::new(Kind::RemoteProcess, target);
        rec.name = Some(script.to_string());
        rec.resource_id = Some(format!("{script}.pid"));
        self.intent(&rec)
            .map_err(|e| tracing::warn!("cannot record the remote script in the ledger: {e}"))
            .ok()
    }

    /// Another run's open record of the same local path is closed: this build took the
    /// path over (a new output directory where a killed build left one).
    pub fn supersede(&self, kind: Kind, name: &str, mine: RecordId) {
        if let Err(e) = self
            .ledger()
            .store
            .supersede(kind, name, mine, self.run_id())
        {
            tracing::warn!("cannot update the resource ledger: {e}");
        }
    }

    /// Records a local directory that exists now and must go when the returned guard
    /// is dropped (after the directory itself is removed).
    pub fn record_path(&self, kind: Kind, path: &Path) -> Option<PathRecord> {
        let mut rec = NewRecord::new(kind, "");
        rec.name = Some(path.display().to_string());
        rec.resource_id = Some(path.display().to_string());
        match self.intent(&rec) {
            Ok(id) => Some(PathRecord {
                ledger: self.clone(),
                id,
                path: path.to_path_buf(),
            }),
            Err(e) => {
                tracing::warn!("cannot record {} in the ledger: {e}", path.display());
                None
            }
        }
    }
}

/// A local directory on record until dropped; drop it after the directory is removed
/// (a `TempDir` declared before it in the same struct or tuple is).
pub struct PathRecord {
    ledger: BuildLedger,
    id: RecordId,
    path: PathBuf,
}

impl Drop for PathRecord {
    fn drop(&mut self) {
        // A directory that could not be removed stays on record for `kiln cleanup`.
        if !self.path.exists()
            && let Err(e) = self.ledger.resolve(self.id, Resolution::Deleted)
        {
            tracing::warn!("cannot update the ledger: {e}");
        }
    }
}

/// A one-line summary of stale runs for the start of a build, if there are any.
pub fn stale_line(stale: &[(RunInfo, Vec<Record>)]) -> Option<String> {
    if stale.is_empty() {
        return None;
    }
    let leftovers: usize = stale.iter().map(|(_, r)| r.len()).sum();
    let cloud: usize = stale
        .iter()
        .flat_map(|(_, r)| r.iter())
        .filter(|r| r.kind.is_cloud())
        .count();
    let runs = stale.len();
    Some(format!(
        "kiln: {runs} earlier run{} left {leftovers} resource{} behind ({cloud} in the cloud); \
         `kiln cleanup` removes them (`kiln cleanup --dry-run` lists them)",
        if runs == 1 { "" } else { "s" },
        if leftovers == 1 { "" } else { "s" },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> (tempfile::TempDir, Arc<Ledger>) {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        (dir, l)
    }

    #[test]
    fn intent_created_resolved_and_reopened() {
        let (dir, l) = ledger();
        let run = l.begin_run("run-1", Path::new("/proj")).unwrap();
        let b = run.for_build("web.aws");
        let mut rec = NewRecord::new(Kind::Instance, "us-east-1");
        rec.token = Some("tok-1".into());
        rec.tags.insert("kiln:run".into(), "run-1".into());
        let id = b.intent(&rec).unwrap();
        let key = b
            .intent(&NewRecord::new(Kind::KeyPair, "us-east-1"))
            .unwrap();
        b.created(id, "i-123").unwrap();
        b.add_detail(id, &serde_json::json!({ "endpoint": "http://x" }))
            .unwrap();
        b.resolve(key, Resolution::NotCreated).unwrap();
        drop(b);
        drop(run);

        // A second process opening the same database sees everything.
        let l2 = Ledger::open(dir.path()).unwrap();
        let recs = l2.records("run-1").unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].kind, Kind::Instance);
        assert_eq!(recs[0].resource_id.as_deref(), Some("i-123"));
        assert_eq!(recs[0].state, RecordState::Created);
        assert_eq!(recs[0].token.as_deref(), Some("tok-1"));
        assert_eq!(
            recs[0].tags.get("kiln:run").map(String::as_str),
            Some("run-1")
        );
        assert_eq!(recs[0].detail["endpoint"], "http://x");
        assert_eq!(recs[0].build, "web.aws");
        assert!(recs[0].is_leftover());
        assert_eq!(recs[1].state, RecordState::NotCreated);
        assert!(!recs[1].is_leftover());
        let info = l2.run("run-1").unwrap();
        assert_eq!(info.project, "/proj");
        assert_eq!(info.status, RunStatus::Running);
    }

    #[test]
    fn a_live_run_is_never_stale_and_a_dead_one_is() {
        let (_dir, l) = ledger();
        let live = l.begin_run("live", Path::new("/p")).unwrap();
        live.for_build("b")
            .intent(&NewRecord::new(Kind::Instance, "us-east-1"))
            .unwrap();
        assert!(l.try_lock("live").unwrap().is_none(), "live run is locked");
        assert!(l.stale_runs().unwrap().is_empty());

        let dead = l.begin_run("dead", Path::new("/p")).unwrap();
        dead.for_build("b")
            .intent(&NewRecord::new(Kind::SecurityGroup, "us-east-1"))
            .unwrap();
        drop(dead); // the process "died": its lock is gone
        let stale = l.stale_runs().unwrap();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].0.run, "dead");
        let line = stale_line(&stale).unwrap();
        assert!(line.contains("1 earlier run left 1 resource"), "{line}");
        assert!(line.contains("kiln cleanup"), "{line}");
        // While a cleanup holds it, it is not stale to others either.
        let held = l
            .try_lock("dead")
            .unwrap()
            .expect("dead run's lock is free");
        assert!(l.stale_runs().unwrap().is_empty());
        drop(held);
        drop(live);
    }

    #[test]
    fn finish_marks_clean_runs_cleaned() {
        let (_dir, l) = ledger();
        let run = l.begin_run("r", Path::new("/p")).unwrap();
        let b = run.for_build("b");
        let id = b.intent(&NewRecord::new(Kind::OutputDir, "")).unwrap();
        assert_eq!(run.finish().unwrap().len(), 1);
        assert_eq!(l.run("r").unwrap().status, RunStatus::Ended);
        b.resolve(id, Resolution::Released).unwrap();
        assert!(run.finish().unwrap().is_empty());
        assert_eq!(l.run("r").unwrap().status, RunStatus::Cleaned);
        assert!(matches!(l.run("nope"), Err(LedgerError::NoSuchRun { .. })));
    }

    #[test]
    fn path_records_resolve_when_the_directory_is_gone() {
        let (_dir, l) = ledger();
        let run = l.begin_run("r", Path::new("/p")).unwrap();
        let b = run.for_build("b");
        let tmp = tempfile::tempdir().unwrap();
        let kept = tempfile::tempdir().unwrap();
        {
            let _guard = (
                tempfile::tempdir_in(tmp.path()).unwrap(),
                b.record_path(Kind::QemuRuntimeDir, &tmp.path().join("gone")),
            );
            let _still = b.record_path(Kind::QemuRuntimeDir, kept.path());
        }
        let recs = l.records("r").unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].state, RecordState::Deleted, "{recs:?}");
        assert_eq!(recs[1].state, RecordState::Created, "still there: {recs:?}");
    }

    #[test]
    fn kinds_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(*k));
        }
        assert_eq!(Kind::parse("nope"), None);
    }
}
