//! Pid 1 of the container: set the root filesystem up, report, then serve.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use rustix::process::Signal;

use super::{send, server, setup, sys, wait_go};
use crate::protocol::{CONTAINER_ID, InitConfig, Reply};

pub(super) fn run(mut sock: UnixStream, cfg: &InitConfig, go: OwnedFd) -> ! {
    // Only SIGCHLD stays blocked: the reaper thread takes it with sigwaitinfo, and threads
    // started later inherit the mask (so none of them swallows it).
    if sys::set_signal_mask(&[libc::SIGCHLD]).is_err()
        || rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).is_err()
    {
        std::process::exit(1);
    }
    // The death signal is armed; if the outer init died before that, the pipe tells.
    if !wait_go(go) {
        std::process::exit(1);
    }
    match setup::build(cfg) {
        Ok(ready) => {
            let reply = Reply::Ready {
                created: ready.created,
                dns: ready.dns,
            };
            if send(&mut sock, CONTAINER_ID, &reply).is_err() {
                std::process::exit(1);
            }
        }
        Err(f) => {
            let _ = send(&mut sock, CONTAINER_ID, &f.reply());
            std::process::exit(1);
        }
    }
    server::serve(sock)
}
