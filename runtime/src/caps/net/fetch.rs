//! Downloads of build inputs (`iso_url`, `iso_urls`, `disk_image` by URL) through
//! kiln-fetch, as one checked and audited use of `net`.
//!
//! Before anything is contacted, every host the request names (each mirror, and a
//! `file:https://.../SHA256SUMS` checksum) is checked against the caller's `net` grant;
//! a redirect is allowed only to a granted host too (the crate's redirect guard asks
//! the broker), so a mirror cannot send kiln somewhere the build did not grant. Local
//! inputs (paths and `file://` URLs), a local sums file and `ca_file` are opened through
//! the caller's `read` grants first, like every other file. The fetch itself is one
//! audit line with its duration and outcome (cache hit, downloaded, verified in place,
//! or the error naming both digests on a mismatch).
//!
//! The cache is `$KILN_CACHE_DIR/downloads` (default `~/.cache/kiln/downloads`), shared
//! by every build and process: one download per URL and checksum, others wait on its
//! lock; nothing unverified is ever an entry. A returned [`Download`] holds a shared
//! lock on its entry, so `kiln cache prune` leaves it alone while a build uses it.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_fetch::{
    ChecksumSpec, FetchConfig, FetchError, FetchRequest, Fetched, Fetcher, Observer, Origin,
    RedirectGuard, Target,
};

use super::SPEC;
use crate::caps::broker::{Denied, Scope, ScopeError};
use crate::caps::fs::{self, FsError, Project, expand_home};
use crate::caps::grants::Use;

/// The download cache's directory under kiln's cache directory.
pub fn cache_dir() -> Option<PathBuf> {
    crate::cache_dir().map(|d| d.join("downloads"))
}

/// One input to fetch, as a builder's config names it.
#[derive(Debug, Clone, Default)]
pub struct FetchInput {
    /// The option it comes from (`iso_url`, `disk_image`), for messages.
    pub what: String,
    /// URLs or paths, tried in order (mirrors).
    pub urls: Vec<String>,
    /// As Packer spells it; `None` is allowed only for local files.
    pub checksum: Option<String>,
    /// A PEM file of extra trusted CAs, read through the caller's `read` grant.
    pub ca_file: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchCapError {
    #[error(transparent)]
    Denied(Denied),
    #[error("{what}: no URL or path given")]
    NoInput { what: String },
    #[error(
        "{what}: downloading {url} needs a checksum: set iso_checksum to \"sha256:<hex>\", \
         \"file:<URL or path of a SHA256SUMS file>\", or \"none\" to skip verification"
    )]
    ChecksumRequired { what: String, url: String },
    #[error("{what}: iso_checksum: {source}")]
    Checksum {
        what: String,
        source: kiln_fetch::ChecksumError,
    },
    #[error("{what}: {source}")]
    File { what: String, source: FsError },
    #[error("no directory for the download cache: set KILN_CACHE_DIR (or HOME, for ~/.cache/kiln)")]
    NoCacheDir,
    #[error(transparent)]
    Fetch(FetchError),
}

impl From<ScopeError<FetchError>> for FetchCapError {
    fn from(e: ScopeError<FetchError>) -> Self {
        match e {
            ScopeError::Denied(d) => FetchCapError::Denied(d),
            ScopeError::Failed(f) => FetchCapError::Fetch(f),
        }
    }
}

/// A fetched, verified input. Keep it while the file is in use: it holds a shared
/// lock on its cache entry.
#[derive(Debug)]
pub struct Download {
    fetched: Fetched,
    /// The option it came from.
    pub what: String,
}

impl Download {
    /// The file on the host: a cache entry (never to be written), or a local input.
    pub fn path(&self) -> &std::path::Path {
        &self.fetched.path
    }
    /// The URL (redacted) or path that was used.
    pub fn url(&self) -> &str {
        &self.fetched.url
    }
    pub fn size(&self) -> u64 {
        self.fetched.size
    }
    /// The verified digest (`sha256:…`); for `none`, the SHA-256 computed while
    /// downloading, so the user can be told what to pin.
    pub fn digest(&self) -> Option<String> {
        self.fetched.digest.as_ref().map(ToString::to_string)
    }
    pub fn verified(&self) -> bool {
        self.fetched.verified
    }
    pub fn origin(&self) -> Origin {
        self.fetched.origin
    }
}

/// The path a local input names: a plain path, or the path of a `file://` URL; `None`
/// for a network URL (and for a `file://` URL the crate will refuse with its reason).
fn local_path(input: &str) -> Option<String> {
    let s = input.trim();
    match s.split_once("://") {
        None => Some(s.to_string()),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("file") => {
            let rest = rest.strip_prefix("localhost").unwrap_or(rest);
            rest.starts_with('/')
                .then(|| crate::host::httpd::percent_decode(rest))
                .flatten()
        }
        Some(_) => None,
    }
}

/// Opens a local input through the `read` grant and returns its host path.
fn granted_local(
    scope: &Scope,
    project: &Project,
    what: &str,
    path: &str,
) -> Result<String, FetchCapError> {
    let full = expand_home(path);
    project
        .host_path_read(scope, &full)
        .map(|p| p.display().to_string())
        .map_err(|source| FetchCapError::File {
            what: what.to_string(),
            source,
        })
}

fn host_use(t: &Target) -> Use {
    Use::host(&SPEC, t.host.clone(), Some(t.port))
}

/// Redirects are followed only to hosts the scope may reach; a refusal is audited as
/// a denial of that host, an allowed hop as a `net` line.
fn redirect_guard(scope: &Scope) -> RedirectGuard {
    let scope = scope.clone();
    Arc::new(move |t: &Target| {
        let u = host_use(t);
        match scope.check(&u) {
            Ok(()) => {
                let object = u.object().unwrap_or_default();
                scope.event(SPEC.key, &format!("{object}: redirect"), "ok", 0.0);
                true
            }
            Err(_) => false,
        }
    })
}

/// Fetches `input` for `scope`: checked, audited, verified, through the shared cache.
pub async fn fetch(
    scope: &Scope,
    project: &Project,
    input: &FetchInput,
    observer: &dyn Observer,
) -> Result<Download, FetchCapError> {
    let what = input.what.clone();
    if input.urls.is_empty() {
        return Err(FetchCapError::NoInput { what });
    }
    let mut urls = Vec::with_capacity(input.urls.len());
    let mut first_remote = None;
    for u in &input.urls {
        match local_path(u) {
            Some(p) => urls.push(granted_local(scope, project, &what, &p)?),
            None => {
                first_remote.get_or_insert_with(|| kiln_fetch::redact_url(u));
                urls.push(u.clone());
            }
        }
    }
    let checksum = match (&input.checksum, &first_remote) {
        (None, Some(url)) => {
            return Err(FetchCapError::ChecksumRequired {
                what,
                url: url.clone(),
            });
        }
        (None, None) => ChecksumSpec::None,
        (Some(c), _) => match ChecksumSpec::parse(c) {
            Ok(ChecksumSpec::SumsFile(loc)) => match local_path(&loc) {
                Some(p) => ChecksumSpec::SumsFile(granted_local(scope, project, &what, &p)?),
                None => ChecksumSpec::SumsFile(loc),
            },
            Ok(spec) => spec,
            Err(source) => return Err(FetchCapError::Checksum { what, source }),
        },
    };
    let req = FetchRequest::mirrors(urls, checksum).base_dir(project.path());
    let targets = req.network_targets().map_err(FetchCapError::Fetch)?;
    for t in &targets {
        scope.check(&host_use(t)).map_err(FetchCapError::Denied)?;
    }
    let ca_file = match &input.ca_file {
        Some(ca) => Some(PathBuf::from(granted_local(scope, project, "ca_file", ca)?)),
        None => None,
    };
    let mut cfg = FetchConfig::new(cache_dir().ok_or(FetchCapError::NoCacheDir)?);
    cfg.ca_file = ca_file;
    cfg.redirect_guard = Some(redirect_guard(scope));
    let fetcher = Fetcher::new(cfg).map_err(FetchCapError::Fetch)?;

    // One audit line for the fetch, under the first host it may contact (each host was
    // checked above), or under `read` for a local file verified in place.
    let audited = match targets.first() {
        Some(t) => host_use(t),
        None => Use::path(&fs::READ, input.urls[0].clone()),
    };
    let shown: Vec<String> = input
        .urls
        .iter()
        .map(|u| kiln_fetch::redact_url(u))
        .collect();
    let detail = format!("fetch {what} {}", shown.join(" | "));
    let fetched = scope
        .run_with(&audited, &detail, fetcher.fetch(&req, observer), |f| {
            let digest = f
                .digest
                .as_ref()
                .map_or_else(|| "not verified".to_string(), ToString::to_string);
            match f.origin {
                Origin::Cache => format!("ok (cache hit: {}, {digest})", f.url),
                Origin::Downloaded => {
                    format!("ok (downloaded {} bytes from {}, {digest})", f.size, f.url)
                }
                Origin::Local => format!("ok (local file {}, {digest})", f.url),
            }
        })
        .await?;
    Ok(Download { fetched, what })
}

/// Every `net` grant entry (`host:port`) that fetching `urls` with `checksum` needs,
/// for a builder's `fn grants(cfg)`: each URL's host, and a sums file's.
pub fn net_grants(urls: &[String], checksum: Option<&str>) -> Result<Vec<String>, String> {
    let spec = match checksum {
        Some(c) => ChecksumSpec::parse(c).map_err(|e| format!("iso_checksum: {e}"))?,
        None => ChecksumSpec::None,
    };
    let req = FetchRequest::mirrors(urls.iter().cloned(), spec);
    let targets = req.network_targets().map_err(|e| e.to_string())?;
    Ok(targets
        .iter()
        .map(|t| {
            if t.host.contains(':') {
                format!("[{}]:{}", t.host, t.port)
            } else {
                format!("{}:{}", t.host, t.port)
            }
        })
        .collect())
}

/// The `allow` lines `scope` lacks to fetch `url` (one per ungranted host), for
/// `kiln validate`; an unusable URL is an error with the reason.
pub fn missing_grants(scope: &Scope, url: &str) -> Result<Vec<String>, String> {
    let req = FetchRequest::new(url, ChecksumSpec::None);
    let targets = req.network_targets().map_err(|e| e.to_string())?;
    Ok(targets
        .iter()
        .map(host_use)
        .filter(|u| !scope.grants().allows(u))
        .map(|u| u.allow_line())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_and_file_urls() {
        assert_eq!(local_path("images/a.iso").as_deref(), Some("images/a.iso"));
        assert_eq!(
            local_path("file:///var/tmp/a%20b.iso").as_deref(),
            Some("/var/tmp/a b.iso")
        );
        assert_eq!(
            local_path("file://localhost/x.iso").as_deref(),
            Some("/x.iso")
        );
        assert_eq!(local_path("https://example.com/x.iso"), None);
        // A host in a file URL is for the crate to refuse, with its reason.
        assert_eq!(local_path("file://server/x.iso"), None);
        assert_eq!(local_path("file:///bad%zz"), None);
    }

    #[test]
    fn net_grants_name_every_host_once_with_its_port() {
        let urls = vec![
            "https://releases.example.com/x.iso".to_string(),
            "http://127.0.0.1:8080/x.iso".to_string(),
            "images/local.iso".to_string(),
        ];
        let g = net_grants(&urls, Some("file:https://releases.example.com/SHA256SUMS")).unwrap();
        assert_eq!(g, vec!["releases.example.com:443", "127.0.0.1:8080"]);
        let g = net_grants(&urls[..1], Some("file:http://sums.example:81/S")).unwrap();
        assert_eq!(g, vec!["releases.example.com:443", "sums.example:81"]);
        assert!(net_grants(&["gopher://x/y".to_string()], None).is_err());
        assert!(net_grants(&urls, Some("sha256:xyz")).is_err());
        // And the grammar of `net` accepts what this returns.
        let mut grants = crate::caps::Grants::default();
        let list: rhai::Array = g.into_iter().map(rhai::Dynamic::from).collect();
        let mut allow = rhai::Map::new();
        allow.insert("net".into(), rhai::Dynamic::from_array(list));
        grants.apply_allow(&allow).unwrap();
        assert!(grants.allows(&Use::host(&SPEC, "sums.example", Some(81))));
        assert!(!grants.allows(&Use::host(&SPEC, "sums.example", Some(80))));
    }
}
