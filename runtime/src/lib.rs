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
