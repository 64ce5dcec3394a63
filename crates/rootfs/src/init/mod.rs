//! The container's init: what runs inside the re-executed kiln binary.
//!
//! Two processes:
//!
//! * the **outer init** (the process kiln spawned, in kiln's pid namespace): arms
//!   `PR_SET_PDEATHSIG(SIGKILL)` so it dies with kiln, unshares the mount, pid, uts, ipc
//!   (and network) namespaces, forks, and then only waits. SIGTERM from kiln (`stop`)
//!   makes it SIGKILL the container's pid 1 and exit once that pid 1 is reaped. Because a
//!   pid namespace's init is reaped only after every other process in the namespace is
//!   gone, kiln seeing the outer init exit means the whole container is gone, and with
//!   its last process the mount namespace (and the overlay) too;
//! * **pid 1** of the new pid namespace (the outer init's child, killed by the kernel when
//!   the outer init dies): mounts the overlay and /proc, /dev, /sys inside the private
//!   mount namespace, pivots into the overlay, and then serves kiln's requests on the
//!   socket it inherited as stdin. Every file operation runs there, after `pivot_root`, so
//!   no path or symlink in the image can reach the host's filesystem.

mod files;
mod pid1;
mod reaper;
mod run;
mod server;
mod setup;
mod sys;
mod users;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::fs::{FileType, OFlags};
use rustix::process::{Pid, Signal, WaitOptions};

use crate::protocol::{self, CONTAINER_ID, InitConfig, Kind, MAX_FRAME_TO_INIT, Reply, SetupStage};

/// Entry point of the container init. Call it first thing in `main` (before any thread or
/// async runtime starts) when kiln is re-executed with its hidden init subcommand; it never
/// returns. Run by hand, it refuses with exit code 2.
pub fn init_main() -> ! {
    let code = outer_main();
    std::process::exit(code)
}

/// A setup failure to report to the host.
pub(crate) struct SetupFailure {
    pub stage: SetupStage,
    pub what: String,
    pub options: Option<String>,
    pub errno: Option<i32>,
    pub detail: String,
}

impl SetupFailure {
    pub(crate) fn new(stage: SetupStage, what: impl Into<String>, e: impl Into<Errish>) -> Self {
        let e = e.into();
        SetupFailure {
            stage,
            what: what.into(),
            options: None,
            errno: e.errno,
            detail: e.text,
        }
    }

    /// Adds what the user can do about it.
    pub(crate) fn hint(mut self, hint: &str) -> Self {
        if self.detail.is_empty() {
            self.detail = hint.to_string();
        } else {
            self.detail = format!("{}; {hint}", self.detail);
        }
        self
    }

    fn reply(&self) -> Reply {
        Reply::SetupFailed {
            stage: self.stage,
            what: self.what.clone(),
            options: self.options.clone(),
            errno: self.errno,
            detail: self.detail.clone(),
        }
    }
}

/// An OS error or a message, as setup code produces them.
pub(crate) struct Errish {
    errno: Option<i32>,
    text: String,
}

// An errno travels as a number; kiln shows its name and text, so no text is added here.
impl From<rustix::io::Errno> for Errish {
    fn from(e: rustix::io::Errno) -> Self {
        Errish {
            errno: Some(e.raw_os_error()),
            text: String::new(),
        }
    }
}

impl From<std::io::Error> for Errish {
    fn from(e: std::io::Error) -> Self {
        Errish {
            errno: e.raw_os_error(),
            text: if e.raw_os_error().is_some() {
                String::new()
            } else {
                e.to_string()
            },
        }
    }
}

/// An I/O error's text without std's " (os error N)" suffix.
pub(crate) fn io_text(e: &std::io::Error) -> String {
    let t = e.to_string();
    match t.rsplit_once(" (os error ") {
        Some((head, _)) => head.to_string(),
        None => t,
    }
}

impl From<String> for Errish {
    fn from(text: String) -> Self {
        Errish { errno: None, text }
    }
}

impl From<&str> for Errish {
    fn from(text: &str) -> Self {
        Errish {
            errno: None,
            text: text.to_string(),
        }
    }
}

pub(crate) fn send(sock: &mut UnixStream, id: u64, reply: &Reply) -> std::io::Result<()> {
    let json = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    protocol::write_frame(sock, Kind::Msg, id, &json)
}

/// Takes the socket kiln passed as stdin and puts /dev/null in its place.
fn take_socket() -> Result<UnixStream, String> {
    let stdin = rustix::stdio::stdin();
    let st = rustix::fs::fstat(stdin).map_err(|e| format!("stdin: {e}"))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
        return Err("stdin is not kiln's socket".into());
    }
    let sock = rustix::io::fcntl_dupfd_cloexec(stdin, 3).map_err(|e| format!("dup: {e}"))?;
    let null = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, 0.into())
        .map_err(|e| format!("/dev/null: {e}"))?;
    // SAFETY: fd 0 is ours to replace; dup2 onto it is how stdio is redirected.
    let mut zero = unsafe { OwnedFd::from_raw_fd(0) };
    let r = rustix::io::dup2(&null, &mut zero);
    std::mem::forget(zero);
    r.map_err(|e| format!("dup2: {e}"))?;
    Ok(UnixStream::from(sock))
}

/// Closes every descriptor but stdio and `keep`: kiln's own descriptors are close-on-exec,
/// but a library that forgot the flag must not hand a host file to the container.
fn close_stray_fds(keep: i32) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2 && *fd != keep)
        .collect();
    for fd in fds {
        // The read_dir descriptor itself is already closed; EBADF is harmless.
        // SAFETY: closing descriptors nothing in this process uses.
        unsafe { libc::close(fd) };
    }
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn outer_main() -> i32 {
    let mut sock = match take_socket() {
        Ok(s) => s,
        Err(why) => {
            eprintln!(
                "kiln-rootfs init: {why}; this is kiln's internal container init and is not run by hand"
            );
            return 2;
        }
    };
    close_stray_fds(sock.as_raw_fd());
    let cfg: InitConfig = match protocol::read_frame(&mut sock, MAX_FRAME_TO_INIT) {
        Ok(f) if f.kind == Kind::Msg => match serde_json::from_slice(&f.payload) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("kiln-rootfs init: bad configuration: {e}");
                return 2;
            }
        },
        // kiln went away before configuring us.
        _ => return 1,
    };
    // Die with kiln. If kiln died before this line, our parent is already someone else.
    if rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).is_err()
        || rustix::process::getppid().map(|p| p.as_raw_nonzero().get().cast_unsigned())
            != Some(cfg.host_pid)
    {
        return 1;
    }
    if let Err(f) = prepare(&cfg) {
        let _ = send(&mut sock, CONTAINER_ID, &f.reply());
        return 1;
    }
    let fork = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| SetupFailure::new(SetupStage::Setup, "pipe", e))
        .and_then(|pipe| {
            let pid = sys::fork_single_threaded()
                .map_err(|e| SetupFailure::new(SetupStage::Setup, "fork", e))?;
            Ok((pipe, pid))
        });
    match fork {
        Err(f) => {
            let _ = send(&mut sock, CONTAINER_ID, &f.reply());
            1
        }
        Ok(((go_rd, go_wr), None)) => {
            drop(go_wr);
            pid1::run(sock, &cfg, go_rd)
        }
        Ok(((go_rd, go_wr), Some(child))) => {
            drop(go_rd);
            // Tell kiln the container's pid, then let pid 1 go on: only then does it write
            // to the socket, so the two processes never write frames at the same time.
            let forked = send(&mut sock, CONTAINER_ID, &Reply::Forked { pid: child });
            let mut go = std::fs::File::from(go_wr);
            if forked.is_err() || go.write_all(&[1]).is_err() {
                let _ = sys::kill(child, libc::SIGKILL);
            }
            // From here only pid 1 holds the socket, so kiln sees it close when pid 1 dies.
            drop(sock);
            supervise(child)
        }
    }
}

/// Everything before the fork: the namespaces, private mounts, hostname, signal mask.
fn prepare(cfg: &InitConfig) -> Result<(), SetupFailure> {
    if thread_count() != 1 {
        return Err(SetupFailure::new(
            SetupStage::Init,
            "starting the init",
            "the process has more than one thread; init_main must be called before any thread or async runtime starts",
        ));
    }
    use rustix::thread::UnshareFlags as U;
    let mut flags = U::NEWNS | U::NEWPID | U::NEWUTS | U::NEWIPC;
    let mut names = "CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWUTS|CLONE_NEWIPC".to_string();
    if !cfg.network {
        flags |= U::NEWNET;
        names.push_str("|CLONE_NEWNET");
    }
    // SAFETY: no FILES flag, and this process is single-threaded (checked above).
    unsafe { rustix::thread::unshare_unsafe(flags) }
        .map_err(|e| SetupFailure::new(SetupStage::Namespaces, format!("unshare({names})"), e))?;
    // Nothing mounted from here on may propagate back to the host's namespace.
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::REC | rustix::mount::MountPropagationFlags::PRIVATE,
    )
    .map_err(|e| {
        SetupFailure::new(
            SetupStage::Mount,
            "making every mount private (MS_REC|MS_PRIVATE on /)",
            e,
        )
    })?;
    rustix::system::sethostname(cfg.hostname.as_bytes()).map_err(|e| {
        SetupFailure::new(
            SetupStage::Setup,
            format!("sethostname({:?})", cfg.hostname),
            e,
        )
    })?;
    // Signals are taken with sigwaitinfo, so they must be blocked before the child exists.
    sys::set_signal_mask(&SUPERVISED)
        .map_err(|e| SetupFailure::new(SetupStage::Setup, "blocking signals", e))
}

/// What the outer init waits for: its child, and kiln asking it to stop.
const SUPERVISED: [i32; 4] = [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Waits for pid 1; SIGTERM/SIGINT/SIGHUP kill it. Returns the exit code to leave with.
fn supervise(child: i32) -> i32 {
    let Some(pid) = Pid::from_raw(child) else {
        return 1;
    };
    loop {
        match sys::wait_signal(&SUPERVISED, None) {
            Ok(Some(libc::SIGCHLD)) | Ok(None) => {}
            Ok(Some(_)) => {
                let _ = sys::kill(child, libc::SIGKILL);
            }
            Err(_) => {
                let _ = sys::kill(child, libc::SIGKILL);
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
            Ok(Some((_, st))) => {
                if let Some(code) = st.exit_status() {
                    return code;
                }
                if let Some(sig) = st.terminating_signal() {
                    return 128 + sig;
                }
            }
            Ok(None) => {}
            Err(_) => return 1,
        }
    }
}

/// Reads exactly one byte: `false` when the writer is gone (the outer init died).
pub(crate) fn wait_go(go: OwnedFd) -> bool {
    let mut f = std::fs::File::from(go);
    let mut b = [0u8; 1];
    matches!(f.read(&mut b), Ok(1))
}
