//! The SSH backend of [`Machine`]: a session that can be re-opened after an expected
//! disconnect (a reboot step), cached facts, and, for a VM kiln started, a faster way
//! in for large files.

use std::sync::{Arc, OnceLock};

use tokio::sync::{OnceCell, RwLock};

use super::{ConnectOptions, KeyFiles, Session, SshConfig, SshError};
use crate::host::machine::{
    ExecOutput, Facts, Machine, MachineError, OnOutput, Progress, UploadPath, Uploaded,
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

impl SshMachine {
    /// Connects with the key and known_hosts files the caller already read through
    /// its grants (see [`SshConfig::credential_files`]).
    pub async fn connect(
        cfg: SshConfig,
        files: KeyFiles,
        opts: ConnectOptions,
    ) -> Result<Self, SshError> {
        let files = Arc::new(files);
        let session = Session::connect(&cfg, &files, &opts).await?;
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

    /// The current session (cheap clone).
    async fn session(&self) -> Session {
        self.inner.session.read().await.clone()
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
        Ok(self.session().await.exec(command, env, on_output).await?)
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
                        });
                    }
                    Err(why) => tracing::debug!(dest, "virtio-disk upload failed: {why}"),
                }
            }
        }
        let n = session.upload_file(file, dest, mode, progress).await?;
        Ok(Uploaded {
            bytes: n,
            via: UploadPath::Normal,
        })
    }

    async fn upload_tree(
        &self,
        src: &cap_std::fs::Dir,
        dest: &str,
        progress: Progress<'_>,
    ) -> Result<u64, MachineError> {
        Ok(self
            .session()
            .await
            .upload_tree(src, dest, progress)
            .await?)
    }

    async fn write_file(
        &self,
        dest: &str,
        contents: &[u8],
        mode: Option<u32>,
    ) -> Result<(), MachineError> {
        Ok(self
            .session()
            .await
            .write_file(dest, contents, mode)
            .await?)
    }

    async fn read_file(&self, path: &str, max: u64) -> Result<Vec<u8>, MachineError> {
        Ok(self.session().await.read_file(path, max).await?)
    }

    async fn download(
        &self,
        remote: &str,
        local: &mut cap_std::fs::File,
        progress: Progress<'_>,
    ) -> Result<u64, MachineError> {
        Ok(self
            .session()
            .await
            .download_file(remote, local, progress)
            .await?)
    }

    async fn facts(&self) -> Result<Facts, MachineError> {
        self.inner
            .facts
            .get_or_try_init(|| async {
                let out = self
                    .session()
                    .await
                    .exec(FACTS_SCRIPT, &[], &mut |_, _| {})
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
        let fresh = Session::connect(&cfg, &self.inner.files, &opts).await?;
        let old = std::mem::replace(&mut *self.inner.session.write().await, fresh);
        old.close().await;
        Ok(())
    }

    async fn close(&self) {
        self.inner.session.read().await.close().await;
    }
}
