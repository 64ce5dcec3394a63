//! `kiln build --dry-run`: for each selected build, what the builder would create,
//! which steps would come from the step cache and which would run, and each step's
//! grants. Touches nothing: files are read (to compute the same cache keys a build
//! would) through the grants with a disabled audit log, the cache is only looked at,
//! and no digest is remembered.

use std::fmt::Write as _;

use rhai::{Dynamic, Scope as RhaiScope};

use super::stepkey;
use crate::caps::{AuditLog, Broker, Holder};
use crate::host::vm_cache::VmCache;
use crate::plan::{BuildSpec, SourceSpec, StepKind, pair_name};
use crate::script::{Program, engine};
use crate::ui::Redactor;

/// What one step would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepFate {
    /// Restored from the cache (`memory`: without a boot).
    Cached {
        memory: bool,
    },
    Run,
    /// A `breakpoint()`: pauses on a terminal.
    Pause,
    /// `only`/`except` leave it out for this source.
    NotForThisSource,
}

#[derive(Debug, Clone)]
pub struct StepPlan {
    pub index: usize,
    pub describe: String,
    pub grants: String,
    pub fate: StepFate,
}

#[derive(Debug, Clone)]
pub struct BuildPlan {
    pub name: String,
    pub builder: String,
    pub resources: Vec<String>,
    /// Where the step cache would be looked up, or why there is none.
    pub cache: Result<String, String>,
    pub steps: Vec<StepPlan>,
    pub post: Vec<String>,
}

/// The plan of every selected build. `no_cache` is `--no-cache`.
pub fn plan(program: &Program, selected: &[String], no_cache: bool) -> Vec<BuildPlan> {
    let plan = &program.plan;
    let broker = Broker::new("dry-run", AuditLog::disabled(Redactor::default()));
    let eng = engine::hardened(engine::Limits::default());
    let mut out = Vec::new();
    for (b, s) in plan.pairs() {
        let name = pair_name(b, s);
        if !selected.contains(&name) {
            continue;
        }
        out.push(plan_one(program, &broker, &eng, b, s, &name, no_cache));
    }
    out
}

fn plan_one(
    program: &Program,
    broker: &std::sync::Arc<Broker>,
    eng: &rhai::Engine,
    b: &BuildSpec,
    s: &SourceSpec,
    name: &str,
    no_cache: bool,
) -> BuildPlan {
    let plan = &program.plan;
    let ast = program.library.ast(eng, &s.script).ok();
    let resources = ast
        .as_ref()
        .filter(|a| a.iter_functions().any(|f| f.name == "resources"))
        .and_then(|a| {
            eng.call_fn::<rhai::Array>(
                &mut RhaiScope::new(),
                a,
                "resources",
                (Dynamic::from_map(s.config.clone()),),
            )
            .ok()
        })
        .map(|a| {
            a.into_iter()
                .map(|v| v.to_string().replace("<source>", &s.name))
                .collect()
        })
        .unwrap_or_default();
    let decl = ast
        .as_ref()
        .map(|a| stepkey::cache_decl(eng, a, &s.config))
        .transpose()
        .map(Option::flatten);
    let builder_scope = broker.scope(
        name,
        &format!("builder {}", s.builder),
        Holder::Source,
        s.grants.clone(),
    );
    // The same keys a build computes: base (builder, config, input digests), then
    // each step as declared.
    let (cache, store, keys) = match decl {
        _ if no_cache => (Err("off (--no-cache)".to_string()), None, Vec::new()),
        Err(e) => (Err(e), None, Vec::new()),
        Ok(None) => (
            Err(format!(
                "none: the {} builder keeps no step states",
                s.builder
            )),
            None,
            Vec::new(),
        ),
        Ok(Some(d)) if d.store != "vm" => (
            Err(format!(
                "the {:?} store (not looked up by a dry run)",
                d.store
            )),
            None,
            Vec::new(),
        ),
        Ok(Some(d)) => {
            match stepkey::input_digests(&plan.project, &builder_scope, &d.inputs, false) {
                Err(e) => (
                    Err(format!("cannot compute its keys: {e}")),
                    None,
                    Vec::new(),
                ),
                Ok(extra) => {
                    // As `ctx.step_cache_base(part)` adds it during a build: one line.
                    let base = stepkey::base_key(s, &format!("{extra}\n"));
                    let keys = stepkey::chain(
                        &plan.project,
                        broker,
                        name,
                        s,
                        &b.steps,
                        &base,
                        &plan.script_sha256,
                    );
                    match VmCache::default_location() {
                        Ok(root) => (
                            Ok(root.display().to_string()),
                            VmCache::open_existing(root),
                            keys,
                        ),
                        Err(e) => (Err(e.to_string()), None, keys),
                    }
                }
            }
        }
    };
    let mut prefix_holds = store.is_some();
    let mut steps = Vec::new();
    for (i, step) in b.steps.iter().enumerate() {
        let index = i + 1;
        let fate = if !step.applies_to(&s.name) {
            StepFate::NotForThisSource
        } else if matches!(step.kind, StepKind::Breakpoint { .. }) {
            StepFate::Pause
        } else {
            let key = keys.iter().find(|(n, _)| *n == index).map(|(_, k)| k);
            match (prefix_holds, key, &store) {
                (true, Some(k), Some(st)) => match st.lookup(k) {
                    Ok(e) => StepFate::Cached {
                        memory: e.memory.is_some(),
                    },
                    Err(_) => {
                        prefix_holds = false;
                        StepFate::Run
                    }
                },
                _ => {
                    prefix_holds = false;
                    StepFate::Run
                }
            }
        };
        steps.push(StepPlan {
            index,
            describe: step.describe(),
            grants: step.grants.summary(),
            fate,
        });
    }
    BuildPlan {
        name: name.to_string(),
        builder: s.builder.clone(),
        resources,
        cache,
        steps,
        post: b.post.iter().map(|p| p.name.clone()).collect(),
    }
}

/// The plans as text.
pub fn render(plans: &[BuildPlan]) -> String {
    let mut out = String::new();
    for p in plans {
        let _ = writeln!(
            out,
            "{} ({} builder): dry run, nothing is touched",
            p.name, p.builder
        );
        if p.resources.is_empty() {
            let _ = writeln!(out, "  resources: (the builder does not say)");
        } else {
            let _ = writeln!(out, "  resources the builder would create:");
            for r in &p.resources {
                let _ = writeln!(out, "    - {r}");
            }
        }
        match &p.cache {
            Ok(dir) => {
                let _ = writeln!(out, "  step cache: {dir}");
            }
            Err(why) => {
                let _ = writeln!(out, "  step cache: {why}");
            }
        }
        let _ = writeln!(out, "  steps:");
        let total = p.steps.len();
        for s in &p.steps {
            let fate = match &s.fate {
                StepFate::Cached { memory: true } => "from the cache (memory state: no boot)",
                StepFate::Cached { memory: false } => "from the cache (disk state: boots)",
                StepFate::Run => "would run",
                StepFate::Pause => "pauses (on a terminal)",
                StepFate::NotForThisSource => "skipped (only/except)",
            };
            let _ = writeln!(
                out,
                "    {}/{total} {}: {fate}\n         grants: {}",
                s.index,
                s.describe,
                if s.grants.is_empty() {
                    "(none)"
                } else {
                    &s.grants
                }
            );
        }
        if !p.post.is_empty() {
            let _ = writeln!(out, "  post-processors: {}", p.post.join(" -> "));
        }
    }
    out
}

/// The plans as one JSON value (`--machine-readable`).
pub fn to_json(plans: &[BuildPlan]) -> serde_json::Value {
    serde_json::Value::Array(
        plans
            .iter()
            .map(|p| {
                serde_json::json!({
                    "build": p.name,
                    "builder": p.builder,
                    "resources": p.resources,
                    "cache": match &p.cache { Ok(d) => serde_json::json!({ "dir": d }), Err(w) => serde_json::json!({ "off": w }) },
                    "steps": p.steps.iter().map(|s| serde_json::json!({
                        "index": s.index,
                        "step": s.describe,
                        "grants": s.grants,
                        "fate": match &s.fate {
                            StepFate::Cached { memory: true } => "cached-memory",
                            StepFate::Cached { memory: false } => "cached-disk",
                            StepFate::Run => "run",
                            StepFate::Pause => "pause",
                            StepFate::NotForThisSource => "skipped",
                        },
                    })).collect::<Vec<_>>(),
                    "post": p.post,
                })
            })
            .collect(),
    )
}
