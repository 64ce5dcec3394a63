//! The step cache for builder scripts (`host::qemu::step_cache`): `ctx.vm_step_cache()`
//! looks the build's longest cached prefix up before the VM exists, `cache.restore_disk`
//! makes the VM's disk from it, and `qemu_start` / `connect` take the cache (`step_cache:`
//! in their maps) to start the VM from its saved memory and to capture each step.

use std::path::PathBuf;
use std::sync::Arc;

use rhai::{Dynamic, Engine, EvalAltResult, Map, NativeCallContext};

use crate::caps::Scope;
use crate::context::{BuildRt, CacheMode};
use crate::host::machine::Machine;
use crate::host::qemu::step_cache::{CachedMachine, Restored, VmStepCache};
use crate::host::vm_cache::VmCache;
use crate::script::api::{Ctx, block};
use crate::script::error::runtime_err;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// The step cache as a builder script holds it.
#[derive(Clone)]
pub struct StepCacheObj {
    pub cache: Arc<VmStepCache>,
    rt: Arc<BuildRt>,
    scope: Scope,
}

fn err(ctx: &NativeCallContext, msg: impl std::fmt::Display) -> Box<EvalAltResult> {
    runtime_err(msg.to_string(), ctx.call_position())
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<StepCacheObj>("StepCache");
    engine.register_fn("vm_step_cache", |c: &mut Ctx| -> Dynamic {
        match open(c) {
            Some(obj) => Dynamic::from(obj),
            None => Dynamic::UNIT,
        }
    });
    engine.register_fn(
        "restore_disk",
        |ctx: NativeCallContext,
         s: &mut StepCacheObj,
         work: &str,
         base: Dynamic|
         -> RhaiResult<Dynamic> {
            let work_abs =
                s.rt.plan
                    .project
                    .host_path_write(&s.scope, work)
                    .map_err(|e| err(&ctx, e))?;
            let base_abs: Option<PathBuf> = if base.is_unit() {
                None
            } else if let Some(dl) = base
                .clone()
                .try_cast::<crate::caps::net::rhai::DownloadObj>()
            {
                // Fetched (or a local file verified in place): kiln's own path to it.
                Some(dl.dl.path().to_path_buf())
            } else {
                let b = base.to_string();
                Some(
                    s.rt.plan
                        .project
                        .host_path_read(&s.scope, &b)
                        .map_err(|e| err(&ctx, e))?,
                )
            };
            let base_abs = base_abs.map(|b| std::fs::canonicalize(&b).unwrap_or(b));
            let cache = s.cache.clone();
            let cleanup = s.rt.cleanup.clone();
            let id = block(
                &ctx,
                &s.rt,
                super::run(&s.scope, &format!("step cache: disk {work}"), async move {
                    cache
                        .prepare_disk(&work_abs, base_abs.as_deref(), &cleanup)
                        .await
                }),
            )?
            .map_err(|e| err(&ctx, e))?;
            let Some(id) = id else {
                return Ok(Dynamic::UNIT);
            };
            s.rt.own(work, id);
            let hit = s.cache.hit().map(|h| h.entry.step).unwrap_or(0);
            let mut m = Map::new();
            m.insert("step".into(), i64::try_from(hit).unwrap_or(0).into());
            Ok(Dynamic::from_map(m))
        },
    );
    engine.register_get("restored_step", |s: &mut StepCacheObj| -> i64 {
        s.cache
            .hit()
            .map(|h| i64::try_from(h.entry.step).unwrap_or(0))
            .unwrap_or(0)
    });
}

/// The cache for this build, unless the run or the setup says no (one warning then).
fn open(c: &Ctx) -> Option<StepCacheObj> {
    let control = c.rt.step_control();
    if control.cache == CacheMode::Off {
        return None;
    }
    let store = match VmCache::default_location().and_then(VmCache::open) {
        Ok(s) => s,
        Err(e) => {
            c.rt.ui
                .warn(&c.rt.label, &format!("the step cache is off: {e}"));
            return None;
        }
    };
    let planned = c.rt.provisioner.step_keys(&c.rt);
    match VmStepCache::open(store, &c.rt.label, control.cache, planned, control.stop_at) {
        Ok(cache) => {
            // The cache's claim on its layers lives as long as the build.
            c.rt.hold(Box::new(cache.clone()));
            Some(StepCacheObj {
                cache,
                rt: c.rt.clone(),
                scope: c.scope.clone(),
            })
        }
        Err(e) => {
            c.rt.ui
                .warn(&c.rt.label, &format!("the step cache is off: {e}"));
            None
        }
    }
}

/// `step_cache:` in a `qemu_start` spec.
pub fn cache_of(spec: &Map, key: &str) -> Result<Option<Arc<VmStepCache>>, String> {
    match spec.get(key).filter(|v| !v.is_unit()) {
        None => Ok(None),
        Some(v) => v
            .clone()
            .try_cast::<StepCacheObj>()
            .map(|o| Some(o.cache))
            .ok_or_else(|| format!("`{key}` must be the cache from ctx.vm_step_cache()")),
    }
}

/// What the user reads after the VM started from the cache.
pub fn say_restore(rt: &BuildRt, cache: &VmStepCache) {
    if let Some(line) = cache.restore_line() {
        rt.ui.say(&rt.label, &line);
    }
}

/// The connection of a build with a step cache: pinned to the saved host key after a
/// memory restore, clock set, and with the cache in front of it.
pub async fn machine_for(
    cache: &Arc<VmStepCache>,
    inner: Arc<dyn Machine>,
) -> Result<Arc<dyn Machine>, String> {
    cache.after_connect(inner.as_ref()).await?;
    if let Some(why) = cache.off_reason().await {
        tracing::info!("step states are not captured: {why}");
    }
    Ok(Arc::new(CachedMachine::new(inner, cache.clone())))
}

/// The host key a restored VM must present (`None`: trust on first use as usual).
pub fn pinned_host_key(cache: &VmStepCache) -> Option<String> {
    match cache.restored() {
        Restored::Memory { .. } => cache.pinned_host_key(),
        _ => None,
    }
}
