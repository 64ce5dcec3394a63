//! Version fingerprints: a ULID per `kiln build` run unless the caller supplies one
//! (`KILN_BUILD_FINGERPRINT`, so several machines contribute builds to one version).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::RegistryError;
use crate::limits;
use crate::timestamp::Timestamp;

/// The environment variable that overrides the generated fingerprint.
pub const FINGERPRINT_ENV: &str = "KILN_BUILD_FINGERPRINT";

/// Identifies one version of a bucket. Follows the name rule of [`limits::check_name`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// A new ULID: 48 bits of milliseconds then 80 random bits, Crockford base32, so
    /// fingerprints sort by creation time.
    pub fn generate() -> Result<Self, RegistryError> {
        let mut random = [0u8; 10];
        getrandom::fill(&mut random).map_err(|e| RegistryError::Storage {
            backend: "os",
            operation: "generating a fingerprint",
            message: format!("no randomness from the OS: {e}"),
            transient: false,
        })?;
        Ok(Fingerprint(ulid(Timestamp::now().as_millis(), random)))
    }

    /// `KILN_BUILD_FINGERPRINT` when set (validated), a new ULID otherwise. Call once per run
    /// and use the result for every build of the run.
    pub fn from_env_or_generate() -> Result<Self, RegistryError> {
        match std::env::var(FINGERPRINT_ENV) {
            Ok(v) if !v.is_empty() => Self::parse(&v).map_err(|e| match e {
                RegistryError::InvalidInput { reason, .. } => {
                    RegistryError::invalid(FINGERPRINT_ENV, reason)
                }
                other => other,
            }),
            _ => Self::generate(),
        }
    }

    /// A caller-supplied fingerprint.
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        limits::check_name("fingerprint", s)?;
        Ok(Fingerprint(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Fingerprint::parse(&s).map_err(serde::de::Error::custom)
    }
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn ulid(millis: i64, random: [u8; 10]) -> String {
    let ms = u128::from(u64::try_from(millis).unwrap_or(0) & 0xFFFF_FFFF_FFFF);
    let mut value = ms << 80;
    for (i, b) in random.iter().enumerate() {
        value |= u128::from(*b) << (72 - 8 * i);
    }
    (0..26)
        .map(|i| {
            let shift = 125 - 5 * i;
            char::from(CROCKFORD[((value >> shift) & 31) as usize])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulid_layout() {
        // The ULID spec's example time 1469918176385 encodes as 01ARYZ6S41.
        let s = ulid(1_469_918_176_385, [0; 10]);
        assert_eq!(s.len(), 26);
        assert!(s.starts_with("01ARYZ6S41"), "{s}");
        assert!(s.ends_with("0000000000000000"), "{s}");
        let a = Fingerprint::generate().expect("fp");
        assert!(limits::check_name("fingerprint", a.as_str()).is_ok());
        assert_ne!(a, Fingerprint::generate().expect("fp"));
    }

    #[test]
    fn parse_refuses_hostile() {
        assert!(Fingerprint::parse("../../x").is_err());
        assert!(Fingerprint::parse("abc123").is_ok());
    }
}
