//! kiln's integration tests: one binary, real peers started on 127.0.0.1 by the tests.

// Test fixtures make bytes by truncating counters and pass child pids to kill(2);
// those casts are the point there, unlike in kiln itself.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod amazon;
mod capabilities;
mod cli;
mod debug_build;
mod faults;
mod fetch;
mod hardening;
mod oci_build;
mod openstack;
mod peers;
mod qemu;
mod qemu_build;
mod qemu_faults;
mod registry;
mod resume_build;
mod secret_file;
mod ssh;
mod ssh_credentials;
mod step_cache_build;
mod wasm;
mod wasm_build;
mod web_example;
