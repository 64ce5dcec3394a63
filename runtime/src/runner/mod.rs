//! The runner: runs a plan's builds in parallel, each build's steps in order, and
//! unwinds each build's cleanup stack when it fails.

pub mod dryrun;
pub mod pause;
pub mod registry_record;
pub mod run;
pub mod run_history;
pub mod stepkey;
pub mod steps;
pub mod validate;
pub mod wasm_step;

pub use run::{BuildOutcome, OnError, RunOptions, run_builds, select};
