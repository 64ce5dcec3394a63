//! The machine as a Rhai script sees it (`|m| { m.exec(...) }`, and what
//! `ctx.connect` returns): a few lines per method over [`MachineCap`].

use std::sync::Arc;

use rhai::{Dynamic, Engine, EvalAltResult, Map, NativeCallContext};

use super::{DEFAULT_READ_LIMIT, MachineCap};
use crate::context::check_exit;
use crate::context::{BuildRt, StepError};
use crate::host::machine::ExecOutput;
use crate::script::api::block;
use crate::script::error::{runtime_err, step_error};
use crate::script::value;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// A machine as a script sees it.
#[derive(Clone)]
pub struct MachineObj {
    pub cap: MachineCap,
    pub rt: Arc<BuildRt>,
}

impl MachineObj {
    pub fn new(cap: MachineCap, rt: Arc<BuildRt>) -> Self {
        MachineObj { cap, rt }
    }
}

/// Runs a facade call from Rhai: cancellation ends it early, and failures keep their
/// kind (a lost connection stays a disconnect for `expect_disconnect`).
fn call<T>(
    ctx: &NativeCallContext,
    m: &MachineObj,
    fut: impl std::future::Future<Output = Result<T, super::CallError>>,
) -> RhaiResult<T> {
    block(ctx, &m.rt, fut)?.map_err(|e| step_error(StepError::from(e), ctx.call_position()))
}

fn exec_map(out: &ExecOutput) -> Map {
    let mut m = Map::new();
    m.insert("exit_code".into(), i64::from(out.exit_code).into());
    m.insert(
        "stdout".into(),
        String::from_utf8_lossy(&out.stdout).into_owned().into(),
    );
    m.insert(
        "stderr".into(),
        String::from_utf8_lossy(&out.stderr).into_owned().into(),
    );
    m
}

fn exec(ctx: &NativeCallContext, m: &MachineObj, cmd: &str, opts: Map) -> RhaiResult<Map> {
    value::check_keys(&opts, &["check", "env"], "exec options")
        .map_err(|e| runtime_err(e, ctx.call_position()))?;
    let check = match opts.get("check") {
        Some(v) => value::bool(v, "check").map_err(|e| runtime_err(e, ctx.call_position()))?,
        None => true,
    };
    let mut env = Vec::new();
    if let Some(v) = opts.get("env") {
        let map = v
            .clone()
            .try_cast::<Map>()
            .ok_or_else(|| runtime_err("env must be a map", ctx.call_position()))?;
        for (k, v) in map {
            env.push((k.to_string(), value::resolve_secret_text(&v)));
        }
    }
    let out = call(ctx, m, m.cap.exec(cmd, &env))?;
    if check {
        check_exit(&out, &[0]).map_err(|e| {
            let e = match e {
                StepError::Exit { code, message } => StepError::Exit {
                    code,
                    message: format!("`{cmd}`: {message}"),
                },
                other => other,
            };
            step_error(e, ctx.call_position())
        })?;
    }
    Ok(exec_map(&out))
}

fn upload(ctx: &NativeCallContext, m: &MachineObj, src: &str, dest: &str) -> RhaiResult<()> {
    super::transfer::upload(&m.rt, &m.cap, src, dest)
        .map_err(|e| step_error(e, ctx.call_position()))
}

fn write_file(
    ctx: &NativeCallContext,
    m: &MachineObj,
    dest: &str,
    content: &str,
    mode: Option<i64>,
) -> RhaiResult<()> {
    let mode = match mode {
        None => None,
        Some(v) => Some(
            u32::try_from(v)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| runtime_err("mode must be like 0o644", ctx.call_position()))?,
        ),
    };
    call(ctx, m, m.cap.write_file(dest, content.as_bytes(), mode))
}

fn read_file(ctx: &NativeCallContext, m: &MachineObj, path: &str) -> RhaiResult<String> {
    let bytes = call(ctx, m, m.cap.read_file(path, DEFAULT_READ_LIMIT))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn download(ctx: &NativeCallContext, m: &MachineObj, remote: &str, local: &str) -> RhaiResult<i64> {
    let mut file =
        m.rt.plan
            .project
            .create(m.cap.scope(), local)
            .map_err(|e| runtime_err(e.to_string(), ctx.call_position()))?;
    let n = call(ctx, m, m.cap.download(remote, local, &mut file, &|_| {}))?;
    Ok(i64::try_from(n).unwrap_or(i64::MAX))
}

fn facts(ctx: &NativeCallContext, m: &MachineObj) -> RhaiResult<Map> {
    let facts = call(ctx, m, m.cap.facts())?;
    Ok(facts
        .into_iter()
        .map(|(k, v)| (k.into(), Dynamic::from(v)))
        .collect())
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<MachineObj>("Machine");
    // A host call's failure caught with `try { } catch (e)` reads as its message
    // (`${e}`), not as the Rust type's name.
    engine.register_type_with_name::<StepError>("StepError");
    engine.register_fn("to_string", |e: &mut StepError| e.to_string());
    engine.register_fn("to_debug", |e: &mut StepError| e.to_string());
    engine.register_fn(
        "exec",
        |ctx: NativeCallContext, m: &mut MachineObj, cmd: &str| exec(&ctx, m, cmd, Map::new()),
    );
    engine.register_fn(
        "exec",
        |ctx: NativeCallContext, m: &mut MachineObj, cmd: &str, opts: Map| exec(&ctx, m, cmd, opts),
    );
    engine.register_fn(
        "upload",
        |ctx: NativeCallContext, m: &mut MachineObj, src: &str, dest: &str| {
            upload(&ctx, m, src, dest)
        },
    );
    engine.register_fn(
        "write_file",
        |ctx: NativeCallContext, m: &mut MachineObj, dest: &str, content: &str| {
            write_file(&ctx, m, dest, content, None)
        },
    );
    engine.register_fn(
        "write_file",
        |ctx: NativeCallContext, m: &mut MachineObj, dest: &str, content: &str, mode: i64| {
            write_file(&ctx, m, dest, content, Some(mode))
        },
    );
    engine.register_fn(
        "read_file",
        |ctx: NativeCallContext, m: &mut MachineObj, path: &str| read_file(&ctx, m, path),
    );
    engine.register_fn(
        "download",
        |ctx: NativeCallContext, m: &mut MachineObj, remote: &str, local: &str| {
            download(&ctx, m, remote, local)
        },
    );
    engine.register_fn("facts", |ctx: NativeCallContext, m: &mut MachineObj| {
        facts(&ctx, m)
    });
    engine.register_get("target", |m: &mut MachineObj| m.cap.target());
}
