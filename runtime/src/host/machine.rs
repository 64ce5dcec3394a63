//! The machine being built, as steps see it: an SSH session that can be re-opened
//! after an expected disconnect (a reboot step), plus cached facts, plus, for a VM
//! kiln started, a faster way in for large files.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use tokio::sync::{OnceCell, RwLock};

use super::qemu::FileDisk;
use super::ssh::{ConnectOptions, Session, SshConfig, SshError};
use crate::caps::Project;

#[derive(Clone)]
pub struct Machine {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: SshConfig,
    project: Project,
    opts: ConnectOptions,
    session: RwLock<Session>,
    facts: OnceCell<BTreeMap<String, String>>,
    file_disk: OnceLock<Arc<FileDisk>>,
}

/// How an upload reached the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadPath {
    Ssh,
    VirtioDisk,
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

impl Machine {
    pub async fn connect(
        cfg: SshConfig,
        project: Project,
        opts: ConnectOptions,
    ) -> Result<Self, SshError> {
        let session = Session::connect(&cfg, project.dir(), &opts).await?;
        Ok(Machine {
            inner: Arc::new(Inner {
                cfg,
                project,
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

    /// Copies an open local file to `dest` (created or truncated), then sets `mode`.
    /// Large files go through the VM's virtio disk when there is one and the guest
    /// copes; otherwise, or if that fails, over SSH. Returns the bytes written.
    pub async fn upload_file(
        &self,
        file: &cap_std::fs::File,
        dest: &str,
        mode: Option<u32>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(u64, UploadPath), SshError> {
        let session = self.session().await;
        if let Some(disk) = self.inner.file_disk.get() {
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            if disk.wants(size) {
                match disk.upload(&session, file, size, dest, mode).await {
                    Ok(n) => {
                        progress(n);
                        return Ok((n, UploadPath::VirtioDisk));
                    }
                    Err(why) => tracing::debug!(dest, "virtio-disk upload failed: {why}"),
                }
            }
        }
        let n = session.upload_file(file, dest, mode, progress).await?;
        Ok((n, UploadPath::Ssh))
    }

    /// The current session (cheap clone).
    pub async fn session(&self) -> Session {
        self.inner.session.read().await.clone()
    }

    /// Opens a new session after the machine dropped the old one on purpose (a
    /// reboot). The host key must still match the one seen first.
    pub async fn reconnect(&self) -> Result<(), SshError> {
        let mut opts = self.inner.opts.clone();
        let mut cfg = self.inner.cfg.clone();
        if opts.trust_on_first_use {
            // Pin what we saw first: after a reboot the key must not change.
            cfg.host_key = Some(self.inner.session.read().await.host_key_fingerprint());
            opts.trust_on_first_use = false;
        }
        let fresh = Session::connect(&cfg, self.inner.project.dir(), &opts).await?;
        let old = std::mem::replace(&mut *self.inner.session.write().await, fresh);
        old.close().await;
        Ok(())
    }

    pub fn target(&self) -> String {
        let c = &self.inner.cfg;
        format!(
            "{}@{}:{}",
            c.user,
            c.host.as_deref().unwrap_or("?"),
            c.port.unwrap_or(22)
        )
    }

    pub async fn close(&self) {
        self.inner.session.read().await.close().await;
    }

    /// Facts about the machine (os_id, os_version, arch, kernel, hostname, user).
    pub async fn facts(&self) -> Result<BTreeMap<String, String>, SshError> {
        self.inner
            .facts
            .get_or_try_init(|| async {
                let out = self
                    .session()
                    .await
                    .exec(FACTS_SCRIPT, &[], &mut |_, _| {})
                    .await?;
                let text = String::from_utf8_lossy(&out.stdout);
                Ok(text
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                    .collect())
            })
            .await
            .cloned()
    }
}
