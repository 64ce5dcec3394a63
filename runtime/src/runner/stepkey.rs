//! Step cache keys. Each step's key is a SHA-256 over the previous step's key and the
//! step as declared: its kind and text, the digests of the project files it reads, the
//! names (never the values) of the secrets it uses, its options and its grants. So a
//! changed input changes that step's key and every later one's, and nothing before it.
//! The first key chains from the build's base: the builder and its configuration, plus
//! whatever the builder adds (`ctx.step_cache_base(...)`, e.g. its base image digest).
//!
//! Keys are what a backend that can restore a step's result (a cached OCI layer, a VM
//! snapshot) looks its cache up by (`Machine::begin_step`).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::caps::{Project, Scope};
use crate::plan::{EnvValue, SourceSpec, StepKind, StepSpec, render_value};

/// A digest over the builder, its configuration (secrets by name; without the keys the
/// builder says its steps do not depend on) and `extra`.
pub fn base_key(source: &SourceSpec, extra: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"kiln step cache v1\0");
    h.update(source.builder.as_bytes());
    h.update(b"\0");
    h.update(source.script.to_string().as_bytes());
    h.update(b"\0");
    let mut config = source.config.clone();
    for k in &source.step_cache_ignore {
        config.remove(k.as_str());
    }
    h.update(render_value(&rhai::Dynamic::from_map(config)).as_bytes());
    h.update(b"\0");
    h.update(extra.as_bytes());
    hex::encode(h.finalize())
}

/// The key of `step` following `prev`. `script_sha256` stands for closure steps (their
/// body is part of the script). Files are read through `scope`, so a file the step may
/// not read fails here as it would when the step runs.
pub fn step_key(
    prev: &str,
    step: &StepSpec,
    project: &Project,
    scope: &Scope,
    script_sha256: &str,
) -> Result<String, String> {
    // A breakpoint changes nothing on the machine: adding or removing one must not
    // invalidate the steps after it.
    if matches!(step.kind, StepKind::Breakpoint { .. }) {
        return Ok(prev.to_string());
    }
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\0");
    h.update(step.kind_name().as_bytes());
    h.update(b"\0");
    match &step.kind {
        StepKind::Shell { inline } => {
            for line in inline {
                h.update(line.as_bytes());
                h.update(b"\n");
            }
        }
        StepKind::ShellScript { path } => {
            h.update(path.as_bytes());
            h.update(b"\0");
            h.update(file_digest(project, scope, path)?.as_bytes());
        }
        StepKind::File { src, dest } => {
            h.update(src.as_bytes());
            h.update(b"\0");
            h.update(dest.as_bytes());
            h.update(b"\0");
            h.update(file_digest(project, scope, src)?.as_bytes());
        }
        StepKind::Closure { func } => {
            // Stable from run to run: not an anonymous closure's per-process name.
            match crate::plan::closure_name(func) {
                Some(name) => h.update(name.as_bytes()),
                None => h.update(step.declared_at.as_bytes()),
            }
            h.update(b"\0");
            h.update(script_sha256.as_bytes());
        }
        StepKind::Wasm { path, config_json } => {
            h.update(path.as_bytes());
            h.update(b"\0");
            let loader = scope.with_step(
                scope.step(),
                crate::caps::Holder::Step,
                crate::caps::Grants::read_only("."),
            );
            h.update(file_digest(project, &loader, path)?.as_bytes());
            h.update(b"\0");
            h.update(config_json.as_bytes());
        }
        StepKind::Breakpoint { .. } => {}
    }
    h.update(b"\0");
    let o = &step.options;
    // Env values that are secrets count by name only: a rotated password does not
    // invalidate the cache, and no secret value is ever hashed into a key on disk.
    for (k, v) in &o.env {
        h.update(k.as_bytes());
        h.update(b"=");
        match v {
            EnvValue::Plain(s) => h.update(s.as_bytes()),
            EnvValue::Secret(s) => h.update(format!("secret({})", s.name).as_bytes()),
        }
        h.update(b"\0");
    }
    h.update(format!("{:?}{}", o.valid_exit_codes, o.expect_disconnect).as_bytes());
    h.update(b"\0");
    h.update(
        serde_json::to_string(&step.grants)
            .unwrap_or_default()
            .as_bytes(),
    );
    Ok(hex::encode(h.finalize()))
}

/// The keys of a build's steps for `source` (those that apply, breakpoints left out),
/// as `(1-based index, key)`, chained from `base`. The runner computes the same keys
/// step by step as it goes (`step_key`), so a restore and the steps agree.
pub fn chain(
    project: &Project,
    broker: &std::sync::Arc<crate::caps::Broker>,
    label: &str,
    source: &SourceSpec,
    steps: &[StepSpec],
    base: &str,
    script_sha256: &str,
) -> Vec<(usize, String)> {
    let mut key = base.to_string();
    let mut out = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if !step.applies_to(&source.name) {
            continue;
        }
        let scope = broker.scope(
            label,
            &format!("step {} {}", i + 1, step.kind_name()),
            crate::caps::Holder::Step,
            step.grants.clone(),
        );
        key = step_key(&key, step, project, &scope, script_sha256)
            .unwrap_or_else(|_| uuid::Uuid::new_v4().simple().to_string());
        if !matches!(step.kind, StepKind::Breakpoint { .. }) {
            out.push((i + 1, key.clone()));
        }
    }
    out
}

/// What a builder says about its step cache in `fn step_cache(cfg)`: the store it uses
/// and the input files (base images) whose digests start the key chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDecl {
    pub store: String,
    pub inputs: Vec<String>,
}

/// Calls the builder's `step_cache(cfg)`, if it has one.
pub fn cache_decl(
    engine: &rhai::Engine,
    ast: &rhai::AST,
    config: &rhai::Map,
) -> Result<Option<CacheDecl>, String> {
    if !ast.iter_functions().any(|f| f.name == "step_cache") {
        return Ok(None);
    }
    let m: rhai::Map = engine
        .call_fn(
            &mut rhai::Scope::new(),
            ast,
            "step_cache",
            (rhai::Dynamic::from_map(config.clone()),),
        )
        .map_err(|e| format!("step_cache(cfg) failed: {e}"))?;
    let store = m
        .get("store")
        .map(|v| v.to_string())
        .unwrap_or_else(|| "vm".into());
    let inputs = m
        .get("inputs")
        .and_then(|v| v.clone().into_array().ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|v| !v.is_unit())
        .map(|v| v.to_string())
        .collect();
    Ok(Some(CacheDecl { store, inputs }))
}

/// The base-key part for a builder's cache inputs: one `input <name> sha256:<hex>` line
/// each. Big files are hashed once per change (see `vm_cache::digests`); `remember`
/// is false for a dry run, which writes nothing. A URL (not a local file) counts by
/// its text.
pub fn input_digests(
    project: &Project,
    scope: &Scope,
    inputs: &[String],
    remember: bool,
) -> Result<String, String> {
    let memo = crate::cache_dir().map(|d| d.join("steps").join("digests.json"));
    if remember
        && let Some(m) = &memo
        && let Some(parent) = m.parent()
    {
        let _ = std::fs::create_dir_all(parent);
    }
    let mut out = String::new();
    for input in inputs {
        if input.contains("://") {
            out.push_str(&format!("input {input} url\n"));
            continue;
        }
        let path = crate::caps::fs::expand_home(input);
        let file = project.open_read(scope, &path).map_err(|e| e.to_string())?;
        let abs = std::fs::canonicalize(project.path().join(&path))
            .unwrap_or_else(|_| project.path().join(&path));
        let mut std_file = file.into_std();
        let sha =
            crate::host::vm_cache::digests::sha256(&mut std_file, &abs, memo.as_deref(), remember)
                .map_err(|e| format!("{input}: {e}"))?;
        out.push_str(&format!("input {input} sha256:{sha}\n"));
    }
    Ok(out)
}

/// SHA-256 of a project file, or of a directory tree (names, modes, contents and
/// symlink targets, in name order).
fn file_digest(project: &Project, scope: &Scope, path: &str) -> Result<String, String> {
    let mut h = Sha256::new();
    if project.is_dir(scope, path).map_err(|e| e.to_string())? {
        let dir = project
            .open_dir_read(scope, path)
            .map_err(|e| e.to_string())?;
        tree_digest(&dir, Path::new(""), &mut h).map_err(|e| format!("{path}: {e}"))?;
    } else {
        let mut f = project.open_read(scope, path).map_err(|e| e.to_string())?;
        copy_into(&mut f, &mut h).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(hex::encode(h.finalize()))
}

fn copy_into(r: &mut impl Read, h: &mut Sha256) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

fn tree_digest(dir: &cap_std::fs::Dir, rel: &Path, h: &mut Sha256) -> std::io::Result<()> {
    use cap_std::fs::PermissionsExt;
    let mut names: Vec<String> = dir
        .entries()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let meta = dir.symlink_metadata(&name)?;
        let path = rel.join(&name);
        h.update(path.to_string_lossy().as_bytes());
        h.update(format!("\0{:o}\0", meta.permissions().mode() & 0o7777).as_bytes());
        if meta.is_symlink() {
            h.update(b"L");
            h.update(dir.read_link(&name)?.to_string_lossy().as_bytes());
        } else if meta.is_dir() {
            h.update(b"D");
            let sub = dir.open_dir(&name)?;
            tree_digest(&sub, &path, h)?;
        } else if meta.is_file() {
            h.update(b"F");
            let mut f = dir.open(&name)?;
            copy_into(&mut f, h)?;
        }
        h.update(b"\0");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{AuditLog, Broker, Grants, Holder};
    use crate::plan::{StepOptions, StepSpec};
    use crate::ui::Redactor;

    fn file_step(src: &str) -> StepSpec {
        StepSpec {
            kind: StepKind::File {
                src: src.into(),
                dest: "/etc/x".into(),
            },
            options: StepOptions::default(),
            grants: Grants::provisioner_default(),
            declared_at: String::new(),
        }
    }

    fn shell(cmd: &str) -> StepSpec {
        StepSpec {
            kind: StepKind::Shell {
                inline: vec![cmd.into()],
            },
            options: StepOptions::default(),
            grants: Grants::provisioner_default(),
            declared_at: String::new(),
        }
    }

    #[test]
    fn a_changed_input_changes_its_key_and_every_later_one_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.conf"), "one").unwrap();
        std::fs::create_dir(dir.path().join("tree")).unwrap();
        std::fs::write(dir.path().join("tree/b"), "bee").unwrap();
        let project = Project::open(dir.path()).unwrap();
        let broker = Broker::new("t", AuditLog::disabled(Redactor::default()));
        let scope = broker.scope("b", "s", Holder::Step, Grants::provisioner_default());
        let steps = [
            shell("echo 1"),
            file_step("a.conf"),
            file_step("tree"),
            shell("echo 4"),
        ];
        let keys = |base: &str| {
            let mut prev = base.to_string();
            steps
                .iter()
                .map(|s| {
                    prev = step_key(&prev, s, &project, &scope, "script").unwrap();
                    prev.clone()
                })
                .collect::<Vec<_>>()
        };
        let k1 = keys("base");
        assert_eq!(k1, keys("base"), "keys are deterministic");
        std::fs::write(dir.path().join("a.conf"), "two").unwrap();
        let k2 = keys("base");
        assert_eq!(k1[0], k2[0]);
        assert!(k1[1..].iter().zip(&k2[1..]).all(|(a, b)| a != b));
        std::fs::write(dir.path().join("tree/b"), "bees").unwrap();
        let k3 = keys("base");
        assert_eq!(k2[..2], k3[..2]);
        assert_ne!(k2[2], k3[2]);
        assert_ne!(keys("other base")[0], k3[0]);
    }
}
