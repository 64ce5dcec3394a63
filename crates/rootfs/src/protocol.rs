//! The wire protocol between kiln (the host) and the container's init, over one Unix
//! stream socket.
//!
//! Every frame is `len: u32 LE | kind: u8 | id: u64 LE | payload`, where `len` counts the
//! bytes after itself. `kind` says what the payload is: a JSON message, a chunk of a data
//! stream (file contents, a tar stream, an exec's stdout), a chunk of an exec's stderr, or
//! the end of the data the host sends for a request. `id` ties frames to the request that
//! the host opened with a JSON message; id 0 is the container itself (configuration,
//! readiness). Several requests can be in flight at once.
//!
//! The host treats everything the init sends as hostile (a process in the container could
//! take over the init): frames are bounded before anything is allocated and messages that
//! do not parse are protocol errors, never panics.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes of file or tar data per frame (both directions).
pub(crate) const CHUNK: usize = 1024 * 1024;
/// Largest JSON message the host accepts from the init.
pub(crate) const MAX_MSG_FROM_INIT: usize = 64 * 1024;
/// Largest frame the init accepts from the host (an exec request carries the command and
/// environment; the kernel refuses a single argument over 128 KiB anyway).
pub(crate) const MAX_FRAME_TO_INIT: usize = 4 * 1024 * 1024;
/// Largest frame the host accepts from the init: one data chunk plus the header.
pub(crate) const MAX_FRAME_FROM_INIT: usize = CHUNK + HEADER;

/// `kind` + `id`.
const HEADER: usize = 1 + 8;

/// The id of frames about the container itself rather than one request.
pub(crate) const CONTAINER_ID: u64 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A JSON [`Request`], [`Reply`] or [`InitConfig`].
    Msg = 0,
    /// A chunk of the request's data stream (stdout for an exec).
    Data = 1,
    /// A chunk of an exec's stderr.
    Stderr = 2,
    /// The host sent all the data of this request.
    End = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Msg,
            1 => Kind::Data,
            2 => Kind::Stderr,
            3 => Kind::End,
            _ => return None,
        })
    }
}

#[derive(Debug)]
pub(crate) struct Frame {
    pub kind: Kind,
    pub id: u64,
    pub payload: Vec<u8>,
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The peer closed the connection between frames.
    Closed,
    Io(std::io::Error),
    /// The bytes are not a frame of this protocol.
    Malformed(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Closed => write!(f, "the connection was closed"),
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::Malformed(m) => write!(f, "malformed frame: {m}"),
        }
    }
}

fn header_bytes(kind: Kind, id: u64, payload_len: usize) -> std::io::Result<[u8; 4 + HEADER]> {
    let len = u32::try_from(HEADER + payload_len)
        .map_err(|_| std::io::Error::other("frame too large"))?;
    let mut h = [0u8; 4 + HEADER];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4] = kind as u8;
    h[5..].copy_from_slice(&id.to_le_bytes());
    Ok(h)
}

fn parse_header(h: &[u8; 4 + HEADER], max: usize) -> Result<(Kind, u64, usize), FrameError> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if len < HEADER || len > max {
        return Err(FrameError::Malformed(format!(
            "frame length {len} outside 9..={max}"
        )));
    }
    let kind = Kind::from_u8(h[4])
        .ok_or_else(|| FrameError::Malformed(format!("unknown frame kind {}", h[4])))?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[5..]);
    Ok((kind, u64::from_le_bytes(id), len - HEADER))
}

/// Writes one frame (blocking; used inside the container).
pub(crate) fn write_frame(
    w: &mut impl Write,
    kind: Kind,
    id: u64,
    payload: &[u8],
) -> std::io::Result<()> {
    w.write_all(&header_bytes(kind, id, payload.len())?)?;
    w.write_all(payload)
}

/// Reads one frame of at most `max` bytes (blocking; used inside the container).
pub(crate) fn read_frame(r: &mut impl Read, max: usize) -> Result<Frame, FrameError> {
    let mut h = [0u8; 4 + HEADER];
    read_exact_or_closed(r, &mut h)?;
    let (kind, id, n) = parse_header(&h, max)?;
    let mut payload = vec![0u8; n];
    r.read_exact(&mut payload).map_err(FrameError::Io)?;
    Ok(Frame { kind, id, payload })
}

fn read_exact_or_closed(r: &mut impl Read, buf: &mut [u8]) -> Result<(), FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => {
                return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(())
}

/// Writes one frame (async; the host side).
pub(crate) async fn write_frame_async(
    w: &mut (impl AsyncWrite + Unpin),
    kind: Kind,
    id: u64,
    payload: &[u8],
) -> std::io::Result<()> {
    w.write_all(&header_bytes(kind, id, payload.len())?).await?;
    w.write_all(payload).await
}

/// Reads one frame of at most `max` bytes (async; the host side).
pub(crate) async fn read_frame_async(
    r: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> Result<Frame, FrameError> {
    let mut h = [0u8; 4 + HEADER];
    let mut got = 0;
    while got < h.len() {
        match r.read(&mut h[got..]).await {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let (kind, id, n) = parse_header(&h, max)?;
    let mut payload = vec![0u8; n];
    r.read_exact(&mut payload).await.map_err(FrameError::Io)?;
    Ok(Frame { kind, id, payload })
}

/// The first frame the host sends: what container to build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InitConfig {
    /// The pid of the kiln process that spawned the init; the init exits at once when its
    /// parent is already someone else (kiln died before the death signal was armed).
    pub host_pid: u32,
    /// Overlay lower directories, bottom first. Empty for `scratch`.
    pub lower: Vec<String>,
    pub upper: String,
    pub work: String,
    pub hostname: String,
    /// Share the host's network namespace (and bind its resolv.conf) instead of a new,
    /// empty one.
    pub network: bool,
}

/// What the host asks the container to do; frames with the same id follow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    /// `/bin/sh -c command`. Replies: `Started`, stdout `Data` and `Stderr` chunks, `Exit`.
    Exec {
        command: String,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        user: Option<String>,
    },
    /// Stop what request `id` is doing: kill an exec's process group, stop a read.
    Cancel,
    /// Host sends `Data`… `End`; reply `Done`.
    WriteFile { path: String, mode: Option<u32> },
    /// Replies: `Size`, `Data`…, `Done`. `max` bounds the bytes (`TooLarge` beyond).
    ReadFile { path: String, max: Option<u64> },
    /// Host sends a tar stream as `Data`… `End`; it is unpacked under `dir`; reply `Done`.
    UploadTree { dir: String },
    /// Reply: `Stat`.
    Stat { path: String },
    /// Reply: `Facts`.
    Facts,
}

/// Where container start-up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SetupStage {
    /// Before any namespace exists (bad configuration, threads).
    Init,
    /// unshare(2).
    Namespaces,
    /// A mount (the overlay, /proc, /dev, /sys, resolv.conf).
    Mount,
    /// Anything else (pivot_root, device nodes, hostname).
    Setup,
}

/// Why a request failed, as the host matches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FailKind {
    NotFound,
    PermissionDenied,
    IsDirectory,
    NotDirectory,
    TooLarge,
    ExecStart,
    UnsafePath,
    Invalid,
    Io,
}

impl FailKind {
    pub(crate) fn from_io(e: &std::io::Error) -> FailKind {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound => FailKind::NotFound,
            K::PermissionDenied => FailKind::PermissionDenied,
            K::IsADirectory => FailKind::IsDirectory,
            K::NotADirectory => FailKind::NotDirectory,
            K::InvalidInput => FailKind::Invalid,
            _ => FailKind::Io,
        }
    }
}

/// File metadata as `stat` in the container sees it (symlinks followed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`0o7777` part of `st_mode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the Unix epoch.
    pub mtime: i64,
}

/// What a path is, after following symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Directory,
    /// A device, FIFO or socket.
    Other,
}

/// What the container answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub(crate) enum Reply {
    /// From the outer init: the host pid of the container's pid 1.
    Forked {
        pid: i32,
    },
    /// The container is up. `created` lists mount points the init had to create in the
    /// image (they are removed from the upper directory at stop); `dns` says whether the
    /// host's resolv.conf is bound (network granted only).
    Ready {
        created: Vec<String>,
        dns: bool,
    },
    SetupFailed {
        stage: SetupStage,
        what: String,
        /// For a mount: the option string.
        options: Option<String>,
        errno: Option<i32>,
        detail: String,
    },
    /// An exec's process started (its pid inside the container).
    Started {
        pid: i32,
    },
    /// An exec's process ended: an exit code, or the signal that killed it.
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// A read is about to send this many bytes (as `stat` reported; procfs says 0).
    Size {
        size: u64,
    },
    /// The request finished after moving this many bytes.
    Done {
        bytes: u64,
    },
    Stat {
        stat: Option<FileStat>,
    },
    Facts {
        facts: BTreeMap<String, String>,
    },
    Failed {
        kind: FailKind,
        errno: Option<i32>,
        detail: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Kind::Data, 7, b"hello").unwrap();
        write_frame(&mut buf, Kind::End, 7, b"").unwrap();
        let mut r = &buf[..];
        let f = read_frame(&mut r, 1024).unwrap();
        assert_eq!(
            (f.kind, f.id, f.payload.as_slice()),
            (Kind::Data, 7, &b"hello"[..])
        );
        let f = read_frame(&mut r, 1024).unwrap();
        assert_eq!((f.kind, f.id, f.payload.len()), (Kind::End, 7, 0));
        assert!(matches!(read_frame(&mut r, 1024), Err(FrameError::Closed)));
    }

    #[test]
    fn hostile_frames_are_refused_before_allocating() {
        // A length of 4 GiB must not allocate 4 GiB.
        let mut bad = u32::MAX.to_le_bytes().to_vec();
        bad.extend_from_slice(&[0; 9]);
        assert!(matches!(
            read_frame(&mut &bad[..], MAX_FRAME_FROM_INIT),
            Err(FrameError::Malformed(_))
        ));
        // Unknown kind.
        let mut bad = 9u32.to_le_bytes().to_vec();
        bad.push(42);
        bad.extend_from_slice(&[0; 8]);
        assert!(matches!(
            read_frame(&mut &bad[..], 1024),
            Err(FrameError::Malformed(_))
        ));
        // Truncated in the middle of a frame.
        let mut buf = Vec::new();
        write_frame(&mut buf, Kind::Data, 1, b"abcdef").unwrap();
        buf.truncate(buf.len() - 2);
        assert!(matches!(
            read_frame(&mut &buf[..], 1024),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn messages_are_tagged_json() {
        let j = serde_json::to_string(&Request::ReadFile {
            path: "/etc/x".into(),
            max: Some(5),
        })
        .unwrap();
        assert_eq!(j, r#"{"op":"read_file","path":"/etc/x","max":5}"#);
        let r: Reply = serde_json::from_str(r#"{"r":"exit","code":null,"signal":9}"#).unwrap();
        assert!(matches!(
            r,
            Reply::Exit {
                code: None,
                signal: Some(9)
            }
        ));
        assert!(serde_json::from_str::<Reply>(r#"{"r":"bogus"}"#).is_err());
    }
}
