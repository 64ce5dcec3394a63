//! The Rhai face of the VM and image primitives (`vm.qemu`), the HTTP server for
//! guests, and the artifact primitives (compress, Vagrant box). Hot paths run in
//! Rust; the builder scripts only sequence them. Every call passes the broker, and
//! everything created goes on the build's cleanup stack before the call returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, NativeCallContext};

use super::error::runtime_err;
use super::runtime::{Ctx, block};
use super::value;
use crate::build::context::BuildRt;
use crate::caps::{Capability, Scope};
use crate::host::{httpd, image, qemu};

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// A running VM as a script sees it.
#[derive(Clone)]
pub struct VmObj {
    pub(super) vm: Arc<qemu::Vm>,
    rt: Arc<BuildRt>,
}

fn err(ctx: &NativeCallContext, msg: impl std::fmt::Display) -> Box<EvalAltResult> {
    runtime_err(msg.to_string(), ctx.call_position())
}

fn need(ctx: &NativeCallContext, scope: &Scope, cap: Capability, detail: &str) -> RhaiResult<()> {
    scope.check(&cap, detail).map_err(|e| err(ctx, e))
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
    register_files(engine);
    register_images(engine);
    register_vm(engine);
    register_artifacts(engine);
}

fn register_files(engine: &mut Engine) {
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
        std::fs::create_dir_all(&dir).map_err(|e| err(&ctx, format!("{path}: {e}")))?;
        let d = dir.clone();
        let id = c.rt.cleanup.push(format!("output directory {path}"), move || async move {
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

fn register_images(engine: &mut Engine) {
    engine.register_fn(
        "accelerator",
        |ctx: NativeCallContext, c: &mut Ctx, choice: &str| -> RhaiResult<Map> {
            need(
                &ctx,
                &c.scope,
                Capability::VmQemu,
                &format!("probe accelerator {choice}"),
            )?;
            let choice: qemu::Accelerator = choice.parse().map_err(|e| err(&ctx, e))?;
            let accel =
                block(&ctx, &c.rt, qemu::probe_accelerator(choice))?.map_err(|e| err(&ctx, e))?;
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
            need(
                &ctx,
                &c.scope,
                Capability::VmQemu,
                &format!("qemu-img create {dest} (backing {base})"),
            )?;
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
                image::create_overlay(&base_abs, &dest_abs, size, &c.rt.cleanup),
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
            need(
                &ctx,
                &c.scope,
                Capability::VmQemu,
                &format!("qemu-img create {dest}"),
            )?;
            let dest_abs = write_path(&ctx, c, dest)?;
            let size = value::size_bytes(&size, "disk_size").map_err(|m| err(&ctx, m))?;
            let format: image::ImageFormat = format.parse().map_err(|e| err(&ctx, e))?;
            let img = block(
                &ctx,
                &c.rt,
                image::create_blank(&dest_abs, size, format, &c.rt.cleanup),
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
            need(
                &ctx,
                &c.scope,
                Capability::VmQemu,
                &format!("qemu-img convert {src} => {dest}"),
            )?;
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
                image::convert(
                    &src_abs,
                    &dest_abs,
                    format,
                    compression,
                    &c.rt.cleanup,
                    &|pct| bar.set(pct),
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
            need(
                &ctx,
                &c.scope,
                Capability::VmQemu,
                &format!("qemu-img info {path}"),
            )?;
            let abs = read_path(&ctx, c, path)?;
            let info = block(&ctx, &c.rt, image::info(&abs))?.map_err(|e| err(&ctx, e))?;
            let mut m = Map::new();
            m.insert("format".into(), info.format.into());
            m.insert("virtual_size".into(), (info.virtual_size as i64).into());
            m.insert(
                "actual_size".into(),
                info.actual_size.map(|s| s as i64).unwrap_or(0).into(),
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
            need(
                &ctx,
                &c.scope,
                Capability::VmQemu,
                &format!("qemu-img resize {path}"),
            )?;
            let abs = write_path(&ctx, c, path)?;
            let size = value::size_bytes(&size, "disk_size").map_err(|m| err(&ctx, m))?;
            block(&ctx, &c.rt, image::resize(&abs, size))?.map_err(|e| err(&ctx, e))
        },
    );
    // HTTP for the guest (Packer's http_directory), plus in-memory files such as
    // cloud-init's user-data and meta-data. Bound to 127.0.0.1; the guest sees it at
    // 10.0.2.2 through QEMU's user networking.
    engine.register_fn(
        "http_serve",
        |ctx: NativeCallContext, c: &mut Ctx, dir: Dynamic, files: Map| -> RhaiResult<Map> {
            need(
                &ctx,
                &c.scope,
                Capability::VmQemu,
                "http server for the guest",
            )?;
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
            let server =
                block(&ctx, &c.rt, httpd::serve(cfg, &c.rt.cleanup))?.map_err(|e| err(&ctx, e))?;
            let mut m = Map::new();
            m.insert("port".into(), (server.port() as i64).into());
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
            need(
                &ctx,
                &c.scope,
                Capability::VmQemu,
                &format!("cloud-init seed disk {dest}"),
            )?;
            let abs = write_path(&ctx, c, dest)?;
            let img = block(
                &ctx,
                &c.rt,
                httpd::nocloud_seed_disk(
                    &abs,
                    user_data.as_bytes(),
                    meta_data.as_bytes(),
                    None,
                    &c.rt.cleanup,
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
];

fn register_vm(engine: &mut Engine) {
    engine.register_fn(
        "qemu_start",
        |ctx: NativeCallContext, c: &mut Ctx, spec: Map| -> RhaiResult<VmObj> {
            value::check_keys(&spec, VM_KEYS, "qemu_start").map_err(|m| err(&ctx, m))?;
            need(&ctx, &c.scope, Capability::VmQemu, "start qemu")?;
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
                vm.memory_mib = value::int(m, "memory").map_err(|e| err(&ctx, e))? as u32;
            }
            if let Some(n) = spec.get("cpus") {
                vm.cpus = value::int(n, "cpus").map_err(|e| err(&ctx, e))? as u32;
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
                vm.http_port = Some(value::int(p, "http_port").map_err(|e| err(&ctx, e))? as u16);
            }
            if let Some(iso) = get("cdrom")? {
                vm.cdrom = Some(read_path(&ctx, c, &iso)?);
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
            let started = std::time::Instant::now();
            let vm =
                block(&ctx, &c.rt, qemu::start(vm, &c.rt.cleanup))?.map_err(|e| err(&ctx, e))?;
            c.scope.record(
                &Capability::VmQemu,
                &format!("start qemu pid {}", vm.pid()),
                "ok",
                started.elapsed().as_secs_f64() * 1000.0,
            );
            Ok(VmObj {
                vm: Arc::new(vm),
                rt: c.rt.clone(),
            })
        },
    );
    engine.register_get("ssh_port", |v: &mut VmObj| v.vm.ssh_port() as i64);
    engine.register_get("pid", |v: &mut VmObj| v.vm.pid() as i64);
    engine.register_get("serial_log", |v: &mut VmObj| {
        v.vm.serial_log_path().display().to_string()
    });
    engine.register_fn("is_running", |v: &mut VmObj| v.vm.is_running());
    engine.register_fn(
        "powerdown",
        |ctx: NativeCallContext, v: &mut VmObj| -> RhaiResult<()> {
            block(&ctx, &v.rt, v.vm.powerdown())?.map_err(|e| err(&ctx, e))
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
            block(&ctx, &v.rt, v.vm.send_boot_command(keys))?.map_err(|e| err(&ctx, e))
        },
    );
    engine.register_fn("exit_status", |v: &mut VmObj| {
        v.vm.exit_status().unwrap_or_default()
    });
}

fn register_artifacts(engine: &mut Engine) {
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
                    .map(|l| l as i32),
                threads: opts
                    .get("threads")
                    .map(|t| value::int(t, "threads"))
                    .transpose()
                    .map_err(|m| err(&ctx, m))?
                    .unwrap_or(0) as usize,
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
            m.insert("size".into(), (done.size as i64).into());
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
                o.compression_level =
                    value::int(l, "compression_level").map_err(|m| err(&ctx, m))? as u32;
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
            m.insert("size".into(), (done.size as i64).into());
            m.insert(
                "virtual_size_gib".into(),
                (done.virtual_size_gib as i64).into(),
            );
            Ok(m)
        },
    );
}
