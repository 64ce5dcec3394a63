//! Running one command in the container: `/bin/sh -c`, a clean environment, its own
//! process group (so cancel can kill it all), reduced capabilities, optional user; stdout
//! and stderr streamed as they come.
//!
//! The exec ends when its shell exits: output still buffered in the pipes is sent, but a
//! background process that keeps the pipes open (`sleep 1000 &`) does not hold the step
//! (unlike sshd, which waits for it). Such processes die when the container stops.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::OFlags;

use super::reaper::Ended;
use super::server::{Cancel, Shared};
use super::{sys, users};
use crate::protocol::{FailKind, Kind, Reply};

/// Capabilities a build step's root keeps (pid 1 limits its bounding set to these before
/// it serves, see `sys::limit_descendants_caps`): Docker's default set without `MKNOD` (no device
/// cgroup guards the host's disks here) and `NET_RAW` (with host networking it would let a
/// step sniff the host's traffic). Everything else (`SYS_ADMIN`, `SYS_MODULE`,
/// `SYS_PTRACE`, `NET_ADMIN`, ...) is dropped from the bounding set.
pub(super) const KEEP_CAPS: u64 = (1 << 0) // CHOWN
    | (1 << 1) // DAC_OVERRIDE
    | (1 << 3) // FOWNER
    | (1 << 4) // FSETID
    | (1 << 5) // KILL
    | (1 << 6) // SETGID
    | (1 << 7) // SETUID
    | (1 << 8) // SETPCAP
    | (1 << 10) // NET_BIND_SERVICE
    | (1 << 18) // SYS_CHROOT
    | (1 << 29) // AUDIT_WRITE
    | (1 << 31); // SETFCAP

/// Output read per system call.
const READ_CHUNK: usize = 64 * 1024;
/// After the shell exited, at most this much more output is forwarded per stream (a
/// background process could otherwise keep the exec alive by writing forever).
const MAX_DRAIN: usize = 8 * 1024 * 1024;

pub(super) fn exec(
    sh: &Shared,
    id: u64,
    command: &str,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    user: Option<String>,
) {
    let fail = |reason: String, errno: Option<i32>| sh.fail(id, FailKind::ExecStart, errno, reason);
    let ids = match user.as_deref().map(users::resolve).transpose() {
        Ok(ids) => ids,
        Err(why) => return fail(why, None),
    };
    let cwd = cwd.unwrap_or_else(|| "/".to_string());
    match std::fs::metadata(&cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return fail(format!("working directory {cwd} is not a directory"), None),
        Err(e) => {
            return fail(
                format!("working directory {cwd}: {}", super::io_text(&e)),
                e.raw_os_error(),
            );
        }
    }
    if let Err(e) = std::fs::metadata("/bin/sh") {
        return fail(
            format!(
                "the image has no /bin/sh ({}); commands run through `/bin/sh -c`",
                super::io_text(&e)
            ),
            e.raw_os_error(),
        );
    }

    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .env_clear()
        .envs(env)
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // Every thread of the init blocks SIGCHLD (the reaper takes it with sigwaitinfo) and
    // a child inherits the mask, which std does not reset: a shell would then wait forever
    // for its background jobs (`cmd & wait`). Commands start with no signal blocked.
    // A user also needs setgroups, which std offers only unstably.
    let ids = ids.map(|users::Ids { uid, gid, groups }| (uid, gid, groups));
    // SAFETY: the closure only makes raw system calls on data prepared before the
    // fork (see sys.rs): async-signal-safe, as a child of a multi-threaded process needs.
    unsafe {
        cmd.pre_exec(move || {
            sys::set_signal_mask(&[])?;
            match &ids {
                Some((uid, gid, groups)) => sys::set_ids(*uid, *gid, groups),
                None => Ok(()),
            }
        });
    }
    let (done_rd, done_wr) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(p) => p,
        Err(e) => return fail(format!("pipe: {e}"), Some(e.raw_os_error())),
    };
    let mut child = match sh.reaper.spawn(&mut cmd, done_wr) {
        Ok(c) => c,
        Err(e) => {
            let hint = match e.raw_os_error() {
                Some(libc::E2BIG) => {
                    " (the command is too long for one argument; upload it as a script)"
                }
                Some(libc::ENOENT) => " (/bin/sh or its interpreter is missing)",
                _ => "",
            };
            return fail(
                format!("starting /bin/sh: {}{hint}", super::io_text(&e)),
                e.raw_os_error(),
            );
        }
    };
    let pid = child.id().cast_signed();
    sh.on_cancel(id, Cancel::Group(pid));
    let out = child.stdout.take().map(OwnedFd::from);
    let err = child.stderr.take().map(OwnedFd::from);
    drop(child); // never waited on here: the reaper owns exit statuses
    if sh.send(id, &Reply::Started { pid }).is_err() {
        let _ = sys::kill(-pid, libc::SIGKILL);
    }
    let ended = pump(sh, id, out, err, done_rd);
    sh.forget_cancel(id);
    let reply = match ended {
        Some(Ended::Code(c)) => Reply::Exit {
            code: Some(c),
            signal: None,
        },
        Some(Ended::Signal(s)) => Reply::Exit {
            code: None,
            signal: Some(s),
        },
        None => {
            let _ = sys::kill(-pid, libc::SIGKILL);
            return;
        }
    };
    let _ = sh.send(id, &reply);
}

/// Forwards stdout and stderr until the process ended, then what is left in the pipes.
/// `None` when kiln is gone.
fn pump(
    sh: &Shared,
    id: u64,
    mut out: Option<OwnedFd>,
    mut err: Option<OwnedFd>,
    done: OwnedFd,
) -> Option<Ended> {
    let mut buf = vec![0u8; READ_CHUNK];
    let ended = loop {
        let mut fds = Vec::with_capacity(3);
        fds.push(PollFd::new(&done, PollFlags::IN));
        if let Some(o) = &out {
            fds.push(PollFd::new(o, PollFlags::IN));
        }
        if let Some(e) = &err {
            fds.push(PollFd::new(e, PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return None,
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        if ready[0] {
            break read_status(&done);
        }
        let mut i = 1;
        for (stream, kind) in [(&mut out, Kind::Data), (&mut err, Kind::Stderr)] {
            let Some(fd) = stream.as_ref() else { continue };
            if ready[i] && !forward_once(sh, id, fd, kind, &mut buf)? {
                *stream = None;
            }
            i += 1;
        }
    };
    for (stream, kind) in [(out, Kind::Data), (err, Kind::Stderr)] {
        let Some(fd) = stream else { continue };
        let _ = rustix::fs::fcntl_setfl(&fd, OFlags::NONBLOCK);
        let mut sent = 0;
        while sent < MAX_DRAIN {
            match rustix::io::read(&fd, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    sh.frame(kind, id, &buf[..n]).ok()?;
                    sent += n;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => break, // EAGAIN: nothing more buffered
            }
        }
    }
    Some(ended)
}

/// One read from a ready pipe: `Some(false)` at end of file, `None` when kiln is gone.
fn forward_once(sh: &Shared, id: u64, fd: &OwnedFd, kind: Kind, buf: &mut [u8]) -> Option<bool> {
    match rustix::io::read(fd, &mut *buf) {
        Ok(0) => Some(false),
        Ok(n) => {
            sh.frame(kind, id, &buf[..n]).ok()?;
            Some(true)
        }
        Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => Some(true),
        Err(_) => Some(false),
    }
}

fn read_status(done: &OwnedFd) -> Ended {
    let mut f = std::fs::File::from(match done.as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(_) => return Ended::Signal(libc::SIGKILL),
    });
    let mut b = [0u8; 8];
    match f.read_exact(&mut b) {
        Ok(()) => Ended::decode(b),
        // The reaper closed the pipe without a status: cannot happen, but never hang.
        Err(_) => Ended::Signal(libc::SIGKILL),
    }
}
