//! A small HTTP server for guests: serves a directory (Packer's `http_directory`) and
//! in-memory files (NoCloud `user-data`/`meta-data`) to an installer or cloud-init in
//! the VM, which reaches it at 10.0.2.2:PORT on QEMU user networking. Also builds the
//! NoCloud seed disk for guests that read cloud-init data from a disk instead.
//!
//! Only GET and HEAD, one request per connection: installers fetch a handful of small
//! files, and keeping the parser tiny keeps a hostile guest's attack surface tiny.
//! Paths are resolved through a cap-std [`Dir`], so `..`, absolute paths and symlinks
//! cannot leave the served directory.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cap_std::fs::Dir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use crate::cleanup::{CleanupId, CleanupStack};
use crate::host::image::CreatedImage;

/// The host as seen from a guest on QEMU user networking (Packer's `{{ .HTTPIP }}`).
pub const GUEST_HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

const MAX_HEAD: usize = 8192;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum HttpdError {
    #[error("cannot listen on {addr}: {source}; choose another port or range")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no free port in {min}..={max}: widen http_port_min/http_port_max")]
    NoFreePort { min: u16, max: u16 },
    #[error("invalid extra file name {0:?}: use a relative path without `..` or empty parts")]
    BadName(String),
    #[error("cannot write the NoCloud seed disk {path}: {source}")]
    Seed {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} already exists: kiln does not overwrite files; remove it or choose another path"
    )]
    Exists { path: PathBuf },
}

/// What to serve and where.
#[derive(Default)]
pub struct HttpdConfig {
    /// The directory to serve (Packer's `http_directory`); `None` serves only `files`.
    pub dir: Option<Dir>,
    /// Files held in memory, by URL path without the leading slash ("user-data").
    /// They take precedence over files of the same name in `dir`.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Address to listen on; 127.0.0.1 when `None` (QEMU user networking forwards
    /// 10.0.2.2 to the host's loopback).
    pub bind: Option<IpAddr>,
    /// Port range to pick from (Packer's `http_port_min`/`http_port_max`); any free
    /// port when `None`.
    pub port_range: Option<(u16, u16)>,
}

impl std::fmt::Debug for HttpdConfig {
    // File contents may hold secrets (passwords in user-data): names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpdConfig")
            .field("dir", &self.dir.is_some())
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("bind", &self.bind)
            .field("port_range", &self.port_range)
            .finish()
    }
}

/// A running server. Dropping it stops it.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    abort: AbortHandle,
    cleanup: CleanupId,
}

impl HttpServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// The URL a guest on user networking uses: `http://10.0.2.2:PORT`.
    pub fn guest_url(&self) -> String {
        format!("http://{GUEST_HOST_IP}:{}", self.addr.port())
    }
    pub fn cleanup_id(&self) -> CleanupId {
        self.cleanup
    }
    /// Stops serving; connections in flight are cut.
    pub fn stop(&self) {
        self.abort.abort();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

struct Content {
    dir: Option<Dir>,
    files: BTreeMap<String, Vec<u8>>,
}

/// Starts serving. The stop is pushed on `cleanup`; release it via
/// [`HttpServer::cleanup_id`] when stopping the server yourself.
pub async fn serve(config: HttpdConfig, cleanup: &CleanupStack) -> Result<HttpServer, HttpdError> {
    for name in config.files.keys() {
        if split_path(name).is_none() {
            return Err(HttpdError::BadName(name.clone()));
        }
    }
    let ip = config.bind.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let listener = bind(ip, config.port_range).await?;
    let addr = listener.local_addr().map_err(|source| HttpdError::Bind {
        addr: SocketAddr::new(ip, 0),
        source,
    })?;
    let files = config
        .files
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches('/').to_string(), v))
        .collect();
    let content = Arc::new(Content {
        dir: config.dir,
        files,
    });
    let task = tokio::spawn(accept_loop(listener, content));
    let abort = task.abort_handle();
    let undo = abort.clone();
    let cleanup = cleanup.push(format!("http server {addr}"), move || async move {
        undo.abort();
        Ok(())
    });
    tracing::info!(%addr, "http server for the guest started");
    Ok(HttpServer {
        addr,
        abort,
        cleanup,
    })
}

async fn bind(ip: IpAddr, range: Option<(u16, u16)>) -> Result<TcpListener, HttpdError> {
    let Some((min, max)) = range else {
        let addr = SocketAddr::new(ip, 0);
        return TcpListener::bind(addr)
            .await
            .map_err(|source| HttpdError::Bind { addr, source });
    };
    for port in min..=max {
        let addr = SocketAddr::new(ip, port);
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(source) => return Err(HttpdError::Bind { addr, source }),
        }
    }
    Err(HttpdError::NoFreePort { min, max })
}

async fn accept_loop(listener: TcpListener, content: Arc<Content>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let content = content.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &content).await {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, content: &Content) -> std::io::Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => return respond_status(&mut stream, 400, "Bad Request", false).await,
        Ok(Err(e)) => return Err(e),
        Err(_) => return respond_status(&mut stream, 408, "Request Timeout", false).await,
    };
    let Some((method, target)) = parse_request_line(&head) else {
        return respond_status(&mut stream, 400, "Bad Request", false).await;
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return respond_status(&mut stream, 405, "Method Not Allowed", false).await,
    };
    let Some(parts) = decode_target(target) else {
        tracing::debug!(target, "http: refused path");
        return respond_status(&mut stream, 400, "Bad Request", head_only).await;
    };
    let rel = parts.join("/");
    tracing::debug!(method, path = %rel, "http request");

    if let Some(body) = content.files.get(&rel) {
        write_head(&mut stream, 200, "OK", body.len() as u64, &rel).await?;
        if !head_only {
            stream.write_all(body).await?;
        }
        return stream.shutdown().await;
    }
    let Some(dir) = &content.dir else {
        return respond_status(&mut stream, 404, "Not Found", head_only).await;
    };
    match open_in_dir(dir, &parts) {
        Some((file, len, name)) => {
            write_head(&mut stream, 200, "OK", len, &name).await?;
            if !head_only {
                let mut file = tokio::fs::File::from_std(file.into_std());
                tokio::io::copy(&mut (&mut file).take(len), &mut stream).await?;
            }
            stream.shutdown().await
        }
        None => respond_status(&mut stream, 404, "Not Found", head_only).await,
    }
}

/// Opens `parts` under `dir` (or its index.html for a directory). Everything that is
/// not a regular file reachable inside `dir` is "not found".
fn open_in_dir(dir: &Dir, parts: &[String]) -> Option<(cap_std::fs::File, u64, String)> {
    let rel = if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    };
    let meta = dir.metadata(&rel).ok()?;
    let rel = if meta.is_dir() {
        if rel == "." {
            "index.html".to_string()
        } else {
            format!("{rel}/index.html")
        }
    } else {
        rel
    };
    let file = dir.open(&rel).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    Some((file, meta.len(), rel))
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf) {
            buf.truncate(end);
            return Ok(String::from_utf8(buf).ok());
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

fn parse_request_line(head: &str) -> Option<(&str, &str)> {
    let line = head.lines().next()?;
    let mut it = line.split_ascii_whitespace();
    let method = it.next()?;
    let target = it.next()?;
    let version = it.next()?;
    if !version.starts_with("HTTP/1.") || it.next().is_some() {
        return None;
    }
    Some((method, target))
}

/// Turns a request target into path segments, or `None` if it tries to leave the
/// root (`..`), carries NULs or backslashes, or is not origin-form.
fn decode_target(target: &str) -> Option<Vec<String>> {
    let path = target.split(['?', '#']).next()?;
    if !path.starts_with('/') {
        return None;
    }
    let decoded = percent_decode(path)?;
    split_path(&decoded)
}

fn split_path(path: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => return None,
            s if s.contains(['\0', '\\']) => return None,
            s => parts.push(s.to_string()),
        }
    }
    Some(parts)
}

/// Decodes `%XX` escapes; `None` for a malformed escape or bytes that are not UTF-8
/// (the server's request paths and the `file://` inputs of `caps::net::fetch` both refuse
/// those rather than guess).
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "txt" | "cfg" | "conf" | "ks" | "preseed" | "sh" | "yaml" | "yml" => {
            "text/plain; charset=utf-8"
        }
        "json" => "application/json",
        "xml" => "application/xml",
        _ if !name.contains('.') => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

async fn write_head(
    stream: &mut TcpStream,
    code: u16,
    reason: &str,
    len: u64,
    name: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Length: {len}\r\nContent-Type: {}\r\n\
         Connection: close\r\nServer: kiln\r\n\r\n",
        content_type(name)
    );
    stream.write_all(head.as_bytes()).await
}

async fn respond_status(
    stream: &mut TcpStream,
    code: u16,
    reason: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let body = format!("{code} {reason}\n");
    write_head(stream, code, reason, body.len() as u64, "status.txt").await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// A disk that carries cloud-init NoCloud data: a FAT file system labelled `CIDATA`
/// holding `user-data`, `meta-data` and optionally `network-config`. Attach it to the
/// VM as an extra drive. Made in Rust, so no genisoimage/mkfs is needed.
pub async fn nocloud_seed_disk(
    dest: &Path,
    user_data: &[u8],
    meta_data: &[u8],
    network_config: Option<&[u8]>,
    cleanup: &CleanupStack,
) -> Result<CreatedImage, HttpdError> {
    let dest = std::path::absolute(dest).map_err(|source| HttpdError::Seed {
        path: dest.to_path_buf(),
        source,
    })?;
    let mut files: Vec<(&'static str, Vec<u8>)> = vec![
        ("user-data", user_data.to_vec()),
        ("meta-data", meta_data.to_vec()),
    ];
    if let Some(n) = network_config {
        files.push(("network-config", n.to_vec()));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&dest)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                HttpdError::Exists { path: dest.clone() }
            } else {
                HttpdError::Seed {
                    path: dest.clone(),
                    source,
                }
            }
        })?;
    let p = dest.clone();
    let id = cleanup.push(
        format!("cloud-init seed disk {}", dest.display()),
        move || async move {
            match tokio::fs::remove_file(&p).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(anyhow::anyhow!("removing {}: {e}", p.display()))
                }
                _ => Ok(()),
            }
        },
    );
    let written = tokio::task::spawn_blocking(move || write_fat_seed(file, &files))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    if let Err(source) = written {
        cleanup.release(id);
        let _ = std::fs::remove_file(&dest);
        return Err(HttpdError::Seed { path: dest, source });
    }
    Ok(CreatedImage {
        path: dest,
        cleanup: id,
    })
}

fn write_fat_seed(mut file: std::fs::File, files: &[(&str, Vec<u8>)]) -> std::io::Result<()> {
    let payload: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    // FAT12/16 overhead is small; round up generously so metadata always fits.
    let size = (payload + (1 << 20)).div_ceil(1 << 20) * (1 << 20) + (1 << 20);
    file.set_len(size)?;
    file.seek(SeekFrom::Start(0))?;
    fatfs::format_volume(
        &mut file,
        fatfs::FormatVolumeOptions::new().volume_label(*b"CIDATA     "),
    )?;
    file.seek(SeekFrom::Start(0))?;
    {
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new())?;
        {
            let root = fs.root_dir();
            for (name, data) in files {
                let mut f = root.create_file(name)?;
                f.truncate()?;
                f.write_all(data)?;
                f.flush()?;
            }
        }
        fs.unmount()?;
    }
    file.sync_all()
}

/// Reads a file back out of a seed disk made by [`nocloud_seed_disk`] (for checks).
pub fn read_seed_file(disk: &Path, name: &str) -> std::io::Result<(String, Vec<u8>)> {
    let mut file = std::fs::File::open(disk)?;
    let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new())?;
    let label = fs.volume_label().trim_end().to_string();
    let mut data = Vec::new();
    fs.root_dir().open_file(name)?.read_to_end(&mut data)?;
    Ok((label, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_that_leave_the_root_are_refused() {
        assert_eq!(decode_target("/a/b.txt?x=1").unwrap(), vec!["a", "b.txt"]);
        assert_eq!(decode_target("/").unwrap(), Vec::<String>::new());
        assert_eq!(decode_target("/a%20b").unwrap(), vec!["a b"]);
        for bad in [
            "/../etc/passwd",
            "/a/../../x",
            "/%2e%2e/etc/passwd",
            "/a%2f..%2f..%2fx",
            "/a\\..\\x",
            "/%00",
            "http://evil/x",
            "/%zz",
        ] {
            assert!(decode_target(bad).is_none(), "{bad} accepted");
        }
    }

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_request_line("GET /x HTTP/1.1\r\nHost: a"),
            Some(("GET", "/x"))
        );
        assert_eq!(parse_request_line("GET /x"), None);
        assert_eq!(parse_request_line("GET /x SPDY/3"), None);
    }

    #[test]
    fn debug_hides_file_contents() {
        let mut c = HttpdConfig::default();
        c.files
            .insert("user-data".into(), b"password: hunter2".to_vec());
        let s = format!("{c:?}");
        assert!(s.contains("user-data") && !s.contains("hunter2"));
    }
}
