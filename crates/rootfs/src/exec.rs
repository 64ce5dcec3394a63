//! Running commands in the container, kiln's side: the request, the streamed output, the
//! exit status in the same shape as kiln's SSH `ExecOutput`.

use crate::conn::{Channel, Incoming};
use crate::error::Error;
use crate::protocol::Reply;

/// Output kept per stream in [`ExecOutput`] by default (the tail, where errors are).
pub const DEFAULT_CAPTURE: usize = 16 * 1024 * 1024;

/// Which output stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A command to run as `/bin/sh -c command`.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub command: String,
    /// Added to (and overriding) the container's base environment; nothing else is set.
    pub env: Vec<(String, String)>,
    /// Working directory in the container (default `/`).
    pub cwd: Option<String>,
    /// `name`, `uid`, `name:group` or `uid:gid`, resolved with the image's /etc/passwd and
    /// /etc/group (default root).
    pub user: Option<String>,
    /// Bytes of each stream's tail kept in [`ExecOutput`] (the callback sees everything).
    pub capture: usize,
}

impl ExecRequest {
    pub fn new(command: impl Into<String>) -> Self {
        ExecRequest {
            command: command.into(),
            env: Vec::new(),
            cwd: None,
            user: None,
            capture: DEFAULT_CAPTURE,
        }
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    pub fn capture(mut self, bytes: usize) -> Self {
        self.capture = bytes;
        self
    }
}

/// How the command ended and the tails of its output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit status, or -1 when the command was killed by a signal (as over SSH).
    pub exit_code: i32,
    /// The signal name without "SIG" (e.g. "KILL") when killed by a signal.
    pub signal: Option<String>,
    /// The last `capture` bytes of stdout.
    pub stdout: Vec<u8>,
    /// The last `capture` bytes of stderr.
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == 0 && self.signal.is_none()
    }
}

/// One event of a running command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Output(Stream, Vec<u8>),
    /// The command ended: `(exit_code, signal)` as in [`ExecOutput`].
    Exit(i32, Option<String>),
}

/// The name of a Linux signal without "SIG".
pub fn signal_name(sig: i32) -> String {
    const NAMES: [&str; 32] = [
        "", "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV",
        "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
        "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    match usize::try_from(sig).ok().and_then(|i| NAMES.get(i)) {
        Some(n) if !n.is_empty() => (*n).to_string(),
        _ => format!("SIG{sig}"),
    }
}

/// A command running in the container. Dropping it before it ended kills its process
/// group (SIGKILL), which is how a timeout or Ctrl-C cancels a step.
pub struct Execution {
    ch: Channel,
    pid: i32,
    capture: usize,
    exit: Option<ExecEvent>,
}

impl std::fmt::Debug for Execution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Execution").field("pid", &self.pid).finish()
    }
}

impl Execution {
    /// Waits until the container started the command (or refused to).
    pub(crate) async fn started(
        mut ch: Channel,
        command: &str,
        capture: usize,
    ) -> Result<Execution, Error> {
        match ch.recv().await? {
            Incoming::Msg(Reply::Started { pid }) => Ok(Execution {
                ch,
                pid,
                capture,
                exit: None,
            }),
            Incoming::Msg(Reply::Failed { detail, .. }) => {
                ch.finish();
                Err(Error::ExecStart {
                    command: shorten(command),
                    reason: detail,
                })
            }
            other => Err(Error::Protocol(format!(
                "expected the exec to start, got {other:?}"
            ))),
        }
    }

    /// The command's pid inside the container.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Kills the command's process group; `next` then reports its exit (signal KILL).
    pub fn cancel(&self) {
        if self.exit.is_none() {
            self.ch.cancel();
        }
    }

    /// The next chunk of output, or the exit. After `Exit`, returns `Exit` again.
    pub async fn next(&mut self) -> Result<ExecEvent, Error> {
        if let Some(exit) = &self.exit {
            return Ok(exit.clone());
        }
        match self.ch.recv().await? {
            Incoming::Stdout(d) => Ok(ExecEvent::Output(Stream::Stdout, d)),
            Incoming::Stderr(d) => Ok(ExecEvent::Output(Stream::Stderr, d)),
            Incoming::Msg(Reply::Exit { code, signal }) => {
                let exit = match (code, signal) {
                    (_, Some(s)) => ExecEvent::Exit(-1, Some(signal_name(s))),
                    (Some(c), None) => ExecEvent::Exit(c, None),
                    (None, None) => {
                        return Err(Error::Protocol(
                            "an exit with neither code nor signal".into(),
                        ));
                    }
                };
                self.ch.finish();
                self.exit = Some(exit.clone());
                Ok(exit)
            }
            Incoming::Msg(other) => Err(Error::Protocol(format!(
                "unexpected reply to an exec: {other:?}"
            ))),
        }
    }

    /// Runs to the end, handing every chunk to `on_output` as it arrives.
    pub async fn wait(
        mut self,
        on_output: &mut (dyn FnMut(Stream, &[u8]) + Send),
    ) -> Result<ExecOutput, Error> {
        let mut out = Tail::new(self.capture);
        let mut err = Tail::new(self.capture);
        loop {
            match self.next().await? {
                ExecEvent::Output(s, d) => {
                    on_output(s, &d);
                    match s {
                        Stream::Stdout => out.push(&d),
                        Stream::Stderr => err.push(&d),
                    }
                }
                ExecEvent::Exit(exit_code, signal) => {
                    return Ok(ExecOutput {
                        exit_code,
                        signal,
                        stdout: out.finish(),
                        stderr: err.finish(),
                    });
                }
            }
        }
    }
}

fn shorten(command: &str) -> String {
    const MAX: usize = 200;
    if command.len() <= MAX {
        return command.to_string();
    }
    let mut end = MAX;
    while !command.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &command[..end])
}

/// A bounded tail of a stream.
struct Tail {
    max: usize,
    buf: Vec<u8>,
}

impl Tail {
    fn new(max: usize) -> Self {
        Tail {
            max,
            buf: Vec::new(),
        }
    }

    fn push(&mut self, d: &[u8]) {
        if self.max == 0 {
            return;
        }
        self.buf.extend_from_slice(d);
        // Trim in big steps so a chatty command does not memmove the buffer per chunk.
        if self.buf.len() > self.max + self.max / 4 {
            let cut = self.buf.len() - self.max;
            self.buf.drain(..cut);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.buf.len() > self.max {
            let cut = self.buf.len() - self.max;
            self.buf.drain(..cut);
        }
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "KILL");
        assert_eq!(signal_name(15), "TERM");
        assert_eq!(signal_name(40), "SIG40");
        assert_eq!(signal_name(-1), "SIG-1");
    }

    #[test]
    fn tail_keeps_the_end() {
        let mut t = Tail::new(10);
        for _ in 0..100 {
            t.push(b"0123456789");
        }
        t.push(b"END");
        let b = t.finish();
        assert_eq!(b.len(), 10);
        assert!(b.ends_with(b"END"));
        let mut none = Tail::new(0);
        none.push(b"x");
        assert!(none.finish().is_empty());
    }

    #[test]
    fn long_commands_are_shortened_on_a_char_boundary() {
        let s = "é".repeat(300);
        let short = shorten(&s);
        assert!(short.len() < s.len());
        assert!(short.ends_with('…'));
    }
}
