//! `ssh`: opening SSH connections to the hosts granted (`allow: #{ ssh: ["build-1",
//! "*.example.com"] }`). Builders hold it for the hosts their config names.
//!
//! [`connect`] is the facade. The private key and known_hosts files an `ssh` map names
//! are read here, through the caller's `read` grants (so a key in `~/.ssh` needs
//! `read: ["~/.ssh"]`, and one outside every grant is refused before any connection),
//! and handed to the SSH client only: no script or guest ever sees their bytes. A key
//! kiln holds in memory (a temporary EC2 key pair's, as a [`PrivateKey`]) takes the same
//! path without ever touching a file or a script value.
//!
//! Each connection a build opens is written to the resource ledger as an `ssh-target`
//! record ([`record_target`]): how `kiln cleanup` reaches the machine again to stop a
//! step's script that a killed kiln left running there.

pub mod rhai;

use std::sync::Arc;

use super::broker::{Denied, Scope, ScopeError};
use super::fs::{FsError, Project, expand_home};
use super::grants::Use;
use super::spec::{CapSpec, Grammar};
use crate::host::ssh::{ConnectOptions, KeyFiles, SshConfig, SshError, SshMachine};

pub static SPEC: CapSpec = CapSpec {
    key: "ssh",
    summary: "open SSH connections to granted hosts",
    grammar: Grammar::HostPatterns,
    wit: &[],
    example: r#"allow: #{ ssh: ["build.example.com"] }"#,
};

pub struct Cap;

impl super::Capability for Cap {
    fn spec(&self) -> &'static CapSpec {
        &SPEC
    }
    fn register_rhai(&self, engine: &mut ::rhai::Engine) {
        rhai::register(engine);
    }
}

/// Largest key or known_hosts file read.
const MAX_CREDENTIAL_FILE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Denied(Denied),
    #[error(
        "cannot read the {what} {path:?}: it is outside the directories this source may read. \
         Grant its directory with {allow} in the source's options (source(name, builder, #{{ allow: ... }})), \
         or move it into the project (and keep it out of version control)"
    )]
    CredentialNotGranted {
        what: &'static str,
        path: String,
        allow: String,
    },
    #[error("cannot read the {what} {path:?}: {reason}")]
    Credential {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error(transparent)]
    Ssh(Box<SshError>),
}

/// A private key held in memory (a temporary EC2 key pair's): scripts can pass it to
/// `ctx.connect` and read its `name`, never its text; `Debug` prints `<redacted>`; the
/// text is zeroed when the last handle goes.
#[derive(Clone)]
pub struct PrivateKey {
    name: String,
    text: Arc<KeyText>,
}

struct KeyText(String);

impl Drop for KeyText {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.fill(0);
        std::hint::black_box(&bytes);
    }
}

impl PrivateKey {
    /// `text` is an OpenSSH or PEM private key; `name` says what it is for messages.
    pub fn new(name: impl Into<String>, text: String) -> Self {
        PrivateKey {
            name: name.into(),
            text: Arc::new(KeyText(text)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path-like label the SSH client knows it by (never a real file).
    fn label(&self) -> String {
        format!("<in-memory key {}>", self.name)
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({:?}, <redacted>)", self.name)
    }
}

/// Reads the files `cfg` names through `scope`'s read grants (`~` expanded).
pub fn read_key_files(
    scope: &Scope,
    project: &Project,
    cfg: &SshConfig,
) -> Result<KeyFiles, ConnectError> {
    read_key_files_except(scope, project, cfg, None)
}

fn read_key_files_except(
    scope: &Scope,
    project: &Project,
    cfg: &SshConfig,
    skip: Option<&str>,
) -> Result<KeyFiles, ConnectError> {
    let mut files = KeyFiles::default();
    for f in cfg
        .credential_files()
        .into_iter()
        .filter(|f| Some(f.path.as_str()) != skip)
    {
        let path = expand_home(&f.path);
        let bytes = project
            .read_to_vec(scope, &path, MAX_CREDENTIAL_FILE)
            .map_err(|e| match e {
                FsError::Denied(d) => ConnectError::CredentialNotGranted {
                    what: f.what,
                    path: f.path.clone(),
                    allow: d.allow,
                },
                FsError::Io { source, .. } => ConnectError::Credential {
                    what: f.what,
                    path: f.path.clone(),
                    reason: source.to_string(),
                },
                FsError::Refused { reason, .. } => ConnectError::Credential {
                    what: f.what,
                    path: f.path.clone(),
                    reason,
                },
            })?;
        let text = String::from_utf8(bytes).map_err(|_| ConnectError::Credential {
            what: f.what,
            path: f.path.clone(),
            reason: "it is not text".into(),
        })?;
        files.insert(&f.path, text);
    }
    Ok(files)
}

/// Connects to the host `cfg` names, if `scope` may: checked, timed, audited.
pub async fn connect(
    scope: &Scope,
    project: &Project,
    cfg: SshConfig,
    opts: ConnectOptions,
) -> Result<SshMachine, ConnectError> {
    connect_with_key(scope, project, cfg, opts, None).await
}

/// [`connect`], authenticating with `key` (held in memory) instead of a key file.
pub async fn connect_with_key(
    scope: &Scope,
    project: &Project,
    mut cfg: SshConfig,
    opts: ConnectOptions,
    key: Option<&PrivateKey>,
) -> Result<SshMachine, ConnectError> {
    let in_memory = key.map(|k| {
        cfg.private_key_file = Some(k.label());
        (k.label(), k.text.0.clone())
    });
    let host = opts
        .host_override
        .clone()
        .or_else(|| cfg.host.clone())
        .unwrap_or_default();
    let u = Use::host(&SPEC, host, None);
    scope.check(&u).map_err(ConnectError::Denied)?;
    if let Some(b) = &cfg.bastion {
        scope
            .check(&Use::host(&SPEC, b.host.clone(), None))
            .map_err(ConnectError::Denied)?;
    }
    let mut files = read_key_files_except(
        scope,
        project,
        &cfg,
        in_memory.as_ref().map(|(l, _)| l.as_str()),
    )?;
    if let Some((label, text)) = in_memory {
        files.insert(&label, text);
    }
    scope
        .run(&u, "connect", SshMachine::connect(cfg, files, opts))
        .await
        .map_err(|e| match e {
            ScopeError::Denied(d) => ConnectError::Denied(d),
            ScopeError::Failed(e) => ConnectError::Ssh(Box::new(e)),
        })
}

/// How a build reached a machine, for the ledger: enough for `kiln cleanup` to connect
/// again (paths of key files, the host key seen), or why it cannot. Never a secret.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Reconnect {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Absolute path of the private key file.
    pub private_key_file: Option<String>,
    /// Absolute path of the known_hosts file.
    pub known_hosts: Option<String>,
    /// `SHA256:...`, pinned or seen on first use.
    pub host_key: Option<String>,
    pub agent: bool,
}

/// Why a machine cannot be reached again after kiln died, if it cannot.
pub fn unreachable_reason(cfg: &SshConfig, in_memory_key: bool, vm: bool) -> Option<&'static str> {
    if vm {
        return Some("it is a VM kiln started, which ended with kiln");
    }
    if in_memory_key {
        return Some(
            "it was reached with a temporary key pair that ended with the run; its processes \
             end when the instance is terminated",
        );
    }
    if cfg.bastion.is_some() {
        return Some("it is reached through a bastion, which kiln cleanup does not dial");
    }
    if cfg.private_key_file.is_none() && !cfg.agent {
        return Some("it uses password authentication, and kiln keeps no passwords");
    }
    None
}

/// Writes how `m` was reached to the build's ledger (an `ssh-target` record keyed by
/// the machine's target, `user@host:port`).
pub async fn record_target(
    cleanup: &crate::cleanup::CleanupStack,
    project: &Project,
    m: &SshMachine,
    cfg: &SshConfig,
    opts: &ConnectOptions,
    why_not: Option<&str>,
) {
    use crate::host::machine::Machine;
    let Some(ledger) = cleanup.ledger() else {
        return;
    };
    let abs = |p: &Option<String>| {
        p.as_ref().map(|p| {
            let p = expand_home(p);
            let path = std::path::Path::new(&p);
            if path.is_absolute() {
                p.clone()
            } else {
                project.path().join(path).display().to_string()
            }
        })
    };
    let reconnect = why_not.is_none().then(|| Reconnect {
        host: opts
            .host_override
            .clone()
            .or_else(|| cfg.host.clone())
            .unwrap_or_default(),
        port: opts.port_override.or(cfg.port).unwrap_or(22),
        user: cfg.user.clone(),
        private_key_file: abs(&cfg.private_key_file),
        known_hosts: abs(&cfg.known_hosts),
        host_key: None,
        agent: cfg.agent,
    });
    let reconnect = match reconnect {
        Some(mut r) => {
            if r.known_hosts.is_none() {
                r.host_key = Some(match &cfg.host_key {
                    Some(k) => k.clone(),
                    None => m.host_key_fingerprint().await,
                });
            }
            Some(r)
        }
        None => None,
    };
    let mut rec = crate::ledger::NewRecord::new(crate::ledger::Kind::SshTarget, m.target());
    rec.detail = serde_json::json!({ "reconnect": reconnect, "why_not": why_not });
    if let Err(e) = ledger.intent(&rec) {
        tracing::warn!("cannot record the SSH target in the ledger: {e}");
    }
}
