//! The per-build cleanup stack.
//!
//! Every host primitive that creates something (a VM process, an overlay disk, a temp
//! dir, a cloud resource) pushes its undo here *before it returns*, so a script that
//! crashes, times out or is interrupted can never leak what the host made for it.
//! When a resource is disposed of normally (the VM shut down, the disk became an
//! artifact) its owner calls [`CleanupStack::release`].
//!
//! An entry may be *tracked*: tied to a record in the run's resource ledger
//! ([`crate::ledger`]), which then follows it: a release marks the record released, a
//! successful undo marks it deleted, and a failed undo (or SIGKILL) leaves it open for
//! `kiln cleanup`. Host code reaches the ledger through [`CleanupStack::ledger`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::ledger::{BuildLedger, RecordId, Resolution};

type Undo = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send>;

struct Entry {
    id: u64,
    what: String,
    undo: Undo,
    record: Option<RecordId>,
}

/// Handle to an entry on the stack, used to release it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CleanupId(u64);

/// What happened to one entry when the stack unwound.
#[derive(Debug, Clone)]
pub struct CleanupReport {
    pub what: String,
    /// `None` when the undo succeeded, else why it failed.
    pub error: Option<String>,
}

/// A LIFO stack of undo actions shared by everything a build runs. Cloning is cheap
/// and every clone sees the same stack.
#[derive(Clone, Default)]
pub struct CleanupStack {
    inner: Arc<Mutex<Inner>>,
    ledger: Option<BuildLedger>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    entries: Vec<Entry>,
}

impl CleanupStack {
    pub fn new() -> Self {
        Self::default()
    }

    /// A stack whose tracked entries follow records in `ledger` (a build's handle on
    /// the run's resource ledger; `None` when kiln could not open it).
    pub fn with_ledger(ledger: Option<BuildLedger>) -> Self {
        CleanupStack {
            inner: Arc::default(),
            ledger,
        }
    }

    /// The build's resource ledger, for host code that records what it creates.
    pub fn ledger(&self) -> Option<&BuildLedger> {
        self.ledger.as_ref()
    }

    /// Pushes `undo`, described by `what` ("qemu process 1234", "overlay disk out/x.qcow2").
    pub fn push<F, Fut>(&self, what: impl Into<String>, undo: F) -> CleanupId
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.push_tracked(what, None, undo)
    }

    /// [`CleanupStack::push`] for something on record in the ledger as `record`.
    pub fn push_tracked<F, Fut>(
        &self,
        what: impl Into<String>,
        record: Option<RecordId>,
        undo: F,
    ) -> CleanupId
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        let what = what.into();
        tracing::debug!(id, %what, "cleanup: push");
        inner.entries.push(Entry {
            id,
            what,
            undo: Box::new(move || Box::pin(undo())),
            record,
        });
        CleanupId(id)
    }

    /// Tells the ledger how a tracked entry ended.
    fn settle(&self, record: Option<RecordId>, result: Result<(), &str>) {
        let (Some(ledger), Some(record)) = (&self.ledger, record) else {
            return;
        };
        let r = match result {
            Ok(()) => ledger.resolve(record, Resolution::Deleted),
            Err(why) => ledger.ledger().note(record, why),
        };
        if let Err(e) = r {
            tracing::warn!("cannot update the resource ledger: {e}");
        }
    }

    /// Removes an entry without running it: the resource no longer needs undoing.
    /// Returns false if it was already gone.
    pub fn release(&self, id: CleanupId) -> bool {
        let record = {
            let mut inner = self.lock();
            inner
                .entries
                .iter()
                .position(|e| e.id == id.0)
                .map(|pos| inner.entries.remove(pos).record)
        };
        tracing::debug!(id = id.0, released = record.is_some(), "cleanup: release");
        if let (Some(ledger), Some(Some(rec))) = (&self.ledger, record)
            && let Err(e) = ledger.resolve(rec, Resolution::Released)
        {
            tracing::warn!("cannot update the resource ledger: {e}");
        }
        record.is_some()
    }

    /// Runs one entry's undo now (out of order) and removes it; `None` if it was gone.
    pub async fn undo_now(&self, id: CleanupId) -> Option<CleanupReport> {
        let entry = {
            let mut inner = self.lock();
            let pos = inner.entries.iter().position(|e| e.id == id.0)?;
            inner.entries.remove(pos)
        };
        let error = (entry.undo)().await.err().map(|e| format!("{e:#}"));
        self.settle(entry.record, error.as_deref().map_or(Ok(()), Err));
        Some(CleanupReport {
            what: entry.what,
            error,
        })
    }

    /// Descriptions of what is on the stack, newest first.
    pub fn pending(&self) -> Vec<String> {
        self.lock()
            .entries
            .iter()
            .rev()
            .map(|e| e.what.clone())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().entries.is_empty()
    }

    /// Runs every undo, newest first, and reports each. An undo that fails does not
    /// stop the others.
    pub async fn unwind(&self) -> Vec<CleanupReport> {
        let mut reports = Vec::new();
        loop {
            // Pop one at a time so undos pushed while unwinding are also run.
            let entry = self.lock().entries.pop();
            let Some(entry) = entry else { break };
            let error = match (entry.undo)().await {
                Ok(()) => None,
                Err(e) => Some(format!("{e:#}")),
            };
            tracing::debug!(what = %entry.what, ?error, "cleanup: undone");
            self.settle(entry.record, error.as_deref().map_or(Ok(()), Err));
            reports.push(CleanupReport {
                what: entry.what,
                error,
            });
        }
        reports
    }

    /// Drops every entry without running it (`--on-error=abort`) and returns what was
    /// kept, newest first. Tracked entries stay open in the ledger: `kiln cleanup`
    /// removes them once the user is done looking.
    pub fn keep_all(&self) -> Vec<String> {
        let mut inner = self.lock();
        inner.entries.drain(..).rev().map(|e| e.what).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the Vec half-updated.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn unwinds_newest_first_and_skips_released() {
        let stack = CleanupStack::new();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut ids = Vec::new();
        for name in ["a", "b", "c"] {
            let order = order.clone();
            ids.push(stack.push(name, move || async move {
                order.lock().unwrap().push(name);
                Ok(())
            }));
        }
        assert!(stack.release(ids[1]));
        assert!(!stack.release(ids[1]));
        let reports = stack.unwind().await;
        assert_eq!(*order.lock().unwrap(), vec!["c", "a"]);
        assert_eq!(reports.len(), 2);
        assert!(stack.is_empty());
    }

    #[tokio::test]
    async fn a_failing_undo_does_not_stop_the_rest() {
        let stack = CleanupStack::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        stack.push("first", move || async move {
            r.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        stack.push("second", || async { anyhow::bail!("boom") });
        let reports = stack.unwind().await;
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert_eq!(reports[0].error.as_deref(), Some("boom"));
        assert!(reports[1].error.is_none());
    }

    #[test]
    fn keep_all_lists_and_clears() {
        let stack = CleanupStack::new();
        stack.push("vm", || async { Ok(()) });
        stack.push("disk", || async { Ok(()) });
        assert_eq!(stack.keep_all(), vec!["disk", "vm"]);
        assert!(stack.is_empty());
    }
}
