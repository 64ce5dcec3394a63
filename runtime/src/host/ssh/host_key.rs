//! Deciding whether to trust the key a server presents: pinned fingerprint, known_hosts,
//! trust-on-first-use (only for machines kiln created), or an explicit insecure opt-out.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use russh::keys::{HashAlg, PublicKey};

use super::error::SshError;

/// OpenSSH-style `SHA256:<base64, no padding>` fingerprint.
pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn normalize_fingerprint(fp: &str) -> String {
    let fp = fp.trim().trim_end_matches('=');
    match fp.strip_prefix("SHA256:") {
        Some(rest) => format!("SHA256:{rest}"),
        None => format!("SHA256:{fp}"),
    }
}

/// One key line of a known_hosts file that applies to the host being checked.
#[derive(Clone, Debug)]
pub(crate) struct KnownKey {
    key: PublicKey,
    revoked: bool,
    line: usize,
}

/// Parses the OpenSSH known_hosts format (plain, `[host]:port`, hashed `|1|` entries,
/// `*`/`?` wildcards, `!` negation, `@revoked`) and returns the keys recorded for host:port.
/// `@cert-authority` lines are skipped: kiln does not accept host certificates.
pub(crate) fn known_keys_for(text: &str, host: &str, port: u16) -> Vec<KnownKey> {
    let wanted = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next().unwrap_or_default();
        let mut revoked = false;
        if let Some(marker) = first.strip_prefix('@') {
            match marker {
                "revoked" => revoked = true,
                _ => continue,
            }
            first = fields.next().unwrap_or_default();
        }
        let (Some(_kind), Some(b64)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !hosts_match(first, &wanted) {
            continue;
        }
        match russh::keys::parse_public_key_base64(b64) {
            Ok(key) => out.push(KnownKey {
                key,
                revoked,
                line: idx + 1,
            }),
            Err(e) => tracing::warn!(line = idx + 1, "skipping unparsable known_hosts key: {e}"),
        }
    }
    out
}

fn hosts_match(patterns: &str, wanted: &str) -> bool {
    let mut matched = false;
    for pat in patterns.split(',') {
        if let Some(hashed) = pat.strip_prefix("|1|") {
            if hashed_match(hashed, wanted) {
                matched = true;
            }
        } else if let Some(neg) = pat.strip_prefix('!') {
            if wildcard_match(neg, wanted) {
                // A negated match overrides every positive one on the line (OpenSSH semantics).
                return false;
            }
        } else if wildcard_match(pat, wanted) {
            matched = true;
        }
    }
    matched
}

fn hashed_match(entry: &str, wanted: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some((salt, hash)) = entry.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    let Ok(mac) = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&salt) else {
        return false;
    };
    mac.chain_update(wanted.as_bytes())
        .verify_slice(&hash)
        .is_ok()
}

fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || c.eq_ignore_ascii_case(&t[ti]) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The verification rules for one endpoint. Every configured check must pass.
#[derive(Clone, Debug)]
pub(crate) struct HostKeyPolicy {
    pub target: String,
    pub host: String,
    pub port: u16,
    pub pinned: Option<String>,
    pub known_hosts: Option<(String, Vec<KnownKey>)>,
    pub trust_on_first_use: bool,
    pub insecure: bool,
}

/// What the handler decided, kept so `connect` can explain a rejection.
#[derive(Debug)]
pub(crate) enum Verdict {
    Accepted(String),
    Rejected(SshError),
}

/// Shared between the russh handler (which sees the key) and `connect` (which reports).
#[derive(Clone, Default, Debug)]
pub(crate) struct VerdictSlot(Arc<Mutex<Option<Verdict>>>);

impl VerdictSlot {
    pub fn set(&self, v: Verdict) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(v);
        }
    }
    pub fn take(&self) -> Option<Verdict> {
        self.0.lock().ok().and_then(|mut g| g.take())
    }
}

impl HostKeyPolicy {
    pub fn is_configured(&self) -> bool {
        self.pinned.is_some()
            || self.known_hosts.is_some()
            || self.trust_on_first_use
            || self.insecure
    }

    /// `tofu_pin` holds the key seen by an earlier attempt of the same connect, so a retry
    /// cannot be answered by a different machine.
    pub fn check(
        &self,
        key: &PublicKey,
        tofu_pin: &Mutex<Option<String>>,
    ) -> Result<String, SshError> {
        let got = fingerprint(key);
        if self.insecure {
            tracing::warn!(target = %self.target, fingerprint = %got,
                "insecure_ignore_host_key is set: accepting the host key without verification");
            return Ok(got);
        }
        if let Some(pin) = &self.pinned {
            let expected = normalize_fingerprint(pin);
            if expected != got {
                return Err(SshError::HostKeyMismatch {
                    target: self.target.clone(),
                    expected,
                    got,
                });
            }
        }
        if let Some((file, keys)) = &self.known_hosts {
            if let Some(k) = keys
                .iter()
                .find(|k| k.revoked && k.key.key_data() == key.key_data())
            {
                return Err(SshError::HostKeyMismatch {
                    target: self.target.clone(),
                    expected: format!("a key not marked @revoked ({file} line {})", k.line),
                    got,
                });
            }
            let valid: Vec<&KnownKey> = keys.iter().filter(|k| !k.revoked).collect();
            if !valid.iter().any(|k| k.key.key_data() == key.key_data()) {
                if valid.is_empty() {
                    return Err(SshError::HostKeyUnknown {
                        target: self.target.clone(),
                        host: self.host.clone(),
                        port: self.port,
                        file: file.clone(),
                        got,
                    });
                }
                let expected = valid
                    .iter()
                    .map(|k| format!("{} ({file} line {})", fingerprint(&k.key), k.line))
                    .collect::<Vec<_>>()
                    .join(" or ");
                return Err(SshError::HostKeyMismatch {
                    target: self.target.clone(),
                    expected,
                    got,
                });
            }
        }
        if self.pinned.is_none() && self.known_hosts.is_none() {
            if !self.trust_on_first_use {
                return Err(SshError::NoHostKeyVerification {
                    target: self.target.clone(),
                });
            }
            let mut pin = tofu_pin
                .lock()
                .map_err(|_| SshError::Config("host key state poisoned".into()))?;
            match pin.as_ref() {
                Some(first) if *first != got => {
                    return Err(SshError::HostKeyMismatch {
                        target: self.target.clone(),
                        expected: first.clone(),
                        got,
                    });
                }
                Some(_) => {}
                None => {
                    tracing::info!(target = %self.target, fingerprint = %got,
                        "trusting the host key on first use (kiln created this machine)");
                    *pin = Some(got.clone());
                }
            }
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIEbK4QSFjayDSvBoQp1ax0lBMJsOMQrgqDshwVxtLzwi";

    fn key() -> PublicKey {
        russh::keys::parse_public_key_base64(ED).unwrap()
    }

    fn policy() -> HostKeyPolicy {
        HostKeyPolicy {
            target: "root@h:22".into(),
            host: "h".into(),
            port: 22,
            pinned: None,
            known_hosts: None,
            trust_on_first_use: false,
            insecure: false,
        }
    }

    #[test]
    fn wildcards_and_negation() {
        assert!(wildcard_match("*.example.com", "a.example.com"));
        assert!(wildcard_match("[127.0.0.1]:2?22", "[127.0.0.1]:2222"));
        assert!(!wildcard_match("a*b", "ac"));
        assert!(hosts_match("foo,*.ex", "x.ex"));
        assert!(!hosts_match("*.ex,!bad.ex", "bad.ex"));
    }

    #[test]
    fn known_hosts_plain_port_and_hashed() {
        // Hashed entry for "[127.0.0.1]:2222", produced by `ssh-keygen -H`.
        let salt = [7u8; 20];
        let mac = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&salt)
            .unwrap()
            .chain_update(b"[127.0.0.1]:2222")
            .finalize()
            .into_bytes();
        let b64 = base64::engine::general_purpose::STANDARD;
        let text = format!(
            "# comment\nother ssh-ed25519 {ED}\n|1|{}|{} ssh-ed25519 {ED}\nplain ssh-ed25519 {ED}\n",
            b64.encode(salt),
            b64.encode(mac)
        );
        assert_eq!(known_keys_for(&text, "127.0.0.1", 2222).len(), 1);
        assert_eq!(known_keys_for(&text, "plain", 22).len(), 1);
        assert!(known_keys_for(&text, "plain", 2222).is_empty());
    }

    #[test]
    fn pinned_mismatch_names_both() {
        let mut p = policy();
        p.pinned = Some("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into());
        let err = p.check(&key(), &Mutex::new(None)).unwrap_err().to_string();
        assert!(
            err.contains("SHA256:AAAA") && err.contains(&fingerprint(&key())),
            "{err}"
        );
        p.pinned = Some(fingerprint(&key()));
        assert!(p.check(&key(), &Mutex::new(None)).is_ok());
    }

    #[test]
    fn nothing_configured_is_refused_and_tofu_pins() {
        let p = policy();
        let err = p.check(&key(), &Mutex::new(None)).unwrap_err();
        assert!(matches!(err, SshError::NoHostKeyVerification { .. }));
        let mut p = policy();
        p.trust_on_first_use = true;
        let pin = Mutex::new(None);
        assert!(p.check(&key(), &pin).is_ok());
        *pin.lock().unwrap() = Some("SHA256:other".into());
        assert!(matches!(
            p.check(&key(), &pin),
            Err(SshError::HostKeyMismatch { .. })
        ));
    }

    #[test]
    fn revoked_key_refused() {
        let mut p = policy();
        p.known_hosts = Some((
            "kh".into(),
            known_keys_for(&format!("@revoked h ssh-ed25519 {ED}\n"), "h", 22),
        ));
        assert!(matches!(
            p.check(&key(), &Mutex::new(None)),
            Err(SshError::HostKeyMismatch { .. })
        ));
    }
}
