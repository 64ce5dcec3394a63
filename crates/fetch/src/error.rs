//! The one error type the crate returns. Messages say what went wrong and what the user
//! can do; no reqwest, rustls or url type leaks out, and every URL in a message is redacted
//! (see `redact`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::checksum::{Algorithm, ChecksumError};

/// Everything that can go wrong while fetching an input.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid checksum: {0}")]
    Checksum(#[from] ChecksumError),

    #[error("{input:?} is not a usable source: {reason}")]
    InvalidSource { input: String, reason: String },

    #[error(
        "checksum mismatch for {url}: expected {algorithm}:{expected}, got {algorithm}:{got}; \
         the download was discarded (nothing was cached). If the file was updated upstream, \
         update the checksum; otherwise the mirror may serve a corrupt or tampered file"
    )]
    ChecksumMismatch {
        url: String,
        algorithm: Algorithm,
        expected: String,
        got: String,
    },

    #[error(
        "no checksum for {name:?} in {sums} ({entries} entries); check that the sums file \
         belongs to this release and that the file name in the URL matches it"
    )]
    NotInSumsFile {
        sums: String,
        name: String,
        entries: usize,
    },

    #[error("checksum file {sums} is not usable: {reason}")]
    BadSumsFile { sums: String, reason: String },

    #[error(
        "{url} was not found on the server (HTTP 404); check the URL (path, version, file name)"
    )]
    NotFound { url: String },

    #[error(
        "{url}: access denied (HTTP {status}); the server wants credentials or does not \
         allow this file to be downloaded"
    )]
    AccessDenied { url: String, status: u16 },

    #[error("{url}: the server refused the request (HTTP {status} {reason})")]
    ClientError {
        url: String,
        status: u16,
        reason: String,
    },

    #[error("{url}: server error (HTTP {status} {reason}); try again later or use another mirror")]
    ServerError {
        url: String,
        status: u16,
        reason: String,
    },

    #[error("{url}: unexpected answer HTTP {status} {reason}")]
    UnexpectedStatus {
        url: String,
        status: u16,
        reason: String,
    },

    #[error(
        "TLS with {url} failed: {detail}; if the server uses a private CA, set `ca_file` to \
         that CA's certificate (PEM)"
    )]
    Tls { url: String, detail: String },

    #[error("could not connect to {url}: {detail}")]
    Connect { url: String, detail: String },

    #[error(
        "connecting to {url} did not finish within {after:?} (TCP or TLS handshake); is the \
         host reachable, or does it need a proxy (HTTPS_PROXY)?"
    )]
    ConnectTimeout { url: String, after: Duration },

    #[error(
        "{url}: no data for {after:?} after {received} bytes; the transfer stalled (the \
         partial download is kept and the next fetch resumes it)"
    )]
    Stalled {
        url: String,
        after: Duration,
        received: u64,
    },

    #[error(
        "{url}: the connection broke after {received} bytes: {detail} (the partial download \
         is kept and the next fetch resumes it)"
    )]
    Interrupted {
        url: String,
        received: u64,
        detail: String,
    },

    #[error("{url}: more than {max} redirects; the server redirects in a loop")]
    TooManyRedirects { url: String, max: usize },

    #[error("{url} redirected to {to}, which is not allowed for this build")]
    RedirectDenied { url: String, to: String },

    #[error(
        "{url} is {size} bytes, more than the allowed {limit}; raise the size limit if this \
         file is really that large"
    )]
    TooLarge { url: String, size: u64, limit: u64 },

    #[error("{url}: the server broke the HTTP protocol: {detail}")]
    Protocol { url: String, detail: String },

    #[error("{url}: HTTP request failed: {detail}")]
    Http { url: String, detail: String },

    #[error("every URL failed:{}", Attempts(attempts))]
    AllFailed { attempts: Vec<(String, FetchError)> },

    #[error("local file {path:?}: {source}")]
    LocalFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path:?} is not a regular file")]
    NotAFile { path: PathBuf },

    #[error("CA file {path:?} is not usable: {reason}")]
    CaFile { path: PathBuf, reason: String },

    #[error("invalid proxy setting {name}: {reason}")]
    Proxy { name: String, reason: String },

    #[error("cannot build the HTTP client: {0}")]
    Client(String),

    #[error(
        "refusing cache directory {path:?}: {reason}; fix it with `{fix}` or choose another \
         directory (KILN_CACHE_DIR)"
    )]
    InsecureCacheDir {
        path: PathBuf,
        reason: String,
        fix: String,
    },

    #[error("cache I/O error while {what} {path:?}: {source}")]
    CacheIo {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// The partial download of this failure is kept and a later fetch resumes it.
    pub fn is_resumable(&self) -> bool {
        matches!(
            self,
            FetchError::Interrupted { .. } | FetchError::Stalled { .. }
        )
    }
}

struct Attempts<'a>(&'a [(String, FetchError)]);

impl fmt::Display for Attempts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (url, err)) in self.0.iter().enumerate() {
            write!(f, "\n  {}. {url}: {err}", i + 1)?;
        }
        Ok(())
    }
}

/// Classifies a reqwest error for `url` (already redacted). reqwest's own Display would
/// print the unredacted URL, so only the source chain below it is used for the detail.
pub(crate) fn from_reqwest(
    url: &str,
    e: reqwest::Error,
    connect_timeout: Duration,
    read_timeout: Duration,
    received: u64,
    max_redirects: usize,
) -> FetchError {
    let url = url.to_string();
    if e.is_redirect() {
        if let Some(denied) = find_redirect_denial(&e) {
            return FetchError::RedirectDenied {
                url,
                to: denied.to.clone(),
            };
        }
        return FetchError::TooManyRedirects {
            url,
            max: max_redirects,
        };
    }
    if let Some(tls) = find_tls(&e) {
        return FetchError::Tls { url, detail: tls };
    }
    let detail = chain(&e);
    if e.is_timeout() {
        return if e.is_connect() {
            FetchError::ConnectTimeout {
                url,
                after: connect_timeout,
            }
        } else {
            FetchError::Stalled {
                url,
                after: read_timeout,
                received,
            }
        };
    }
    if e.is_connect() {
        return FetchError::Connect { url, detail };
    }
    if e.is_body() || e.is_decode() {
        return FetchError::Interrupted {
            url,
            received,
            detail,
        };
    }
    if e.is_request() && received > 0 {
        return FetchError::Interrupted {
            url,
            received,
            detail,
        };
    }
    FetchError::Http { url, detail }
}

/// Marker error the redirect policy returns when the caller's guard refuses a target.
#[derive(Debug)]
pub(crate) struct RedirectRefused {
    pub(crate) to: String,
}

impl fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redirect to {} refused", self.to)
    }
}

impl std::error::Error for RedirectRefused {}

fn find_redirect_denial<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a RedirectRefused> {
    walk(e).find_map(|err| err.downcast_ref::<RedirectRefused>())
}

fn find_tls(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    walk(e).find_map(|err| err.downcast_ref::<rustls::Error>().map(|t| t.to_string()))
}

/// The error and its causes. `io::Error::source()` skips the error it wraps (it returns
/// that error's source), and rustls's failures arrive as an `io::Error` inside another
/// `io::Error`, so descend into an `io::Error` through `get_ref()` instead.
fn walk<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |err| {
        match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        }
    })
    .take(32)
}

/// The messages of the error's sources joined with ": ", skipping the top-level reqwest
/// message (which contains the unredacted URL) and repeated messages.
fn chain(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for err in walk(e).skip(1) {
        let msg = err.to_string();
        // Wrappers repeat their cause's message; keep it once.
        if !msg.is_empty() && !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
    }
    if parts.is_empty() {
        // No source: reqwest's kind without the URL.
        let bare = e.to_string();
        return match bare.split_once(" for url (") {
            Some((kind, _)) => kind.to_string(),
            None => "request failed".to_string(),
        };
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_failed_lists_every_attempt() {
        let e = FetchError::AllFailed {
            attempts: vec![
                (
                    "http://a/x.iso".into(),
                    FetchError::NotFound {
                        url: "http://a/x.iso".into(),
                    },
                ),
                (
                    "http://b/x.iso".into(),
                    FetchError::Connect {
                        url: "http://b/x.iso".into(),
                        detail: "Connection refused".into(),
                    },
                ),
            ],
        };
        let s = e.to_string();
        assert!(s.contains("1. http://a/x.iso"), "{s}");
        assert!(s.contains("404"), "{s}");
        assert!(s.contains("2. http://b/x.iso"), "{s}");
        assert!(s.contains("Connection refused"), "{s}");
    }

    #[test]
    fn mismatch_names_both_digests() {
        let e = FetchError::ChecksumMismatch {
            url: "u".into(),
            algorithm: Algorithm::Sha256,
            expected: "aa".into(),
            got: "bb".into(),
        };
        let s = e.to_string();
        assert!(s.contains("expected sha256:aa"), "{s}");
        assert!(s.contains("got sha256:bb"), "{s}");
    }
}
