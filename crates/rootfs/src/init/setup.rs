//! Building the container's root inside its private mount namespace: the overlay, the
//! pivot into it, then /proc, /dev, /sys and (with network) resolv.conf.
//!
//! Mount points the image lacks are created in the overlay, so they land in the upper
//! directory; they are reported in `created` and kiln removes them from the upper directory
//! after the container stopped, so the layer holds only what the step changed.

use std::os::fd::{AsRawFd, OwnedFd};

use rustix::fs::{CWD, FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, OpenTreeFlags,
    UnmountFlags,
};

use super::{SetupFailure, sys};
use crate::protocol::{InitConfig, SetupStage};

pub(super) struct Ready {
    pub created: Vec<String>,
    pub dns: bool,
}

/// Overlay options that keep the upper directory a self-contained diff: with redirects
/// or metacopy, a renamed directory or a chmod would leave its data in a lower layer and
/// the layer made from the upper directory would be wrong. `index=off` as it only serves
/// hard-link and NFS-export bookkeeping kiln does not need.
const OVERLAY_FLAGS: [(&str, &str); 3] = [
    ("redirect_dir", "off"),
    ("metacopy", "off"),
    ("index", "off"),
];

/// Parts of /proc that are read-only in the container (as in Docker): writing to them
/// would change the host kernel (sysctls, sysrq, IRQ affinity).
const PROC_READ_ONLY: [&str; 5] = [
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
];
/// Files of /proc hidden behind /dev/null: kernel memory, keys and timer details.
const PROC_MASKED_FILES: [&str; 6] = [
    "/proc/kcore",
    "/proc/keys",
    "/proc/key-users",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/latency_stats",
];
/// Directories hidden behind an empty read-only tmpfs.
const MASKED_DIRS: [&str; 3] = ["/proc/acpi", "/proc/scsi", "/sys/firmware"];

/// Device nodes of /dev: (name, major, minor), all mode 0666.
const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn mount_err(what: impl Into<String>, options: &str, e: Errno, log: Vec<String>) -> SetupFailure {
    let detail = if log.is_empty() {
        String::new()
    } else {
        format!("the kernel said: {}", log.join("; "))
    };
    SetupFailure {
        stage: SetupStage::Mount,
        what: what.into(),
        options: Some(options.to_string()),
        errno: Some(e.raw_os_error()),
        detail,
    }
}

fn setup_err(what: impl Into<String>, e: Errno) -> SetupFailure {
    SetupFailure::new(SetupStage::Setup, what, e)
}

pub(super) fn build(cfg: &InitConfig) -> Result<Ready, SetupFailure> {
    // scratch: overlayfs needs a lower layer, so an empty read-only tmpfs plays it. It is
    // never attached anywhere; the overlay takes it through /proc/self/fd.
    let scratch = if cfg.lower.is_empty() {
        Some(empty_tmpfs()?)
    } else {
        None
    };
    // kiln lists layers bottom first; overlayfs wants the topmost first (for both the
    // legacy `lowerdir=top:…:bottom` and repeated `lowerdir+`).
    let lower: Vec<String> = match &scratch {
        Some(fd) => vec![format!("/proc/self/fd/{}", fd.as_raw_fd())],
        None => cfg.lower.iter().rev().cloned().collect(),
    };
    // The overlay is attached over the work directory, in this namespace only: its
    // superblock holds the directories it was created from, so hiding their paths is
    // harmless, and the work directory is a path that surely exists and is ours.
    mount_overlay(&lower, &cfg.upper, &cfg.work)?;
    drop(scratch);

    let resolv = if cfg.network {
        // Taken before the pivot, while the host's /etc is still reachable.
        rustix::mount::open_tree(
            CWD,
            "/etc/resolv.conf",
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .ok()
    } else {
        None
    };

    rustix::process::chdir(cfg.work.as_str())
        .map_err(|e| setup_err("chdir into the overlay", e))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves
    // the overlay as the only root, with no directory to hold the old one.
    rustix::process::pivot_root(".", ".")
        .map_err(|e| setup_err("pivot_root into the overlay", e))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .map_err(|e| setup_err("detaching the host's root", e))?;
    rustix::process::chdir("/").map_err(|e| setup_err("chdir /", e))?;

    sys::umask(0);
    let mut created = Vec::new();
    mount_proc(&mut created)?;
    mount_dev(&mut created)?;
    mask_proc()?;
    mount_sys(&mut created)?;
    for d in MASKED_DIRS {
        mask_dir(d)?;
    }
    let dns = match resolv {
        Some(fd) => bind_resolv(fd, &mut created)?,
        None => false,
    };
    if !cfg.network {
        sys::loopback_up()
            .map_err(|e| SetupFailure::new(SetupStage::Setup, "bringing up lo", e))?;
    }
    sys::umask(0o022);
    replace_stdio()?;
    sys::set_not_dumpable()
        .map_err(|e| SetupFailure::new(SetupStage::Setup, "PR_SET_DUMPABLE", e))?;
    // Before any thread exists: the bounding set is per thread and inherited.
    sys::limit_descendants_caps(super::run::KEEP_CAPS, sys::last_cap()).map_err(|e| {
        SetupFailure::new(
            SetupStage::Setup,
            "limiting the capabilities of build steps",
            e,
        )
    })?;
    Ok(Ready { created, dns })
}

/// The kernel's messages about a failed fsconfig/fsmount (read from the fs context).
fn fs_log(fs: &OwnedFd) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while out.len() < 8 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => out.push(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
            _ => break,
        }
    }
    out
}

fn empty_tmpfs() -> Result<OwnedFd, SetupFailure> {
    let opts = "mode=0755,size=4k (read-only)";
    let what = "an empty tmpfs as the scratch lower layer";
    let fs = rustix::mount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| {
        mount_err(what, opts, e, vec![]).hint("the scratch base needs Linux 5.2 or newer")
    })?;
    let r = rustix::mount::fsconfig_set_string(&fs, "mode", "0755")
        .and_then(|()| rustix::mount::fsconfig_set_string(&fs, "size", "4k"))
        .and_then(|()| rustix::mount::fsconfig_create(&fs))
        .and_then(|()| {
            rustix::mount::fsmount(
                &fs,
                FsMountFlags::FSMOUNT_CLOEXEC,
                MountAttrFlags::MOUNT_ATTR_RDONLY,
            )
        });
    r.map_err(|e| mount_err(what, opts, e, fs_log(&fs)))
}

/// Escapes a path for the legacy `lowerdir=a:b` option string.
fn escape_legacy(p: &str) -> String {
    let mut s = String::with_capacity(p.len());
    for c in p.chars() {
        if matches!(c, ':' | ',' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

fn mount_overlay(lower: &[String], upper: &str, work: &str) -> Result<(), SetupFailure> {
    let what = "overlay on the container root";
    let mut opts: Vec<String> = lower.iter().map(|l| format!("lowerdir+={l}")).collect();
    opts.push(format!("upperdir={upper}"));
    opts.push(format!("workdir={work}"));
    opts.extend(OVERLAY_FLAGS.iter().map(|(k, v)| format!("{k}={v}")));
    let shown = opts.join(",");

    let fs = match rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fs) => fs,
        Err(Errno::NOSYS) => return mount_overlay_legacy(lower, upper, work),
        Err(e) => {
            let err = mount_err(what, &shown, e, vec![]);
            return Err(if e == Errno::NODEV {
                err.hint("this kernel has no overlayfs: load the module with `modprobe overlay`")
            } else {
                err
            });
        }
    };
    // One layer per call ("lowerdir+", Linux 6.8): no escaping, and no 4 KiB limit on the
    // option string that caps the number of layers of a legacy mount.
    for (i, l) in lower.iter().enumerate() {
        match rustix::mount::fsconfig_set_string(&fs, "lowerdir+", l.as_str()) {
            Ok(()) => {}
            Err(Errno::INVAL) if i == 0 => {
                let log = fs_log(&fs);
                if log.iter().any(|m| m.contains("lowerdir+")) || log.is_empty() {
                    return mount_overlay_legacy(lower, upper, work);
                }
                return Err(mount_err(
                    format!("{what} (lower layer {l})"),
                    &shown,
                    Errno::INVAL,
                    log,
                ));
            }
            Err(e) => {
                let log = fs_log(&fs);
                return Err(mount_err(
                    format!("{what} (lower layer {l})"),
                    &shown,
                    e,
                    log,
                ));
            }
        }
    }
    let r = rustix::mount::fsconfig_set_string(&fs, "upperdir", upper)
        .and_then(|()| rustix::mount::fsconfig_set_string(&fs, "workdir", work));
    if let Err(e) = r {
        let log = fs_log(&fs);
        return Err(mount_err(what, &shown, e, log));
    }
    for (k, v) in OVERLAY_FLAGS {
        if let Err(e) = rustix::mount::fsconfig_set_string(&fs, k, v) {
            let log = fs_log(&fs);
            return Err(mount_err(what, &shown, e, log));
        }
    }
    let mnt = rustix::mount::fsconfig_create(&fs)
        .and_then(|()| {
            rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        })
        .map_err(|e| {
            let log = fs_log(&fs);
            let quiet = log.is_empty();
            let err = mount_err(what, &shown, e, log);
            if e == Errno::INVAL && quiet {
                err.hint("upperdir and workdir must be on the same filesystem, and no layer may contain another")
            } else {
                err
            }
        })?;
    rustix::mount::move_mount(&mnt, "", CWD, work, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH).map_err(
        |e| {
            mount_err(
                format!("attaching the overlay at {work}"),
                &shown,
                e,
                vec![],
            )
        },
    )
}

/// mount(2) with an option string, for kernels without `lowerdir+` (before 6.8).
fn mount_overlay_legacy(lower: &[String], upper: &str, work: &str) -> Result<(), SetupFailure> {
    let lowers: Vec<String> = lower.iter().map(|l| escape_legacy(l)).collect();
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        escape_legacy(upper),
        escape_legacy(work)
    );
    for (k, v) in OVERLAY_FLAGS {
        data.push_str(&format!(",{k}={v}"));
    }
    let what = "overlay on the container root (legacy mount)";
    // The kernel copies one page of options.
    if data.len() >= 4096 {
        let len = data.len();
        return Err(SetupFailure {
            stage: SetupStage::Mount,
            what: what.to_string(),
            options: Some(data),
            errno: None,
            detail: format!(
                "the option string is {} bytes, over the kernel's 4095; use fewer or shorter \
                 layer paths, or Linux 6.8+ (which takes layers one by one)",
                len
            ),
        });
    }
    let cdata = std::ffi::CString::new(data.clone())
        .map_err(|_| SetupFailure::new(SetupStage::Mount, what, "a path contains a NUL byte"))?;
    rustix::mount::mount(
        "overlay",
        work,
        "overlay",
        MountFlags::empty(),
        Some(cdata.as_c_str()),
    )
    .map_err(|e| mount_err(what, &data, e, vec![]))
}

/// Makes sure a mount point exists, creating it (and recording it) if the image lacks it.
fn ensure_dir(path: &str, created: &mut Vec<String>) -> Result<(), SetupFailure> {
    match rustix::fs::stat(path) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => Ok(()),
        Ok(_) => Err(SetupFailure::new(
            SetupStage::Setup,
            format!("mount point {path}"),
            "exists in the image but is not a directory",
        )),
        Err(Errno::NOENT) => {
            // A dangling symlink: do not create its target somewhere unexpected.
            if rustix::fs::lstat(path).is_ok() {
                return Err(SetupFailure::new(
                    SetupStage::Setup,
                    format!("mount point {path}"),
                    "is a dangling symlink in the image",
                ));
            }
            rustix::fs::mkdir(path, Mode::from_raw_mode(0o755))
                .map_err(|e| setup_err(format!("creating mount point {path}"), e))?;
            created.push(path.to_string());
            Ok(())
        }
        Err(e) => Err(setup_err(format!("mount point {path}"), e)),
    }
}

fn mount_simple(
    fstype: &str,
    target: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), SetupFailure> {
    let cdata = std::ffi::CString::new(data).expect("static mount options have no NUL");
    rustix::mount::mount(fstype, target, fstype, flags, Some(cdata.as_c_str()))
        .map_err(|e| mount_err(format!("{fstype} on {target}"), data, e, vec![]))
}

const NOSUID_NODEV_NOEXEC: MountFlags = MountFlags::NOSUID
    .union(MountFlags::NODEV)
    .union(MountFlags::NOEXEC);

fn mount_proc(created: &mut Vec<String>) -> Result<(), SetupFailure> {
    ensure_dir("/proc", created)?;
    mount_simple("proc", "/proc", NOSUID_NODEV_NOEXEC, "")?;
    for p in PROC_READ_ONLY {
        if rustix::fs::lstat(p).is_err() {
            continue;
        }
        rustix::mount::mount_bind(p, p)
            .and_then(|()| {
                rustix::mount::mount_remount(
                    p,
                    MountFlags::BIND | MountFlags::RDONLY | NOSUID_NODEV_NOEXEC,
                    "",
                )
            })
            .map_err(|e| mount_err(format!("read-only bind of {p}"), "bind,ro", e, vec![]))?;
    }
    Ok(())
}

fn mask_proc() -> Result<(), SetupFailure> {
    for p in PROC_MASKED_FILES {
        if rustix::fs::lstat(p).is_err() {
            continue;
        }
        rustix::mount::mount_bind("/dev/null", p)
            .map_err(|e| mount_err(format!("masking {p} with /dev/null"), "bind", e, vec![]))?;
    }
    Ok(())
}

fn mask_dir(p: &str) -> Result<(), SetupFailure> {
    match rustix::fs::lstat(p) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => mount_simple(
            "tmpfs",
            p,
            MountFlags::RDONLY | NOSUID_NODEV_NOEXEC,
            "size=4k,mode=0555",
        ),
        _ => Ok(()),
    }
}

fn mount_dev(created: &mut Vec<String>) -> Result<(), SetupFailure> {
    ensure_dir("/dev", created)?;
    mount_simple(
        "tmpfs",
        "/dev",
        MountFlags::NOSUID | MountFlags::STRICTATIME,
        "mode=755,size=65536k",
    )?;
    for (name, major, minor) in DEVICES {
        let path = format!("/dev/{name}");
        rustix::fs::mknodat(
            CWD,
            path.as_str(),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        )
        .map_err(|e| setup_err(format!("mknod {path}"), e))?;
    }
    rustix::fs::mkdir("/dev/pts", Mode::from_raw_mode(0o755))
        .map_err(|e| setup_err("mkdir /dev/pts", e))?;
    mount_simple(
        "devpts",
        "/dev/pts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )?;
    rustix::fs::mkdir("/dev/shm", Mode::from_raw_mode(0o1777))
        .map_err(|e| setup_err("mkdir /dev/shm", e))?;
    mount_simple(
        "tmpfs",
        "/dev/shm",
        NOSUID_NODEV_NOEXEC,
        "mode=1777,size=65536k",
    )?;
    // POSIX message queues of the container's own ipc namespace; optional.
    if rustix::fs::mkdir("/dev/mqueue", Mode::from_raw_mode(0o755)).is_ok() {
        let _ = mount_simple("mqueue", "/dev/mqueue", NOSUID_NODEV_NOEXEC, "");
    }
    for (link, target) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        rustix::fs::symlink(target, link).map_err(|e| setup_err(format!("symlink {link}"), e))?;
    }
    Ok(())
}

fn mount_sys(created: &mut Vec<String>) -> Result<(), SetupFailure> {
    ensure_dir("/sys", created)?;
    mount_simple(
        "sysfs",
        "/sys",
        MountFlags::RDONLY | NOSUID_NODEV_NOEXEC,
        "",
    )
}

/// Binds the host's resolv.conf (taken before the pivot) read-only over the image's.
/// Returns whether DNS configuration is in place.
fn bind_resolv(tree: OwnedFd, created: &mut Vec<String>) -> Result<bool, SetupFailure> {
    let target = "/etc/resolv.conf";
    match rustix::fs::lstat(target) {
        Err(Errno::NOENT) => {
            ensure_dir("/etc", created)?;
            rustix::fs::open(
                target,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .map_err(|e| setup_err(format!("creating {target}"), e))?;
            created.push(target.to_string());
        }
        Ok(_) => match rustix::fs::stat(target) {
            // A symlink into the image (systemd-resolved's stub) is followed inside it.
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
            _ => {
                tracing::warn!("the image's {target} is not a file (or a dangling link): no DNS");
                return Ok(false);
            }
        },
        Err(e) => return Err(setup_err(format!("stat {target}"), e)),
    }
    rustix::mount::move_mount(
        &tree,
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_SYMLINKS,
    )
    .map_err(|e| mount_err(format!("host resolv.conf on {target}"), "bind", e, vec![]))?;
    rustix::mount::mount_remount(
        target,
        MountFlags::BIND | MountFlags::RDONLY | NOSUID_NODEV_NOEXEC,
        "",
    )
    .map_err(|e| mount_err(format!("read-only {target}"), "bind,ro", e, vec![]))?;
    Ok(true)
}

/// Points stdin and stdout at the container's /dev/null: the ones kiln gave the init are
/// host files, which the container must not reach through /proc/1/fd.
fn replace_stdio() -> Result<(), SetupFailure> {
    let null = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| setup_err("opening /dev/null", e))?;
    for fd in [0, 1] {
        // SAFETY: stdin/stdout are ours to replace; the OwnedFd is forgotten, never closed.
        let mut target = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let r = rustix::io::dup2(&null, &mut target);
        std::mem::forget(target);
        r.map_err(|e| setup_err("dup2 /dev/null", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_options_are_escaped() {
        assert_eq!(escape_legacy("/a:b,c\\d"), "/a\\:b\\,c\\\\d");
        assert_eq!(escape_legacy("/plain/path"), "/plain/path");
    }
}
