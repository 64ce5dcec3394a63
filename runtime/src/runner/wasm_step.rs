//! A `wasm(...)` step: load the component (compiled once per process, cached on
//! disk) and run it over a [`StepEnv`] holding the step's machine and scope; each
//! capability the step holds attaches itself and is reached only through its facade.

use std::sync::Arc;
use std::time::Instant;

use crate::caps::machine::MachineCap;
use crate::caps::{Grants, Holder};
use crate::context::{BuildRt, StepError};
use crate::plan::StepSpec;
use crate::wasm::{LogLevel, MAX_COMPONENT_BYTES, StepEnv, WasmLimits};

pub fn run(
    rt: &Arc<BuildRt>,
    cap: &MachineCap,
    step: &StepSpec,
    path: &str,
    config_json: &str,
) -> Result<(), StepError> {
    let scope = cap.scope();
    // Loading the module is the build script's own read of its project, not the
    // guest's: it happens under the script's grant, and the guest gets none of it.
    let loader = scope.with_step(
        &format!("{} (loading)", scope.step()),
        Holder::Step,
        Grants::read_only("."),
    );
    let project = &rt.plan.project;
    let bytes = project
        .read_to_vec(&loader, path, MAX_COMPONENT_BYTES)
        .map_err(|e| StepError::Failed(format!("cannot read WASM provisioner: {e}")))?;
    let engine = rt.wasm.engine().map_err(StepError::Failed)?;
    let provisioner = engine
        .load(&bytes)
        .map_err(|e| StepError::Failed(format!("{path}: {e}")))?;
    tracing::debug!(path, digest = provisioner.digest(), "wasm component loaded");
    // The build's registry record names every module it ran.
    crate::caps::registry::note_module(scope, path, provisioner.digest());

    let mut limits = WasmLimits::default();
    if let Some(m) = step.options.memory {
        limits.memory_bytes = m;
    }
    if let Some(t) = step.options.timeout {
        limits.timeout = t;
    }
    let ui = rt.ui.clone();
    let label = rt.label.clone();
    let env = StepEnv {
        scope: scope.clone(),
        machine: Some(cap.clone()),
        project: project.clone(),
        redactor: rt.ui.redactor().clone(),
        log: Arc::new(move |level, message| match level {
            LogLevel::Warn => ui.warn(&label, message),
            LogLevel::Info => ui.message(&label, message),
            LogLevel::Debug => tracing::debug!(build = %label, "guest: {message}"),
        }),
        secret_source: crate::caps::secrets::from_environment(),
    };
    let started = Instant::now();
    let result = rt
        .block_on(provisioner.run(config_json, env, limits))
        .map_err(StepError::Cancelled)?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(summary) => {
            scope.event("wasm.run", path, "ok", ms);
            if !summary.is_empty() {
                rt.ui.message(&rt.label, &summary);
            }
            Ok(())
        }
        Err(e) => {
            scope.event("wasm.run", path, &format!("error: {e}"), ms);
            Err(StepError::Failed(e.to_string()))
        }
    }
}
