//! Layers from directories: an overlayfs upper directory (one build step's changes) or a
//! plain tree (a rootfs imported as a base image), streamed as a reproducible tar.
//!
//! Reproducibility rules, all applied here: entries in path order (compared component by
//! component as bytes, so a depth-first walk with each directory's names sorted), an
//! opaque marker right after its directory, numeric uid/gid with empty names, mtimes
//! clamped to the given epoch, no atime/ctime, only `security.capability` among xattrs,
//! hard links as tar hard links to the first path in that order. The layer's diff_id
//! (sha256 of the tar) and the compressed digest and size are computed while it streams.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::compress::{Compression, Compressor};
use crate::digest::{Digest, DigestWriter};
use crate::image::Descriptor;
use crate::tarfmt::{Header, Kind, TarWriter};

/// What the directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerSource {
    /// An overlayfs upper directory: character devices 0:0 (and files with
    /// `trusted.overlay.whiteout`) are deletions, directories with the opaque xattr hide
    /// what lies below them. The overlay must be mounted without `metacopy` or
    /// `redirect_dir` (their upper entries do not hold the data); those are refused.
    OverlayUpper,
    /// A plain directory tree, taken as it is (overlay xattrs are not carried).
    Tree,
}

/// How a layer is made.
#[derive(Debug, Clone, Copy)]
pub struct LayerOptions {
    pub source: LayerSource,
    /// `SOURCE_DATE_EPOCH` or a `timestamp` option: every mtime later than this is set to
    /// it. `None` keeps the files' own mtimes (whole seconds), which is not reproducible.
    pub source_date_epoch: Option<i64>,
}

/// The layer that was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// sha256 of the uncompressed tar (`rootfs.diff_ids` in the image config).
    pub diff_id: Digest,
    /// sha256 of the blob as written (the manifest's layer digest).
    pub digest: Digest,
    /// Bytes of the blob as written.
    pub size: u64,
    /// Bytes of the uncompressed tar.
    pub uncompressed_size: u64,
    pub compression: Compression,
    /// Tar entries written (whiteouts included); 0 for an empty directory.
    pub entries: u64,
}

impl LayerInfo {
    /// The manifest descriptor of this layer.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            self.compression.layer_media_type(),
            self.digest.clone(),
            self.size,
        )
    }
}

/// Why a layer could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing the layer failed: {0}")]
    Write(#[source] io::Error),
    #[error(
        "{path} is an overlayfs metacopy entry (its data is in a lower layer): mount the \
         overlay with metacopy=off so the upper directory holds whole files"
    )]
    Metacopy { path: PathBuf },
    #[error(
        "{path} is an overlayfs redirect (a renamed lower directory): mount the overlay with \
         redirect_dir=off so renames copy the directory up"
    )]
    Redirect { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
}

/// True when `dir` holds nothing: the step changed nothing and adds no layer.
pub fn upper_is_empty(dir: &Path) -> Result<bool, LayerError> {
    let read = |source| LayerError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut it = fs::read_dir(dir).map_err(read)?;
    match it.next() {
        None => Ok(true),
        Some(Ok(_)) => Ok(false),
        Some(Err(e)) => Err(read(e)),
    }
}

/// Writes the layer for `dir` to `out`, compressed by `compressor`. `out` receives large
/// writes from the compressor; a `File` or a `BufWriter` around anything is right.
pub fn write_layer(
    dir: &Path,
    options: &LayerOptions,
    compressor: &dyn Compressor,
    out: &mut dyn Write,
) -> Result<LayerInfo, LayerError> {
    let meta = fs::symlink_metadata(dir).map_err(|source| LayerError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(LayerError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let mut counted = DigestWriter::new(out);
    let (diff_id, uncompressed_size, entries) = {
        let mut comp = compressor
            .compress(&mut counted)
            .map_err(LayerError::Write)?;
        let (diff_id, uncompressed_size, entries) = {
            let diff = DigestWriter::new(&mut *comp);
            let mut walker = Walker {
                tar: TarWriter::new(BufWriter::with_capacity(128 * 1024, diff)),
                options: *options,
                links: HashMap::new(),
                entries: 0,
                root_dev: meta.dev(),
            };
            walker.dir(dir, &mut Vec::new())?;
            let entries = walker.entries;
            let buf = walker.tar.finish().map_err(LayerError::Write)?;
            let diff = buf
                .into_inner()
                .map_err(|e| LayerError::Write(e.into_error()))?;
            let (d, n, _) = diff.finish();
            (d, n, entries)
        };
        comp.finish().map_err(LayerError::Write)?;
        (diff_id, uncompressed_size, entries)
    };
    let (digest, size, _) = counted.finish();
    tracing::debug!(dir = %dir.display(), %diff_id, %digest, size, entries, "layer written");
    Ok(LayerInfo {
        diff_id,
        digest,
        size,
        uncompressed_size,
        compression: compressor.compression(),
        entries,
    })
}

struct Walker<W: Write> {
    tar: TarWriter<W>,
    options: LayerOptions,
    /// (dev, ino) of files with more than one link → the tar path written first.
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
    root_dev: u64,
}

const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];
const WHITEOUT_XATTRS: [&str; 2] = ["trusted.overlay.whiteout", "user.overlay.whiteout"];
const METACOPY_XATTRS: [&str; 2] = ["trusted.overlay.metacopy", "user.overlay.metacopy"];
const REDIRECT_XATTRS: [&str; 2] = ["trusted.overlay.redirect", "user.overlay.redirect"];

/// An xattr's value, or `None` when it is absent or the filesystem has none.
fn xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let mut buf = [0u8; 256];
    match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
        Ok(n) => Ok(Some(buf[..n].to_vec())),
        Err(e)
            if e == rustix::io::Errno::NODATA
                || e == rustix::io::Errno::OPNOTSUPP
                || e == rustix::io::Errno::RANGE =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn any_xattr(path: &Path, names: &[&str]) -> io::Result<Option<Vec<u8>>> {
    for n in names {
        if let Some(v) = xattr(path, n)? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

impl<W: Write> Walker<W> {
    fn mtime(&self, m: &fs::Metadata) -> i64 {
        let t = m.mtime();
        match self.options.source_date_epoch {
            Some(e) => t.min(e),
            None => t,
        }
        .max(0)
    }

    fn header(&self, path: Vec<u8>, kind: Kind, m: &fs::Metadata) -> Header {
        let mut h = Header::new(path, kind);
        h.mode = m.mode() & 0o7777;
        h.uid = u64::from(m.uid());
        h.gid = u64::from(m.gid());
        h.mtime = self.mtime(m);
        h
    }

    fn emit(&mut self, h: &Header, data: Option<&mut dyn io::Read>) -> Result<(), LayerError> {
        self.tar.append(h, data).map_err(LayerError::Write)?;
        self.entries += 1;
        Ok(())
    }

    fn overlay(&self) -> bool {
        self.options.source == LayerSource::OverlayUpper
    }

    /// Walks `dir` (whose tar path prefix is `rel`, empty for the root).
    fn dir(&mut self, dir: &Path, rel: &mut Vec<u8>) -> Result<(), LayerError> {
        let read = |source| LayerError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut names: Vec<Vec<u8>> = Vec::new();
        for e in fs::read_dir(dir).map_err(read)? {
            names.push(e.map_err(read)?.file_name().as_bytes().to_vec());
        }
        names.sort();
        for name in names {
            let path = dir.join(std::ffi::OsStr::from_bytes(&name));
            let len = rel.len();
            rel.extend_from_slice(&name);
            self.entry(&path, rel)?;
            rel.truncate(len);
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, rel: &mut Vec<u8>) -> Result<(), LayerError> {
        let read = |source| LayerError::Read {
            path: path.to_path_buf(),
            source,
        };
        let m = fs::symlink_metadata(path).map_err(read)?;
        let ft = m.file_type();
        let overlay = self.overlay();
        if overlay && (any_xattr(path, &REDIRECT_XATTRS).map_err(read)?).is_some() {
            return Err(LayerError::Redirect {
                path: path.to_path_buf(),
            });
        }
        if ft.is_dir() {
            let mut h = self.header([&rel[..], b"/"].concat(), Kind::Dir, &m);
            h.xattrs = self.capability(path)?;
            self.emit(&h, None)?;
            if m.dev() != self.root_dev {
                // A mount point inside the tree (e.g. /proc in a live rootfs): its
                // directory is kept, its contents belong to another filesystem.
                tracing::debug!(path = %path.display(), "not descending into another filesystem");
                return Ok(());
            }
            if overlay
                && any_xattr(path, &OPAQUE_XATTRS)
                    .map_err(read)?
                    .is_some_and(|v| v == b"y")
            {
                let mut w = self.header([&rel[..], b"/.wh..wh..opq"].concat(), Kind::File, &m);
                w.mode = 0o644;
                self.emit(&w, None)?;
            }
            rel.push(b'/');
            self.dir(path, rel)?;
            rel.pop();
            return Ok(());
        }
        if overlay && self.is_whiteout(path, &m)? {
            let (parent, name) = match rel.iter().rposition(|&c| c == b'/') {
                Some(i) => (&rel[..=i], &rel[i + 1..]),
                None => (&[][..], &rel[..]),
            };
            let mut h = self.header([parent, b".wh.", name].concat(), Kind::File, &m);
            h.mode = 0o644;
            h.uid = 0;
            h.gid = 0;
            return self.emit(&h, None);
        }
        if ft.is_symlink() {
            let target = fs::read_link(path).map_err(read)?;
            let mut h = self.header(rel.clone(), Kind::Symlink, &m);
            h.link = target.as_os_str().as_bytes().to_vec();
            return self.emit(&h, None);
        }
        if ft.is_file() {
            if overlay && any_xattr(path, &METACOPY_XATTRS).map_err(read)?.is_some() {
                return Err(LayerError::Metacopy {
                    path: path.to_path_buf(),
                });
            }
            if m.nlink() > 1 {
                let key = (m.dev(), m.ino());
                if let Some(first) = self.links.get(&key) {
                    let mut h = self.header(rel.clone(), Kind::HardLink, &m);
                    h.link = first.clone();
                    return self.emit(&h, None);
                }
                self.links.insert(key, rel.clone());
            }
            let mut h = self.header(rel.clone(), Kind::File, &m);
            h.size = m.len();
            h.xattrs = self.capability(path)?;
            let mut f = File::options()
                .read(true)
                .custom_flags(libc_o_nofollow())
                .open(path)
                .map_err(read)?;
            return self
                .tar
                .append(&h, Some(&mut f))
                .map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        LayerError::Read {
                            path: path.to_path_buf(),
                            source: e,
                        }
                    } else {
                        LayerError::Write(e)
                    }
                })
                .map(|()| self.entries += 1);
        }
        let kind = if ft.is_char_device() {
            Kind::Char
        } else if ft.is_block_device() {
            Kind::Block
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            // Sockets: tar cannot hold them and nothing can use one from an image.
            tracing::debug!(path = %path.display(), "skipping a socket");
            return Ok(());
        };
        let mut h = self.header(rel.clone(), kind, &m);
        h.dev_major = rustix::fs::major(m.rdev());
        h.dev_minor = rustix::fs::minor(m.rdev());
        self.emit(&h, None)
    }

    fn is_whiteout(&self, path: &Path, m: &fs::Metadata) -> Result<bool, LayerError> {
        if m.file_type().is_char_device() && m.rdev() == 0 {
            return Ok(true);
        }
        // Kernels ≥ 6.7 may also write whiteouts as empty files with this xattr.
        if m.file_type().is_file() && m.len() == 0 {
            return Ok(any_xattr(path, &WHITEOUT_XATTRS)
                .map_err(|source| LayerError::Read {
                    path: path.to_path_buf(),
                    source,
                })?
                .is_some());
        }
        Ok(false)
    }

    /// The only xattr carried into layers: file capabilities, which binaries such as
    /// `ping` need; everything else (SELinux labels, overlay bookkeeping) is host state.
    fn capability(&self, path: &Path) -> Result<Vec<(String, Vec<u8>)>, LayerError> {
        let v = xattr(path, "security.capability").map_err(|source| LayerError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(v.map(|v| vec![("security.capability".to_string(), v)])
            .unwrap_or_default())
    }
}

fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits().cast_signed()
}
