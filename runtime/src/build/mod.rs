//! The orchestrator: runs builds in parallel, steps in order, and unwinds cleanup.

pub mod cleanup;
pub mod context;
pub mod runner;
pub mod steps;
pub mod wasm_step;

pub use runner::{BuildOutcome, OnError, RunOptions, run_builds, select};
