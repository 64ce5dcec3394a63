//! One WASM step's store state, and the interface capabilities implement to reach
//! guests.
//!
//! A capability with a WASM side provides an [`Adapter`]. For each run the engine
//! asks every adapter to [`Adapter::attach`] itself to the step: an adapter whose
//! grant the step holds puts its handle (its facade, e.g. `MachineCap`) into
//! [`Handles`] and may configure WASI (preopens, socket checks), and only then are
//! its interfaces linked. A handle that is absent means the interface was never
//! linked; the `Host` impls still answer `denied` rather than trust that.

pub(crate) mod fs_audit;
pub(crate) mod limits;
pub(crate) mod log;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::types;
use super::{LogLevel, WasmError};
use crate::caps::machine::MachineCap;
use crate::caps::{Project, Scope};
use crate::ui::Redactor;
pub(crate) use limits::MemLimiter;
pub use log::LogOutput;
pub(crate) use log::{GuestStdio, LogSink};

/// Capability handles in one store, by type: present only when the step holds the
/// grant.
#[derive(Default)]
pub struct Handles(HashMap<TypeId, Box<dyn Any + Send>>);

impl Handles {
    pub fn insert<T: Any + Send>(&mut self, handle: T) {
        self.0.insert(TypeId::of::<T>(), Box::new(handle));
    }

    pub fn get_mut<T: Any + Send>(&mut self) -> Option<&mut T> {
        self.0
            .get_mut(&TypeId::of::<T>())
            .and_then(|b| b.downcast_mut::<T>())
    }

    pub fn get<T: Any + Send>(&self) -> Option<&T> {
        self.0
            .get(&TypeId::of::<T>())
            .and_then(|b| b.downcast_ref::<T>())
    }
}

/// What a step offers a guest; the runner builds it, tests build it over fakes.
#[derive(Clone)]
pub struct StepEnv {
    /// The step's scope: its grants, and where every call is audited.
    pub scope: Scope,
    /// The machine, when the build has one (behind the `machine` grant).
    pub machine: Option<MachineCap>,
    /// The project, through which granted directories and upload sources are opened.
    pub project: Project,
    /// Secret values a guest reads are added here so nothing kiln prints carries them.
    pub redactor: Redactor,
    /// Where guest log lines go.
    pub log: LogOutput,
    /// Where secret values come from (kiln's environment in a build).
    pub secret_source: crate::caps::secrets::SecretSource,
}

/// What an adapter may change when it attaches to one run.
pub struct Setup<'a> {
    pub wasi: &'a mut WasiCtxBuilder,
    pub handles: &'a mut Handles,
}

/// A capability's WASM side.
#[async_trait::async_trait]
pub trait Adapter: Sync {
    /// Prepares one run if the step holds the grant: handles, preopens, socket checks.
    /// Returns whether the capability's interfaces must be linked.
    async fn attach(&self, env: &StepEnv, setup: &mut Setup<'_>) -> Result<bool, WasmError>;

    /// Links the capability's interfaces. Called once per set of attached
    /// capabilities (linkers are cached).
    fn link(&self, _linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        Ok(())
    }
}

/// Everything one run's store holds.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemLimiter,
    pub(crate) scope: Scope,
    pub(crate) log: Arc<LogSink>,
    pub handles: Handles,
    pub(crate) deadline_hit: bool,
}

impl HostState {
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// One line in the build log through the run's budget.
    pub fn log(&self, level: LogLevel, msg: &str) {
        self.log.emit(level, msg);
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_io::IoView for HostState {
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl types::Host for HostState {}

/// Interfaces every provisioner gets without a grant: kiln's types and log, and the
/// WASI basics. The file system is linked too, but it contains only the directories
/// granted with `read`/`write`.
pub(crate) const ALWAYS_LINKED: &[&str] = &[
    "kiln:host/types",
    "kiln:host/log",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:cli/",
    "wasi:filesystem/",
];

/// Whether `import` is one of [`ALWAYS_LINKED`].
pub(crate) fn always_linked(import: &str) -> bool {
    let iface = import.split('@').next().unwrap_or(import);
    ALWAYS_LINKED.iter().any(|w| {
        if w.ends_with('/') {
            iface.starts_with(w)
        } else {
            iface == *w
        }
    })
}

/// A linker with the always-present interfaces.
pub(crate) fn base_linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView as _};
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random};
    use wasmtime_wasi::random::WasiRandom;

    let mut linker: Linker<HostState> = Linker::new(engine);
    let l = &mut linker;
    types::add_to_linker::<HostState, HasSelf<HostState>>(l, |s| s)?;
    super::bindings::log::add_to_linker::<HostState, HasSelf<HostState>>(l, |s| s)?;
    wasmtime_wasi_io::add_to_linker_async(l)?;
    clocks::wall_clock::add_to_linker::<HostState, WasiClocks>(l, |t| t.clocks())?;
    clocks::monotonic_clock::add_to_linker::<HostState, WasiClocks>(l, |t| t.clocks())?;
    filesystem::preopens::add_to_linker::<HostState, WasiFilesystem>(l, |t| t.filesystem())?;
    filesystem::types::add_to_linker::<HostState, WasiFilesystem>(l, |t| t.filesystem())?;
    random::random::add_to_linker::<HostState, WasiRandom>(l, |t| t.wasi.random())?;
    random::insecure::add_to_linker::<HostState, WasiRandom>(l, |t| t.wasi.random())?;
    random::insecure_seed::add_to_linker::<HostState, WasiRandom>(l, |t| t.wasi.random())?;
    cli::exit::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::environment::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::stdin::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::stdout::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::stderr::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::terminal_input::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::terminal_output::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::terminal_stdin::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::terminal_stdout::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::terminal_stderr::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    fs_audit::audit_open_at(l)?;
    Ok(linker)
}
