//! After a container stopped: removing from the upper directory the mount points the init
//! had to create (an image without /proc, /dev, /sys or /etc/resolv.conf), so that the
//! upper directory holds exactly what the step changed.
//!
//! Only empty directories and empty regular files are removed, and every path is resolved
//! beneath the upper directory without following symlinks: the list comes from the
//! container, and the step may have replaced a parent with a symlink.

use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

pub(crate) fn remove_created(upper: &Path, created: &[String]) -> std::io::Result<()> {
    if created.is_empty() {
        return Ok(());
    }
    let top = rustix::fs::open(
        upper,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Children before parents: /etc/resolv.conf before /etc.
    for path in created.iter().rev() {
        let rel = path.trim_start_matches('/');
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, rel),
        };
        if name.is_empty() || name == "." || name == ".." {
            continue;
        }
        let dir = match parent {
            None => rustix::io::fcntl_dupfd_cloexec(&top, 0)?,
            Some(p) => match rustix::fs::openat2(
                &top,
                p,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH
                    | ResolveFlags::NO_SYMLINKS
                    | ResolveFlags::NO_MAGICLINKS
                    | ResolveFlags::NO_XDEV,
            ) {
                Ok(d) => d,
                Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) | Err(Errno::XDEV) => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            },
        };
        let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let r = match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR),
            FileType::RegularFile if st.st_size == 0 => {
                rustix::fs::unlinkat(&dir, name, AtFlags::empty())
            }
            // The step put something there: it is part of the layer.
            _ => Ok(()),
        };
        match r {
            Ok(()) => tracing::debug!(path, "removed a mount point from the upper directory"),
            // The step filled it (e.g. files in a new /etc): keep it.
            Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_empty_created_entries_and_never_follows_links() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path().join("upper");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(up.join("proc")).unwrap();
        std::fs::create_dir_all(up.join("etc")).unwrap();
        std::fs::write(up.join("etc/resolv.conf"), b"").unwrap();
        std::fs::write(up.join("etc/hosts"), b"x").unwrap();
        std::fs::create_dir_all(up.join("sys/kept")).unwrap();
        std::fs::create_dir_all(outside.join("dev")).unwrap();
        std::os::unix::fs::symlink(&outside, up.join("link")).unwrap();
        let created: Vec<String> = [
            "/proc",
            "/etc",
            "/etc/resolv.conf",
            "/sys",
            "/link/dev",
            "/",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        remove_created(&up, &created).unwrap();
        assert!(!up.join("proc").exists());
        assert!(!up.join("etc/resolv.conf").exists());
        assert!(up.join("etc/hosts").exists(), "a non-empty /etc stays");
        assert!(up.join("sys/kept").exists());
        assert!(
            outside.join("dev").exists(),
            "a symlinked parent is never followed"
        );
    }
}
