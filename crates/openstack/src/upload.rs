//! The upload body: a file streamed from disk in bounded chunks, hashed (sha512 + md5) and
//! counted as it goes, with an exact length so the request carries `Content-Length` (Glance
//! under uWSGI rejects chunked bodies with big chunks).
//!
//! A blocking task reads and hashes; a channel of [`QUEUE`] chunks connects it to the request
//! body, so at most `(QUEUE + 2) * CHUNK` bytes are in memory whatever the file size. Dropping
//! the request (a cancelled upload) drops the receiver, and the reader stops at its next send.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use md5::Md5;
use sha2::{Digest, Sha512};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::image::UploadReport;

const CHUNK: usize = 1 << 20;
const QUEUE: usize = 4;

/// Bytes handed to the connection so far, and the total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub sent: u64,
    pub total: u64,
}

/// Called from the upload as chunks go out (often: keep it cheap, e.g. set a progress bar).
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// What the reader reports when it is done: the hashes, or the local failure.
type Outcome = Result<(String, String), std::io::Error>;

pub(crate) struct FileBody {
    pub body: reqwest::Body,
    pub len: u64,
    outcome: oneshot::Receiver<Outcome>,
    path: PathBuf,
    started: Instant,
}

impl FileBody {
    pub(crate) async fn open(path: &Path, progress: Option<ProgressFn>) -> Result<FileBody, Error> {
        let local = |what: &'static str| {
            let path = path.to_path_buf();
            move |source| Error::LocalFile { what, path, source }
        };
        let file = std::fs::File::open(path).map_err(local("cannot open the image file"))?;
        let meta = file
            .metadata()
            .map_err(local("cannot stat the image file"))?;
        if !meta.is_file() {
            return Err(Error::LocalFile {
                what: "not a regular file",
                path: path.to_path_buf(),
                source: std::io::Error::other(
                    "uploads need a regular file (its size is sent up front)",
                ),
            });
        }
        let len = meta.len();
        let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(QUEUE);
        let (done_tx, done_rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let outcome = read_and_hash(file, len, &tx);
            if let Err(e) = &outcome {
                // make the body fail too, so the request aborts instead of waiting for bytes
                let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
            }
            let _ = done_tx.send(outcome);
        });
        let mut sent = 0u64;
        let stream = futures_util::stream::poll_fn(move |cx| {
            let item = rx.poll_recv(cx);
            if let std::task::Poll::Ready(Some(Ok(chunk))) = &item {
                sent += chunk.len() as u64;
                if let Some(p) = &progress {
                    p(Progress { sent, total: len });
                }
            }
            item
        });
        Ok(FileBody {
            body: reqwest::Body::wrap_stream(stream),
            len,
            outcome: done_rx,
            path: path.to_path_buf(),
            started: Instant::now(),
        })
    }

    /// After the request: the report, or the local error that broke the body.
    pub(crate) async fn finish(self) -> Result<UploadReport, Error> {
        match self.outcome.await {
            Ok(Ok((sha512, md5))) => Ok(UploadReport {
                bytes: self.len,
                sha512,
                md5,
                elapsed: self.started.elapsed(),
            }),
            Ok(Err(source)) => Err(Error::LocalFile {
                what: "reading the image file failed during the upload",
                path: self.path,
                source,
            }),
            Err(_) => Err(Error::LocalFile {
                what: "the upload stopped before the whole file was read",
                path: self.path,
                source: std::io::Error::other("reader ended early"),
            }),
        }
    }

    /// The local failure, if the reader hit one (used when the request itself failed);
    /// None when the reader only stopped because the request went away.
    pub(crate) async fn local_error(&mut self, wait: std::time::Duration) -> Option<Error> {
        match tokio::time::timeout(wait, &mut self.outcome).await {
            Ok(Ok(Err(source))) if source.kind() != std::io::ErrorKind::BrokenPipe => {
                Some(Error::LocalFile {
                    what: "reading the image file failed during the upload",
                    path: self.path.clone(),
                    source,
                })
            }
            _ => None,
        }
    }
}

fn read_and_hash(
    mut file: std::fs::File,
    len: u64,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Outcome {
    let mut sha = Sha512::new();
    let mut md5 = Md5::new();
    let mut left = len;
    while left > 0 {
        let want = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
        let mut buf = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            match file.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "the file shrank while it was uploaded ({} of {len} bytes were there)",
                            len - left + filled as u64
                        ),
                    ));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        sha.update(&buf);
        md5.update(&buf);
        left -= want as u64;
        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            // the request is gone (cancelled or failed): stop reading
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the upload was abandoned",
            ));
        }
    }
    let mut probe = [0u8; 1];
    match file.read(&mut probe) {
        Ok(0) => {}
        Ok(_) => {
            return Err(std::io::Error::other(
                "the file grew while it was uploaded; Glance got only its first part",
            ));
        }
        Err(e) => return Err(e),
    }
    Ok((hex::encode(sha.finalize()), hex::encode(md5.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_hashes_and_reports_progress() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(3 * CHUNK + 123))
            .map(|i| u8::try_from(i % 251).expect("below 251"))
            .collect();
        std::fs::write(&p, &data).unwrap();
        let last = Arc::new(AtomicU64::new(0));
        let l2 = last.clone();
        let fb = FileBody::open(
            &p,
            Some(Arc::new(move |pr: Progress| {
                l2.store(pr.sent, Ordering::SeqCst)
            })),
        )
        .await
        .unwrap();
        assert_eq!(fb.len, data.len() as u64);
        let FileBody {
            body,
            len,
            outcome,
            path,
            started,
        } = fb;
        let mut got = Vec::new();
        let mut s = std::pin::pin!(http_body_util_stream(body));
        while let Some(c) = s.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, data);
        let rep = FileBody {
            body: reqwest::Body::from(""),
            len,
            outcome,
            path,
            started,
        }
        .finish()
        .await
        .unwrap();
        assert_eq!(rep.sha512, hex::encode(Sha512::digest(&data)));
        assert_eq!(rep.md5, hex::encode(Md5::digest(&data)));
        assert_eq!(last.load(Ordering::SeqCst), data.len() as u64);
    }

    fn http_body_util_stream(
        body: reqwest::Body,
    ) -> impl futures_util::Stream<Item = Result<Bytes, reqwest::Error>> {
        // reqwest::Body is an http_body::Body; poll its frames as a stream of data chunks
        futures_util::stream::unfold(body, |mut b| async move {
            use http_body::Body as _;
            loop {
                let f =
                    std::future::poll_fn(|cx| std::pin::Pin::new(&mut b).poll_frame(cx)).await?;
                match f {
                    Ok(frame) => {
                        if let Ok(d) = frame.into_data() {
                            return Some((Ok(d), b));
                        }
                    }
                    Err(e) => return Some((Err(e), b)),
                }
            }
        })
    }

    #[test]
    fn a_file_that_shrinks_or_grows_during_the_upload_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, [7u8; 10]).unwrap();
        let (tx, _rx) = mpsc::channel(QUEUE);
        // 20 bytes announced, 10 there: shrank
        let e = read_and_hash(std::fs::File::open(&p).unwrap(), 20, &tx).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("10 of 20 bytes"), "{e}");
        // 5 bytes announced, 10 there: grew
        let (tx, _rx) = mpsc::channel(QUEUE);
        let e = read_and_hash(std::fs::File::open(&p).unwrap(), 5, &tx).unwrap_err();
        assert!(e.to_string().contains("grew"), "{e}");
        // exactly right
        let (tx, _rx) = mpsc::channel(QUEUE);
        let (sha, md5) = read_and_hash(std::fs::File::open(&p).unwrap(), 10, &tx).unwrap();
        assert_eq!(sha, hex::encode(Sha512::digest([7u8; 10])));
        assert_eq!(md5, hex::encode(Md5::digest([7u8; 10])));
        // the request went away: the reader stops
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let e = read_and_hash(std::fs::File::open(&p).unwrap(), 10, &tx).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_file_is_a_local_error() {
        let e = FileBody::open(Path::new("/nonexistent/kiln-image"), None)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, Error::LocalFile { .. }), "{e:?}");
    }
}
