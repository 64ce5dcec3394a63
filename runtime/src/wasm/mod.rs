//! WASM provisioners: the wasmtime host for components built against `guest-sdk/wit`.
//!
//! One [`WasmEngine`] per process compiles components (with an on-disk cache) and
//! drives epoch interruption. [`WasmEngine::load`] yields a [`Provisioner`]; every
//! [`Provisioner::run`] gets a fresh `Store` with its own limits, links only the
//! interfaces of capabilities the step holds (see [`host::Adapter`]), and reaches the
//! outside only through those capabilities' facades, over the [`host::StepEnv`] the
//! caller supplies (the real machine in `kiln build`, a fake one in tests; the scope
//! and its audit log are real in both).
//!
//! Containment events the sandbox itself detects (a refused link, a deadline, the
//! memory limit, a file-system escape, a refused socket, a log flood) are audited
//! through the step's scope, so they land in the build's audit log.

pub mod bindings;
mod cache;
mod engine;
pub mod host;
mod inspect;

use std::sync::OnceLock;
use std::time::Duration;

pub use engine::{Provisioner, WasmEngine};
pub use host::StepEnv;
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

/// Level of a guest log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
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

/// Largest component kiln will load, for `build`, `validate`, `inspect` and
/// `kiln module inspect` alike.
pub const MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// Reads a component file, refusing one larger than [`MAX_COMPONENT_BYTES`] before
/// reading it (and never reading past the limit, should the file grow meanwhile).
pub fn read_component(file: std::fs::File) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let too_large = |size: u64| {
        std::io::Error::other(format!(
            "{size} bytes is larger than the {} MiB limit for a WebAssembly component",
            MAX_COMPONENT_BYTES >> 20
        ))
    };
    let size = file.metadata()?.len();
    if size > MAX_COMPONENT_BYTES {
        return Err(too_large(size));
    }
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(MAX_COMPONENT_BYTES + 1).read_to_end(&mut buf)?;
    let read = u64::try_from(buf.len()).unwrap_or(u64::MAX);
    if read > MAX_COMPONENT_BYTES {
        return Err(too_large(read));
    }
    Ok(buf)
}

/// The process's wasm engine, created on first use (most builds have no wasm step).
#[derive(Default)]
pub struct WasmRuntime {
    engine: OnceLock<Result<WasmEngine, String>>,
}

impl WasmRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn engine(&self) -> Result<&WasmEngine, String> {
        self.engine
            .get_or_init(|| {
                let dir = crate::cache_dir().map(|d| d.join("wasm"));
                WasmEngine::new(dir).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}
