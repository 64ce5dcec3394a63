//! Registry errors: one variant per thing a caller does something different about.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use crate::digest::Digest;
use crate::image::FormatError;
use crate::layout::LayoutError;

use super::auth::AuthFileError;
use super::reference::BadReference;

/// One entry of the registry's error body (`{"errors":[{"code","message"}]}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorItem {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// The registry's own explanation, if it sent one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details(pub Vec<ErrorItem>);

impl Details {
    /// Parses an error body; anything that is not the spec's JSON gives no details.
    pub(crate) fn parse(body: &[u8]) -> Details {
        #[derive(Deserialize)]
        struct Body {
            #[serde(default)]
            errors: Vec<ErrorItem>,
        }
        Details(
            serde_json::from_slice::<Body>(body)
                .map(|b| b.errors)
                .unwrap_or_default(),
        )
    }

    /// Does the registry give this error code?
    pub fn has_code(&self, code: &str) -> bool {
        self.0.iter().any(|e| e.code == code)
    }
}

impl fmt::Display for Details {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no details from the registry");
        }
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            // Registry messages are untrusted text: keep them short and on one line.
            let msg: String = e
                .message
                .chars()
                .filter(|c| !c.is_control())
                .take(300)
                .collect();
            write!(f, "{}: {}", e.code, msg)?;
        }
        Ok(())
    }
}

/// What a registry operation failed on.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "{registry} refused the credentials for {scope} (unauthorized: {details}): check the \
         user name and password/token for this registry (auth file, REGISTRY_AUTH_FILE or the \
         secret given to the build)"
    )]
    Unauthorized {
        registry: String,
        scope: String,
        details: Details,
    },
    #[error(
        "{registry} denied access to {repository} ({details}): the account lacks permission for this repository"
    )]
    Denied {
        registry: String,
        repository: String,
        details: Details,
    },
    #[error("{registry}: {what} {reference} not found in {repository} ({details})")]
    NotFound {
        registry: String,
        repository: String,
        what: &'static str,
        reference: String,
        details: Details,
    },
    #[error(
        "{what} from {registry} has digest {actual}, expected {expected}: refusing it (corrupted in transit or a misbehaving registry)"
    )]
    DigestMismatch {
        registry: String,
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what} from {registry} is {actual} bytes, expected {expected}: refusing it")]
    SizeMismatch {
        registry: String,
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "TLS with {registry} failed: {message}. For a private CA, set ca_file; if the registry \
         serves plain HTTP, list it as insecure"
    )]
    Tls { registry: String, message: String },
    #[error("cannot reach {registry}: {message}")]
    Transport { registry: String, message: String },
    #[error("{registry} answered HTTP {status} to {op} ({details})")]
    Status {
        registry: String,
        op: &'static str,
        status: u16,
        details: Details,
    },
    #[error("{registry} broke the protocol during {op}: {message}")]
    Protocol {
        registry: String,
        op: &'static str,
        message: String,
    },
    #[error("{registry} has no manifest for {platform} in {reference} (it has: {available:?})")]
    NoPlatform {
        registry: String,
        reference: String,
        platform: String,
        available: Vec<String>,
    },
    #[error("{0}")]
    Insecure(String),
    #[error("CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
    #[error(transparent)]
    Reference(#[from] BadReference),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
