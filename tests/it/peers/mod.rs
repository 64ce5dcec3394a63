//! Real peers the tests start and stop themselves.
pub mod cutter;
pub mod agent;
pub mod sshd;
