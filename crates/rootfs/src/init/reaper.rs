//! Pid 1 reaps every process of the container: the ones it started and the orphans the
//! kernel hands it. Exit statuses of its own children go to the thread serving that exec.
//!
//! Reaping only happens under the same lock that spawning takes. `std::process::Command`
//! waits for a child whose `exec` failed by itself, inside `spawn`; a reaper running at
//! the same moment would steal that child and make std's wait fail. So: SIGCHLD is blocked
//! in every thread, the reaper thread takes it with `sigtimedwait`, then locks and collects
//! with `WNOHANG` until nothing is left.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::Duration;

use rustix::process::WaitOptions;

use super::sys;

/// How a process ended, as it travels through the notification pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    Code(i32),
    Signal(i32),
}

impl Ended {
    pub(super) fn encode(self) -> [u8; 8] {
        let (k, v) = match self {
            Ended::Code(c) => (0i32, c),
            Ended::Signal(s) => (1i32, s),
        };
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&k.to_le_bytes());
        b[4..].copy_from_slice(&v.to_le_bytes());
        b
    }

    pub(super) fn decode(b: [u8; 8]) -> Ended {
        let k = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let v = i32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        if k == 0 {
            Ended::Code(v)
        } else {
            Ended::Signal(v)
        }
    }
}

#[derive(Default)]
pub(super) struct Reaper {
    /// Children whose status someone waits for: pid → write end of that waiter's pipe.
    waiting: Mutex<HashMap<i32, OwnedFd>>,
}

impl Reaper {
    /// Spawns `cmd`; its exit status will be written to `notify`, which is then closed.
    pub(super) fn spawn(&self, cmd: &mut Command, notify: OwnedFd) -> std::io::Result<Child> {
        let mut waiting = self
            .waiting
            .lock()
            .map_err(|_| std::io::Error::other("reaper lock poisoned"))?;
        let child = cmd.spawn()?;
        waiting.insert(child.id().cast_signed(), notify);
        Ok(child)
    }

    /// The reaper thread's loop.
    pub(super) fn run(&self) -> ! {
        loop {
            // The timeout is only a safety net; SIGCHLD stays pending until taken.
            let _ = sys::wait_signal(&[libc::SIGCHLD], Some(Duration::from_secs(5)));
            let Ok(mut waiting) = self.waiting.lock() else {
                std::process::exit(1);
            };
            loop {
                // wait(), not waitpid(None): rustix maps None to 0, "my process group" only.
                match rustix::process::wait(WaitOptions::NOHANG) {
                    Ok(Some((pid, st))) => {
                        let ended = match (st.exit_status(), st.terminating_signal()) {
                            (Some(c), _) => Ended::Code(c),
                            (None, Some(s)) => Ended::Signal(s),
                            // Stopped/continued are not reported without WUNTRACED.
                            _ => continue,
                        };
                        if let Some(fd) = waiting.remove(&pid.as_raw_nonzero().get()) {
                            let mut f = std::fs::File::from(fd);
                            // 8 bytes into an empty pipe never block.
                            let _ = f.write_all(&ended.encode());
                        }
                    }
                    Ok(None) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => break, // ECHILD: nothing to reap
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips() {
        for e in [Ended::Code(0), Ended::Code(255), Ended::Signal(9)] {
            assert_eq!(Ended::decode(e.encode()), e);
        }
    }
}
