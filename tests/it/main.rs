//! kiln's integration tests: one binary, real peers started on 127.0.0.1 by the tests.

mod peers;
mod ssh;
mod wasm;
mod cli;
mod qemu;
mod wasm_build;
