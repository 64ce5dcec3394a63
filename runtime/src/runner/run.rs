//! Running the selected builds: concurrently (bounded by `--parallel-builds`), each
//! on its own blocking thread for Rhai, each with its own cleanup stack that unwinds
//! on failure, timeout or interrupt.

use std::sync::Arc;
use std::time::Instant;

use rhai::{Dynamic, Map, Scope as RhaiScope};

use super::pause::Reloader;
use super::run_history::{self as record, Recorder, RunRecord, Status};
use super::steps::{Interaction, Steps};
use crate::caps::{Broker, Grants, Holder};
use crate::cleanup::CleanupReport;
use crate::context::{BuildRt, CacheMode, Cancel, StepControl};
use crate::plan::{Plan, pair_name};
use crate::script::api::Ctx;
use crate::script::{Program, declare, engine, resolver::KilnResolver};
use crate::ui::Ui;
use crate::wasm::WasmRuntime;

/// What to do with resources when a build fails (Packer's `-on-error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    #[default]
    Cleanup,
    Abort,
    /// Pause with a menu (retry, shell, continue, abort, clean up); without a
    /// terminal, as `Cleanup`.
    Ask,
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub only: Vec<String>,
    pub except: Vec<String>,
    /// 0 = no limit.
    pub parallel_builds: usize,
    pub on_error: OnError,
    pub force: bool,
    /// Pause before every step (`--debug`).
    pub debug: bool,
    /// The step cache (`--no-cache`: off).
    pub cache: CacheMode,
    /// `--resume`: the earlier run to continue.
    pub resume: Option<Arc<RunRecord>>,
    /// `--post-only`: run only the post-processors, on the last success's artifact.
    pub post_only: bool,
    /// Re-reads the script, for `[r]etry` at a pause.
    pub reload: Option<Reloader>,
    /// `--no-cache`: backends that restore cached step results run every step.
    pub no_cache: bool,
}

/// The result of one (build, source) pair.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    pub name: String,
    pub artifact: Option<serde_json::Value>,
    pub error: Option<String>,
    pub cleaned: Vec<CleanupReport>,
    pub kept: Vec<String>,
    pub seconds: f64,
}

/// `*` matches any run of characters; everything else is literal.
fn glob(pattern: &str, name: &str) -> bool {
    fn rec(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => rec(&p[1..], n) || (!n.is_empty() && rec(p, &n[1..])),
            (Some(a), Some(b)) if a == b => rec(&p[1..], &n[1..]),
            _ => false,
        }
    }
    rec(pattern.as_bytes(), name.as_bytes())
}

/// A pattern selects `build.source` if it matches it, or the build name, or the
/// source name (Packer users write `-only=web` as often as `-only=web.qemu`).
fn selects(pattern: &str, build: &str, source: &str) -> bool {
    let full = format!("{build}.{source}");
    glob(pattern, &full) || glob(pattern, build) || glob(pattern, source)
}

/// The `build.source` names `--only` / `--except` leave.
pub fn select(plan: &Plan, opts: &RunOptions) -> Result<Vec<String>, String> {
    let all: Vec<(String, String)> = plan
        .pairs()
        .iter()
        .map(|(b, s)| (b.name.clone(), s.name.clone()))
        .collect();
    for p in opts.only.iter().chain(&opts.except) {
        if !all.iter().any(|(b, s)| selects(p, b, s)) {
            let names: Vec<String> = all.iter().map(|(b, s)| format!("{b}.{s}")).collect();
            return Err(format!(
                "{p:?} matches no build; builds are: {}",
                names.join(", ")
            ));
        }
    }
    Ok(all
        .into_iter()
        .filter(|(b, s)| opts.only.is_empty() || opts.only.iter().any(|p| selects(p, b, s)))
        .filter(|(b, s)| !opts.except.iter().any(|p| selects(p, b, s)))
        .map(|(b, s)| format!("{b}.{s}"))
        .collect())
}

/// Runs the selected builds and returns one outcome each, in plan order.
pub async fn run_builds(
    program: Arc<Program>,
    ui: Ui,
    broker: Arc<Broker>,
    opts: RunOptions,
    cancel: Cancel,
    selected: Vec<String>,
) -> Vec<BuildOutcome> {
    let limit = if opts.parallel_builds == 0 {
        selected.len().max(1)
    } else {
        opts.parallel_builds
    };
    let sem = Arc::new(tokio::sync::Semaphore::new(limit));
    let wasm = Arc::new(WasmRuntime::new());
    let plan = program.plan.clone();
    let interactive = crate::ui::terminal::is_interactive() && ui.mode() == crate::ui::Mode::Human;
    let pauses = opts.on_error == OnError::Ask || opts.debug || has_breakpoints(&plan, &selected);
    if pauses && !interactive {
        ui.plain(
            "==> No terminal: builds will not pause (--on-error=ask behaves as --on-error=cleanup; --debug and breakpoint() do nothing)",
        );
    }
    let recorder = (!opts.post_only).then(|| {
        Arc::new(Recorder::new(
            plan.project.path(),
            broker.run_id(),
            &plan.script_name,
            record::last_run(plan.project.path()),
        ))
    });
    // secret_file() read its files while the script was evaluated, before this run's
    // audit log existed: those reads are its first lines.
    let script = broker.scope(
        "script",
        "the build script",
        Holder::Step,
        Grants::default(),
    );
    for path in plan.secrets.iter().filter_map(|s| s.strip_prefix("file:")) {
        script.event(
            "read",
            &format!("{path}: secret_file"),
            "ok (read while the script was evaluated)",
            0.0,
        );
    }
    let steps = Arc::new(Steps {
        program: program.clone(),
        interaction: Arc::new(Interaction {
            on_error_ask: opts.on_error == OnError::Ask,
            debug: opts.debug,
            pauser: interactive.then(super::pause::Pauser::default),
            reload: opts.reload.as_ref().map(|r| r.0.clone()),
        }),
        record: recorder.clone(),
        resume: opts.resume.clone(),
    });
    let mut tasks = Vec::new();
    let mut done_before = Vec::new();
    for (b, s) in plan.pairs() {
        let name = pair_name(b, s);
        if !selected.contains(&name) {
            continue;
        }
        // --resume: a build the earlier run finished stands as it is.
        if let Some(r) = &opts.resume
            && r.builds.get(&name).is_some_and(|b| !b.resumable())
        {
            ui.say(
                &name,
                &format!("Finished in run {}; nothing to resume", r.run),
            );
            let artifact = record::last_success(plan.project.path(), &name).map(|s| s.artifact);
            done_before.push(BuildOutcome {
                name,
                artifact,
                error: None,
                cleaned: vec![],
                kept: vec![],
                seconds: 0.0,
            });
            continue;
        }
        let rt = BuildRt::new(
            b.clone(),
            s.clone(),
            plan.clone(),
            ui.clone(),
            broker.clone(),
            cancel.child(),
            opts.force,
            opts.no_cache,
            wasm.clone(),
            steps.clone(),
        );
        rt.set_step_control(StepControl {
            cache: opts.cache,
            stop_at: interactive.then(|| first_breakpoint(b, &s.name)).flatten(),
        });
        // The permit is taken here, before the spawn, so builds start in plan order:
        // spawned tasks are polled in any order on a multi-threaded runtime, and with
        // `--parallel-builds 1` a later build that reached the semaphore first ran first
        // (seen as build 15 of 30 starting before build 0). The semaphore is never
        // closed, so `ok()` only drops an error that cannot happen.
        let permit = sem.clone().acquire_owned().await.ok();
        let on_error = opts.on_error;
        let program = program.clone();
        let recorder = recorder.clone();
        let post_only = opts.post_only;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            run_one(rt, program, on_error, recorder, post_only).await
        }));
    }
    let mut out = done_before;
    for t in tasks {
        match t.await {
            Ok(o) => out.push(o),
            Err(e) => out.push(BuildOutcome {
                name: "?".into(),
                artifact: None,
                error: Some(format!("internal error: build task failed: {e}")),
                cleaned: vec![],
                kept: vec![],
                seconds: 0.0,
            }),
        }
    }
    out
}

/// Whether a selected build has a `breakpoint()` step.
fn has_breakpoints(plan: &Plan, selected: &[String]) -> bool {
    plan.pairs()
        .iter()
        .any(|(b, s)| selected.contains(&pair_name(b, s)) && first_breakpoint(b, &s.name).is_some())
}

/// The 1-based index of the build's first breakpoint for `source`.
fn first_breakpoint(b: &crate::plan::BuildSpec, source: &str) -> Option<usize> {
    b.steps
        .iter()
        .position(|s| {
            matches!(s.kind, crate::plan::StepKind::Breakpoint { .. }) && s.applies_to(source)
        })
        .map(|i| i + 1)
}

async fn run_one(
    rt: Arc<BuildRt>,
    program: Arc<Program>,
    on_error: OnError,
    recorder: Option<Arc<Recorder>>,
    post_only: bool,
) -> BuildOutcome {
    let started = Instant::now();
    let label = rt.label.clone();
    if let Some(reason) = rt.cancel.reason() {
        return BuildOutcome {
            name: label,
            artifact: None,
            error: Some(format!("not started: {reason}")),
            cleaned: vec![],
            kept: vec![],
            seconds: 0.0,
        };
    }
    rt.ui.say(
        &label,
        &format!("Starting build with the {} builder", rt.source.builder),
    );
    rt.ui
        .event("build-start", serde_json::json!({ "build": label }));
    if let Some(r) = &recorder {
        r.build_started(&label);
    }
    let worker = rt.clone();
    let result = tokio::task::spawn_blocking(move || run_script(&worker, &program, post_only))
        .await
        .unwrap_or_else(|e| Err(format!("internal error: {e}")));
    // Time at a pause menu is the user's, not the build's.
    let seconds = started.elapsed().saturating_sub(rt.paused()).as_secs_f64();
    let (artifact, error) = match result {
        Ok((builder_artifact, a)) => {
            if let Some(r) = &recorder {
                r.success(&label, &builder_artifact, &a);
            }
            (Some(a), None)
        }
        Err(e) => (None, Some(e)),
    };
    let keep = on_error == OnError::Abort || rt.keeps_on_failure();
    if let Some(r) = &recorder {
        let status = match &error {
            None => Status::Ok,
            Some(_) if keep => Status::Aborted,
            Some(_) if rt.cancel.is_cancelled() => Status::Interrupted,
            Some(_) => Status::Failed,
        };
        r.build_finished(&label, status, error.as_deref());
    }
    let mut cleaned = Vec::new();
    let mut kept = Vec::new();
    if let Some(e) = &error {
        rt.ui.error(
            &label,
            &format!("Build '{label}' errored after {}: {e}", fmt_secs(seconds)),
        );
        if keep {
            kept = rt.cleanup.keep_all();
            if !kept.is_empty() {
                rt.ui.say(&label, "Keeping resources for debugging:");
                for k in &kept {
                    rt.ui.message(&label, &format!("kept: {k}"));
                }
                rt.ui.message(
                    &label,
                    &format!(
                        "remove them with `kiln cleanup --run {}`; `kiln build --resume` continues from the last good step",
                        rt.broker.run_id()
                    ),
                );
            }
        } else if !rt.cleanup.is_empty() {
            rt.ui.say(&label, "Cleaning up...");
            cleaned = rt.cleanup.unwind().await;
            for r in &cleaned {
                match &r.error {
                    None => rt.ui.message(&label, &format!("removed: {}", r.what)),
                    Some(e) => rt
                        .ui
                        .error(&label, &format!("could not remove {}: {e}", r.what)),
                }
            }
        }
    } else {
        // Success: artifacts were released by their builders; what remains is
        // scaffolding (sessions, temp files) that goes quietly.
        cleaned = rt.cleanup.unwind().await;
        for r in &cleaned {
            if let Some(e) = &r.error {
                rt.ui
                    .warn(&label, &format!("could not remove {}: {e}", r.what));
            }
        }
        rt.ui.say(
            &label,
            &format!("Build finished after {}", fmt_secs(seconds)),
        );
    }
    rt.ui.event(
        "build-end",
        serde_json::json!({
            "build": label,
            "ok": error.is_none(),
            "error": error,
            "seconds": seconds,
            "cleaned": cleaned.iter().map(|r| &r.what).collect::<Vec<_>>(),
            "kept": kept,
            "artifact": artifact,
        }),
    );
    BuildOutcome {
        name: label,
        artifact,
        error,
        cleaned,
        kept,
        seconds,
    }
}

pub fn fmt_secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        let whole = std::time::Duration::from_secs_f64(s.max(0.0)).as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// The Rhai part of one build: the builder's `run(cfg, ctx)`, then each
/// post-processor's `run(cfg, artifact, ctx)`. Runs on a blocking thread.
/// Returns the builder's artifact and the last post-processor's.
fn run_script(
    rt: &Arc<BuildRt>,
    program: &Program,
    post_only: bool,
) -> Result<(serde_json::Value, serde_json::Value), String> {
    let engine = build_engine(rt, program);
    let library = program.library.clone();
    let locate = |e: &rhai::EvalAltResult, file: &str| -> String {
        if let rhai::EvalAltResult::ErrorTerminated(reason, _) = e {
            let r = reason.to_string();
            return if r.is_empty() { "cancelled".into() } else { r };
        }
        // A step failure's message already says which step and where.
        if let Some(msg) = crate::script::error::as_step_failure(e) {
            return msg;
        }
        let mut inner = e;
        while let rhai::EvalAltResult::ErrorInFunctionCall(_, _, i, _) = inner {
            inner = i;
        }
        if let rhai::EvalAltResult::ErrorTerminated(reason, _) = inner {
            return reason.to_string();
        }
        library
            .sources()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .locate(e, file)
            .to_string()
    };
    let ast = library
        .ast(&engine, &rt.source.script)
        .map_err(|e| locate(&e, &rt.source.script.to_string()))?;
    if post_only {
        let artifact = last_builder_artifact(rt)?;
        let builder = crate::script::value::to_json(&Dynamic::from_map(artifact.clone()))?;
        let last = run_post(rt, &engine, &library, artifact, &locate)?;
        return Ok((builder, last));
    }
    // `registry_artifact(...)` values become the artifacts they name (or fail the build).
    let config = crate::caps::registry::rhai::resolve_source(rt)?;
    // The builder's step cache inputs (its base image) start the steps' cache keys.
    if rt.step_control().cache != CacheMode::Off
        && let Some(decl) = super::stepkey::cache_decl(&engine, &ast, &config)?
    {
        let part =
            super::stepkey::input_digests(&rt.plan.project, &rt.builder_scope, &decl.inputs, true)?;
        rt.add_step_cache_base(&part);
    }
    let ctx = Ctx {
        rt: rt.clone(),
        scope: rt.builder_scope.clone(),
    };
    // A failure inside the builder's own script also names the user's source() line,
    // so the user knows which of their declarations to fix.
    let _budget = engine::begin(&engine::Limits::default());
    let artifact: Map = engine
        .call_fn(
            &mut RhaiScope::new(),
            &ast,
            "run",
            (Dynamic::from_map(config), ctx),
        )
        .map_err(|e| {
            let msg = locate(&e, &rt.source.script.to_string());
            if crate::script::error::as_step_failure(&e).is_some()
                || matches!(e.as_ref(), rhai::EvalAltResult::ErrorTerminated(..))
            {
                msg
            } else {
                format!(
                    "source {:?} ({}) failed in its builder {}: {msg}",
                    rt.source.name, rt.source.declared_at, rt.source.script
                )
            }
        })?;
    let builder = crate::script::value::to_json(&Dynamic::from_map(artifact.clone()))?;
    let last = run_post(rt, &engine, &library, artifact, &locate)?;
    Ok((builder, last))
}

/// The builder's artifact of this build's last success (`--post-only`), with its files
/// still there.
fn last_builder_artifact(rt: &BuildRt) -> Result<Map, String> {
    let s = record::last_success(rt.plan.project.path(), &rt.label).ok_or_else(|| {
        format!(
            "--post-only: {} has no successful run to take the artifact from; build it first",
            rt.label
        )
    })?;
    rt.ui.say(
        &rt.label,
        &format!(
            "Post-processing the artifact of run {} ({})",
            s.run, s.finished
        ),
    );
    if let Some(files) = s.builder_artifact["files"].as_array() {
        for f in files.iter().filter_map(|f| f.as_str()) {
            if !rt.plan.project.path().join(f).exists() {
                return Err(format!(
                    "--post-only: {f}, a file of the artifact of run {}, is gone; rebuild",
                    s.run
                ));
            }
        }
    }
    crate::script::value::from_json(&s.builder_artifact)
        .try_cast::<Map>()
        .ok_or_else(|| "--post-only: the recorded artifact is not a map".to_string())
}

/// Runs the build's post-processors in order on `artifact`.
fn run_post(
    rt: &Arc<BuildRt>,
    engine: &rhai::Engine,
    library: &crate::script::library::Library,
    mut artifact: Map,
    locate: &dyn Fn(&rhai::EvalAltResult, &str) -> String,
) -> Result<serde_json::Value, String> {
    for post in &rt.build.post {
        rt.ui
            .say(&rt.label, &format!("Running post-processor: {}", post.name));
        let ast = library
            .ast(engine, &post.script)
            .map_err(|e| locate(&e, &post.script.to_string()))?;
        let scope = rt
            .broker
            .scope(
                &rt.label,
                &format!("post-processor {}", post.name),
                Holder::PostProcessor,
                own_grants(
                    engine,
                    &ast,
                    &post.config,
                    &rt.build.name,
                    post_grants(&artifact, post),
                )
                .map_err(|e| format!("post-processor {}: {e}", post.name))?,
            )
            .with_stop_reason(BuildRt::stop_reason_of(Arc::downgrade(rt)));
        let ctx = Ctx {
            rt: rt.clone(),
            scope,
        };
        let _budget = engine::begin(&engine::Limits::default());
        artifact = engine
            .call_fn(
                &mut RhaiScope::new(),
                &ast,
                "run",
                (
                    Dynamic::from_map(post.config.clone()),
                    Dynamic::from_map(artifact),
                    ctx,
                ),
            )
            .map_err(|e| {
                format!(
                    "post-processor {}: {}",
                    post.name,
                    locate(&e, &post.script.to_string())
                )
            })?;
    }
    crate::script::value::to_json(&Dynamic::from_map(artifact))
}

/// A post-processor may write where the artifact's files are and where its `output`
/// points, and hold what it declared (`PostSpec::grants`), nothing else.
fn post_grants(artifact: &Map, post: &crate::plan::PostSpec) -> Grants {
    let config = &post.config;
    let mut dirs: Vec<String> = Vec::new();
    let mut add = |p: &str| {
        let d = std::path::Path::new(p)
            .parent()
            .map(|d| d.to_string_lossy().into_owned())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| ".".into());
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    };
    if let Some(files) = artifact
        .get("files")
        .and_then(|f| f.clone().into_array().ok())
    {
        for f in files {
            if let Ok(s) = f.into_string() {
                add(&s);
            }
        }
    }
    if let Some(out) = config.get("output").filter(|v| v.is_string()) {
        add(&out.to_string());
    }
    let mut g = Grants::for_post_processor(&dirs);
    g.extend(&post.grants);
    g
}

/// Adds what a post-processor's script declares it needs (`fn grants(cfg, build)`, an
/// allow map; the registry post-processor holds the bucket it records into).
fn own_grants(
    engine: &rhai::Engine,
    ast: &rhai::AST,
    config: &Map,
    build: &str,
    mut grants: Grants,
) -> Result<Grants, String> {
    if !ast
        .iter_functions()
        .any(|f| f.name == "grants" && f.params.len() == 2)
    {
        return Ok(grants);
    }
    let allow: Map = engine
        .call_fn(
            &mut RhaiScope::new(),
            ast,
            "grants",
            (
                Dynamic::from_map(config.clone()),
                Dynamic::from(build.to_string()),
            ),
        )
        .map_err(|e| format!("grants(cfg, build) failed: {e}"))?;
    grants
        .apply_allow(&allow)
        .map_err(|e| format!("grants(cfg, build) returned {e}"))?;
    Ok(grants)
}

/// The engine one build runs on: hardened, unlimited operations but cancellable,
/// the library resolver, sealed declarations and the runtime API.
fn build_engine(rt: &Arc<BuildRt>, program: &Program) -> rhai::Engine {
    let mut eng = engine::hardened(engine::Limits {
        max_operations: 0,
        ..engine::Limits::default()
    });
    eng.set_module_resolver(KilnResolver::new(
        rt.plan.project.clone(),
        program.library.sources().clone(),
    ));
    let decl = Arc::new(std::sync::Mutex::new(declare::DeclState {
        sealed: true,
        inputs: Default::default(),
        vars: Default::default(),
        secrets: Default::default(),
        sources: Default::default(),
        builds: Default::default(),
        redactor: rt.ui.redactor().clone(),
        library: program.library.clone(),
    }));
    declare::register(&mut eng, decl);
    crate::script::api::register_runtime(&mut eng);
    let stop = rt.clone();
    engine::on_cancel(&mut eng, Arc::new(move || stop.stop_reason()));
    let ui = rt.ui.clone();
    let label = rt.label.clone();
    eng.on_print(move |s| ui.message(&label, s));
    eng
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_and_selection() {
        assert!(glob("*.web", "a.web"));
        assert!(glob("a*", "a.web"));
        assert!(!glob("b*", "a.web"));
        assert!(selects("web", "web", "qemu"));
        assert!(selects("qemu", "web", "qemu"));
        assert!(selects("web.qemu", "web", "qemu"));
        assert!(!selects("web.x", "web", "qemu"));
    }
}
