//! The runtime face of the host API in Rhai: `ctx` (given to builders and
//! post-processors) and the machine object (given to closure steps, and returned by
//! `ctx.connect`). Every method goes through the broker with the caller's scope.

use std::sync::Arc;

use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, NativeCallContext};
use sha2::Digest;

use super::error::runtime_err;
use super::value;
use crate::build::context::BuildRt;
use crate::build::steps;
use crate::caps::{Capability, Scope};
use crate::host::machine::Machine;
use crate::host::ssh::ConnectOptions;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// `ctx` in a builder's or post-processor's `run`.
#[derive(Clone)]
pub struct Ctx {
    pub rt: Arc<BuildRt>,
    pub scope: Scope,
}

/// A machine as a script sees it.
#[derive(Clone)]
pub struct MachineObj {
    machine: Machine,
    rt: Arc<BuildRt>,
    scope: Scope,
    env: Vec<(String, String)>,
}

impl MachineObj {
    pub fn new(
        machine: Machine,
        rt: Arc<BuildRt>,
        scope: Scope,
        env: Vec<(String, String)>,
    ) -> Self {
        MachineObj {
            machine,
            rt,
            scope,
            env,
        }
    }
}

fn fail<T>(ctx: &NativeCallContext, msg: impl Into<String>) -> RhaiResult<T> {
    Err(runtime_err(msg, ctx.call_position()))
}

/// Host waits end early when the build is cancelled; say why.
pub(crate) fn block<F: std::future::Future>(
    ctx: &NativeCallContext,
    rt: &BuildRt,
    f: F,
) -> RhaiResult<F::Output> {
    rt.block_on(f).map_err(|reason| {
        Box::new(EvalAltResult::ErrorTerminated(
            Dynamic::from(reason),
            ctx.call_position(),
        ))
    })
}

/// Registers the type names only (plan evaluation: nothing may run yet).
pub fn register_types(engine: &mut Engine) {
    engine.register_type_with_name::<Ctx>("BuildContext");
    engine.register_type_with_name::<MachineObj>("Machine");
    register_pure(engine);
}

/// Pure helpers available everywhere.
fn register_pure(engine: &mut Engine) {
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

/// A full runtime engine for one build: hardened, with the library resolver, the
/// declarations (sealed), and `ctx`/machine methods.
pub fn register_runtime(engine: &mut Engine) {
    register_types(engine);
    register_ctx(engine);
    register_machine(engine);
    super::host_api::register(engine);
}

fn register_ctx(engine: &mut Engine) {
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
        "connect",
        |ctx: NativeCallContext, c: &mut Ctx, ssh: Map| -> RhaiResult<MachineObj> {
            connect(&ctx, c, ssh, Map::new())
        },
    );
    engine.register_fn(
        "connect",
        |ctx: NativeCallContext, c: &mut Ctx, ssh: Map, opts: Map| -> RhaiResult<MachineObj> {
            connect(&ctx, c, ssh, opts)
        },
    );
    engine.register_fn(
        "provision",
        |ctx: NativeCallContext, c: &mut Ctx, m: MachineObj| -> RhaiResult<()> {
            steps::run_steps(&c.rt, ctx.engine(), &m.machine).map_err(|msg| {
                match c.rt.stop_reason() {
                    Some(reason) if c.rt.cancel.is_cancelled() => Box::new(
                        EvalAltResult::ErrorTerminated(Dynamic::from(reason), ctx.call_position()),
                    ),
                    _ => super::error::step_failed(msg, ctx.call_position()),
                }
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
            Ok(len as i64)
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

fn connect(ctx: &NativeCallContext, c: &mut Ctx, ssh: Map, opts: Map) -> RhaiResult<MachineObj> {
    value::check_keys(
        &opts,
        &["trust_on_first_use", "port", "vm"],
        "connect options",
    )
    .map_err(|m| runtime_err(m, ctx.call_position()))?;
    let cfg = value::ssh_config(&Dynamic::from_map(ssh))
        .map_err(|m| runtime_err(m, ctx.call_position()))?;
    let host = cfg.host.clone().unwrap_or_default();
    if host.is_empty() {
        return fail(ctx, "ssh: `host` is required");
    }
    let cap = Capability::SshConnect(host.clone());
    c.scope
        .check(&cap, "")
        .map_err(|e| runtime_err(e.to_string(), ctx.call_position()))?;
    let tofu = opts
        .get("trust_on_first_use")
        .map(|v| v.as_bool().unwrap_or(false))
        .unwrap_or(false);
    // Pinning the first key seen is safe only for a machine the builder itself
    // created, which is what the vm.qemu grant says.
    if tofu && !c.scope.grants().qemu {
        return fail(
            ctx,
            "trust_on_first_use is only for builders that create the VM (vm.qemu grant)",
        );
    }
    let port_override = match opts.get("port") {
        Some(p) => Some(
            u16::try_from(p.as_int().unwrap_or(-1))
                .map_err(|_| runtime_err("port must be 1-65535", ctx.call_position()))?,
        ),
        None => None,
    };
    // The VM this machine runs in, for uploads through a hot-plugged disk.
    let file_disk = match opts.get("vm").filter(|v| !v.is_unit()) {
        Some(v) => {
            let vm = v
                .clone()
                .try_cast::<super::host_api::VmObj>()
                .ok_or_else(|| {
                    runtime_err(
                        "`vm` must be the VM from ctx.qemu_start",
                        ctx.call_position(),
                    )
                })?;
            Some(Arc::new(crate::host::qemu::FileDisk::new(vm.vm.clone())))
        }
        None => None,
    };
    let copts = ConnectOptions {
        trust_on_first_use: tofu,
        port_override,
        ..ConnectOptions::default()
    };
    let start = std::time::Instant::now();
    let res = block(
        ctx,
        &c.rt,
        Machine::connect(cfg, c.rt.plan.project.clone(), copts),
    )?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    match res {
        Ok(m) => {
            c.scope.record(&cap, "connect", "ok", ms);
            if let Some(d) = file_disk {
                m.use_file_disk(d);
            }
            // Close the session when the build ends, whatever happens.
            let closer = m.clone();
            c.rt.cleanup.push(
                format!("SSH session to {}", m.target()),
                move || async move {
                    closer.close().await;
                    Ok(())
                },
            );
            Ok(MachineObj::new(
                m,
                c.rt.clone(),
                c.rt.builder_scope.clone(),
                Vec::new(),
            ))
        }
        Err(e) => {
            c.scope.record(&cap, "connect", &format!("error: {e}"), ms);
            fail(ctx, e.to_string())
        }
    }
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

fn exec_map(out: &crate::host::ssh::ExecOutput) -> Map {
    let mut m = Map::new();
    m.insert("exit_code".into(), (out.exit_code as i64).into());
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

fn machine_exec(ctx: &NativeCallContext, m: &MachineObj, cmd: &str, opts: Map) -> RhaiResult<Map> {
    value::check_keys(&opts, &["check", "env"], "exec options")
        .map_err(|e| runtime_err(e, ctx.call_position()))?;
    let check = match opts.get("check") {
        Some(v) => value::bool(v, "check").map_err(|e| runtime_err(e, ctx.call_position()))?,
        None => true,
    };
    let mut env = m.env.clone();
    if let Some(v) = opts.get("env") {
        let map = v
            .clone()
            .try_cast::<Map>()
            .ok_or_else(|| runtime_err("env must be a map", ctx.call_position()))?;
        for (k, v) in map {
            env.push((k.to_string(), v.to_string()));
        }
    }
    let out = steps::exec(&m.rt, &m.machine, &m.scope, cmd, &env, cmd).map_err(|f| {
        if f.disconnected {
            runtime_err(
                format!("connection lost: {}", f.message),
                ctx.call_position(),
            )
        } else {
            runtime_err(f.message, ctx.call_position())
        }
    })?;
    if check {
        steps::check_exit(&out, &[0])
            .map_err(|f| runtime_err(format!("`{cmd}`: {}", f.message), ctx.call_position()))?;
    }
    Ok(exec_map(&out))
}

fn register_machine(engine: &mut Engine) {
    engine.register_fn(
        "exec",
        |ctx: NativeCallContext, m: &mut MachineObj, cmd: &str| {
            machine_exec(&ctx, m, cmd, Map::new())
        },
    );
    engine.register_fn(
        "exec",
        |ctx: NativeCallContext, m: &mut MachineObj, cmd: &str, opts: Map| {
            machine_exec(&ctx, m, cmd, opts)
        },
    );
    engine.register_fn(
        "upload",
        |ctx: NativeCallContext, m: &mut MachineObj, src: &str, dest: &str| -> RhaiResult<()> {
            steps::upload(&m.rt, &m.machine, &m.scope, src, dest)
                .map_err(|f| runtime_err(f.message, ctx.call_position()))
        },
    );
    let write = |ctx: &NativeCallContext,
                 m: &MachineObj,
                 dest: &str,
                 content: &str,
                 mode: Option<u32>|
     -> RhaiResult<()> {
        let cap = Capability::Machine;
        let detail = format!("write_file {dest}");
        m.scope
            .check(&cap, &detail)
            .map_err(|e| runtime_err(e.to_string(), ctx.call_position()))?;
        let r = block(ctx, &m.rt, async {
            m.machine
                .session()
                .await
                .write_file(dest, content.as_bytes(), mode)
                .await
        })?;
        m.scope
            .record(&cap, &detail, if r.is_ok() { "ok" } else { "error" }, 0.0);
        r.map_err(|e| runtime_err(e.to_string(), ctx.call_position()))
    };
    engine.register_fn(
        "write_file",
        move |ctx: NativeCallContext, m: &mut MachineObj, dest: &str, content: &str| {
            write(&ctx, m, dest, content, None)
        },
    );
    engine.register_fn(
        "write_file",
        move |ctx: NativeCallContext, m: &mut MachineObj, dest: &str, content: &str, mode: i64| {
            let mode = u32::try_from(mode)
                .map_err(|_| runtime_err("mode must be like 0o644", ctx.call_position()))?;
            write(&ctx, m, dest, content, Some(mode))
        },
    );
    engine.register_fn(
        "read_file",
        |ctx: NativeCallContext, m: &mut MachineObj, path: &str| -> RhaiResult<String> {
            let cap = Capability::Machine;
            let detail = format!("read_file {path}");
            m.scope
                .check(&cap, &detail)
                .map_err(|e| runtime_err(e.to_string(), ctx.call_position()))?;
            let r = block(&ctx, &m.rt, async {
                m.machine.session().await.read_file(path, 64 << 20).await
            })?;
            m.scope
                .record(&cap, &detail, if r.is_ok() { "ok" } else { "error" }, 0.0);
            r.map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| runtime_err(e.to_string(), ctx.call_position()))
        },
    );
    engine.register_fn(
        "download",
        |ctx: NativeCallContext,
         m: &mut MachineObj,
         remote: &str,
         local: &str|
         -> RhaiResult<i64> {
            let cap = Capability::Machine;
            let detail = format!("download {remote} => {local}");
            m.scope
                .check(&cap, &detail)
                .map_err(|e| runtime_err(e.to_string(), ctx.call_position()))?;
            let mut file =
                m.rt.plan
                    .project
                    .create(&m.scope, local)
                    .map_err(|e| runtime_err(e.to_string(), ctx.call_position()))?;
            let r = block(&ctx, &m.rt, async {
                m.machine
                    .session()
                    .await
                    .download_file(remote, &mut file, &|_| {})
                    .await
            })?;
            m.scope
                .record(&cap, &detail, if r.is_ok() { "ok" } else { "error" }, 0.0);
            r.map(|n| n as i64)
                .map_err(|e| runtime_err(e.to_string(), ctx.call_position()))
        },
    );
    engine.register_fn(
        "facts",
        |ctx: NativeCallContext, m: &mut MachineObj| -> RhaiResult<Map> {
            let cap = Capability::Machine;
            m.scope
                .check(&cap, "facts")
                .map_err(|e| runtime_err(e.to_string(), ctx.call_position()))?;
            let facts = block(&ctx, &m.rt, m.machine.facts())?
                .map_err(|e| runtime_err(e.to_string(), ctx.call_position()))?;
            m.scope.record(&cap, "facts", "ok", 0.0);
            Ok(facts
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect())
        },
    );
    engine.register_get("target", |m: &mut MachineObj| m.machine.target());
}
