//! `kiln:host/machine` for WASM guests: a few lines per function over [`MachineCap`].
//! An upload's source is opened through the project and the step's `read` grant,
//! exactly as a Rhai `m.upload` opens it, so both audit the same records.

use wasmtime::component::{HasData, Linker};

use super::{CallError, DEFAULT_READ_LIMIT, MachineCap};
use crate::caps::Project;
use crate::caps::ScopeError;
use crate::caps::fs::FsError;
use crate::host::machine::MachineError;
use crate::wasm::WasmError;
use crate::wasm::bindings::{WitError, WitExecOutput, machine};
use crate::wasm::host::{Adapter as WasmAdapter, HostState, Setup, StepEnv};

/// The guest's machine handle.
struct Handle {
    cap: MachineCap,
    project: Project,
}

pub struct Adapter;

#[async_trait::async_trait]
impl WasmAdapter for Adapter {
    async fn attach(&self, env: &StepEnv, setup: &mut Setup<'_>) -> Result<bool, WasmError> {
        if !env.scope.grants().flag(&super::SPEC) {
            return Ok(false);
        }
        let Some(m) = &env.machine else {
            return Ok(false);
        };
        setup.handles.insert(Handle {
            cap: m.clone(),
            project: env.project.clone(),
        });
        Ok(true)
    }

    fn link(&self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        machine::add_to_linker::<HostState, View>(linker, |s: &mut HostState| {
            MachineView(s.handles.get_mut::<Handle>())
        })
    }
}

struct View;
impl HasData for View {
    type Data<'a> = MachineView<'a>;
}

/// The handle as one call sees it; `None` only if the interface was linked without
/// the grant, which [`Adapter::attach`] never does.
pub struct MachineView<'a>(Option<&'a mut Handle>);

impl MachineView<'_> {
    fn handle(&self) -> Result<&Handle, WitError> {
        self.0.as_deref().ok_or_else(|| {
            WitError::Denied(format!(
                "this step is not granted the machine; add {}",
                super::SPEC.example
            ))
        })
    }
}

pub(crate) fn wit_error(e: CallError) -> WitError {
    match e {
        ScopeError::Denied(d) => WitError::Denied(d.to_string()),
        ScopeError::Failed(MachineError::Disconnected(m)) => WitError::Io(m),
        ScopeError::Failed(MachineError::TooLarge(m) | MachineError::Invalid(m)) => {
            WitError::Failed(m)
        }
        ScopeError::Failed(MachineError::Failed(m)) => WitError::Failed(m),
    }
}

fn fs_error(e: FsError) -> WitError {
    match e {
        FsError::Denied(d) => WitError::Denied(d.to_string()),
        FsError::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
            WitError::NotFound(format!("{path}: {source}"))
        }
        other => WitError::Io(other.to_string()),
    }
}

impl machine::Host for MachineView<'_> {
    async fn exec(
        &mut self,
        command: String,
        env: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<WitExecOutput, WitError>> {
        let h = match self.handle() {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        Ok(h.cap
            .exec(&command, &env)
            .await
            .map(|o| WitExecOutput {
                exit_code: o.exit_code,
                stdout: o.stdout,
                stderr: o.stderr,
            })
            .map_err(wit_error))
    }

    async fn upload(
        &mut self,
        host_path: String,
        guest_path: String,
        mode: Option<u32>,
    ) -> wasmtime::Result<Result<u64, WitError>> {
        let h = match self.handle() {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let file = match h.project.open_read(h.cap.scope(), &host_path) {
            Ok(f) => f,
            Err(e) => return Ok(Err(fs_error(e))),
        };
        if !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
            return Ok(Err(WitError::Failed(format!(
                "`{host_path}` is not a regular file"
            ))));
        }
        Ok(h.cap
            .upload(&host_path, &file, &guest_path, mode, &|_| {})
            .await
            .map(|u| u.bytes)
            .map_err(wit_error))
    }

    async fn write_file(
        &mut self,
        guest_path: String,
        contents: Vec<u8>,
        mode: Option<u32>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let h = match self.handle() {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        Ok(h.cap
            .write_file(&guest_path, &contents, mode)
            .await
            .map_err(wit_error))
    }

    async fn read_file(
        &mut self,
        guest_path: String,
    ) -> wasmtime::Result<Result<Vec<u8>, WitError>> {
        let h = match self.handle() {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        Ok(h.cap
            .read_file(&guest_path, DEFAULT_READ_LIMIT)
            .await
            .map_err(wit_error))
    }

    async fn facts(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        let Ok(h) = self.handle() else {
            return Ok(Vec::new());
        };
        Ok(h.cap
            .facts()
            .await
            .map(|f| f.into_iter().collect())
            .unwrap_or_default())
    }
}
