//! The SSH backend of [`Machine`]: a session that can be re-opened after an expected
//! disconnect (a reboot step), cached facts, and, for a VM kiln started, a faster way
//! in for large files and qemu's exit named when it is why a connection dropped.
//!
//! An upload (file, tree, written file) whose connection drops is tried once more from
//! the start on a new connection, after removing what the first attempt left; it never
//! leaves a partial file at its destination either way (`staged`). A command whose
//! connection drops is not re-run (it may not be idempotent): it fails as disconnected.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use tokio::sync::{OnceCell, RwLock};

use super::{ConnectOptions, KeyFiles, Session, SshConfig, SshError};
use crate::host::machine::{
    ExecOutput, Facts, Machine, MachineError, OnOutput, Progress, Terminal, UploadPath, Uploaded,
};
use crate::host::qemu::FileDisk;

#[derive(Clone)]
pub struct SshMachine {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: SshConfig,
    files: Arc<KeyFiles>,
    opts: ConnectOptions,
    session: RwLock<Session>,
    facts: OnceCell<Facts>,
    file_disk: OnceLock<Arc<FileDisk>>,
}

/// One shell round trip that answers every fact a step usually branches on.
const FACTS_SCRIPT: &str = r#"
. /etc/os-release 2>/dev/null
printf 'os_id=%s\n' "${ID:-unknown}"
printf 'os_version=%s\n' "${VERSION_ID:-}"
printf 'os_name=%s\n' "${PRETTY_NAME:-}"
printf 'arch=%s\n' "$(uname -m)"
printf 'kernel=%s\n' "$(uname -r)"
printf 'hostname=%s\n' "$(hostname 2>/dev/null || cat /etc/hostname)"
printf 'user=%s\n' "$(id -un)"
"#;

impl From<SshError> for MachineError {
    fn from(e: SshError) -> Self {
        match e {
            SshError::TooLarge { .. } => MachineError::TooLarge(e.to_string()),
            e if e.is_disconnect() => MachineError::Disconnected(e.to_string()),
            e => MachineError::Failed(e.to_string()),
        }
    }
}

/// Dials with the session's retry discipline; for a VM kiln started, qemu's exit ends
/// the wait at once instead of after `timeout`.
async fn dial(
    cfg: &SshConfig,
    files: &KeyFiles,
    opts: &ConnectOptions,
) -> Result<Session, SshError> {
    let connect = Session::connect(cfg, files, opts);
    let Some(vm) = &opts.vm else {
        return connect.await;
    };
    tokio::select! {
        r = connect => r,
        status = vm.exited() => Err(SshError::MachineGone {
            target: format!("{}@127.0.0.1:{}", cfg.user, vm.ssh_port()),
            reason: format!(
                "qemu (pid {}) exited ({status}) before SSH answered; qemu's last output: {}",
                vm.pid(),
                last_words(vm)
            ),
        }),
    }
}

fn last_words(vm: &crate::host::qemu::Vm) -> String {
    let t = vm.stderr_tail();
    if t.trim().is_empty() {
        "(nothing)".into()
    } else {
        t
    }
}

impl SshMachine {
    /// Connects with the key and known_hosts files the caller already read through
    /// its grants (see [`SshConfig::credential_files`]).
    pub async fn connect(
        cfg: SshConfig,
        files: KeyFiles,
        opts: ConnectOptions,
    ) -> Result<Self, SshError> {
        let files = Arc::new(files);
        let session = dial(&cfg, &files, &opts).await?;
        Ok(SshMachine {
            inner: Arc::new(Inner {
                cfg,
                files,
                opts,
                session: RwLock::new(session),
                facts: OnceCell::new(),
                file_disk: OnceLock::new(),
            }),
        })
    }

    /// Lets large uploads use a hot-plugged disk of the VM this machine runs in.
    pub fn use_file_disk(&self, disk: Arc<FileDisk>) {
        let _ = self.inner.file_disk.set(disk);
    }

    /// The host key the current session verified (`SHA256:...`): what a later
    /// connection must see again (kiln cleanup reaching the machine after a crash).
    pub async fn host_key_fingerprint(&self) -> String {
        self.inner.session.read().await.host_key_fingerprint()
    }

    /// The current session (cheap clone).
    async fn session(&self) -> Session {
        self.inner.session.read().await.clone()
    }

    /// A failed operation: when its connection dropped because the VM's qemu exited,
    /// the error says so (and stops being a disconnect a step could expect).
    async fn explain(&self, e: SshError, during: &str) -> SshError {
        if !e.is_disconnect() {
            return e;
        }
        let Some(vm) = &self.inner.opts.vm else {
            return e;
        };
        match vm.exit_after_loss().await {
            None => e,
            Some(status) => SshError::MachineGone {
                target: self.target(),
                reason: format!(
                    "qemu (pid {}) exited ({status}) during {during}, and the SSH connection \
                     with it; qemu's last output: {}",
                    vm.pid(),
                    last_words(vm)
                ),
            },
        }
    }

    /// Runs `op` on the current session, naming qemu's exit if that is why it failed.
    async fn run<T, Fut>(
        &self,
        during: &str,
        op: impl FnOnce(Session) -> Fut,
    ) -> Result<T, MachineError>
    where
        Fut: Future<Output = Result<T, SshError>>,
    {
        match op(self.session().await).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.explain(e, during).await.into()),
        }
    }

    /// Runs the upload `op`; if its connection dropped, reconnects, removes what it left
    /// at `dest` and runs it once more from the start. Returns whether it was retried.
    async fn upload_once_more<T, Fut>(
        &self,
        dest: &str,
        op: impl Fn(Session) -> Fut,
    ) -> Result<(T, bool), MachineError>
    where
        Fut: Future<Output = Result<T, SshError>>,
    {
        let during = format!("the upload to {dest}");
        let e = match op(self.session().await).await {
            Ok(v) => return Ok((v, false)),
            Err(e) => self.explain(e, &during).await,
        };
        if !e.is_disconnect() {
            return Err(e.into());
        }
        tracing::warn!(target = %self.target(), dest,
            "the connection dropped during the upload ({e}); reconnecting to upload it once more from the start");
        self.reconnect().await.map_err(|again| {
            MachineError::Failed(format!(
                "{e}; reconnecting to retry the upload failed: {again}"
            ))
        })?;
        let session = self.session().await;
        if let Err(left) = session.remove_upload_leftovers(dest).await {
            tracing::debug!(
                dest,
                "removing the first attempt's leftovers failed: {left}"
            );
        }
        match op(session).await {
            Ok(v) => Ok((v, true)),
            Err(e) => Err(self.explain(e, &during).await.into()),
        }
    }
}

#[async_trait::async_trait]
impl Machine for SshMachine {
    fn target(&self) -> String {
        let c = &self.inner.cfg;
        let port = self.inner.opts.port_override.or(c.port).unwrap_or(22);
        format!("{}@{}:{port}", c.user, c.host.as_deref().unwrap_or("?"))
    }

    async fn exec(
        &self,
        command: &str,
        env: &[(String, String)],
        on_output: OnOutput<'_>,
    ) -> Result<ExecOutput, MachineError> {
        let during = format!("the command {:?}", first_line(command));
        self.run(
            &during,
            |s| async move { s.exec(command, env, on_output).await },
        )
        .await
    }

    /// Large files go through the VM's virtio disk when there is one and the guest
    /// copes; otherwise, or if that fails, over SSH.
    async fn upload(
        &self,
        file: &cap_std::fs::File,
        dest: &str,
        mode: Option<u32>,
        progress: Progress<'_>,
    ) -> Result<Uploaded, MachineError> {
        let session = self.session().await;
        if let Some(disk) = self.inner.file_disk.get() {
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            if disk.wants(size) {
                match disk.upload(&session, file, size, dest, mode).await {
                    Ok(n) => {
                        progress(n);
                        return Ok(Uploaded {
                            bytes: n,
                            via: UploadPath::VirtioDisk,
                            retried: false,
                        });
                    }
                    Err(why) => tracing::debug!(dest, "virtio-disk upload failed: {why}"),
                }
            }
        }
        drop(session);
        let (n, retried) = self
            .upload_once_more(dest, |s| async move {
                s.upload_file(file, dest, mode, progress).await
            })
            .await?;
        Ok(Uploaded {
            bytes: n,
            via: UploadPath::Normal,
            retried,
        })
    }

    async fn upload_tree(
        &self,
        src: &cap_std::fs::Dir,
        dest: &str,
        progress: Progress<'_>,
    ) -> Result<u64, MachineError> {
        let (n, _) = self
            .upload_once_more(
                dest,
                |s| async move { s.upload_tree(src, dest, progress).await },
            )
            .await?;
        Ok(n)
    }

    async fn write_file(
        &self,
        dest: &str,
        contents: &[u8],
        mode: Option<u32>,
    ) -> Result<(), MachineError> {
        self.upload_once_more(
            dest,
            |s| async move { s.write_file(dest, contents, mode).await },
        )
        .await
        .map(|_| ())
    }

    async fn read_file(&self, path: &str, max: u64) -> Result<Vec<u8>, MachineError> {
        self.run(&format!("reading {path}"), |s| async move {
            s.read_file(path, max).await
        })
        .await
    }

    async fn download(
        &self,
        remote: &str,
        local: &mut cap_std::fs::File,
        progress: Progress<'_>,
    ) -> Result<u64, MachineError> {
        self.run(&format!("the download of {remote}"), |s| async move {
            s.download_file(remote, local, progress).await
        })
        .await
    }

    async fn facts(&self) -> Result<Facts, MachineError> {
        self.inner
            .facts
            .get_or_try_init(|| async {
                let out = self
                    .run("asking the machine's facts", |s| async move {
                        s.exec(FACTS_SCRIPT, &[], &mut |_, _| {}).await
                    })
                    .await?;
                let text = String::from_utf8_lossy(&out.stdout);
                Ok::<_, MachineError>(
                    text.lines()
                        .filter_map(|l| l.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                        .collect(),
                )
            })
            .await
            .cloned()
    }

    /// The host key must still match the one seen first.
    async fn reconnect(&self) -> Result<(), MachineError> {
        let mut opts = self.inner.opts.clone();
        let mut cfg = self.inner.cfg.clone();
        if opts.trust_on_first_use {
            // Pin what we saw first: after a reboot the key must not change.
            cfg.host_key = Some(self.inner.session.read().await.host_key_fingerprint());
            opts.trust_on_first_use = false;
        }
        let fresh = dial(&cfg, &self.inner.files, &opts).await?;
        let old = std::mem::replace(&mut *self.inner.session.write().await, fresh);
        old.close().await;
        Ok(())
    }

    async fn close(&self) {
        self.inner.session.read().await.close().await;
    }

    async fn host_key(&self) -> Option<String> {
        Some(self.inner.session.read().await.host_key_fingerprint())
    }

    async fn interactive_shell(&self, term: &Terminal) -> Result<Option<u32>, MachineError> {
        Ok(super::pty::interactive_shell(&self.session().await, term).await?)
    }

    fn login_command(&self) -> Option<String> {
        Some(login_command(&self.inner.cfg, &self.inner.opts))
    }
}

/// The OpenSSH command that reaches the same machine as `cfg`, for a user who wants
/// their own terminal on it. A machine kiln pinned on first use (a VM it started) has
/// no known_hosts entry to check against, so the command says so.
fn login_command(cfg: &SshConfig, opts: &ConnectOptions) -> String {
    let q = |s: &str| shell_escape::unix::escape(s.into()).into_owned();
    let mut parts = vec!["ssh".to_string()];
    if let Some(k) = &cfg.private_key_file {
        parts.push(format!("-i {}", q(k)));
    }
    let port = opts.port_override.or(cfg.port).unwrap_or(22);
    if port != 22 {
        parts.push(format!("-p {port}"));
    }
    if let Some(kh) = &cfg.known_hosts {
        parts.push(format!("-o UserKnownHostsFile={}", q(kh)));
    } else if opts.trust_on_first_use || cfg.host_key.is_some() || cfg.insecure_ignore_host_key {
        parts.push("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null".into());
    }
    if let Some(b) = &cfg.bastion {
        let bp = b.port.map(|p| format!(":{p}")).unwrap_or_default();
        parts.push(format!("-J {}@{}{bp}", b.user, b.host));
    }
    let host = opts
        .host_override
        .clone()
        .or_else(|| cfg.host.clone())
        .unwrap_or_default();
    parts.push(format!("{}@{host}", cfg.user));
    parts.join(" ")
}

/// The first line of a command, shortened, to name it in a message.
fn first_line(command: &str) -> String {
    let line = command.trim_start().lines().next().unwrap_or_default();
    let mut short: String = line.chars().take(60).collect();
    if short.len() < line.len() || command.trim().lines().count() > 1 {
        short.push('…');
    }
    short
}
