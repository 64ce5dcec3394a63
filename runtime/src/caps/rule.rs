//! The grammar of grant entries, parsed once when the script declares them and used
//! as parsed by the enforcer. There is no second parser: `kiln validate` refuses
//! exactly what the broker would not understand.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

/// A host in a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`
    Any,
    /// `*.example.com`: any subdomain of `example.com` (not `example.com` itself).
    Subdomains(String),
    /// A host name (lower-cased) or an IP literal.
    Exact(String),
}

impl HostPattern {
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match self {
            HostPattern::Any => true,
            HostPattern::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            HostPattern::Exact(h) => *h == host,
        }
    }

    /// The exact host, when the pattern names one (what a resolver may look up).
    pub fn exact(&self) -> Option<&str> {
        match self {
            HostPattern::Exact(h) => Some(h),
            _ => None,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Subdomains(s) => write!(f, "*.{s}"),
            HostPattern::Exact(h) if h.contains(':') => write!(f, "[{h}]"),
            HostPattern::Exact(h) => f.write_str(h),
        }
    }
}

/// One `ssh`/`net`/`oci` grant entry: a host and, where the grammar has them, a port
/// (`None` = any port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    pub host: HostPattern,
    pub port: Option<u16>,
}

impl HostRule {
    /// Parses `host`, `host:port`, `host:*`, `[v6]:port`, `*.example.com`, `*`.
    /// `allow_wildcards` is false for grammars whose enforcer needs exact names (a
    /// socket check resolves each granted name to addresses).
    pub fn parse(text: &str, allow_wildcards: bool, allow_port: bool) -> Result<HostRule, String> {
        let s = text.trim();
        if s.is_empty() {
            return Err("an empty host".into());
        }
        if s.contains("://") || s.contains('/') {
            return Err(format!(
                "{s:?} must be a host or host:port, without a scheme or a path"
            ));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, tail) = rest
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unclosed `[`"))?;
            let port = match tail {
                "" => None,
                t => Some(
                    t.strip_prefix(':')
                        .ok_or_else(|| format!("{s:?}: expected `:port` after `]`"))?,
                ),
            };
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{s:?}: `{h}` is not an IPv6 address"));
            }
            (h.to_string(), port)
        } else if s.parse::<std::net::Ipv6Addr>().is_ok() {
            (s.to_string(), None)
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (s.to_string(), None),
            }
        };
        let port = match port {
            None | Some("*") => None,
            Some(_) if !allow_port => {
                return Err(format!(
                    "{s:?}: this grant names hosts only, without a port"
                ));
            }
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{s:?}: `{p}` is not a port (1-65535 or *)"))?,
            ),
        };
        let host = host.to_ascii_lowercase();
        let pattern = if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            valid_name(suffix).map_err(|e| format!("{s:?}: {e}"))?;
            HostPattern::Subdomains(suffix.to_string())
        } else if host.contains('*') {
            return Err(format!(
                "{s:?}: `*` is allowed only as the whole host or as a leading `*.`"
            ));
        } else {
            if host.parse::<std::net::IpAddr>().is_err() {
                valid_name(&host).map_err(|e| format!("{s:?}: {e}"))?;
            }
            HostPattern::Exact(host)
        };
        if !allow_wildcards && pattern.exact().is_none() {
            return Err(format!(
                "{s:?}: wildcard hosts are not supported in this grant; name each host"
            ));
        }
        Ok(HostRule {
            host: pattern,
            port,
        })
    }

    pub fn matches(&self, host: &str, port: Option<u16>) -> bool {
        self.host.matches(host)
            && match (self.port, port) {
                (None, _) => true,
                (Some(want), Some(got)) => want == got,
                // A use that names no port (a name lookup) is covered by a rule for
                // the host on any port.
                (Some(_), None) => true,
            }
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

impl Serialize for HostRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

fn valid_name(host: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("`{host}` is not a host name"))
    }
}

/// A `read`/`write` grant entry: a directory as the script wrote it, and the path kiln
/// opens (the same, or with `~` expanded to the home directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGrant {
    pub written: String,
    pub path: String,
}

impl PathGrant {
    /// Project-relative, absolute, or `~/...`. `..` is refused so a grant always means
    /// the directory it spells, and so is the whole file system.
    pub fn parse(text: &str, home: Option<&Path>) -> Result<PathGrant, String> {
        if text.is_empty() {
            return Err("an empty path".into());
        }
        if text.contains('\0') {
            return Err(format!("{text:?} contains a NUL byte"));
        }
        let path = if text == "~" || text.starts_with("~/") {
            let home = home.ok_or_else(|| {
                format!("{text:?}: `~` needs HOME to be set in kiln's environment")
            })?;
            let rest = text.trim_start_matches('~').trim_start_matches('/');
            let p: PathBuf = if rest.is_empty() {
                home.to_path_buf()
            } else {
                home.join(rest)
            };
            p.to_string_lossy().into_owned()
        } else if text.starts_with('~') {
            return Err(format!(
                "{text:?}: only `~/` (your home) is expanded; write the full path for another user's"
            ));
        } else {
            text.to_string()
        };
        let p = Path::new(&path);
        if p.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(format!("{text:?} must not contain .."));
        }
        if p.components().all(|c| matches!(c, Component::RootDir)) && p.is_absolute() {
            return Err(
                "granting the whole filesystem (\"/\") is refused; name the directory".into(),
            );
        }
        Ok(PathGrant {
            written: text.to_string(),
            path,
        })
    }

    /// Drops a leading `./` and trailing `/` so `./files/` and `files` name one root.
    pub fn normalized(&self) -> &Path {
        let r = self.path.strip_prefix("./").unwrap_or(&self.path);
        let r = r.trim_end_matches('/');
        if r.is_empty() {
            Path::new(".")
        } else {
            Path::new(r)
        }
    }

    pub fn is_project(&self) -> bool {
        self.normalized() == Path::new(".")
    }

    /// Whether `path` (as a use names it) falls under this root, by components.
    pub fn contains(&self, path: &str) -> bool {
        if self.is_project() {
            return !Path::new(path).is_absolute();
        }
        let path = path.strip_prefix("./").unwrap_or(path);
        Path::new(path).starts_with(self.normalized())
    }
}

impl Serialize for PathGrant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_rules_parse_once_with_the_grammar_the_enforcer_uses() {
        let r = HostRule::parse("127.0.0.1:8080", false, true).unwrap();
        assert_eq!(r.host, HostPattern::Exact("127.0.0.1".into()));
        assert_eq!(r.port, Some(8080));
        assert!(r.matches("127.0.0.1", Some(8080)));
        assert!(!r.matches("127.0.0.1", Some(8081)));
        let r = HostRule::parse("Example.COM", false, true).unwrap();
        assert!(r.matches("example.com", Some(443)));
        let r = HostRule::parse("[::1]:443", false, true).unwrap();
        assert!(r.matches("::1", Some(443)));
        assert_eq!(r.to_string(), "[::1]:443");
        assert_eq!(HostRule::parse("db:*", false, true).unwrap().port, None);
        assert!(HostRule::parse("*.example.com", false, true).is_err());
        assert!(HostRule::parse("example.com:http", false, true).is_err());
        assert!(HostRule::parse("example.com:0", false, true).is_err());
        assert!(HostRule::parse("example.com:70000", false, true).is_err());
        assert!(HostRule::parse("https://example.com", false, true).is_err());
        assert!(HostRule::parse("ex*ample.com", true, true).is_err());
        assert!(HostRule::parse("a b", true, true).is_err());
        assert!(HostRule::parse("host:22", true, false).is_err());
    }

    #[test]
    fn host_patterns() {
        let any = HostRule::parse("*", true, false).unwrap();
        assert!(any.matches("a.b", None));
        let sub = HostRule::parse("*.example.com", true, false).unwrap();
        assert!(sub.matches("api.example.com", None));
        assert!(sub.matches("API.Example.com.", None));
        assert!(!sub.matches("example.com", None));
        assert!(!sub.matches("evil-example.com", None));
    }

    #[test]
    fn path_grants() {
        let home = Path::new("/home/me");
        let g = PathGrant::parse("~/.ssh", Some(home)).unwrap();
        assert_eq!(g.path, "/home/me/.ssh");
        assert_eq!(g.written, "~/.ssh");
        assert!(g.contains("/home/me/.ssh/id_ed25519"));
        assert!(!g.contains("/home/me/.sshx/id"));
        assert!(PathGrant::parse("~other/x", Some(home)).is_err());
        assert!(PathGrant::parse("../etc", None).is_err());
        assert!(PathGrant::parse("/var/../etc", None).is_err());
        assert!(PathGrant::parse("/", None).is_err());
        assert!(PathGrant::parse("//", None).is_err());
        let p = PathGrant::parse("./files/", None).unwrap();
        assert!(p.contains("files/a"));
        assert!(p.contains("./files/a"));
        assert!(!p.contains("filesx/a"));
        let dot = PathGrant::parse(".", None).unwrap();
        assert!(dot.contains("anything/here"));
        assert!(!dot.contains("/etc/passwd"));
    }
}
