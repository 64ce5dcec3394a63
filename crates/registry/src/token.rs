//! Bearer tokens for the server's write endpoints.
//!
//! A token is `kiln_<id>_<secret>`: `id` (16 hex) finds the row, `secret` (64 hex, 256 random
//! bits) is checked against the stored sha256 in constant time. The clear token is returned
//! once by `Store::create_token` and never stored or logged.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::RegistryError;

/// A token in clear. `Debug` and `Display` print `<redacted>`; read it with
/// [`SecretToken::expose`] only to hand it to the user once or to send it in a header.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(String);

impl SecretToken {
    /// Wraps a token received from a user or a request header.
    pub fn new(token: impl Into<String>) -> Self {
        SecretToken(token.into())
    }

    /// The token text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Splits into (id, secret) when the token has kiln's shape.
    pub(crate) fn parts(&self) -> Option<(&str, &str)> {
        let rest = self.0.strip_prefix("kiln_")?;
        let (id, secret) = rest.split_once('_')?;
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hex(id, 16) && hex(secret, 64)).then_some((id, secret))
    }

    pub(crate) fn generate() -> Result<(String, SecretToken), RegistryError> {
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        let rng = |buf: &mut [u8]| {
            getrandom::fill(buf).map_err(|e| RegistryError::Storage {
                backend: "os",
                operation: "generating a token",
                message: format!("no randomness from the OS: {e}"),
                transient: false,
            })
        };
        rng(&mut id)?;
        rng(&mut secret)?;
        let id = hex::encode(id);
        let token = format!("kiln_{id}_{}", hex::encode(secret));
        Ok((id, SecretToken(token)))
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(<redacted>)")
    }
}

impl fmt::Display for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The stored form of a token's secret part.
pub(crate) fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time comparison of a presented secret's hash with the stored one.
pub(crate) fn matches(stored_hash: &str, secret: &str) -> bool {
    let presented = hash_secret(secret);
    presented.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_redaction() {
        let (id, t) = SecretToken::generate().expect("token");
        let (pid, secret) = t.parts().expect("parts");
        assert_eq!(pid, id);
        assert!(matches(&hash_secret(secret), secret));
        assert!(!matches(&hash_secret(secret), "0"));
        assert_eq!(format!("{t:?}"), "SecretToken(<redacted>)");
        assert_eq!(format!("{t}"), "<redacted>");
        assert!(SecretToken::new("kiln_zz_1").parts().is_none());
        assert!(SecretToken::new("Bearer x").parts().is_none());
    }
}
