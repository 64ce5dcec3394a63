//! `ctx.connect(ssh, opts)` for builders: an SSH machine over [`super::connect`].
//! `opts.key` takes a [`super::PrivateKey`] held in memory (the amazon_ebs builder's
//! temporary key pair), so its text never becomes a script value.

use std::sync::Arc;

use rhai::{Dynamic, Engine, EvalAltResult, Map, NativeCallContext};

use crate::caps::machine::MachineCap;
use crate::caps::machine::rhai::MachineObj;
use crate::caps::qemu;
use crate::host::machine::Machine;
use crate::host::ssh::ConnectOptions;
use crate::script::api::{Ctx, block};
use crate::script::error::runtime_err;
use crate::script::value;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

fn connect(ctx: &NativeCallContext, c: &mut Ctx, ssh: Map, opts: Map) -> RhaiResult<MachineObj> {
    let err = |m: String| runtime_err(m, ctx.call_position());
    value::check_keys(
        &opts,
        &[
            "trust_on_first_use",
            "port",
            "vm",
            "file_disk",
            "key",
            "step_cache",
        ],
        "connect options",
    )
    .map_err(err)?;
    let key = match opts.get("key").filter(|v| !v.is_unit()) {
        Some(v) => Some(v.clone().try_cast::<super::PrivateKey>().ok_or_else(|| {
            err("`key` must be a key pair kiln created (e.g. ec2.create_key_pair(...))".into())
        })?),
        None => None,
    };
    let cfg = value::ssh_config(&Dynamic::from_map(ssh)).map_err(err)?;
    if cfg.host.as_deref().unwrap_or_default().is_empty() {
        return Err(err("ssh: `host` is required".into()));
    }
    let tofu = match opts.get("trust_on_first_use") {
        Some(v) => value::bool(v, "trust_on_first_use").map_err(err)?,
        None => false,
    };
    // Pinning the first key seen is safe only for a machine the builder itself
    // created, which is what the qemu grant (a VM) or an ec2 grant (an instance) says.
    let grants = c.scope.grants();
    let is_vm = grants.flag(&qemu::SPEC);
    if tofu && !is_vm && !grants.holds(&crate::caps::ec2::SPEC) {
        return Err(err(
            "trust_on_first_use is only for builders that create the machine (the qemu or ec2 grant)"
                .into(),
        ));
    }
    let port_override = match opts.get("port") {
        Some(p) => Some(value::int_in::<u16>(p, "port", "1-65535").map_err(err)?),
        None => None,
    };
    // The VM this machine runs in: its exit is named when it cuts the connection, and
    // (unless `file_disk: false`) large uploads go through a hot-plugged disk.
    let vm = match opts.get("vm").filter(|v| !v.is_unit()) {
        Some(v) => Some(
            v.clone()
                .try_cast::<qemu::rhai::VmObj>()
                .ok_or_else(|| err("`vm` must be the VM from ctx.qemu_start".into()))?
                .vm
                .clone(),
        ),
        None => None,
    };
    let use_file_disk = match opts.get("file_disk") {
        Some(v) => value::bool(v, "file_disk").map_err(err)?,
        None => true,
    };
    let file_disk = vm
        .as_ref()
        .filter(|_| use_file_disk)
        .map(|vm| Arc::new(crate::host::qemu::FileDisk::new(vm.clone())));
    // A VM kiln started (its processes end with it), whether it is pinned on first use
    // or, restored from the step cache, pinned to the key saved with it.
    let created_vm = is_vm && tofu;
    let cache = qemu::cache_rhai::cache_of(&opts, "step_cache").map_err(err)?;
    let mut cfg = cfg;
    let mut tofu = tofu;
    // A VM restored from its saved memory must be the machine that was saved.
    if let Some(key) = cache
        .as_ref()
        .and_then(|c| qemu::cache_rhai::pinned_host_key(c))
    {
        cfg.host_key = Some(key);
        tofu = false;
    }
    let copts = ConnectOptions {
        trust_on_first_use: tofu,
        port_override,
        vm,
        ..ConnectOptions::default()
    };
    let project = c.rt.plan.project.clone();
    let why_not = super::unreachable_reason(&cfg, key.is_some(), created_vm);
    let m = block(
        ctx,
        &c.rt,
        super::connect_with_key(&c.scope, &project, cfg.clone(), copts.clone(), key.as_ref()),
    )?
    .map_err(|e| err(e.to_string()))?;
    block(
        ctx,
        &c.rt,
        super::record_target(&c.rt.cleanup, &project, &m, &cfg, &copts, why_not),
    )?;
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
    let machine: Arc<dyn Machine> = match &cache {
        Some(cache) => block(
            ctx,
            &c.rt,
            qemu::cache_rhai::machine_for(cache, Arc::new(m)),
        )?
        .map_err(|e| err(format!("after restoring the cached state: {e}")))?,
        None => Arc::new(m),
    };
    let ui = c.rt.ui.clone();
    let label = c.rt.label.clone();
    let cap = MachineCap::new(
        machine,
        c.rt.builder_scope.clone(),
        Arc::new(move |s, line| ui.output(&label, s.name(), line)),
    );
    Ok(MachineObj::new(cap, c.rt.clone()))
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<super::PrivateKey>("PrivateKey");
    engine.register_get("name", |k: &mut super::PrivateKey| k.name().to_string());
    engine.register_fn(
        "connect",
        |ctx: NativeCallContext, c: &mut Ctx, ssh: Map| connect(&ctx, c, ssh, Map::new()),
    );
    engine.register_fn(
        "connect",
        |ctx: NativeCallContext, c: &mut Ctx, ssh: Map, opts: Map| connect(&ctx, c, ssh, opts),
    );
}
