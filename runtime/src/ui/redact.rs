//! Secret redaction for everything kiln prints or writes.
//!
//! Each secret value is registered once; every output path (UI lines, JSON events,
//! the audit log, tracing logs, error messages) runs through [`Redactor::redact`].
//! Besides the plain value we also catch the encodings a value commonly takes on its
//! way through a build: shell-quoted, JSON-escaped, URL-encoded and base64 (at all
//! three byte alignments, so it is caught inside a longer base64 blob too).

use std::sync::{Arc, RwLock};

use base64::Engine as _;

#[derive(Clone, Default)]
pub struct Redactor {
    inner: Arc<RwLock<Vec<(String, String)>>>, // (needle, replacement), longest first
}

/// Below this length the base64 alignment variants are too short to be distinctive.
const MIN_ALIGNED_B64: usize = 6;

impl Redactor {
    /// Registers a secret value under `name`; every variant is replaced by `<secret:NAME>`.
    pub fn add(&self, name: &str, value: &str) {
        if value.is_empty() {
            return;
        }
        let replacement = format!("<secret:{name}>");
        let mut needles = vec![value.to_string()];
        needles.push(shell_escape::unix::escape(value.into()).into_owned());
        let json = serde_json::to_string(value).unwrap_or_default();
        needles.push(json.trim_matches('"').to_string());
        needles.push(url_encode(value));
        needles.extend(base64_variants(value.as_bytes()));

        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        for n in needles {
            if !n.is_empty() && !guard.iter().any(|(x, _)| *x == n) {
                guard.push((n, replacement.clone()));
            }
        }
        // Longest first so a variant that contains another is replaced whole.
        guard.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    }

    pub fn is_empty(&self) -> bool {
        self.inner.read().map(|g| g.is_empty()).unwrap_or(true)
    }

    pub fn redact(&self, text: &str) -> String {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut out = text.to_string();
        for (needle, replacement) in guard.iter() {
            if out.contains(needle.as_str()) {
                out = out.replace(needle.as_str(), replacement);
            }
        }
        out
    }
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The base64 text that always appears when `value` is embedded at byte offset 0, 1
/// or 2 (mod 3) inside a longer encoded stream: encode with 0–2 bytes of padding in
/// front and drop the characters that depend on neighbouring bytes.
fn base64_variants(value: &[u8]) -> Vec<String> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut out = vec![engine.encode(value)];
    if value.len() < MIN_ALIGNED_B64 {
        return out;
    }
    for pad in 0..3usize {
        let mut buf = vec![0u8; pad];
        buf.extend_from_slice(value);
        let enc = engine.encode(&buf);
        // Leading chars covering the padding bytes are unstable, as are trailing
        // chars covering a partial final group.
        let start = (pad * 4).div_ceil(3);
        let stable_bytes = buf.len() - buf.len() % 3;
        let end = stable_bytes / 3 * 4;
        if end > start + 4 {
            out.push(enc[start..end].to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_plain_and_encodings() {
        let r = Redactor::default();
        let secret = "s3cr3t 'pa$$' \"word\"";
        r.add("DB_PW", secret);
        let shell = shell_escape::unix::escape(secret.into()).into_owned();
        let json = serde_json::to_string(&serde_json::json!({ "pw": secret })).unwrap();
        for text in [
            format!("password is {secret}!"),
            format!("export PW={shell}"),
            json,
            format!("auth={}", url_encode(secret)),
        ] {
            let out = r.redact(&text);
            assert!(out.contains("<secret:DB_PW>"), "{text} -> {out}");
            assert!(!out.contains("pa$$"), "{out}");
        }
    }

    #[test]
    fn redacts_base64_at_any_alignment() {
        let r = Redactor::default();
        let secret = "correct horse battery staple";
        r.add("PW", secret);
        let engine = base64::engine::general_purpose::STANDARD;
        for prefix in ["", "a", "ab", "abc", "abcd"] {
            let blob = engine.encode(format!("{prefix}user:{secret}\n"));
            let out = r.redact(&format!("Authorization: Basic {blob}"));
            assert!(out.contains("<secret:PW>"), "prefix {prefix:?}: {out}");
        }
    }

    #[test]
    fn leaves_other_text_alone() {
        let r = Redactor::default();
        r.add("X", "hunter22");
        assert_eq!(r.redact("nothing to see"), "nothing to see");
    }
}
