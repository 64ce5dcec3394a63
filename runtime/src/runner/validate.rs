//! `kiln validate`'s checks beyond evaluating the script: every file a builder config
//! or a step names exists and is readable under that source's or step's grants, and
//! every WASM component imports only what its step is granted. Each problem points at
//! the user's `source(...)` or step call (file:line:col) and says the fix, so a build
//! does not fail minutes in on what could have been seen now. Touches nothing: files
//! are opened through the grants with a disabled audit log, never written.

use rhai::{Dynamic, Map, Scope as RhaiScope};

use crate::caps::fs::expand_home;
use crate::caps::{AuditLog, Broker, FsError, Holder, Scope};
use crate::plan::{SourceSpec, StepKind, StepSpec};
use crate::script::{Program, engine, value};
use crate::ui::Redactor;
use crate::wasm::MAX_COMPONENT_BYTES;

/// Largest key or known_hosts file read while checking.
const MAX_KEY_FILE: u64 = 1 << 20;

/// Every problem found, each a line for the user.
pub fn check(program: &Program) -> Vec<String> {
    let broker = Broker::new("validate", AuditLog::disabled(Redactor::default()));
    let mut problems = Vec::new();
    let plan = &program.plan;
    let eng = engine::hardened(engine::Limits::declaration());
    for source in &plan.sources {
        let scope = broker.scope(
            &source.name,
            &format!("source {}", source.name),
            Holder::Source,
            source.grants.clone(),
        );
        check_grants(
            program,
            &source.grants,
            &format!("{}: source {:?}", source.declared_at, source.name),
            &mut problems,
        );
        check_source(program, &eng, source, &scope, &mut problems);
    }
    for b in &plan.builds {
        for (i, step) in b.steps.iter().enumerate() {
            let scope = broker.scope(
                &b.name,
                &format!("step {}", i + 1),
                Holder::Step,
                step.grants.clone(),
            );
            check_grants(
                program,
                &step.grants,
                &format!("{}: build {:?} step {}", step.declared_at, b.name, i + 1),
                &mut problems,
            );
            check_step(program, &b.name, i + 1, step, &scope, &mut problems);
        }
    }
    problems
}

/// Path grants kiln refuses whatever they say (`/` under another name, `/proc`).
fn check_grants(
    program: &Program,
    grants: &crate::caps::Grants,
    at: &str,
    problems: &mut Vec<String>,
) {
    use crate::caps::fs::{READ, WRITE, resolve_grant};
    for spec in [&READ, &WRITE] {
        for g in grants.paths(spec) {
            if let Err(FsError::Refused { reason, .. }) = resolve_grant(&program.plan.project, g) {
                problems.push(format!(
                    "{at}: allow.{} {:?} is refused: {reason}",
                    spec.key, g.written
                ));
            }
        }
    }
}

/// Why `path` cannot be used, in kiln's words, or `None` if it can.
fn file_problem(
    program: &Program,
    scope: &Scope,
    path: &str,
    want_dir: Option<bool>,
    holder: &str,
) -> Option<String> {
    let project = &program.plan.project;
    match project.is_dir(scope, path) {
        Ok(is_dir) => match want_dir {
            Some(true) if !is_dir => Some(format!("{path:?} is a file, not a directory")),
            Some(false) if is_dir => Some(format!("{path:?} is a directory, not a file")),
            _ => None,
        },
        Err(FsError::Denied(d)) => Some(format!(
            "{path:?} is outside the directories {holder} may read: grant its directory with {} in {}, or move it into the project",
            d.allow, d.hint
        )),
        Err(e) if e.is_not_found() => Some(format!("{path:?} does not exist")),
        Err(e) => Some(format!("{path:?} cannot be read: {e}")),
    }
}

fn check_source(
    program: &Program,
    eng: &rhai::Engine,
    source: &SourceSpec,
    scope: &Scope,
    problems: &mut Vec<String>,
) {
    let at = &source.declared_at;
    let name = &source.name;
    // Key and known_hosts files, for every builder with an ssh map.
    if let Some(ssh) = source.config.get("ssh").filter(|v| v.is_map())
        && let Ok(cfg) = value::ssh_config(ssh)
    {
        for f in cfg.credential_files() {
            let path = expand_home(&f.path);
            let problem = match program.plan.project.read_to_vec(scope, &path, MAX_KEY_FILE) {
                Ok(_) => None,
                Err(FsError::Denied(d)) => Some(format!(
                    "{:?} is outside the directories this source may read: grant its directory with {} in the source's options, or move it into the project (and keep it out of version control)",
                    f.path, d.allow
                )),
                Err(e) if e.is_not_found() => Some(format!("{:?} does not exist", f.path)),
                Err(e) => Some(format!("{:?} cannot be read: {e}", f.path)),
            };
            if let Some(p) = problem {
                problems.push(format!("{at}: source {name:?}: ssh {}: {p}", f.what));
            }
        }
    }
    // What the builder says its config names (`fn inputs(cfg)`).
    let Ok(ast) = program.library.ast(eng, &source.script) else {
        return;
    };
    if !ast.iter_functions().any(|f| f.name == "inputs") {
        return;
    }
    let _budget = engine::begin(&engine::Limits::declaration());
    let inputs: Map = match eng.call_fn(
        &mut RhaiScope::new(),
        &ast,
        "inputs",
        (Dynamic::from_map(source.config.clone()),),
    ) {
        Ok(m) => m,
        Err(e) => {
            problems.push(format!(
                "{at}: source {name:?}: {}: inputs(cfg) failed: {e}",
                source.script
            ));
            return;
        }
    };
    let mut keys: Vec<_> = inputs.into_iter().collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    for (option, v) in keys {
        // One path or URL, or a list of them (mirrors).
        let values: Vec<String> = match v.clone().into_array() {
            Ok(list) => list
                .into_iter()
                .filter_map(|x| x.into_string().ok())
                .collect(),
            Err(_) => v.into_string().into_iter().collect(),
        };
        for path in values {
            // URLs: their hosts must be granted (`net`); file:// URLs are checked when
            // they are fetched, through the same read grants as paths.
            if path.contains("://") {
                if path.starts_with("file://") {
                    continue;
                }
                match crate::caps::net::fetch::missing_grants(scope, &path) {
                    Ok(missing) => {
                        for allow in missing {
                            problems.push(format!(
                                "{at}: source {name:?}: {option}: {} needs {allow} in the source's options",
                                kiln_fetch::redact_url(&path)
                            ));
                        }
                    }
                    Err(e) => problems.push(format!("{at}: source {name:?}: {option}: {e}")),
                }
                continue;
            }
            if let Some(p) = file_problem(program, scope, &path, None, "this source") {
                problems.push(format!("{at}: source {name:?}: {option}: {p}"));
            }
        }
    }
}

fn check_step(
    program: &Program,
    build: &str,
    n: usize,
    step: &StepSpec,
    scope: &Scope,
    problems: &mut Vec<String>,
) {
    let at = &step.declared_at;
    let what = format!("build {build:?} step {n} ({})", step.describe());
    let path = match &step.kind {
        StepKind::ShellScript { path } => Some((path, Some(false))),
        StepKind::File { src, .. } => Some((src, None)),
        StepKind::Wasm { path, .. } => Some((path, Some(false))),
        _ => None,
    };
    if let Some((path, want_dir)) = path {
        // A WASM module is read by the build script itself, under the project grant.
        let loader;
        let scope = if matches!(step.kind, StepKind::Wasm { .. }) {
            loader = scope.with_step(
                scope.step(),
                Holder::Step,
                crate::caps::Grants::read_only("."),
            );
            &loader
        } else {
            scope
        };
        if let Some(p) = file_problem(program, scope, path, want_dir, "this step") {
            problems.push(format!("{at}: {what}: {p}"));
            return;
        }
    }
    if let StepKind::Wasm { path, .. } = &step.kind {
        check_component(program, path, step, &format!("{at}: {what}"), problems);
    }
}

/// A component's imports against its step's grants: the link check `kiln build` makes,
/// made now.
fn check_component(
    program: &Program,
    path: &str,
    step: &StepSpec,
    at: &str,
    problems: &mut Vec<String>,
) {
    let broker = Broker::new("validate", AuditLog::disabled(Redactor::default()));
    let loader = broker.scope(
        "validate",
        "loading",
        Holder::Step,
        crate::caps::Grants::read_only("."),
    );
    let bytes = match program
        .plan
        .project
        .read_to_vec(&loader, path, MAX_COMPONENT_BYTES)
    {
        Ok(b) => b,
        Err(e) => {
            problems.push(format!("{at}: {e}"));
            return;
        }
    };
    let info = match crate::wasm::inspect(&bytes) {
        Ok(i) => i,
        Err(e) => {
            problems.push(format!("{at}: {path}: {e}"));
            return;
        }
    };
    for i in &info.unsupported {
        problems.push(format!(
            "{at}: {path} imports {i}, which kiln does not provide; no grant can make it link"
        ));
    }
    for spec in &info.needs {
        if !step.grants.holds(spec) {
            problems.push(format!(
                "{at}: {path} needs the `{}` capability ({}), which this step is not granted: add {} to the step's options",
                spec.key, spec.summary, spec.example
            ));
        }
    }
}
