//! Loading a build script: evaluating its top level into a [`Plan`], kept with the
//! compiled script and library as a [`Program`] the runner executes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::declare::{self, DeclState};
use super::error::Sources;
use super::library::Library;
use super::{ScriptError, engine, resolver::KilnResolver};
use crate::caps::Project;
use crate::plan::Plan;
use crate::ui::Redactor;

/// A loaded build script: the plan it declared, and what running it needs (the
/// compiled script, for closure steps, and the builder/post-processor library).
pub struct Program {
    pub plan: Arc<Plan>,
    pub ast: Arc<rhai::AST>,
    pub library: Arc<Library>,
}

impl Program {
    /// Locates an error raised while running this program's scripts.
    pub fn locate(&self, e: &rhai::EvalAltResult) -> ScriptError {
        self.library
            .sources()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .locate(e, &self.plan.script_name)
    }
}

/// The environment prefix that sets variables, as Packer's `PKR_VAR_`.
pub const ENV_PREFIX: &str = "KILN_VAR_";

/// Names tried when PATH is a directory.
pub const SCRIPT_NAMES: &[&str] = &["build.rhai", "kiln.rhai"];

#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    /// `--var k=v`, applied after var files.
    pub vars: Vec<(String, String)>,
    /// `--var-file F`: JSON object, or `key = value` lines.
    pub var_files: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Script(#[from] ScriptError),
    #[error("{0}")]
    Config(String),
}

/// Finds the script: PATH itself if it is a file, else `build.rhai` in it.
pub fn find_script(path: &Path) -> Result<PathBuf, LoadError> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        for n in SCRIPT_NAMES {
            let p = path.join(n);
            if p.is_file() {
                return Ok(p);
            }
        }
        return Err(LoadError::Config(format!(
            "no build script in {}: expected one of {}",
            path.display(),
            SCRIPT_NAMES.join(", ")
        )));
    }
    Err(LoadError::Config(format!(
        "{}: no such file or directory",
        path.display()
    )))
}

/// Evaluates the script at `path` (a file or a directory holding `build.rhai`).
/// Paths in the script are relative to the script's directory, the project.
pub fn load(path: &Path, opts: &LoadOptions, redactor: &Redactor) -> Result<Program, LoadError> {
    let script = find_script(path)?;
    let text = std::fs::read_to_string(&script)
        .map_err(|e| LoadError::Config(format!("{}: {e}", script.display())))?;
    let dir = script
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let project =
        Project::open(dir).map_err(|e| LoadError::Config(format!("{}: {e}", dir.display())))?;
    let script_name = script
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "build.rhai".into());

    // Precedence, lowest first: the environment, var files, --var (then a default).
    let mut inputs = BTreeMap::new();
    for (k, v) in std::env::vars_os() {
        let (Some(k), Some(v)) = (k.to_str(), v.to_str()) else {
            continue;
        };
        if let Some(name) = k.strip_prefix(ENV_PREFIX).filter(|n| !n.is_empty()) {
            inputs.insert(name.to_string(), (v.to_string(), "env"));
        }
    }
    for f in &opts.var_files {
        for (k, v) in read_var_file(f)? {
            inputs.insert(k, (v, "var-file"));
        }
    }
    for (k, v) in &opts.vars {
        inputs.insert(k.clone(), (v.clone(), "--var"));
    }

    let sources = Arc::new(Mutex::new(Sources::default()));
    sources
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .add(&script_name, &text);
    let library = Arc::new(Library::new(project.clone(), sources.clone()));
    let decl = Arc::new(Mutex::new(DeclState {
        sealed: false,
        inputs: inputs.clone(),
        vars: BTreeMap::new(),
        secrets: Vec::new(),
        sources: Vec::new(),
        builds: Vec::new(),
        redactor: redactor.clone(),
        library: library.clone(),
    }));

    let limits = engine::Limits::declaration();
    let mut eng = engine::hardened(limits.clone());
    eng.set_module_resolver(
        KilnResolver::new(project.clone(), sources.clone()).with_root(&script_name),
    );
    declare::register(&mut eng, decl.clone());
    super::api::register_types(&mut eng);
    eng.on_print(|s| tracing::info!(target: "kiln::script", "{s}"));

    let locate = |e: &rhai::EvalAltResult| {
        sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .locate(e, &script_name)
    };
    // Everything a build script may call, for "did you mean" on a misspelt one: the
    // declarations here and the runtime API builders and closures get.
    {
        let mut runtime = engine::hardened(engine::Limits::default());
        super::api::register_runtime(&mut runtime);
        let mut names = super::error::function_names(&eng);
        names.extend(super::error::function_names(&runtime));
        sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_functions(names);
    }
    let mut ast = eng
        .compile(&text)
        .map_err(|e| LoadError::Script(locate(&e.into())))?;
    ast.set_source(script_name.as_str());
    sources
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .add_functions(ast.iter_functions().map(|f| f.name.to_string()));
    {
        let _budget = engine::begin(&limits);
        eng.run_ast(&ast)
            .map_err(|e| LoadError::Script(locate(&e)))?;
    }

    let mut st = decl.lock().unwrap_or_else(|p| p.into_inner());
    st.sealed = true;
    // Cross-references are checked once everything is declared, so order in the
    // script does not matter.
    for b in &st.builds {
        for s in &b.sources {
            if !st.sources.iter().any(|x| &x.name == s) {
                let known: Vec<&str> = st.sources.iter().map(|x| x.name.as_str()).collect();
                return Err(LoadError::Config(format!(
                    "{script_name}: build {:?} uses source {s:?}, which is not declared (declared: {})",
                    b.name,
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
    }
    if st.builds.is_empty() {
        return Err(LoadError::Config(format!(
            "{script_name}: declares no build; add build(\"name\", #{{ sources: [...], steps: [...] }})"
        )));
    }
    let unused: Vec<&String> = inputs
        .keys()
        .filter(|k| !st.vars.contains_key(*k))
        .collect();
    if !unused.is_empty() {
        tracing::warn!("variables set but not used by the script: {unused:?}");
    }
    let plan = Plan {
        script_name,
        script_sha256: hex::encode(Sha256::digest(text.as_bytes())),
        project,
        vars: std::mem::take(&mut st.vars),
        secrets: std::mem::take(&mut st.secrets),
        sources: std::mem::take(&mut st.sources),
        builds: std::mem::take(&mut st.builds),
    };
    drop(st);
    Ok(Program {
        plan: Arc::new(plan),
        ast: Arc::new(ast),
        library,
    })
}

/// A var file: a JSON object, or `key = value` lines (HCL-like `.pkrvars` subset;
/// values may be quoted; `#` starts a comment).
fn read_var_file(path: &Path) -> Result<Vec<(String, String)>, LoadError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LoadError::Config(format!("var file {}: {e}", path.display())))?;
    if text.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LoadError::Config(format!("var file {}: {e}", path.display())))?;
        let obj = v.as_object().ok_or_else(|| {
            LoadError::Config(format!(
                "var file {}: must be a JSON object",
                path.display()
            ))
        })?;
        return Ok(obj
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect());
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("//") {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| {
            LoadError::Config(format!(
                "{}:{}: expected key = value",
                path.display(),
                i + 1
            ))
        })?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(v);
        out.push((k.trim().to_string(), v.to_string()));
    }
    Ok(out)
}
