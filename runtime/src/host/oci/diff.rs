//! Whether a step changed anything. overlayfs copies a directory up as soon as a file
//! in it is created, even if the file is removed again (a shell step's script in
//! `/tmp`), so an upper directory can hold nothing but directories identical to the
//! ones below. Such a layer would restate the image: the step adds none.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

fn is_opaque(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    OPAQUE_XATTRS.iter().any(|name| {
        let Ok(n) = std::ffi::CString::new(*name) else {
            return false;
        };
        let mut buf = [0u8; 8];
        // SAFETY: both strings are NUL-terminated and `buf` is as long as we say.
        let r =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        r > 0 && buf[0] == b'y'
    })
}

fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

/// What the layers `lowers` (top first) show at `rel`: `None` if nothing (absent,
/// deleted by a whiteout, or hidden by an opaque directory above).
fn lookup(lowers_top_first: &[PathBuf], rel: &Path) -> Option<std::fs::Metadata> {
    let comps: Vec<Component> = rel.components().collect();
    for layer in lowers_top_first {
        let mut p = layer.clone();
        let mut hidden_below = false;
        for (i, c) in comps.iter().enumerate() {
            p.push(c);
            match std::fs::symlink_metadata(&p) {
                Err(_) => break,
                Ok(m) if is_whiteout(&m) => return None,
                Ok(m) if i + 1 == comps.len() => return Some(m),
                Ok(m) if m.is_dir() => {
                    if is_opaque(&p) {
                        hidden_below = true;
                    }
                }
                // A file where a directory would be: the path cannot exist below.
                Ok(_) => return None,
            }
        }
        if hidden_below {
            return None;
        }
    }
    None
}

/// True when `upper` holds only directories that exist below, with the same mode and
/// owner (their times are not compared: a copy-up changes them, and layers clamp them).
pub fn effectively_empty(upper: &Path, lowers_bottom_first: &[PathBuf]) -> io::Result<bool> {
    let lowers: Vec<PathBuf> = lowers_bottom_first.iter().rev().cloned().collect();
    walk(upper, Path::new(""), &lowers)
}

fn walk(upper: &Path, rel: &Path, lowers: &[PathBuf]) -> io::Result<bool> {
    for e in std::fs::read_dir(upper.join(rel))? {
        let e = e?;
        let rel = rel.join(e.file_name());
        let path = upper.join(&rel);
        let m = std::fs::symlink_metadata(&path)?;
        if !m.is_dir() || is_opaque(&path) {
            return Ok(false);
        }
        match lookup(lowers, &rel) {
            Some(l)
                if l.is_dir()
                    && l.mode() == m.mode()
                    && l.uid() == m.uid()
                    && l.gid() == m.gid() => {}
            _ => return Ok(false),
        }
        if !walk(upper, &rel, lowers)? {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copied_up_directories_are_no_change() {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("lower");
        let upper = t.path().join("upper");
        std::fs::create_dir_all(lower.join("tmp/sub")).unwrap();
        std::fs::create_dir_all(upper.join("tmp/sub")).unwrap();
        let lowers = vec![lower.clone()];
        assert!(effectively_empty(&upper, &lowers).unwrap());
        assert!(effectively_empty(&lower.join("tmp/sub"), &lowers).unwrap());

        // A new directory, a file, or a changed mode is a change.
        std::fs::create_dir(upper.join("tmp/new")).unwrap();
        assert!(!effectively_empty(&upper, &lowers).unwrap());
        std::fs::remove_dir(upper.join("tmp/new")).unwrap();
        std::fs::write(upper.join("tmp/sub/f"), "x").unwrap();
        assert!(!effectively_empty(&upper, &lowers).unwrap());
        std::fs::remove_file(upper.join("tmp/sub/f")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(upper.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        assert!(!effectively_empty(&upper, &lowers).unwrap());
    }

    #[test]
    fn a_directory_a_higher_layer_deleted_is_new() {
        let t = tempfile::tempdir().unwrap();
        let (l0, l1, upper) = (t.path().join("l0"), t.path().join("l1"), t.path().join("u"));
        std::fs::create_dir_all(l0.join("etc/x")).unwrap();
        std::fs::create_dir_all(&l1).unwrap();
        std::fs::create_dir_all(upper.join("etc/x")).unwrap();
        let lowers = vec![l0.clone(), l1.clone()];
        assert!(effectively_empty(&upper, &lowers).unwrap());
        // l1 replaced etc with a file: etc/x below is gone, so upper's is new.
        std::fs::write(l1.join("etc"), "").unwrap();
        assert!(!effectively_empty(&upper, &lowers).unwrap());
    }
}
