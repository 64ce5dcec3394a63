//! Image references: `[registry/]repository[:tag][@sha256:…]`, with Docker Hub's
//! defaults (`docker.io`, `library/`), and the source forms the oci builder accepts.

use std::fmt;
use std::path::PathBuf;

use crate::digest::Digest;

/// A reference that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image reference {reference:?} is not valid: {reason}")]
pub struct BadReference {
    pub reference: String,
    pub reason: &'static str,
}

/// A registry image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]` as written (`docker.io` for Docker Hub).
    pub registry: String,
    /// `library/debian`, `team/app`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+ separated by one '.', one or two '_', or any number of '-'.
    if c.is_empty() || !c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit()) {
        return false;
    }
    if !c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit()) {
        return false;
    }
    let b = c.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && matches!(b[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((a, p)) if !a.ends_with(']') || h.starts_with('[') => (a, Some(p)),
        _ => (h, None),
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return false;
    }
    if host.starts_with('[') && host.ends_with(']') {
        return host[1..host.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl Reference {
    /// Parses `[host[:port]/]name[:tag][@digest]`. A first component with a `.` or `:`,
    /// or `localhost`, is the registry; otherwise the registry is `docker.io`.
    pub fn parse(s: &str) -> Result<Reference, BadReference> {
        let bad = |reason| BadReference {
            reference: s.to_string(),
            reason,
        };
        if s.is_empty() || s.len() > 4096 {
            return Err(bad("empty or too long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| bad("the part after '@' is not sha256:<64 hex>"))?,
                ),
            ),
            None => (s, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, p))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), p)
            }
            _ => ("docker.io".to_string(), rest),
        };
        if !valid_host(&registry) {
            return Err(bad("the registry host is not host[:port]"));
        }
        let (name, tag) = match path.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_string())),
            _ => (path, None),
        };
        if let Some(t) = &tag
            && crate::layout::check_tag(t).is_err()
        {
            return Err(bad(
                "the tag must be 1..128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
            ));
        }
        if name.len() > 255 || !name.split('/').all(valid_component) {
            return Err(bad(
                "repository names are lowercase [a-z0-9] components joined by '/', '.', '_' or '-'",
            ));
        }
        let repository = if registry == "docker.io" && !name.contains('/') {
            format!("library/{name}")
        } else {
            name.to_string()
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What to put in `/v2/<name>/manifests/<reference>`: the digest if any, else the
    /// tag, else `latest`.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// `registry/repository` (no tag or digest).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository at `digest` (`repo@sha256:…`).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Where a base image comes from (the `image` option of the oci builder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `"scratch"`: no base.
    Scratch,
    /// `oci-layout:DIR:TAG` (TAG defaults to `latest`).
    Layout { dir: PathBuf, tag: String },
    /// A registry reference.
    Registry(Reference),
}

impl ImageSource {
    pub fn parse(s: &str) -> Result<ImageSource, BadReference> {
        if s == "scratch" {
            return Ok(ImageSource::Scratch);
        }
        if let Some(rest) = s.strip_prefix("oci-layout:") {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !d.is_empty() => (d, t),
                _ => (rest, "latest"),
            };
            if dir.is_empty() {
                return Err(BadReference {
                    reference: s.into(),
                    reason: "oci-layout: needs a directory (oci-layout:DIR:TAG)",
                });
            }
            if crate::layout::check_tag(tag).is_err() {
                return Err(BadReference {
                    reference: s.into(),
                    reason: "the layout tag must be 1..128 of [A-Za-z0-9_.-]",
                });
            }
            return Ok(ImageSource::Layout {
                dir: PathBuf::from(dir),
                tag: tag.into(),
            });
        }
        Ok(ImageSource::Registry(Reference::parse(s)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r = Reference::parse("debian").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference()),
            ("docker.io", "library/debian", "latest".into())
        );
        let r = Reference::parse("127.0.0.1:5001/team/app:1.2").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5001");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("1.2"));
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = Reference::parse(&format!("localhost/app:v1@{d}")).unwrap();
        assert_eq!(r.reference(), d);
        assert_eq!(r.to_string(), format!("localhost/app:v1@{d}"));
        for bad in [
            "",
            "UPPER/case",
            "a//b",
            "host:99999/x",
            "app:bad tag",
            "app@sha256:zz",
            "a/-b",
            "a__-b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_sources() {
        assert_eq!(ImageSource::parse("scratch").unwrap(), ImageSource::Scratch);
        assert_eq!(
            ImageSource::parse("oci-layout:/var/tmp/base:v1").unwrap(),
            ImageSource::Layout {
                dir: "/var/tmp/base".into(),
                tag: "v1".into()
            }
        );
        assert_eq!(
            ImageSource::parse("oci-layout:./base").unwrap(),
            ImageSource::Layout {
                dir: "./base".into(),
                tag: "latest".into()
            }
        );
        assert!(matches!(
            ImageSource::parse("127.0.0.1:5001/x:y").unwrap(),
            ImageSource::Registry(_)
        ));
    }
}
