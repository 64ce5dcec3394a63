//! Provenance: what went into a version, stored as a JSON document per version (identical
//! documents of several builds are stored once, keyed by their sha256).
//!
//! The schema is `provenance.schema.json` beside this crate's `Cargo.toml` (JSON Schema
//! 2020-12, served at `/api/v1/schema/provenance.json`); [`Provenance::validate`] enforces it
//! plus the size limits. Schema version 1:
//!
//! ```json
//! {
//!   "schema": 1,
//!   "script": { "path": "build.rhai", "sha256": "<64 hex>" },
//!   "variables": [ { "name": "region", "value": "us-east-1" }, { "name": "db_password", "secret": true } ],
//!   "wasm_modules": [ { "path": "provisioners/consul.wasm", "sha256": "<64 hex>" } ],
//!   "grants": [ { "build": "web", "step": "shell#1",
//!                 "capabilities": [ { "capability": "machine" }, { "capability": "fs.read", "object": "." } ] } ],
//!   "audit_log": { "sha256": "<64 hex>", "records": 42 },
//!   "kiln_version": "0.1.0",
//!   "git": { "commit": "<40 hex>", "dirty": false },
//!   "parent": { "bucket": "base", "fingerprint": "01J…", "channel": "prod", "build": "base",
//!               "platform": "qemu", "region": "local", "external_id": "/images/base.qcow2" },
//!   "consul_services": [ { "name": "web", "port": 80, "tags": ["http"] } ]
//! }
//! ```
//!
//! Secrets appear by name only: a variable is either `{name, value}` or `{name, secret: true}`,
//! and a secret entry carrying a value is refused, so a recorder cannot store one by mistake.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::RegistryError;
use crate::limits;
use crate::model::Platform;

/// The schema version this crate writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The JSON Schema of the provenance document.
pub const JSON_SCHEMA: &str = include_str!("../provenance.schema.json");

const MAX_VARIABLES: usize = 512;
const MAX_VARIABLE_VALUE: usize = 4096;
const MAX_MODULES: usize = 256;
const MAX_GRANT_STEPS: usize = 1024;
const MAX_CAPABILITIES: usize = 64;
const MAX_SERVICES: usize = 128;
const MAX_SHORT_TEXT: usize = 512;

/// Provenance of the run that recorded a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    pub schema: u32,
    pub script: ScriptDigest,
    #[serde(default)]
    pub variables: Vec<Variable>,
    #[serde(default)]
    pub wasm_modules: Vec<ModuleDigest>,
    #[serde(default)]
    pub grants: Vec<StepGrants>,
    #[serde(default)]
    pub audit_log: Option<AuditDigest>,
    pub kiln_version: String,
    /// `None` when the project is not a git checkout.
    #[serde(default)]
    pub git: Option<GitState>,
    /// The registry artifact the build's source came from.
    #[serde(default)]
    pub parent: Option<ParentRef>,
    /// Services the consul provisioner reported as build metadata.
    #[serde(default)]
    pub consul_services: Vec<ConsulService>,
}

/// The build script and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptDigest {
    pub path: String,
    pub sha256: String,
}

/// A script variable: a value, or only the name of a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

impl Variable {
    pub fn plain(name: &str, value: &str) -> Self {
        Variable {
            name: name.to_string(),
            value: Some(value.to_string()),
            secret: false,
        }
    }

    /// A secret, recorded by name only.
    pub fn secret(name: &str) -> Self {
        Variable {
            name: name.to_string(),
            value: None,
            secret: true,
        }
    }
}

/// A WASM module's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleDigest {
    pub path: String,
    pub sha256: String,
}

/// The grants one step held (capability names as in the audit log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepGrants {
    pub build: String,
    pub step: String,
    pub capabilities: Vec<Grant>,
}

/// One granted capability (`fs.read` on `.`, `machine`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub capability: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

/// The audit log's digest and length at the end of the build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditDigest {
    pub sha256: String,
    pub records: u64,
}

/// The project's git state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitState {
    pub commit: String,
    pub dirty: bool,
}

/// The registry artifact a build started from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentRef {
    pub bucket: String,
    pub fingerprint: String,
    /// The channel it was resolved through; `None` when pinned by fingerprint.
    #[serde(default)]
    pub channel: Option<String>,
    /// The parent's build that produced the artifact.
    #[serde(default)]
    pub build: Option<String>,
    pub platform: Platform,
    pub region: String,
    pub external_id: String,
}

/// A Consul service a build baked into the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulService {
    pub name: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl Provenance {
    /// The smallest valid document: a script digest and kiln's version.
    pub fn new(script_path: &str, script_sha256: &str, kiln_version: &str) -> Self {
        Provenance {
            schema: SCHEMA_VERSION,
            script: ScriptDigest {
                path: script_path.to_string(),
                sha256: script_sha256.to_string(),
            },
            variables: Vec::new(),
            wasm_modules: Vec::new(),
            grants: Vec::new(),
            audit_log: None,
            kiln_version: kiln_version.to_string(),
            git: None,
            parent: None,
            consul_services: Vec::new(),
        }
    }

    /// Parses and validates a stored or received document.
    pub fn from_json(text: &str) -> Result<Self, RegistryError> {
        if text.len() > limits::MAX_PROVENANCE {
            return Err(too_big(text.len()));
        }
        let p: Provenance = serde_json::from_str(text)
            .map_err(|e| RegistryError::invalid("provenance", e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// The canonical JSON (field order fixed by the struct) and its sha256.
    pub(crate) fn canonical(&self) -> Result<(String, String), RegistryError> {
        let text = serde_json::to_string(self)
            .map_err(|e| RegistryError::invalid("provenance", e.to_string()))?;
        if text.len() > limits::MAX_PROVENANCE {
            return Err(too_big(text.len()));
        }
        let digest = hex::encode(Sha256::digest(text.as_bytes()));
        Ok((text, digest))
    }

    /// Enforces the schema's rules that serde's types cannot express.
    pub fn validate(&self) -> Result<(), RegistryError> {
        if self.schema != SCHEMA_VERSION {
            return Err(RegistryError::invalid(
                "provenance.schema",
                format!(
                    "version {} is not supported (this kiln reads {SCHEMA_VERSION})",
                    self.schema
                ),
            ));
        }
        short("provenance.script.path", &self.script.path)?;
        limits::check_sha256("provenance.script.sha256", &self.script.sha256)?;
        if self.variables.len() > MAX_VARIABLES {
            return Err(RegistryError::invalid(
                "provenance.variables",
                format!("more than {MAX_VARIABLES}"),
            ));
        }
        for v in &self.variables {
            short("provenance variable name", &v.name)?;
            match (&v.value, v.secret) {
                (Some(_), true) => {
                    return Err(RegistryError::invalid(
                        format!("provenance variable {:?}", v.name),
                        "a secret is recorded by name only; drop its value",
                    ));
                }
                (None, false) => {
                    return Err(RegistryError::invalid(
                        format!("provenance variable {:?}", v.name),
                        "needs a value, or `secret: true`",
                    ));
                }
                (Some(value), false) => limits::check_text(
                    &format!("provenance variable {:?}", v.name),
                    value,
                    MAX_VARIABLE_VALUE,
                    true,
                )?,
                (None, true) => {}
            }
        }
        if self.wasm_modules.len() > MAX_MODULES {
            return Err(RegistryError::invalid(
                "provenance.wasm_modules",
                format!("more than {MAX_MODULES}"),
            ));
        }
        for m in &self.wasm_modules {
            short("provenance wasm module path", &m.path)?;
            limits::check_sha256("provenance wasm module sha256", &m.sha256)?;
        }
        if self.grants.len() > MAX_GRANT_STEPS {
            return Err(RegistryError::invalid(
                "provenance.grants",
                format!("more than {MAX_GRANT_STEPS} steps"),
            ));
        }
        for g in &self.grants {
            short("provenance grant build", &g.build)?;
            short("provenance grant step", &g.step)?;
            if g.capabilities.len() > MAX_CAPABILITIES {
                return Err(RegistryError::invalid(
                    "provenance grant capabilities",
                    format!("more than {MAX_CAPABILITIES} in step {:?}", g.step),
                ));
            }
            for c in &g.capabilities {
                short("provenance capability", &c.capability)?;
                if let Some(o) = &c.object {
                    short("provenance capability object", o)?;
                }
            }
        }
        if let Some(a) = &self.audit_log {
            limits::check_sha256("provenance.audit_log.sha256", &a.sha256)?;
        }
        short("provenance.kiln_version", &self.kiln_version)?;
        if let Some(g) = &self.git {
            let ok = (g.commit.len() == 40 || g.commit.len() == 64)
                && g.commit.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(RegistryError::invalid(
                    "provenance.git.commit",
                    format!("{} is not a full git commit id", limits::shown(&g.commit)),
                ));
            }
        }
        if let Some(p) = &self.parent {
            limits::check_name("provenance.parent.bucket", &p.bucket)?;
            limits::check_name("provenance.parent.fingerprint", &p.fingerprint)?;
            if let Some(c) = &p.channel {
                limits::check_name("provenance.parent.channel", c)?;
            }
            if let Some(b) = &p.build {
                limits::check_name("provenance.parent.build", b)?;
            }
            limits::check_region(&p.region)?;
            limits::check_text(
                "provenance.parent.external_id",
                &p.external_id,
                limits::MAX_EXTERNAL_ID,
                false,
            )?;
        }
        if self.consul_services.len() > MAX_SERVICES {
            return Err(RegistryError::invalid(
                "provenance.consul_services",
                format!("more than {MAX_SERVICES}"),
            ));
        }
        for s in &self.consul_services {
            short("provenance consul service name", &s.name)?;
            if s.tags.len() > MAX_CAPABILITIES {
                return Err(RegistryError::invalid(
                    "provenance consul service tags",
                    format!("more than {MAX_CAPABILITIES}"),
                ));
            }
            for t in &s.tags {
                short("provenance consul service tag", t)?;
            }
        }
        Ok(())
    }
}

fn short(field: &str, value: &str) -> Result<(), RegistryError> {
    if value.is_empty() {
        return Err(RegistryError::invalid(field, "must not be empty"));
    }
    limits::check_text(field, value, MAX_SHORT_TEXT, false)
}

fn too_big(len: usize) -> RegistryError {
    RegistryError::invalid(
        "provenance",
        format!(
            "{len} bytes, larger than the limit of {}",
            limits::MAX_PROVENANCE
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Provenance {
        let mut p = Provenance::new("build.rhai", &"a".repeat(64), "0.1.0");
        p.variables = vec![
            Variable::plain("region", "us-east-1"),
            Variable::secret("pw"),
        ];
        p.wasm_modules = vec![ModuleDigest {
            path: "p/consul.wasm".into(),
            sha256: "b".repeat(64),
        }];
        p.grants = vec![StepGrants {
            build: "web".into(),
            step: "shell#1".into(),
            capabilities: vec![
                Grant {
                    capability: "machine".into(),
                    object: None,
                },
                Grant {
                    capability: "fs.read".into(),
                    object: Some(".".into()),
                },
            ],
        }];
        p.audit_log = Some(AuditDigest {
            sha256: "c".repeat(64),
            records: 42,
        });
        p.git = Some(GitState {
            commit: "d".repeat(40),
            dirty: true,
        });
        p.parent = Some(ParentRef {
            bucket: "base".into(),
            fingerprint: "01JB".into(),
            channel: Some("prod".into()),
            build: Some("base".into()),
            platform: Platform::Qemu,
            region: "local".into(),
            external_id: "/images/base.qcow2".into(),
        });
        p.consul_services = vec![ConsulService {
            name: "web".into(),
            port: Some(80),
            tags: vec!["http".into()],
        }];
        p
    }

    #[test]
    fn round_trip_and_digest_is_stable() {
        let p = full();
        p.validate().expect("valid");
        let (text, digest) = p.canonical().expect("canonical");
        let back = Provenance::from_json(&text).expect("parse");
        assert_eq!(back, p);
        assert_eq!(back.canonical().expect("c").1, digest);
        assert!(!text.contains("\"value\":null"), "{text}");
    }

    #[test]
    fn secret_with_value_refused() {
        let mut p = full();
        p.variables.push(Variable {
            name: "token".into(),
            value: Some("hunter2".into()),
            secret: true,
        });
        let e = p.validate().expect_err("refused");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(matches!(e, RegistryError::InvalidInput { .. }));
    }

    #[test]
    fn unknown_fields_and_bad_digests_refused() {
        let text = full().canonical().expect("c").0;
        let extra = text.replacen("{\"schema\":1,", "{\"schema\":1,\"extra\":1,", 1);
        assert!(Provenance::from_json(&extra).is_err());
        let mut p = full();
        p.script.sha256 = "xyz".into();
        assert!(p.validate().is_err());
        let mut p = full();
        p.schema = 2;
        assert!(p.validate().is_err());
    }

    /// The JSON Schema file documents exactly the fields the struct has.
    #[test]
    fn schema_file_matches_struct() {
        let schema: serde_json::Value = serde_json::from_str(JSON_SCHEMA).expect("schema json");
        let doc: serde_json::Value =
            serde_json::from_str(&full().canonical().expect("c").0).expect("doc");
        check_keys(&schema, &schema, &doc, "$");
    }

    fn resolve<'a>(
        root: &'a serde_json::Value,
        node: &'a serde_json::Value,
    ) -> &'a serde_json::Value {
        match node.get("$ref").and_then(|r| r.as_str()) {
            Some(r) => {
                let name = r.trim_start_matches("#/$defs/");
                &root["$defs"][name]
            }
            None => node,
        }
    }

    fn check_keys(
        root: &serde_json::Value,
        schema: &serde_json::Value,
        doc: &serde_json::Value,
        path: &str,
    ) {
        let schema = resolve(root, schema);
        match doc {
            serde_json::Value::Object(map) => {
                let props = schema["properties"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{path}: schema has no properties"));
                for k in map.keys() {
                    assert!(props.contains_key(k), "{path}.{k} is not in the schema");
                }
                if path == "$" {
                    // The full example fills every top-level field.
                    let mut doc_keys: Vec<&String> = map.keys().collect();
                    let mut schema_keys: Vec<&String> = props.keys().collect();
                    doc_keys.sort();
                    schema_keys.sort();
                    assert_eq!(doc_keys, schema_keys, "{path}");
                }
                for (k, v) in map {
                    let sub = &props[k];
                    let sub = match sub.get("anyOf").and_then(|a| a.as_array()) {
                        Some(alts) => alts
                            .iter()
                            .find(|a| a.get("type").and_then(|t| t.as_str()) != Some("null"))
                            .unwrap_or(sub),
                        None => sub,
                    };
                    check_keys(root, sub, v, &format!("{path}.{k}"));
                }
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    check_keys(root, &schema["items"], item, &format!("{path}[{i}]"));
                }
            }
            _ => {}
        }
    }
}
