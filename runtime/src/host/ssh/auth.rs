//! Loading credentials through the project directory and authenticating a fresh connection.
//!
//! Methods are tried in Packer's order: an OpenSSH certificate with its key, the key
//! file, the agent's identities (certificates and keys, in the agent's order), the
//! password, and keyboard-interactive with the same password when the server offers
//! that instead of `password` (PAM prompts). A connection that ends rejected is one
//! rejection for `handshake_attempts`, whichever methods it tried.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::client::{Handle, KeyboardInteractiveAuthResponse};
use russh::keys::agent::AgentIdentity;
use russh::keys::{Certificate, PrivateKey, PrivateKeyWithHashAlg};
use russh::{MethodKind, MethodSet, client::AuthResult};

use super::config::{Endpoint, KeyFiles};
use super::error::SshError;

/// Keyboard-interactive rounds answered before kiln gives up on a chatty server.
const MAX_KBD_ROUNDS: usize = 5;

/// What an endpoint may authenticate with, loaded once per `connect`.
pub(crate) struct Credentials {
    user: String,
    key: Option<(String, Arc<PrivateKey>)>,
    /// An OpenSSH certificate for `key`.
    cert: Option<(String, Certificate)>,
    password: Option<String>,
    /// The agent's socket, when `agent: true`.
    agent: Option<PathBuf>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("key", &self.key.as_ref().map(|(p, _)| p))
            .field("cert", &self.cert.as_ref().map(|(p, _)| p))
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
        let cert = match (&ep.certificate_file, &key) {
            (None, _) => None,
            (Some(path), None) => {
                return Err(SshError::Config(format!(
                    "certificate_file {path:?} needs `private_key_file`, the key the certificate \
                     was issued for (with an agent, `ssh-add` that key next to its -cert.pub and \
                     leave certificate_file out: the agent offers the certificate itself)"
                )));
            }
            (Some(path), Some((_, key))) => {
                let text = files.get("certificate", path)?;
                Some((
                    path.clone(),
                    load_certificate(path, text, key, SystemTime::now())?,
                ))
            }
        };
        let agent = if ep.agent {
            let socket = ep
                .agent_socket
                .clone()
                .or_else(|| {
                    std::env::var_os("SSH_AUTH_SOCK")
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                })
                .ok_or_else(|| SshError::Agent("SSH_AUTH_SOCK is not set".into()))?;
            Some(socket)
        } else {
            None
        };
        Ok(Credentials {
            user: ep.user.clone(),
            key,
            cert,
            password: ep.password.clone(),
            agent,
        })
    }
}

/// Parses an OpenSSH certificate and checks what the server would refuse without
/// saying why: that it certifies `key`, and that it is valid `now`.
fn load_certificate(
    path: &str,
    text: &str,
    key: &PrivateKey,
    now: SystemTime,
) -> Result<Certificate, SshError> {
    let bad = |reason: String| SshError::BadCertificate {
        path: path.to_string(),
        reason,
    };
    let cert = Certificate::from_openssh(text.trim()).map_err(|e| {
        bad(format!(
            "{e} (expected an OpenSSH certificate, the `-cert.pub` file `ssh-keygen -s` writes)"
        ))
    })?;
    if cert.public_key() != key.public_key().key_data() {
        return Err(bad(
            "it certifies another key than `private_key_file`; give the key it was issued for"
                .into(),
        ));
    }
    let now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let when = |t: u64| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t));
    if now >= cert.valid_before() {
        return Err(bad(format!(
            "it expired at {}; have the CA issue a new one",
            when(cert.valid_before())
        )));
    }
    if now < cert.valid_after() {
        return Err(bad(format!(
            "it is not valid before {} (is this machine's clock right?)",
            when(cert.valid_after())
        )));
    }
    Ok(cert)
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

/// The methods tried on one connection and what the server said it accepts.
struct Attempts {
    tried: Vec<String>,
    kinds: Vec<&'static str>,
    /// The server's method list from its last failure, once known.
    allows: Option<Vec<MethodKind>>,
}

impl Attempts {
    fn kind(&mut self, k: &'static str) {
        if !self.kinds.contains(&k) {
            self.kinds.push(k);
        }
    }

    /// True on success; otherwise records what was tried.
    fn record(&mut self, r: AuthResult, what: String) -> bool {
        match r {
            AuthResult::Success => true,
            AuthResult::Failure {
                remaining_methods, ..
            } => {
                self.failed(&remaining_methods, what);
                false
            }
        }
    }

    fn failed(&mut self, remaining: &MethodSet, what: String) {
        self.allows = Some(remaining.to_vec());
        self.tried.push(what);
    }

    fn server_allows(&self, m: &MethodKind) -> Option<bool> {
        self.allows.as_ref().map(|a| a.contains(m))
    }
}

async fn rsa_hash<H: russh::client::Handler>(
    handle: &mut Handle<H>,
    key: &russh::keys::PublicKey,
    target: &str,
) -> Result<Option<russh::keys::HashAlg>, SshError> {
    if !key.algorithm().is_rsa() {
        return Ok(None);
    }
    Ok(handle
        .best_supported_rsa_hash()
        .await
        .map_err(|e| lost(target, e))?
        .flatten())
}

/// Tries every configured method in turn (see the module doc).
pub(crate) async fn authenticate<H: russh::client::Handler>(
    handle: &mut Handle<H>,
    creds: &Credentials,
    target: &str,
) -> Result<(), SshError> {
    let mut at = Attempts {
        tried: Vec::new(),
        kinds: Vec::new(),
        allows: None,
    };

    if let (Some((cert_path, cert)), Some((_, key))) = (&creds.cert, &creds.key) {
        at.kind("publickey");
        let r = handle
            .authenticate_openssh_cert(&creds.user, key.clone(), cert.clone())
            .await
            .map_err(|e| lost(target, e))?;
        let what = format!(
            "certificate {cert_path:?} (id {:?}, principals {})",
            cert.key_id(),
            principals(cert)
        );
        if at.record(r, what) {
            return Ok(());
        }
    }

    if let Some((path, key)) = &creds.key {
        at.kind("publickey");
        let hash = rsa_hash(handle, key.public_key(), target).await?;
        let r = handle
            .authenticate_publickey(&creds.user, PrivateKeyWithHashAlg::new(key.clone(), hash))
            .await
            .map_err(|e| lost(target, e))?;
        if at.record(r, format!("publickey {path:?} ({})", key.algorithm())) {
            return Ok(());
        }
    }

    if let Some(socket) = &creds.agent {
        at.kind("ssh-agent");
        if agent(handle, creds, socket, target, &mut at).await? {
            return Ok(());
        }
    }

    if let Some(pw) = &creds.password {
        // A server that turned passwords off but asks through PAM (keyboard-interactive)
        // gets the password there only, so one wrong password is one failed login.
        let offers = |m| at.server_allows(&m);
        let kbd_only = offers(MethodKind::Password) == Some(false)
            && offers(MethodKind::KeyboardInteractive) == Some(true);
        if !kbd_only {
            at.kind("password");
            let r = handle
                .authenticate_password(&creds.user, pw)
                .await
                .map_err(|e| lost(target, e))?;
            if at.record(r, "password".into()) {
                return Ok(());
            }
        }
        if at.server_allows(&MethodKind::Password) != Some(true)
            && at.server_allows(&MethodKind::KeyboardInteractive) == Some(true)
        {
            at.kind("keyboard-interactive");
            if keyboard_interactive(handle, &creds.user, pw, target, &mut at).await? {
                return Ok(());
            }
        }
    }

    Err(SshError::AuthRejected {
        target: target.to_string(),
        user: creds.user.clone(),
        tried: at.tried.join(", "),
        methods: at.kinds.join(", "),
        server_allows: at
            .allows
            .as_deref()
            .map_or_else(|| "(not reported)".to_string(), methods),
    })
}

fn principals(cert: &Certificate) -> String {
    let p = cert.valid_principals();
    if p.is_empty() {
        "any".into()
    } else {
        p.join(",")
    }
}

/// Offers every identity the agent holds; true once one is accepted.
async fn agent<H: russh::client::Handler>(
    handle: &mut Handle<H>,
    creds: &Credentials,
    socket: &std::path::Path,
    target: &str,
    at: &mut Attempts,
) -> Result<bool, SshError> {
    let mut agent = russh::keys::agent::client::AgentClient::connect_uds(socket)
        .await
        .map_err(|e| SshError::Agent(format!("cannot connect to {}: {e}", socket.display())))?;
    let ids = agent
        .request_identities()
        .await
        .map_err(|e| SshError::Agent(format!("listing its keys failed: {e}")))?;
    if ids.is_empty() {
        at.tried.push("ssh-agent (it holds no keys)".into());
    }
    for id in ids {
        let fp = id.public_key().fingerprint(russh::keys::HashAlg::Sha256);
        let hash = rsa_hash(handle, &id.public_key(), target).await?;
        let (label, result) = match id {
            AgentIdentity::PublicKey { key, .. } => (
                format!("ssh-agent key {fp}"),
                handle
                    .authenticate_publickey_with(&creds.user, key, hash, &mut agent)
                    .await,
            ),
            AgentIdentity::Certificate { certificate, .. } => (
                format!(
                    "ssh-agent certificate {fp} (id {:?}, principals {})",
                    certificate.key_id(),
                    principals(&certificate)
                ),
                handle
                    .authenticate_certificate_with(&creds.user, certificate, hash, &mut agent)
                    .await,
            ),
        };
        match result {
            Ok(r) => {
                if at.record(r, label) {
                    return Ok(true);
                }
            }
            Err(e) => {
                tracing::debug!("ssh-agent could not sign with {label}: {e}");
                at.tried.push(format!("{label} (agent refused to sign)"));
            }
        }
    }
    Ok(false)
}

/// Keyboard-interactive with the password: every hidden prompt (PAM's "Password:") gets
/// it; a prompt that echoes (a user name, a question) cannot be answered from a script.
async fn keyboard_interactive<H: russh::client::Handler>(
    handle: &mut Handle<H>,
    user: &str,
    password: &str,
    target: &str,
    at: &mut Attempts,
) -> Result<bool, SshError> {
    let mut reply = handle
        .authenticate_keyboard_interactive_start(user, None)
        .await
        .map_err(|e| lost(target, e))?;
    for _ in 0..MAX_KBD_ROUNDS {
        match reply {
            KeyboardInteractiveAuthResponse::Success => return Ok(true),
            KeyboardInteractiveAuthResponse::Failure {
                remaining_methods, ..
            } => {
                at.failed(&remaining_methods, "keyboard-interactive (password)".into());
                return Ok(false);
            }
            KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                if let Some(p) = prompts.iter().find(|p| p.echo) {
                    // Answer nothing (the server then fails the attempt) and say why.
                    let n = prompts.len();
                    let r = handle
                        .authenticate_keyboard_interactive_respond(vec![String::new(); n])
                        .await
                        .map_err(|e| lost(target, e))?;
                    let what = format!(
                        "keyboard-interactive (the server asked {:?}, which kiln cannot answer: \
                         only hidden password prompts get `password`)",
                        p.prompt.trim()
                    );
                    let remaining = match r {
                        KeyboardInteractiveAuthResponse::Failure {
                            remaining_methods, ..
                        } => remaining_methods,
                        _ => MethodSet::empty(),
                    };
                    at.failed(&remaining, what);
                    return Ok(false);
                }
                let answers = vec![password.to_string(); prompts.len()];
                reply = handle
                    .authenticate_keyboard_interactive_respond(answers)
                    .await
                    .map_err(|e| lost(target, e))?;
            }
        }
    }
    at.tried.push(format!(
        "keyboard-interactive (more than {MAX_KBD_ROUNDS} rounds of prompts)"
    ));
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keygen(dir: &std::path::Path, name: &str) -> (PrivateKey, String) {
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join(name))
            .status()
            .expect("ssh-keygen");
        assert!(out.success());
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        (
            russh::keys::decode_secret_key(&text, None).unwrap(),
            name.to_string(),
        )
    }

    fn sign(dir: &std::path::Path, key: &str, validity: &str) -> String {
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(dir.join("ca"))
            .args(["-I", "kiln-test", "-n", "root", "-V", validity])
            .arg(dir.join(format!("{key}.pub")))
            .status()
            .expect("ssh-keygen -s");
        assert!(st.success());
        std::fs::read_to_string(dir.join(format!("{key}-cert.pub"))).unwrap()
    }

    #[test]
    fn certificate_must_match_the_key_and_be_valid_now() {
        let d = tempfile::tempdir().unwrap();
        keygen(d.path(), "ca");
        let (user, _) = keygen(d.path(), "user");
        let (other, _) = keygen(d.path(), "other");
        let cert = sign(d.path(), "user", "-5m:+1h");
        let now = SystemTime::now();
        let c = load_certificate("user-cert.pub", &cert, &user, now).unwrap();
        assert_eq!(c.key_id(), "kiln-test");
        let e = load_certificate("user-cert.pub", &cert, &other, now).unwrap_err();
        assert!(e.to_string().contains("another key"), "{e}");
        let later = now + Duration::from_secs(7200);
        let e = load_certificate("user-cert.pub", &cert, &user, later).unwrap_err();
        assert!(e.to_string().contains("expired at"), "{e}");
        let earlier = now - Duration::from_secs(3600);
        let e = load_certificate("user-cert.pub", &cert, &user, earlier).unwrap_err();
        assert!(e.to_string().contains("not valid before"), "{e}");
        let e = load_certificate("user.pub", "ssh-ed25519 AAAA", &user, now).unwrap_err();
        assert!(matches!(e, SshError::BadCertificate { .. }), "{e}");
    }
}
