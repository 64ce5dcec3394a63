//! Grants: what one step (or builder, or post-processor) holds, typed and parsed once
//! at declare time from an `allow` map. A [`Use`] is one use of a capability with the
//! object it names; [`Grants::allows`] is the only place a use is compared with a
//! grant, and it compares parsed values (a `net` rule's host and port), never text.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::rule::{HostRule, PathGrant};
use super::spec::{CapSpec, Grammar};
use super::{TABLE, spec_for};

/// What a use of a capability names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A switch (`machine`, `qemu`).
    None,
    /// A file or directory, as the script or guest named it.
    Path(String),
    /// A host and, where it matters, a port.
    Host { host: String, port: Option<u16> },
    /// A secret name, a region, ...
    Name(String),
}

/// One use of a capability: what the broker checks and the audit log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    pub cap: &'static CapSpec,
    pub target: Target,
}

impl Use {
    pub fn flag(cap: &'static CapSpec) -> Self {
        Use {
            cap,
            target: Target::None,
        }
    }
    pub fn path(cap: &'static CapSpec, path: impl Into<String>) -> Self {
        Use {
            cap,
            target: Target::Path(path.into()),
        }
    }
    pub fn host(cap: &'static CapSpec, host: impl Into<String>, port: Option<u16>) -> Self {
        Use {
            cap,
            target: Target::Host {
                host: host.into(),
                port,
            },
        }
    }
    pub fn name(cap: &'static CapSpec, name: impl Into<String>) -> Self {
        Use {
            cap,
            target: Target::Name(name.into()),
        }
    }

    /// The object as the audit log and denials show it.
    pub fn object(&self) -> Option<String> {
        match &self.target {
            Target::None => None,
            Target::Path(p) | Target::Name(p) => Some(p.clone()),
            Target::Host { host, port } => Some(match port {
                Some(p) if host.contains(':') => format!("[{host}]:{p}"),
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            }),
        }
    }

    /// The `allow` entry that would grant this use, quoted in denials.
    pub fn allow_line(&self) -> String {
        let key = self.cap.key;
        match (self.cap.grammar, self.object()) {
            (Grammar::Flag, _) | (_, None) => format!("allow: #{{ {key}: true }}"),
            (Grammar::Paths, Some(p)) => {
                // Grant the directory: a file's own path is rarely what the user wants.
                let dir = std::path::Path::new(&p)
                    .parent()
                    .map(|d| d.to_string_lossy().into_owned())
                    .filter(|d| !d.is_empty() && d != "/")
                    .unwrap_or(p);
                format!("allow: #{{ {key}: [{dir:?}] }}")
            }
            (_, Some(o)) => format!("allow: #{{ {key}: [{o:?}] }}"),
        }
    }
}

impl fmt::Display for Use {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.object() {
            None => f.write_str(self.cap.key),
            Some(o) => write!(f, "{}({o:?})", self.cap.key),
        }
    }
}

/// A parsed grant value, by grammar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Grant {
    Flag(bool),
    Paths(Vec<PathGrant>),
    Hosts(Vec<HostRule>),
    Names(Vec<String>),
}

impl Grant {
    fn is_empty(&self) -> bool {
        match self {
            Grant::Flag(b) => !b,
            Grant::Paths(v) => v.is_empty(),
            Grant::Hosts(v) => v.is_empty(),
            Grant::Names(v) => v.is_empty(),
        }
    }

    fn entries(&self) -> Vec<String> {
        match self {
            Grant::Flag(_) => vec![],
            Grant::Paths(v) => v.iter().map(|p| p.written.clone()).collect(),
            Grant::Hosts(v) => v.iter().map(|h| h.to_string()).collect(),
            Grant::Names(v) => v.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GrantError {
    #[error("unknown key `{key}` in allow{}; allowed keys: {}", suggest(key), TABLE.iter().map(|c| c.spec().key).collect::<Vec<_>>().join(", "))]
    UnknownKey { key: String },
    #[error("allow.{key} must be {expected}")]
    Type { key: String, expected: &'static str },
    #[error("allow.{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn suggest(key: &str) -> String {
    let keys: Vec<&str> = TABLE.iter().map(|c| c.spec().key).collect();
    match crate::suggest::nearest(key, keys.iter().copied()) {
        Some(k) => format!(" (did you mean `{k}`?)"),
        None => String::new(),
    }
}

/// The capabilities one step holds. Empty by default: deny everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    values: BTreeMap<&'static str, Grant>,
}

impl Serialize for Grants {
    /// `{ "machine": true, "read": ["."], ... }`: the `allow` map that would recreate it.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for (k, v) in &self.values {
            if !v.is_empty() {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

/// Where `~` points, for path grants.
fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

impl Grants {
    /// Grants from an allow-map-like list of (key, entries); used for kiln's own
    /// defaults, so a bad entry here is a bug and panics in tests, not in builds.
    fn of(entries: &[(&str, &[&str])]) -> Grants {
        let mut g = Grants::default();
        for (key, items) in entries {
            let Some(spec) = spec_for(key) else {
                debug_assert!(false, "no capability {key}");
                continue;
            };
            let value = if spec.grammar == Grammar::Flag {
                Grant::Flag(true)
            } else {
                let list: Vec<String> = items.iter().map(|s| s.to_string()).collect();
                match parse_list(spec, &list) {
                    Ok(v) => v,
                    Err(e) => {
                        debug_assert!(false, "bad default grant: {e}");
                        continue;
                    }
                }
            };
            g.values.insert(spec.key, value);
        }
        g
    }

    /// What a provisioner step gets by default: the machine, and reading the project
    /// (for `file` sources and shell scripts).
    pub fn provisioner_default() -> Self {
        Grants::of(&[("machine", &[]), ("read", &["."])])
    }

    /// What a WASM step gets by default: the machine, and reporting metadata for the
    /// build's registry record; nothing on the host.
    pub fn wasm_default() -> Self {
        Grants::of(&[("machine", &[]), ("metadata", &[])])
    }

    /// What every builder gets before its own `grants(cfg)` and the user's `allow`:
    /// reading the project and writing its output directory.
    pub fn builder_base(output_dir: Option<&str>) -> Self {
        let mut g = Grants::of(&[("read", &["."])]);
        if let Some(p) = output_dir.and_then(|out| PathGrant::parse(out, home().as_deref()).ok()) {
            g.values.insert("write", Grant::Paths(vec![p]));
        }
        g
    }

    /// What a post-processor gets by default: read the project, write `dirs`.
    pub fn for_post_processor(dirs: &[String]) -> Self {
        let mut g = Grants::of(&[("read", &["."])]);
        let paths: Vec<PathGrant> = dirs
            .iter()
            .filter_map(|d| PathGrant::parse(d, home().as_deref()).ok())
            .collect();
        g.values.insert("write", Grant::Paths(paths));
        g
    }

    /// Reading one more directory (the loader of a WASM module, say).
    pub fn read_only(dir: &str) -> Self {
        let mut g = Grants::default();
        if let Ok(p) = PathGrant::parse(dir, home().as_deref()) {
            g.values.insert("read", Grant::Paths(vec![p]));
        }
        g
    }

    /// Merges an `allow` map over these grants: keys given replace the defaults.
    pub fn apply_allow(&mut self, allow: &rhai::Map) -> Result<(), GrantError> {
        for (key, value) in allow {
            let key = key.as_str();
            let spec = spec_for(key).ok_or_else(|| GrantError::UnknownKey { key: key.into() })?;
            let parsed = parse_value(spec, value)?;
            self.values.insert(spec.key, parsed);
        }
        Ok(())
    }

    /// `other`'s grants over these: each capability `other` holds replaces this one's
    /// (a post-processor's declared grants over its defaults).
    pub fn extend(&mut self, other: &Grants) {
        for (k, v) in &other.values {
            self.values.insert(k, v.clone());
        }
    }

    /// True if `u` is covered by these grants. Paths are matched by component here only
    /// to pick a root; the file itself is then opened through cap-std under that root,
    /// which is what actually confines it (see [`super::Project`]).
    pub fn allows(&self, u: &Use) -> bool {
        match (self.values.get(u.cap.key), &u.target) {
            (None, _) => false,
            (Some(Grant::Flag(b)), _) => *b,
            (Some(Grant::Paths(_)), Target::Path(p)) => self.root_for(u.cap, p).is_some(),
            (Some(Grant::Hosts(rules)), Target::Host { host, port }) => {
                rules.iter().any(|r| r.matches(host, *port))
            }
            (Some(Grant::Names(names)), Target::Name(n)) => names.iter().any(|x| {
                x == n || (x == "*" && matches!(u.cap.grammar, Grammar::Names { wildcard: true }))
            }),
            _ => false,
        }
    }

    /// Whether the switch `cap` is on.
    pub fn flag(&self, cap: &CapSpec) -> bool {
        matches!(self.values.get(cap.key), Some(Grant::Flag(true)))
    }

    /// The path grants of `cap` (`read`, `write`).
    pub fn paths(&self, cap: &CapSpec) -> &[PathGrant] {
        match self.values.get(cap.key) {
            Some(Grant::Paths(p)) => p,
            _ => &[],
        }
    }

    /// The host rules of `cap` (`ssh`, `net`, `oci`).
    pub fn hosts(&self, cap: &CapSpec) -> &[HostRule] {
        match self.values.get(cap.key) {
            Some(Grant::Hosts(h)) => h,
            _ => &[],
        }
    }

    /// The names granted for `cap` (`secrets`, `ec2`).
    pub fn names(&self, cap: &CapSpec) -> &[String] {
        match self.values.get(cap.key) {
            Some(Grant::Names(n)) => n,
            _ => &[],
        }
    }

    /// Whether any entry of `cap` is granted.
    pub fn holds(&self, cap: &CapSpec) -> bool {
        self.values.get(cap.key).is_some_and(|g| !g.is_empty())
    }

    /// The longest granted root of `cap` that contains `path`.
    pub fn root_for(&self, cap: &CapSpec, path: &str) -> Option<&PathGrant> {
        self.paths(cap)
            .iter()
            .filter(|root| root.contains(path))
            .max_by_key(|root| root.normalized().as_os_str().len())
    }

    /// Human summary for `kiln inspect`, in table order.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for c in TABLE {
            let spec = c.spec();
            match self.values.get(spec.key) {
                Some(Grant::Flag(true)) => parts.push(spec.key.to_string()),
                Some(g) => {
                    for e in g.entries() {
                        parts.push(format!("{}({e})", spec.key));
                    }
                }
                None => {}
            }
        }
        if parts.is_empty() {
            "(none)".into()
        } else {
            parts.join(", ")
        }
    }
}

fn parse_value(spec: &'static CapSpec, v: &rhai::Dynamic) -> Result<Grant, GrantError> {
    let key = spec.key;
    let type_err = || GrantError::Type {
        key: key.into(),
        expected: spec.grammar.expected(),
    };
    if spec.grammar == Grammar::Flag {
        return v.as_bool().map(Grant::Flag).map_err(|_| type_err());
    }
    let list: Vec<String> = if v.is_string() {
        vec![v.clone().into_string().map_err(|_| type_err())?]
    } else {
        v.clone()
            .into_array()
            .map_err(|_| type_err())?
            .into_iter()
            .map(|item| item.into_string().map_err(|_| type_err()))
            .collect::<Result<_, _>>()?
    };
    parse_list(spec, &list)
}

fn parse_list(spec: &'static CapSpec, list: &[String]) -> Result<Grant, GrantError> {
    let invalid = |reason: String| GrantError::Invalid {
        key: spec.key.into(),
        reason,
    };
    Ok(match spec.grammar {
        Grammar::Flag => Grant::Flag(true),
        Grammar::Paths => Grant::Paths(
            list.iter()
                .map(|p| PathGrant::parse(p, home().as_deref()).map_err(invalid))
                .collect::<Result<_, _>>()?,
        ),
        Grammar::HostPatterns => Grant::Hosts(
            list.iter()
                .map(|h| HostRule::parse(h, true, false).map_err(invalid))
                .collect::<Result<_, _>>()?,
        ),
        Grammar::HostPorts => Grant::Hosts(
            list.iter()
                .map(|h| HostRule::parse(h, false, true).map_err(invalid))
                .collect::<Result<_, _>>()?,
        ),
        Grammar::Names { wildcard } => {
            for n in list {
                let ok = (!n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
                    || (wildcard && n == "*");
                if !ok {
                    return Err(invalid(format!("{n:?} is not a valid name")));
                }
            }
            Grant::Names(list.to_vec())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{fs, machine, net, secrets};

    fn map(script: &str) -> rhai::Map {
        rhai::Engine::new_raw().eval::<rhai::Map>(script).unwrap()
    }

    #[test]
    fn default_deny() {
        let g = Grants::default();
        assert!(!g.allows(&Use::flag(&machine::SPEC)));
        assert!(!g.allows(&Use::path(&fs::READ, "x")));
        assert!(!g.allows(&Use::name(&secrets::SPEC, "A")));
    }

    #[test]
    fn allow_map_replaces_defaults() {
        let mut g = Grants::provisioner_default();
        g.apply_allow(&map(
            r#"#{ read: ["files/consul"], secrets: ["PW"], machine: false }"#,
        ))
        .unwrap();
        assert!(!g.allows(&Use::flag(&machine::SPEC)));
        assert!(g.allows(&Use::path(&fs::READ, "files/consul/a.json")));
        assert!(!g.allows(&Use::path(&fs::READ, "files/other")));
        assert!(!g.allows(&Use::path(&fs::READ, "files/consulx")));
        assert!(g.allows(&Use::name(&secrets::SPEC, "PW")));
        assert!(!g.allows(&Use::name(&secrets::SPEC, "OTHER")));
    }

    #[test]
    fn unknown_and_escaping_grants_are_refused() {
        let mut g = Grants::default();
        let e = g.apply_allow(&map(r#"#{ reed: ["x"] }"#)).unwrap_err();
        assert!(e.to_string().contains("unknown key `reed`"), "{e}");
        assert!(e.to_string().contains("did you mean `read`"), "{e}");
        assert!(g.apply_allow(&map(r#"#{ read: ["../etc"] }"#)).is_err());
        assert!(
            g.apply_allow(&map(r#"#{ read: ["/var/../etc"] }"#))
                .is_err()
        );
        assert!(g.apply_allow(&map(r#"#{ write: ["/"] }"#)).is_err());
        assert!(
            g.apply_allow(&map(r#"#{ net: ["*.example.com"] }"#))
                .is_err()
        );
        assert!(g.apply_allow(&map(r#"#{ net: ["host:port"] }"#)).is_err());
        assert!(g.apply_allow(&map(r#"#{ machine: "yes" }"#)).is_err());
        // The old name of `net` is not silently accepted.
        let e = g
            .apply_allow(&map(r#"#{ http: ["a.example"] }"#))
            .unwrap_err();
        assert!(e.to_string().contains("unknown key `http`"), "{e}");
        // An absolute directory is a deliberate grant.
        g.apply_allow(&map(r#"#{ read: ["/var/tmp/images"] }"#))
            .unwrap();
        assert!(g.allows(&Use::path(&fs::READ, "/var/tmp/images/base.qcow2")));
        assert!(!g.allows(&Use::path(&fs::READ, "/var/tmp/other")));
    }

    #[test]
    fn net_grant_with_a_port_allows_that_host_and_port() {
        let mut g = Grants::default();
        g.apply_allow(&map(r#"#{ net: ["127.0.0.1:8080", "db.internal"] }"#))
            .unwrap();
        assert!(g.allows(&Use::host(&net::SPEC, "127.0.0.1", Some(8080))));
        assert!(!g.allows(&Use::host(&net::SPEC, "127.0.0.1", Some(8081))));
        assert!(g.allows(&Use::host(&net::SPEC, "db.internal", Some(5432))));
        assert!(!g.allows(&Use::host(&net::SPEC, "10.0.0.1", Some(8080))));
    }

    #[test]
    fn allow_line_is_copyable() {
        assert_eq!(
            Use::path(&fs::READ, "files/x").allow_line(),
            r#"allow: #{ read: ["files"] }"#
        );
        assert_eq!(
            Use::flag(&machine::SPEC).allow_line(),
            "allow: #{ machine: true }"
        );
        assert_eq!(
            Use::host(&net::SPEC, "api.example.com", Some(443)).allow_line(),
            r#"allow: #{ net: ["api.example.com:443"] }"#
        );
    }

    #[test]
    fn serializes_as_the_allow_map() {
        let g = Grants::provisioner_default();
        assert_eq!(
            serde_json::to_value(&g).unwrap(),
            serde_json::json!({ "machine": true, "read": ["."] })
        );
        assert_eq!(g.summary(), "machine, read(.)");
    }
}
