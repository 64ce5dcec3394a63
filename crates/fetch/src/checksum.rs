//! Checksums as Packer spells them (`iso_checksum`), and the hashers that check them.
//!
//! Accepted forms: `sha256:<hex>`, `sha512:<hex>`, `sha1:<hex>`, `md5:<hex>`, a bare hex
//! digest (the algorithm follows from its length), `file:<URL or path>` naming a
//! `SHA256SUMS`-style file, and `none`.

use std::fmt;
use std::str::FromStr;

use sha1::Digest as _;

/// A hash algorithm Packer accepts for `iso_checksum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    // Declared weakest first: `Ord` is used to prefer the strongest digest a sums file
    // offers for a name.
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    /// All algorithms, weakest first.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Md5,
        Algorithm::Sha1,
        Algorithm::Sha256,
        Algorithm::Sha512,
    ];

    /// The name as written in a checksum (`sha256`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the digest in hex characters.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha1 => 40,
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// The algorithm whose digests have this many hex characters.
    pub fn from_hex_len(len: usize) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.hex_len() == len)
    }

    /// Case-insensitive name lookup; also the BSD spellings (`SHA256`, `SHA2-256`).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        match name.to_ascii_lowercase().as_str() {
            "md5" => Some(Algorithm::Md5),
            "sha1" | "sha-1" => Some(Algorithm::Sha1),
            "sha256" | "sha-256" | "sha2-256" => Some(Algorithm::Sha256),
            "sha512" | "sha-512" | "sha2-512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A digest of a known algorithm, hex in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Checks that `hex` is a valid digest for `algorithm` (any case).
    pub fn new(algorithm: Algorithm, hex: &str) -> Result<Digest, ChecksumError> {
        let hex = hex.trim();
        if let Some(bad) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(ChecksumError::NotHex {
                algorithm: Some(algorithm),
                bad,
            });
        }
        if hex.len() != algorithm.hex_len() {
            return Err(ChecksumError::WrongLength {
                algorithm,
                expected: algorithm.hex_len(),
                got: hex.len(),
            });
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_ascii_lowercase(),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The digest in lower-case hex.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    /// `sha256:<hex>`, the form `iso_checksum` accepts back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

/// What `iso_checksum` asks for.
#[derive(Clone, PartialEq, Eq)]
pub enum ChecksumSpec {
    /// A digest given inline (`sha256:…` or bare hex).
    Digest(Digest),
    /// `file:<location>`: look the digest up in a sums file, by the downloaded file's name.
    /// The location is an `http(s)://` or `file://` URL, or a path.
    SumsFile(String),
    /// `none`: no verification. Accepted; the caller should warn.
    None,
}

impl ChecksumSpec {
    /// Parses a checksum as Packer spells it.
    pub fn parse(spec: &str) -> Result<ChecksumSpec, ChecksumError> {
        let s = spec.trim();
        if s.is_empty() {
            return Err(ChecksumError::Empty);
        }
        if s.eq_ignore_ascii_case("none") {
            return Ok(ChecksumSpec::None);
        }
        if let Some(location) = s.strip_prefix("file:") {
            let location = location.trim();
            if location.is_empty() {
                return Err(ChecksumError::EmptySumsLocation);
            }
            return Ok(ChecksumSpec::SumsFile(location.to_string()));
        }
        if let Some((name, hex)) = s.split_once(':') {
            let algorithm =
                Algorithm::from_name(name).ok_or_else(|| ChecksumError::UnknownAlgorithm {
                    given: name.chars().take(32).collect(),
                })?;
            return Ok(ChecksumSpec::Digest(Digest::new(algorithm, hex)?));
        }
        if let Some(bad) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(ChecksumError::NotHex {
                algorithm: None,
                bad,
            });
        }
        let algorithm = Algorithm::from_hex_len(s.len())
            .ok_or(ChecksumError::UnknownLength { got: s.len() })?;
        Ok(ChecksumSpec::Digest(Digest::new(algorithm, s)?))
    }
}

impl FromStr for ChecksumSpec {
    type Err = ChecksumError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChecksumSpec::parse(s)
    }
}

impl fmt::Display for ChecksumSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChecksumSpec::Digest(d) => d.fmt(f),
            ChecksumSpec::SumsFile(loc) => write!(f, "file:{}", crate::redact::location(loc)),
            ChecksumSpec::None => f.write_str("none"),
        }
    }
}

impl fmt::Debug for ChecksumSpec {
    // Through Display so a sums-file URL with credentials stays redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChecksumSpec({self})")
    }
}

/// Why a checksum string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    #[error(
        "the checksum is empty: give `sha256:<hex>` (or sha512/sha1/md5), a bare hex digest, \
         `file:<url of a SHA256SUMS file>`, or `none` to skip verification (not recommended)"
    )]
    Empty,

    #[error("`file:` needs the URL or path of a SHA256SUMS-style file after it")]
    EmptySumsLocation,

    #[error("unknown checksum algorithm {given:?}: use one of md5, sha1, sha256, sha512")]
    UnknownAlgorithm { given: String },

    #[error(
        "a {algorithm} digest has {expected} hex characters, this one has {got}; check that \
         the whole digest was copied and that the algorithm prefix is right"
    )]
    WrongLength {
        algorithm: Algorithm,
        expected: usize,
        got: usize,
    },

    #[error(
        "a bare digest of {got} hex characters matches no algorithm (md5 has 32, sha1 40, \
         sha256 64, sha512 128); prefix it with the algorithm, e.g. `sha256:`"
    )]
    UnknownLength { got: usize },

    #[error("{} contains {bad:?}, which is not a hex digit", match algorithm { Some(a) => format!("the {a} digest"), None => "the checksum".to_string() })]
    NotHex {
        algorithm: Option<Algorithm>,
        bad: char,
    },
}

/// An incremental hasher for one algorithm.
pub(crate) enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Md5 => Hasher::Md5(md5::Md5::new()),
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
            Algorithm::Sha512 => Hasher::Sha512(<sha2::Sha512 as sha2::Digest>::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => sha2::Digest::update(h, data),
            Hasher::Sha512(h) => sha2::Digest::update(h, data),
        }
    }

    pub(crate) fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Md5(h) => (Algorithm::Md5, hex::encode(h.finalize())),
            Hasher::Sha1(h) => (Algorithm::Sha1, hex::encode(h.finalize())),
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(sha2::Digest::finalize(h))),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(sha2::Digest::finalize(h))),
        };
        Digest { algorithm, hex }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn hash(a: Algorithm, data: &[u8]) -> String {
        let mut h = Hasher::new(a);
        h.update(data);
        h.finish().hex().to_string()
    }

    #[test]
    fn hashers_match_known_vectors() {
        assert_eq!(
            hash(Algorithm::Md5, b"abc"),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            hash(Algorithm::Sha1, b"abc"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(hash(Algorithm::Sha256, b"abc"), SHA256_ABC);
        assert!(hash(Algorithm::Sha512, b"abc").starts_with("ddaf35a193617aba"));
        assert_eq!(hash(Algorithm::Sha512, b"abc").len(), 128);
    }

    #[test]
    fn parses_every_packer_form() {
        let d = |a, h: &str| ChecksumSpec::Digest(Digest::new(a, h).unwrap());
        assert_eq!(
            ChecksumSpec::parse(&format!("sha256:{SHA256_ABC}")).unwrap(),
            d(Algorithm::Sha256, SHA256_ABC)
        );
        assert_eq!(
            ChecksumSpec::parse(&format!("SHA256:{}", SHA256_ABC.to_uppercase())).unwrap(),
            d(Algorithm::Sha256, SHA256_ABC)
        );
        assert_eq!(
            ChecksumSpec::parse(SHA256_ABC).unwrap(),
            d(Algorithm::Sha256, SHA256_ABC)
        );
        assert_eq!(
            ChecksumSpec::parse("900150983cd24fb0d6963f7d28e17f72").unwrap(),
            d(Algorithm::Md5, "900150983cd24fb0d6963f7d28e17f72")
        );
        assert_eq!(
            ChecksumSpec::parse("md5:900150983cd24fb0d6963f7d28e17f72").unwrap(),
            d(Algorithm::Md5, "900150983cd24fb0d6963f7d28e17f72")
        );
        assert_eq!(
            ChecksumSpec::parse("sha1:a9993e364706816aba3e25717850c26c9cd0d89d").unwrap(),
            d(Algorithm::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d")
        );
        let sha512 = "a".repeat(128);
        assert_eq!(
            ChecksumSpec::parse(&format!("sha512:{sha512}")).unwrap(),
            d(Algorithm::Sha512, &sha512)
        );
        assert_eq!(
            ChecksumSpec::parse(&sha512).unwrap(),
            d(Algorithm::Sha512, &sha512)
        );
        assert_eq!(
            ChecksumSpec::parse("file:https://example.org/SHA256SUMS").unwrap(),
            ChecksumSpec::SumsFile("https://example.org/SHA256SUMS".into())
        );
        assert_eq!(
            ChecksumSpec::parse("file:./SHA256SUMS").unwrap(),
            ChecksumSpec::SumsFile("./SHA256SUMS".into())
        );
        assert_eq!(ChecksumSpec::parse("none").unwrap(), ChecksumSpec::None);
        assert_eq!(ChecksumSpec::parse(" None ").unwrap(), ChecksumSpec::None);
    }

    #[test]
    fn rejects_bad_checksums_with_typed_errors() {
        assert_eq!(ChecksumSpec::parse("  "), Err(ChecksumError::Empty));
        assert_eq!(
            ChecksumSpec::parse("file:"),
            Err(ChecksumError::EmptySumsLocation)
        );
        assert_eq!(
            ChecksumSpec::parse("sha384:abcd"),
            Err(ChecksumError::UnknownAlgorithm {
                given: "sha384".into()
            })
        );
        assert_eq!(
            ChecksumSpec::parse("sha256:abcd"),
            Err(ChecksumError::WrongLength {
                algorithm: Algorithm::Sha256,
                expected: 64,
                got: 4
            })
        );
        assert_eq!(
            ChecksumSpec::parse(&"a".repeat(63)),
            Err(ChecksumError::UnknownLength { got: 63 })
        );
        assert_eq!(
            ChecksumSpec::parse(&format!("sha256:{}", "g".repeat(64))),
            Err(ChecksumError::NotHex {
                algorithm: Some(Algorithm::Sha256),
                bad: 'g'
            })
        );
        assert_eq!(
            ChecksumSpec::parse("xyz"),
            Err(ChecksumError::NotHex {
                algorithm: None,
                bad: 'x'
            })
        );
        // Messages say what to do.
        assert!(
            ChecksumError::UnknownLength { got: 63 }
                .to_string()
                .contains("sha256:")
        );
    }

    #[test]
    fn display_round_trips() {
        let spec = ChecksumSpec::parse(&format!("SHA256:{SHA256_ABC}")).unwrap();
        assert_eq!(ChecksumSpec::parse(&spec.to_string()).unwrap(), spec);
        assert_eq!(spec.to_string(), format!("sha256:{SHA256_ABC}"));
    }

    #[test]
    fn sums_location_credentials_are_redacted() {
        let spec = ChecksumSpec::parse("file:https://u:hunter2@example.org/SHA256SUMS").unwrap();
        assert!(!spec.to_string().contains("hunter2"));
        assert!(!format!("{spec:?}").contains("hunter2"));
    }
}
