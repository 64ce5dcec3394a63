//! Running a build's provisioning steps on a machine: shell, file, closure and WASM
//! steps, with Packer's per-step options (timeout, retries, pause, only/except, env,
//! expect_disconnect). Runs on the build's blocking (Rhai) thread.

use std::sync::Arc;
use std::time::Instant;

use rhai::{Dynamic, Engine};

use super::context::BuildRt;
use crate::caps::{Capability, Scope};
use crate::host::machine::{Machine, UploadPath};
use crate::host::ssh::{ExecOutput, SshError, Stream};
use crate::plan::{EnvValue, StepKind, StepSpec};
use crate::script::runtime::MachineObj;

/// A step failure, with whether the machine dropped the connection (for
/// `expect_disconnect`).
#[derive(Debug)]
pub struct StepFailure {
    pub message: String,
    pub disconnected: bool,
}

impl StepFailure {
    pub fn new(message: impl Into<String>) -> Self {
        StepFailure {
            message: message.into(),
            disconnected: false,
        }
    }
}

fn from_ssh(e: SshError) -> StepFailure {
    StepFailure {
        disconnected: e.is_disconnect(),
        message: e.to_string(),
    }
}

/// Runs every step of the build that applies to this source, in order.
pub fn run_steps(rt: &Arc<BuildRt>, engine: &Engine, machine: &Machine) -> Result<(), String> {
    let steps: Vec<(usize, &StepSpec)> = rt
        .build
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.applies_to(&rt.source.name))
        .collect();
    let total = rt.build.steps.len();
    for (i, step) in steps {
        let n = i + 1;
        let name = format!("step {n}/{total} ({})", step.describe());
        let scope = rt.broker.scope(
            &rt.label,
            &format!("step {n} {}", step.kind_name()),
            step.grants.clone(),
        );
        if let Some(p) = step.options.pause_before {
            rt.ui.say(
                &rt.label,
                &format!("Pausing {} before {name}...", humantime::format_duration(p)),
            );
            rt.block_on(tokio::time::sleep(p))?;
        }
        let attempts = step.options.max_retries + 1;
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let result = {
                let _guard = rt.begin_step(step.options.timeout);
                run_one(rt, engine, machine, &scope, step)
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
                Err(f) if f.disconnected && step.options.expect_disconnect => {
                    rt.ui.say(
                        &rt.label,
                        "Machine disconnected as expected; reconnecting...",
                    );
                    rt.block_on(machine.reconnect())?.map_err(|e| {
                        format!("{name}: reconnecting after the expected disconnect failed: {e}")
                    })?;
                    break;
                }
                Err(f) => {
                    if rt.cancel.is_cancelled() || attempt >= attempts {
                        return Err(format!("{name} failed: {}", f.message));
                    }
                    rt.ui.warn(
                        &rt.label,
                        &format!(
                            "{name} failed: {}; retrying (attempt {} of {attempts})",
                            f.message,
                            attempt + 1
                        ),
                    );
                    attempt += 1;
                    rt.block_on(tokio::time::sleep(std::time::Duration::from_secs(2)))?;
                    if f.disconnected {
                        let _ = rt.block_on(machine.reconnect());
                    }
                }
            }
        }
    }
    Ok(())
}

fn run_one(
    rt: &Arc<BuildRt>,
    engine: &Engine,
    machine: &Machine,
    scope: &Scope,
    step: &StepSpec,
) -> Result<(), StepFailure> {
    let env = resolve_env(step);
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
            run_script(rt, machine, scope, step, script.as_bytes(), &env)
        }
        StepKind::ShellScript { path } => {
            rt.ui.say(
                &rt.label,
                &format!("Provisioning with shell script: {path}"),
            );
            let bytes = rt
                .plan
                .project
                .read_to_vec(scope, path, 64 << 20)
                .map_err(|e| StepFailure::new(e.to_string()))?;
            run_script(rt, machine, scope, step, &bytes, &env)
        }
        StepKind::File { src, dest } => upload(rt, machine, scope, src, dest),
        StepKind::Closure { .. } => run_closure(rt, engine, machine, scope, step),
        StepKind::Wasm { path, config_json } => {
            rt.ui
                .say(&rt.label, &format!("Running WASM provisioner {path}"));
            super::wasm_step::run(rt, machine, scope, step, path, config_json)
                .map_err(StepFailure::new)
        }
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
    machine: &Machine,
    scope: &Scope,
    step: &StepSpec,
    script: &[u8],
    env: &[(String, String)],
) -> Result<(), StepFailure> {
    let remote = format!("/tmp/kiln-shell-{}.sh", uuid::Uuid::new_v4().simple());
    let session = rt.block_on(machine.session()).map_err(StepFailure::new)?;
    scope
        .check(&Capability::Machine, &format!("write {remote}"))
        .map_err(|e| StepFailure::new(e.to_string()))?;
    let written = rt
        .block_on(session.write_file(&remote, script, Some(0o700)))
        .map_err(StepFailure::new)?;
    scope.record(
        &Capability::Machine,
        &format!("write {remote}"),
        if written.is_ok() { "ok" } else { "error" },
        0.0,
    );
    written.map_err(from_ssh)?;
    // Run in the background with its pid on record, so an interrupted or timed-out
    // build can kill it; the undo sits on the cleanup stack until the script ends.
    let pidf = format!("{remote}.pid");
    let cmd = format!(
        "{remote} & pid=$!; echo $pid > {pidf}; wait $pid; rc=$?; rm -f {remote} {pidf}; exit $rc"
    );
    let killer = session.clone();
    let undo_cmd = format!(
        // Children first: once the script dies they are re-parented and lost to -P.
        "p=$(cat {pidf} 2>/dev/null); [ -n \"$p\" ] && {{ pkill -TERM -P $p; kill -TERM $p; }} 2>/dev/null; rm -f {remote} {pidf}"
    );
    let id = rt.cleanup.push(
        format!("remote script {remote} (process and file)"),
        move || async move {
            killer.exec(&undo_cmd, &[], &mut |_, _| {}).await?;
            Ok(())
        },
    );
    let result = exec(rt, machine, scope, &cmd, env, &format!("run {remote}"));
    match &result {
        Ok(_) => {
            rt.cleanup.release(id);
        }
        // The whole build is stopping: its unwind kills the script.
        Err(_) if rt.cancel.is_cancelled() => {}
        // A step timeout or a lost command: stop the script now, before a retry.
        Err(_) => {
            if let Some(r) = rt.handle.block_on(rt.cleanup.undo_now(id)) {
                tracing::debug!(what = %r.what, error = ?r.error, "stopped remote script");
            }
        }
    }
    check_exit(&result?, &step.options.valid_exit_codes)
}

pub fn check_exit(out: &ExecOutput, valid: &[i32]) -> Result<(), StepFailure> {
    if valid.contains(&out.exit_code) {
        return Ok(());
    }
    let mut msg = match &out.signal {
        Some(sig) => format!("command was killed by signal {sig}"),
        None => format!("command exited with status {}", out.exit_code),
    };
    let tail = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = tail.lines().rev().take(3).collect();
    if !tail.is_empty() {
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        msg.push_str(&format!(" (stderr: {})", tail.join(" | ")));
    }
    Err(StepFailure::new(msg))
}

/// One command on the machine, through the broker, streaming output to the UI.
pub fn exec(
    rt: &Arc<BuildRt>,
    machine: &Machine,
    scope: &Scope,
    command: &str,
    env: &[(String, String)],
    audit_as: &str,
) -> Result<ExecOutput, StepFailure> {
    let cap = Capability::Machine;
    scope
        .check(&cap, &format!("exec {audit_as}"))
        .map_err(|e| StepFailure::new(e.to_string()))?;
    let start = Instant::now();
    let label = rt.label.clone();
    let ui = rt.ui.clone();
    let result = rt.block_on(async {
        let session = machine.session().await;
        session
            .exec(command, env, &mut |stream, line| {
                let s = match stream {
                    Stream::Stdout => "stdout",
                    Stream::Stderr => "stderr",
                };
                ui.output(&label, s, line);
            })
            .await
    });
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let result = match result {
        Ok(r) => r,
        Err(reason) => {
            scope.record(
                &cap,
                &format!("exec {audit_as}"),
                &format!("cancelled: {reason}"),
                ms,
            );
            return Err(StepFailure::new(reason));
        }
    };
    match &result {
        Ok(out) => scope.record(
            &cap,
            &format!("exec {audit_as}"),
            &format!("ok (exit {})", out.exit_code),
            ms,
        ),
        Err(e) => scope.record(
            &cap,
            &format!("exec {audit_as}"),
            &format!("error: {e}"),
            ms,
        ),
    }
    result.map_err(from_ssh)
}

/// `file(src, dest)`: a file, or a directory tree, from the project to the machine.
pub fn upload(
    rt: &Arc<BuildRt>,
    machine: &Machine,
    scope: &Scope,
    src: &str,
    dest: &str,
) -> Result<(), StepFailure> {
    let project = &rt.plan.project;
    let is_dir = project
        .is_dir(scope, src)
        .map_err(|e| StepFailure::new(e.to_string()))?;
    scope
        .check(&Capability::Machine, &format!("upload {dest}"))
        .map_err(|e| StepFailure::new(e.to_string()))?;
    rt.ui.say(&rt.label, &format!("Uploading {src} => {dest}"));
    let start = Instant::now();
    let result = if is_dir {
        let dir = project
            .open_dir_read(scope, src)
            .map_err(|e| StepFailure::new(e.to_string()))?;
        let bar = rt.ui.progress(&rt.label, src, 0);
        let r = rt
            .block_on(async {
                let session = machine.session().await;
                let n = session.upload_tree(&dir, dest, &|n| bar.set(n)).await?;
                Ok((n, UploadPath::Ssh))
            })
            .map_err(StepFailure::new)?;
        bar.finish();
        r
    } else {
        let file = project
            .open_read(scope, src)
            .map_err(|e| StepFailure::new(e.to_string()))?;
        let meta = file.metadata().ok();
        let size = meta.as_ref().map_or(0, |m| m.len());
        let mode = {
            use cap_std::fs::PermissionsExt;
            meta.map(|m| m.permissions().mode() & 0o7777)
        };
        let bar = rt.ui.progress(&rt.label, src, size);
        let r = rt
            .block_on(async {
                machine
                    .upload_file(&file, dest, mode, &|n| bar.set(n))
                    .await
            })
            .map_err(StepFailure::new)?;
        bar.finish();
        r
    };
    let secs = start.elapsed().as_secs_f64();
    match &result {
        Ok((bytes, path)) => {
            let via = match path {
                UploadPath::Ssh => "",
                UploadPath::VirtioDisk => " via a virtio disk",
            };
            scope.record(
                &Capability::Machine,
                &format!("upload {src} => {dest}"),
                &format!("ok ({bytes} bytes{via})"),
                secs * 1000.0,
            );
            let rate = if secs > 0.0 {
                *bytes as f64 / secs / 1e6
            } else {
                0.0
            };
            rt.ui.message(
                &rt.label,
                &format!(
                    "Uploaded {} in {secs:.1}s ({rate:.1} MB/s){via}",
                    human_bytes(*bytes)
                ),
            );
        }
        Err(e) => scope.record(
            &Capability::Machine,
            &format!("upload {src} => {dest}"),
            &format!("error: {e}"),
            secs * 1000.0,
        ),
    }
    result.map(|_| ()).map_err(from_ssh)
}

fn run_closure(
    rt: &Arc<BuildRt>,
    engine: &Engine,
    machine: &Machine,
    scope: &Scope,
    step: &StepSpec,
) -> Result<(), StepFailure> {
    let StepKind::Closure { func } = &step.kind else {
        return Ok(());
    };
    rt.ui.say(&rt.label, "Running closure step");
    let m = MachineObj::new(
        machine.clone(),
        rt.clone(),
        scope.clone(),
        resolve_env(step),
    );
    let r: Result<Dynamic, _> = func.call(engine, &rt.plan.ast, (m,));
    r.map(|_| ()).map_err(|e| {
        let located = rt
            .plan
            .library
            .sources()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .locate(&e, &rt.plan.script_name);
        StepFailure {
            disconnected: located.message.contains("connection lost")
                || located.message.contains("disconnected"),
            message: located.to_string(),
        }
    })
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
