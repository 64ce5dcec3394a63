//! The registry's integration tests, one binary (link time on 2 cores): the store suite on
//! SQLite and PostgreSQL, concurrent writer processes, the HTTP server, a real Terraform and
//! the page in headless Chromium. Every peer is started by the tests (crate feature
//! `testkit`) and removed afterwards.
// Test fixtures pass pids to syscalls and make bytes by truncation; fine here.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod concurrency;
mod fixtures;
mod page;
mod server;
mod store_suite;
mod terraform;
