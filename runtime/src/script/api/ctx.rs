//! `ctx`: what a builder's or post-processor's `run(cfg, ctx)` gets: who is running,
//! the UI, `provision`, artifacts. Capability functions on `ctx` (`ctx.connect`,
//! `ctx.qemu_start`, `ctx.hash_file`, ...) are registered by their capabilities.

use std::sync::Arc;

use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, NativeCallContext};

use super::block;
use crate::caps::Scope;
use crate::caps::machine::rhai::MachineObj;
use crate::context::BuildRt;
use crate::script::error::runtime_err;
use crate::script::value;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// `ctx` in a builder's or post-processor's `run`.
#[derive(Clone)]
pub struct Ctx {
    pub rt: Arc<BuildRt>,
    pub scope: Scope,
}

/// Pure helpers available everywhere.
pub(super) fn register_pure(engine: &mut Engine) {
    engine.register_fn(
        "to_json",
        |ctx: NativeCallContext, v: Dynamic| -> RhaiResult<String> {
            value::to_json(&v)
                .map(|j| j.to_string())
                .map_err(|m| runtime_err(m, ctx.call_position()))
        },
    );
    engine.register_fn(
        "parse_json",
        |ctx: NativeCallContext, s: &str| -> RhaiResult<Dynamic> {
            let v: serde_json::Value = serde_json::from_str(s)
                .map_err(|e| runtime_err(format!("parse_json: {e}"), ctx.call_position()))?;
            Ok(value::from_json(&v))
        },
    );
    engine.register_fn("basename", |p: &str| {
        std::path::Path::new(p)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    engine.register_fn("dirname", |p: &str| {
        std::path::Path::new(p)
            .parent()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    engine.register_fn("shell_quote", |s: &str| {
        shell_escape::unix::escape(s.into()).into_owned()
    });
}

pub(super) fn register(engine: &mut Engine) {
    engine.register_get("build_name", |c: &mut Ctx| c.rt.build.name.clone());
    engine.register_get("source_name", |c: &mut Ctx| c.rt.source.name.clone());
    engine.register_get("name", |c: &mut Ctx| c.rt.label.clone());
    engine.register_get("builder_type", |c: &mut Ctx| c.rt.source.builder.clone());
    engine.register_get("run_uuid", |c: &mut Ctx| c.rt.broker.run_id().to_string());
    engine.register_get("force", |c: &mut Ctx| c.rt.force);
    engine.register_get("script_name", |c: &mut Ctx| c.rt.plan.script_name.clone());
    engine.register_get("script_sha256", |c: &mut Ctx| {
        c.rt.plan.script_sha256.clone()
    });
    engine.register_get("project_dir", |c: &mut Ctx| {
        c.rt.plan.project.path().display().to_string()
    });
    engine.register_get("audit_log", |c: &mut Ctx| {
        c.rt.broker
            .audit_log()
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    });
    engine.register_fn("build_time", |c: &mut Ctx| c.rt.started.unix_timestamp());
    engine.register_fn("now", |_: &mut Ctx| crate::caps::now_rfc3339_pub());

    // What the build's steps start from, for their cache keys (see runner::stepkey).
    engine.register_fn("step_cache_base", |c: &mut Ctx, part: &str| {
        c.rt.add_step_cache_base(part)
    });
    engine.register_fn("say", |c: &mut Ctx, msg: &str| {
        c.rt.ui.say(&c.rt.label, msg)
    });
    engine.register_fn("message", |c: &mut Ctx, msg: &str| {
        c.rt.ui.message(&c.rt.label, msg)
    });
    engine.register_fn("warn", |c: &mut Ctx, msg: &str| {
        c.rt.ui.warn(&c.rt.label, msg)
    });
    engine.register_fn(
        "sleep",
        |ctx: NativeCallContext, c: &mut Ctx, d: Dynamic| -> RhaiResult<()> {
            let d =
                value::duration(&d, "sleep").map_err(|m| runtime_err(m, ctx.call_position()))?;
            block(&ctx, &c.rt, tokio::time::sleep(d))
        },
    );

    engine.register_fn(
        "provision",
        |ctx: NativeCallContext, c: &mut Ctx, m: MachineObj| -> RhaiResult<()> {
            c.rt.provisioner
                .provision(&c.rt, ctx.engine(), &m.cap)
                .map_err(|msg| match c.rt.stop_reason() {
                    Some(reason) if c.rt.cancel.is_cancelled() => Box::new(
                        EvalAltResult::ErrorTerminated(Dynamic::from(reason), ctx.call_position()),
                    ),
                    _ => crate::script::error::step_failed(msg, ctx.call_position()),
                })
        },
    );
    engine.register_fn(
        "artifact",
        |ctx: NativeCallContext, c: &mut Ctx, spec: Map| -> RhaiResult<Map> {
            value::check_keys(&spec, &["id", "files", "description"], "artifact")
                .map_err(|m| runtime_err(m, ctx.call_position()))?;
            let mut a = spec;
            a.entry("id".into())
                .or_insert_with(|| Dynamic::from(String::new()));
            a.entry("files".into())
                .or_insert_with(|| Dynamic::from(Array::new()));
            a.insert("builder_type".into(), c.rt.source.builder.clone().into());
            a.insert("build_name".into(), c.rt.label.clone().into());
            Ok(a)
        },
    );

    engine.register_fn(
        "manifest_append",
        |ctx: NativeCallContext, c: &mut Ctx, path: &str, entry: Map| -> RhaiResult<()> {
            crate::artifact::manifest::append(
                &c.rt.plan.project,
                &c.scope,
                path,
                &Dynamic::from_map(entry),
                c.rt.broker.run_id(),
            )
            .map_err(|m| runtime_err(m, ctx.call_position()))
        },
    );
    engine.register_fn("grants_used", |c: &mut Ctx| -> Array {
        let rt = &c.rt;
        let mut out = Array::new();
        let mut push = |who: String, g: &crate::caps::Grants| {
            let mut m = Map::new();
            m.insert("step".into(), who.into());
            m.insert("grants".into(), g.summary().into());
            out.push(Dynamic::from_map(m));
        };
        push(format!("builder {}", rt.source.builder), &rt.source.grants);
        for (i, s) in rt
            .build
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.applies_to(&rt.source.name))
        {
            push(format!("step {} {}", i + 1, s.describe()), &s.grants);
        }
        out
    });
}
