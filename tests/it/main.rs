//! kiln's integration tests: one binary, real peers started on 127.0.0.1 by the tests.

mod cli;
mod peers;
mod qemu;
mod qemu_build;
mod ssh;
mod wasm;
mod wasm_build;
