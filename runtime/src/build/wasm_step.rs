//! A `wasm(...)` step: load the component (compiled once per process, cached on
//! disk), turn the step's grants into WASI preopens and linked interfaces, and give
//! the guest a [`GuestHost`] whose every call goes through the broker.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::context::BuildRt;
use crate::caps::{Capability, Grants, Scope};
use crate::host::machine::Machine;
use crate::host::ssh::Stream;
use crate::plan::StepSpec;
use crate::ui::Ui;
use crate::wasm::{
    ExecOutput, GuestError, GuestHost, LogLevel, Preopen, WasmEngine, WasmGrants, WasmLimits,
};

/// The process's wasm engine, created on first use (most builds have no wasm step).
pub struct WasmRuntime {
    engine: OnceLock<Result<WasmEngine, String>>,
}

impl Default for WasmRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl WasmRuntime {
    pub fn new() -> Self {
        WasmRuntime {
            engine: OnceLock::new(),
        }
    }

    pub fn engine(&self) -> Result<&WasmEngine, String> {
        self.engine
            .get_or_init(|| {
                let dir = std::env::var_os("KILN_CACHE_DIR")
                    .map(|d| std::path::PathBuf::from(d).join("wasm"));
                WasmEngine::new(dir).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// Largest component kiln will load.
const MAX_COMPONENT_BYTES: u64 = 256 << 20;

pub fn run(
    rt: &Arc<BuildRt>,
    machine: &Machine,
    scope: &Scope,
    step: &StepSpec,
    path: &str,
    config_json: &str,
) -> Result<(), String> {
    // Loading the module is the build script's own read of its project, not the
    // guest's: it happens under the script's grant, and the guest gets none of it.
    let loader = scope.with_step(
        &format!("{} (loading)", scope.step()),
        Grants {
            read: vec![".".into()],
            ..Default::default()
        },
    );
    let project = &rt.plan.project;
    let bytes = project
        .read_to_vec(&loader, path, MAX_COMPONENT_BYTES)
        .map_err(|e| format!("cannot read WASM provisioner: {e}"))?;
    let engine = rt.wasm.engine()?;
    let provisioner = engine.load(&bytes).map_err(|e| format!("{path}: {e}"))?;
    tracing::debug!(path, digest = provisioner.digest(), "wasm component loaded");

    let g = &step.grants;
    let mut grants = WasmGrants {
        machine: g.machine,
        secrets: g.secrets.clone(),
        http: g.http.clone(),
        ..Default::default()
    };
    // Each granted directory becomes a preopen at the same path the script wrote,
    // opened through the grant (so it cannot name anything outside it).
    let preopen = |dir: &String, d: cap_std::fs::Dir| Preopen {
        dir: d,
        guest_path: dir.clone(),
        label: dir.clone(),
    };
    for dir in &g.read {
        let d = project
            .open_dir_read(scope, dir)
            .map_err(|e| format!("allow.read {dir:?}: {e}"))?;
        grants.read.push(preopen(dir, d));
    }
    for dir in &g.write {
        let d = project
            .open_dir_write(scope, dir)
            .map_err(|e| format!("allow.write {dir:?}: {e}"))?;
        grants.write.push(preopen(dir, d));
    }
    let mut limits = WasmLimits::default();
    if let Some(m) = step.options.memory {
        limits.memory_bytes = m;
    }
    if let Some(t) = step.options.timeout {
        limits.timeout = t;
    }
    let host = Arc::new(MachineGuest {
        machine: machine.clone(),
        scope: scope.clone(),
        ui: rt.ui.clone(),
        label: rt.label.clone(),
        env: super::steps::resolve_env(step),
    });
    let started = Instant::now();
    let result = rt.block_on(provisioner.run(config_json, grants, limits, host))?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(summary) => {
            scope.record_named("wasm.run", path, "ok", ms);
            if !summary.is_empty() {
                rt.ui.message(&rt.label, &summary);
            }
            Ok(())
        }
        Err(e) => {
            scope.record_named("wasm.run", path, &format!("error: {e}"), ms);
            Err(e.to_string())
        }
    }
}

/// The guest's view of the host: the real machine, through the broker.
struct MachineGuest {
    machine: Machine,
    scope: Scope,
    ui: Ui,
    label: String,
    env: Vec<(String, String)>,
}

impl MachineGuest {
    fn check(&self, cap: &Capability, detail: &str) -> Result<(), GuestError> {
        self.scope
            .check(cap, detail)
            .map_err(|e| GuestError::Denied(e.to_string()))
    }

    /// One machine call: checked, timed and audited with its outcome, like `exec`.
    async fn on_machine<T>(
        &self,
        detail: &str,
        call: impl std::future::Future<Output = Result<T, crate::host::ssh::SshError>>,
    ) -> Result<T, GuestError> {
        self.check(&Capability::Machine, detail)?;
        let started = Instant::now();
        let r = call.await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let outcome = match &r {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        self.scope
            .record(&Capability::Machine, detail, &outcome, ms);
        r.map_err(ssh_err)
    }
}

fn ssh_err(e: crate::host::ssh::SshError) -> GuestError {
    GuestError::Failed(e.to_string())
}

#[async_trait::async_trait]
impl GuestHost for MachineGuest {
    async fn exec(
        &self,
        command: String,
        env: Vec<(String, String)>,
    ) -> Result<ExecOutput, GuestError> {
        let detail = format!("exec {command}");
        self.check(&Capability::Machine, &detail)?;
        let started = Instant::now();
        let mut all_env = self.env.clone();
        all_env.extend(env);
        let ui = self.ui.clone();
        let label = self.label.clone();
        let r = self
            .machine
            .session()
            .await
            .exec(&command, &all_env, &mut |s, line| {
                ui.output(
                    &label,
                    if matches!(s, Stream::Stdout) {
                        "stdout"
                    } else {
                        "stderr"
                    },
                    line,
                )
            })
            .await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match r {
            Ok(out) => {
                self.scope.record(
                    &Capability::Machine,
                    &detail,
                    &format!("ok (exit {})", out.exit_code),
                    ms,
                );
                Ok(ExecOutput {
                    exit_code: out.exit_code,
                    stdout: out.stdout,
                    stderr: out.stderr,
                })
            }
            Err(e) => {
                self.scope
                    .record(&Capability::Machine, &detail, &format!("error: {e}"), ms);
                Err(ssh_err(e))
            }
        }
    }

    async fn upload(
        &self,
        source: cap_std::fs::File,
        guest_path: String,
        mode: Option<u32>,
    ) -> Result<u64, GuestError> {
        let call = async {
            let (n, _) = self
                .machine
                .upload_file(&source, &guest_path, mode, &|_| {})
                .await?;
            Ok(n)
        };
        self.on_machine(&format!("upload {guest_path}"), call).await
    }

    async fn write_file(
        &self,
        guest_path: String,
        contents: Vec<u8>,
        mode: Option<u32>,
    ) -> Result<(), GuestError> {
        let call = async {
            let session = self.machine.session().await;
            session.write_file(&guest_path, &contents, mode).await
        };
        self.on_machine(&format!("write_file {guest_path}"), call)
            .await
    }

    async fn read_file(&self, guest_path: String) -> Result<Vec<u8>, GuestError> {
        let call = async {
            let session = self.machine.session().await;
            session.read_file(&guest_path, 64 << 20).await
        };
        self.on_machine(&format!("read_file {guest_path}"), call)
            .await
    }

    async fn facts(&self) -> Vec<(String, String)> {
        if self.check(&Capability::Machine, "facts").is_err() {
            return Vec::new();
        }
        self.machine
            .facts()
            .await
            .map(|f| f.into_iter().collect())
            .unwrap_or_default()
    }

    fn secret(&self, name: &str) -> Result<String, GuestError> {
        let cap = Capability::Secret(name.to_string());
        self.check(&cap, "")?;
        let value = std::env::var(name).map_err(|_| {
            GuestError::NotFound(format!("secret {name:?} is not set in kiln's environment"))
        })?;
        // The guest may print it: make sure nothing kiln shows carries it.
        self.ui.redactor().add(name, &value);
        self.scope.record(&cap, "get", "ok", 0.0);
        Ok(value)
    }

    fn allow_http(&self, host: &str, port: u16) -> Result<(), GuestError> {
        let cap = Capability::NetHttp(host.to_string());
        self.check(&cap, &format!("port {port}"))?;
        self.scope
            .record(&cap, &format!("connect port {port}"), "ok", 0.0);
        Ok(())
    }

    fn log(&self, level: LogLevel, message: &str) {
        match level {
            LogLevel::Warn => self.ui.warn(&self.label, message),
            LogLevel::Info => self.ui.message(&self.label, message),
            LogLevel::Debug => tracing::debug!(build = %self.label, "guest: {message}"),
        }
    }

    fn audit(&self, capability: &str, object: &str, outcome: &str) {
        self.scope.record_named(capability, object, outcome, 0.0);
    }
}
