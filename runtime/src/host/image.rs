//! Disk images through `qemu-img`: overlays on a base image, blank disks, resizing,
//! conversion between formats, and reading an image's metadata.
//!
//! Every function that creates a file pushes its removal onto the build's cleanup
//! stack before it returns and hands back the [`CleanupId`]; the caller releases it
//! once the file has become an artifact.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::cleanup::{CleanupId, CleanupStack};

/// The `qemu-img` binary; overridable for hosts that install it elsewhere.
fn qemu_img() -> PathBuf {
    std::env::var_os("KILN_QEMU_IMG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-img"))
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "qemu-img was not found ({source}): install it with tools/qemu-setup.sh \
         (Debian package qemu-utils) or set KILN_QEMU_IMG"
    )]
    NotInstalled { source: std::io::Error },
    #[error("qemu-img {action} failed for {path}: {stderr}")]
    Failed {
        action: &'static str,
        path: PathBuf,
        stderr: String,
    },
    #[error(
        "{path} already exists: kiln does not overwrite disks; remove it or choose another output path"
    )]
    Exists { path: PathBuf },
    #[error("{path} does not exist: check the path to the image")]
    Missing { path: PathBuf },
    #[error("the overlay {dest} would be its own base image: choose another output path")]
    SameAsBase { dest: PathBuf },
    #[error("cannot shrink {path} from {from} to {to} bytes: kiln only grows disks")]
    Shrink { path: PathBuf, from: u64, to: u64 },
    #[error(
        "{format} images cannot be compressed by qemu-img: use qcow2, or compress the artifact afterwards"
    )]
    CompressionUnsupported { format: ImageFormat },
    #[error(
        "invalid size {0:?}: use a number of bytes with a unit, like \"4G\", \"512M\" or \"10240\" (MiB)"
    )]
    BadSize(String),
    #[error("unknown disk format {0:?}: use one of qcow2, raw, vmdk, vdi, vhdx")]
    BadFormat(String),
    #[error("could not read qemu-img's answer about {path}: {reason}")]
    BadInfo { path: PathBuf, reason: String },
    #[error(
        "qemu-img {action} ran out of space writing {path}: the file system holding {dir} is \
         full ({stderr}). The partial file was removed; free space there or choose an output \
         directory on a larger file system"
    )]
    NoSpace {
        action: &'static str,
        path: PathBuf,
        dir: PathBuf,
        stderr: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Disk formats kiln reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Qcow2,
    Raw,
    Vmdk,
    Vdi,
    /// Hyper-V's format; qemu-img calls it `vhdx`.
    Vhdx,
}

impl ImageFormat {
    /// The name qemu-img uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vdi => "vdi",
            ImageFormat::Vhdx => "vhdx",
        }
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ImageFormat {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, ImageError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "qcow2" => ImageFormat::Qcow2,
            "raw" | "img" => ImageFormat::Raw,
            "vmdk" => ImageFormat::Vmdk,
            "vdi" => ImageFormat::Vdi,
            "vhdx" => ImageFormat::Vhdx,
            _ => return Err(ImageError::BadFormat(s.to_string())),
        })
    }
}

/// Compression of a converted qcow2 (qemu-img `-c`). Reading a compressed qcow2 is
/// transparent to guests; writes after that are stored uncompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageCompression {
    #[default]
    None,
    /// qcow2's historical default, readable by every qemu.
    Zlib,
    /// Faster and smaller; needs qemu >= 5.1 to read.
    Zstd,
}

/// A file created by one of these functions, with its cleanup-stack entry.
#[derive(Debug, Clone)]
pub struct CreatedImage {
    pub path: PathBuf,
    /// Release this once the file is an artifact; until then an unwind deletes it.
    pub cleanup: CleanupId,
}

/// What `qemu-img info` says about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: String,
    pub virtual_size: u64,
    /// Bytes allocated on the host file system.
    pub actual_size: Option<u64>,
    /// The backing file as recorded in the image (absolute for kiln's overlays).
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub cluster_size: Option<u64>,
    /// qcow2 only: "zlib" or "zstd".
    pub compression_type: Option<String>,
    pub dirty: bool,
}

#[derive(Deserialize)]
struct RawInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "actual-size")]
    actual_size: Option<u64>,
    #[serde(rename = "backing-filename")]
    backing_filename: Option<String>,
    #[serde(rename = "full-backing-filename")]
    full_backing_filename: Option<String>,
    #[serde(rename = "backing-filename-format")]
    backing_filename_format: Option<String>,
    #[serde(rename = "cluster-size")]
    cluster_size: Option<u64>,
    #[serde(rename = "dirty-flag", default)]
    dirty_flag: bool,
    #[serde(rename = "format-specific")]
    format_specific: Option<RawFormatSpecific>,
}

#[derive(Deserialize)]
struct RawFormatSpecific {
    data: Option<RawFormatData>,
}

#[derive(Deserialize)]
struct RawFormatData {
    #[serde(rename = "compression-type")]
    compression_type: Option<String>,
}

/// Parses the JSON of `qemu-img info --output=json` (a single image, not a chain).
pub fn parse_info(path: &Path, json: &str) -> Result<ImageInfo, ImageError> {
    let raw: RawInfo = serde_json::from_str(json).map_err(|e| ImageError::BadInfo {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(ImageInfo {
        format: raw.format,
        virtual_size: raw.virtual_size,
        actual_size: raw.actual_size,
        backing_file: raw.full_backing_filename.or(raw.backing_filename),
        backing_format: raw.backing_filename_format,
        cluster_size: raw.cluster_size,
        compression_type: raw
            .format_specific
            .and_then(|f| f.data)
            .and_then(|d| d.compression_type),
        dirty: raw.dirty_flag,
    })
}

/// Parses a disk size the way a Packer user writes it: "4G", "512M", "1.5T", "1048576K",
/// "2GiB"; a bare number is MiB (Packer's `disk_size` convention), "123B" is bytes.
pub fn parse_size(s: &str) -> Result<u64, ImageError> {
    let bad = || ImageError::BadSize(s.to_string());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1 << 20,
        "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes <= 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    // In range and positive, checked above.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bytes.round() as u64)
}

/// Reads an image's metadata. Never writes to it (`-U` is not used, so a running VM's
/// lock is respected: qemu-img refuses rather than read a disk mid-write).
pub async fn info(path: &Path) -> Result<ImageInfo, ImageError> {
    if !path.exists() {
        return Err(ImageError::Missing {
            path: path.to_path_buf(),
        });
    }
    let out = run(
        "info",
        path,
        Command::new(qemu_img())
            .arg("info")
            .arg("--output=json")
            .arg(path),
    )
    .await?;
    parse_info(path, &out)
}

/// Creates a qcow2 overlay at `dest` whose backing file is `base` (recorded as an
/// absolute path), so the VM writes only to `dest` and the base stays untouched.
/// `size` grows the overlay's virtual disk beyond the base's.
pub async fn create_overlay(
    base: &Path,
    dest: &Path,
    size: Option<u64>,
    cleanup: &CleanupStack,
) -> Result<CreatedImage, ImageError> {
    let base = std::fs::canonicalize(base).map_err(|_| ImageError::Missing {
        path: base.to_path_buf(),
    })?;
    let dest = absolute(dest)?;
    if dest == base {
        return Err(ImageError::SameAsBase { dest });
    }
    ensure_absent(&dest)?;
    let base_info = info(&base).await?;
    if let Some(size) = size
        && size < base_info.virtual_size
    {
        return Err(ImageError::Shrink {
            path: dest,
            from: base_info.virtual_size,
            to: size,
        });
    }
    let mut cmd = Command::new(qemu_img());
    cmd.args(["create", "-q", "-f", "qcow2", "-F"])
        .arg(&base_info.format)
        .arg("-b")
        .arg(&base)
        .arg(&dest);
    if let Some(size) = size {
        cmd.arg(size.to_string());
    }
    let created = run_creating("create overlay", &dest, &mut cmd, cleanup).await?;
    tracing::debug!(base = %base.display(), overlay = %dest.display(), "overlay created");
    Ok(created)
}

/// Creates an empty disk of `size` bytes.
pub async fn create_blank(
    dest: &Path,
    size: u64,
    format: ImageFormat,
    cleanup: &CleanupStack,
) -> Result<CreatedImage, ImageError> {
    let dest = absolute(dest)?;
    ensure_absent(&dest)?;
    let mut cmd = Command::new(qemu_img());
    cmd.args(["create", "-q", "-f", format.as_str()])
        .arg(&dest)
        .arg(size.to_string());
    run_creating("create", &dest, &mut cmd, cleanup).await
}

/// Grows the virtual disk of `path` to `size` bytes (a no-op if it already has that
/// size). The partition and file system inside are the guest's business.
pub async fn resize(path: &Path, size: u64) -> Result<(), ImageError> {
    let current = info(path).await?;
    if size < current.virtual_size {
        return Err(ImageError::Shrink {
            path: path.to_path_buf(),
            from: current.virtual_size,
            to: size,
        });
    }
    if size == current.virtual_size {
        return Ok(());
    }
    run(
        "resize",
        path,
        Command::new(qemu_img())
            .args(["resize", "-q", "-f"])
            .arg(&current.format)
            .arg(path)
            .arg(size.to_string()),
    )
    .await?;
    Ok(())
}

/// Converts `src` (flattening any backing chain) into a new image at `dest`.
/// `progress` is called with the percentage done, 0..=100.
pub async fn convert(
    src: &Path,
    dest: &Path,
    format: ImageFormat,
    compression: ImageCompression,
    cleanup: &CleanupStack,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<CreatedImage, ImageError> {
    let src_info = info(src).await?;
    let dest = absolute(dest)?;
    ensure_absent(&dest)?;
    if compression != ImageCompression::None && format != ImageFormat::Qcow2 {
        return Err(ImageError::CompressionUnsupported { format });
    }
    let mut cmd = Command::new(qemu_img());
    cmd.args(["convert", "-p", "-m", "8", "-f"])
        .arg(&src_info.format)
        .args(["-O", format.as_str()]);
    if matches!(format, ImageFormat::Qcow2 | ImageFormat::Raw) {
        // Out-of-order writes let the 8 coroutines overlap; only stream-like targets
        // (streamOptimized vmdk, vdi, vhdx) need them in order.
        cmd.arg("-W");
    }
    match compression {
        ImageCompression::None => {}
        ImageCompression::Zlib => {
            cmd.args(["-c", "-o", "compression_type=zlib"]);
        }
        ImageCompression::Zstd => {
            cmd.args(["-c", "-o", "compression_type=zstd"]);
        }
    }
    if format == ImageFormat::Vmdk {
        // The format VMware, VirtualBox and OVF tools all import.
        cmd.args(["-o", "subformat=streamOptimized"]);
    }
    cmd.arg(src).arg(&dest);
    // Untranslated messages, so a full disk is recognised (and reported as one).
    cmd.env("LC_ALL", "C");

    // The undo goes on before the process starts: a half-written file is removed too.
    let id = push_remove(cleanup, &dest, "converted disk");
    let result = run_with_progress(&mut cmd, progress).await;
    match result {
        Ok(()) => Ok(CreatedImage {
            path: dest,
            cleanup: id,
        }),
        Err(stderr) => {
            remove_now(cleanup, id, &dest);
            Err(classify(stderr, "convert", &dest))
        }
    }
}

fn absolute(p: &Path) -> Result<PathBuf, ImageError> {
    std::path::absolute(p).map_err(|source| ImageError::Io {
        what: "cannot resolve",
        path: p.to_path_buf(),
        source,
    })
}

fn ensure_absent(dest: &Path) -> Result<(), ImageError> {
    match std::fs::symlink_metadata(dest) {
        Ok(_) => Err(ImageError::Exists {
            path: dest.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ImageError::Io {
            what: "cannot check",
            path: dest.to_path_buf(),
            source,
        }),
    }
}

/// Pushes the removal of the file at `path` (gone already is fine), listed as
/// "`what` PATH".
pub(crate) fn push_remove(cleanup: &CleanupStack, path: &Path, what: &str) -> CleanupId {
    let p = path.to_path_buf();
    cleanup.push(format!("{what} {}", path.display()), move || async move {
        match tokio::fs::remove_file(&p).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow::anyhow!("removing {}: {e}", p.display())),
        }
    })
}

fn remove_now(cleanup: &CleanupStack, id: CleanupId, path: &Path) {
    cleanup.release(id);
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not remove a failed image");
    }
}

async fn run_creating(
    action: &'static str,
    dest: &Path,
    cmd: &mut Command,
    cleanup: &CleanupStack,
) -> Result<CreatedImage, ImageError> {
    let id = push_remove(cleanup, dest, "disk");
    match run(action, dest, cmd).await {
        Ok(_) => Ok(CreatedImage {
            path: dest.to_path_buf(),
            cleanup: id,
        }),
        Err(e) => {
            remove_now(cleanup, id, dest);
            Err(e)
        }
    }
}

/// Runs qemu-img to completion and returns its stdout.
async fn run(action: &'static str, path: &Path, cmd: &mut Command) -> Result<String, ImageError> {
    tracing::debug!(?cmd, "qemu-img");
    let out = cmd
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(spawn_error)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(classify(
            String::from_utf8_lossy(&out.stderr).into_owned(),
            action,
            path,
        ))
    }
}

fn spawn_error(e: std::io::Error) -> ImageError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ImageError::NotInstalled { source: e }
    } else {
        ImageError::Io {
            what: "cannot run",
            path: qemu_img(),
            source: e,
        }
    }
}

fn classify(stderr: String, action: &'static str, path: &Path) -> ImageError {
    let stderr = stderr.trim();
    if stderr.contains("No space left on device") {
        return ImageError::NoSpace {
            action,
            path: path.to_path_buf(),
            dir: path.parent().unwrap_or(path).to_path_buf(),
            stderr: stderr.to_string(),
        };
    }
    ImageError::Failed {
        action,
        path: path.to_path_buf(),
        stderr: if stderr.is_empty() {
            "(no message)".into()
        } else {
            stderr.to_string()
        },
    }
}

/// Runs `qemu-img convert -p`, turning its "(12.34/100%)" lines into `progress` calls.
/// On failure returns stderr.
async fn run_with_progress(
    cmd: &mut Command,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), String> {
    tracing::debug!(?cmd, "qemu-img");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| spawn_error(e).to_string())?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let err_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let mut buf = [0u8; 256];
    let mut line = Vec::new();
    let mut last = None;
    loop {
        let n = stdout.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if b == b'\r' || b == b'\n' {
                if let Some(p) = parse_progress(&String::from_utf8_lossy(&line))
                    && last != Some(p)
                {
                    last = Some(p);
                    progress(p);
                }
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    let err = err_task.await.unwrap_or_default();
    if status.success() {
        if last != Some(100) {
            progress(100);
        }
        Ok(())
    } else {
        Err(err)
    }
}

fn parse_progress(line: &str) -> Option<u64> {
    let inner = line.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
    let pct: f64 = inner.trim().parse().ok()?;
    // Clamped to 0..=100 first.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some(pct.clamp(0.0, 100.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_packer() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("10240").unwrap(), 10240 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("4096B").unwrap(), 4096);
        for bad in ["", "G", "-1G", "4X", "0"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn formats_round_trip() {
        for f in [
            ImageFormat::Qcow2,
            ImageFormat::Raw,
            ImageFormat::Vmdk,
            ImageFormat::Vdi,
            ImageFormat::Vhdx,
        ] {
            assert_eq!(f.as_str().parse::<ImageFormat>().unwrap(), f);
        }
        assert!("vhd".parse::<ImageFormat>().is_err());
    }

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress("    (12.34/100%)"), Some(12));
        assert_eq!(parse_progress("(100.00/100%)"), Some(100));
        assert_eq!(parse_progress("garbage"), None);
    }

    #[test]
    fn info_json_with_backing_and_zstd() {
        let json = r#"{
            "virtual-size": 4294967296, "filename": "/o/x.qcow2", "cluster-size": 65536,
            "format": "qcow2", "actual-size": 200704,
            "format-specific": {"type": "qcow2", "data": {"compat": "1.1",
                "compression-type": "zstd", "lazy-refcounts": false}},
            "full-backing-filename": "/b/base.qcow2", "backing-filename": "/b/base.qcow2",
            "backing-filename-format": "qcow2", "dirty-flag": false
        }"#;
        let i = parse_info(Path::new("/o/x.qcow2"), json).unwrap();
        assert_eq!(i.format, "qcow2");
        assert_eq!(i.virtual_size, 4 << 30);
        assert_eq!(i.backing_file.as_deref(), Some("/b/base.qcow2"));
        assert_eq!(i.compression_type.as_deref(), Some("zstd"));
        assert!(parse_info(Path::new("x"), "{").is_err());
    }
}
