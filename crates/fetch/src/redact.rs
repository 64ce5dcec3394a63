//! URLs as they may be shown: a password in the userinfo and the values of query
//! parameters that look like credentials (`X-Amz-Signature`, `token`, ...) are replaced by
//! `<redacted>`. Every URL that reaches an error, a log line, a progress event or the
//! cache index goes through here first.

use url::Url;

const REDACTED: &str = "<redacted>";

/// Query parameter names (lower case, substring match) whose values are credentials.
const SECRET_PARAMS: [&str; 7] = [
    "sig",
    "token",
    "key",
    "secret",
    "password",
    "credential",
    "auth",
];

/// A parsed URL redacted for display.
pub(crate) fn url(u: &Url) -> String {
    let mut shown = u.clone();
    if shown.password().is_some() {
        // set_password only fails for URLs that cannot have one, which never get here.
        let _ = shown.set_password(Some(REDACTED));
    }
    if shown.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                let secret = SECRET_PARAMS.iter().any(|s| lower.contains(s));
                (
                    k.into_owned(),
                    if secret {
                        REDACTED.to_string()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    // Keep the angle brackets readable instead of percent-encoded.
    shown
        .as_str()
        .replace("%3Credacted%3E", REDACTED)
        .replace("%3credacted%3e", REDACTED)
}

/// A URL or a path as given by the user, redacted if it parses as a URL.
pub(crate) fn location(s: &str) -> String {
    match Url::parse(s) {
        Ok(u) if u.scheme().len() > 1 => url(&u),
        // Not a URL (a path, or a Windows drive letter): nothing secret to hide.
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_passwords_and_signed_query_values() {
        let u =
            Url::parse("https://alice:hunter2@example.org/a.iso?X-Amz-Signature=abc&v=1&token=t0k")
                .unwrap();
        let shown = url(&u);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("abc"), "{shown}");
        assert!(!shown.contains("t0k"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(shown.contains("v=1"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn leaves_plain_urls_and_paths_alone() {
        assert_eq!(
            location("http://127.0.0.1:8080/debian.qcow2"),
            "http://127.0.0.1:8080/debian.qcow2"
        );
        assert_eq!(location("./SHA256SUMS"), "./SHA256SUMS");
    }
}
