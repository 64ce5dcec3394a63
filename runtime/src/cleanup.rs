//! The per-build cleanup stack.
//!
//! Every host primitive that creates something (a VM process, an overlay disk, a temp
//! dir, a cloud resource) pushes its undo here *before it returns*, so a script that
//! crashes, times out or is interrupted can never leak what the host made for it.
//! When a resource is disposed of normally (the VM shut down, the disk became an
//! artifact) its owner calls [`CleanupStack::release`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

type Undo = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send>;

struct Entry {
    id: u64,
    what: String,
    undo: Undo,
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

    /// Pushes `undo`, described by `what` ("qemu process 1234", "overlay disk out/x.qcow2").
    pub fn push<F, Fut>(&self, what: impl Into<String>, undo: F) -> CleanupId
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
        });
        CleanupId(id)
    }

    /// Removes an entry without running it: the resource no longer needs undoing.
    /// Returns false if it was already gone.
    pub fn release(&self, id: CleanupId) -> bool {
        let mut inner = self.lock();
        let before = inner.entries.len();
        inner.entries.retain(|e| e.id != id.0);
        let released = inner.entries.len() != before;
        tracing::debug!(id = id.0, released, "cleanup: release");
        released
    }

    /// Runs one entry's undo now (out of order) and removes it; `None` if it was gone.
    pub async fn undo_now(&self, id: CleanupId) -> Option<CleanupReport> {
        let entry = {
            let mut inner = self.lock();
            let pos = inner.entries.iter().position(|e| e.id == id.0)?;
            inner.entries.remove(pos)
        };
        let error = (entry.undo)().await.err().map(|e| format!("{e:#}"));
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
            reports.push(CleanupReport {
                what: entry.what,
                error,
            });
        }
        reports
    }

    /// Drops every entry without running it (`--on-error=abort`) and returns what was
    /// kept, newest first.
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
