//! The artifact primitives post-processors sequence (`ctx.compress`,
//! `ctx.vagrant_box`): local files in, local files out, through the caller's
//! `read`/`write` grants. Everything they write goes on the cleanup stack.

use std::path::PathBuf;
use std::sync::Arc;

use rhai::{Array, Engine, EvalAltResult, Map, NativeCallContext};

use super::{Ctx, block};
use crate::script::error::runtime_err;
use crate::script::value;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

fn err(ctx: &NativeCallContext, msg: impl std::fmt::Display) -> Box<EvalAltResult> {
    runtime_err(msg.to_string(), ctx.call_position())
}

fn read_path(ctx: &NativeCallContext, c: &Ctx, path: &str) -> RhaiResult<PathBuf> {
    c.rt.plan
        .project
        .host_path_read(&c.scope, path)
        .map_err(|e| err(ctx, e))
}

fn write_path(ctx: &NativeCallContext, c: &Ctx, path: &str) -> RhaiResult<PathBuf> {
    c.rt.plan
        .project
        .host_path_write(&c.scope, path)
        .map_err(|e| err(ctx, e))
}

fn opt_str(m: &Map, key: &str) -> Result<Option<String>, String> {
    match m.get(key) {
        None => Ok(None),
        Some(v) if v.is_unit() => Ok(None),
        Some(v) => value::string(v, key).map(Some),
    }
}

pub(super) fn register(engine: &mut Engine) {
    engine.register_fn(
        "compress",
        |ctx: NativeCallContext,
         c: &mut Ctx,
         inputs: Array,
         output: &str,
         opts: Map|
         -> RhaiResult<Map> {
            value::check_keys(&opts, &["level", "threads"], "compress options")
                .map_err(|m| err(&ctx, m))?;
            let mut files = Vec::new();
            let mut total = 0u64;
            for i in inputs {
                let p = value::string(&i, "compress input").map_err(|m| err(&ctx, m))?;
                let abs = read_path(&ctx, c, &p)?;
                total += std::fs::metadata(&abs).map(|m| m.len()).unwrap_or(0);
                files.push(abs);
            }
            let out_abs = write_path(&ctx, c, output)?;
            let options = crate::artifact::compress::CompressOptions {
                level: opts
                    .get("level")
                    .map(|l| value::int(l, "level"))
                    .transpose()
                    .map_err(|m| err(&ctx, m))?
                    .map(|l| i32::try_from(l).map_err(|_| err(&ctx, "level is out of range")))
                    .transpose()?,
                threads: opts
                    .get("threads")
                    .map(|t| value::int(t, "threads"))
                    .transpose()
                    .map_err(|m| err(&ctx, m))?
                    .map(|t| {
                        usize::try_from(t).map_err(|_| err(&ctx, "threads must not be negative"))
                    })
                    .transpose()?
                    .unwrap_or(0),
            };
            let bar = Arc::new(c.rt.ui.progress(
                &c.rt.label,
                &format!("Compressing {output}"),
                total,
            ));
            let b = bar.clone();
            let done = block(
                &ctx,
                &c.rt,
                crate::artifact::compress::compress(
                    files,
                    out_abs,
                    options,
                    c.rt.cleanup.clone(),
                    Arc::new(move |n| b.set(n)),
                ),
            )?
            .map_err(|e| err(&ctx, e))?;
            if let Ok(bar) = Arc::try_unwrap(bar) {
                bar.finish();
            }
            c.rt.own(output, done.cleanup);
            let mut m = Map::new();
            m.insert("path".into(), output.into());
            m.insert(
                "size".into(),
                i64::try_from(done.size).unwrap_or(i64::MAX).into(),
            );
            Ok(m)
        },
    );
    engine.register_fn(
        "vagrant_box",
        |ctx: NativeCallContext,
         c: &mut Ctx,
         disk: &str,
         output: &str,
         opts: Map|
         -> RhaiResult<Map> {
            value::check_keys(
                &opts,
                &["driver", "compression_level", "vagrantfile"],
                "vagrant options",
            )
            .map_err(|m| err(&ctx, m))?;
            let disk_abs = read_path(&ctx, c, disk)?;
            let out_abs = write_path(&ctx, c, output)?;
            let mut o = crate::artifact::vagrant::BoxOptions::default();
            if let Some(d) = opt_str(&opts, "driver").map_err(|m| err(&ctx, m))? {
                o.driver = match d.as_str() {
                    "kvm" => crate::artifact::vagrant::LibvirtDriver::Kvm,
                    "qemu" => crate::artifact::vagrant::LibvirtDriver::Qemu,
                    other => {
                        return Err(err(
                            &ctx,
                            format!("driver {other:?}: use \"kvm\" or \"qemu\""),
                        ));
                    }
                };
            }
            if let Some(l) = opts.get("compression_level") {
                o.compression_level = value::int_in::<u32>(l, "compression_level", "0-9")
                    .map_err(|m| err(&ctx, m))?;
            }
            if let Some(v) = opt_str(&opts, "vagrantfile").map_err(|m| err(&ctx, m))? {
                let text =
                    c.rt.plan
                        .project
                        .read_to_vec(&c.scope, &v, 1 << 20)
                        .map_err(|e| err(&ctx, e))?;
                o.vagrantfile = Some(String::from_utf8_lossy(&text).into_owned());
            }
            let done = block(
                &ctx,
                &c.rt,
                crate::artifact::vagrant::libvirt_box(
                    &disk_abs,
                    &out_abs,
                    &o,
                    &c.rt.cleanup,
                    Arc::new(|_| {}),
                ),
            )?
            .map_err(|e| err(&ctx, e))?;
            c.rt.own(output, done.cleanup);
            let mut m = Map::new();
            m.insert("path".into(), output.into());
            m.insert(
                "size".into(),
                i64::try_from(done.size).unwrap_or(i64::MAX).into(),
            );
            m.insert(
                "virtual_size_gib".into(),
                i64::try_from(done.virtual_size_gib)
                    .unwrap_or(i64::MAX)
                    .into(),
            );
            Ok(m)
        },
    );
}
