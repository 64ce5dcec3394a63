//! Grants: the set of capabilities one step (or builder, or post-processor) holds.

use std::fmt;

use serde::Serialize;

/// One use of a capability, with the object it is used on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// exec / upload / download / facts on the machine being built.
    Machine,
    /// Read files under a project-relative directory.
    FsRead(String),
    /// Create files under a project-relative directory.
    FsWrite(String),
    /// Open an SSH session to a host.
    SshConnect(String),
    /// Start and stop VMs, run qemu-img.
    VmQemu,
    /// Signed EC2 API calls in a region.
    CloudEc2(String),
    /// Pull from / push to an OCI registry.
    OciRegistry(String),
    /// Outbound HTTP(S) to a host.
    NetHttp(String),
    /// Read one named secret.
    Secret(String),
    /// Run a program on the host.
    ExecLocal(String),
}

impl Capability {
    /// The capability's name as written in DESIGN.md and the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            Capability::Machine => "machine",
            Capability::FsRead(_) => "fs.read",
            Capability::FsWrite(_) => "fs.write",
            Capability::SshConnect(_) => "ssh.connect",
            Capability::VmQemu => "vm.qemu",
            Capability::CloudEc2(_) => "cloud.ec2",
            Capability::OciRegistry(_) => "oci.registry",
            Capability::NetHttp(_) => "net.http",
            Capability::Secret(_) => "secret",
            Capability::ExecLocal(_) => "exec.local",
        }
    }

    /// The parameter of a parameterised capability.
    pub fn object(&self) -> Option<&str> {
        match self {
            Capability::Machine | Capability::VmQemu => None,
            Capability::FsRead(s)
            | Capability::FsWrite(s)
            | Capability::SshConnect(s)
            | Capability::CloudEc2(s)
            | Capability::OciRegistry(s)
            | Capability::NetHttp(s)
            | Capability::Secret(s)
            | Capability::ExecLocal(s) => Some(s),
        }
    }

    /// The `allow` line that would grant this capability, quoted in denials.
    pub fn allow_line(&self) -> String {
        let key = grant_key(self);
        match self.object() {
            None => format!("allow: #{{ {key}: true }}"),
            Some(obj) => format!("allow: #{{ {key}: [{obj:?}] }}"),
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.object() {
            None => f.write_str(self.name()),
            Some(o) => write!(f, "{}({o:?})", self.name()),
        }
    }
}

/// The key in an `allow` map for a capability.
fn grant_key(cap: &Capability) -> &'static str {
    match cap {
        Capability::Machine => "machine",
        Capability::FsRead(_) => "read",
        Capability::FsWrite(_) => "write",
        Capability::SshConnect(_) => "ssh",
        Capability::VmQemu => "qemu",
        Capability::CloudEc2(_) => "ec2",
        Capability::OciRegistry(_) => "oci",
        Capability::NetHttp(_) => "http",
        Capability::Secret(_) => "secrets",
        Capability::ExecLocal(_) => "exec",
    }
}

/// Keys accepted in an `allow` map.
pub const ALLOW_KEYS: &[&str] = &[
    "machine", "read", "write", "ssh", "qemu", "ec2", "oci", "http", "secrets", "exec",
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GrantError {
    #[error("unknown key `{key}` in allow; allowed keys: {}", ALLOW_KEYS.join(", "))]
    UnknownKey { key: String },
    #[error("allow.{key} must be {expected}")]
    Type { key: String, expected: &'static str },
    #[error("allow.{key}: {reason}")]
    Invalid { key: String, reason: String },
}

/// The capabilities one step holds. Empty by default: deny everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Grants {
    pub machine: bool,
    pub read: Vec<String>,
    pub write: Vec<String>,
    pub ssh: Vec<String>,
    pub qemu: bool,
    pub ec2: Vec<String>,
    pub oci: Vec<String>,
    pub http: Vec<String>,
    pub secrets: Vec<String>,
    pub exec: Vec<String>,
}

impl Grants {
    /// What a provisioner step gets by default: the machine, and reading the project
    /// (for `file` sources and shell scripts).
    pub fn provisioner_default() -> Self {
        Grants {
            machine: true,
            read: vec![".".into()],
            ..Default::default()
        }
    }

    /// What a WASM step gets by default: the machine, nothing on the host.
    pub fn wasm_default() -> Self {
        Grants {
            machine: true,
            ..Default::default()
        }
    }

    /// What a builder gets by default: reading the project, the machine it makes, SSH
    /// to it, writing its output directory and, for the qemu builder, VMs.
    pub fn for_builder(builder: &str, output_dir: Option<&str>) -> Self {
        let mut g = Grants {
            machine: true,
            read: vec![".".into()],
            ssh: vec!["*".into()],
            ..Default::default()
        };
        if let Some(out) = output_dir {
            g.write.push(out.to_string());
        }
        if builder == "qemu" {
            g.qemu = true;
        }
        g
    }

    /// What a post-processor gets by default: read the project, write `dirs`.
    pub fn for_post_processor(dirs: &[String]) -> Self {
        Grants {
            read: vec![".".into()],
            write: dirs.to_vec(),
            ..Default::default()
        }
    }

    /// Merges an `allow` map over these grants: keys given replace the defaults.
    pub fn apply_allow(&mut self, allow: &rhai::Map) -> Result<(), GrantError> {
        for (key, value) in allow {
            let key = key.as_str();
            match key {
                "machine" => self.machine = as_bool(key, value)?,
                "qemu" => self.qemu = as_bool(key, value)?,
                "read" => self.read = as_paths(key, value)?,
                "write" => self.write = as_paths(key, value)?,
                "ssh" => self.ssh = as_list(key, value)?,
                "ec2" => self.ec2 = as_list(key, value)?,
                "oci" => self.oci = as_list(key, value)?,
                "http" => self.http = as_list(key, value)?,
                "secrets" => self.secrets = as_list(key, value)?,
                "exec" => self.exec = as_list(key, value)?,
                _ => return Err(GrantError::UnknownKey { key: key.into() }),
            }
        }
        Ok(())
    }

    /// True if `cap` is covered by these grants. Paths are matched by component here
    /// only to pick a root; the file itself is then opened through cap-std under that
    /// root, which is what actually confines it (see [`super::Project`]).
    pub fn allows(&self, cap: &Capability) -> bool {
        match cap {
            Capability::Machine => self.machine,
            Capability::VmQemu => self.qemu,
            Capability::FsRead(p) => self.read_root_for(p).is_some(),
            Capability::FsWrite(p) => self.write_root_for(p).is_some(),
            Capability::SshConnect(h) => self.ssh.iter().any(|pat| host_matches(pat, h)),
            Capability::CloudEc2(r) => self.ec2.iter().any(|pat| pat == "*" || pat == r),
            Capability::OciRegistry(h) => self.oci.iter().any(|pat| host_matches(pat, h)),
            Capability::NetHttp(h) => self.http.iter().any(|pat| host_matches(pat, h)),
            Capability::Secret(n) => self.secrets.iter().any(|s| s == n),
            Capability::ExecLocal(p) => self.exec.iter().any(|s| s == p),
        }
    }

    /// The granted read root under which `path` falls, if any.
    pub fn read_root_for(&self, path: &str) -> Option<&str> {
        root_for(&self.read, path)
    }

    /// The granted write root under which `path` falls, if any.
    pub fn write_root_for(&self, path: &str) -> Option<&str> {
        root_for(&self.write, path)
    }

    /// Human summary for `kiln inspect`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.machine {
            parts.push("machine".to_string());
        }
        if self.qemu {
            parts.push("vm.qemu".to_string());
        }
        let lists: [(&str, &Vec<String>); 8] = [
            ("fs.read", &self.read),
            ("fs.write", &self.write),
            ("ssh.connect", &self.ssh),
            ("cloud.ec2", &self.ec2),
            ("oci.registry", &self.oci),
            ("net.http", &self.http),
            ("secret", &self.secrets),
            ("exec.local", &self.exec),
        ];
        for (name, items) in lists {
            for i in items {
                parts.push(format!("{name}({i})"));
            }
        }
        if parts.is_empty() {
            "(none)".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Picks the longest granted root that contains `path`, comparing path components.
fn root_for<'a>(roots: &'a [String], path: &str) -> Option<&'a str> {
    let path = std::path::Path::new(path);
    roots
        .iter()
        .filter(|root| root.as_str() == "." || path.starts_with(normalize(root)))
        .max_by_key(|root| root.len())
        .map(String::as_str)
}

/// Drops a leading `./` and trailing `/` so `./files/` and `files` name the same root.
fn normalize(root: &str) -> &std::path::Path {
    let r = root.strip_prefix("./").unwrap_or(root);
    std::path::Path::new(r.trim_end_matches('/'))
}

/// `*` matches anything, `*.example.com` any subdomain, anything else is exact
/// (case-insensitive, as host names are).
fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix("*.") {
        let host = host.to_ascii_lowercase();
        return host.ends_with(&format!(".{}", suffix.to_ascii_lowercase()));
    }
    pattern.eq_ignore_ascii_case(host)
}

fn as_bool(key: &str, v: &rhai::Dynamic) -> Result<bool, GrantError> {
    v.as_bool().map_err(|_| GrantError::Type {
        key: key.into(),
        expected: "true or false",
    })
}

fn as_list(key: &str, v: &rhai::Dynamic) -> Result<Vec<String>, GrantError> {
    let err = || GrantError::Type {
        key: key.into(),
        expected: "an array of strings",
    };
    if v.is_string() {
        return Ok(vec![v.clone().into_string().map_err(|_| err())?]);
    }
    let arr = v.clone().into_array().map_err(|_| err())?;
    arr.into_iter()
        .map(|item| item.into_string().map_err(|_| err()))
        .collect()
}

/// Granted paths are project-relative, or absolute when the script names a host
/// directory on purpose (a base image under /var/lib/images). `..` is refused so a
/// grant always means the directory it spells.
fn as_paths(key: &str, v: &rhai::Dynamic) -> Result<Vec<String>, GrantError> {
    let paths = as_list(key, v)?;
    for p in &paths {
        let path = std::path::Path::new(p);
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(GrantError::Invalid {
                key: key.into(),
                reason: format!("{p:?} must not contain .."),
            });
        }
        if path == std::path::Path::new("/") {
            return Err(GrantError::Invalid {
                key: key.into(),
                reason: "granting the whole filesystem (\"/\") is refused; name the directory"
                    .into(),
            });
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(script: &str) -> rhai::Map {
        rhai::Engine::new_raw().eval::<rhai::Map>(script).unwrap()
    }

    #[test]
    fn default_deny() {
        let g = Grants::default();
        assert!(!g.allows(&Capability::Machine));
        assert!(!g.allows(&Capability::FsRead("x".into())));
        assert!(!g.allows(&Capability::Secret("A".into())));
    }

    #[test]
    fn allow_map_replaces_defaults() {
        let mut g = Grants::provisioner_default();
        g.apply_allow(&map(
            r#"#{ read: ["files/consul"], secrets: ["PW"], machine: false }"#,
        ))
        .unwrap();
        assert!(!g.allows(&Capability::Machine));
        assert!(g.allows(&Capability::FsRead("files/consul/a.json".into())));
        assert!(!g.allows(&Capability::FsRead("files/other".into())));
        assert!(!g.allows(&Capability::FsRead("files/consulx".into())));
        assert!(g.allows(&Capability::Secret("PW".into())));
        assert!(!g.allows(&Capability::Secret("OTHER".into())));
    }

    #[test]
    fn unknown_and_escaping_grants_are_refused() {
        let mut g = Grants::default();
        let e = g.apply_allow(&map(r#"#{ reed: ["x"] }"#)).unwrap_err();
        assert!(e.to_string().contains("unknown key `reed`"), "{e}");
        assert!(e.to_string().contains("read"), "{e}");
        assert!(g.apply_allow(&map(r#"#{ read: ["../etc"] }"#)).is_err());
        assert!(
            g.apply_allow(&map(r#"#{ read: ["/var/../etc"] }"#))
                .is_err()
        );
        assert!(g.apply_allow(&map(r#"#{ write: ["/"] }"#)).is_err());
        // An absolute directory is a deliberate grant.
        g.apply_allow(&map(r#"#{ read: ["/var/tmp/images"] }"#))
            .unwrap();
        assert!(g.allows(&Capability::FsRead("/var/tmp/images/base.qcow2".into())));
        assert!(!g.allows(&Capability::FsRead("/var/tmp/other".into())));
    }

    #[test]
    fn host_patterns() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "evil-example.com"));
        assert!(host_matches("Example.com", "example.COM"));
    }

    #[test]
    fn allow_line_is_copyable() {
        assert_eq!(
            Capability::FsRead("files/x".into()).allow_line(),
            r#"allow: #{ read: ["files/x"] }"#
        );
        assert_eq!(
            Capability::Machine.allow_line(),
            "allow: #{ machine: true }"
        );
    }
}
