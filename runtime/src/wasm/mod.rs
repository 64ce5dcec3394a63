//! WASM provisioners: the wasmtime host for components built against `guest-sdk/wit`.
//!
//! One [`WasmEngine`] per process compiles components (with an on-disk cache) and
//! drives epoch interruption. [`WasmEngine::load`] yields a [`Provisioner`]; every
//! [`Provisioner::run`] gets a fresh `Store` with its own limits, links only the
//! interfaces the step was granted, and reaches the outside only through the
//! [`GuestHost`] the caller supplies (the broker over the real machine in `kiln build`).
//!
//! Containment events the sandbox itself detects (a refused link, a deadline, the
//! memory limit, a file-system escape, a refused socket, a log flood) are reported
//! through [`GuestHost::audit`], so they land in the build's audit log.

mod cache;
mod engine;
mod inspect;
mod state;

use std::fmt;
use std::time::Duration;

pub use engine::{Provisioner, WasmEngine};
pub use inspect::{ComponentInfo, inspect};

/// Errors from loading or running a WASM provisioner.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The bytes are not a valid component, or compiling them failed.
    #[error("not a usable WebAssembly component: {0}")]
    Invalid(String),
    /// The component imports something this step was not granted (or kiln does not
    /// provide); nothing ran.
    #[error("{0}")]
    Link(String),
    /// The guest ran past the step's time limit and was stopped.
    #[error(
        "provisioner stopped: deadline exceeded after {secs:.1}s (raise the step's timeout if it needs longer)"
    )]
    Deadline { secs: f64 },
    /// The guest tried to grow its memory past the limit and was stopped.
    #[error("provisioner stopped: memory limit of {mib} MiB exceeded")]
    MemoryLimit { mib: u64 },
    /// The guest trapped (a panic, an out-of-bounds access, ...).
    #[error("provisioner crashed: {0}")]
    Trap(String),
    /// The guest's `provision` returned an error.
    #[error("provisioner failed: {0}")]
    Guest(String),
    /// kiln could not set up the sandbox (preopens, engine, cache).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// The error a [`GuestHost`] call returns; the guest sees the same variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    #[error("denied: {0}")]
    Denied(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    Failed(String),
}

/// What a command run on the machine printed and how it exited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Level of a guest log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
}

/// A host directory made visible to the guest as a WASI preopen.
pub struct Preopen {
    /// The directory, opened by the caller (kiln never re-resolves the label).
    pub dir: cap_std::fs::Dir,
    /// Where the guest sees it, e.g. `files/consul` (relative guest paths starting with
    /// it resolve into `dir`) or `/data`.
    pub guest_path: String,
    /// The directory as written in the script, for messages.
    pub label: String,
}

impl fmt::Debug for Preopen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Preopen")
            .field("guest_path", &self.guest_path)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// What one WASM step was granted. Default: nothing.
#[derive(Debug, Default)]
pub struct WasmGrants {
    /// Link `kiln:host/machine`.
    pub machine: bool,
    /// Directories the guest may read (WASI read-only preopens, and `upload` sources).
    pub read: Vec<Preopen>,
    /// Directories the guest may create and change files in (read-write preopens).
    pub write: Vec<Preopen>,
    /// Secret names the guest may read through `kiln:host/secrets`.
    pub secrets: Vec<String>,
    /// Hosts the guest may open TCP connections to: `host` or `host:port`
    /// (`*` as the port allows any). Names are resolved before the guest starts.
    pub http: Vec<String>,
}

/// Resource limits of one run.
#[derive(Debug, Clone)]
pub struct WasmLimits {
    /// Total linear memory of the component.
    pub memory_bytes: u64,
    /// Wall time for instantiation plus `provision`, including time blocked in host calls.
    pub timeout: Duration,
    /// Guest log bytes (log interface plus stdout/stderr) kept before the rest is dropped.
    pub max_log_bytes: usize,
    /// Longest summary string `provision` may return; longer ones are truncated.
    pub max_output_bytes: usize,
}

impl Default for WasmLimits {
    fn default() -> Self {
        WasmLimits {
            memory_bytes: 256 << 20,
            timeout: Duration::from_secs(30 * 60),
            max_log_bytes: 1 << 20,
            max_output_bytes: 64 << 10,
        }
    }
}

/// What a provisioner can reach: implemented by kiln's broker over the real machine
/// (each call checked against the step's grants and audited), and by test fakes.
///
/// kiln has already applied the grants it can check itself (linking, secret names,
/// socket addresses, upload sources) before calling these.
#[async_trait::async_trait]
pub trait GuestHost: Send + Sync + 'static {
    /// Runs `command` through the machine's shell with extra environment variables.
    async fn exec(
        &self,
        command: String,
        env: Vec<(String, String)>,
    ) -> Result<ExecOutput, GuestError>;
    /// Copies `source` (already opened beneath a granted read directory) to the machine.
    async fn upload(
        &self,
        source: cap_std::fs::File,
        guest_path: String,
        mode: Option<u32>,
    ) -> Result<u64, GuestError>;
    /// Creates or replaces a file on the machine.
    async fn write_file(
        &self,
        guest_path: String,
        contents: Vec<u8>,
        mode: Option<u32>,
    ) -> Result<(), GuestError>;
    /// Reads a file from the machine.
    async fn read_file(&self, guest_path: String) -> Result<Vec<u8>, GuestError>;
    /// Facts about the machine.
    async fn facts(&self) -> Vec<(String, String)>;
    /// Returns a secret whose name the step was granted.
    fn secret(&self, name: &str) -> Result<String, GuestError>;
    /// Last word on a TCP connection to a host that matches the step's `http` grant.
    fn allow_http(&self, host: &str, port: u16) -> Result<(), GuestError>;
    /// One guest log line (already bounded by [`WasmLimits::max_log_bytes`]).
    fn log(&self, level: LogLevel, message: &str);
    /// A containment event: `capability` as in DESIGN.md (`machine`, `secret`,
    /// `fs.read`, `fs.write`, `net.http`, `wasm.deadline`, `wasm.memory`, `wasm.log`, `wasm.link`).
    fn audit(&self, capability: &str, object: &str, outcome: &str);
}
