//! What a capability is, as data: the `allow` key (which is also its name in the
//! audit log), how its grant is written, the WIT interfaces it gates, and an example
//! grant for denials and `inspect`. Each capability module declares one [`CapSpec`];
//! [`super::TABLE`] lists them, and every list kiln needs (accepted `allow` keys,
//! `inspect` summaries, which WASM imports need which grant) is derived from it.

use std::fmt;

/// How a grant is written in an `allow` map, and so what a use of it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grammar {
    /// `machine: true`: a switch.
    Flag,
    /// `read: ["files", "/var/lib/images", "~/.ssh"]`: directories (project-relative,
    /// absolute, or under `~`). A use names a path.
    Paths,
    /// `ssh: ["build-1.example.com", "*.example.com", "*"]`: host patterns (a leading
    /// `*.` matches any subdomain, `*` anything). A use names a host.
    HostPatterns,
    /// `net: ["api.example.com:443", "10.0.0.1", "db.internal:*"]`: exact hosts
    /// (names or IP literals), each with a port or `*` (any port, the default). A use
    /// names a host and a port.
    HostPorts,
    /// `secrets: ["DB_PW"]`, `ec2: ["us-east-1"]`: names; `*` matches every name when
    /// `wildcard` is true.
    Names { wildcard: bool },
}

impl Grammar {
    /// How the grant is written, for "must be ..." errors.
    pub fn expected(&self) -> &'static str {
        match self {
            Grammar::Flag => "true or false",
            Grammar::Paths => "an array of directories, like [\"files\"]",
            Grammar::HostPatterns => "an array of hosts, like [\"build.example.com\"]",
            Grammar::HostPorts => {
                "an array of host or host:port strings, like [\"api.example.com:443\"]"
            }
            Grammar::Names { .. } => "an array of names, like [\"NAME\"]",
        }
    }
}

/// One capability.
#[derive(Debug)]
pub struct CapSpec {
    /// The key in an `allow` map and the `capability` field of audit lines.
    pub key: &'static str,
    /// What holding it lets a step do, for `inspect` and the docs.
    pub summary: &'static str,
    pub grammar: Grammar,
    /// WIT interfaces (import names without the version; a trailing `/` matches a
    /// whole package, e.g. `wasi:sockets/`) that are linked only with this grant.
    pub wit: &'static [&'static str],
    /// A grant that would allow a typical use, quoted when a component needs it.
    pub example: &'static str,
}

impl CapSpec {
    /// The example's entry alone (`machine: true`), to combine several into one map.
    pub fn example_entry(&self) -> &'static str {
        self.example
            .strip_prefix("allow: #{ ")
            .and_then(|s| s.strip_suffix(" }"))
            .unwrap_or(self.example)
    }

    /// Whether `import` (e.g. `kiln:host/machine@0.1.0`) is one of this capability's
    /// interfaces.
    pub fn gates_import(&self, import: &str) -> bool {
        let iface = import.split('@').next().unwrap_or(import);
        self.wit.iter().any(|w| {
            if w.ends_with('/') {
                iface.starts_with(w)
            } else {
                iface == *w
            }
        })
    }
}

impl fmt::Display for CapSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key)
    }
}

impl PartialEq for CapSpec {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for CapSpec {}
