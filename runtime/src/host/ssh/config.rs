//! The `ssh: #{...}` map of a build script, as the communicator reads it.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::error::SshError;

/// How long to wait for SSH when the script does not say (Packer's default too).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Authentication rejections tolerated before kiln stops dialling (Packer's
/// `ssh_handshake_attempts` default). Each rejected password is a failed login in the
/// host's auth log: retrying until `timeout` would trip fail2ban or an account lockout.
pub const DEFAULT_HANDSHAKE_ATTEMPTS: u32 = 10;

/// Ciphers offered when the script does not choose: chacha20-poly1305 first because guests
/// under QEMU TCG have no AES-NI, where AES-GCM is about 30% slower.
pub const DEFAULT_CIPHERS: &[&str] = &[
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
];

/// Connection settings for a machine, from the `ssh` map of a build script.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// Filled in by builders (qemu: 127.0.0.1); `ssh_host` requires it.
    #[serde(default)]
    pub host: Option<String>,
    /// Default 22.
    #[serde(default)]
    pub port: Option<u16>,
    pub user: String,
    /// Path relative to the project directory.
    #[serde(default)]
    pub private_key_file: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// An OpenSSH certificate for `private_key_file` (`ssh-keygen -s` writes it as
    /// `<key>-cert.pub`); Packer's `ssh_certificate_file` is accepted too.
    #[serde(default, alias = "ssh_certificate_file")]
    pub certificate_file: Option<String>,
    /// Use the agent at `$SSH_AUTH_SOCK`.
    #[serde(default)]
    pub agent: bool,
    /// Pinned fingerprint in OpenSSH format, `SHA256:...`.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Path relative to the project directory.
    #[serde(default)]
    pub known_hosts: Option<String>,
    #[serde(default)]
    pub insecure_ignore_host_key: bool,
    /// How long to wait for SSH, humantime ("5m", "90s"). Default 5 minutes.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Cipher preference, most preferred first (OpenSSH names).
    #[serde(default)]
    pub ciphers: Option<Vec<String>>,
    /// Jump host the target is reached through.
    #[serde(default)]
    pub bastion: Option<Box<BastionConfig>>,
    /// Send an SSH keepalive after this much silence ("30s"); off by default.
    #[serde(default)]
    pub keepalive: Option<String>,
    /// Authentication rejections before giving up (Packer's `ssh_handshake_attempts`,
    /// accepted under that name too). Default 10.
    #[serde(default, alias = "ssh_handshake_attempts")]
    pub handshake_attempts: Option<u32>,
}

/// A jump host: same authentication and host-key rules as the target, never trust-on-first-use.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BastionConfig {
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    pub user: String,
    #[serde(default)]
    pub private_key_file: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default, alias = "ssh_certificate_file")]
    pub certificate_file: Option<String>,
    #[serde(default)]
    pub agent: bool,
    #[serde(default)]
    pub host_key: Option<String>,
    #[serde(default)]
    pub known_hosts: Option<String>,
    #[serde(default)]
    pub insecure_ignore_host_key: bool,
}

/// Per-connection choices a builder makes (not the script).
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// A builder that created the VM itself may pin the first host key it sees.
    pub trust_on_first_use: bool,
    /// Overrides `SshConfig::host` (e.g. a builder that learns the address late).
    pub host_override: Option<String>,
    /// Overrides `SshConfig::port` (e.g. a forwarded port picked by the qemu builder).
    pub port_override: Option<u16>,
    /// The VM the machine runs in, when kiln started it: its exit ends the wait for SSH
    /// at once, and a dropped connection is reported as qemu's exit when that is why.
    pub vm: Option<std::sync::Arc<crate::host::qemu::Vm>>,
    /// The target's ssh-agent socket for `agent: true` instead of `$SSH_AUTH_SOCK`
    /// (embedding and tests, which cannot change the process environment safely); a
    /// bastion always uses `$SSH_AUTH_SOCK`.
    pub agent_socket: Option<std::path::PathBuf>,
}

/// The texts of the files a connection reads (private keys, known_hosts), by the path
/// the ssh map names. The caller reads them through its own grants, so the SSH client
/// never opens a file by name and a key outside the granted directories is refused
/// before any connection is made. The texts go to the SSH client only.
#[derive(Default)]
pub struct KeyFiles {
    files: std::collections::HashMap<String, String>,
}

impl fmt::Debug for KeyFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.files.keys()).finish()
    }
}

/// A file a connection needs: what it is for, and the path the ssh map names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFile {
    pub what: &'static str,
    pub path: String,
}

impl KeyFiles {
    /// Reads every file `cfg` needs beneath `dir` (benchmarks and tests; kiln itself
    /// reads them through the source's grants).
    pub fn read_beneath(cfg: &SshConfig, dir: &cap_std::fs::Dir) -> Result<KeyFiles, SshError> {
        let mut files = KeyFiles::default();
        for f in cfg.credential_files() {
            let text = dir
                .read_to_string(&f.path)
                .map_err(|source| SshError::LocalFile {
                    what: f.what,
                    path: f.path.clone(),
                    source,
                })?;
            files.insert(&f.path, text);
        }
        Ok(files)
    }

    pub fn insert(&mut self, path: &str, text: String) {
        self.files.insert(path.to_string(), text);
    }

    pub(crate) fn get(&self, what: &'static str, path: &str) -> Result<&str, SshError> {
        self.files
            .get(path)
            .map(String::as_str)
            .ok_or_else(|| SshError::LocalFile {
                what,
                path: path.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "it was not read before connecting",
                ),
            })
    }
}

fn redact(p: &Option<String>) -> Option<&'static str> {
    p.as_ref().map(|_| "<redacted>")
}

impl fmt::Debug for SshConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("private_key_file", &self.private_key_file)
            .field("password", &redact(&self.password))
            .field("certificate_file", &self.certificate_file)
            .field("agent", &self.agent)
            .field("host_key", &self.host_key)
            .field("known_hosts", &self.known_hosts)
            .field("insecure_ignore_host_key", &self.insecure_ignore_host_key)
            .field("timeout", &self.timeout)
            .field("ciphers", &self.ciphers)
            .field("bastion", &self.bastion)
            .field("keepalive", &self.keepalive)
            .field("handshake_attempts", &self.handshake_attempts)
            .finish()
    }
}

impl fmt::Debug for BastionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BastionConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("private_key_file", &self.private_key_file)
            .field("password", &redact(&self.password))
            .field("certificate_file", &self.certificate_file)
            .field("agent", &self.agent)
            .field("host_key", &self.host_key)
            .field("known_hosts", &self.known_hosts)
            .field("insecure_ignore_host_key", &self.insecure_ignore_host_key)
            .finish()
    }
}

/// The part of the settings that is the same for a target and a bastion.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub private_key_file: Option<String>,
    pub password: Option<String>,
    pub certificate_file: Option<String>,
    pub agent: bool,
    pub agent_socket: Option<std::path::PathBuf>,
    pub host_key: Option<String>,
    pub known_hosts: Option<String>,
    pub insecure_ignore_host_key: bool,
    pub trust_on_first_use: bool,
}

impl Endpoint {
    pub fn target(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

impl SshConfig {
    /// Every file connecting will read: private keys, certificates and known_hosts of
    /// the target and of the bastion, in that order.
    pub fn credential_files(&self) -> Vec<CredentialFile> {
        let mut out = Vec::new();
        let mut add = |what: &'static str, p: &Option<String>| {
            if let Some(path) = p {
                let f = CredentialFile {
                    what,
                    path: path.clone(),
                };
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        };
        add("private key", &self.private_key_file);
        add("certificate", &self.certificate_file);
        add("known_hosts file", &self.known_hosts);
        if let Some(b) = &self.bastion {
            add("private key", &b.private_key_file);
            add("certificate", &b.certificate_file);
            add("known_hosts file", &b.known_hosts);
        }
        out
    }

    pub(crate) fn timeout(&self) -> Result<Duration, SshError> {
        match &self.timeout {
            None => Ok(DEFAULT_TIMEOUT),
            Some(s) => humantime::parse_duration(s).map_err(|e| {
                SshError::Config(format!(
                    "timeout {s:?} is not a duration ({e}); write e.g. \"90s\" or \"5m\""
                ))
            }),
        }
    }

    pub(crate) fn handshake_attempts(&self) -> Result<u32, SshError> {
        match self.handshake_attempts {
            None => Ok(DEFAULT_HANDSHAKE_ATTEMPTS),
            Some(0) => Err(SshError::Config(
                "handshake_attempts must be at least 1".into(),
            )),
            Some(n) => Ok(n),
        }
    }

    pub(crate) fn keepalive(&self) -> Result<Option<Duration>, SshError> {
        self.keepalive
            .as_ref()
            .map(|s| {
                humantime::parse_duration(s).map_err(|e| {
                    SshError::Config(format!(
                        "keepalive {s:?} is not a duration ({e}); write e.g. \"30s\""
                    ))
                })
            })
            .transpose()
    }

    pub(crate) fn cipher_names(&self) -> Result<Vec<russh::cipher::Name>, SshError> {
        let wanted: Vec<&str> = match &self.ciphers {
            Some(list) if list.is_empty() => {
                return Err(SshError::Config(
                    "ciphers is empty: leave it out to use the defaults".into(),
                ));
            }
            Some(list) => list.iter().map(String::as_str).collect(),
            None => DEFAULT_CIPHERS.to_vec(),
        };
        wanted
            .into_iter()
            .map(|n| {
                // "none" would turn off encryption: never accept it from a script.
                if n == "none" || n == "clear" {
                    return Err(SshError::Config(format!(
                        "cipher {n:?} disables encryption and is not allowed"
                    )));
                }
                russh::cipher::Name::try_from(n).map_err(|()| {
                    SshError::Config(format!(
                        "unknown cipher {n:?}; supported: {}",
                        DEFAULT_CIPHERS.join(", ")
                    ))
                })
            })
            .collect()
    }

    pub(crate) fn endpoint(&self, opts: &ConnectOptions) -> Result<Endpoint, SshError> {
        let host = opts
            .host_override
            .clone()
            .or_else(|| self.host.clone())
            .ok_or_else(|| SshError::Config("no host given: set `host` in the ssh map".into()))?;
        Ok(Endpoint {
            host,
            port: opts.port_override.or(self.port).unwrap_or(22),
            user: self.user.clone(),
            private_key_file: self.private_key_file.clone(),
            password: self.password.clone(),
            certificate_file: self.certificate_file.clone(),
            agent: self.agent,
            agent_socket: opts.agent_socket.clone(),
            host_key: self.host_key.clone(),
            known_hosts: self.known_hosts.clone(),
            insecure_ignore_host_key: self.insecure_ignore_host_key,
            trust_on_first_use: opts.trust_on_first_use,
        })
    }
}

impl BastionConfig {
    pub(crate) fn endpoint(&self) -> Endpoint {
        Endpoint {
            host: self.host.clone(),
            port: self.port.unwrap_or(22),
            user: self.user.clone(),
            private_key_file: self.private_key_file.clone(),
            password: self.password.clone(),
            certificate_file: self.certificate_file.clone(),
            agent: self.agent,
            agent_socket: None,
            host_key: self.host_key.clone(),
            known_hosts: self.known_hosts.clone(),
            insecure_ignore_host_key: self.insecure_ignore_host_key,
            // We did not create the jump host, so its first key proves nothing.
            trust_on_first_use: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_passwords() {
        let cfg = SshConfig {
            user: "root".into(),
            password: Some("hunter2".into()),
            bastion: Some(Box::new(BastionConfig {
                host: "jump".into(),
                user: "ops".into(),
                password: Some("s3cret".into()),
                ..Default::default()
            })),
            ..Default::default()
        };
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
    }

    #[test]
    fn timeout_parses_and_defaults() {
        let mut cfg = SshConfig::default();
        assert_eq!(cfg.timeout().unwrap(), DEFAULT_TIMEOUT);
        cfg.timeout = Some("90s".into());
        assert_eq!(cfg.timeout().unwrap(), Duration::from_secs(90));
        cfg.timeout = Some("soon".into());
        assert!(cfg.timeout().unwrap_err().to_string().contains("\"soon\""));
    }

    #[test]
    fn handshake_attempts_default_alias_and_zero() {
        let engine = rhai::Engine::new_raw();
        let cfg = SshConfig::default();
        assert_eq!(
            cfg.handshake_attempts().unwrap(),
            DEFAULT_HANDSHAKE_ATTEMPTS
        );
        let map: rhai::Dynamic = engine
            .eval(r#"#{ user: "root", ssh_handshake_attempts: 3 }"#)
            .unwrap();
        let cfg: SshConfig = rhai::serde::from_dynamic(&map).unwrap();
        assert_eq!(cfg.handshake_attempts().unwrap(), 3);
        let cfg = SshConfig {
            handshake_attempts: Some(0),
            ..Default::default()
        };
        assert!(cfg.handshake_attempts().is_err());
    }

    #[test]
    fn ciphers_default_chacha_first_and_reject_none() {
        let mut cfg = SshConfig::default();
        let names = cfg.cipher_names().unwrap();
        assert_eq!(names[0].as_ref(), "chacha20-poly1305@openssh.com");
        cfg.ciphers = Some(vec!["aes128-gcm@openssh.com".into()]);
        assert_eq!(
            cfg.cipher_names().unwrap()[0].as_ref(),
            "aes128-gcm@openssh.com"
        );
        cfg.ciphers = Some(vec!["none".into()]);
        assert!(cfg.cipher_names().is_err());
        cfg.ciphers = Some(vec!["rot13".into()]);
        assert!(
            cfg.cipher_names()
                .unwrap_err()
                .to_string()
                .contains("rot13")
        );
    }

    #[test]
    fn deserializes_from_rhai_map_and_rejects_unknown_keys() {
        let engine = rhai::Engine::new_raw();
        let map: rhai::Dynamic = engine
            .eval(
                r#"#{ user: "root", port: 2222, private_key_file: "keys/id", host_key: "SHA256:abc",
                        bastion: #{ host: "jump", user: "ops", agent: true } }"#,
            )
            .unwrap();
        let cfg: SshConfig = rhai::serde::from_dynamic(&map).unwrap();
        assert_eq!(cfg.port, Some(2222));
        assert!(cfg.bastion.as_ref().unwrap().agent);
        let bad: rhai::Dynamic = engine.eval(r#"#{ user: "root", pasword: "x" }"#).unwrap();
        let err = rhai::serde::from_dynamic::<SshConfig>(&bad).err().unwrap();
        assert!(err.to_string().contains("pasword"), "{err}");
    }
}
