//! A running container, kiln's side: start (spawn the init, configure it, wait until it is
//! ready), requests, and stop (which returns only once every process of the container is
//! gone).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;

use crate::config::{ContainerConfig, Network, check_env};
use crate::conn::{Conn, Incoming};
use crate::error::{Errno, Error};
use crate::exec::{ExecOutput, ExecRequest, Execution, Stream};
use crate::protocol::{FileStat, InitConfig, Reply, Request, SetupStage};
use crate::{cleanup, spawn};

/// What the init printed to stderr, kept for error messages (the tail).
const STDERR_KEEP: usize = 16 * 1024;
/// How long the outer init may take to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Mount points pid 1 may report as created (there are a handful).
const MAX_CREATED: usize = 16;

/// A build container. Requests may run concurrently. [`Container::stop`] ends it; dropping
/// it without `stop` ends it too (in the background, without cleaning the upper directory).
pub struct Container {
    conn: Arc<Conn>,
    child: Mutex<Option<Child>>,
    pidfd: Option<AsyncFd<OwnedFd>>,
    init_pid: u32,
    pid1: i32,
    upper: PathBuf,
    created: Vec<String>,
    dns: bool,
    env: Vec<(String, String)>,
    stopped: AtomicBool,
    stop_lock: tokio::sync::Mutex<bool>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("init_pid", &self.init_pid)
            .field("pid1", &self.pid1)
            .field("upper", &self.upper)
            .finish()
    }
}

/// Kills the outer init if start-up does not finish (error, timeout, dropped future).
struct StartGuard {
    child: Option<Child>,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(&child);
            spawn::reap_later(child);
        }
    }
}

/// SIGTERM to the outer init: it kills pid 1 (and so the namespace) and exits. The child
/// is not reaped yet, so its pid cannot have been reused.
fn terminate(child: &Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id().cast_signed()) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

fn kill(child: &Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id().cast_signed()) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

fn setup_error(
    stage: SetupStage,
    what: String,
    options: Option<String>,
    errno: Option<i32>,
    detail: String,
) -> Error {
    let errno = errno.map(Errno);
    match stage {
        SetupStage::Namespaces => Error::Namespaces {
            what,
            errno,
            detail,
        },
        SetupStage::Mount => Error::Mount {
            what,
            options: options.unwrap_or_default(),
            errno,
            detail,
        },
        SetupStage::Init | SetupStage::Setup => Error::Setup {
            what,
            errno,
            detail,
        },
    }
}

impl Container {
    /// Starts a container and waits until its init is ready for requests.
    pub async fn start(cfg: ContainerConfig) -> Result<Container, Error> {
        cfg.validate()?;
        let (host_sock, init_sock) = std::os::unix::net::UnixStream::pair()
            .map_err(Error::io("creating the container socket"))?;
        for s in [&host_sock, &init_sock] {
            big_socket_buffer(s);
        }
        let mut cmd = Command::new(&cfg.init.program);
        cmd.args(&cfg.init.args)
            .env_clear()
            .stdin(Stdio::from(OwnedFd::from(init_sock)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let program = cfg.init.program.display().to_string();
        let mut child = tokio::task::spawn_blocking(move || spawn::spawn(cmd))
            .await
            .map_err(|e| Error::InitSpawn {
                program: program.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(|source| Error::InitSpawn {
                program: program.clone(),
                source,
            })?;
        let init_pid = child.id();
        let stderr = child.stderr.take();
        let mut guard = StartGuard { child: Some(child) };

        let tail: Arc<Mutex<Vec<u8>>> = Arc::default();
        if let Some(err) = stderr {
            match tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(err)) {
                Ok(rx) => {
                    tokio::spawn(collect_stderr(rx, tail.clone()));
                }
                Err(e) => tracing::debug!("cannot read the init's stderr: {e}"),
            }
        }
        let diag_tail = tail.clone();
        let diagnose = Arc::new(move |reason: &str| {
            let t = diag_tail.lock().map(|t| t.clone()).unwrap_or_default();
            let t = String::from_utf8_lossy(&t);
            let t = t.trim();
            if t.is_empty() {
                reason.to_string()
            } else {
                format!("{reason}; the init printed: {t}")
            }
        });

        host_sock
            .set_nonblocking(true)
            .map_err(Error::io("configuring the container socket"))?;
        let sock = tokio::net::UnixStream::from_std(host_sock)
            .map_err(Error::io("registering the container socket"))?;
        let (rd, wr) = sock.into_split();
        let (conn, mut first) = Conn::start(rd, wr, diagnose);

        let init_cfg = InitConfig {
            host_pid: std::process::id(),
            lower: cfg.lower.iter().map(|p| p.display().to_string()).collect(),
            upper: cfg.upper.display().to_string(),
            work: cfg.work.display().to_string(),
            hostname: cfg.hostname.clone(),
            network: cfg.network == Network::Host,
        };
        let json = serde_json::to_vec(&init_cfg)
            .map_err(|e| Error::Protocol(format!("encoding the configuration: {e}")))?;
        conn.send_container_msg(json)?;

        let wait_ready = async {
            let mut pid1 = None;
            loop {
                let msg = match first.recv().await {
                    Some(Incoming::Msg(m)) => m,
                    Some(other) => {
                        return Err(Error::Protocol(format!(
                            "unexpected frame during start-up: {other:?}"
                        )));
                    }
                    None => {
                        let detail = match conn.died() {
                            Error::ContainerDied { detail } => detail,
                            other => other.to_string(),
                        };
                        return Err(Error::ContainerDied {
                            detail: format!(
                                "the init {program} ended before the container was ready ({detail}); \
                                 it must be kiln's own binary running kiln_rootfs::init_main"
                            ),
                        });
                    }
                };
                match msg {
                    Reply::Forked { pid } if pid > 0 && pid1.is_none() => pid1 = Some(pid),
                    Reply::Ready { created, dns } => {
                        let Some(pid1) = pid1 else {
                            return Err(Error::Protocol(
                                "ready before the container's pid was known".into(),
                            ));
                        };
                        if created.len() > MAX_CREATED {
                            return Err(Error::Protocol(format!(
                                "the init reported {} created mount points",
                                created.len()
                            )));
                        }
                        return Ok((pid1, created, dns));
                    }
                    Reply::SetupFailed {
                        stage,
                        what,
                        options,
                        errno,
                        detail,
                    } => return Err(setup_error(stage, what, options, errno, detail)),
                    other => {
                        return Err(Error::Protocol(format!(
                            "unexpected message during start-up: {other:?}"
                        )));
                    }
                }
            }
        };
        let (pid1, created, dns) = match tokio::time::timeout(cfg.start_timeout, wait_ready).await {
            Ok(r) => r?,
            Err(_) => {
                let t = tail.lock().map(|t| t.clone()).unwrap_or_default();
                return Err(Error::StartTimeout {
                    waited: cfg.start_timeout,
                    detail: format!(
                        "the init (pid {init_pid}) sent no ready message; it printed: {:?}",
                        String::from_utf8_lossy(&t)
                    ),
                });
            }
        };
        // Later frames for the container itself have nobody to go to.
        drop(first);
        let pidfd = rustix::process::Pid::from_raw(init_pid.cast_signed())
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
            // SAFETY: an OwnedFd keeps its descriptor open and the same for its whole life.
            .and_then(|fd| unsafe { AsyncFd::register(fd) }.ok());
        tracing::debug!(init_pid, pid1, ?created, dns, "container ready");
        Ok(Container {
            conn,
            child: Mutex::new(guard.child.take()),
            pidfd,
            init_pid,
            pid1,
            upper: cfg.upper.clone(),
            created,
            dns,
            env: cfg.env.clone(),
            stopped: AtomicBool::new(false),
            stop_lock: tokio::sync::Mutex::new(false),
        })
    }

    /// The host pid of the container's pid 1 (processes in the container are its
    /// descendants; `/proc/<pid>/ns/pid` is the container's pid namespace).
    pub fn host_pid(&self) -> i32 {
        self.pid1
    }

    /// The host pid of the outer init (kiln's direct child).
    pub fn init_pid(&self) -> u32 {
        self.init_pid
    }

    /// With network granted: whether the host's resolv.conf is bound in the container.
    pub fn has_dns(&self) -> bool {
        self.dns
    }

    /// False once the container was stopped or died.
    pub fn is_running(&self) -> bool {
        !self.stopped.load(Ordering::Relaxed) && !self.conn.is_dead()
    }

    pub(crate) fn conn(&self) -> Result<&Arc<Conn>, Error> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        Ok(&self.conn)
    }

    /// Starts `req` and returns once its process runs (or failed to start).
    pub async fn start_exec(&self, req: &ExecRequest) -> Result<Execution, Error> {
        let conn = self.conn()?;
        for (k, v) in &req.env {
            check_env(k, v)?;
        }
        if req.command.contains('\0') {
            return Err(Error::Config("the command contains a NUL byte".into()));
        }
        // The base environment, with the request's variables overriding it.
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| !req.env.iter().any(|(rk, _)| rk == k))
            .cloned()
            .collect();
        env.extend(req.env.iter().cloned());
        let ch = conn.open(&Request::Exec {
            command: req.command.clone(),
            env,
            cwd: req.cwd.clone(),
            user: req.user.clone(),
        })?;
        Execution::started(ch, &req.command, req.capture).await
    }

    /// Runs `req` to the end; `on_output` gets every chunk of stdout and stderr in the order
    /// the container read them. Dropping the future kills the command's process group.
    pub async fn exec(
        &self,
        req: &ExecRequest,
        on_output: &mut (dyn FnMut(Stream, &[u8]) + Send),
    ) -> Result<ExecOutput, Error> {
        self.start_exec(req).await?.wait(on_output).await
    }

    /// Metadata of `path` in the container (symlinks followed); `None` if it does not exist.
    pub async fn stat(&self, path: &str) -> Result<Option<FileStat>, Error> {
        let mut ch = self.conn()?.open(&Request::Stat {
            path: path.to_string(),
        })?;
        let r = ch.recv().await?;
        ch.finish();
        match r {
            Incoming::Msg(Reply::Stat { stat }) => Ok(stat),
            Incoming::Msg(Reply::Failed {
                kind,
                errno,
                detail,
            }) => Err(crate::transfer::failed(
                "stat", path, kind, errno, detail, 0,
            )),
            other => Err(Error::Protocol(format!(
                "unexpected reply to stat: {other:?}"
            ))),
        }
    }

    pub async fn exists(&self, path: &str) -> Result<bool, Error> {
        Ok(self.stat(path).await?.is_some())
    }

    /// os_id, os_version, os_name (from the image's os-release), arch, kernel, hostname and
    /// user (the keys kiln's SSH machine reports), computed without a shell.
    pub async fn facts(&self) -> Result<BTreeMap<String, String>, Error> {
        let mut ch = self.conn()?.open(&Request::Facts)?;
        let r = ch.recv().await?;
        ch.finish();
        match r {
            Incoming::Msg(Reply::Facts { facts }) => Ok(facts),
            other => Err(Error::Protocol(format!(
                "unexpected reply to facts: {other:?}"
            ))),
        }
    }

    /// Ends the container and returns once all of its processes are gone and its mount
    /// namespace (with the overlay) is released; then removes the mount points the init had
    /// to create from the upper directory, which afterwards holds exactly the step's
    /// changes. Safe to call more than once.
    pub async fn stop(&self) -> Result<(), Error> {
        let mut done = self.stop_lock.lock().await;
        if *done {
            return Ok(());
        }
        self.stopped.store(true, Ordering::Relaxed);
        self.conn.set_stopping();
        let child = self.child.lock().ok().and_then(|mut c| c.take());
        if let Some(mut child) = child {
            terminate(&child);
            if !self.wait_exit(&mut child, Some(STOP_GRACE)).await {
                tracing::warn!(
                    init_pid = self.init_pid,
                    "the container init ignored SIGTERM; killing it"
                );
                kill(&child);
                self.wait_exit(&mut child, None).await;
            }
        }
        self.conn.shutdown();
        *done = true;
        cleanup::remove_created(&self.upper, &self.created).map_err(Error::io(
            "removing the container's mount points from the upper directory",
        ))
    }

    /// Waits for the outer init to exit and reaps it; false on timeout.
    async fn wait_exit(&self, child: &mut Child, limit: Option<Duration>) -> bool {
        let wait = async {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => return,
                    Ok(None) => {}
                }
                match &self.pidfd {
                    // A pidfd turns readable when the process exits.
                    Some(fd) => match fd.readable().await {
                        Ok(mut g) => g.clear_ready(),
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                    None => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        };
        match limit {
            Some(l) => tokio::time::timeout(l, wait).await.is_ok(),
            None => {
                wait.await;
                true
            }
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(child) = self.child.get_mut().ok().and_then(|c| c.take()) {
            terminate(&child);
            spawn::reap_later(child);
        }
    }
}

/// Socket buffer per direction: with the default (~200 KiB) a 1 MiB frame takes several
/// wake-ups of both sides.
const SOCKET_BUFFER: libc::c_int = 4 * 1024 * 1024;

/// Raises the send buffer (SO_SNDBUFFORCE as root, else SO_SNDBUF up to wmem_max); a
/// failure only costs speed.
fn big_socket_buffer(s: &std::os::unix::net::UnixStream) {
    use std::os::fd::AsRawFd;
    let v = SOCKET_BUFFER;
    for opt in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
        // SAFETY: setsockopt reads one c_int from a valid pointer.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4),
            )
        };
        if r == 0 {
            return;
        }
    }
}

async fn collect_stderr(mut rx: tokio::net::unix::pipe::Receiver, tail: Arc<Mutex<Vec<u8>>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                tracing::debug!(target: "kiln_rootfs::init", "{}", String::from_utf8_lossy(&buf[..n]).trim_end());
                if let Ok(mut t) = tail.lock() {
                    t.extend_from_slice(&buf[..n]);
                    if t.len() > STDERR_KEEP {
                        let cut = t.len() - STDERR_KEEP;
                        t.drain(..cut);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shareable<T: Send + Sync>() {}

    #[test]
    fn containers_can_be_shared_between_tasks() {
        // The runtime keeps one behind an Arc and uses it from several tasks.
        shareable::<Container>();
        shareable::<Execution>();
    }
}
