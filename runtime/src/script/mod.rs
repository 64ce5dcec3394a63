//! The Rhai side of kiln: a hardened engine, the module resolver, the declaration
//! functions a build script calls at its top level, and the runtime objects (`ctx`,
//! the machine) that builders, post-processors and closure steps receive.

pub mod declare;
pub mod engine;
pub mod error;
pub mod host_api;
pub mod resolver;
pub mod runtime;
pub mod stdlib;
pub mod value;

pub use error::ScriptError;
