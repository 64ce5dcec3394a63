//! A string that must never be shown: passwords, tokens, application-credential secrets.
//!
//! `Debug` prints `<redacted>`, there is no `Display`, no `Serialize`, and the value is only
//! readable inside this crate (`expose`), so a secret cannot reach a log line, an error message,
//! a manifest or the audit log by accident.

use std::fmt;

/// A secret value (password, token, application-credential secret).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The clear text, for building a request. Crate-private on purpose.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl Drop for Secret {
    // Best effort: overwrite the bytes before the allocation is freed, so a token does not
    // linger in freed heap memory (a core dump, a later reuse of the page).
    fn drop(&mut self) {
        // SAFETY-free variant: replace every byte with NUL through the String's own API.
        let len = self.0.len();
        self.0.clear();
        self.0.extend(std::iter::repeat_n('\0', len));
        std::hint::black_box(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "<redacted>");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            password: Secret,
        }
        let h = Holder {
            password: s.clone(),
        };
        let shown = format!("{h:?} {h:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }
}
