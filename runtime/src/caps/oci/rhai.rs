//! The oci builder's primitives, for its script (`scripts/builders/oci.rhai`):
//!
//! * `ctx.oci_build(opts)`: the base image (scratch, an OCI layout through the `read`
//!   grant, or a pull through [`super::Registry`]) unpacked into kiln's store, and the
//!   container machine the steps run in (`b.machine`, for `ctx.provision`);
//! * `b.commit(changes, squash)`: the image from the base and the steps' layers;
//! * `img.write_oci_layout(dir, tag)`, `img.write_docker_archive(path, tags)` through the
//!   `write` grant, and `img.push(repository, tags)` through [`super::Registry`].
//!
//! Heavy work (unpacking, layers, archives) runs on blocking threads; everything made
//! on disk is on the build's cleanup stack before the call returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, NativeCallContext};

use kiln_oci::{Changes, Compressor, ImageSource, OciLayout, Platform, Reference};

use super::{Access, Registry};
use crate::caps::machine::MachineCap;
use crate::caps::machine::rhai::MachineObj;
use crate::caps::{Scope, Use};
use crate::context::BuildRt;
use crate::host::oci::{BaseImage, BuildDir, CommitOptions, Committed, Store, store_dir};
use crate::host::rootfs::{RootfsMachine, RootfsSettings};
use crate::plan::SecretHandle;
use crate::script::api::{Ctx, block};
use crate::script::error::runtime_err;
use crate::script::value;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// The default size limit of kiln's OCI store.
const DEFAULT_CACHE_MAX: u64 = 10 << 30;

struct BuildState {
    rt: Arc<BuildRt>,
    scope: Scope,
    base: BaseImage,
    machine: RootfsMachine,
    machine_obj: MachineObj,
    access: Access,
    build_dir: Arc<BuildDir>,
    epoch: i64,
    compressor: Arc<dyn Compressor>,
}

/// What `ctx.oci_build` returns.
#[derive(Clone)]
pub struct OciBuildObj {
    st: Arc<BuildState>,
}

/// A committed image.
#[derive(Clone)]
pub struct OciImageObj {
    st: Arc<BuildState>,
    image: Arc<Committed>,
}

fn err(ctx: &NativeCallContext, msg: impl std::fmt::Display) -> Box<EvalAltResult> {
    runtime_err(msg.to_string(), ctx.call_position())
}

fn opt_str(m: &Map, key: &str) -> Result<Option<String>, String> {
    match m.get(key) {
        None => Ok(None),
        Some(v) if v.is_unit() => Ok(None),
        Some(v) => value::string(v, key).map(Some),
    }
}

/// `path` as the host sees it (absolute, or in the project).
fn host_path(rt: &BuildRt, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        rt.plan.project.path().join(p)
    }
}

/// Runs blocking work on a blocking thread, ending early if the build is cancelled.
fn blocking<T: Send + 'static>(
    ctx: &NativeCallContext,
    rt: &BuildRt,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> RhaiResult<T> {
    block(ctx, rt, tokio::task::spawn_blocking(f))?
        .map_err(|e| err(ctx, format!("internal error: {e}")))?
        .map_err(|m| err(ctx, m))
}

/// The machine's architecture in OCI's names.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// `timestamp` (Unix seconds), else `$SOURCE_DATE_EPOCH`, else 0: layers and configs
/// carry no build time unless asked, so two builds of the same inputs are identical.
fn epoch(opts: &Map) -> Result<i64, String> {
    if let Some(v) = opts.get("timestamp").filter(|v| !v.is_unit()) {
        let t = value::int(v, "timestamp")?;
        if t < 0 {
            return Err("timestamp must be Unix seconds (0 or more)".into());
        }
        return Ok(t);
    }
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|t| *t >= 0)
            .ok_or_else(|| format!("SOURCE_DATE_EPOCH={s:?} is not Unix seconds")),
        _ => Ok(0),
    }
}

fn compressor(name: &str) -> Result<Arc<dyn Compressor>, String> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    Ok(match name {
        "gzip" => Arc::new(crate::artifact::compress::ParallelGzip { level: 6, threads }),
        "zstd" => Arc::new(kiln_oci::Zstd {
            level: 3,
            threads: u32::try_from(threads).unwrap_or(1),
        }),
        "none" => Arc::new(kiln_oci::Uncompressed),
        other => {
            return Err(format!(
                "compression {other:?}: use \"gzip\", \"zstd\" or \"none\""
            ));
        }
    })
}

/// Registry access from the builder's options: `credentials` (passwords must be
/// `secret(...)`), `auth_file` (else the default auth files, if this source may read
/// them), `ca_file`, `insecure`.
fn access(ctx: &NativeCallContext, c: &Ctx, opts: &Map) -> RhaiResult<Access> {
    let mut a = Access::default();
    let project = &c.rt.plan.project;
    if let Some(v) = opts.get("credentials").filter(|v| !v.is_unit()) {
        let map = v.clone().try_cast::<Map>().ok_or_else(|| {
            err(
                ctx,
                "credentials must be a map: #{ \"registry.example.com\": #{ username: \"me\", password: secret(\"REGISTRY_PW\") } }",
            )
        })?;
        for (registry, entry) in map {
            let e = entry.try_cast::<Map>().ok_or_else(|| {
                err(
                    ctx,
                    format!("credentials.{registry} must be #{{ username, password }}"),
                )
            })?;
            value::check_keys(
                &e,
                &["username", "password"],
                &format!("credentials.{registry}"),
            )
            .map_err(|m| err(ctx, m))?;
            let user = opt_str(&e, "username")
                .map_err(|m| err(ctx, m))?
                .ok_or_else(|| err(ctx, format!("credentials.{registry}: username is missing")))?;
            let pw = e
                .get("password")
                .and_then(|p| p.clone().try_cast::<SecretHandle>())
                .ok_or_else(|| {
                    err(
                        ctx,
                        format!(
                            "credentials.{registry}.password must be secret(\"NAME\") (the value comes from kiln's environment and is never shown)"
                        ),
                    )
                })?;
            a.credentials.insert(
                registry.to_string(),
                (user, kiln_oci::Secret::new(pw.value())),
            );
        }
    }
    match opt_str(opts, "auth_file").map_err(|m| err(ctx, m))? {
        Some(f) => {
            let f = crate::caps::fs::expand_home(&f);
            a.auth_file = Some(
                project
                    .host_path_read(&c.scope, &f)
                    .map_err(|e| err(ctx, e))?,
            );
        }
        None => {
            // The default files, as docker and podman read them, if the source may.
            if let Some(p) = kiln_oci::registry::default_auth_files()
                .into_iter()
                .find(|p| p.is_file())
            {
                let ps = p.display().to_string();
                if c.scope
                    .grants()
                    .allows(&Use::path(&crate::caps::fs::READ, &ps))
                {
                    a.auth_file = Some(
                        project
                            .host_path_read(&c.scope, &ps)
                            .map_err(|e| err(ctx, e))?,
                    );
                } else {
                    a.auth_note = Some(format!(
                        "kiln did not read the auth file {ps}: this source is not granted it; add allow: #{{ read: [\".\", {:?}] }} to the source, or set credentials",
                        p.parent().unwrap_or(Path::new("/")).display()
                    ));
                }
            }
        }
    }
    if let Some(f) = opt_str(opts, "ca_file").map_err(|m| err(ctx, m))? {
        let f = crate::caps::fs::expand_home(&f);
        a.ca_file = Some(
            project
                .host_path_read(&c.scope, &f)
                .map_err(|e| err(ctx, e))?,
        );
    }
    if let Some(v) = opts.get("insecure").filter(|v| !v.is_unit()) {
        a.insecure = value::string_list(v, "insecure").map_err(|m| err(ctx, m))?;
    }
    Ok(a)
}

fn oci_build(ctx: &NativeCallContext, c: &mut Ctx, opts: Map) -> RhaiResult<OciBuildObj> {
    value::check_keys(
        &opts,
        &[
            "image",
            "platform",
            "timestamp",
            "compression",
            "credentials",
            "auth_file",
            "ca_file",
            "insecure",
            "cache_max_size",
            "hostname",
        ],
        "oci_build options",
    )
    .map_err(|m| err(ctx, m))?;
    let rt = c.rt.clone();
    let image = opt_str(&opts, "image")
        .map_err(|m| err(ctx, m))?
        .unwrap_or_else(|| "scratch".into());
    let source = ImageSource::parse(&image).map_err(|e| err(ctx, e))?;
    let platform_s = opt_str(&opts, "platform")
        .map_err(|m| err(ctx, m))?
        .unwrap_or_else(|| format!("linux/{}", host_arch()));
    let platform = Platform::parse(&platform_s).map_err(|e| err(ctx, e))?;
    if platform.os != "linux" || platform.architecture != host_arch() {
        return Err(err(
            ctx,
            format!(
                "platform {platform}: kiln runs the steps natively, so it builds linux/{} images on this machine",
                host_arch()
            ),
        ));
    }
    let epoch = epoch(&opts).map_err(|m| err(ctx, m))?;
    let compression = opt_str(&opts, "compression")
        .map_err(|m| err(ctx, m))?
        .unwrap_or_else(|| "gzip".into());
    let compressor = compressor(&compression).map_err(|m| err(ctx, m))?;
    let max = match opts.get("cache_max_size").filter(|v| !v.is_unit()) {
        Some(v) => value::size_bytes(v, "cache_max_size").map_err(|m| err(ctx, m))?,
        None => DEFAULT_CACHE_MAX,
    };
    let hostname = opt_str(&opts, "hostname")
        .map_err(|m| err(ctx, m))?
        .unwrap_or_else(|| "kiln".into());
    let access = access(ctx, c, &opts)?;

    let root = store_dir().ok_or_else(|| {
        err(
            ctx,
            "kiln has no cache directory: set KILN_CACHE_DIR (or HOME)",
        )
    })?;
    let store = {
        let root = root.clone();
        Arc::new(blocking(ctx, &rt, move || {
            Store::open(&root).map_err(|e| e.to_string())
        })?)
    };
    let build_dir = Arc::new(store.new_build_dir().map_err(|e| err(ctx, e))?);
    {
        let (s, b) = (store.clone(), build_dir.clone());
        rt.cleanup.push(
            format!("OCI build directory {}", build_dir.path().display()),
            move || async move {
                tokio::task::spawn_blocking(move || {
                    b.remove();
                    s.release_and_prune(max);
                })
                .await?;
                Ok(())
            },
        );
    }

    let base = match source {
        ImageSource::Scratch => BaseImage::scratch(platform.clone()),
        ImageSource::Layout { dir, tag } => {
            let dir_s = crate::caps::fs::expand_home(&dir.to_string_lossy());
            rt.plan
                .project
                .open_dir_read(&c.scope, &dir_s)
                .map_err(|e| err(ctx, e))?;
            let abs = host_path(&rt, &dir_s);
            rt.ui.say(&rt.label, &format!("Reading base image {image}"));
            let (store, name, platform) = (store.clone(), image.clone(), platform.clone());
            blocking(ctx, &rt, move || {
                let layout = OciLayout::open(&abs).map_err(|e| e.to_string())?;
                let img = layout
                    .read_image(&tag, &platform)
                    .map_err(|e| e.to_string())?;
                BaseImage::from_local(&name, img, layout, &store).map_err(|e| e.to_string())
            })?
        }
        ImageSource::Registry(r) => {
            let reg = Registry::open(&c.scope, &access, &r.registry).map_err(|e| err(ctx, e))?;
            let pulled = OciLayout::create(&store.pulled_dir()).map_err(|e| err(ctx, e))?;
            rt.ui
                .say(&rt.label, &format!("Pulling {r} ({platform})..."));
            let report = block(
                ctx,
                &rt,
                reg.pull(&r.repository, &r.reference(), &platform, &pulled),
            )?
            .map_err(|e| err(ctx, e))?;
            rt.ui.say(
                &rt.label,
                &format!(
                    "Pulled {}@{}: {} blobs fetched ({} bytes), {} already here",
                    r.name(),
                    report.image.manifest_descriptor.digest,
                    report.fetched,
                    report.bytes_fetched,
                    report.present
                ),
            );
            let (store, name) = (store.clone(), image.clone());
            let mut base = blocking(ctx, &rt, move || {
                BaseImage::from_local(&name, report.image, pulled, &store)
                    .map_err(|e| e.to_string())
            })?;
            base.pulled_from = Some((r.registry.clone(), r.repository.clone()));
            base
        }
    };
    // What the steps start from is part of every step's cache key.
    rt.add_step_cache_base(&format!(
        "oci base {} platform {platform} epoch {epoch} compression {compression}",
        base.digest()
            .map_or_else(|| "scratch".to_string(), ToString::to_string),
    ));
    // The container machine is the builder's `machine` grant.
    c.scope
        .run_sync(
            &Use::flag(&crate::caps::machine::SPEC),
            &format!("container machine on {image} ({} layers)", base.trees.len()),
            || Ok::<(), String>(()),
        )
        .map_err(|e| err(ctx, e))?;

    let mut env = base.env();
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".into(), "/root".into()));
    }
    let cwd = base
        .image
        .as_ref()
        .and_then(|i| i.config.config.as_ref())
        .and_then(|c| c.working_dir.clone())
        .filter(|w| !w.is_empty());
    let settings = RootfsSettings {
        init: kiln_rootfs::InitProgram::current_exe(["__rootfs-init"]),
        env,
        cwd,
        hostname,
        epoch,
        compressor: compressor.clone(),
        read_cache: !rt.no_cache,
        name: rt.label.clone(),
    };
    let (ui, label) = (rt.ui.clone(), rt.label.clone());
    let machine = RootfsMachine::new(
        settings,
        base.trees.clone(),
        store,
        build_dir.clone(),
        rt.cleanup.clone(),
        Arc::new(move |m: &str| ui.say(&label, m)),
    );
    let (ui, label) = (rt.ui.clone(), rt.label.clone());
    let cap = MachineCap::new(
        Arc::new(machine.clone()),
        rt.builder_scope.clone(),
        Arc::new(move |s, line| ui.output(&label, s.name(), line)),
    );
    let machine_obj = MachineObj::new(cap, rt.clone());
    Ok(OciBuildObj {
        st: Arc::new(BuildState {
            rt,
            scope: c.scope.clone(),
            base,
            machine,
            machine_obj,
            access,
            build_dir,
            epoch,
            compressor,
        }),
    })
}

/// A command as `entrypoint`/`cmd`: an array is the exec form, a string the shell form.
fn command(v: &Dynamic, what: &str) -> Result<Option<Vec<String>>, String> {
    if v.is_unit() {
        return Ok(None);
    }
    if v.is_string() {
        let s = value::string(v, what)?;
        return Ok(Some(vec!["/bin/sh".into(), "-c".into(), s]));
    }
    value::string_list(v, what).map(Some)
}

fn pairs(v: &Dynamic, what: &str) -> Result<Vec<(String, String)>, String> {
    let map = v
        .clone()
        .try_cast::<Map>()
        .ok_or_else(|| format!("{what} must be a map like #{{ KEY: \"value\" }}"))?;
    map.into_iter()
        .map(|(k, v)| {
            if v.is::<SecretHandle>() {
                return Err(format!(
                    "{what}.{k}: a secret() cannot go into an image (anyone who pulls it reads it)"
                ));
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Packer's docker `changes`: a list of Dockerfile instructions, or a map.
fn changes(v: &Dynamic) -> Result<Changes, String> {
    if v.is_unit() {
        return Ok(Changes::default());
    }
    if v.is_array() {
        let lines = value::string_list(v, "changes")?;
        return Changes::from_instructions(&lines).map_err(|e| e.to_string());
    }
    let m = v.clone().try_cast::<Map>().ok_or_else(|| {
        "changes must be a map (#{ env: #{...}, cmd: [...] }) or a list of Dockerfile instructions".to_string()
    })?;
    value::check_keys(
        &m,
        &[
            "env",
            "entrypoint",
            "cmd",
            "workdir",
            "user",
            "exposed_ports",
            "labels",
            "volumes",
            "stop_signal",
        ],
        "changes",
    )?;
    let get = |k: &str| m.get(k).cloned().unwrap_or(Dynamic::UNIT);
    let opt_string = |k: &str| -> Result<Option<String>, String> {
        let v = get(k);
        if v.is_unit() {
            Ok(None)
        } else if v.is_int() {
            Ok(Some(v.to_string()))
        } else {
            value::string(&v, &format!("changes.{k}")).map(Some)
        }
    };
    let list = |k: &str| -> Result<Vec<String>, String> {
        let v = get(k);
        if v.is_unit() {
            return Ok(Vec::new());
        }
        let arr = v
            .into_array()
            .map_err(|t| format!("changes.{k} must be an array, not {t}"))?;
        Ok(arr.iter().map(|x| x.to_string()).collect())
    };
    let c = Changes {
        env: match get("env") {
            v if v.is_unit() => Vec::new(),
            v => pairs(&v, "changes.env")?,
        },
        entrypoint: command(&get("entrypoint"), "changes.entrypoint")?,
        cmd: command(&get("cmd"), "changes.cmd")?,
        workdir: opt_string("workdir")?,
        user: opt_string("user")?,
        exposed_ports: list("exposed_ports")?,
        labels: match get("labels") {
            v if v.is_unit() => Vec::new(),
            v => pairs(&v, "changes.labels")?,
        },
        volumes: list("volumes")?,
        stop_signal: opt_string("stop_signal")?,
    };
    // Check now, against an empty config, so a bad port fails before the build.
    c.apply(&mut kiln_oci::ContainerConfig::default())
        .map_err(|e| e.to_string())?;
    Ok(c)
}

fn commit(ctx: &NativeCallContext, b: &OciBuildObj, opts: Map) -> RhaiResult<OciImageObj> {
    value::check_keys(&opts, &["changes", "squash"], "commit options").map_err(|m| err(ctx, m))?;
    let st = &b.st;
    if st.machine.in_step() {
        return Err(err(ctx, "commit: a step's container is still running"));
    }
    let changes =
        changes(opts.get("changes").unwrap_or(&Dynamic::UNIT)).map_err(|m| err(ctx, m))?;
    let squash = match opts.get("squash") {
        Some(v) if !v.is_unit() => value::bool(v, "squash").map_err(|m| err(ctx, m))?,
        _ => false,
    };
    let steps = st.machine.steps();
    let (dir, base, compressor, epoch) = (
        st.build_dir.path().to_path_buf(),
        st.base.clone(),
        st.compressor.clone(),
        st.epoch,
    );
    let committed = blocking(ctx, &st.rt, move || {
        crate::host::oci::image::commit(
            &dir,
            &base,
            &steps,
            &CommitOptions {
                changes: &changes,
                squash,
                epoch,
                compressor: &*compressor,
            },
        )
        .map_err(|e| e.to_string())
    })?;
    Ok(OciImageObj {
        st: st.clone(),
        image: Arc::new(committed),
    })
}

/// Removes `path` if the build fails, unless the builder keeps it (`ctx.keep`).
fn own_new(rt: &Arc<BuildRt>, written: &str, abs: PathBuf, what: &str) {
    let id = rt
        .cleanup
        .push(format!("{what} {written}"), move || async move {
            let r = if abs.is_dir() {
                tokio::fs::remove_dir_all(&abs).await
            } else {
                tokio::fs::remove_file(&abs).await
            };
            match r {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            }
        });
    rt.own(written, id);
}

fn write_oci_layout(
    ctx: &NativeCallContext,
    img: &OciImageObj,
    dir: &str,
    tag: &str,
) -> RhaiResult<String> {
    let rt = &img.st.rt;
    let abs = host_path(rt, dir);
    let existed = abs.join("oci-layout").exists();
    rt.plan
        .project
        .open_dir_write(&img.st.scope, dir)
        .map_err(|e| err(ctx, e))?;
    if !existed {
        own_new(rt, dir, abs.clone(), "OCI layout");
    }
    let (c, t) = (img.image.clone(), tag.to_string());
    blocking(ctx, rt, move || {
        crate::host::oci::image::write_layout(&c, &abs, &t).map_err(|e| e.to_string())
    })?;
    Ok(dir.to_string())
}

fn write_docker_archive(
    ctx: &NativeCallContext,
    img: &OciImageObj,
    path: &str,
    tags: Array,
) -> RhaiResult<i64> {
    let rt = &img.st.rt;
    let tags: Vec<String> = tags
        .iter()
        .map(|t| value::string(t, "docker-archive tag"))
        .collect::<Result<_, _>>()
        .map_err(|m| err(ctx, m))?;
    let existed = host_path(rt, path).exists();
    let abs = rt
        .plan
        .project
        .host_path_write(&img.st.scope, path)
        .map_err(|e| err(ctx, e))?;
    if !existed {
        own_new(rt, path, abs.clone(), "docker-archive");
    }
    let c = img.image.clone();
    let size = blocking(ctx, rt, move || {
        crate::host::oci::image::write_archive(&c, &abs, &tags).map_err(|e| e.to_string())
    })?;
    Ok(i64::try_from(size).unwrap_or(i64::MAX))
}

fn push(
    ctx: &NativeCallContext,
    img: &OciImageObj,
    repository: &str,
    tags: Array,
) -> RhaiResult<Map> {
    let st = &img.st;
    let tags: Vec<String> = tags
        .iter()
        .map(|t| value::string(t, "push tag"))
        .collect::<Result<_, _>>()
        .map_err(|m| err(ctx, m))?;
    let r = Reference::parse(repository).map_err(|e| err(ctx, e))?;
    if r.tag.is_some() || r.digest.is_some() {
        return Err(err(
            ctx,
            format!(
                "push.repository {repository:?} must not have a tag or digest: list tags in push.tags"
            ),
        ));
    }
    let reg = Registry::open(&st.scope, &st.access, &r.registry).map_err(|e| err(ctx, e))?;
    let mount_from: Vec<String> = st
        .base
        .pulled_from
        .iter()
        .filter(|(host, repo)| *host == r.registry && *repo != r.repository)
        .map(|(_, repo)| repo.clone())
        .collect();
    st.rt.ui.say(
        &st.rt.label,
        &format!("Pushing {} to {}...", img.image.digest(), r.name()),
    );
    let report = block(
        ctx,
        &st.rt,
        reg.push(
            &img.image.layout,
            &img.image.image,
            &r.repository,
            &tags,
            mount_from,
        ),
    )?
    .map_err(|e| err(ctx, e))?;
    use kiln_oci::registry::BlobPush;
    let mut m = Map::new();
    m.insert("reference".into(), report.reference.clone().into());
    m.insert("digest".into(), report.manifest_digest.to_string().into());
    let n = |h| i64::try_from(report.count(h)).unwrap_or(i64::MAX);
    m.insert("uploaded".into(), n(BlobPush::Uploaded).into());
    m.insert("existed".into(), n(BlobPush::Existed).into());
    m.insert("mounted".into(), n(BlobPush::Mounted).into());
    m.insert(
        "bytes".into(),
        i64::try_from(report.bytes_uploaded)
            .unwrap_or(i64::MAX)
            .into(),
    );
    Ok(m)
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<OciBuildObj>("OciBuild");
    engine.register_type_with_name::<OciImageObj>("OciImage");
    engine.register_fn(
        "oci_build",
        |ctx: NativeCallContext, c: &mut Ctx, opts: Map| oci_build(&ctx, c, opts),
    );
    engine.register_get("machine", |b: &mut OciBuildObj| b.st.machine_obj.clone());
    engine.register_get("base", |b: &mut OciBuildObj| b.st.base.name.clone());
    engine.register_get("base_digest", |b: &mut OciBuildObj| {
        b.st.base
            .digest()
            .map_or_else(String::new, ToString::to_string)
    });
    engine.register_get("base_layers", |b: &mut OciBuildObj| {
        i64::try_from(b.st.base.trees.len()).unwrap_or(i64::MAX)
    });
    engine.register_get("epoch", |b: &mut OciBuildObj| b.st.epoch);
    engine.register_fn(
        "commit",
        |ctx: NativeCallContext, b: &mut OciBuildObj, opts: Map| commit(&ctx, b, opts),
    );
    engine.register_get("digest", |i: &mut OciImageObj| i.image.digest().to_string());
    engine.register_get("config_digest", |i: &mut OciImageObj| {
        i.image.built.config.digest.to_string()
    });
    engine.register_get("layers", |i: &mut OciImageObj| {
        i64::try_from(i.image.layers).unwrap_or(i64::MAX)
    });
    engine.register_get("size", |i: &mut OciImageObj| {
        let n: u64 = i.image.built.layers.iter().map(|l| l.size).sum();
        i64::try_from(n).unwrap_or(i64::MAX)
    });
    engine.register_fn(
        "write_oci_layout",
        |ctx: NativeCallContext, i: &mut OciImageObj, dir: &str, tag: &str| {
            write_oci_layout(&ctx, i, dir, tag)
        },
    );
    engine.register_fn(
        "write_docker_archive",
        |ctx: NativeCallContext, i: &mut OciImageObj, path: &str, tags: Array| {
            write_docker_archive(&ctx, i, path, tags)
        },
    );
    engine.register_fn(
        "push",
        |ctx: NativeCallContext, i: &mut OciImageObj, repository: &str, tags: Array| {
            push(&ctx, i, repository, tags)
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_from_a_map_or_instructions() {
        let engine = rhai::Engine::new();
        let m: Dynamic = engine
            .eval(
                r#"#{ env: #{ APP: "web", B: 2 }, entrypoint: ["/app"], cmd: "serve --port 80",
                     exposed_ports: [80, "443/tcp"], labels: #{ team: "infra" }, workdir: "/srv" }"#,
            )
            .unwrap();
        let c = changes(&m).unwrap();
        assert_eq!(
            c.env,
            vec![("APP".into(), "web".into()), ("B".into(), "2".into())]
        );
        assert_eq!(c.entrypoint, Some(vec!["/app".to_string()]));
        assert_eq!(c.cmd.as_ref().map(|v| v[0].as_str()), Some("/bin/sh"));
        assert_eq!(c.exposed_ports, vec!["80".to_string(), "443/tcp".into()]);
        let l: Dynamic = engine.eval(r#"["ENV A=1", "EXPOSE 8080"]"#).unwrap();
        assert_eq!(changes(&l).unwrap().exposed_ports, vec!["8080".to_string()]);
        let bad: Dynamic = engine.eval(r#"#{ exposed_ports: [70000] }"#).unwrap();
        assert!(changes(&bad).is_err());
        let typo: Dynamic = engine.eval(r#"#{ entrypiont: [] }"#).unwrap();
        assert!(changes(&typo).unwrap_err().contains("entrypoint"));
    }

    #[test]
    fn epoch_prefers_the_option_then_the_environment() {
        let mut m = Map::new();
        m.insert("timestamp".into(), Dynamic::from(1_700_000_000_i64));
        assert_eq!(epoch(&m).unwrap(), 1_700_000_000);
        m.insert("timestamp".into(), Dynamic::from(-1_i64));
        assert!(epoch(&m).is_err());
    }
}
