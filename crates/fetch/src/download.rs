//! One HTTP download into a key's partial file, hashed while it is written.
//!
//! The network side reads chunks and hands them over a bounded channel to a blocking
//! writer that hashes and writes them, so hashing runs beside the socket reads and memory
//! stays bounded (at most `CHANNEL_DEPTH` chunks in flight). A partial download is resumed
//! with `Range: bytes=N-` and `If-Range` (strong ETag, else Last-Modified); the prefix
//! already on disk is hashed once from the file before the new bytes. A server that
//! answers 200 instead of 206 restarts the file from zero on the same response. Written
//! ranges are handed to the disk as the transfer goes (`sync_file_range`), which keeps
//! dirty memory low; durability itself comes from the boot-id rule in `cache`.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use tokio::sync::mpsc;
use url::Url;

use crate::cache::{Cache, Key, PartMeta, boot_id, now_secs};
use crate::checksum::{Algorithm, Digest, Hasher};
use crate::error::{self, FetchError};
use crate::observe::{Meter, Observer, Restart};

/// Chunks in flight between the socket and the writer (each up to a few hundred KiB).
const CHANNEL_DEPTH: usize = 64;
/// The writer's buffer: fewer, larger write syscalls.
const WRITE_BUFFER: usize = 1 << 20;
/// Written data is handed to the disk in steps of this size while downloading.
const WRITEBACK_EVERY: u64 = 8 << 20;
/// A server that keeps rejecting or mangling our ranges gets this many fresh starts.
const MAX_RESTARTS: u32 = 3;

/// The result of a finished transfer, not yet verified against the expected digest.
pub(crate) struct Done {
    pub(crate) digest: Digest,
    /// Some bytes came from a partial download of an earlier attempt.
    pub(crate) resumed: bool,
}

pub(crate) struct Transfer<'a> {
    pub(crate) client: &'a reqwest::Client,
    pub(crate) cache: &'a Cache,
    pub(crate) key: &'a Key,
    pub(crate) url: &'a Url,
    /// The URL as shown (redacted).
    pub(crate) shown: &'a str,
    /// The checksum the entry is keyed by (`sha256:…` or `none`), recorded with the partial.
    pub(crate) checksum: &'a str,
    pub(crate) algorithm: Algorithm,
    /// An expected digest will check the result, so resuming without a validator is safe.
    pub(crate) verifying: bool,
    pub(crate) max_size: u64,
    pub(crate) resume_attempts: u32,
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) max_redirects: usize,
    pub(crate) observer: &'a dyn Observer,
}

enum AttemptError {
    /// Drop the partial and send a fresh request.
    Restart(Restart),
    Failed {
        error: FetchError,
        progressed: bool,
    },
}

enum Msg {
    Chunk(Bytes),
    Finish,
}

impl Transfer<'_> {
    /// Downloads until complete, resuming after broken connections (up to
    /// `resume_attempts` times, each only if the previous attempt made progress).
    pub(crate) async fn run(&self) -> Result<Done, FetchError> {
        let mut restarts = 0;
        let mut retries = 0;
        let mut resumed = false;
        loop {
            match self.attempt(&mut resumed).await {
                Ok(mut done) => {
                    done.resumed = resumed;
                    return Ok(done);
                }
                Err(AttemptError::Restart(why)) => {
                    restarts += 1;
                    self.remove_partial()?;
                    if restarts > MAX_RESTARTS {
                        return Err(FetchError::Protocol {
                            url: self.shown.to_string(),
                            detail: format!("{why}, {MAX_RESTARTS} times in a row"),
                        });
                    }
                    self.observer.restarted(self.shown, why);
                    resumed = false;
                }
                Err(AttemptError::Failed { error, progressed }) => {
                    if error.is_resumable() && progressed && retries < self.resume_attempts {
                        retries += 1;
                        tracing::info!(url = self.shown, %error, attempt = retries, "resuming the download");
                        self.observer
                            .retrying(self.shown, &error, retries, self.resume_attempts);
                        continue;
                    }
                    if matches!(
                        error,
                        FetchError::NotFound { .. }
                            | FetchError::AccessDenied { .. }
                            | FetchError::ClientError { .. }
                            | FetchError::TooLarge { .. }
                    ) {
                        // The partial cannot be completed from this URL.
                        self.remove_partial()?;
                    }
                    return Err(error);
                }
            }
        }
    }

    fn part(&self) -> PathBuf {
        self.cache.paths(self.key).part
    }

    fn remove_partial(&self) -> Result<(), FetchError> {
        self.cache
            .remove_partial(self.key)
            .map_err(|source| FetchError::CacheIo {
                what: "removing",
                path: self.part(),
                source,
            })
    }

    fn failed(&self, error: FetchError, progressed: bool) -> AttemptError {
        AttemptError::Failed { error, progressed }
    }

    fn reqwest_error(&self, e: reqwest::Error, received: u64) -> FetchError {
        error::from_reqwest(
            self.shown,
            e,
            self.connect_timeout,
            self.read_timeout,
            received,
            self.max_redirects,
        )
    }

    async fn attempt(&self, resumed: &mut bool) -> Result<Done, AttemptError> {
        let part = self.part();
        let part_len = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        let saved = self.cache.read_part_meta(self.key);
        let mut offset = 0;
        let mut validator: Option<String> = None;
        let mut meta = PartMeta {
            url: self.shown.to_string(),
            checksum: self.checksum.to_string(),
            started: now_secs(),
            ..PartMeta::default()
        };
        if part_len > 0 {
            match saved {
                Some(m) if m.url == self.shown && m.checksum == self.checksum => {
                    let v = m
                        .etag
                        .clone()
                        .filter(|e| !e.starts_with("W/"))
                        .or_else(|| m.last_modified.clone());
                    if !self.verifying && m.boot_id.as_deref() != boot_id() {
                        // Written before a reboot: its tail may be lost blocks, and
                        // without a checksum nothing would notice.
                        self.observer
                            .restarted(self.shown, Restart::PartialFromEarlierBoot);
                    } else if v.is_some() || self.verifying {
                        offset = part_len;
                        validator = v;
                        meta = m;
                    } else {
                        self.observer.restarted(self.shown, Restart::NoValidator);
                    }
                }
                _ => {}
            }
            if offset == 0 {
                self.remove_partial().map_err(|e| self.failed(e, false))?;
            } else if self.verifying && meta.total == Some(offset) {
                // A crash after the last byte but before the rename: nothing to fetch.
                *resumed = true;
                return self.hash_complete_partial(&part, offset).await;
            }
        }

        let mut req = self.client.get(self.url.clone());
        if offset > 0 {
            req = req.header(header::RANGE, format!("bytes={offset}-"));
            if let Some(v) = &validator {
                req = req.header(header::IF_RANGE, v.as_str());
            }
            tracing::info!(url = self.shown, offset, "resuming a partial download");
            self.observer.resumed(self.shown, offset);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.failed(self.reqwest_error(e, 0), false))?;
        let status = resp.status().as_u16();
        let etag = header_str(resp.headers(), header::ETAG);
        let last_modified = header_str(resp.headers(), header::LAST_MODIFIED);
        let total;
        match status {
            206 if offset > 0 => {
                let Some((start, whole)) = content_range(resp.headers()) else {
                    return Err(AttemptError::Restart(Restart::RangeRejected));
                };
                if start != offset {
                    return Err(AttemptError::Restart(Restart::RangeRejected));
                }
                // A server that ignores If-Range but honours Range would splice two versions.
                if let (Some(saved), Some(now)) = (&meta.etag, &etag)
                    && saved != now
                {
                    return Err(AttemptError::Restart(Restart::ValidatorChanged));
                }
                total = whole.or(meta.total);
                *resumed = true;
            }
            200 | 203 => {
                if offset > 0 {
                    let changed = (meta.etag.is_some() && meta.etag != etag)
                        || (meta.etag.is_none()
                            && meta.last_modified.is_some()
                            && meta.last_modified != last_modified);
                    let why = if changed {
                        Restart::ValidatorChanged
                    } else {
                        Restart::RangeIgnored
                    };
                    tracing::info!(url = self.shown, %why, "restarting the download from zero");
                    self.observer.restarted(self.shown, why);
                    offset = 0;
                    *resumed = false;
                }
                total = resp.content_length();
                meta.started = now_secs();
            }
            416 if offset > 0 => return Err(AttemptError::Restart(Restart::RangeRejected)),
            _ => {
                let e = status_error(self.shown, resp.status()).unwrap_or_else(|| {
                    FetchError::Protocol {
                        url: self.shown.to_string(),
                        detail: format!("answered {status} to a request without Range"),
                    }
                });
                return Err(self.failed(e, false));
            }
        }
        if let Some(t) = total
            && t > self.max_size
        {
            return Err(self.failed(
                FetchError::TooLarge {
                    url: self.shown.to_string(),
                    size: t,
                    limit: self.max_size,
                },
                false,
            ));
        }
        meta.etag = etag;
        meta.last_modified = last_modified;
        meta.total = total;
        meta.boot_id = boot_id().map(str::to_string);
        self.cache
            .write_part_meta(self.key, &meta)
            .map_err(|e| self.failed(e, false))?;
        self.stream(resp, offset, total).await
    }

    async fn stream(
        &self,
        mut resp: reqwest::Response,
        offset: u64,
        total: Option<u64>,
    ) -> Result<Done, AttemptError> {
        let part = self.part();
        let (tx, rx) = mpsc::channel::<Msg>(CHANNEL_DEPTH);
        let writer = {
            let part = part.clone();
            let algorithm = self.algorithm;
            tokio::task::spawn_blocking(move || write_part(&part, offset, algorithm, rx))
        };
        let mut meter = Meter::new(self.shown.to_string(), total, offset);
        let mut received: u64 = 0;
        let outcome: Result<(), FetchError> = loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    received += chunk.len() as u64;
                    let now = offset + received;
                    if now > self.max_size {
                        break Err(FetchError::TooLarge {
                            url: self.shown.to_string(),
                            size: now,
                            limit: self.max_size,
                        });
                    }
                    if let Some(t) = total
                        && now > t
                    {
                        break Err(FetchError::Protocol {
                            url: self.shown.to_string(),
                            detail: format!("sent more than the announced {t} bytes"),
                        });
                    }
                    if tx.send(Msg::Chunk(chunk)).await.is_err() {
                        // The writer stopped; its error is collected below.
                        break Ok(());
                    }
                    meter.update(now, self.observer);
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(self.reqwest_error(e, offset + received)),
            }
        };
        let size = offset + received;
        let short = match (&outcome, total) {
            (Ok(()), Some(t)) if size < t => Some(FetchError::Interrupted {
                url: self.shown.to_string(),
                received: size,
                detail: format!("the server closed the connection after {size} of {t} bytes"),
            }),
            _ => None,
        };
        let failure = match outcome {
            Err(e) => Some(e),
            Ok(()) => short,
        };
        if failure.is_none() {
            // Ignore a send error: the writer already failed and says why below.
            let _ = tx.send(Msg::Finish).await;
        }
        drop(tx);
        let written = writer.await.map_err(|e| {
            self.failed(
                FetchError::CacheIo {
                    what: "writing",
                    path: part.clone(),
                    source: io::Error::other(e.to_string()),
                },
                received > 0,
            )
        })?;
        let digest = written.map_err(|source| {
            self.failed(
                FetchError::CacheIo {
                    what: "writing",
                    path: part.clone(),
                    source,
                },
                received > 0,
            )
        })?;
        if let Some(e) = failure {
            return Err(self.failed(e, received > 0));
        }
        let Some(digest) = digest else {
            return Err(self.failed(
                FetchError::CacheIo {
                    what: "writing",
                    path: part,
                    source: io::Error::other("the writer stopped before the end"),
                },
                received > 0,
            ));
        };
        meter.finish(size, self.observer);
        tracing::debug!(url = self.shown, size, "transfer complete");
        Ok(Done {
            digest,
            resumed: offset > 0,
        })
    }

    async fn hash_complete_partial(&self, part: &Path, size: u64) -> Result<Done, AttemptError> {
        let p = part.to_path_buf();
        let algorithm = self.algorithm;
        let r = tokio::task::spawn_blocking(move || crate::cache::hash_file(&p, algorithm))
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r);
        match r {
            Ok(digest) => {
                tracing::debug!(
                    url = self.shown,
                    size,
                    "the partial download was already complete"
                );
                Ok(Done {
                    digest,
                    resumed: true,
                })
            }
            Err(source) => Err(self.failed(
                FetchError::CacheIo {
                    what: "reading",
                    path: part.to_path_buf(),
                    source,
                },
                false,
            )),
        }
    }
}

/// The writer: hashes the kept prefix (on resume), then every chunk, and writes it.
/// Returns the digest after `Finish` (data fsynced), `None` when the channel closed early
/// (the partial stays as far as it got).
fn write_part(
    part: &Path,
    offset: u64,
    algorithm: Algorithm,
    mut rx: mpsc::Receiver<Msg>,
) -> io::Result<Option<Digest>> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(part)?;
    let mut hasher = Hasher::new(algorithm);
    file.set_len(offset)?;
    if offset > 0 {
        file.seek(SeekFrom::Start(0))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = offset;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = file.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the partial download shrank while resuming",
                ));
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut w = BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut pos = offset;
    let mut written_back = offset;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Chunk(b) => {
                hasher.update(&b);
                w.write_all(&b)?;
                pos += b.len() as u64;
                let on_fd = pos - w.buffer().len() as u64;
                if on_fd - written_back >= WRITEBACK_EVERY {
                    start_writeback(w.get_ref(), written_back, on_fd - written_back);
                    written_back = on_fd;
                }
            }
            Msg::Finish => {
                w.flush()?;
                if boot_id().is_none() {
                    // No boot id to detect a power loss by: durable before the rename.
                    w.get_ref().sync_all()?;
                }
                return Ok(Some(hasher.finish()));
            }
        }
    }
    w.flush()?;
    Ok(None)
}

/// Asks the kernel to start writing a range to disk now, without waiting for it, so
/// the fsync before the rename has little left to do (the transfer and the disk overlap
/// instead of the disk write trailing the transfer). Advisory: errors are ignored, the
/// final fsync is what guarantees durability.
fn start_writeback(f: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; the fd is open and owned
    // by `f` for the duration of the call.
    let _ = unsafe { libc::sync_file_range(f.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect())
}

/// `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`).
fn content_range(h: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

/// The typed error for a non-success status, `None` for 2xx.
pub(crate) fn status_error(url: &str, status: reqwest::StatusCode) -> Option<FetchError> {
    let code = status.as_u16();
    let url = url.to_string();
    let reason = status.canonical_reason().unwrap_or("").to_string();
    Some(match code {
        200..=299 => return None,
        404 | 410 => FetchError::NotFound { url },
        401 | 403 | 407 => FetchError::AccessDenied { url, status: code },
        400..=499 => FetchError::ClientError {
            url,
            status: code,
            reason,
        },
        500..=599 => FetchError::ServerError {
            url,
            status: code,
            reason,
        },
        _ => FetchError::UnexpectedStatus {
            url,
            status: code,
            reason,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn cr(v: &str) -> Option<(u64, Option<u64>)> {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, HeaderValue::from_str(v).unwrap());
        content_range(&h)
    }

    #[test]
    fn parses_content_range() {
        assert_eq!(cr("bytes 100-999/1000"), Some((100, Some(1000))));
        assert_eq!(cr("bytes 0-0/*"), Some((0, None)));
        assert_eq!(cr("bytes 5-4/10"), None);
        assert_eq!(cr("items 0-1/2"), None);
        assert_eq!(cr("bytes x-1/2"), None);
        assert_eq!(cr("bytes 1-2/zz"), None);
    }

    #[test]
    fn statuses_map_to_variants() {
        use reqwest::StatusCode as S;
        assert!(status_error("u", S::OK).is_none());
        assert!(matches!(
            status_error("u", S::NOT_FOUND),
            Some(FetchError::NotFound { .. })
        ));
        assert!(matches!(
            status_error("u", S::FORBIDDEN),
            Some(FetchError::AccessDenied { status: 403, .. })
        ));
        assert!(matches!(
            status_error("u", S::IM_A_TEAPOT),
            Some(FetchError::ClientError { status: 418, .. })
        ));
        assert!(matches!(
            status_error("u", S::BAD_GATEWAY),
            Some(FetchError::ServerError { status: 502, .. })
        ));
        assert!(matches!(
            status_error("u", S::NOT_MODIFIED),
            Some(FetchError::UnexpectedStatus { status: 304, .. })
        ));
    }
}
