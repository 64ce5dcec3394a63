//! The plan: what a build script declares. Evaluating the script's top level only
//! fills this in; `kiln validate` and `kiln inspect` stop here and touch nothing.

mod registry_ref;
mod render;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::caps::{Grants, Project};

pub use registry_ref::{RegistryRef, registry_refs, replace_registry_refs};
pub use render::{inspect_json, render_inspect, render_value};

/// A secret declared with `secret(name)` or `secret_file(path)`: an opaque handle
/// whose value the script cannot print (it is redacted everywhere) and that host code
/// resolves when it needs it.
#[derive(Clone)]
pub struct SecretHandle {
    /// The environment variable, or the file's path as the script wrote it.
    pub name: String,
    pub(crate) value: Arc<str>,
    pub(crate) from_file: bool,
}

impl SecretHandle {
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl std::fmt::Debug for SecretHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for SecretHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.from_file {
            write!(f, "secret_file({:?})", self.name)
        } else {
            write!(f, "secret({:?})", self.name)
        }
    }
}

/// Where a builder or post-processor's Rhai code comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptRef {
    /// Part of kiln's embedded standard library, e.g. `builders/qemu`.
    Embedded(String),
    /// A file in the project, e.g. `builders/my_builder.rhai`.
    Project(String),
}

impl std::fmt::Display for ScriptRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScriptRef::Embedded(n) => write!(f, "kiln:{n}"),
            ScriptRef::Project(p) => f.write_str(p),
        }
    }
}

/// `source(name, qemu(#{...}))`.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub name: String,
    /// The builder's type name (`qemu`, `ssh_host`, or a custom builder's file stem).
    pub builder: String,
    pub script: ScriptRef,
    /// The configuration with the builder's defaults filled in.
    pub config: rhai::Map,
    pub grants: Grants,
    /// `build.rhai:12:5`: where the script called `source(...)`, for errors that happen
    /// inside the builder's own script.
    pub declared_at: String,
    /// Config keys that do not change what the steps do (where the image is pushed, the
    /// image config applied after them), from the builder's `fn step_cache_ignore(cfg)`:
    /// left out of the step cache key, so changing them reuses every cached step.
    pub step_cache_ignore: Vec<String>,
}

/// The body of one provisioning step.
#[derive(Debug, Clone)]
pub enum StepKind {
    /// Inline commands, run as one script with `/bin/sh -e`.
    Shell { inline: Vec<String> },
    /// A project script uploaded and run.
    ShellScript { path: String },
    /// A file or directory tree uploaded to the machine.
    File { src: String, dest: String },
    /// A Rhai closure called with the machine.
    Closure { func: rhai::FnPtr },
    /// A WebAssembly component provisioner.
    Wasm { path: String, config_json: String },
    /// `breakpoint(note)`: pauses the build here with the pause menu (on a terminal).
    /// It changes nothing on the machine, so it does not change any cache key.
    Breakpoint { note: String },
}

/// A value for a step's `env`: plain, or a secret resolved when the step runs.
#[derive(Debug, Clone)]
pub enum EnvValue {
    Plain(String),
    Secret(SecretHandle),
}

/// Per-step options users know from Packer.
#[derive(Debug, Clone, Default)]
pub struct StepOptions {
    pub timeout: Option<Duration>,
    pub max_retries: u32,
    pub pause_before: Option<Duration>,
    pub only: Vec<String>,
    pub except: Vec<String>,
    pub env: Vec<(String, EnvValue)>,
    pub expect_disconnect: bool,
    pub valid_exit_codes: Vec<i32>,
    /// WASM linear memory limit in bytes.
    pub memory: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct StepSpec {
    pub kind: StepKind,
    pub options: StepOptions,
    pub grants: Grants,
    /// `build.rhai:14:9`: where the script declared the step.
    pub declared_at: String,
}

/// The name of a closure step's function, if the script gave it one (`Fn("name")`).
/// An anonymous closure's is `anon$` and a hash that changes from one kiln process to
/// the next, so it must not reach an image's history or a cache key: it is `None`
/// and the step is named by where it was declared.
pub fn closure_name(func: &rhai::FnPtr) -> Option<&str> {
    Some(func.fn_name()).filter(|n| !n.starts_with("anon$"))
}

impl StepSpec {
    /// Short description for the UI and the audit log.
    pub fn describe(&self) -> String {
        match &self.kind {
            StepKind::Shell { inline } => format!("shell ({} commands)", inline.len()),
            StepKind::ShellScript { path } => format!("shell {path}"),
            StepKind::File { src, dest } => format!("file {src} => {dest}"),
            StepKind::Closure { func } => match closure_name(func) {
                Some(name) => format!("closure {name}"),
                None => format!("closure at {}", self.declared_at),
            },
            StepKind::Wasm { path, .. } => format!("wasm {path}"),
            StepKind::Breakpoint { note } if note.is_empty() => "breakpoint".to_string(),
            StepKind::Breakpoint { note } => format!("breakpoint ({note})"),
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            StepKind::Shell { .. } | StepKind::ShellScript { .. } => "shell",
            StepKind::File { .. } => "file",
            StepKind::Closure { .. } => "closure",
            StepKind::Wasm { .. } => "wasm",
            StepKind::Breakpoint { .. } => "breakpoint",
        }
    }

    /// Whether this step runs for `source` (Packer's `only` / `except`).
    pub fn applies_to(&self, source: &str) -> bool {
        (self.options.only.is_empty() || self.options.only.iter().any(|s| s == source))
            && !self.options.except.iter().any(|s| s == source)
    }
}

/// A post-processor: `checksum("sha256")`, `manifest("out/manifest.json")`, ...
#[derive(Debug, Clone)]
pub struct PostSpec {
    pub name: String,
    pub script: ScriptRef,
    pub config: rhai::Map,
    /// What it holds beyond reading the project and writing where its inputs and
    /// outputs are: its script's `grants(cfg)` and the user's `allow`.
    pub grants: Grants,
}

/// `build(name, #{ sources, steps, post })`.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub name: String,
    pub sources: Vec<String>,
    pub steps: Vec<StepSpec>,
    pub post: Vec<PostSpec>,
}

/// A declared variable and the value it took.
#[derive(Debug, Clone)]
pub struct VarInfo {
    pub value: String,
    pub from: &'static str,
}

/// Everything a build script declared.
pub struct Plan {
    /// The script as the user named it (relative to the project when possible).
    pub script_name: String,
    pub script_sha256: String,
    pub project: Project,
    pub vars: BTreeMap<String, VarInfo>,
    pub secrets: Vec<String>,
    pub sources: Vec<SourceSpec>,
    pub builds: Vec<BuildSpec>,
}

impl Plan {
    pub fn source(&self, name: &str) -> Option<&SourceSpec> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// Every (build, source) pair, in declaration order: Packer's `build.source` names.
    pub fn pairs(&self) -> Vec<(&BuildSpec, &SourceSpec)> {
        let mut out = Vec::new();
        for b in &self.builds {
            for s in &b.sources {
                if let Some(src) = self.source(s) {
                    out.push((b, src));
                }
            }
        }
        out
    }
}

/// `build.source`, the name `--only`/`--except` and the UI use.
pub fn pair_name(build: &BuildSpec, source: &SourceSpec) -> String {
    format!("{}.{}", build.name, source.name)
}
