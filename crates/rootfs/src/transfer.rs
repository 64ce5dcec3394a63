//! Files in and out of the container, kiln's side. Everything is streamed in chunks of
//! [`CHUNK`] bytes; only `read_file` (bounded by the caller's limit) and `write_file`
//! (given as a slice) hold a whole file in memory.

use std::io::Read;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::conn::{Channel, Incoming};
use crate::container::Container;
use crate::error::{Errno, Error, FileErrorKind};
use crate::protocol::{CHUNK, FailKind, Reply, Request};
use crate::tree;

pub(crate) fn failed(
    op: &'static str,
    path: &str,
    kind: FailKind,
    errno: Option<i32>,
    detail: String,
    max: u64,
) -> Error {
    let file_kind = match kind {
        FailKind::TooLarge => {
            return Error::TooLarge {
                path: path.to_string(),
                max,
            };
        }
        FailKind::UnsafePath => {
            return Error::UnsafePath {
                path: path.to_string(),
                reason: detail,
            };
        }
        FailKind::ExecStart => {
            return Error::Protocol(format!("{op} of {path:?} answered as an exec: {detail}"));
        }
        FailKind::NotFound => FileErrorKind::NotFound,
        FailKind::PermissionDenied => FileErrorKind::PermissionDenied,
        FailKind::IsDirectory => FileErrorKind::IsDirectory,
        FailKind::NotDirectory => FileErrorKind::NotDirectory,
        FailKind::Invalid => FileErrorKind::InvalidPath,
        FailKind::Io => FileErrorKind::Other,
    };
    Error::File {
        op,
        path: path.to_string(),
        kind: file_kind,
        errno: errno.map(Errno),
        detail,
    }
}

fn check_path(path: &str) -> Result<(), Error> {
    if path.is_empty() || path.contains('\0') {
        return Err(Error::File {
            op: "access",
            path: path.to_string(),
            kind: FileErrorKind::InvalidPath,
            errno: None,
            detail: "a path must be non-empty and contain no NUL byte".into(),
        });
    }
    Ok(())
}

/// Where upload data comes from.
enum Source<'a> {
    /// Chunks produced on a blocking thread (a local file, a tar of a local tree).
    Chunks(mpsc::Receiver<std::io::Result<Vec<u8>>>),
    Reader(&'a mut (dyn AsyncRead + Unpin + Send)),
}

impl Source<'_> {
    async fn next(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        match self {
            Source::Chunks(rx) => rx.recv().await.transpose(),
            Source::Reader(r) => {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    let n = r.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok(None);
                }
                buf.truncate(filled);
                Ok(Some(buf))
            }
        }
    }
}

/// Streams a local file into chunks from a blocking thread.
fn file_chunks(mut file: std::fs::File) -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
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
            if tx.blocking_send(Ok(buf)).is_err() || filled < CHUNK {
                return;
            }
        }
    });
    rx
}

/// A `Failed` reply as an error, anything else as a protocol error.
fn unexpected(op: &'static str, path: &str, got: Incoming, max: u64) -> Error {
    match got {
        Incoming::Msg(Reply::Failed {
            kind,
            errno,
            detail,
        }) => failed(op, path, kind, errno, detail, max),
        other => Error::Protocol(format!("unexpected reply to {op} of {path:?}: {other:?}")),
    }
}

impl Container {
    async fn upload(
        &self,
        op: &'static str,
        req: Request,
        path: &str,
        mut src: Source<'_>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, Error> {
        let mut ch: Channel = self.conn()?.open(&req)?;
        let mut total = 0u64;
        loop {
            // The container may have refused already (no such directory): stop sending.
            // Dropping the channel unfinished cancels the request, so the container forgets it.
            if let Some(early) = ch.try_recv() {
                return Err(unexpected(op, path, early, 0));
            }
            let chunk = src.next().await.map_err(Error::io(format!(
                "reading local data for the {op} of {path}"
            )))?;
            let Some(chunk) = chunk else { break };
            total += chunk.len() as u64;
            ch.send_data(chunk).await?;
            progress(total);
        }
        ch.send_end()?;
        let reply = ch.recv().await?;
        ch.finish();
        match reply {
            Incoming::Msg(Reply::Done { bytes }) if bytes == total => Ok(total),
            Incoming::Msg(Reply::Done { bytes }) => Err(Error::Protocol(format!(
                "the container received {bytes} bytes of {path:?}, kiln sent {total}"
            ))),
            other => Err(unexpected(op, path, other, 0)),
        }
    }

    /// Writes `contents` to `path` (created or truncated; symlinks followed inside the
    /// container), then sets `mode` (the file stays private until then).
    pub async fn write_file(
        &self,
        path: &str,
        contents: &[u8],
        mode: Option<u32>,
    ) -> Result<(), Error> {
        let mut reader: &[u8] = contents;
        self.upload_reader(&mut reader, path, mode, &|_| {})
            .await
            .map(|_| ())
    }

    /// Streams `reader` into `path` like [`Container::write_file`]. Returns the bytes sent.
    pub async fn upload_reader(
        &self,
        reader: &mut (dyn AsyncRead + Unpin + Send),
        path: &str,
        mode: Option<u32>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, Error> {
        check_path(path)?;
        let req = Request::WriteFile {
            path: path.to_string(),
            mode,
        };
        self.upload("write", req, path, Source::Reader(reader), progress)
            .await
    }

    /// Copies an open local file to `path` (created or truncated), then sets `mode`.
    /// `progress` gets the bytes sent so far. Returns the bytes sent.
    pub async fn upload_file(
        &self,
        local: std::fs::File,
        path: &str,
        mode: Option<u32>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, Error> {
        check_path(path)?;
        let req = Request::WriteFile {
            path: path.to_string(),
            mode,
        };
        self.upload(
            "upload",
            req,
            path,
            Source::Chunks(file_chunks(local)),
            progress,
        )
        .await
    }

    /// Copies the tree under the open local directory `local` into `dest` (created if
    /// needed): regular files, directories, modes, mtimes. Symlinks that stay inside the
    /// tree are recreated; ones that lead out of it or nowhere are skipped with a warning
    /// and never followed; special files are skipped. Returns the bytes of the tar stream.
    pub async fn upload_tree(
        &self,
        local: std::fs::File,
        dest: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, Error> {
        check_path(dest)?;
        let root = cap_std::fs::Dir::from_std_file(local);
        let (tx, rx) = mpsc::channel(4);
        let tar_task = tokio::task::spawn_blocking(move || tree::write_tar(&root, tx));
        let sent = self
            .upload_tar_source(Source::Chunks(rx), dest, progress)
            .await;
        match tar_task.await {
            Ok(Ok(())) => sent,
            Ok(Err(e)) => Err(Error::Io {
                what: "reading the local tree".into(),
                source: e,
            }),
            Err(e) => Err(Error::Io {
                what: "reading the local tree".into(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// Unpacks a tar stream into `dest` (created if needed), refusing entries that would
    /// land outside it, hard links and device nodes. Returns the bytes of the stream.
    pub async fn upload_tar(
        &self,
        tar: &mut (dyn AsyncRead + Unpin + Send),
        dest: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, Error> {
        check_path(dest)?;
        self.upload_tar_source(Source::Reader(tar), dest, progress)
            .await
    }

    async fn upload_tar_source(
        &self,
        src: Source<'_>,
        dest: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, Error> {
        let req = Request::UploadTree {
            dir: dest.to_string(),
        };
        self.upload("upload of a tree", req, dest, src, progress)
            .await
    }

    /// Reads a whole file, refusing files larger than `max_bytes` ([`Error::TooLarge`]).
    pub async fn read_file(&self, path: &str, max_bytes: u64) -> Result<Vec<u8>, Error> {
        check_path(path)?;
        let mut ch = self.conn()?.open(&Request::ReadFile {
            path: path.to_string(),
            max: Some(max_bytes),
        })?;
        let too_large = || Error::TooLarge {
            path: path.to_string(),
            max: max_bytes,
        };
        let mut buf = Vec::new();
        loop {
            match ch.recv().await? {
                Incoming::Msg(Reply::Size { size }) => {
                    if size > max_bytes {
                        return Err(too_large());
                    }
                    // Within the caller's own limit, so at most what it agreed to hold.
                    buf.reserve(usize::try_from(size.min(max_bytes)).unwrap_or(0));
                }
                Incoming::Stdout(d) => {
                    if (buf.len() + d.len()) as u64 > max_bytes {
                        return Err(too_large());
                    }
                    buf.extend_from_slice(&d);
                }
                Incoming::Msg(Reply::Done { .. }) => {
                    ch.finish();
                    return Ok(buf);
                }
                other => {
                    ch.finish();
                    return Err(unexpected("read", path, other, max_bytes));
                }
            }
        }
    }

    /// Copies `path` from the container into the open local file. `progress` gets the
    /// bytes received so far. Returns the bytes received.
    pub async fn download_file(
        &self,
        path: &str,
        local: std::fs::File,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, Error> {
        check_path(path)?;
        let mut ch = self.conn()?.open(&Request::ReadFile {
            path: path.to_string(),
            max: None,
        })?;
        let what = format!("writing {path} locally");
        let mut file = tokio::fs::File::from_std(local);
        let mut total = 0u64;
        loop {
            match ch.recv().await? {
                Incoming::Msg(Reply::Size { .. }) => {}
                Incoming::Stdout(d) => {
                    file.write_all(&d).await.map_err(Error::io(what.clone()))?;
                    total += d.len() as u64;
                    progress(total);
                }
                Incoming::Msg(Reply::Done { bytes }) => {
                    ch.finish();
                    file.flush().await.map_err(Error::io(what.clone()))?;
                    if bytes != total {
                        return Err(Error::Protocol(format!(
                            "the container sent {total} bytes of {path:?} but reported {bytes}"
                        )));
                    }
                    return Ok(total);
                }
                other => {
                    ch.finish();
                    return Err(unexpected("download", path, other, 0));
                }
            }
        }
    }
}
