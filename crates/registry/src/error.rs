//! The one error type at the crate's boundary.
//!
//! Every variant says what went wrong and what the user can do; callers match on the variant
//! (a CLI maps it to an exit code with [`RegistryError::exit_code`], the server to an HTTP
//! status). No error of a dependency leaks: database errors become [`RegistryError::Storage`]
//! with the driver's message as text.

use std::fmt;

/// What went wrong in the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// An input broke a name rule or a size limit (see [`crate::limits`]).
    #[error("invalid {field}: {reason}")]
    InvalidInput { field: String, reason: String },

    #[error("no bucket {bucket:?} in the registry{}", hint(suggestions))]
    UnknownBucket {
        bucket: String,
        suggestions: Vec<String>,
    },

    #[error(
        "bucket {bucket:?} has no version {fingerprint:?}{}",
        hint(suggestions)
    )]
    UnknownVersion {
        bucket: String,
        fingerprint: String,
        suggestions: Vec<String>,
    },

    #[error(
        "fingerprint prefix {prefix:?} matches several versions of {bucket:?}: {}; give more characters",
        candidates.join(", ")
    )]
    AmbiguousVersion {
        bucket: String,
        prefix: String,
        candidates: Vec<String>,
    },

    #[error("bucket {bucket:?} has no channel {channel:?}{}", hint(suggestions))]
    UnknownChannel {
        bucket: String,
        channel: String,
        suggestions: Vec<String>,
    },

    #[error(
        "version {fingerprint} of {bucket:?} has no {platform} artifact in region {region:?}{}",
        available_hint(available)
    )]
    UnknownArtifact {
        bucket: String,
        fingerprint: String,
        platform: String,
        region: String,
        /// `platform/region` pairs the version does have.
        available: Vec<String>,
    },

    #[error(
        "version {fingerprint} of {bucket:?} is revoked{}: {reason}; {}",
        inherited(inherited_from),
        revoked_advice(bucket, fingerprint, inherited_from)
    )]
    Revoked {
        bucket: String,
        fingerprint: String,
        reason: String,
        /// `bucket/fingerprint` of the ancestor whose revocation this version inherits.
        inherited_from: Option<String>,
    },

    #[error(
        "version {fingerprint} of {bucket:?} is not complete: build(s) {} have not succeeded; \
         record them (same fingerprint) or promote a complete version",
        missing.join(", ")
    )]
    Incomplete {
        bucket: String,
        fingerprint: String,
        missing: Vec<String>,
    },

    #[error(
        "version {fingerprint} of {bucket:?} is not revoked{}",
        not_revoked_hint(inherited_from)
    )]
    NotRevoked {
        bucket: String,
        fingerprint: String,
        /// Set when the version is revoked only through an ancestor.
        inherited_from: Option<String>,
    },

    /// The request contradicts what the registry already holds.
    #[error("{message}")]
    Conflict { message: String },

    /// The database was written by a newer kiln.
    #[error(
        "the registry schema is version {found}, newer than this kiln supports ({supported}); upgrade kiln"
    )]
    SchemaTooNew { found: i64, supported: i64 },

    /// The database could not be opened, read or written.
    #[error("registry storage ({backend}) failed while {operation}: {message}")]
    Storage {
        backend: &'static str,
        operation: &'static str,
        message: String,
        /// Whether trying again may succeed (a lock timeout, a lost connection).
        transient: bool,
    },
}

fn hint(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = suggestions.iter().map(|s| format!("{s:?}")).collect();
        format!("; did you mean {}?", quoted.join(" or "))
    }
}

fn available_hint(available: &[String]) -> String {
    if available.is_empty() {
        "; it has no artifacts".to_string()
    } else {
        format!("; it has {}", available.join(", "))
    }
}

fn inherited(from: &Option<String>) -> String {
    match from {
        Some(a) => format!(" (inherited from {a})"),
        None => String::new(),
    }
}

fn revoked_advice(bucket: &str, fingerprint: &str, from: &Option<String>) -> String {
    match from {
        Some(a) => format!("restore {a} or use another version"),
        None => format!(
            "use another version, or `kiln artifacts restore {bucket} {fingerprint}` if the revocation was a mistake"
        ),
    }
}

fn not_revoked_hint(from: &Option<String>) -> String {
    match from {
        Some(a) => format!(" itself; it inherits the revocation of {a}: restore that version"),
        None => String::new(),
    }
}

impl RegistryError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        RegistryError::InvalidInput {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        RegistryError::Conflict {
            message: message.into(),
        }
    }

    /// A short stable name of the variant (the `kind` of the JSON error body).
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryError::InvalidInput { .. } => "invalid_input",
            RegistryError::UnknownBucket { .. } => "unknown_bucket",
            RegistryError::UnknownVersion { .. } => "unknown_version",
            RegistryError::AmbiguousVersion { .. } => "ambiguous_version",
            RegistryError::UnknownChannel { .. } => "unknown_channel",
            RegistryError::UnknownArtifact { .. } => "unknown_artifact",
            RegistryError::Revoked { .. } => "revoked",
            RegistryError::Incomplete { .. } => "incomplete",
            RegistryError::NotRevoked { .. } => "not_revoked",
            RegistryError::Conflict { .. } => "conflict",
            RegistryError::SchemaTooNew { .. } => "schema_too_new",
            RegistryError::Storage { .. } => "storage",
        }
    }

    /// The process exit code a CLI should use, following kiln's convention: 2 for input the
    /// user can fix by changing the command (bad or unknown names), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            RegistryError::InvalidInput { .. }
            | RegistryError::UnknownBucket { .. }
            | RegistryError::UnknownVersion { .. }
            | RegistryError::AmbiguousVersion { .. }
            | RegistryError::UnknownChannel { .. }
            | RegistryError::UnknownArtifact { .. } => 2,
            RegistryError::Revoked { .. }
            | RegistryError::Incomplete { .. }
            | RegistryError::NotRevoked { .. }
            | RegistryError::Conflict { .. }
            | RegistryError::SchemaTooNew { .. }
            | RegistryError::Storage { .. } => 1,
        }
    }

    /// The HTTP status the server answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            RegistryError::InvalidInput { .. } => 400,
            RegistryError::UnknownBucket { .. }
            | RegistryError::UnknownVersion { .. }
            | RegistryError::UnknownChannel { .. }
            | RegistryError::UnknownArtifact { .. } => 404,
            RegistryError::AmbiguousVersion { .. }
            | RegistryError::Revoked { .. }
            | RegistryError::Incomplete { .. }
            | RegistryError::NotRevoked { .. }
            | RegistryError::Conflict { .. } => 409,
            RegistryError::SchemaTooNew { .. } => 500,
            RegistryError::Storage { .. } => 503,
        }
    }

    /// Names the error suggests instead of the unknown one, if any.
    pub fn suggestions(&self) -> &[String] {
        match self {
            RegistryError::UnknownBucket { suggestions, .. }
            | RegistryError::UnknownVersion { suggestions, .. }
            | RegistryError::UnknownChannel { suggestions, .. } => suggestions,
            RegistryError::AmbiguousVersion { candidates, .. } => candidates,
            RegistryError::UnknownArtifact { available, .. } => available,
            _ => &[],
        }
    }

    /// The JSON body the server and `--json` print: `{"error":{"kind","message","suggestions"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "kind": self.kind(),
                "message": self.to_string(),
                "suggestions": self.suggestions(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_bucket_suggests() {
        let e = RegistryError::UnknownBucket {
            bucket: "wbe".into(),
            suggestions: vec!["web".into()],
        };
        assert_eq!(
            e.to_string(),
            "no bucket \"wbe\" in the registry; did you mean \"web\"?"
        );
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.http_status(), 404);
        assert_eq!(e.to_json()["error"]["kind"], "unknown_bucket");
    }

    #[test]
    fn revoked_inherited_names_the_ancestor() {
        let e = RegistryError::Revoked {
            bucket: "app".into(),
            fingerprint: "F2".into(),
            reason: "CVE-1".into(),
            inherited_from: Some("base/F1".into()),
        };
        let s = e.to_string();
        assert!(s.contains("inherited from base/F1"), "{s}");
        assert!(s.contains("restore base/F1"), "{s}");
        assert_eq!(e.exit_code(), 1);
    }
}
