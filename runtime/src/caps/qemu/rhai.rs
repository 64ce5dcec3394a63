//! The VM and image primitives (`ctx.qemu_start`, `ctx.image_convert`, ...) and the
//! HTTP server for guests, for builder scripts: a few lines each over [`super::run`].
//! Hot paths run in Rust; the builder scripts only sequence them. Everything created
//! goes on the build's cleanup stack before the call returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::{Dynamic, Engine, EvalAltResult, Map, NativeCallContext};

use crate::caps::net::rhai::DownloadObj;
use crate::caps::{Scope, Use};
use crate::context::BuildRt;
use crate::host::{httpd, image, qemu};
use crate::script::api::{Ctx, block};
use crate::script::error::runtime_err;
use crate::script::value;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// A running VM as a script sees it.
#[derive(Clone)]
pub struct VmObj {
    pub vm: Arc<qemu::Vm>,
    rt: Arc<BuildRt>,
    scope: Scope,
}

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

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<VmObj>("Vm");
    register_images(engine);
    register_vm(engine);
}

pub(super) fn register_images(engine: &mut Engine) {
    engine.register_fn(
        "accelerator",
        |ctx: NativeCallContext, c: &mut Ctx, choice: &str| -> RhaiResult<Map> {
            let detail = format!("probe accelerator {choice}");
            let choice: qemu::Accelerator = choice.parse().map_err(|e| err(&ctx, e))?;
            let accel = block(
                &ctx,
                &c.rt,
                super::run(&c.scope, &detail, qemu::probe_accelerator(choice)),
            )?
            .map_err(|e| err(&ctx, e))?;
            let mut m = Map::new();
            m.insert("kind".into(), accel.qemu_name().into());
            m.insert("reason".into(), accel.reason.clone().into());
            Ok(m)
        },
    );
    engine.register_fn(
        "image_overlay",
        |ctx: NativeCallContext,
         c: &mut Ctx,
         base: &str,
         dest: &str,
         size: Dynamic|
         -> RhaiResult<String> {
            let base_abs = read_path(&ctx, c, base)?;
            let dest_abs = write_path(&ctx, c, dest)?;
            let size = if size.is_unit() {
                None
            } else {
                Some(value::size_bytes(&size, "disk_size").map_err(|m| err(&ctx, m))?)
            };
            let img = block(
                &ctx,
                &c.rt,
                super::run(
                    &c.scope,
                    &format!("qemu-img create {dest} (backing {base})"),
                    image::create_overlay(&base_abs, &dest_abs, size, &c.rt.cleanup),
                ),
            )?
            .map_err(|e| err(&ctx, e))?;
            c.rt.own(dest, img.cleanup);
            Ok(dest.to_string())
        },
    );
    // The same on a fetched base image (ctx.fetch): the cache entry becomes the
    // overlay's read-only backing file and is never written.
    engine.register_fn(
        "image_overlay",
        |ctx: NativeCallContext,
         c: &mut Ctx,
         base: DownloadObj,
         dest: &str,
         size: Dynamic|
         -> RhaiResult<String> {
            let dest_abs = write_path(&ctx, c, dest)?;
            let size = if size.is_unit() {
                None
            } else {
                Some(value::size_bytes(&size, "disk_size").map_err(|m| err(&ctx, m))?)
            };
            // A downloaded image that names a backing file of its own would have QEMU
            // read that file of this host into the guest: refuse it. (A local image is
            // the user's own; its chain is theirs.)
            if base.dl.origin() != kiln_fetch::Origin::Local {
                let info = block(
                    &ctx,
                    &c.rt,
                    super::run(
                        &c.scope,
                        &format!("qemu-img info {}", base.dl.url()),
                        image::info(base.dl.path()),
                    ),
                )?
                .map_err(|e| err(&ctx, e))?;
                if let Some(b) = info.backing_file {
                    return Err(err(
                        &ctx,
                        format!(
                            "{} {} names a backing file ({b:?}); kiln does not boot a fetched \
                             image that reads another file of this host: flatten it first \
                             (qemu-img convert)",
                            base.dl.what,
                            base.dl.url()
                        ),
                    ));
                }
            }
            let img = block(
                &ctx,
                &c.rt,
                super::run(
                    &c.scope,
                    &format!("qemu-img create {dest} (backing {})", base.dl.url()),
                    image::create_overlay(base.dl.path(), &dest_abs, size, &c.rt.cleanup),
                ),
            )?
            .map_err(|e| err(&ctx, e))?;
            c.rt.own(dest, img.cleanup);
            Ok(dest.to_string())
        },
    );
    engine.register_fn(
        "image_blank",
        |ctx: NativeCallContext,
         c: &mut Ctx,
         dest: &str,
         size: Dynamic,
         format: &str|
         -> RhaiResult<String> {
            let dest_abs = write_path(&ctx, c, dest)?;
            let size = value::size_bytes(&size, "disk_size").map_err(|m| err(&ctx, m))?;
            let format: image::ImageFormat = format.parse().map_err(|e| err(&ctx, e))?;
            let img = block(
                &ctx,
                &c.rt,
                super::run(
                    &c.scope,
                    &format!("qemu-img create {dest}"),
                    image::create_blank(&dest_abs, size, format, &c.rt.cleanup),
                ),
            )?
            .map_err(|e| err(&ctx, e))?;
            c.rt.own(dest, img.cleanup);
            Ok(dest.to_string())
        },
    );
    engine.register_fn(
        "image_convert",
        |ctx: NativeCallContext,
         c: &mut Ctx,
         src: &str,
         dest: &str,
         format: &str,
         compression: &str|
         -> RhaiResult<String> {
            let src_abs = read_path(&ctx, c, src)?;
            let dest_abs = write_path(&ctx, c, dest)?;
            let format: image::ImageFormat = format.parse().map_err(|e| err(&ctx, e))?;
            let compression = match compression {
                "" | "none" => image::ImageCompression::None,
                "zlib" => image::ImageCompression::Zlib,
                "zstd" => image::ImageCompression::Zstd,
                other => {
                    return Err(err(
                        &ctx,
                        format!("disk_compression {other:?}: use \"none\", \"zlib\" or \"zstd\""),
                    ));
                }
            };
            let bar =
                c.rt.ui
                    .progress(&c.rt.label, &format!("Converting to {dest}"), 100);
            let img = block(
                &ctx,
                &c.rt,
                super::run(
                    &c.scope,
                    &format!("qemu-img convert {src} => {dest}"),
                    image::convert(
                        &src_abs,
                        &dest_abs,
                        format,
                        compression,
                        &c.rt.cleanup,
                        &|pct| bar.set(pct),
                    ),
                ),
            )?
            .map_err(|e| err(&ctx, e))?;
            bar.finish();
            c.rt.own(dest, img.cleanup);
            Ok(dest.to_string())
        },
    );
    engine.register_fn(
        "image_info",
        |ctx: NativeCallContext, c: &mut Ctx, path: &str| -> RhaiResult<Map> {
            let abs = read_path(&ctx, c, path)?;
            let info = block(
                &ctx,
                &c.rt,
                super::run(
                    &c.scope,
                    &format!("qemu-img info {path}"),
                    image::info(&abs),
                ),
            )?
            .map_err(|e| err(&ctx, e))?;
            let mut m = Map::new();
            m.insert("format".into(), info.format.into());
            m.insert(
                "virtual_size".into(),
                i64::try_from(info.virtual_size).unwrap_or(i64::MAX).into(),
            );
            m.insert(
                "actual_size".into(),
                info.actual_size
                    .map(|s| i64::try_from(s).unwrap_or(i64::MAX))
                    .unwrap_or(0)
                    .into(),
            );
            m.insert(
                "backing_file".into(),
                info.backing_file
                    .map(Dynamic::from)
                    .unwrap_or(Dynamic::UNIT),
            );
            Ok(m)
        },
    );
    engine.register_fn(
        "image_resize",
        |ctx: NativeCallContext, c: &mut Ctx, path: &str, size: Dynamic| -> RhaiResult<()> {
            let abs = write_path(&ctx, c, path)?;
            let size = value::size_bytes(&size, "disk_size").map_err(|m| err(&ctx, m))?;
            block(
                &ctx,
                &c.rt,
                super::run(
                    &c.scope,
                    &format!("qemu-img resize {path}"),
                    image::resize(&abs, size),
                ),
            )?
            .map_err(|e| err(&ctx, e))
        },
    );
    // HTTP for the guest (Packer's http_directory), plus in-memory files such as
    // cloud-init's user-data and meta-data. Bound to 127.0.0.1; the guest sees it at
    // 10.0.2.2 through QEMU's user networking.
    engine.register_fn(
        "http_serve",
        |ctx: NativeCallContext, c: &mut Ctx, dir: Dynamic, files: Map| -> RhaiResult<Map> {
            let mut cfg = httpd::HttpdConfig::default();
            if !dir.is_unit() {
                let d = value::string(&dir, "http_directory").map_err(|m| err(&ctx, m))?;
                cfg.dir = Some(
                    c.rt.plan
                        .project
                        .open_dir_read(&c.scope, &d)
                        .map_err(|e| err(&ctx, e))?,
                );
            }
            for (k, v) in files {
                cfg.files.insert(k.to_string(), v.to_string().into_bytes());
            }
            let server = block(
                &ctx,
                &c.rt,
                super::run(
                    &c.scope,
                    "http server for the guest",
                    httpd::serve(cfg, &c.rt.cleanup),
                ),
            )?
            .map_err(|e| err(&ctx, e))?;
            let mut m = Map::new();
            m.insert("port".into(), i64::from(server.port()).into());
            m.insert("ip".into(), httpd::GUEST_HOST_IP.to_string().into());
            m.insert("url".into(), server.guest_url().into());
            // The server lives until the build ends (or the cleanup stack stops it).
            c.rt.hold(Box::new(server));
            Ok(m)
        },
    );
    engine.register_fn(
        "nocloud_seed",
        |ctx: NativeCallContext,
         c: &mut Ctx,
         dest: &str,
         user_data: &str,
         meta_data: &str|
         -> RhaiResult<String> {
            let abs = write_path(&ctx, c, dest)?;
            let img = block(
                &ctx,
                &c.rt,
                super::run(
                    &c.scope,
                    &format!("cloud-init seed disk {dest}"),
                    httpd::nocloud_seed_disk(
                        &abs,
                        user_data.as_bytes(),
                        meta_data.as_bytes(),
                        None,
                        &c.rt.cleanup,
                    ),
                ),
            )?
            .map_err(|e| err(&ctx, e))?;
            c.rt.own(dest, img.cleanup);
            Ok(dest.to_string())
        },
    );
}

const VM_KEYS: &[&str] = &[
    "name",
    "accelerator",
    "disk",
    "format",
    "memory",
    "cpus",
    "cpu_model",
    "cdrom",
    "seed_disk",
    "output_directory",
    "headless",
    "qemuargs",
    "http_port",
    "disk_interface",
    "net_device",
    "step_cache",
];

pub(super) fn register_vm(engine: &mut Engine) {
    engine.register_fn(
        "qemu_start",
        |ctx: NativeCallContext, c: &mut Ctx, spec: Map| -> RhaiResult<VmObj> {
            value::check_keys(&spec, VM_KEYS, "qemu_start").map_err(|m| err(&ctx, m))?;
            c.scope
                .check(&Use::flag(&super::SPEC))
                .map_err(|e| err(&ctx, e))?;
            let get = |k: &str| opt_str(&spec, k).map_err(|m| err(&ctx, m));
            let disk = get("disk")?.ok_or_else(|| err(&ctx, "qemu_start: `disk` is required"))?;
            let out = get("output_directory")?
                .ok_or_else(|| err(&ctx, "qemu_start: `output_directory` is required"))?;
            let disk_abs = write_path(&ctx, c, &disk)?;
            let out_abs = write_path(&ctx, c, &format!("{out}/serial.log"))?
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let choice: qemu::Accelerator = get("accelerator")?
                .unwrap_or_else(|| "auto".into())
                .parse()
                .map_err(|e| err(&ctx, e))?;
            let accel =
                block(&ctx, &c.rt, qemu::probe_accelerator(choice))?.map_err(|e| err(&ctx, e))?;
            let name = get("name")?.unwrap_or_else(|| c.rt.label.clone());
            let mut vm = qemu::VmSpec::new(name, accel, disk_abs, out_abs);
            if let Some(f) = get("format")? {
                vm.disk_format = f.parse().map_err(|e| err(&ctx, e))?;
            }
            if let Some(m) = spec.get("memory") {
                vm.memory_mib =
                    value::int_in::<u32>(m, "memory", "a size in MiB").map_err(|e| err(&ctx, e))?;
            }
            if let Some(n) = spec.get("cpus") {
                vm.cpus = value::int_in::<u32>(n, "cpus", "a number of CPUs")
                    .map_err(|e| err(&ctx, e))?;
            }
            vm.cpu = get("cpu_model")?;
            if let Some(i) = get("disk_interface")? {
                vm.disk_interface = i;
            }
            if let Some(n) = get("net_device")? {
                vm.net_device = n;
            }
            if let Some(h) = spec.get("headless") {
                vm.headless = value::bool(h, "headless").map_err(|e| err(&ctx, e))?;
            }
            if let Some(p) = spec.get("http_port").filter(|v| !v.is_unit()) {
                vm.http_port = Some(
                    value::int_in::<u16>(p, "http_port", "a port (1-65535)")
                        .map_err(|e| err(&ctx, e))?,
                );
            }
            if let Some(v) = spec.get("cdrom").filter(|v| !v.is_unit()) {
                // A fetched ISO (ctx.fetch) was checked and verified already; a path is
                // opened through the read grant.
                vm.cdrom = Some(match v.clone().try_cast::<DownloadObj>() {
                    Some(d) => d.dl.path().to_path_buf(),
                    None => {
                        let iso = value::string(v, "cdrom").map_err(|m| err(&ctx, m))?;
                        read_path(&ctx, c, &iso)?
                    }
                });
            }
            if let Some(seed) = get("seed_disk")? {
                vm.extra_drives
                    .push(qemu::Drive::seed(read_path(&ctx, c, &seed)?));
            }
            if let Some(args) = spec.get("qemuargs").filter(|v| !v.is_unit()) {
                let outer = args
                    .clone()
                    .into_array()
                    .map_err(|_| err(&ctx, "qemuargs must be a list of lists of strings"))?;
                for a in outer {
                    vm.qemuargs
                        .push(value::string_list(&a, "qemuargs").map_err(|m| err(&ctx, m))?);
                }
            }
            let cache =
                super::cache_rhai::cache_of(&spec, "step_cache").map_err(|m| err(&ctx, m))?;
            let vm = match cache {
                // From the cached state when there is one (see host::qemu::step_cache).
                Some(cache) => {
                    let cleanup = c.rt.cleanup.clone();
                    let starter = cache.clone();
                    let vm = block(
                        &ctx,
                        &c.rt,
                        super::run(&c.scope, "start qemu", async move {
                            starter.start(vm, &cleanup).await
                        }),
                    )?
                    .map_err(|e| err(&ctx, e))?;
                    super::cache_rhai::say_restore(&c.rt, &cache);
                    vm
                }
                None => Arc::new(
                    block(
                        &ctx,
                        &c.rt,
                        super::run(&c.scope, "start qemu", qemu::start(vm, &c.rt.cleanup)),
                    )?
                    .map_err(|e| err(&ctx, e))?,
                ),
            };
            Ok(VmObj {
                vm,
                rt: c.rt.clone(),
                scope: c.scope.clone(),
            })
        },
    );
    engine.register_get("ssh_port", |v: &mut VmObj| i64::from(v.vm.ssh_port()));
    engine.register_get("pid", |v: &mut VmObj| i64::from(v.vm.pid()));
    engine.register_get("serial_log", |v: &mut VmObj| {
        v.vm.serial_log_path().display().to_string()
    });
    engine.register_fn("is_running", |v: &mut VmObj| v.vm.is_running());
    engine.register_fn(
        "powerdown",
        |ctx: NativeCallContext, v: &mut VmObj| -> RhaiResult<()> {
            block(
                &ctx,
                &v.rt,
                super::run(&v.scope, "powerdown", v.vm.powerdown()),
            )?
            .map_err(|e| err(&ctx, e))
        },
    );
    engine.register_fn(
        "wait_exit",
        |ctx: NativeCallContext, v: &mut VmObj, d: Dynamic| -> RhaiResult<bool> {
            let d = value::duration(&d, "timeout").map_err(|m| err(&ctx, m))?;
            let exited = block(&ctx, &v.rt, v.vm.wait_exit(d))?;
            if exited {
                // It stopped by itself: nothing left to undo for this VM.
                v.rt.cleanup.release(v.vm.cleanup_id());
            }
            Ok(exited)
        },
    );
    engine.register_fn(
        "kill",
        |ctx: NativeCallContext, v: &mut VmObj| -> RhaiResult<bool> {
            let killed = block(&ctx, &v.rt, v.vm.kill())?;
            if killed {
                v.rt.cleanup.release(v.vm.cleanup_id());
            }
            Ok(killed)
        },
    );
    engine.register_fn(
        "boot_command",
        |ctx: NativeCallContext, v: &mut VmObj, keys: &str| -> RhaiResult<()> {
            block(
                &ctx,
                &v.rt,
                super::run(&v.scope, "boot_command", v.vm.send_boot_command(keys)),
            )?
            .map_err(|e| err(&ctx, e))
        },
    );
    engine.register_fn("exit_status", |v: &mut VmObj| {
        v.vm.exit_status().unwrap_or_default()
    });
}
