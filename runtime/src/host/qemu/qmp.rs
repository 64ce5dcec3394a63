//! A QMP (QEMU Machine Protocol) client over the VM's unix socket: one command at a
//! time, asynchronous events skipped.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// QMP answers in milliseconds; a stuck monitor means a wedged qemu.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounds a line from qemu so a runaway reply cannot eat memory.
const MAX_LINE: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to the QMP socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("QMP connection lost: {0} (did qemu exit?)")]
    Io(#[from] std::io::Error),
    #[error("qemu rejected `{command}`: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("qemu did not answer `{0}` within 30 s")]
    Timeout(String),
    #[error("unexpected QMP message: {0}")]
    Protocol(String),
}

pub(crate) struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities-negotiation mode.
    pub(crate) async fn connect(path: &Path) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = tokio::time::timeout(REPLY_TIMEOUT, qmp.read_message())
            .await
            .map_err(|_| QmpError::Timeout("greeting".into()))??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub(crate) async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await?;
        let reply = tokio::time::timeout(REPLY_TIMEOUT, async {
            loop {
                let m = self.read_message().await?;
                if m.get("event").is_some() {
                    tracing::debug!(event = %m, "qmp event");
                    continue;
                }
                return Ok::<Value, QmpError>(m);
            }
        })
        .await
        .map_err(|_| QmpError::Timeout(command.to_string()))??;
        if let Some(r) = reply.get("return") {
            return Ok(r.clone());
        }
        if let Some(e) = reply.get("error") {
            return Err(QmpError::Command {
                command: command.to_string(),
                class: e["class"].as_str().unwrap_or("?").to_string(),
                desc: e["desc"].as_str().unwrap_or("?").to_string(),
            });
        }
        Err(QmpError::Protocol(reply.to_string()))
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(QmpError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "qemu closed the QMP socket",
            )));
        }
        serde_json::from_slice(&line)
            .map_err(|e| QmpError::Protocol(format!("{e}: {}", String::from_utf8_lossy(&line))))
    }
}
