//! `ssh`: opening SSH connections to the hosts granted (`allow: #{ ssh: ["build-1",
//! "*.example.com"] }`). Builders hold it for the hosts their config names.
//!
//! [`connect`] is the facade. The private key and known_hosts files an `ssh` map names
//! are read here, through the caller's `read` grants (so a key in `~/.ssh` needs
//! `read: ["~/.ssh"]`, and one outside every grant is refused before any connection),
//! and handed to the SSH client only: no script or guest ever sees their bytes.

pub mod rhai;

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

/// Reads the files `cfg` names through `scope`'s read grants (`~` expanded).
pub fn read_key_files(
    scope: &Scope,
    project: &Project,
    cfg: &SshConfig,
) -> Result<KeyFiles, ConnectError> {
    let mut files = KeyFiles::default();
    for f in cfg.credential_files() {
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
    let files = read_key_files(scope, project, &cfg)?;
    scope
        .run(&u, "connect", SshMachine::connect(cfg, files, opts))
        .await
        .map_err(|e| match e {
            ScopeError::Denied(d) => ConnectError::Denied(d),
            ScopeError::Failed(e) => ConnectError::Ssh(Box::new(e)),
        })
}
