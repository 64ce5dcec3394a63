//! Test harness for containers (feature `testkit`): a minimal busybox root filesystem,
//! temporary overlay directories that clean up after themselves, and probes for processes
//! and mounts. Used by this crate's integration tests and meant for the runtime's.
//!
//! Needs Debian's `busybox-static` (`tools/setup.d/rootfs.sh` installs it).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{ContainerConfig, InitProgram};

/// Where the static busybox comes from.
pub const BUSYBOX: &str = "/bin/busybox";

/// Contents of the test image's /etc/shadow: a test reading it sees this, never the host's.
pub const FAKE_SHADOW: &str = "root:kiln-test-image-shadow:19000:0:99999:7:::\n";

fn busybox_applets() -> io::Result<Vec<String>> {
    let out = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .env_clear()
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{BUSYBOX}: {e}; install busybox-static with tools/setup.d/rootfs.sh"),
            )
        })?;
    if !out.status.success() {
        return Err(io::Error::other(format!("{BUSYBOX} --list failed")));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.contains('/'))
        .collect())
}

/// Writes a busybox root filesystem into `dir`: /bin with every applet, /etc (passwd with
/// root and `builder` (1000), group, os-release, a fake shadow), /root, /tmp. With
/// `mount_points`, also the empty /proc, /dev and /sys a real image has.
pub fn busybox_rootfs(dir: &Path, mount_points: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(BUSYBOX, bin.join("busybox"))?;
    for applet in busybox_applets()? {
        if applet == "busybox" {
            continue;
        }
        let link = bin.join(&applet);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc)?;
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1000:1000:builder:/home/builder:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(
        etc.join("group"),
        "root:x:0:\nbuilder:x:1000:\nwheel:x:10:builder\nnogroup:x:65534:\n",
    )?;
    std::fs::write(
        etc.join("os-release"),
        "ID=kiln-busybox\nVERSION_ID=\"1.35\"\nPRETTY_NAME=\"kiln busybox test image\"\n",
    )?;
    std::fs::write(etc.join("shadow"), FAKE_SHADOW)?;
    std::fs::set_permissions(etc.join("shadow"), std::fs::Permissions::from_mode(0o640))?;
    std::fs::create_dir_all(dir.join("root"))?;
    std::fs::create_dir_all(dir.join("home/builder"))?;
    std::os::unix::fs::chown(dir.join("home/builder"), Some(1000), Some(1000))?;
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))?;
    if mount_points {
        for d in ["proc", "dev", "sys"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
    }
    Ok(())
}

/// Temporary lower/upper/work directories under /var/tmp/kiln-peers (a filesystem with the
/// xattrs and d_type overlayfs needs), removed on drop.
pub struct Layers {
    dir: tempfile::TempDir,
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl Layers {
    /// `lowers` empty lower directories (bottom first), an upper and a work directory.
    pub fn new(lowers: usize) -> io::Result<Layers> {
        let base = Path::new("/var/tmp/kiln-peers");
        std::fs::create_dir_all(base)?;
        let dir = tempfile::Builder::new()
            .prefix("rootfs-")
            .tempdir_in(base)?;
        let lower: Vec<PathBuf> = (0..lowers)
            .map(|i| dir.path().join(format!("lower{i}")))
            .collect();
        for l in &lower {
            std::fs::create_dir(l)?;
        }
        let upper = dir.path().join("upper");
        let work = dir.path().join("work");
        std::fs::create_dir(&upper)?;
        std::fs::create_dir(&work)?;
        Ok(Layers {
            dir,
            lower,
            upper,
            work,
        })
    }

    /// One lower layer holding a busybox root filesystem with its mount points.
    pub fn busybox() -> io::Result<Layers> {
        let l = Layers::new(1)?;
        busybox_rootfs(&l.lower[0], true)?;
        Ok(l)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self, init: InitProgram) -> ContainerConfig {
        ContainerConfig::new(init, self.lower.clone(), &self.upper, &self.work)
    }

    /// A fresh upper and work directory pair (the next step), keeping the lowers.
    pub fn next_step(&mut self, name: &str) -> io::Result<()> {
        self.upper = self.dir.path().join(format!("{name}-upper"));
        self.work = self.dir.path().join(format!("{name}-work"));
        std::fs::create_dir(&self.upper)?;
        std::fs::create_dir(&self.work)
    }
}

/// The namespace link (`pid:[4026532…]`) of process `pid`.
pub fn namespace_of(pid: i32, kind: &str) -> io::Result<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).map(|p| p.display().to_string())
}

/// Host pids of every process whose `kind` namespace (`pid`, `mnt`, ...) is `ns`. Only
/// meaningful while that namespace exists: a freed namespace's number is soon reused.
pub fn processes_in(kind: &str, ns: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| namespace_of(*pid, kind).is_ok_and(|n| n == ns))
        .collect()
}

/// (state, start time) from /proc/<pid>/stat.
fn stat_of(pid: i32) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, start time field 22 (1-based, see proc(5)).
    Some((fields.first()?.to_string(), fields.get(19)?.parse().ok()?))
}

/// One process, remembered with its start time: pids (32768 by default) and namespace
/// inode numbers are reused quickly on a busy machine, so neither alone identifies a
/// process once it may have died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    start: u64,
}

impl Proc {
    /// The process running as `pid` now.
    pub fn of(pid: i32) -> Option<Proc> {
        stat_of(pid).map(|(_, start)| Proc { pid, start })
    }

    /// True while this very process exists and is not a zombie.
    pub fn is_alive(&self) -> bool {
        stat_of(self.pid)
            .is_some_and(|(state, start)| start == self.start && state != "Z" && state != "X")
    }
}

/// The processes in namespace `ns` now (see [`processes_in`]), to check later that they
/// are gone without being fooled by a reused namespace number.
pub fn procs_in(kind: &str, ns: &str) -> Vec<Proc> {
    processes_in(kind, ns)
        .into_iter()
        .filter_map(Proc::of)
        .collect()
}

/// True while a process with this pid exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    stat_of(pid).is_some_and(|(state, _)| state != "Z" && state != "X")
}

/// Lines of the host's /proc/self/mountinfo that mention `needle`.
pub fn host_mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// Polls `cond` until it holds or `limit` passed, without blocking the async runtime
/// (a cancel queued by a dropped request is only sent when the runtime runs).
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
