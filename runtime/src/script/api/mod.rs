//! The runtime face of the host API in Rhai: `ctx` (given to builders and
//! post-processors) and what every capability registers on top of it. Every
//! capability function lives in its capability's `rhai` adapter (`caps::<x>::rhai`)
//! and goes through that capability's facade; this module only holds what they share.

mod artifacts;
mod ctx;

use rhai::{Dynamic, Engine, EvalAltResult, NativeCallContext};

pub use ctx::Ctx;

use crate::context::BuildRt;

/// Host waits end early when the build is cancelled; say why.
pub fn block<F: std::future::Future>(
    ctx: &NativeCallContext,
    rt: &BuildRt,
    f: F,
) -> Result<F::Output, Box<EvalAltResult>> {
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
    engine.register_type_with_name::<crate::caps::machine::rhai::MachineObj>("Machine");
    ctx::register_pure(engine);
    for cap in crate::caps::TABLE {
        cap.register_pure(engine);
    }
}

/// A build's runtime API: `ctx`, the artifact primitives, and every capability's
/// functions.
pub fn register_runtime(engine: &mut Engine) {
    register_types(engine);
    ctx::register(engine);
    artifacts::register(engine);
    for cap in crate::caps::TABLE {
        cap.register_rhai(engine);
    }
}
