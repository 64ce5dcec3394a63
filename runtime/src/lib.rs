//! kiln: build machine images with sandboxed build logic.
//!
//! The crate is split by concern (ARCHITECTURE.md draws the layers): `cli` parses
//! arguments, `script` evaluates Rhai into a `plan` (plain data), `runner` runs the
//! plan, every host call goes through a capability in `caps` (one module each: a
//! checked facade with Rhai and WASM adapters), the host code behind them lives in
//! `host`, the WASM sandbox in `wasm`, and `artifact` and `ui` produce what the user
//! keeps and sees. `context` (per-build state), `cleanup` (the undo stack) and `ledger`
//! (the durable record of what a run created, for `kiln cleanup`) sit below all of them.

pub mod artifact;
pub mod caps;
pub mod cleanup;
pub mod cli;
pub mod context;
pub mod heap;
pub mod host;
pub mod ledger;
pub mod plan;
pub mod runner;
pub mod script;
pub mod suggest;
pub mod ui;
pub mod wasm;

/// kiln's cache directory: `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else
/// `~/.cache/kiln`. Each user of it takes a subdirectory.
pub fn cache_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
    };
    var("KILN_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("kiln")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("kiln")))
}
