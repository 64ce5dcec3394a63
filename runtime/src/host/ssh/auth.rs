//! Loading credentials through the project directory and authenticating a fresh connection.

use std::fmt;
use std::sync::Arc;

use russh::client::Handle;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use russh::{MethodKind, client::AuthResult};

use super::config::{Endpoint, KeyFiles};
use super::error::SshError;

/// What an endpoint may authenticate with, loaded once per `connect`.
pub(crate) struct Credentials {
    user: String,
    key: Option<(String, Arc<PrivateKey>)>,
    password: Option<String>,
    agent: bool,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("key", &self.key.as_ref().map(|(p, _)| p))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("agent", &self.agent)
            .finish()
    }
}

impl Credentials {
    pub fn load(ep: &Endpoint, files: &KeyFiles) -> Result<Self, SshError> {
        if ep.private_key_file.is_none() && ep.password.is_none() && !ep.agent {
            return Err(SshError::Config(format!(
                "no authentication configured for {}: set `private_key_file`, `password` or `agent: true`",
                ep.target()
            )));
        }
        let key = match &ep.private_key_file {
            None => None,
            Some(path) => {
                let text = files.get("private key", path)?;
                let key = russh::keys::decode_secret_key(text, None).map_err(|e| {
                    let reason = match e {
                        russh::keys::Error::KeyIsEncrypted => {
                            "it is protected by a passphrase; kiln does not read passphrases from \
                             scripts: load it into ssh-agent (`ssh-add`) and set `agent: true`"
                                .to_string()
                        }
                        other => format!("{other} (expected an OpenSSH or PEM private key)"),
                    };
                    SshError::BadKey {
                        path: path.clone(),
                        reason,
                    }
                })?;
                Some((path.clone(), Arc::new(key)))
            }
        };
        Ok(Credentials {
            user: ep.user.clone(),
            key,
            password: ep.password.clone(),
            agent: ep.agent,
        })
    }
}

fn methods(set: &[MethodKind]) -> String {
    if set.is_empty() {
        return "no further methods".into();
    }
    set.iter()
        .map(<&'static str>::from)
        .collect::<Vec<_>>()
        .join(", ")
}

fn lost(target: &str, e: impl fmt::Display) -> SshError {
    SshError::Disconnected {
        target: target.to_string(),
        detail: format!("during authentication: {e}"),
    }
}

/// Tries every configured method in turn: key file, agent identities, password.
pub(crate) async fn authenticate<H: russh::client::Handler>(
    handle: &mut Handle<H>,
    creds: &Credentials,
    target: &str,
) -> Result<(), SshError> {
    let mut tried: Vec<String> = Vec::new();
    let mut kinds: Vec<&'static str> = Vec::new();
    let mut server_allows = String::from("(not reported)");
    let mut record = |r: AuthResult, what: String, tried: &mut Vec<String>| -> bool {
        match r {
            AuthResult::Success => true,
            AuthResult::Failure {
                remaining_methods, ..
            } => {
                server_allows = methods(&remaining_methods);
                tried.push(what);
                false
            }
        }
    };

    if let Some((path, key)) = &creds.key {
        kinds.push("publickey");
        let hash = if key.algorithm().is_rsa() {
            handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| lost(target, e))?
                .flatten()
        } else {
            None
        };
        let r = handle
            .authenticate_publickey(&creds.user, PrivateKeyWithHashAlg::new(key.clone(), hash))
            .await
            .map_err(|e| lost(target, e))?;
        if record(
            r,
            format!("publickey {path:?} ({})", key.algorithm()),
            &mut tried,
        ) {
            return Ok(());
        }
    }

    if creds.agent {
        kinds.push("ssh-agent");
        let mut agent = russh::keys::agent::client::AgentClient::connect_env()
            .await
            .map_err(|e| SshError::Agent(e.to_string()))?;
        let ids = agent
            .request_identities()
            .await
            .map_err(|e| SshError::Agent(e.to_string()))?;
        if ids.is_empty() {
            tried.push("ssh-agent (it holds no keys)".into());
        }
        for id in ids {
            let key = id.public_key().into_owned();
            let hash = if key.algorithm().is_rsa() {
                handle
                    .best_supported_rsa_hash()
                    .await
                    .map_err(|e| lost(target, e))?
                    .flatten()
            } else {
                None
            };
            let label = format!(
                "ssh-agent key {}",
                key.fingerprint(russh::keys::HashAlg::Sha256)
            );
            match handle
                .authenticate_publickey_with(&creds.user, key, hash, &mut agent)
                .await
            {
                Ok(r) => {
                    if record(r, label, &mut tried) {
                        return Ok(());
                    }
                }
                Err(e) => {
                    tracing::debug!("ssh-agent could not sign with {label}: {e}");
                    tried.push(format!("{label} (agent refused to sign)"));
                }
            }
        }
    }

    if let Some(pw) = &creds.password {
        kinds.push("password");
        let r = handle
            .authenticate_password(&creds.user, pw)
            .await
            .map_err(|e| lost(target, e))?;
        if record(r, "password".into(), &mut tried) {
            return Ok(());
        }
    }

    Err(SshError::AuthRejected {
        target: target.to_string(),
        user: creds.user.clone(),
        tried: tried.join(", "),
        methods: kinds.join(", "),
        server_allows,
    })
}
