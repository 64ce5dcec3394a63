//! File transfer: SFTP for single files (falling back to `cat` over an exec channel),
//! `tar -x` over an exec channel for trees. Every upload is staged under a temporary
//! name next to its destination and renamed into place when complete (`staged`), so a
//! failed upload never leaves a partial file where the step said to put it.
//!
//! Streaming over a plain channel is bounded only by the channel window, so it runs at
//! the speed of the cipher; it also needs nothing on the remote side beyond a POSIX shell,
//! `cat`, `chmod`, `mv` and `tar` (BENCHMARKS.md compares it with OpenSSH's scp).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use cap_std::fs::{Dir, File, MetadataExt, PermissionsExt};
use russh::ChannelMsg;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::error::{SshError, from_russh};
use super::session::{Collector, Exit, Session, quote_path};
use super::staged;

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

/// Streams `len` bytes of a local file (all of it when `None`) from its start into a
/// bounded channel of chunks, from a blocking thread. Positional reads: the offset the
/// file shares with its clones (an earlier attempt's) does not matter.
fn read_file_chunks(file: std::fs::File, len: Option<u64>) -> Chunks {
    use std::os::unix::fs::FileExt;
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut offset = 0u64;
        loop {
            let want = match len {
                Some(l) => usize::try_from(l - offset).map_or(CHUNK, |left| left.min(CHUNK)),
                None => CHUNK,
            };
            if want == 0 {
                return;
            }
            let mut buf = vec![0u8; want];
            let mut filled = 0;
            // Fill whole chunks so the channel sees few, large writes.
            while filled < want {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
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
            offset += filled as u64;
            if tx.blocking_send(Ok(buf)).is_err() {
                return;
            }
            if filled < want {
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

    /// Copies an open local file to `remote_path` (created or replaced), then sets `mode`.
    /// `progress` gets the number of bytes sent so far. Returns the bytes sent.
    ///
    /// Uses SFTP (no remote shell start-up, the server writes the file itself); falls back to
    /// `cat` over an exec channel when the server has no SFTP subsystem. Either way the
    /// bytes go to a temporary name next to `remote_path` first (see `staged`).
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
        // The size is fixed now: exactly this many bytes are sent, and checked.
        let size = local
            .metadata()
            .map_err(io_err("reading the local file's size"))?
            .len();
        match self.open_sftp().await? {
            Some(sftp) => {
                let r = self
                    .sftp_upload(
                        &sftp,
                        read_file_chunks(open()?, Some(size)),
                        remote_path,
                        mode,
                        size,
                        progress,
                    )
                    .await;
                let _ = sftp.close().await;
                r
            }
            None => {
                let cmd = staged::store_script(
                    remote_path,
                    mode,
                    size,
                    &staged::token(),
                    "cat > \"$t\"",
                )?;
                self.pipe_in(
                    &cmd,
                    &format!("upload to {remote_path}"),
                    read_file_chunks(open()?, Some(size)),
                    progress,
                )
                .await
            }
        }
    }

    /// Removes what earlier, failed uploads to `remote_path` left next to it.
    pub async fn remove_upload_leftovers(&self, remote_path: &str) -> Result<(), SshError> {
        let script = staged::leftovers_script(remote_path)?;
        let out = self.exec(&script, &[], &mut |_, _| {}).await?;
        if out.success() {
            Ok(())
        } else {
            Err(SshError::Remote {
                action: format!("removing leftovers of an upload to {remote_path}"),
                code: out.exit_code,
                stderr: stderr_text(&out.stderr),
            })
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

    /// Where an SFTP upload to `dest` goes: symbolic links resolved, and what is there now.
    async fn sftp_target(&self, sftp: &SftpSession, dest: &str) -> Result<SftpTarget, SshError> {
        let fail = |e: russh_sftp::client::error::Error| self.sftp_error(dest, e);
        let lstat = match sftp.symlink_metadata(dest).await {
            Ok(a) => a,
            Err(russh_sftp::client::error::Error::Status(_)) => {
                // Missing (or not ours to look at): the open says which.
                return Ok(SftpTarget::New(dest.to_string()));
            }
            Err(e) => return Err(fail(e)),
        };
        let (path, attrs) = if lstat.file_type().is_symlink() {
            // Replace the file the link points to, as writing through the link did.
            match sftp.canonicalize(dest).await {
                Ok(real) => match sftp.symlink_metadata(&real).await {
                    Ok(a) => (real, a),
                    Err(russh_sftp::client::error::Error::Status(_)) => {
                        return Ok(SftpTarget::New(real));
                    }
                    Err(e) => return Err(fail(e)),
                },
                // A dangling link: write through it, as before.
                Err(russh_sftp::client::error::Error::Status(_)) => {
                    return Ok(SftpTarget::InPlace(dest.to_string()));
                }
                Err(e) => return Err(fail(e)),
            }
        } else {
            (dest.to_string(), lstat)
        };
        let kind = attrs.file_type();
        if kind.is_dir() {
            return Err(SshError::Remote {
                action: format!("upload to {dest}"),
                code: 1,
                stderr: format!("{path} is a directory: name the file's full destination path"),
            });
        }
        if kind.is_file() {
            Ok(SftpTarget::Replace(path, attrs))
        } else {
            Ok(SftpTarget::InPlace(path))
        }
    }

    /// An SFTP failure: a status from the server is its answer; anything else means the
    /// channel or the connection went away.
    fn sftp_error(&self, dest: &str, e: russh_sftp::client::error::Error) -> SshError {
        match e {
            russh_sftp::client::error::Error::Status(st) => SshError::Remote {
                action: format!("upload to {dest}"),
                code: 1,
                stderr: format!("sftp: {}: {}", st.status_code, st.error_message),
            },
            other => SshError::Disconnected {
                target: self.target().to_string(),
                detail: format!("the SFTP channel failed during the upload to {dest}: {other}"),
            },
        }
    }

    /// The same for errors that came through the SFTP file's `AsyncWrite` (where a server
    /// status arrives as a plain message and a transport failure keeps its SFTP error).
    fn sftp_io_error(&self, dest: &str, e: &std::io::Error) -> SshError {
        let transport = e
            .get_ref()
            .is_some_and(|inner| inner.is::<russh_sftp::client::error::Error>());
        if transport {
            SshError::Disconnected {
                target: self.target().to_string(),
                detail: format!("the SFTP channel failed during the upload to {dest}: {e}"),
            }
        } else {
            SshError::Remote {
                action: format!("upload to {dest}"),
                code: 1,
                stderr: format!("sftp: {e}"),
            }
        }
    }

    async fn sftp_upload(
        &self,
        sftp: &SftpSession,
        mut input: Chunks,
        remote_path: &str,
        mode: Option<u32>,
        size: u64,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, SshError> {
        let action = format!("upload to {remote_path}");
        let target = self.sftp_target(sftp, remote_path).await?;
        let (write_to, existing) = match &target {
            SftpTarget::New(p) => (staged::temp_path(p, &staged::token()), None),
            SftpTarget::Replace(p, a) => (staged::temp_path(p, &staged::token()), Some(a)),
            SftpTarget::InPlace(p) => (p.clone(), None),
        };
        let staging = !matches!(target, SftpTarget::InPlace(_));
        let mut attrs = FileAttributes::empty();
        // With a mode, or over an existing file: private until complete, the mode comes
        // after. A new file without one: 0666 minus the server's umask, as `cat > file`.
        attrs.permissions = Some(if mode.is_some() || existing.is_some() {
            0o600
        } else {
            0o666
        });
        let flags = if staging {
            OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE
        } else {
            OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE
        };
        let mut file = sftp
            .open_with_flags_and_attributes(&write_to, flags, attrs)
            .await
            .map_err(|e| self.sftp_error(remote_path, e))?;
        let written = async {
            let mut total = 0u64;
            while let Some(chunk) = input.recv().await {
                let chunk = chunk.map_err(io_err(format!("reading local data for {action}")))?;
                file.write_all(&chunk)
                    .await
                    .map_err(|e| self.sftp_io_error(remote_path, &e))?;
                total += chunk.len() as u64;
                progress(total);
            }
            // shutdown, not flush: flush would fsync the whole file on OpenSSH servers.
            file.shutdown()
                .await
                .map_err(|e| self.sftp_io_error(remote_path, &e))?;
            if total != size {
                return Err(SshError::LocalIo {
                    what: format!("reading the local file for {action}"),
                    source: std::io::Error::other(format!(
                        "it changed while being uploaded ({total} of {size} bytes read)"
                    )),
                });
            }
            let perms = mode
                .map(|m| m & 0o7777)
                .or_else(|| existing.and_then(|a| a.permissions).map(|p| p & 0o7777));
            if let Some(p) = perms {
                let mut attrs = FileAttributes::empty();
                attrs.permissions = Some(p);
                sftp.set_metadata(&write_to, attrs)
                    .await
                    .map_err(|e| self.sftp_error(remote_path, e))?;
            }
            if let Some(old) = existing
                && let (Some(uid), Some(gid)) = (old.uid, old.gid)
            {
                let mut owner = FileAttributes::empty();
                (owner.uid, owner.gid) = (Some(uid), Some(gid));
                // Only root may give a file away; others get the file as their own.
                if let Err(e) = sftp.set_metadata(&write_to, owner).await {
                    tracing::debug!(dest = remote_path, "keeping the old owner failed: {e}");
                }
            }
            if let SftpTarget::New(p) | SftpTarget::Replace(p, _) = &target {
                self.publish(sftp, &write_to, p, existing.is_some()).await?;
            }
            Ok::<u64, SshError>(total)
        }
        .await;
        if let Err(e) = &written
            && staging
            && !e.is_disconnect()
        {
            // Still connected (a full disk, a refused chmod): take the partial file away.
            if let Err(e) = sftp.remove_file(&write_to).await {
                tracing::debug!(path = %write_to, "removing the partial upload failed: {e}");
            }
        }
        written
    }

    /// Renames the complete temporary file over `target`. SFTP's own rename refuses an
    /// existing target (OpenSSH links, then unlinks), so replacing one takes `mv -f`.
    async fn publish(
        &self,
        sftp: &SftpSession,
        temp: &str,
        target: &str,
        exists: bool,
    ) -> Result<(), SshError> {
        if !exists {
            match sftp.rename(temp, target).await {
                Ok(()) => return Ok(()),
                // Someone created it meanwhile: replace it like any other.
                Err(russh_sftp::client::error::Error::Status(st))
                    if st.status_code != StatusCode::NoSuchFile => {}
                Err(e) => return Err(self.sftp_error(target, e)),
            }
        }
        let cmd = format!("mv -f -- {} {}", quote_path(temp)?, quote_path(target)?);
        let out = self.exec(&cmd, &[], &mut |_, _| {}).await?;
        if out.success() {
            Ok(())
        } else {
            Err(SshError::Remote {
                action: format!("moving the uploaded file into place at {target}"),
                code: out.exit_code,
                stderr: stderr_text(&out.stderr),
            })
        }
    }

    /// Writes `contents` to `remote_path` (created or replaced), then sets `mode`.
    pub async fn write_file(
        &self,
        remote_path: &str,
        contents: &[u8],
        mode: Option<u32>,
    ) -> Result<(), SshError> {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Ok(contents.to_vec()));
        drop(tx);
        let cmd = staged::store_script(
            remote_path,
            mode,
            contents.len() as u64,
            &staged::token(),
            "cat > \"$t\"",
        )?;
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
        let token = staged::token();
        let marker = staged::tree_marker(&token);
        let tar_task = tokio::task::spawn_blocking(move || {
            let writer = ChunkWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            let mut builder = tar::Builder::new(writer);
            builder.follow_symlinks(false);
            let r = append_dir(&mut builder, &root, Path::new(""))
                .and_then(|()| {
                    // Last: its arrival proves everything before it arrived.
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(0);
                    h.set_mode(0o600);
                    builder.append_data(&mut h, &marker, std::io::empty())
                })
                .and_then(|()| {
                    let mut w = builder.into_inner()?;
                    w.flush_buf()
                });
            if let Err(e) = &r {
                let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
            }
            r
        });
        let cmd = staged::tree_script(remote_dir, &token)?;
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

/// Where an SFTP upload lands.
enum SftpTarget {
    /// Nothing there yet: stage, then rename.
    New(String),
    /// A regular file: stage, then replace it, keeping its owner (and mode if none is given).
    Replace(String, FileAttributes),
    /// A device, fifo or dangling link: write in place, as a plain open would.
    InPlace(String),
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
