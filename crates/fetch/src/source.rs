//! Where an input comes from: an `http(s)://` URL, a `file://` URL or a plain path.

use std::path::{Path, PathBuf};

use url::Url;

use crate::error::FetchError;
use crate::redact;

/// A network endpoint a fetch may contact: what the runtime grants per host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: String,
    /// Host name or IP literal as written in the URL (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

impl Target {
    pub(crate) fn of(u: &Url) -> Option<Target> {
        let host = match u.host()? {
            url::Host::Domain(d) => d.to_string(),
            url::Host::Ipv4(a) => a.to_string(),
            url::Host::Ipv6(a) => a.to_string(),
        };
        Some(Target {
            scheme: u.scheme().to_string(),
            host,
            port: u.port_or_known_default()?,
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Source {
    Http(Url),
    Local(PathBuf),
}

impl Source {
    /// Parses `input`; relative paths are taken relative to `base_dir`.
    pub(crate) fn parse(input: &str, base_dir: &Path) -> Result<Source, FetchError> {
        let s = input.trim();
        let invalid = |reason: &str| FetchError::InvalidSource {
            input: redact::location(s),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(invalid("it is empty"));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            let scheme = scheme.to_ascii_lowercase();
            match scheme.as_str() {
                "http" | "https" => {
                    let u = Url::parse(s).map_err(|e| invalid(&format!("bad URL: {e}")))?;
                    if u.host_str().is_none_or(str::is_empty) {
                        return Err(invalid("the URL has no host"));
                    }
                    Ok(Source::Http(u))
                }
                "file" => {
                    let u = Url::parse(s).map_err(|e| invalid(&format!("bad URL: {e}")))?;
                    let path = u.to_file_path().map_err(|()| {
                        invalid(
                            "a file:// URL needs an absolute path (file:///abs/path) and no \
                             host; for a relative path write the path itself",
                        )
                    })?;
                    Ok(Source::Local(path))
                }
                other => Err(invalid(&format!(
                    "the {other}:// scheme is not supported; use http://, https://, file:// or \
                     a path"
                ))),
            }
        } else {
            let p = Path::new(s);
            Ok(Source::Local(if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            }))
        }
    }

    /// As shown to the user (credentials redacted).
    pub(crate) fn shown(&self) -> String {
        match self {
            Source::Http(u) => redact::url(u),
            Source::Local(p) => p.display().to_string(),
        }
    }

    /// The identity the cache key is derived from: the URL without credentials (they do
    /// not change the content), or the absolute local path as a `file://` URL.
    pub(crate) fn identity(&self) -> String {
        match self {
            Source::Http(u) => {
                let mut u = u.clone();
                let _ = u.set_username("");
                let _ = u.set_password(None);
                u.set_fragment(None);
                u.to_string()
            }
            Source::Local(p) => {
                let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
                match Url::from_file_path(&abs) {
                    Ok(u) => u.to_string(),
                    Err(()) => format!("file://{}", abs.display()),
                }
            }
        }
    }

    /// The file name the sums file is searched for.
    pub(crate) fn file_name(&self) -> Option<String> {
        match self {
            Source::Http(u) => u
                .path_segments()
                .and_then(|mut s| s.rfind(|seg| !seg.is_empty()))
                .map(decode),
            Source::Local(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()),
        }
    }

    /// Names to look up in a sums file at `sums`: the path relative to the sums file's
    /// directory when the sums file sits above this source (the more exact match), then
    /// the base name.
    pub(crate) fn sums_candidates(&self, sums: &SumsLocation) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let rel = match (self, sums) {
            (Source::Http(u), SumsLocation::Http(s)) if same_origin(u, s) => {
                let dir = match s.path().rfind('/') {
                    Some(i) => &s.path()[..=i],
                    None => "/",
                };
                u.path().strip_prefix(dir).map(decode)
            }
            (Source::Local(p), SumsLocation::Local(s)) => s
                .parent()
                .and_then(|d| p.strip_prefix(d).ok())
                .map(|r| r.to_string_lossy().into_owned()),
            _ => None,
        };
        out.extend(rel);
        if let Some(name) = self.file_name()
            && !out.contains(&name)
        {
            out.push(name);
        }
        out
    }

    pub(crate) fn target(&self) -> Option<Target> {
        match self {
            Source::Http(u) => Target::of(u),
            Source::Local(_) => None,
        }
    }
}

/// Where a `file:` checksum's sums file lives.
#[derive(Debug, Clone)]
pub(crate) enum SumsLocation {
    Http(Url),
    Local(PathBuf),
}

impl SumsLocation {
    pub(crate) fn parse(loc: &str, base_dir: &Path) -> Result<SumsLocation, FetchError> {
        match Source::parse(loc, base_dir)? {
            Source::Http(u) => Ok(SumsLocation::Http(u)),
            Source::Local(p) => Ok(SumsLocation::Local(p)),
        }
    }

    pub(crate) fn shown(&self) -> String {
        match self {
            SumsLocation::Http(u) => redact::url(u),
            SumsLocation::Local(p) => p.display().to_string(),
        }
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> PathBuf {
        PathBuf::from("/proj")
    }

    #[test]
    fn parses_urls_and_paths() {
        assert!(matches!(
            Source::parse("https://example.org/a.iso", &base()).unwrap(),
            Source::Http(_)
        ));
        match Source::parse("file:///srv/a%20b.iso", &base()).unwrap() {
            Source::Local(p) => assert_eq!(p, PathBuf::from("/srv/a b.iso")),
            s => panic!("{s:?}"),
        }
        match Source::parse("images/a.iso", &base()).unwrap() {
            Source::Local(p) => assert_eq!(p, PathBuf::from("/proj/images/a.iso")),
            s => panic!("{s:?}"),
        }
        for bad in ["", "ftp://x/y", "file://host/x", "http://", "s3://bucket/k"] {
            assert!(
                matches!(
                    Source::parse(bad, &base()),
                    Err(FetchError::InvalidSource { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn names_identity_and_targets() {
        let s = Source::parse(
            "https://u:pw@example.org:8443/d/x%20y.iso?v=1#frag",
            &base(),
        )
        .unwrap();
        assert_eq!(s.file_name().as_deref(), Some("x y.iso"));
        assert_eq!(s.identity(), "https://example.org:8443/d/x%20y.iso?v=1");
        assert!(!s.shown().contains("pw"));
        assert_eq!(
            s.target().unwrap(),
            Target {
                scheme: "https".into(),
                host: "example.org".into(),
                port: 8443
            }
        );
        let t = Source::parse("http://[::1]/a", &base())
            .unwrap()
            .target()
            .unwrap();
        assert_eq!(t.to_string(), "http://[::1]:80");
    }

    #[test]
    fn sums_candidates_include_the_relative_path() {
        let s = Source::parse("http://h/debian/12/netinst/a.iso", &base()).unwrap();
        let sums = SumsLocation::parse("http://h/debian/12/SHA256SUMS", &base()).unwrap();
        assert_eq!(s.sums_candidates(&sums), vec!["netinst/a.iso", "a.iso"]);
        let other = SumsLocation::parse("http://other/SHA256SUMS", &base()).unwrap();
        assert_eq!(s.sums_candidates(&other), vec!["a.iso"]);
        let l = Source::parse("/srv/img/sub/b.qcow2", &base()).unwrap();
        let ls = SumsLocation::parse("/srv/img/SHA256SUMS", &base()).unwrap();
        assert_eq!(l.sums_candidates(&ls), vec!["sub/b.qcow2", "b.qcow2"]);
    }
}
