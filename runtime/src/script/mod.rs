//! The Rhai side of kiln: a hardened engine, the module resolver, the declaration
//! functions a build script calls at its top level ([`declare`], producing the plain
//! data in `crate::plan`), loading a script into a [`Program`], and the runtime API
//! framework ([`api`]: `ctx`) that capabilities register their functions on.

pub mod api;
pub mod declare;
pub mod engine;
pub mod error;
pub mod library;
mod load;
pub mod resolver;
pub mod stdlib;
pub mod value;

pub use error::ScriptError;
pub use load::{ENV_PREFIX, LoadError, LoadOptions, Program, SCRIPT_NAMES, find_script, load};
