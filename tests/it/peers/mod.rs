//! Real peers the tests start and stop themselves.
pub mod agent;
pub mod cutter;
pub mod sshd;
