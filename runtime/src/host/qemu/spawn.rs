//! Starting qemu processes (the VM, the KVM probe) so they die with kiln, and
//! quoting paths into qemu's option syntax. One helper for every qemu kiln starts.

use std::path::Path;
use std::sync::OnceLock;

use tokio::process::{Child, Command};

/// A path inside a qemu `-drive file=...,` option: commas are doubled.
pub(crate) fn opt_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

type SpawnRequest = (
    Command,
    tokio::runtime::Handle,
    tokio::sync::oneshot::Sender<std::io::Result<Child>>,
);

/// Spawns `cmd` so that it dies with kiln.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
/// process. Scripts run on tokio's blocking pool, whose threads exit when idle, which
/// would kill a healthy VM mid-build; so every such child is forked from one thread
/// that lives as long as kiln does.
pub(crate) async fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    let parent = libc::pid_t::try_from(std::process::id())
        .map_err(|_| std::io::Error::other("kiln's pid does not fit pid_t"))?;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // kiln died between fork and prctl: the signal will never come.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    static SPAWNER: OnceLock<std::sync::mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("kiln-spawner".into())
            .spawn(move || {
                for (mut cmd, handle, reply) in rx {
                    let _rt = handle.enter();
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the kiln-spawner thread");
        tx
    });
    let (reply, answer) = tokio::sync::oneshot::channel();
    spawner
        .send((cmd, tokio::runtime::Handle::current(), reply))
        .map_err(|_| std::io::Error::other("the kiln-spawner thread is gone"))?;
    answer
        .await
        .map_err(|_| std::io::Error::other("the kiln-spawner thread is gone"))?
}
