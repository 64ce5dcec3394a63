//! Per-run locks: an exclusive `flock` on `<state>/locks/<run>.lock`, held by the run's
//! process for its whole life and released by the kernel when that process ends, even
//! by SIGKILL. The file is opened close-on-exec, so no child (qemu, ssh) inherits it and
//! keeps a dead run looking alive.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;

/// A held run lock; released on drop.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

impl RunLock {
    /// Takes the lock, failing if someone holds it (a run id is never reused, so that
    /// would be a bug or a clash of uuids).
    pub fn acquire(path: &Path) -> io::Result<RunLock> {
        Self::try_acquire(path)?.ok_or_else(|| io::Error::other("it is held by another process"))
    }

    /// The lock if it is free, `None` if another process (or another handle) holds it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<RunLock>> {
        let file = open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(RunLock { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.lock");
        let a = RunLock::acquire(&p).unwrap();
        assert!(RunLock::try_acquire(&p).unwrap().is_none());
        assert!(RunLock::acquire(&p).is_err());
        drop(a);
        assert!(RunLock::try_acquire(&p).unwrap().is_some());
    }
}
