//! The HTTP client: rustls with the system roots plus an optional private CA, explicit
//! proxies, connect and stall timeouts, bounded redirects checked by the caller's guard.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::error::{FetchError, RedirectRefused};
use crate::redact;
use crate::source::Target;

/// A CA bundle larger than this is not a CA bundle.
const MAX_CA_FILE: u64 = 4 * 1024 * 1024;

/// Decides whether a redirect may go to a target (the runtime's per-host grants).
pub type RedirectGuard = Arc<dyn Fn(&Target) -> bool + Send + Sync>;

/// Proxies for HTTP and HTTPS and the hosts that bypass them. Proxy URLs may carry
/// credentials, so `Debug` redacts them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    http: Option<String>,
    https: Option<String>,
    no_proxy: Option<String>,
}

impl ProxySettings {
    /// No proxy at all, whatever the environment says.
    pub fn none() -> ProxySettings {
        ProxySettings::default()
    }

    /// From `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (lower-case spellings
    /// win, as with curl).
    pub fn from_env() -> ProxySettings {
        ProxySettings::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like `from_env` with another source of variables (tests, a build's environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> ProxySettings {
        let var = |name: &str| {
            get(&name.to_ascii_lowercase())
                .or_else(|| get(name))
                .filter(|v| !v.trim().is_empty())
        };
        let all = var("ALL_PROXY");
        ProxySettings {
            http: var("HTTP_PROXY").or_else(|| all.clone()),
            https: var("HTTPS_PROXY").or(all),
            no_proxy: var("NO_PROXY"),
        }
    }

    /// The proxy for `http://` URLs.
    pub fn http(mut self, url: impl Into<String>) -> ProxySettings {
        self.http = Some(url.into());
        self
    }

    /// The proxy for `https://` URLs (tunnelled with CONNECT).
    pub fn https(mut self, url: impl Into<String>) -> ProxySettings {
        self.https = Some(url.into());
        self
    }

    /// Comma-separated hosts, domains (`.example.org`), IPs or CIDRs that bypass the proxy.
    pub fn no_proxy(mut self, list: impl Into<String>) -> ProxySettings {
        self.no_proxy = Some(list.into());
        self
    }

    pub fn is_none(&self) -> bool {
        self.http.is_none() && self.https.is_none()
    }
}

impl fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |v: &Option<String>| v.as_deref().map(redact::location);
        f.debug_struct("ProxySettings")
            .field("http", &shown(&self.http))
            .field("https", &shown(&self.https))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// What the client is built from (a subset of `FetchConfig`).
pub(crate) struct ClientSettings<'a> {
    pub(crate) ca_file: Option<&'a Path>,
    pub(crate) proxy: &'a ProxySettings,
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) max_redirects: usize,
    pub(crate) redirect_guard: Option<RedirectGuard>,
    pub(crate) user_agent: &'a str,
}

pub(crate) fn build(s: ClientSettings<'_>) -> Result<reqwest::Client, FetchError> {
    let max = s.max_redirects;
    let guard = s.redirect_guard.clone();
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > max {
            return attempt.error("too many redirects");
        }
        if let Some(g) = &guard {
            let allowed = Target::of(attempt.url()).is_some_and(|t| g(&t));
            if !allowed {
                let to = redact::url(attempt.url());
                return attempt.error(RedirectRefused { to });
            }
        }
        attempt.follow()
    });
    let mut b = reqwest::Client::builder()
        .user_agent(s.user_agent)
        .connect_timeout(s.connect_timeout)
        .read_timeout(s.read_timeout)
        .redirect(policy)
        .referer(false)
        // Proxies come only from `ProxySettings`, never from reqwest's own env lookup.
        .no_proxy();
    for (scheme, url) in [("http", &s.proxy.http), ("https", &s.proxy.https)] {
        let Some(url) = url else { continue };
        let name = format!("{}_PROXY", scheme.to_ascii_uppercase());
        let bad = |reason: String| FetchError::Proxy {
            name: name.clone(),
            reason,
        };
        // Accept `host:port` like curl does.
        let full = if url.contains("://") {
            url.clone()
        } else {
            format!("http://{url}")
        };
        let parsed =
            Url::parse(&full).map_err(|e| bad(format!("{}: {e}", redact::location(url))))?;
        let proxy = match scheme {
            "http" => reqwest::Proxy::http(parsed.as_str()),
            _ => reqwest::Proxy::https(parsed.as_str()),
        }
        .map_err(|e| bad(format!("{}: {}", redact::url(&parsed), e.without_url())))?;
        let proxy = proxy.no_proxy(
            s.proxy
                .no_proxy
                .as_deref()
                .and_then(reqwest::NoProxy::from_string),
        );
        b = b.proxy(proxy);
    }
    if let Some(path) = s.ca_file {
        b = b.tls_certs_merge(load_ca(path)?);
    }
    b.build()
        .map_err(|e| FetchError::Client(e.without_url().to_string()))
}

fn load_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, FetchError> {
    use std::io::Read;
    let bad = |reason: String| FetchError::CaFile {
        path: PathBuf::from(path),
        reason,
    };
    let f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut pem = Vec::new();
    f.take(MAX_CA_FILE + 1)
        .read_to_end(&mut pem)
        .map_err(|e| bad(e.to_string()))?;
    if pem.len() as u64 > MAX_CA_FILE {
        return Err(bad(format!("larger than {MAX_CA_FILE} bytes")));
    }
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| bad(format!("not a PEM certificate bundle: {}", e.without_url())))?;
    if certs.is_empty() {
        return Err(bad(
            "no `-----BEGIN CERTIFICATE-----` block in it (a PEM CA certificate is expected)"
                .into(),
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn env_lookup_prefers_lower_case_and_falls_back_to_all_proxy() {
        let env: HashMap<&str, &str> = [
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:2"),
            ("ALL_PROXY", "http://all:3"),
            ("NO_PROXY", "localhost,.internal"),
        ]
        .into();
        let p = ProxySettings::from_lookup(|k| env.get(k).map(|v| v.to_string()));
        assert_eq!(
            p,
            ProxySettings::none()
                .https("http://lower:2")
                .http("http://all:3")
                .no_proxy("localhost,.internal")
        );
        assert!(ProxySettings::from_lookup(|_| None).is_none());
    }

    #[test]
    fn debug_redacts_proxy_credentials() {
        let p = ProxySettings::none().https("http://bob:s3cret@proxy:3128");
        let d = format!("{p:?}");
        assert!(!d.contains("s3cret"), "{d}");
        assert!(d.contains("proxy:3128"), "{d}");
    }

    #[test]
    fn bad_ca_files_are_reported() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("ca.pem");
        std::fs::write(&p, "not a cert").unwrap();
        assert!(matches!(load_ca(&p), Err(FetchError::CaFile { .. })));
        assert!(matches!(
            load_ca(&t.path().join("missing.pem")),
            Err(FetchError::CaFile { .. })
        ));
    }
}
