//! Running a build's provisioning steps on a machine: shell, file, closure and WASM
//! steps, with Packer's per-step options (timeout, retries, pause, only/except, env,
//! expect_disconnect). Runs on the build's blocking (Rhai) thread. Every machine call
//! goes through the step's own [`MachineCap`] (its scope, its grants); failures are
//! [`StepError`] variants, matched on, never parsed from text.

use std::sync::Arc;
use std::time::Instant;

use rhai::{Dynamic, Engine};

use crate::caps::machine::MachineCap;
use crate::caps::machine::rhai::MachineObj;
use crate::caps::{FsError, Holder};
use crate::context::{BuildRt, Provision, StepError, check_exit};
use crate::host::machine::{StepInfo, StepStart};
use crate::plan::{EnvValue, StepKind, StepSpec};
use crate::script::Program;

/// The runner's side of `ctx.provision(m)`: the build's steps, with the program that
/// declared them (closure steps call back into it).
pub struct Steps {
    pub program: Arc<Program>,
}

impl Provision for Steps {
    fn provision(
        &self,
        rt: &Arc<BuildRt>,
        engine: &Engine,
        machine: &MachineCap,
    ) -> Result<(), String> {
        run_steps(rt, &self.program, engine, machine)
    }
}

/// Runs every step of the build that applies to this source, in order.
fn run_steps(
    rt: &Arc<BuildRt>,
    program: &Program,
    engine: &Engine,
    machine: &MachineCap,
) -> Result<(), String> {
    let steps: Vec<(usize, &StepSpec)> = rt
        .build
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.applies_to(&rt.source.name))
        .collect();
    let total = rt.build.steps.len();
    let mut key = super::stepkey::base_key(&rt.source, &rt.step_cache_base());
    for (i, step) in steps {
        let n = i + 1;
        let name = format!("step {n}/{total} ({})", step.describe());
        let scope = rt
            .broker
            .scope(
                &rt.label,
                &format!("step {n} {}", step.kind_name()),
                Holder::Step,
                step.grants.clone(),
            )
            .with_stop_reason(BuildRt::stop_reason_of(Arc::downgrade(rt)));
        let cap = machine.for_scope(scope, resolve_env(step));
        // A key that cannot be computed (a file the step names is missing) matches no
        // cache entry, and neither does any later one; the step then fails as it runs.
        key = super::stepkey::step_key(
            &key,
            step,
            &rt.plan.project,
            cap.scope(),
            &rt.plan.script_sha256,
        )
        .unwrap_or_else(|_| uuid::Uuid::new_v4().to_string());
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
                continue;
            }
            Err(e) => return Err(format!("{name}: preparing the machine failed: {e}")),
        }
        if let Some(p) = step.options.pause_before {
            rt.ui.say(
                &rt.label,
                &format!("Pausing {} before {name}...", humantime::format_duration(p)),
            );
            rt.block_on(tokio::time::sleep(p))?;
        }
        let outcome = run_attempts(rt, program, engine, &cap, step, n, &name);
        if let Err(e) = rt.block_on(cap.end_step(&info, outcome.is_ok()))? {
            if outcome.is_ok() {
                return Err(format!(
                    "{name}: finishing the step on the machine failed: {e}"
                ));
            }
            tracing::warn!(step = %name, "end of a failed step: {e}");
        }
        outcome?;
    }
    Ok(())
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
