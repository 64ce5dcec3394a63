//! Registry credentials and the pieces of the auth flows: secrets that never print,
//! `~/.docker/config.json` / `$REGISTRY_AUTH_FILE` lookup, and `WWW-Authenticate`
//! challenge parsing.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;

/// A secret value (password, token). `Debug` and `Display` print `<redacted>`; the value
/// is only read inside this crate, to build an `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort: overwrite the bytes before the allocation is freed.
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.fill(0);
        std::hint::black_box(&bytes);
    }
}

/// Where the client's credentials come from.
#[derive(Debug, Clone, Default)]
pub enum Credentials {
    /// No credentials (anonymous pulls, or bearer tokens issued anonymously).
    #[default]
    Anonymous,
    /// A user name and password (or a registry access token used as password).
    Basic { username: String, password: Secret },
    /// Look the registry up in auth files: this path, or with `None` the first of
    /// [`default_auth_files`] that exists. Nothing found means anonymous.
    AuthFile(Option<PathBuf>),
}

/// Auth files in the order podman/skopeo and docker consult them:
/// `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
/// `$DOCKER_CONFIG/config.json`, `~/.docker/config.json`.
pub fn default_auth_files() -> Vec<PathBuf> {
    auth_files_from(|k| std::env::var_os(k))
}

fn auth_files_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = env("REGISTRY_AUTH_FILE") {
        v.push(PathBuf::from(p));
    }
    if let Some(p) = env("XDG_RUNTIME_DIR") {
        v.push(Path::new(&p).join("containers/auth.json"));
    }
    if let Some(p) = env("DOCKER_CONFIG") {
        v.push(Path::new(&p).join("config.json"));
    }
    if let Some(h) = env("HOME") {
        v.push(Path::new(&h).join(".docker/config.json"));
    }
    v
}

/// An auth file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("auth file {path}: {reason}")]
pub struct AuthFileError {
    pub path: PathBuf,
    pub reason: String,
}

/// The key an auth file uses for `registry`, normalized: no scheme, no path; Docker
/// Hub's many names folded into `docker.io`.
fn normalize_key(k: &str) -> String {
    let k = k.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        h => h.to_ascii_lowercase(),
    }
}

/// The user name and password for `registry` in the auth file at `path`, if any.
/// Entries are `auths.<host>.auth` (base64 `user:pass`) or `username`/`password`.
/// Credential helpers (`credsStore`, `credHelpers`) are not run.
pub fn lookup_auth_file(
    path: &Path,
    registry: &str,
) -> Result<Option<(String, Secret)>, AuthFileError> {
    let err = |reason: String| AuthFileError {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = match std::fs::File::open(path) {
        Ok(f) => {
            use std::io::Read;
            let mut v = Vec::new();
            f.take(1 << 20)
                .read_to_end(&mut v)
                .map_err(|e| err(e.to_string()))?;
            v
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| err(format!("not JSON: {e}")))?;
    let want = normalize_key(registry);
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    for (k, entry) in auths {
        if normalize_key(k) != want {
            continue;
        }
        if let Some(a) = entry
            .get("auth")
            .and_then(|a| a.as_str())
            .filter(|a| !a.is_empty())
        {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|_| err(format!("auths.{k}.auth is not base64")))?;
            let text =
                String::from_utf8(raw).map_err(|_| err(format!("auths.{k}.auth is not UTF-8")))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| err(format!("auths.{k}.auth is not base64 of user:password")))?;
            return Ok(Some((u.to_string(), Secret::new(p))));
        }
        if let (Some(u), Some(p)) = (
            entry.get("username").and_then(|x| x.as_str()),
            entry.get("password").and_then(|x| x.as_str()),
        ) {
            return Ok(Some((u.to_string(), Secret::new(p))));
        }
    }
    if v.get("credsStore").is_some() || v.get("credHelpers").is_some() {
        tracing::debug!(path = %path.display(), registry, "auth file uses credential helpers, which kiln does not run");
    }
    Ok(None)
}

/// Resolves `creds` for `registry` to a user name and password, if any.
pub(crate) fn resolve(
    creds: &Credentials,
    registry: &str,
) -> Result<Option<(String, Secret)>, AuthFileError> {
    match creds {
        Credentials::Anonymous => Ok(None),
        Credentials::Basic { username, password } => Ok(Some((username.clone(), password.clone()))),
        Credentials::AuthFile(Some(p)) => lookup_auth_file(p, registry),
        Credentials::AuthFile(None) => {
            for p in default_auth_files() {
                if let Some(c) = lookup_auth_file(&p, registry)? {
                    return Ok(Some(c));
                }
            }
            Ok(None)
        }
    }
}

pub(crate) fn basic_header(user: &str, pass: &Secret) -> String {
    let raw = format!("{user}:{}", pass.expose());
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Basic realm="x"` or `Bearer realm="…",service="…",scope="…"` (quoted or
/// token values, any order).
pub(crate) fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(char::is_whitespace).unwrap_or((h, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = Vec::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let key = rest[ks..i].trim().to_ascii_lowercase();
        i += 1;
        let val = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut raw = Vec::new();
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                raw.push(b[i]);
                i += 1;
            }
            i += 1;
            String::from_utf8_lossy(&raw).into_owned()
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            rest[vs..i].trim().to_string()
        };
        params.push((key, val));
    }
    let get = |k: &str| {
        params
            .iter()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
        scope: get("scope"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        let c = Credentials::Basic {
            username: "u".into(),
            password: s,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="kiln-registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge("bearer service=x, realm=http://127.0.0.1:9/t"),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:9/t".into(),
                service: Some("x".into()),
                scope: None
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn auth_file_search_order() {
        let env = |k: &str| match k {
            "REGISTRY_AUTH_FILE" => Some("/run/auth.json".into()),
            "HOME" => Some("/root".into()),
            _ => None,
        };
        assert_eq!(
            auth_files_from(env),
            vec![
                PathBuf::from("/run/auth.json"),
                PathBuf::from("/root/.docker/config.json")
            ]
        );
        assert!(auth_files_from(|_| None).is_empty());
    }

    #[test]
    fn auth_file_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("kiln:pa:ss");
        std::fs::write(
            &p,
            format!(
                r#"{{"auths":{{"https://127.0.0.1:5002/v2/":{{"auth":"{auth}"}},"https://index.docker.io/v1/":{{"username":"hub","password":"pw"}}}}}}"#
            ),
        )
        .unwrap();
        let (u, pw) = lookup_auth_file(&p, "127.0.0.1:5002").unwrap().unwrap();
        assert_eq!((u.as_str(), pw.expose()), ("kiln", "pa:ss"));
        let (u, _) = lookup_auth_file(&p, "docker.io").unwrap().unwrap();
        assert_eq!(u, "hub");
        assert!(lookup_auth_file(&p, "other:1").unwrap().is_none());
        assert!(
            lookup_auth_file(&dir.path().join("missing.json"), "x")
                .unwrap()
                .is_none()
        );
        std::fs::write(&p, r#"{"auths":{"h":{"auth":"!!!"}}}"#).unwrap();
        assert!(lookup_auth_file(&p, "h").is_err());
    }
}
