//! File transfer over exec channels: `cat > file` for single files and `tar -x` for trees.
//!
//! Streaming over a plain channel is bounded only by the channel window, so it runs at
//! the speed of the cipher; it also needs nothing on the remote side beyond a POSIX shell,
//! `cat`, `chmod` and `tar` (BENCHMARKS.md compares it with OpenSSH's scp).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use cap_std::fs::{Dir, File, MetadataExt, PermissionsExt};
use russh::ChannelMsg;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::error::{SshError, from_russh};
use super::session::{Collector, Exit, Session, quote_path};

/// Disk reads and channel writes go in pieces this big (russh slices them into packets
/// without copying).
const CHUNK: usize = 1024 * 1024;
/// stderr of transfer commands is only for error messages.
const ERR_KEEP: usize = 64 * 1024;

/// SFTP write size and requests in flight: 8 MiB outstanding, below the channel window.
const SFTP_WRITE: u32 = 255 * 1024;
const SFTP_IN_FLIGHT: usize = 32;

type Chunks = mpsc::Receiver<std::io::Result<Vec<u8>>>;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SshError {
    let what = what.into();
    move |source| SshError::LocalIo { what, source }
}

fn stderr_text(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.trim();
    if s.is_empty() {
        return "(no error output)".into();
    }
    let keep = s
        .char_indices()
        .rev()
        .nth(ERR_KEEP - 1)
        .map_or(0, |(i, _)| i);
    if keep == 0 {
        return s.to_string();
    }
    // Start the kept tail at a line, so no fragment of a cut secret is shown in clear
    // (the message is redacted later, and the redactor knows whole lines only).
    match s[keep..].find('\n') {
        Some(nl) => s[keep + nl + 1..].to_string(),
        None => "(error output too long to show)".into(),
    }
}

/// Streams a local file into a bounded channel of chunks from a blocking thread.
fn read_file_chunks(file: std::fs::File) -> Chunks {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            // Fill whole chunks so the channel sees few, large writes.
            while filled < CHUNK {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
            if filled == 0 {
                return;
            }
            buf.truncate(filled);
            if tx.blocking_send(Ok(buf)).is_err() {
                return;
            }
            if filled < CHUNK {
                return;
            }
        }
    });
    rx
}

impl Session {
    /// Runs `command` with `input` as its stdin; returns bytes sent and the command's stderr.
    async fn pipe_in(
        &self,
        command: &str,
        action: &str,
        mut input: Chunks,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, SshError> {
        let ch = self.open_exec(command).await?;
        let (mut rd, wr) = ch.split();
        let target = self.target().to_string();

        let send = async {
            let mut total = 0u64;
            while let Some(chunk) = input.recv().await {
                let chunk = chunk.map_err(io_err(format!("reading local data for {action}")))?;
                total += chunk.len() as u64;
                wr.data_bytes(chunk)
                    .await
                    .map_err(|e| from_russh(&target, "sending data", e))?;
                progress(total);
            }
            wr.eof()
                .await
                .map_err(|e| from_russh(&target, "sending end of file", e))?;
            Ok::<u64, SshError>(total)
        };
        // The reader must run alongside the writer: an undrained channel stalls the session.
        let recv = async {
            let mut err = Collector::new();
            let mut exit = Exit::default();
            while let Some(msg) = rd.wait().await {
                match &msg {
                    ChannelMsg::ExtendedData { data, ext: 1 } => err.capture(data),
                    ChannelMsg::Close => break,
                    other => exit.observe(other),
                }
            }
            (exit, err.finish())
        };
        tokio::pin!(send);
        tokio::pin!(recv);
        let mut sent: Option<Result<u64, SshError>> = None;
        let (exit, stderr) = loop {
            tokio::select! {
                r = &mut send, if sent.is_none() => {
                    if r.is_err() {
                        // Closing makes the remote command see the end instead of waiting forever.
                        let _ = wr.close().await;
                        sent = Some(r);
                        // The remote side usually explains why (e.g. no such directory).
                        match tokio::time::timeout(std::time::Duration::from_secs(5), &mut recv).await {
                            Ok(v) => break v,
                            Err(_) => return sent.unwrap_or(Ok(0)),
                        }
                    }
                    sent = Some(r);
                }
                v = &mut recv => break v,
            }
        };
        let (code, signal) = exit.resolve(&target)?;
        if code != 0 || signal.is_some() {
            return Err(SshError::Remote {
                action: action.to_string(),
                code,
                stderr: stderr_text(&stderr),
            });
        }
        match sent {
            Some(r) => r,
            None => Err(SshError::Remote {
                action: action.to_string(),
                code,
                stderr: format!(
                    "the remote command ended before reading all input: {}",
                    stderr_text(&stderr)
                ),
            }),
        }
    }

    /// Runs `command` and hands its stdout to `sink` chunk by chunk.
    async fn pipe_out(
        &self,
        command: &str,
        action: &str,
        sink: &mut Sink<'_>,
    ) -> Result<u64, SshError> {
        let mut ch = self.open_exec(command).await?;
        let mut err = Collector::new();
        let mut exit = Exit::default();
        let mut total = 0u64;
        while let Some(msg) = ch.wait().await {
            match &msg {
                ChannelMsg::Data { data } => {
                    total += data.len() as u64;
                    sink.put(data, total).await?;
                }
                ChannelMsg::ExtendedData { data, ext: 1 } => err.capture(data),
                ChannelMsg::Close => break,
                other => exit.observe(other),
            }
        }
        let (code, signal) = exit.resolve(self.target())?;
        if code != 0 || signal.is_some() {
            return Err(SshError::Remote {
                action: action.to_string(),
                code,
                stderr: stderr_text(&err.finish()),
            });
        }
        Ok(total)
    }

    fn store_command(remote_path: &str, mode: Option<u32>) -> Result<String, SshError> {
        let p = quote_path(remote_path)?;
        Ok(match mode {
            // umask first so the file is never readable by others before chmod runs.
            Some(m) => format!("umask 077 && cat > {p} && chmod {:o} {p}", m & 0o7777),
            None => format!("cat > {p}"),
        })
    }

    /// Copies an open local file to `remote_path` (created or truncated), then sets `mode`.
    /// `progress` gets the number of bytes sent so far. Returns the bytes sent.
    ///
    /// Uses SFTP (no remote shell start-up, the server writes the file itself); falls back to
    /// `cat > file` over an exec channel when the server has no SFTP subsystem.
    pub async fn upload_file(
        &self,
        local: &File,
        remote_path: &str,
        mode: Option<u32>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, SshError> {
        let open = || -> Result<std::fs::File, SshError> {
            Ok(local
                .try_clone()
                .map_err(io_err("opening the local file for upload"))?
                .into_std())
        };
        match self.open_sftp().await? {
            Some(sftp) => {
                let r = self
                    .sftp_upload(
                        &sftp,
                        read_file_chunks(open()?),
                        remote_path,
                        mode,
                        progress,
                    )
                    .await;
                let _ = sftp.close().await;
                r
            }
            None => {
                let cmd = Self::store_command(remote_path, mode)?;
                self.pipe_in(
                    &cmd,
                    &format!("upload to {remote_path}"),
                    read_file_chunks(open()?),
                    progress,
                )
                .await
            }
        }
    }

    /// An SFTP session on a new channel, or None when the server offers no SFTP subsystem.
    async fn open_sftp(&self) -> Result<Option<SftpSession>, SshError> {
        let ch = self.open_session_channel().await?;
        if let Err(e) = ch.request_subsystem(true, "sftp").await {
            tracing::debug!(target = %self.target(), "no sftp subsystem ({e}); using exec transfers");
            return Ok(None);
        }
        let cfg = russh_sftp::client::Config {
            // OpenSSH's sftp client keeps 64 requests of 32 KiB in flight; larger writes
            // mean fewer round trips through both SFTP stacks.
            max_concurrent_writes: SFTP_IN_FLIGHT,
            max_write_packet_len: SFTP_WRITE,
            max_packet_len: SFTP_WRITE + 1024,
            request_timeout_secs: 120,
            ..Default::default()
        };
        match SftpSession::new_with_config(ch.into_stream(), cfg).await {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                tracing::debug!(target = %self.target(), "sftp start failed ({e}); using exec transfers");
                Ok(None)
            }
        }
    }

    async fn sftp_upload(
        &self,
        sftp: &SftpSession,
        mut input: Chunks,
        remote_path: &str,
        mode: Option<u32>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, SshError> {
        let action = format!("upload to {remote_path}");
        let remote = |e: &dyn std::fmt::Display| SshError::Remote {
            action: action.clone(),
            code: 1,
            stderr: format!("sftp: {e}"),
        };
        let mut attrs = FileAttributes::empty();
        // With a mode: create it private and apply the mode once the content is complete.
        // Without: 0666 minus the server's umask, as `cat > file` would.
        attrs.permissions = Some(if mode.is_some() { 0o600 } else { 0o666 });
        let flags = OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE;
        let mut file = sftp
            .open_with_flags_and_attributes(remote_path, flags, attrs)
            .await
            .map_err(|e| remote(&e))?;
        let mut total = 0u64;
        while let Some(chunk) = input.recv().await {
            let chunk = chunk.map_err(io_err(format!("reading local data for {action}")))?;
            file.write_all(&chunk).await.map_err(|e| remote(&e))?;
            total += chunk.len() as u64;
            progress(total);
        }
        // shutdown, not flush: flush would fsync the whole file on OpenSSH servers.
        file.shutdown().await.map_err(|e| remote(&e))?;
        if let Some(m) = mode {
            let mut attrs = FileAttributes::empty();
            attrs.permissions = Some(m & 0o7777);
            sftp.set_metadata(remote_path, attrs)
                .await
                .map_err(|e| remote(&e))?;
        }
        Ok(total)
    }

    /// Writes `contents` to `remote_path` (created or truncated), then sets `mode`.
    pub async fn write_file(
        &self,
        remote_path: &str,
        contents: &[u8],
        mode: Option<u32>,
    ) -> Result<(), SshError> {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Ok(contents.to_vec()));
        drop(tx);
        let cmd = Self::store_command(remote_path, mode)?;
        self.pipe_in(&cmd, &format!("write to {remote_path}"), rx, &|_| {})
            .await
            .map(|_| ())
    }

    /// Copies `remote_path` into the open local file. Returns the bytes received.
    pub async fn download_file(
        &self,
        remote_path: &str,
        local: &mut File,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, SshError> {
        let std_file = local
            .try_clone()
            .map_err(io_err("opening the local file for download"))?
            .into_std();
        let cmd = format!("cat {}", quote_path(remote_path)?);
        let mut sink = Sink::File {
            file: tokio::fs::File::from_std(std_file),
            what: format!("writing {remote_path} locally"),
            progress,
        };
        let n = self
            .pipe_out(&cmd, &format!("download of {remote_path}"), &mut sink)
            .await?;
        if let Sink::File { mut file, what, .. } = sink {
            file.flush().await.map_err(io_err(what))?;
        }
        Ok(n)
    }

    /// Reads a whole remote file, refusing files larger than `max_bytes`.
    pub async fn read_file(&self, remote_path: &str, max_bytes: u64) -> Result<Vec<u8>, SshError> {
        let cmd = format!("cat {}", quote_path(remote_path)?);
        let mut sink = Sink::Memory {
            buf: Vec::new(),
            max: max_bytes,
            path: remote_path,
        };
        self.pipe_out(&cmd, &format!("read of {remote_path}"), &mut sink)
            .await?;
        match sink {
            Sink::Memory { buf, .. } => Ok(buf),
            Sink::File { .. } => Ok(Vec::new()),
        }
    }

    /// Copies the tree under `local` into `remote_dir` (created if needed): regular files,
    /// directories and their modes. Symlinks that stay inside the tree are recreated as
    /// symlinks; ones that point outside it (or nowhere) are skipped with a warning and never
    /// followed. Returns the bytes of the tar stream sent.
    pub async fn upload_tree(
        &self,
        local: &Dir,
        remote_dir: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, SshError> {
        let root = local
            .try_clone()
            .map_err(io_err("opening the local directory"))?;
        let (tx, rx) = mpsc::channel(4);
        let tar_task = tokio::task::spawn_blocking(move || {
            let writer = ChunkWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            let mut builder = tar::Builder::new(writer);
            builder.follow_symlinks(false);
            let r = append_dir(&mut builder, &root, Path::new("")).and_then(|()| {
                let mut w = builder.into_inner()?;
                w.flush_buf()
            });
            if let Err(e) = &r {
                let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
            }
            r
        });
        let dir = quote_path(remote_dir)?;
        let cmd = format!("mkdir -p {dir} && tar -x -p --no-same-owner -f - -C {dir}");
        let sent = self
            .pipe_in(
                &cmd,
                &format!("upload of a tree to {remote_dir}"),
                rx,
                progress,
            )
            .await;
        match tar_task.await {
            Ok(Ok(())) => sent,
            Ok(Err(e)) => Err(SshError::LocalIo {
                what: "reading the local tree".into(),
                source: e,
            }),
            Err(e) => Err(SshError::LocalIo {
                what: "reading the local tree".into(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }
}

/// Where downloaded bytes go.
enum Sink<'a> {
    Memory {
        buf: Vec<u8>,
        max: u64,
        path: &'a str,
    },
    File {
        file: tokio::fs::File,
        what: String,
        progress: &'a (dyn Fn(u64) + Send + Sync),
    },
}

impl Sink<'_> {
    async fn put(&mut self, data: &[u8], total: u64) -> Result<(), SshError> {
        match self {
            Sink::Memory { buf, max, path } => {
                if total > *max {
                    return Err(SshError::TooLarge {
                        path: path.to_string(),
                        max: *max,
                    });
                }
                buf.extend_from_slice(data);
            }
            Sink::File {
                file,
                what,
                progress,
            } => {
                file.write_all(data).await.map_err(io_err(what.clone()))?;
                progress(total);
            }
        }
        Ok(())
    }
}

struct ChunkWriter {
    tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn flush_buf(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(full))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush_buf()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn header_for(meta: &cap_std::fs::Metadata, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(meta.permissions().mode() & 0o7777);
    h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    h
}

/// Walks the tree through the root `Dir` only, so no path can leave it.
fn append_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Dir,
    rel: &Path,
) -> std::io::Result<()> {
    let entries = if rel.as_os_str().is_empty() {
        root.entries()?
    } else {
        root.read_dir(rel)?
    };
    let mut names: Vec<_> = entries
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let path: PathBuf = rel.join(&name);
        let meta = root.symlink_metadata(&path)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            let mut h = header_for(&meta, tar::EntryType::Directory, 0);
            builder.append_data(&mut h, &path, std::io::empty())?;
            append_dir(builder, root, &path)?;
        } else if ft.is_file() {
            let file = root.open(&path)?;
            let mut h = header_for(&meta, tar::EntryType::Regular, meta.len());
            builder.append_data(&mut h, &path, file.into_std().take(meta.len()))?;
        } else if ft.is_symlink() {
            // cap-std resolves the link inside `root` and fails if it escapes or dangles.
            match root.metadata(&path) {
                Ok(_) => {
                    let target = root.read_link(&path)?;
                    let mut h = header_for(&meta, tar::EntryType::Symlink, 0);
                    builder.append_link(&mut h, &path, &target)?;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(),
                        "not uploading symlink: it points outside the uploaded directory or nowhere ({e})");
                }
            }
        } else {
            tracing::warn!(path = %path.display(), "not uploading special file (fifo, socket or device)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_stderr_is_cut_at_a_line_so_no_secret_fragment_shows() {
        assert_eq!(stderr_text(b"  \n"), "(no error output)");
        assert_eq!(stderr_text(b"short\n"), "short");
        // A secret line straddling the cut is dropped whole, not shown from its middle.
        let mut s = String::from("SECRET-VALUE-42");
        s.push('\n');
        // The kept tail would start at "CRET-VALUE-42".
        s.push_str(&"y".repeat(ERR_KEEP - 19));
        s.push_str("\nlast");
        let shown = stderr_text(s.as_bytes());
        assert!(!shown.contains("VALUE"), "{shown}");
        assert!(shown.ends_with("last"));
        assert_eq!(
            stderr_text("z".repeat(ERR_KEEP + 10).as_bytes()),
            "(error output too long to show)"
        );
    }
}
