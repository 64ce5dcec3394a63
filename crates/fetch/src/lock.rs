//! Per-key lock files (`flock`), shared by threads and processes.
//!
//! Exclusive: the holder writes or deletes the entry (download, prune). Shared: the holder
//! uses a complete entry; `prune` skips it. Each acquisition opens the lock file anew, so
//! two threads of one process exclude each other like two processes do (flock locks belong
//! to the open file description). Lock files may be deleted by `prune` while it holds the
//! exclusive lock; an acquirer that locked a file which was unlinked meanwhile notices
//! (its inode is no longer the one at the path) and tries again.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Shared,
    Exclusive,
}

/// A held lock; released on drop.
#[derive(Debug)]
pub(crate) struct KeyLock {
    file: File,
    path: PathBuf,
    mode: Mode,
}

impl KeyLock {
    /// Takes the lock without waiting: `Ok(None)` when another holder conflicts.
    pub(crate) fn try_acquire(path: &Path, mode: Mode) -> io::Result<Option<KeyLock>> {
        // Bounded: a concurrent prune can unlink the file between our open and our lock only
        // so many times before we see a stable one.
        for _ in 0..16 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)?;
            let got = match mode {
                Mode::Shared => file.try_lock_shared(),
                Mode::Exclusive => file.try_lock(),
            };
            match got {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => return Err(e),
            }
            let ours = file.metadata()?.ino();
            match std::fs::metadata(path) {
                Ok(m) if m.ino() == ours => {
                    return Ok(Some(KeyLock {
                        file,
                        path: path.to_path_buf(),
                        mode,
                    }));
                }
                // Unlinked (or replaced) by a prune after we opened it: start over.
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Exclusive → shared. flock converts non-atomically, so another process may take the
    /// lock in between; then this returns `Ok(None)` and the caller holds nothing.
    pub(crate) fn downgrade(self) -> io::Result<Option<KeyLock>> {
        if self.mode == Mode::Shared {
            return Ok(Some(self));
        }
        match self.file.try_lock_shared() {
            Ok(()) => Ok(Some(KeyLock {
                mode: Mode::Shared,
                ..self
            })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    /// Deletes the lock file while holding the lock (prune): later acquirers create a new one.
    pub(crate) fn remove_file(&self) -> io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_within_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.lock");
        let a = KeyLock::try_acquire(&p, Mode::Exclusive).unwrap().unwrap();
        assert!(KeyLock::try_acquire(&p, Mode::Exclusive).unwrap().is_none());
        assert!(KeyLock::try_acquire(&p, Mode::Shared).unwrap().is_none());
        let shared = a.downgrade().unwrap().unwrap();
        let other = KeyLock::try_acquire(&p, Mode::Shared).unwrap().unwrap();
        assert!(KeyLock::try_acquire(&p, Mode::Exclusive).unwrap().is_none());
        drop(shared);
        drop(other);
        let b = KeyLock::try_acquire(&p, Mode::Exclusive).unwrap().unwrap();
        b.remove_file().unwrap();
        // The old file is gone; a new acquirer gets a fresh one even while b holds the old.
        assert!(KeyLock::try_acquire(&p, Mode::Exclusive).unwrap().is_some());
    }
}
