//! The registry's integration tests, one binary (link time on 2 cores): the store suite on
//! SQLite and PostgreSQL, concurrent writer processes, the HTTP server, a real Terraform and
//! the page in headless Chromium. Every peer is started by the tests (crate feature
//! `testkit`) and removed afterwards.

mod concurrency;
mod fixtures;
mod page;
mod server;
mod store_suite;
mod terraform;
