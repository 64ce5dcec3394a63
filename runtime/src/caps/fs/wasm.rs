//! WASI file-system preopens for WASM guests: each directory the step is granted with
//! `read` (read-only) or `write` (read-write) appears at the path the script wrote
//! (`files/consul`, `/var/tmp/images`; `~/x` at its expansion). Nothing else is in
//! the guest's file system. Directories are opened through the project and the
//! step's grants (so they are audited), and handed to wasmtime-wasi by their open
//! descriptor, never re-resolved by name.

use std::os::fd::AsRawFd;

use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::{READ, WRITE};
use crate::wasm::WasmError;
use crate::wasm::host::{Adapter as WasmAdapter, Setup, StepEnv};

pub struct Preopens;

fn preopen(
    wasi: &mut WasiCtxBuilder,
    dir: &cap_std::fs::Dir,
    guest_path: &str,
    perms: FsPerms,
) -> Result<(), WasmError> {
    // wasmtime-wasi opens preopens by path; reopening the directory we already hold
    // through /proc/self/fd keeps the exact directory the grant resolved to, even if
    // its path was swapped for a symlink since.
    let path = format!("/proc/self/fd/{}", dir.as_raw_fd());
    wasi.preopened_dir(&path, guest_path, perms)
        .map(|_| ())
        .map_err(|e| WasmError::Io {
            context: format!("could not give the provisioner the directory `{guest_path}`"),
            source: std::io::Error::other(format!("{e:#}")),
        })
}

#[async_trait::async_trait]
impl WasmAdapter for Preopens {
    async fn attach(&self, env: &StepEnv, setup: &mut Setup<'_>) -> Result<bool, WasmError> {
        let grants = env.scope.grants();
        for g in grants.paths(&READ) {
            let dir = env
                .project
                .open_dir_read(&env.scope, &g.path)
                .map_err(|e| WasmError::Link(format!("allow.read {:?}: {e}", g.written)))?;
            preopen(setup.wasi, &dir, &g.path, FsPerms::ReadOnly)?;
        }
        for g in grants.paths(&WRITE) {
            let dir = env
                .project
                .open_dir_write(&env.scope, &g.path)
                .map_err(|e| WasmError::Link(format!("allow.write {:?}: {e}", g.written)))?;
            preopen(setup.wasi, &dir, &g.path, FsPerms::ReadWrite)?;
        }
        // WASI's file system is always linked; it just has nothing in it without grants.
        Ok(false)
    }
}
