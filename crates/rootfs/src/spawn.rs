//! Starting init processes from one thread that lives as long as kiln, and reaping the
//! ones whose container was dropped without `stop`.
//!
//! The init arms `PR_SET_PDEATHSIG(SIGKILL)` so that it dies with kiln. Linux ties that
//! signal to the *thread* that forked the child, not the process: an init started from a
//! tokio blocking-pool thread would be killed as soon as that thread idled out (10 s). So
//! every init is spawned by one dedicated thread that never exits; it then dies only with
//! the process. `std::process::Command` is used as is (no `pre_exec`): forking a
//! multi-threaded process runs no code of ours in the child.

use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Job = (Command, mpsc::SyncSender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static TX: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("kiln-rootfs-spawner".into())
            .spawn(move || {
                // The loop never ends: the sender lives in a static.
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = started {
            tracing::error!("cannot start the container spawner thread: {e}");
        }
        Mutex::new(tx)
    })
}

/// Spawns `cmd` from the long-lived spawner thread (blocking until it has started).
pub(crate) fn spawn(cmd: Command) -> std::io::Result<Child> {
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    {
        let tx = spawner()
            .lock()
            .map_err(|_| std::io::Error::other("the spawner lock is poisoned"))?;
        tx.send((cmd, reply_tx))
            .map_err(|_| std::io::Error::other("the container spawner thread is gone"))?;
    }
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the container spawner thread is gone"))?
}

/// Waits for a child in the background so it does not stay a zombie (used when a
/// container is dropped without `stop`).
pub(crate) fn reap_later(mut child: Child) {
    static TX: OnceLock<Mutex<mpsc::Sender<Child>>> = OnceLock::new();
    let tx = TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Child>();
        let _ = std::thread::Builder::new()
            .name("kiln-rootfs-reaper".into())
            .spawn(move || {
                while let Ok(mut c) = rx.recv() {
                    let _ = c.wait();
                }
            });
        Mutex::new(tx)
    });
    let sent = match tx.lock() {
        Ok(tx) => tx.send(child).map_err(|e| e.0),
        Err(_) => Err(child),
    };
    if let Err(c) = sent {
        child = c;
        // No reaper: better a blocking wait than a zombie per container.
        let _ = child.wait();
    }
}
