//! Running a build's provisioning steps on a machine: shell, file, closure and WASM
//! steps, with Packer's per-step options (timeout, retries, pause, only/except, env,
//! expect_disconnect). Runs on the build's blocking (Rhai) thread. Every machine call
//! goes through the step's own [`MachineCap`] (its scope, its grants); failures are
//! [`StepError`] variants, matched on, never parsed from text.

use std::sync::Arc;
use std::time::Instant;

use rhai::{Dynamic, Engine};

use super::pause::{Choice, Moment, Pauser, Reload};
use super::run_history::{How, Recorder, RunRecord, StepRecord};
use crate::caps::machine::MachineCap;
use crate::caps::machine::rhai::MachineObj;
use crate::caps::{FsError, Holder};
use crate::context::{BuildRt, PlannedStep, Provision, StepError, check_exit};
use crate::host::machine::{StepInfo, StepStart};
use crate::plan::{EnvValue, StepKind, StepSpec};
use crate::script::Program;

/// The runner's side of `ctx.provision(m)`: the build's steps, with the program that
/// declared them (closure steps call back into it), and how the run pauses, records
/// and resumes.
pub struct Steps {
    pub program: Arc<Program>,
    pub interaction: Arc<Interaction>,
    /// Where finished steps are written down (for `--resume`).
    pub record: Option<Arc<Recorder>>,
    /// `--resume`: the earlier run's record.
    pub resume: Option<Arc<RunRecord>>,
}

/// How a run may stop for the user (issue 14: `--on-error=ask`, `--debug`,
/// `breakpoint()`).
#[derive(Default)]
pub struct Interaction {
    pub on_error_ask: bool,
    pub debug: bool,
    /// The terminal's menu; `None` without a terminal (then nothing pauses).
    pub pauser: Option<Pauser>,
    /// Re-reads the build script for `[r]etry`.
    pub reload: Option<Reload>,
}

impl Provision for Steps {
    fn provision(
        &self,
        rt: &Arc<BuildRt>,
        engine: &Engine,
        machine: &MachineCap,
    ) -> Result<(), String> {
        self.run_steps(rt, engine, machine)
    }

    fn step_keys(&self, rt: &Arc<BuildRt>) -> Vec<PlannedStep> {
        let base = super::stepkey::base_key(&rt.source, &rt.step_cache_base());
        super::stepkey::chain(
            &rt.plan.project,
            &rt.broker,
            &rt.label,
            &rt.source,
            &rt.build.steps,
            &base,
            &self.program.plan.script_sha256,
        )
        .into_iter()
        .map(|(index, key)| PlannedStep {
            index,
            key,
            describe: rt.build.steps[index - 1].describe(),
        })
        .collect()
    }
}

/// The scope a step runs in: its own grants.
fn step_scope(rt: &Arc<BuildRt>, n: usize, step: &StepSpec) -> crate::caps::Scope {
    rt.broker
        .scope(
            &rt.label,
            &format!("step {n} {}", step.kind_name()),
            Holder::Step,
            step.grants.clone(),
        )
        .with_stop_reason(BuildRt::stop_reason_of(Arc::downgrade(rt)))
}

/// The key after `prev` for `step`. A key that cannot be computed (a file the step
/// names is missing) matches no cache entry, and neither does any later one; the step
/// then fails as it runs.
fn next_key(
    rt: &BuildRt,
    prev: &str,
    step: &StepSpec,
    scope: &crate::caps::Scope,
    script_sha256: &str,
) -> String {
    super::stepkey::step_key(prev, step, &rt.plan.project, scope, script_sha256)
        .unwrap_or_else(|_| uuid::Uuid::new_v4().simple().to_string())
}

/// What the user chose at a pause, for the step loop.
enum Next {
    /// Run the step (or go on past the breakpoint).
    Go,
    /// The script was re-read: start this step over with the new declarations.
    Reloaded(Arc<Program>, Vec<StepSpec>),
    Stop(String),
}

impl Steps {
    /// Runs every step of the build that applies to this source, in order.
    fn run_steps(
        &self,
        rt: &Arc<BuildRt>,
        engine: &Engine,
        machine: &MachineCap,
    ) -> Result<(), String> {
        let mut program = self.program.clone();
        let mut steps: Vec<StepSpec> = rt.build.steps.clone();
        let mut key = super::stepkey::base_key(&rt.source, &rt.step_cache_base());
        let pauser = self.interaction.pauser.as_ref();
        let mut debug = self.interaction.debug && pauser.is_some();
        // An earlier run's finished steps, for machines that keep their state
        // themselves (a cached VM restores its own).
        let earlier: Vec<StepRecord> = self
            .resume
            .as_ref()
            .and_then(|r| r.builds.get(&rt.label))
            .filter(|b| b.resumable())
            .map(|b| b.steps.clone())
            .unwrap_or_default();
        let earlier_run = self
            .resume
            .as_ref()
            .and_then(|r| r.builds.get(&rt.label))
            .map(|b| b.run.clone())
            .unwrap_or_default();
        let mut resuming = !earlier.is_empty() && !machine.wants_step_keys();
        // After the user continued past a failure, later steps are not "done" as
        // declared: a resume must start before that step.
        let mut recording = true;
        let mut i = 0;
        while i < steps.len() {
            let step = steps[i].clone();
            if !step.applies_to(&rt.source.name) {
                i += 1;
                continue;
            }
            let n = i + 1;
            let total = steps.len();
            let name = format!("step {n}/{total} ({})", step.describe());
            let cap = machine.for_scope(step_scope(rt, n, &step), resolve_env(&step));
            let prev_key = key.clone();
            key = next_key(rt, &key, &step, cap.scope(), &program.plan.script_sha256);

            if let StepKind::Breakpoint { note } = &step.kind {
                let Some(p) = pauser else {
                    rt.ui.say(
                        &rt.label,
                        &format!("Breakpoint at {name}: no terminal to pause on; going on"),
                    );
                    i += 1;
                    continue;
                };
                match self.pause(
                    rt,
                    p,
                    &cap,
                    Moment::Breakpoint { step: &name, note },
                    &mut debug,
                ) {
                    Next::Go => i += 1,
                    Next::Reloaded(p, s) => {
                        (program, steps) = (p, s);
                        key = prev_key;
                    }
                    Next::Stop(why) => return Err(format!("{name}: {why}")),
                }
                continue;
            }
            let info = StepInfo {
                index: n,
                total,
                describe: step.describe(),
                kind: step.kind_name(),
                key: key.clone(),
                network: step.grants.holds(&crate::caps::net::SPEC),
            };
            match rt.block_on(cap.begin_step(&info))? {
                Ok(StepStart::Run) => {}
                Ok(StepStart::Skip { reason }) => {
                    rt.ui.say(&rt.label, &reason);
                    rt.ui.event(
                        "step-end",
                        serde_json::json!({
                            "build": rt.label, "step": n, "kind": step.kind_name(), "attempt": 0,
                            "ok": true, "cached": true, "seconds": 0.0,
                        }),
                    );
                    if recording {
                        self.note_done(rt, n, &key, How::Cached);
                    }
                    i += 1;
                    continue;
                }
                Err(e) => return Err(format!("{name}: preparing the machine failed: {e}")),
            }
            if resuming {
                if earlier.iter().any(|r| r.index == n && r.key == key) {
                    rt.ui.say(
                        &rt.label,
                        &format!("Skipping {name}: done in run {earlier_run} (--resume)"),
                    );
                    if recording {
                        self.note_done(rt, n, &key, How::Resumed);
                    }
                    i += 1;
                    continue;
                }
                resuming = false;
                rt.ui.say(&rt.label, &format!("Resuming at {name}"));
            }
            if debug && let Some(p) = pauser {
                match self.pause(rt, p, &cap, Moment::Before { step: &name }, &mut debug) {
                    Next::Go => {}
                    Next::Reloaded(p, s) => {
                        // The step began on the machine (a container was started for
                        // it); it is begun again with its new declaration.
                        if let Err(e) = rt.block_on(cap.end_step(&info, false))? {
                            tracing::warn!(step = %name, "ending a step before its reload: {e}");
                        }
                        (program, steps) = (p, s);
                        key = prev_key;
                        continue;
                    }
                    Next::Stop(why) => return Err(format!("{name}: {why}")),
                }
            }
            if let Some(p) = step.options.pause_before {
                rt.ui.say(
                    &rt.label,
                    &format!("Pausing {} before {name}...", humantime::format_duration(p)),
                );
                rt.block_on(tokio::time::sleep(p))?;
            }
            let outcome = run_attempts(rt, &program, engine, &cap, &step, n, &name);
            // A failed step that pauses keeps its machine state until the menu is left
            // (`[s]hell` in a container is in the failed step's container).
            let pause_on = pauser.filter(|_| {
                outcome.is_err() && self.interaction.on_error_ask && !rt.cancel.is_cancelled()
            });
            if pause_on.is_none()
                && let Err(e) = rt.block_on(cap.end_step(&info, outcome.is_ok()))?
            {
                if outcome.is_ok() {
                    return Err(format!(
                        "{name}: finishing the step on the machine failed: {e}"
                    ));
                }
                tracing::warn!(step = %name, "end of a failed step: {e}");
            }
            let error = match outcome {
                Ok(()) => {
                    if recording {
                        self.note_done(rt, n, &key, How::Ran);
                    }
                    i += 1;
                    continue;
                }
                Err(e) => e,
            };
            let Some(p) = pause_on else {
                return Err(error);
            };
            let next = self.pause(
                rt,
                p,
                &cap,
                Moment::Failed {
                    step: &name,
                    error: &error,
                },
                &mut debug,
            );
            if let Err(e) = rt.block_on(cap.end_step(&info, false))? {
                tracing::warn!(step = %name, "end of a failed step: {e}");
            }
            match next {
                Next::Go => {
                    // [c]ontinue: as if the step had succeeded, but nothing from here on
                    // is what the script declares.
                    rt.block_on(cap.step_cache_off("the user continued past a failed step"))?;
                    if let Some(r) = &self.record {
                        r.step_not_done(&rt.label, n);
                    }
                    recording = false;
                    rt.ui.warn(
                        &rt.label,
                        &format!("Going on after the failed {name}; later steps are not cached"),
                    );
                    i += 1;
                }
                Next::Reloaded(p, s) => {
                    // The failed attempt may have changed the machine: what the retry
                    // leaves is not a clean result of the steps, so it is not cached.
                    rt.block_on(cap.step_cache_off("a step was retried by hand"))?;
                    (program, steps) = (p, s);
                    key = prev_key;
                }
                Next::Stop(why) => return Err(format!("{error} ({why})")),
            }
        }
        Ok(())
    }

    fn note_done(&self, rt: &BuildRt, n: usize, key: &str, how: How) {
        if let Some(r) = &self.record {
            r.step_done(&rt.label, n, key, how);
        }
    }

    /// The pause menu until the user picks something that moves the build.
    fn pause(
        &self,
        rt: &Arc<BuildRt>,
        p: &Pauser,
        cap: &MachineCap,
        moment: Moment,
        debug: &mut bool,
    ) -> Next {
        let login = cap.login_command();
        loop {
            match p.ask(rt, moment, login.as_deref()) {
                Choice::Next => return Next::Go,
                Choice::Continue => {
                    if !matches!(moment, Moment::Failed { .. }) {
                        *debug = false;
                    }
                    return Next::Go;
                }
                Choice::Shell => {
                    if let Err(e) = super::pause::shell(rt, cap) {
                        rt.ui.error(&rt.label, &e);
                    }
                }
                Choice::Retry => match self.reload(rt) {
                    Ok((prog, steps)) => {
                        rt.ui.say(&rt.label, "Re-read the build script");
                        return Next::Reloaded(prog, steps);
                    }
                    Err(e) => rt
                        .ui
                        .error(&rt.label, &format!("cannot re-read the script: {e}")),
                },
                Choice::Abort => {
                    rt.keep_on_failure();
                    return Next::Stop("aborted at the user's request; everything is kept".into());
                }
                Choice::CleanUp => return Next::Stop("stopped at the user's request".into()),
            }
        }
    }

    /// The build's steps from the script as it is now.
    fn reload(&self, rt: &BuildRt) -> Result<(Arc<Program>, Vec<StepSpec>), String> {
        let reload = self
            .interaction
            .reload
            .as_ref()
            .ok_or_else(|| "this run cannot re-read its script".to_string())?;
        let program = reload()?;
        let build = program
            .plan
            .builds
            .iter()
            .find(|b| b.name == rt.build.name)
            .ok_or_else(|| format!("the script no longer declares build {:?}", rt.build.name))?;
        let steps = build.steps.clone();
        Ok((Arc::new(program), steps))
    }
}

/// One step with its retries and `expect_disconnect`.
fn run_attempts(
    rt: &Arc<BuildRt>,
    program: &Program,
    engine: &Engine,
    cap: &MachineCap,
    step: &StepSpec,
    n: usize,
    name: &str,
) -> Result<(), String> {
    let attempts = step.options.max_retries + 1;
    {
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let result = {
                let _guard = rt.begin_step(step.options.timeout);
                run_one(rt, program, engine, cap, step)
            };
            rt.ui.event(
                "step-end",
                serde_json::json!({
                    "build": rt.label, "step": n, "kind": step.kind_name(), "attempt": attempt,
                    "ok": result.is_ok(), "seconds": started.elapsed().as_secs_f64(),
                }),
            );
            match result {
                Ok(()) => {
                    tracing::debug!(step = %name, elapsed = ?started.elapsed(), "step done");
                    break;
                }
                Err(e) if e.is_disconnect() && step.options.expect_disconnect => {
                    rt.ui.say(
                        &rt.label,
                        "Machine disconnected as expected; reconnecting...",
                    );
                    rt.block_on(cap.reconnect())?.map_err(|e| {
                        format!("{name}: reconnecting after the expected disconnect failed: {e}")
                    })?;
                    break;
                }
                // A denial does not go away by trying again.
                Err(e @ StepError::Denied(_)) => return Err(format!("{name} failed: {e}")),
                Err(e) => {
                    if rt.cancel.is_cancelled() || attempt >= attempts {
                        return Err(format!("{name} failed: {e}"));
                    }
                    rt.ui.warn(
                        &rt.label,
                        &format!(
                            "{name} failed: {e}; retrying (attempt {} of {attempts})",
                            attempt + 1
                        ),
                    );
                    attempt += 1;
                    rt.block_on(tokio::time::sleep(std::time::Duration::from_secs(2)))?;
                    if e.is_disconnect() {
                        let _ = rt.block_on(cap.reconnect());
                    }
                }
            }
        }
    }
    Ok(())
}

fn run_one(
    rt: &Arc<BuildRt>,
    program: &Program,
    engine: &Engine,
    cap: &MachineCap,
    step: &StepSpec,
) -> Result<(), StepError> {
    match &step.kind {
        StepKind::Shell { inline } => {
            rt.ui.say(
                &rt.label,
                &format!("Provisioning with shell ({} commands)", inline.len()),
            );
            let mut script = String::from("#!/bin/sh -e\n");
            for line in inline {
                script.push_str(line);
                script.push('\n');
            }
            run_script(rt, cap, step, script.as_bytes())
        }
        StepKind::ShellScript { path } => {
            rt.ui.say(
                &rt.label,
                &format!("Provisioning with shell script: {path}"),
            );
            let bytes = rt
                .plan
                .project
                .read_to_vec(cap.scope(), path, 64 << 20)
                .map_err(fs_error)?;
            run_script(rt, cap, step, &bytes)
        }
        StepKind::File { src, dest } => crate::caps::machine::transfer::upload(rt, cap, src, dest),
        StepKind::Closure { .. } => run_closure(rt, program, engine, cap, step),
        StepKind::Wasm { path, config_json } => {
            rt.ui
                .say(&rt.label, &format!("Running WASM provisioner {path}"));
            super::wasm_step::run(rt, cap, step, path, config_json)
        }
        // The step loop handles breakpoints; one never reaches a machine.
        StepKind::Breakpoint { .. } => Ok(()),
    }
}

fn fs_error(e: FsError) -> StepError {
    match e {
        FsError::Denied(d) => StepError::Denied(d),
        other => StepError::Failed(other.to_string()),
    }
}

/// The step's `env`, with secrets resolved (inside the host, at the last moment).
pub fn resolve_env(step: &StepSpec) -> Vec<(String, String)> {
    step.options
        .env
        .iter()
        .map(|(k, v)| {
            let v = match v {
                EnvValue::Plain(s) => s.clone(),
                EnvValue::Secret(s) => s.value().to_string(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// Uploads a script to a temp path, runs it, removes it (as Packer's shell
/// provisioner does, so long scripts don't hit command-line limits).
fn run_script(
    rt: &Arc<BuildRt>,
    cap: &MachineCap,
    step: &StepSpec,
    script: &[u8],
) -> Result<(), StepError> {
    let remote = format!("/tmp/kiln-shell-{}.sh", uuid::Uuid::new_v4().simple());
    rt.block_on(cap.write_file(&remote, script, Some(0o700)))
        .map_err(StepError::Cancelled)??;
    // Run in the background with its pid on record, so an interrupted or timed-out
    // build can kill it; the undo sits on the cleanup stack until the script ends.
    let pidf = format!("{remote}.pid");
    let cmd = format!(
        "{remote} & pid=$!; echo $pid > {pidf}; wait $pid; rc=$?; rm -f {remote} {pidf}; exit $rc"
    );
    let killer = cap.clone();
    let undo_cmd = format!(
        // Children first: once the script dies they are re-parented and lost to -P.
        "p=$(cat {pidf} 2>/dev/null); [ -n \"$p\" ] && {{ pkill -TERM -P $p; kill -TERM $p; }} 2>/dev/null; rm -f {remote} {pidf}"
    );
    let undo_label = format!("stop {remote}");
    // On record before it starts: a SIGKILLed kiln leaves it to `kiln cleanup`.
    let record = rt
        .cleanup
        .ledger()
        .and_then(|l| l.record_remote_process(&cap.target(), &remote));
    let id = rt.cleanup.push_tracked(
        format!("remote script {remote} (process and file)"),
        record,
        move || async move {
            killer.exec_quiet(&undo_cmd, &undo_label).await?;
            Ok(())
        },
    );
    let result = rt
        .block_on(cap.exec_audited(&cmd, &[], &format!("run {remote}")))
        .map_err(StepError::Cancelled)
        .and_then(|r| r.map_err(StepError::from));
    match &result {
        Ok(_) => {
            rt.cleanup.release(id);
        }
        // The whole build is stopping: its unwind kills the script.
        Err(_) if rt.cancel.is_cancelled() => {}
        // A step timeout or a lost command: stop the script now, before a retry.
        Err(e) => {
            if let Some(r) = rt.handle.block_on(rt.cleanup.undo_now(id)) {
                tracing::debug!(what = %r.what, error = ?r.error, "stopped remote script");
                // A lost connection usually takes the way to stop it with it; say so
                // rather than let the user believe nothing runs there any more. (An
                // expected disconnect, a reboot, is the script's own doing.)
                let expected = step.options.expect_disconnect && e.is_disconnect();
                if let (Some(why), false) = (&r.error, expected) {
                    rt.ui.warn(
                        &rt.label,
                        &format!(
                            "could not stop {}: {why}; it may still be running on {}",
                            r.what,
                            cap.target()
                        ),
                    );
                }
            }
        }
    }
    check_exit(&result?, &step.options.valid_exit_codes)
}

fn run_closure(
    rt: &Arc<BuildRt>,
    program: &Program,
    engine: &Engine,
    cap: &MachineCap,
    step: &StepSpec,
) -> Result<(), StepError> {
    let StepKind::Closure { func } = &step.kind else {
        return Ok(());
    };
    rt.ui.say(&rt.label, "Running closure step");
    let m = MachineObj::new(cap.clone(), rt.clone());
    let r: Result<Dynamic, _> = {
        let _budget = crate::script::engine::begin(&crate::script::engine::Limits::default());
        func.call(engine, &program.ast, (m,))
    };
    r.map(|_| ()).map_err(|e| {
        // The failure's kind survives the trip through Rhai; its text gets the
        // script position.
        let kind = crate::script::error::step_error_of(&e);
        let located = program.locate(&e).to_string();
        match kind {
            Some(StepError::Disconnected(_)) => StepError::Disconnected(located),
            Some(StepError::Cancelled(_)) => StepError::Cancelled(located),
            Some(StepError::Exit { code, .. }) => StepError::Exit {
                code,
                message: located,
            },
            _ => match &e.as_ref() {
                rhai::EvalAltResult::ErrorTerminated(reason, _)
                    if reason.is::<crate::script::engine::LimitHit>() =>
                {
                    StepError::Failed(located)
                }
                rhai::EvalAltResult::ErrorTerminated(reason, _) => {
                    StepError::Cancelled(reason.to_string())
                }
                _ => StepError::Failed(located),
            },
        }
    })
}
