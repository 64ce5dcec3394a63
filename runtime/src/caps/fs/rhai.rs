//! The host file functions of builders and post-processors (`ctx.hash_file`,
//! `ctx.write_text`, `ctx.output_dir`, ...), over [`crate::caps::Project`] and the
//! caller's `read`/`write` grants.

use std::path::Path;

use rhai::{Engine, EvalAltResult, NativeCallContext};
use sha2::Digest;

use crate::script::api::Ctx;
use crate::script::error::runtime_err;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

fn err(ctx: &NativeCallContext, msg: impl std::fmt::Display) -> Box<EvalAltResult> {
    runtime_err(msg.to_string(), ctx.call_position())
}

fn write_path(ctx: &NativeCallContext, c: &Ctx, path: &str) -> RhaiResult<std::path::PathBuf> {
    c.rt.plan
        .project
        .host_path_write(&c.scope, path)
        .map_err(|e| err(ctx, e))
}

pub fn register(engine: &mut Engine) {
    // Files on the host, through the project's cap-std roots and the scope's grants.
    engine.register_fn(
        "hash_file",
        |ctx: NativeCallContext, c: &mut Ctx, path: &str, algo: &str| -> RhaiResult<String> {
            hash_file(c, path, algo).map_err(|m| runtime_err(m, ctx.call_position()))
        },
    );
    engine.register_fn(
        "file_size",
        |ctx: NativeCallContext, c: &mut Ctx, path: &str| -> RhaiResult<i64> {
            let f =
                c.rt.plan
                    .project
                    .open_read(&c.scope, path)
                    .map_err(|e| runtime_err(e.to_string(), ctx.call_position()))?;
            let len = f
                .metadata()
                .map(|m| m.len())
                .map_err(|e| runtime_err(format!("{path}: {e}"), ctx.call_position()))?;
            Ok(i64::try_from(len).unwrap_or(i64::MAX))
        },
    );
    engine.register_fn("exists", |c: &mut Ctx, path: &str| {
        c.rt.plan.project.open_read(&c.scope, path).is_ok()
    });
    engine.register_fn(
        "write_text",
        |ctx: NativeCallContext, c: &mut Ctx, path: &str, text: &str| -> RhaiResult<()> {
            use std::io::Write;
            let mut f =
                c.rt.plan
                    .project
                    .create(&c.scope, path)
                    .map_err(|e| runtime_err(e.to_string(), ctx.call_position()))?;
            f.write_all(text.as_bytes())
                .map_err(|e| runtime_err(format!("{path}: {e}"), ctx.call_position()))
        },
    );

    // An output directory: refused if it exists (Packer's rule) unless --force, which
    // removes it first; removed again if the build fails, unless kept.
    engine.register_fn("output_dir", |ctx: NativeCallContext, c: &mut Ctx, path: &str| -> RhaiResult<String> {
        let abs = write_path(&ctx, c, &format!("{}/.kiln-probe", path.trim_end_matches('/')))?;
        let dir = abs.parent().map(Path::to_path_buf).unwrap_or(abs);
        let has_content = std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(false);
        if has_content {
            if !c.rt.force {
                return Err(err(
                    &ctx,
                    format!("output directory {path} already exists and is not empty; remove it or run with --force"),
                ));
            }
            c.rt.ui.say(&c.rt.label, &format!("Deleting previous output directory {path} (--force)"));
            std::fs::remove_dir_all(&dir).map_err(|e| err(&ctx, format!("{path}: {e}")))?;
        }
        // On record until kept: a SIGKILLed build's partial output is kiln cleanup's.
        let record = c.rt.cleanup.ledger().and_then(|l| {
            let mut rec = crate::ledger::NewRecord::new(crate::ledger::Kind::OutputDir, "");
            rec.name = Some(dir.display().to_string());
            rec.resource_id = rec.name.clone();
            let id = l.intent(&rec).map_err(|e| tracing::warn!("cannot record {path} in the ledger: {e}")).ok()?;
            l.supersede(crate::ledger::Kind::OutputDir, &dir.display().to_string(), id);
            Some(id)
        });
        std::fs::create_dir_all(&dir).map_err(|e| err(&ctx, format!("{path}: {e}")))?;
        let d = dir.clone();
        let id = c.rt.cleanup.push_tracked(format!("output directory {path}"), record, move || async move {
            tokio::fs::remove_dir_all(&d).await.or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }
            })?;
            Ok(())
        });
        c.rt.own(path, id);
        Ok(path.to_string())
    });
    engine.register_fn(
        "remove_file",
        |ctx: NativeCallContext, c: &mut Ctx, path: &str| -> RhaiResult<()> {
            let abs = write_path(&ctx, c, path)?;
            std::fs::remove_file(&abs).map_err(|e| err(&ctx, format!("{path}: {e}")))?;
            c.rt.keep(path);
            Ok(())
        },
    );
    engine.register_fn(
        "keep",
        |ctx: NativeCallContext, c: &mut Ctx, path: &str| -> RhaiResult<()> {
            if !c.rt.keep(path) {
                return Err(err(
                    &ctx,
                    format!("keep({path:?}): this build did not create {path}"),
                ));
            }
            Ok(())
        },
    );
}

fn hash_file(c: &Ctx, path: &str, algo: &str) -> Result<String, String> {
    use std::io::Read;
    let mut f =
        c.rt.plan
            .project
            .open_read(&c.scope, path)
            .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    macro_rules! digest {
        ($h:expr) => {{
            let mut h = $h;
            loop {
                let n = f.read(&mut buf).map_err(|e| format!("{path}: {e}"))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            hex::encode(h.finalize())
        }};
    }
    Ok(match algo {
        "sha256" => digest!(sha2::Sha256::new()),
        "sha512" => digest!(sha2::Sha512::new()),
        "sha384" => digest!(sha2::Sha384::new()),
        other => {
            return Err(format!(
                "unknown checksum type {other:?}; supported: sha256, sha384, sha512"
            ));
        }
    })
}
