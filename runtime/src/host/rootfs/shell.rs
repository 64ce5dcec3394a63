//! `[s]hell` at a pause of an OCI build: an interactive shell inside the step's
//! container, in the user's terminal.
//!
//! The shell is `nsenter` into the namespaces of the container's pid 1 (mount, uts,
//! ipc, net, pid; its root and working directory), run by `setsid -c` on a
//! pseudo-terminal kiln opens. Keys arrive on [`Terminal::input`] (the user's terminal
//! is in raw mode) and go to the pty's master; what the shell prints comes back to
//! [`Terminal::output`]. Why a pty of kiln's own and not the user's terminal handed
//! over as it is: with the terminal in raw mode, Ctrl-C is a byte for the shell and
//! not a SIGINT for kiln (which would cancel the build), and the shell is the session
//! leader of a terminal it owns, so its job control works.
//!
//! Why `nsenter` and not a request to the container's init: the init runs commands
//! with pipes, not a terminal, and giving it one would widen the protocol every
//! hostile step talks to. The user is root on this host already; the shell is theirs.
//! It runs with root's full capabilities (not the step's reduced set), and whatever
//! it changes lands in the failed step's upper directory, which is discarded when the
//! pause ends (a retry starts from the state before the step).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;

use crate::host::machine::{MachineError, TermInput, Terminal};

/// The command that enters the same container from another terminal.
pub fn command_line(pid: i32) -> String {
    format!("nsenter -t {pid} -m -u -i -n -p -r -w /bin/sh")
}

/// Runs an interactive `/bin/sh` in the container whose pid 1 is host pid `pid`,
/// starting in `cwd`, with exactly `env` (plus `TERM`); returns its exit status.
pub async fn enter(
    pid: i32,
    env: &[(String, String)],
    cwd: Option<&str>,
    term: &Terminal,
) -> Result<Option<u32>, MachineError> {
    let fail = |what: &str, e: std::io::Error| {
        MachineError::Failed(format!("shell in the container: {what}: {e}"))
    };
    let (master, slave) = open_pty().map_err(|e| fail("opening a terminal", e))?;
    set_size(&master, term.cols, term.rows);
    let slave = File::from(slave);
    let stdio = |f: &File| f.try_clone().map(Stdio::from);
    // By absolute paths: the environment is the container's, whose PATH would be used
    // to find them (by Command here and by setsid's exec).
    let mut cmd = tokio::process::Command::new(host_program("setsid"));
    cmd.arg("-c")
        .arg(host_program("nsenter"))
        .args(["-t", &pid.to_string()])
        .args(["-m", "-u", "-i", "-n", "-p", "-r", "-w", "--"])
        .args(["/bin/sh", "-c", "cd -- \"$1\" 2>/dev/null; exec /bin/sh -i"])
        .arg("sh")
        .arg(cwd.unwrap_or("/"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("TERM", &term.term)
        .stdin(stdio(&slave).map_err(|e| fail("sharing the terminal", e))?)
        .stdout(stdio(&slave).map_err(|e| fail("sharing the terminal", e))?)
        .stderr(stdio(&slave).map_err(|e| fail("sharing the terminal", e))?)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| fail("starting setsid and nsenter (util-linux)", e))?;
    // Only the shell holds the terminal's other end now: when it exits, reading the
    // master ends.
    drop(cmd);
    drop(slave);

    let master = File::from(master);
    let mut reader = master
        .try_clone()
        .map_err(|e| fail("reading the terminal", e))?;
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    // Blocking reads on a thread of their own: a pty master is not something tokio's
    // reactor can wait on portably, and the thread ends when the terminal closes.
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out_tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let (key_tx, key_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut writer = master
        .try_clone()
        .map_err(|e| fail("writing the terminal", e))?;
    // Writes block when the shell does not read: never on a tokio worker.
    std::thread::spawn(move || {
        for keys in key_rx {
            if writer.write_all(&keys).is_err() {
                break;
            }
        }
    });

    let mut input = term.input.lock().await;
    let mut input_open = true;
    let status = loop {
        tokio::select! {
            chunk = out_rx.recv() => match chunk {
                Some(data) => (term.output)(&data),
                // The terminal closed: the shell and everything it started are gone.
                None => break child.wait().await,
            },
            status = child.wait() => {
                // The shell exited; show what it printed last.
                while let Ok(data) = out_rx.try_recv() {
                    (term.output)(&data);
                }
                break status;
            }
            key = input.recv(), if input_open => match key {
                Some(TermInput::Data(bytes)) => {
                    let _ = key_tx.send(bytes);
                }
                Some(TermInput::Resize { cols, rows }) => set_size(&master, cols, rows),
                None => input_open = false,
            },
        }
    };
    let status = status.map_err(|e| fail("waiting for the shell", e))?;
    Ok(status.code().and_then(|c| u32::try_from(c).ok()))
}

/// `name` found on kiln's own PATH (util-linux puts both in /usr/bin).
fn host_program(name: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| std::path::Path::new("/usr/bin").join(name))
}

/// A new pseudo-terminal: (master, slave), neither the controlling terminal of kiln.
fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: posix_openpt returns a new descriptor we own, or -1.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if m < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `m` is a valid descriptor nobody else owns.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: grantpt and unlockpt take a pty master descriptor.
    if unsafe { libc::grantpt(master.as_raw_fd()) } != 0
        || unsafe { libc::unlockpt(master.as_raw_fd()) } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r writes at most `name.len()` bytes, NUL included.
    if unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ptsname_r succeeded, so `name` is NUL-terminated.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    // SAFETY: open returns a new descriptor we own, or -1.
    let s = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `s` is a valid descriptor nobody else owns.
    Ok((master, unsafe { OwnedFd::from_raw_fd(s) }))
}

fn set_size(master: &impl AsRawFd, cols: u32, rows: u32) {
    let ws = libc::winsize {
        ws_row: u16::try_from(rows).unwrap_or(u16::MAX),
        ws_col: u16::try_from(cols).unwrap_or(u16::MAX),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct we own; a failure only leaves the size.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pty_pair_passes_bytes_from_slave_to_master() {
        let (master, slave) = open_pty().unwrap();
        set_size(&master, 100, 40);
        let mut s = File::from(slave);
        s.write_all(b"hi\n").unwrap();
        let mut m = File::from(master);
        let mut buf = [0u8; 16];
        let n = m.read(&mut buf).unwrap();
        // The line discipline turns "\n" into "\r\n".
        assert_eq!(&buf[..n], b"hi\r\n");
    }

    #[test]
    fn the_command_line_names_the_pid_and_every_namespace() {
        assert_eq!(
            command_line(42),
            "nsenter -t 42 -m -u -i -n -p -r -w /bin/sh"
        );
    }
}
