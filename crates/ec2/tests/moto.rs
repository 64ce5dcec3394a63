//! kiln-ec2 against a real moto_server (started per test by the testkit).
//! One test binary with modules keeps link time down.

#[path = "moto/auth.rs"]
mod auth;
#[path = "moto/common.rs"]
mod common;
#[path = "moto/flow.rs"]
mod flow;
#[path = "moto/resources.rs"]
mod resources;
#[path = "moto/retry.rs"]
mod retry;
#[path = "moto/waiters.rs"]
mod waiters;
