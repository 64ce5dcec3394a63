//! Helpers shared by the integration tests: temp dirs, overlay mounts that unmount on
//! drop, tree snapshots for comparisons.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn tempdir() -> tempfile::TempDir {
    std::fs::create_dir_all("/var/tmp/kiln-peers").unwrap();
    tempfile::Builder::new()
        .prefix("kiln-oci-test-")
        .tempdir_in("/var/tmp/kiln-peers")
        .unwrap()
}

pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests mount overlayfs and create device nodes: run them as root"
    );
}

/// An overlay mount, unmounted when dropped (also on panic).
pub struct Overlay {
    pub merged: PathBuf,
    pub upper: PathBuf,
}

impl Overlay {
    /// Mounts `lowers` (top first) with a fresh upper dir under `dir`.
    pub fn mount(dir: &Path, lowers: &[&Path]) -> Overlay {
        let upper = dir.join("upper");
        let work = dir.join("work");
        let merged = dir.join("merged");
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).unwrap();
        }
        let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off",
            lower.join(":"),
            upper.display(),
            work.display()
        );
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t overlay failed");
        Overlay { merged, upper }
    }

    /// Mounts `lowers` read-only (no upper): the view an image's layers give.
    pub fn mount_ro(dir: &Path, lowers: &[&Path]) -> Overlay {
        let merged = dir.join("merged");
        std::fs::create_dir_all(&merged).unwrap();
        let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let opts = format!("lowerdir={}", lower.join(":"));
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t overlay (read-only) failed");
        Overlay {
            merged: merged.clone(),
            upper: merged,
        }
    }

    pub fn unmount(&mut self) {
        if !self.merged.as_os_str().is_empty() {
            let _ = Command::new("umount").arg(&self.merged).status();
            self.merged = PathBuf::new();
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A tree as (path → description), for comparing what two trees hold.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let mode = m.permissions().mode() & 0o7777;
        let desc = if ft.is_dir() {
            format!("dir {mode:o} {}:{}", m.uid(), m.gid())
        } else if ft.is_symlink() {
            format!("link -> {}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            format!(
                "file {mode:o} {}:{} {}",
                m.uid(),
                m.gid(),
                hex_sha(&std::fs::read(&p).unwrap())
            )
        } else if ft.is_char_device() {
            format!(
                "char {}:{}",
                rustix::fs::major(m.rdev()),
                rustix::fs::minor(m.rdev())
            )
        } else if ft.is_fifo() {
            format!("fifo {mode:o}")
        } else {
            "other".into()
        };
        out.insert(rel, desc);
        if ft.is_dir() {
            walk(root, &p, out);
        }
    }
}

pub fn hex_sha(b: &[u8]) -> String {
    kiln_oci::Digest::of(b).hex()[..16].to_string()
}

pub fn write(p: &Path, content: &str) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, content).unwrap();
}

pub fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    rustix::fs::lgetxattr(p, name, &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

/// Sets a file's atime and mtime.
pub fn set_times(p: &Path, atime: i64, mtime: i64) {
    let ts = |s| rustix::fs::Timespec {
        tv_sec: s,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: ts(atime),
            last_modification: ts(mtime),
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Entry names of a layer tar (decompressed), read by the tar crate (an independent reader).
pub fn tar_names(blob: &Path) -> Vec<String> {
    let f = std::io::BufReader::new(std::fs::File::open(blob).unwrap());
    let (_, r) = kiln_oci::compress::decompress(f).unwrap();
    let mut a = tar::Archive::new(r);
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

/// Runs a command, panicking with its output if it fails; returns stdout.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
