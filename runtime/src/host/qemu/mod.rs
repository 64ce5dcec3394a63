//! QEMU virtual machines: probing acceleration, starting `qemu-system-x86_64`,
//! talking QMP to it, typing boot commands, and stopping it.
//!
//! The qemu process is tied to kiln's life three ways: its kill is pushed on the
//! build's cleanup stack the moment it is spawned, the child handle kills on drop, and
//! the kernel kills it (PR_SET_PDEATHSIG) if kiln itself dies.

mod accel;
pub mod boot_command;
mod file_disk;
mod qmp;
mod spawn;
pub mod step_cache;
mod vm;

pub use accel::{Accel, AccelKind, Accelerator, probe_accelerator};
pub use boot_command::{BootCommandError, BootStep, parse_boot_command};
pub use file_disk::FileDisk;
pub use qmp::QmpError;
pub use vm::{Drive, Vm, VmSpec, start};

use std::path::PathBuf;

/// The qemu binary; `KILN_QEMU` overrides it for hosts that install it elsewhere.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("KILN_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error(
        "{binary} was not found: install it with tools/qemu-setup.sh (Debian package \
         qemu-system-x86) or set KILN_QEMU to its path"
    )]
    NotInstalled { binary: PathBuf },
    #[error("{0}")]
    KvmUnusable(String),
    #[error("qemu exited during start-up ({status}); its last words:\n{stderr}")]
    EarlyExit { status: String, stderr: String },
    #[error("qemu did not open its QMP socket within {secs} s; its last words:\n{stderr}")]
    StartTimeout { secs: u64, stderr: String },
    #[error("no free host port for SSH forwarding after {tries} tries: {last}")]
    NoPort { tries: u32, last: String },
    #[error("qemuargs: {0}")]
    BadArgs(String),
    #[error("boot command: {0}")]
    BootCommand(#[from] BootCommandError),
    #[error("QMP: {0}")]
    Qmp(#[from] QmpError),
    #[error("the VM is not running any more")]
    NotRunning,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}
