//! The SSH session: connecting with retries, host-key checks, bastions, and running commands.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::client::{self, Handle, Msg};
use russh::keys::PublicKeyOrCertificate;
use russh::{Channel, ChannelMsg, Disconnect, Sig};
use tokio::io::{AsyncRead, AsyncWrite};

use super::auth::{Credentials, authenticate};
use super::config::{ConnectOptions, Endpoint, KeyFiles, SshConfig};
use super::error::{SshError, from_russh};
use super::host_key::{HostKeyPolicy, Verdict, VerdictSlot, known_keys_for};
pub use crate::host::machine::{ExecOutput, Stream};

/// Channel window: big enough that one channel is not throttled by round trips
/// (russh's 2 MiB default caps a channel at ~2 MiB per RTT). The client ignores
/// `adjust_window`, so this is the window for the whole session's life.
const WINDOW: u32 = 16 * 1024 * 1024;
/// russh complains above 65535; OpenSSH caps its own packets at 32 KiB anyway.
const MAX_PACKET: u32 = 65535;
/// One attempt (TCP + handshake + auth) never waits longer than this, so a stalled banner
/// from a half-booted machine is retried instead of eating the whole timeout.
const ATTEMPT_CAP: Duration = Duration::from_secs(20);
/// The least time an attempt gets even when `timeout` is nearly spent: enough for a key
/// exchange on a loaded machine and for PAM's delay on a rejected password.
const MIN_ATTEMPT: Duration = Duration::from_secs(10);
/// How long a fresh TCP connection may stay silent before we drop it and dial again.
/// An SSH server sends its banner as soon as it accepts, so silence means nobody is
/// behind the port yet. QEMU's user networking accepts at once on the host side while
/// its own connection to a still-booting guest sits in TCP's retry backoff (1, 3, 7,
/// 15 s...); a new connection restarts that at once, so readiness is seen within about
/// a second instead of up to 20. After every 10 silent connections in a row the wait
/// doubles (up to `ATTEMPT_CAP`), so a server that is merely slow is still reached.
const BANNER_WAIT: Duration = Duration::from_secs(1);
/// Pause between attempts that failed before authentication (refused, silent, closed):
/// they cost the server nothing, and a booting VM is ready the moment its sshd is.
const RETRY_CONNECT_MAX: Duration = Duration::from_millis(500);
/// Pause between attempts the server rejected (authentication, key exchange): slower,
/// so a host with fail2ban or MaxStartups is not hammered while cloud-init adds a key.
const RETRY_REJECTED_MAX: Duration = Duration::from_secs(2);
/// Captured output per stream is bounded; the tail is kept (that is where errors are).
pub(crate) const MAX_CAPTURE: usize = 16 * 1024 * 1024;

pub(crate) struct ClientHandler {
    policy: Arc<HostKeyPolicy>,
    verdict: VerdictSlot,
    tofu: Arc<Mutex<Option<String>>>,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            self.verdict.set(Verdict::Rejected(SshError::Handshake {
                target: self.policy.target.clone(),
                detail:
                    "the server presented a host certificate; kiln verifies plain host keys only"
                        .into(),
            }));
            return Ok(false);
        };
        match self.policy.check(key, &self.tofu) {
            Ok(fp) => {
                self.verdict.set(Verdict::Accepted(fp));
                Ok(true)
            }
            Err(e) => {
                self.verdict.set(Verdict::Rejected(e));
                Ok(false)
            }
        }
    }
}

struct Inner {
    handle: Handle<ClientHandler>,
    // Dropping the jump host's handle would cut the tunnel the session runs through.
    bastion: Option<Handle<ClientHandler>>,
    fingerprint: String,
    target: String,
}

/// An authenticated SSH connection to one machine. Cheap to clone; clones share the
/// connection, so several commands and transfers can run on it at once.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.inner.target)
            .field("host_key", &self.inner.fingerprint)
            .finish()
    }
}

/// One endpoint's prepared connection state, reused across retries.
struct Prepared {
    ep: Endpoint,
    creds: Credentials,
    policy: Arc<HostKeyPolicy>,
    tofu: Arc<Mutex<Option<String>>>,
    config: Arc<client::Config>,
    /// Consecutive silent connections; the banner wait grows with it so a server that is
    /// merely slow (overloaded, high latency) is still reached.
    silent: std::sync::atomic::AtomicU32,
}

impl Prepared {
    fn new(ep: Endpoint, files: &KeyFiles, config: Arc<client::Config>) -> Result<Self, SshError> {
        let known_hosts = match &ep.known_hosts {
            None => None,
            Some(path) => {
                let text = files.get("known_hosts file", path)?;
                Some((path.clone(), known_keys_for(text, &ep.host, ep.port)))
            }
        };
        let policy = HostKeyPolicy {
            target: ep.target(),
            host: ep.host.clone(),
            port: ep.port,
            pinned: ep.host_key.clone(),
            known_hosts,
            trust_on_first_use: ep.trust_on_first_use,
            insecure: ep.insecure_ignore_host_key,
        };
        if !policy.is_configured() {
            return Err(SshError::NoHostKeyVerification {
                target: ep.target(),
            });
        }
        if policy.insecure {
            tracing::warn!(target = %ep.target(),
                "insecure_ignore_host_key: the host key of this machine will not be verified");
        }
        let creds = Credentials::load(&ep, files)?;
        Ok(Prepared {
            ep,
            creds,
            policy: Arc::new(policy),
            tofu: Arc::default(),
            config,
            silent: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Handshake + auth over an already connected stream.
    async fn establish<S>(&self, stream: S) -> Result<(Handle<ClientHandler>, String), SshError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let verdict = VerdictSlot::default();
        let handler = ClientHandler {
            policy: self.policy.clone(),
            verdict: verdict.clone(),
            tofu: self.tofu.clone(),
        };
        let target = self.ep.target();
        let mut handle = match client::connect_stream(self.config.clone(), stream, handler).await {
            Ok(h) => h,
            Err(e) => {
                return Err(match verdict.take() {
                    Some(Verdict::Rejected(reason)) => reason,
                    _ => SshError::Handshake {
                        target,
                        detail: e.to_string(),
                    },
                });
            }
        };
        let fingerprint = match verdict.take() {
            Some(Verdict::Accepted(fp)) => fp,
            // russh only returns a handle after check_server_key accepted, so this is a bug guard.
            _ => {
                return Err(SshError::Handshake {
                    target,
                    detail: "the host key was never checked".into(),
                });
            }
        };
        authenticate(&mut handle, &self.creds, &target).await?;
        Ok((handle, fingerprint))
    }

    async fn attempt_tcp(&self) -> Result<(Handle<ClientHandler>, String), SshError> {
        let target = self.ep.target();
        let stream = tokio::net::TcpStream::connect((self.ep.host.as_str(), self.ep.port))
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => SshError::ConnectionRefused {
                    target: target.clone(),
                },
                _ => SshError::Unreachable {
                    target: target.clone(),
                    detail: e.to_string(),
                },
            })?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("set_nodelay failed: {e}");
        }
        // Peek, not read: russh then reads the banner itself.
        use std::sync::atomic::Ordering;
        let silent = self.silent.load(Ordering::Relaxed);
        let wait = (BANNER_WAIT * (1 << (silent / 10).min(4))).min(ATTEMPT_CAP);
        let mut first = [0u8; 4];
        match tokio::time::timeout(wait, stream.peek(&mut first)).await {
            Ok(Ok(n)) if n > 0 => self.silent.store(0, Ordering::Relaxed),
            Ok(Ok(_)) => {
                return Err(SshError::Disconnected {
                    target,
                    detail: "the connection closed before the SSH banner (not ready yet)".into(),
                });
            }
            Ok(Err(e)) => {
                return Err(SshError::Unreachable {
                    target,
                    detail: e.to_string(),
                });
            }
            Err(_) => {
                self.silent.fetch_add(1, Ordering::Relaxed);
                return Err(SshError::HandshakeTimeout {
                    target,
                    after: wait,
                });
            }
        }
        self.establish(stream).await
    }

    async fn attempt_via(
        &self,
        bastion: &Handle<ClientHandler>,
        bastion_name: &str,
    ) -> Result<(Handle<ClientHandler>, String), SshError> {
        if bastion.is_closed() {
            return Err(SshError::Disconnected {
                target: bastion_name.to_string(),
                detail: "the bastion connection closed".into(),
            });
        }
        let ch = bastion
            .channel_open_direct_tcpip(
                self.ep.host.clone(),
                u32::from(self.ep.port),
                "127.0.0.1",
                0,
            )
            .await
            .map_err(|e| SshError::Bastion {
                bastion: bastion_name.to_string(),
                target: format!("{}:{}", self.ep.host, self.ep.port),
                detail: match e {
                    russh::Error::ChannelOpenFailure(f) => format!(
                        "{f:?} (is the target up, and does the bastion allow TCP forwarding?)"
                    ),
                    other => other.to_string(),
                },
            })?;
        self.establish(ch.into_stream()).await
    }
}

/// How many times a connection may be refused at authentication, and until when new
/// attempts may start.
#[derive(Clone, Copy)]
struct RetryBudget {
    started: Instant,
    deadline: Instant,
    max_rejections: u32,
}

async fn with_retries<F, Fut>(
    target: &str,
    budget: RetryBudget,
    mut attempt: F,
) -> Result<(Handle<ClientHandler>, String), SshError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(Handle<ClientHandler>, String), SshError>>,
{
    let RetryBudget {
        started,
        deadline,
        max_rejections,
    } = budget;
    let mut attempts = 0u32;
    let mut rejections = 0u32;
    let mut backoff = Duration::from_millis(100);
    loop {
        attempts += 1;
        // `timeout` says when to stop starting attempts; one in flight always gets
        // MIN_ATTEMPT, so a slow answer (PAM delays a failed password ~2 s) is reported
        // for what it is instead of as a stalled handshake cut by the deadline.
        let remaining = deadline.saturating_duration_since(Instant::now());
        let cap = remaining.max(MIN_ATTEMPT).min(ATTEMPT_CAP);
        let err = match tokio::time::timeout(cap, attempt()).await {
            Ok(Ok(ok)) => {
                tracing::debug!(target, attempts, "ssh connected");
                return Ok(ok);
            }
            Ok(Err(e)) if !e.is_retryable() => return Err(e),
            Ok(Err(e)) => e,
            Err(_) => SshError::HandshakeTimeout {
                target: target.to_string(),
                after: cap,
            },
        };
        if let SshError::AuthRejected {
            target,
            user,
            tried,
            methods,
            server_allows,
        } = &err
        {
            rejections += 1;
            if rejections >= max_rejections {
                return Err(SshError::AuthRejectedRepeatedly {
                    target: target.clone(),
                    user: user.clone(),
                    tried: tried.clone(),
                    methods: methods.clone(),
                    server_allows: server_allows.clone(),
                    times: rejections,
                });
            }
        }
        tracing::debug!(target, attempts, rejections, "ssh not ready yet: {err}");
        if Instant::now() + backoff >= deadline {
            return Err(SshError::GaveUp {
                target: target.to_string(),
                waited: started.elapsed(),
                attempts,
                last: Box::new(err),
            });
        }
        tokio::time::sleep(backoff).await;
        let max = match err {
            SshError::ConnectionRefused { .. }
            | SshError::Unreachable { .. }
            | SshError::HandshakeTimeout { .. }
            | SshError::Disconnected { .. } => RETRY_CONNECT_MAX,
            _ => RETRY_REJECTED_MAX,
        };
        backoff = (backoff * 2).min(max);
    }
}

fn client_config(cfg: &SshConfig) -> Result<Arc<client::Config>, SshError> {
    use russh::kex;
    let preferred = russh::Preferred {
        // curve25519 first: the ML-KEM hybrid costs noticeably more per connection and
        // builds need many short connections more than post-quantum secrecy.
        kex: Cow::Owned(vec![
            kex::CURVE25519,
            kex::CURVE25519_PRE_RFC_8731,
            kex::MLKEM768X25519_SHA256,
            kex::DH_GEX_SHA256,
            kex::DH_G16_SHA512,
            kex::DH_G14_SHA256,
            kex::EXTENSION_SUPPORT_AS_CLIENT,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
        ]),
        cipher: Cow::Owned(cfg.cipher_names()?),
        ..russh::Preferred::DEFAULT
    };
    Ok(Arc::new(client::Config {
        window_size: WINDOW,
        maximum_packet_size: MAX_PACKET,
        nodelay: true,
        preferred,
        keepalive_interval: cfg.keepalive()?,
        ..Default::default()
    }))
}

/// Quotes one word for a POSIX shell, with a `./` guard so a path can never read as an option.
pub(crate) fn quote_path(path: &str) -> Result<String, SshError> {
    if path.is_empty() || path.contains('\0') {
        return Err(SshError::Config(format!("invalid remote path {path:?}")));
    }
    let p = if path.starts_with('-') {
        Cow::Owned(format!("./{path}"))
    } else {
        Cow::Borrowed(path)
    };
    Ok(shell_escape::unix::escape(p).into_owned())
}

/// `export K='v'; ...; command`: sshd refuses most SetEnv requests, the shell never does.
pub(crate) fn with_env(command: &str, env: &[(String, String)]) -> Result<String, SshError> {
    let mut out = String::new();
    for (k, v) in env {
        let valid = !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(SshError::Config(format!(
                "environment variable name {k:?} is not a valid shell identifier"
            )));
        }
        if v.contains('\0') {
            return Err(SshError::Config(format!(
                "environment variable {k} contains a NUL byte"
            )));
        }
        // escape() leaves plain words unquoted; force quotes so `~` or `=` are never expanded.
        let quoted = format!("'{}'", v.replace('\'', r"'\''"));
        out.push_str(&format!("export {k}={quoted}; "));
    }
    out.push_str(command);
    Ok(out)
}

fn signal_name(sig: &Sig) -> String {
    match sig {
        Sig::ABRT => "ABRT".into(),
        Sig::ALRM => "ALRM".into(),
        Sig::FPE => "FPE".into(),
        Sig::HUP => "HUP".into(),
        Sig::ILL => "ILL".into(),
        Sig::INT => "INT".into(),
        Sig::KILL => "KILL".into(),
        Sig::PIPE => "PIPE".into(),
        Sig::QUIT => "QUIT".into(),
        Sig::SEGV => "SEGV".into(),
        Sig::TERM => "TERM".into(),
        Sig::USR1 => "USR1".into(),
        Sig::Custom(s) => s.clone(),
    }
}

/// Splits a byte stream into lines for the callback and keeps a bounded tail for the result.
pub(crate) struct Collector {
    captured: Vec<u8>,
    /// Bytes were dropped from the front: the first line kept may be a fragment.
    trimmed: bool,
}

impl Collector {
    pub fn new() -> Self {
        Collector {
            captured: Vec::new(),
            trimmed: false,
        }
    }

    /// Keeps `data` in the bounded tail only.
    pub fn capture(&mut self, data: &[u8]) {
        self.captured.extend_from_slice(data);
        // Trim in big steps so a chatty command does not memmove 16 MiB per packet.
        if self.captured.len() > MAX_CAPTURE + MAX_CAPTURE / 4 {
            let cut = self.captured.len() - MAX_CAPTURE;
            self.captured.drain(..cut);
            self.trimmed = true;
        }
    }

    /// The last [`MAX_CAPTURE`] bytes, starting at a line: when the front was cut,
    /// the fragment of a line before the first newline is dropped too, since it may
    /// be the tail of a secret the redactor could no longer recognise.
    pub fn finish(mut self) -> Vec<u8> {
        if self.captured.len() > MAX_CAPTURE {
            let cut = self.captured.len() - MAX_CAPTURE;
            self.captured.drain(..cut);
            self.trimmed = true;
        }
        if self.trimmed {
            let start = self
                .captured
                .iter()
                .position(|b| *b == b'\n')
                .map_or(self.captured.len(), |p| p + 1);
            self.captured.drain(..start);
        }
        self.captured
    }
}

/// What came back on a channel besides data.
#[derive(Default)]
pub(crate) struct Exit {
    pub code: Option<i32>,
    pub signal: Option<String>,
}

impl Exit {
    pub fn observe(&mut self, msg: &ChannelMsg) {
        match msg {
            ChannelMsg::ExitStatus { exit_status } => {
                self.code = Some(i32::try_from(*exit_status).unwrap_or(i32::MAX));
            }
            ChannelMsg::ExitSignal { signal_name: s, .. } => self.signal = Some(signal_name(s)),
            _ => {}
        }
    }

    pub fn resolve(&self, target: &str) -> Result<(i32, Option<String>), SshError> {
        match (&self.signal, self.code) {
            (Some(s), _) => Ok((-1, Some(s.clone()))),
            (None, Some(c)) => Ok((c, None)),
            (None, None) => Err(SshError::Disconnected {
                target: target.to_string(),
                detail: "the channel closed before the command reported an exit status".into(),
            }),
        }
    }
}

impl Session {
    /// Waits for SSH within `cfg.timeout` (default 5m), retrying refused/reset connections,
    /// stalled handshakes and auth rejections (a fresh VM may not have the key yet), the
    /// latter at most `cfg.handshake_attempts` times (default 10). A host key mismatch or
    /// missing verification fails at once.
    pub async fn connect(
        cfg: &SshConfig,
        files: &KeyFiles,
        opts: &ConnectOptions,
    ) -> Result<Session, SshError> {
        let started = Instant::now();
        let budget = RetryBudget {
            started,
            deadline: started + cfg.timeout()?,
            max_rejections: cfg.handshake_attempts()?,
        };
        let config = client_config(cfg)?;
        let target = Prepared::new(cfg.endpoint(opts)?, files, config.clone())?;
        let target_name = target.ep.target();

        let (handle, fingerprint, bastion) = match &cfg.bastion {
            None => {
                let (h, fp) = with_retries(&target_name, budget, || target.attempt_tcp()).await?;
                (h, fp, None)
            }
            Some(b) => {
                let jump = Prepared::new(b.endpoint(), files, config.clone())?;
                let jump_name = jump.ep.target();
                let (bh, _) = with_retries(&jump_name, budget, || jump.attempt_tcp()).await?;
                let (h, fp) =
                    with_retries(&target_name, budget, || target.attempt_via(&bh, &jump_name))
                        .await?;
                (h, fp, Some(bh))
            }
        };
        tracing::info!(target = %target_name, host_key = %fingerprint, "ssh connected");
        Ok(Session {
            inner: Arc::new(Inner {
                handle,
                bastion,
                fingerprint,
                target: target_name,
            }),
        })
    }

    /// `SHA256:...` of the host key that was accepted.
    pub fn host_key_fingerprint(&self) -> String {
        self.inner.fingerprint.clone()
    }

    pub(crate) fn target(&self) -> &str {
        &self.inner.target
    }

    pub(crate) async fn open_session_channel(&self) -> Result<Channel<Msg>, SshError> {
        self.inner
            .handle
            .channel_open_session()
            .await
            .map_err(|e| from_russh(self.target(), "opening a channel", e))
    }

    pub(crate) async fn open_exec(&self, command: &str) -> Result<Channel<Msg>, SshError> {
        let ch = self.open_session_channel().await?;
        ch.exec(true, command.as_bytes())
            .await
            .map_err(|e| from_russh(self.target(), "starting a command", e))?;
        Ok(ch)
    }

    /// Runs `command` through the remote shell with `env` exported first. Output is handed to
    /// `on_output` as it arrives, raw, and also returned (the last 16 MiB per stream).
    pub async fn exec(
        &self,
        command: &str,
        env: &[(String, String)],
        on_output: &mut (dyn FnMut(Stream, &[u8]) + Send),
    ) -> Result<ExecOutput, SshError> {
        let full = with_env(command, env)?;
        let mut ch = self.open_exec(&full).await?;
        let mut out = Collector::new();
        let mut err = Collector::new();
        let mut exit = Exit::default();
        // Drain until the channel closes: output can still arrive after the exit status.
        while let Some(msg) = ch.wait().await {
            match &msg {
                ChannelMsg::Data { data } => {
                    out.capture(data);
                    on_output(Stream::Stdout, data);
                }
                ChannelMsg::ExtendedData { data, ext: 1 } => {
                    err.capture(data);
                    on_output(Stream::Stderr, data);
                }
                ChannelMsg::Close => break,
                other => exit.observe(other),
            }
        }
        let stdout = out.finish();
        let stderr = err.finish();
        let (exit_code, signal) = exit.resolve(self.target())?;
        Ok(ExecOutput {
            exit_code,
            signal,
            stdout,
            stderr,
        })
    }

    /// Ends the connection (and the bastion's, if any). Errors are ignored: the goal is gone either way.
    pub async fn close(&self) {
        let _ = self
            .inner
            .handle
            .disconnect(Disconnect::ByApplication, "kiln done", "en")
            .await;
        if let Some(b) = &self.inner.bastion {
            let _ = b
                .disconnect(Disconnect::ByApplication, "kiln done", "en")
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_prefix_quotes_everything() {
        let cmd = with_env("echo", &[("A".into(), "it's a \"test\" $HOME".into())]).unwrap();
        assert_eq!(cmd, r#"export A='it'\''s a "test" $HOME'; echo"#);
        assert!(with_env("x", &[("A B".into(), "v".into())]).is_err());
        assert!(with_env("x", &[("1A".into(), "v".into())]).is_err());
    }

    #[test]
    fn quote_path_guards_options() {
        assert_eq!(quote_path("-rf").unwrap(), "./-rf");
        assert_eq!(quote_path("/tmp/a b").unwrap(), "'/tmp/a b'");
        assert!(quote_path("").is_err());
    }

    #[test]
    fn collector_keeps_the_tail_from_a_line_start() {
        let mut c = Collector::new();
        c.capture(b"one\ntwo\n");
        assert_eq!(c.finish(), b"one\ntwo\n");
        let mut c = Collector::new();
        let chunk = vec![b'x'; 1024 * 1024];
        for _ in 0..40 {
            c.capture(&chunk);
        }
        c.capture(b"\nEND");
        assert_eq!(c.finish(), b"END", "the cut line is dropped whole");
    }
}
