//! The guest's log: the `kiln:host/log` interface and guest stdout/stderr, split into
//! lines and sent to the build log through one byte budget per run. Not a capability:
//! every provisioner may log, and a flood is cut and reported (`wasm.log`).
//!
//! Secrets are redacted before anything is cut: stdout/stderr go through a stream
//! redactor before they are split into lines (a long line is cut after redaction),
//! and a message is redacted before the budget truncates it, so no cut can leave part
//! of a secret in clear.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::HostState;
use crate::caps::Scope;
use crate::ui::{LineStream, Redactor};
use crate::wasm::LogLevel;
use crate::wasm::bindings::log;

/// Where the guest's log lines go (the build's UI).
pub type LogOutput = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;

/// Shared by the log interface and guest stdout/stderr: one byte budget per run.
pub(crate) struct LogSink {
    out: LogOutput,
    scope: Scope,
    redactor: Redactor,
    state: Mutex<LogBudget>,
}

struct LogBudget {
    remaining: usize,
    limit: usize,
    dropped: usize,
}

impl LogSink {
    pub(crate) fn new(out: LogOutput, scope: Scope, redactor: Redactor, limit: usize) -> Arc<Self> {
        Arc::new(LogSink {
            out,
            scope,
            redactor,
            state: Mutex::new(LogBudget {
                remaining: limit,
                limit,
                dropped: 0,
            }),
        })
    }

    pub(crate) fn emit(&self, level: LogLevel, message: &str) {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if b.remaining == 0 {
            b.dropped = b.dropped.saturating_add(message.len());
            return;
        }
        // Redact before the budget cuts the message.
        let message = &self.redactor.redact(message);
        let keep = floor_char_boundary(message, message.len().min(b.remaining));
        b.remaining -= keep.max(1).min(b.remaining);
        let first_drop = keep < message.len() || b.remaining == 0;
        if keep < message.len() {
            b.dropped = b.dropped.saturating_add(message.len() - keep);
        }
        let limit = b.limit;
        drop(b);
        (self.out)(level, &message[..keep]);
        if first_drop && keep < message.len() {
            (self.out)(
                LogLevel::Warn,
                &format!("provisioner log exceeded {limit} bytes; further output is dropped"),
            );
            self.scope
                .event("wasm.log", &format!("{limit} bytes"), "truncated", 0.0);
        }
    }

    /// Bytes the guest tried to log beyond the budget.
    pub(crate) fn dropped(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).dropped
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Guest stdout/stderr: split into lines and sent to the build log through the budget.
pub(crate) struct GuestStdio {
    pub level: LogLevel,
    pub sink: Arc<LogSink>,
}

impl IsTerminal for GuestStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStdio {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter::new(self.level, self.sink.clone()))
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter::new(self.level, self.sink.clone()))
    }
}

/// Longest partial line held before it is logged anyway, so a guest printing without
/// newlines cannot make the host buffer without limit.
const MAX_LINE: usize = 8 << 10;

struct LineWriter {
    level: LogLevel,
    sink: Arc<LogSink>,
    /// `None` once finished (on drop).
    lines: Option<LineStream>,
}

impl LineWriter {
    fn new(level: LogLevel, sink: Arc<LogSink>) -> Self {
        let lines = LineStream::new(&sink.redactor, MAX_LINE);
        LineWriter {
            level,
            sink,
            lines: Some(lines),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let (level, sink) = (self.level, &self.sink);
        if let Some(lines) = self.lines.as_mut() {
            lines.push(bytes, &mut |line| sink.emit(level, line));
        }
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let (level, sink) = (self.level, &self.sink);
        if let Some(lines) = self.lines.take() {
            lines.finish(&mut |line| sink.emit(level, line));
        }
    }
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: wasmtime_wasi_io::bytes::Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl log::Host for HostState {
    async fn info(&mut self, msg: String) -> wasmtime::Result<()> {
        self.log.emit(LogLevel::Info, &msg);
        Ok(())
    }
    async fn warn(&mut self, msg: String) -> wasmtime::Result<()> {
        self.log.emit(LogLevel::Warn, &msg);
        Ok(())
    }
    async fn debug(&mut self, msg: String) -> wasmtime::Result<()> {
        self.log.emit(LogLevel::Debug, &msg);
        Ok(())
    }
}
