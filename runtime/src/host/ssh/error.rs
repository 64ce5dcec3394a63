//! The one error type the SSH communicator returns. Messages say what went wrong and what
//! the user can do about it; no russh type leaks out of this module.

use std::time::Duration;

/// Everything that can go wrong while reaching or using a machine over SSH.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("invalid ssh settings: {0}")]
    Config(String),

    #[error(
        "no host-key verification configured for {target}: set `host_key: \"SHA256:...\"` \
         (the fingerprint printed by `ssh-keygen -lf <host key>.pub`) or `known_hosts: \"<file>\"` \
         in the ssh map, or `insecure_ignore_host_key: true` to skip verification (not recommended)"
    )]
    NoHostKeyVerification { target: String },

    #[error(
        "host key mismatch for {target}: expected {expected}, the server presented {got}; \
         if the machine was legitimately re-created update `host_key`/`known_hosts`, \
         otherwise this may be a man-in-the-middle attack"
    )]
    HostKeyMismatch {
        target: String,
        expected: String,
        got: String,
    },

    #[error(
        "host key {got} of {target} is not in known_hosts file {file}; add it with \
         `ssh-keyscan -p {port} {host} >> {file}` after checking the fingerprint"
    )]
    HostKeyUnknown {
        target: String,
        host: String,
        port: u16,
        file: String,
        got: String,
    },

    #[error("cannot read {what} {path:?} from the project directory: {source}")]
    LocalFile {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("private key {path:?} is not usable: {reason}")]
    BadKey { path: String, reason: String },

    #[error("SSH certificate {path:?} is not usable: {reason}")]
    BadCertificate { path: String, reason: String },

    #[error(
        "connection refused by {target}: nothing listens on that port (yet); is the machine up and sshd running?"
    )]
    ConnectionRefused { target: String },

    #[error("could not reach {target}: {detail}")]
    Unreachable { target: String, detail: String },

    #[error(
        "SSH handshake with {target} did not finish within {after:?} (banner or key exchange stalled)"
    )]
    HandshakeTimeout { target: String, after: Duration },

    #[error("SSH handshake with {target} failed: {detail}")]
    Handshake { target: String, detail: String },

    #[error(
        "authentication rejected by {target} for user {user:?}: tried {tried}; the server accepts {server_allows}"
    )]
    AuthRejected {
        target: String,
        user: String,
        tried: String,
        /// The kinds of method tried ("publickey, password"), for the repeated-rejection summary.
        methods: String,
        server_allows: String,
    },

    #[error(
        "authentication rejected ({methods}) {times} times by {target} for user {user:?}: tried {tried}; \
         the server accepts {server_allows}. kiln stops after `handshake_attempts` rejections so the \
         host's fail2ban or account lockout is not triggered: check the user and its credentials"
    )]
    AuthRejectedRepeatedly {
        target: String,
        user: String,
        tried: String,
        methods: String,
        server_allows: String,
        times: u32,
    },

    #[error(
        "ssh-agent unusable: {0}; `agent: true` uses the agent at $SSH_AUTH_SOCK of the \
         environment that runs kiln: start one (`eval $(ssh-agent)`) and add keys (`ssh-add KEY`)"
    )]
    Agent(String),

    #[error(
        "gave up connecting to {target} after {waited:?} ({attempts} attempts; raise `timeout` in the ssh map to wait longer): {last}"
    )]
    GaveUp {
        target: String,
        waited: Duration,
        attempts: u32,
        #[source]
        last: Box<SshError>,
    },

    #[error("bastion {bastion} could not open a connection to {target}: {detail}")]
    Bastion {
        bastion: String,
        target: String,
        detail: String,
    },

    #[error("connection to {target} lost: {detail}")]
    Disconnected { target: String, detail: String },

    /// The machine itself went away (the VM's qemu exited), not just the connection.
    #[error("{target} is gone: {reason}")]
    MachineGone { target: String, reason: String },

    #[error("{what} failed on {target}: {detail}")]
    Protocol {
        target: String,
        what: &'static str,
        detail: String,
    },

    #[error("{action} failed on the remote side (exit code {code}): {stderr}")]
    Remote {
        action: String,
        code: i32,
        stderr: String,
    },

    #[error("remote file {path:?} is larger than the allowed {max} bytes")]
    TooLarge { path: String, max: u64 },

    #[error("local I/O error during {what}: {source}")]
    LocalIo {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl SshError {
    /// True when the SSH connection itself went away (reboot, `shutdown`, network loss):
    /// a step that expects the machine to disconnect treats this as success.
    pub fn is_disconnect(&self) -> bool {
        matches!(self, SshError::Disconnected { .. })
    }

    /// Failures worth another attempt while the machine may still be booting.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(
            self,
            SshError::ConnectionRefused { .. }
                | SshError::Unreachable { .. }
                | SshError::HandshakeTimeout { .. }
                | SshError::Handshake { .. }
                | SshError::AuthRejected { .. }
                | SshError::Disconnected { .. }
                | SshError::Bastion { .. }
        )
    }
}

/// Classifies an error coming out of russh after the session was established.
pub(crate) fn from_russh(target: &str, what: &'static str, e: russh::Error) -> SshError {
    use russh::Error as E;
    match e {
        E::SendError
        | E::RecvError
        | E::Disconnect
        | E::HUP
        | E::IO(_)
        | E::KeepaliveTimeout
        | E::InactivityTimeout
        | E::ConnectionTimeout
        | E::WrongChannel => SshError::Disconnected {
            target: target.to_string(),
            detail: format!("{what}: {e}"),
        },
        other => SshError::Protocol {
            target: target.to_string(),
            what,
            detail: other.to_string(),
        },
    }
}
