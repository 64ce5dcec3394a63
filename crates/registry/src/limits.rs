//! Name rules and size limits, enforced on every write before anything reaches storage.
//!
//! Names (buckets, builds, channels, fingerprints) are ASCII `[A-Za-z0-9][A-Za-z0-9._-]*`: no
//! `/`, no whitespace, no leading `.`, so a name is always safe as a URL path segment, a file
//! name and a table cell, and path traversal (`../x`) or SQL text (`a';DROP`) is refused with a
//! clear message instead of being stored. Free text (labels, descriptions, reasons) is stored
//! inertly (parameterised queries, HTML-escaped on the page) but bounded in size and refused
//! when it carries control characters.

use crate::error::RegistryError;

/// Longest bucket, build, channel or fingerprint name.
pub const MAX_NAME: usize = 64;
/// Longest label key.
pub const MAX_LABEL_KEY: usize = 128;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 1024;
/// Most labels on one build.
pub const MAX_LABELS: usize = 64;
/// Longest bucket description, in bytes.
pub const MAX_DESCRIPTION: usize = 4096;
/// Longest revocation reason, in bytes.
pub const MAX_REASON: usize = 1024;
/// Longest external id (an AMI id, an OCI digest, a file path), in bytes.
pub const MAX_EXTERNAL_ID: usize = 2048;
/// Longest artifact path, in bytes.
pub const MAX_PATH: usize = 4096;
/// Longest region name.
pub const MAX_REGION: usize = 64;
/// Most artifacts one build can record.
pub const MAX_ARTIFACTS: usize = 1024;
/// Most builds one version can expect.
pub const MAX_BUILDS: usize = 256;
/// A failed build's error text is cut to this many bytes (kept, not refused).
pub const MAX_ERROR_TEXT: usize = 8192;
/// Longest actor name (who promoted or revoked).
pub const MAX_ACTOR: usize = 128;
/// Largest provenance document, serialized, in bytes.
pub const MAX_PROVENANCE: usize = 256 * 1024;
/// Largest HTTP request body the server reads.
pub const MAX_BODY: usize = 1024 * 1024;
/// Most versions one list page returns.
pub const MAX_PAGE: usize = 500;

/// Checks a bucket, build, channel or fingerprint name.
pub fn check_name(field: &str, value: &str) -> Result<(), RegistryError> {
    check_ident(field, value, MAX_NAME, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
    })
}

/// Checks a region (`us-east-1`, `local`, `registry.example:5000`).
pub fn check_region(value: &str) -> Result<(), RegistryError> {
    check_ident("region", value, MAX_REGION, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')
    })
}

/// Checks a label key (`os`, `kiln.dev/arch`).
pub fn check_label_key(value: &str) -> Result<(), RegistryError> {
    check_ident("label key", value, MAX_LABEL_KEY, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
    })
}

fn check_ident(
    field: &str,
    value: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<(), RegistryError> {
    if value.is_empty() {
        return Err(RegistryError::invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(RegistryError::invalid(
            field,
            format!("{} bytes, longer than the limit of {max}", value.len()),
        ));
    }
    let first = value.chars().next().unwrap_or('.');
    if !first.is_ascii_alphanumeric() {
        return Err(RegistryError::invalid(
            field,
            format!("{} must start with a letter or digit", shown(value)),
        ));
    }
    if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        return Err(RegistryError::invalid(
            field,
            format!(
                "{} contains {bad:?}; use letters, digits, '.', '_' and '-'",
                shown(value)
            ),
        ));
    }
    Ok(())
}

/// Checks free text: at most `max` bytes, no control characters except (when `multiline`)
/// newline and tab.
pub fn check_text(
    field: &str,
    value: &str,
    max: usize,
    multiline: bool,
) -> Result<(), RegistryError> {
    if value.len() > max {
        return Err(RegistryError::invalid(
            field,
            format!("{} bytes, longer than the limit of {max}", value.len()),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\t')))
    {
        return Err(RegistryError::invalid(
            field,
            format!("contains the control character {bad:?}"),
        ));
    }
    Ok(())
}

/// Checks a lowercase hex sha256 digest.
pub fn check_sha256(field: &str, value: &str) -> Result<(), RegistryError> {
    if value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(RegistryError::invalid(
            field,
            format!(
                "{} is not a sha256 digest (64 lowercase hex digits)",
                shown(value)
            ),
        ))
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// A value quoted for an error message, cut so a 1 MiB input does not become a 1 MiB message.
pub(crate) fn shown(value: &str) -> String {
    format!("{:?}", truncate(value, 80))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("bucket", "web-1.2_x").is_ok());
        for bad in [
            "",
            "../etc",
            "a/b",
            ".hidden",
            "a b",
            "x';DROP TABLE buckets;--",
            "é",
        ] {
            assert!(check_name("bucket", bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_name("bucket", &"a".repeat(64)).is_ok());
        assert!(check_name("bucket", &"a".repeat(65)).is_err());
    }

    #[test]
    fn text_and_digest() {
        assert!(check_text("label", "a'; DROP TABLE x; --", 100, false).is_ok());
        assert!(check_text("label", "a\nb", 100, false).is_err());
        assert!(check_text("description", "a\nb", 100, true).is_ok());
        assert!(check_text("label", &"x".repeat(101), 100, false).is_err());
        assert!(check_sha256("sha256", &"a".repeat(64)).is_ok());
        assert!(check_sha256("sha256", &"A".repeat(64)).is_err());
        assert!(check_region("127.0.0.1:5000").is_ok());
        assert!(check_label_key("kiln.dev/os").is_ok());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let s = "ééééé";
        let t = truncate(s, 6);
        assert!(t.len() <= 6 && t.ends_with("..."), "{t}");
        assert_eq!(truncate("short", 10), "short");
    }
}
