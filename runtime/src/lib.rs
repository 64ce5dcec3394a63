//! kiln: build machine images with sandboxed build logic.
//!
//! The crate is split by concern (see DESIGN.md): `cli` parses arguments, `script`
//! evaluates Rhai into a `plan`, `build` runs the plan, every host call goes through
//! `caps`, the capabilities themselves live in `host`, WASM provisioners in `wasm`,
//! and `artifact` and `ui` produce what the user keeps and sees.

pub mod artifact;
pub mod build;
pub mod caps;
pub mod cli;
pub mod host;
pub mod plan;
pub mod script;
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
