//! The SSH communicator: one `Session` type over russh through which kiln runs commands
//! and moves files on a machine. Nothing outside this module sees russh types.
//!
//! Connecting waits for the machine (retrying while it boots), verifies its host key
//! (pinned fingerprint, known_hosts, trust-on-first-use for machines kiln created, or an
//! explicit insecure opt-out), and can hop through a bastion.

mod auth;
mod config;
mod error;
mod host_key;
mod machine;
mod pty;
mod session;
mod staged;
mod transfer;

pub use config::{
    BastionConfig, ConnectOptions, CredentialFile, DEFAULT_CIPHERS, DEFAULT_TIMEOUT, KeyFiles,
    SshConfig,
};
pub use error::SshError;
pub use machine::SshMachine;
pub use session::{ExecOutput, Session, Stream};
pub(crate) use staged::{store_script, token as upload_token};
