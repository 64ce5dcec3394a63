//! Unpacking layer blobs (gzip, zstd or plain, detected) into a directory, treating the
//! tar as hostile.
//!
//! Confinement is enforced by the kernel, not by string checks: every parent directory is
//! opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`
//! from a descriptor of the target, and every entry is created with a `*at` call on a
//! single name in that parent (`O_EXCL | O_NOFOLLOW` for files), so no entry can land
//! outside the target or go through a symlink, whatever it is named. Names with `..`
//! and absolute names are refused outright (a layer has no reason to carry them).
//! Hard links are made with `linkat` from a target resolved the same way, without
//! following a final symlink. Headers are bounded by the tar reader; device nodes are
//! made only when running as root (they are skipped otherwise).
//!
//! Two whiteout modes: [`WhiteoutMode::Overlay`] writes overlayfs' own format (char
//! device 0:0, `trusted.overlay.opaque="y"`) so each layer's directory stacks as a
//! `lowerdir=`; [`WhiteoutMode::Apply`] performs the deletions on a tree holding the
//! layers below (for flattening and squashing).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::compress::{Compression, decompress};
use crate::digest::{Digest, DigestReader, LimitExceeded};
use crate::tarfmt::{Header, Kind, TarError, TarReader};

/// What to do with OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// Turn them into overlayfs whiteouts: the directory becomes one `lowerdir`.
    Overlay,
    /// Delete what they name from the directory (which holds the layers below).
    Apply,
}

/// How to unpack.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    pub whiteouts: WhiteoutMode,
    /// The layer's diff_id from the image config; a mismatch fails the unpack (the caller
    /// must then discard the directory).
    pub expected_diff_id: Option<Digest>,
    /// Refuse layers whose uncompressed tar is larger than this (decompression bombs).
    pub max_uncompressed: u64,
}

impl UnpackOptions {
    pub fn new(whiteouts: WhiteoutMode) -> Self {
        UnpackOptions {
            whiteouts,
            expected_diff_id: None,
            max_uncompressed: u64::MAX,
        }
    }
}

/// What was unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    pub compression: Compression,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    pub entries: u64,
    /// Device nodes not created because kiln is not running as root.
    pub skipped_devices: u64,
}

/// Why a layer was not (completely) unpacked. After an error the target holds a partial
/// layer and must be discarded; nothing outside it was touched.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("refusing layer entry {path:?}: {reason} (the layer is corrupt or hostile)")]
    UnsafePath { path: String, reason: &'static str },
    #[error(
        "refusing layer entry {path:?}: its path goes through a symlink or a non-directory, \
         or leaves the target directory (the layer is corrupt or hostile)"
    )]
    ThroughSymlink { path: String },
    #[error("layer entry {path:?} is a hard link to {target:?}, which is not in this layer")]
    HardLinkTarget { path: String, target: String },
    #[error("the layer is not a valid tar: {0}")]
    Tar(String),
    #[error("the layer's uncompressed content {actual} does not match its diff_id {expected}")]
    DiffIdMismatch { expected: Digest, actual: Digest },
    #[error("the layer is larger than {limit} bytes uncompressed")]
    TooLarge { limit: u64 },
    #[error("{op} {path:?} in {target}: {source}")]
    Io {
        op: &'static str,
        path: String,
        target: PathBuf,
        source: io::Error,
    },
    #[error("openat2 is not available (Linux ≥ 5.6 is needed to unpack layers safely): {0}")]
    NoOpenat2(io::Error),
}

impl From<TarError> for UnpackError {
    fn from(e: TarError) -> Self {
        UnpackError::Tar(e.to_string())
    }
}

const OPAQUE: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Unpacks the layer `blob` into the existing directory `target`.
pub fn unpack_layer<R: Read>(
    blob: R,
    target: &Path,
    options: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let root = rustix::fs::open(
        target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Io {
        op: "cannot open",
        path: ".".into(),
        target: target.to_path_buf(),
        source: e.into(),
    })?;
    let (compression, raw) =
        decompress(BufReader::with_capacity(256 * 1024, blob)).map_err(|e| UnpackError::Io {
            op: "cannot read",
            path: "layer blob".into(),
            target: target.to_path_buf(),
            source: e,
        })?;
    let limit = options.max_uncompressed;
    let mut tar = TarReader::new(DigestReader::new(raw, limit));
    let mut u = Unpacker {
        root,
        target: target.to_path_buf(),
        is_root: rustix::process::geteuid().is_root(),
        mode: options.whiteouts,
        created: HashSet::new(),
        dirs: Vec::new(),
        parent_cache: None,
        entries: 0,
        skipped_devices: 0,
    };
    let too_large = LimitExceeded::is;
    loop {
        let h = match tar.next_header() {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(TarError::Io(e)) if too_large(&e) => return Err(UnpackError::TooLarge { limit }),
            Err(e) => return Err(e.into()),
        };
        u.entry(&h, &mut tar).map_err(|e| match e {
            UnpackError::Io { ref source, .. } if too_large(source) => {
                UnpackError::TooLarge { limit }
            }
            e => e,
        })?;
        u.entries += 1;
    }
    u.finish_dirs()?;
    // The digest covers the whole stream, including padding after the end marker.
    let mut rest = tar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| {
        if too_large(&e) {
            UnpackError::TooLarge { limit }
        } else {
            UnpackError::Io {
                op: "cannot read",
                path: "layer blob".into(),
                target: target.to_path_buf(),
                source: e,
            }
        }
    })?;
    let (diff_id, uncompressed_size) = rest.finish();
    if let Some(expected) = &options.expected_diff_id
        && *expected != diff_id
    {
        return Err(UnpackError::DiffIdMismatch {
            expected: expected.clone(),
            actual: diff_id,
        });
    }
    Ok(UnpackStats {
        compression,
        diff_id,
        uncompressed_size,
        entries: u.entries,
        skipped_devices: u.skipped_devices,
    })
}

/// A directory's metadata, applied after everything inside it was written (creating
/// entries changes a directory's mtime; a read-only mode would block non-root writes).
struct DirMeta {
    path: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Unpacker {
    root: OwnedFd,
    target: PathBuf,
    is_root: bool,
    mode: WhiteoutMode,
    /// Paths created by this layer (Apply mode: an opaque marker keeps them).
    created: HashSet<Vec<u8>>,
    dirs: Vec<DirMeta>,
    /// The last parent directory opened, reused while entries stay in one directory;
    /// dropped whenever anything is removed (it could be that directory).
    parent_cache: Option<(Vec<u8>, OwnedFd)>,
    entries: u64,
    skipped_devices: u64,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Splits a tar path into its components: `./` and empty components are dropped, `..`
/// and absolute paths are refused.
fn components(path: &[u8]) -> Result<Vec<&[u8]>, UnpackError> {
    if path.first() == Some(&b'/') {
        return Err(UnpackError::UnsafePath {
            path: lossy(path),
            reason: "absolute path",
        });
    }
    if path.contains(&0) {
        return Err(UnpackError::UnsafePath {
            path: lossy(path),
            reason: "NUL byte in the path",
        });
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(UnpackError::UnsafePath {
                    path: lossy(path),
                    reason: "'..' in the path",
                });
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn join(c: &[&[u8]]) -> Vec<u8> {
    c.join(&b'/')
}

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

impl Unpacker {
    fn io(&self, op: &'static str, path: &[u8], e: impl Into<io::Error>) -> UnpackError {
        let source: io::Error = e.into();
        UnpackError::Io {
            op,
            path: lossy(path),
            target: self.target.clone(),
            source,
        }
    }

    fn resolve_err(&self, path: &[u8], e: Errno) -> UnpackError {
        match e {
            Errno::LOOP | Errno::XDEV | Errno::NOTDIR => {
                UnpackError::ThroughSymlink { path: lossy(path) }
            }
            Errno::NOSYS => UnpackError::NoOpenat2(e.into()),
            e => self.io("cannot open the parent of", path, e),
        }
    }

    /// Opens the directory `dir` (components) beneath the root, creating missing
    /// directories (mode 0755) when `create` is set. Never follows a symlink.
    fn open_dir(
        &mut self,
        dir: &[&[u8]],
        create: bool,
        full: &[u8],
    ) -> Result<OwnedFd, UnpackError> {
        let key = join(dir);
        if let Some((k, fd)) = &self.parent_cache
            && *k == key
        {
            return fd.try_clone().map_err(|e| self.io("cannot open", full, e));
        }
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = if dir.is_empty() {
            self.root
                .try_clone()
                .map_err(|e| self.io("cannot open", full, e))?
        } else {
            match rustix::fs::openat2(&self.root, &key[..], flags, Mode::empty(), beneath()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    // Walk down, making what is missing: tars may omit parent entries.
                    let mut fd = self
                        .root
                        .try_clone()
                        .map_err(|e| self.io("cannot open", full, e))?;
                    for (i, c) in dir.iter().enumerate() {
                        match rustix::fs::mkdirat(&fd, *c, Mode::from_raw_mode(0o755)) {
                            Ok(()) => {
                                if self.mode == WhiteoutMode::Apply {
                                    self.created.insert(join(&dir[..=i]));
                                }
                            }
                            Err(Errno::EXIST) => {}
                            Err(e) => return Err(self.io("cannot create directory", full, e)),
                        }
                        fd = rustix::fs::openat2(&fd, *c, flags, Mode::empty(), beneath())
                            .map_err(|e| self.resolve_err(full, e))?;
                    }
                    fd
                }
                Err(e) => return Err(self.resolve_err(full, e)),
            }
        };
        let keep = fd
            .try_clone()
            .map_err(|e| self.io("cannot open", full, e))?;
        self.parent_cache = Some((key, keep));
        Ok(fd)
    }

    /// Removes whatever is at `name` in `parent` (a whole tree for a directory).
    fn remove(&mut self, parent: &OwnedFd, name: &[u8], full: &[u8]) -> Result<(), UnpackError> {
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(self.io("cannot inspect", full, e)),
            Ok(st) => {
                self.parent_cache = None;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    remove_tree(parent, name).map_err(|e| self.io("cannot remove", full, e))?;
                } else {
                    rustix::fs::unlinkat(parent, name, AtFlags::empty())
                        .map_err(|e| self.io("cannot remove", full, e))?;
                }
            }
        }
        Ok(())
    }

    fn entry(&mut self, h: &Header, data: &mut dyn Read) -> Result<(), UnpackError> {
        let comps = components(&h.path)?;
        let Some((&name, parent)) = comps.split_last() else {
            // The archive root ("./"): only a directory may name it; its metadata is the
            // target's own, which the caller owns.
            if h.kind == Kind::Dir {
                return Ok(());
            }
            return Err(UnpackError::UnsafePath {
                path: lossy(&h.path),
                reason: "a non-directory entry names the layer root",
            });
        };
        let full = join(&comps);
        if name.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(parent, name, &full);
        }
        let pfd = self.open_dir(parent, true, &full)?;
        if self.mode == WhiteoutMode::Apply {
            self.created.insert(full.clone());
        }
        match h.kind {
            Kind::Dir => {
                match rustix::fs::statat(&pfd, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                    Ok(_) => {
                        self.remove(&pfd, name, &full)?;
                        self.mkdir(&pfd, name, &full)?;
                    }
                    Err(Errno::NOENT) => self.mkdir(&pfd, name, &full)?,
                    Err(e) => return Err(self.io("cannot inspect", &full, e)),
                }
                self.dirs.push(DirMeta {
                    path: full,
                    mode: h.mode,
                    uid: h.uid,
                    gid: h.gid,
                    mtime: h.mtime,
                    xattrs: h.xattrs.clone(),
                });
                Ok(())
            }
            Kind::File => {
                self.remove(&pfd, name, &full)?;
                let fd = rustix::fs::openat(
                    &pfd,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.io("cannot create", &full, e))?;
                let mut f = File::from(fd);
                copy_exact(data, &mut f, h.size).map_err(|e| self.io("cannot write", &full, e))?;
                self.set_meta(f.as_fd(), h, &full)
            }
            Kind::Symlink => {
                self.remove(&pfd, name, &full)?;
                if h.link.is_empty() || h.link.contains(&0) {
                    return Err(UnpackError::UnsafePath {
                        path: lossy(&h.path),
                        reason: "a symlink with an empty or NUL-containing target",
                    });
                }
                // The target is stored as given: it is never followed while unpacking,
                // and inside the container it resolves against the container's root.
                rustix::fs::symlinkat(&h.link[..], &pfd, name)
                    .map_err(|e| self.io("cannot create symlink", &full, e))?;
                self.set_link_meta(&pfd, name, h, &full)
            }
            Kind::HardLink => {
                let tcomps = components(&h.link)?;
                let Some((&tname, tparent)) = tcomps.split_last() else {
                    return Err(UnpackError::HardLinkTarget {
                        path: lossy(&h.path),
                        target: lossy(&h.link),
                    });
                };
                if tcomps == comps {
                    return Ok(());
                }
                let tfull = join(&tcomps);
                let tfd = match self.open_dir(tparent, false, &tfull) {
                    Ok(fd) => fd,
                    Err(UnpackError::Io { source, .. })
                        if source.raw_os_error() == Some(Errno::NOENT.raw_os_error()) =>
                    {
                        return Err(UnpackError::HardLinkTarget {
                            path: lossy(&h.path),
                            target: lossy(&h.link),
                        });
                    }
                    Err(e) => return Err(e),
                };
                // The destination's parent may have been dropped from the cache.
                let pfd = self.open_dir(parent, true, &full)?;
                self.remove(&pfd, name, &full)?;
                match rustix::fs::linkat(&tfd, tname, &pfd, name, AtFlags::empty()) {
                    Ok(()) => Ok(()),
                    Err(Errno::NOENT) => Err(UnpackError::HardLinkTarget {
                        path: lossy(&h.path),
                        target: lossy(&h.link),
                    }),
                    Err(e) => Err(self.io("cannot create hard link", &full, e)),
                }
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let ft = match h.kind {
                    Kind::Char => FileType::CharacterDevice,
                    Kind::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if ft != FileType::Fifo && !self.is_root {
                    tracing::warn!(path = %lossy(&full), "not root: skipping a device node");
                    self.skipped_devices += 1;
                    return Ok(());
                }
                self.remove(&pfd, name, &full)?;
                let dev = rustix::fs::makedev(h.dev_major, h.dev_minor);
                rustix::fs::mknodat(&pfd, name, ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| self.io("cannot create device node", &full, e))?;
                self.set_node_meta(&pfd, name, h, &full)
            }
        }
    }

    fn mkdir(&mut self, pfd: &OwnedFd, name: &[u8], full: &[u8]) -> Result<(), UnpackError> {
        rustix::fs::mkdirat(pfd, name, Mode::from_raw_mode(0o755))
            .map_err(|e| self.io("cannot create directory", full, e))
    }

    fn whiteout(&mut self, parent: &[&[u8]], name: &[u8], full: &[u8]) -> Result<(), UnpackError> {
        if name == OPAQUE_MARKER {
            let pfd = self.open_dir(parent, true, full)?;
            return match self.mode {
                WhiteoutMode::Overlay => {
                    let dir = rustix::fs::openat(
                        &pfd,
                        ".",
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| self.io("cannot open", full, e))?;
                    rustix::fs::fsetxattr(&dir, OPAQUE, b"y", XattrFlags::empty())
                        .map_err(|e| self.io("cannot mark opaque", full, e))
                }
                WhiteoutMode::Apply => {
                    let dir = join(parent);
                    self.parent_cache = None;
                    clear_opaque(&pfd, &dir, &self.created)
                        .map_err(|e| self.io("cannot clear opaque directory", full, e))
                }
            };
        }
        if name.starts_with(b".wh..wh.") {
            // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): not content.
            return Ok(());
        }
        let real = &name[WHITEOUT_PREFIX.len()..];
        if real.is_empty() || real == b"." || real == b".." {
            return Err(UnpackError::UnsafePath {
                path: lossy(full),
                reason: "a whiteout that names no file",
            });
        }
        let real_full = [
            &join(parent)[..],
            if parent.is_empty() { b"" } else { b"/" },
            real,
        ]
        .concat();
        match self.mode {
            WhiteoutMode::Overlay => {
                let pfd = self.open_dir(parent, true, full)?;
                self.remove(&pfd, real, &real_full)?;
                rustix::fs::mknodat(
                    &pfd,
                    real,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(|e| self.io("cannot create whiteout", &real_full, e))
            }
            WhiteoutMode::Apply => {
                let pfd = match self.open_dir(parent, false, full) {
                    Ok(fd) => fd,
                    // Deleting below a directory that does not exist deletes nothing.
                    Err(UnpackError::Io { source, .. })
                        if source.raw_os_error() == Some(Errno::NOENT.raw_os_error()) =>
                    {
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                };
                self.remove(&pfd, real, &real_full)
            }
        }
    }

    /// Owner, mode, capability xattr and mtime, in that order: chown clears setuid bits
    /// and file capabilities, so they are set after it.
    fn set_meta(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        h: &Header,
        full: &[u8],
    ) -> Result<(), UnpackError> {
        if self.is_root {
            rustix::fs::fchown(fd, Some(uid(h.uid)), Some(gid(h.gid)))
                .map_err(|e| self.io("cannot chown", full, e))?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(h.mode & 0o7777))
            .map_err(|e| self.io("cannot chmod", full, e))?;
        self.set_caps(fd, &h.xattrs, full)?;
        rustix::fs::futimens(fd, &times(h.mtime)).map_err(|e| self.io("cannot set mtime", full, e))
    }

    fn set_caps(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        xattrs: &[(String, Vec<u8>)],
        full: &[u8],
    ) -> Result<(), UnpackError> {
        for (k, v) in xattrs {
            // Only file capabilities are meaningful in an image; trusted.* (overlay's own
            // bookkeeping) or security.selinux from a layer must never be applied.
            if k == "security.capability" && self.is_root {
                rustix::fs::fsetxattr(fd, k.as_str(), v, XattrFlags::empty())
                    .map_err(|e| self.io("cannot set capabilities on", full, e))?;
            }
        }
        Ok(())
    }

    fn set_link_meta(
        &self,
        pfd: &OwnedFd,
        name: &[u8],
        h: &Header,
        full: &[u8],
    ) -> Result<(), UnpackError> {
        if self.is_root {
            rustix::fs::chownat(
                pfd,
                name,
                Some(uid(h.uid)),
                Some(gid(h.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.io("cannot chown", full, e))?;
        }
        rustix::fs::utimensat(pfd, name, &times(h.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io("cannot set mtime", full, e))
    }

    /// Metadata of a device node or fifo: opening one for I/O could block or act on a
    /// device, so it is changed through its parent.
    fn set_node_meta(
        &self,
        pfd: &OwnedFd,
        name: &[u8],
        h: &Header,
        full: &[u8],
    ) -> Result<(), UnpackError> {
        if self.is_root {
            rustix::fs::chownat(
                pfd,
                name,
                Some(uid(h.uid)),
                Some(gid(h.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.io("cannot chown", full, e))?;
        }
        rustix::fs::chmodat(
            pfd,
            name,
            Mode::from_raw_mode(h.mode & 0o7777),
            AtFlags::empty(),
        )
        .map_err(|e| self.io("cannot chmod", full, e))?;
        rustix::fs::utimensat(pfd, name, &times(h.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io("cannot set mtime", full, e))
    }

    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let dirs = std::mem::take(&mut self.dirs);
        for d in dirs {
            let fd = match rustix::fs::openat2(
                &self.root,
                &d.path[..],
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                beneath(),
            ) {
                Ok(fd) => fd,
                // Removed or replaced later in the same layer.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(self.io("cannot open", &d.path, e)),
            };
            let h = Header {
                mode: d.mode,
                uid: d.uid,
                gid: d.gid,
                mtime: d.mtime,
                xattrs: d.xattrs,
                ..Header::new(d.path.clone(), Kind::Dir)
            };
            self.set_meta(fd.as_fd(), &h, &d.path)?;
        }
        Ok(())
    }
}

fn uid(v: u64) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(u32::try_from(v).unwrap_or(u32::MAX - 1))
}

fn gid(v: u64) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(u32::try_from(v).unwrap_or(u32::MAX - 1))
}

fn times(mtime: i64) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn copy_exact(from: &mut dyn Read, to: &mut File, size: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = from.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the layer ends inside a file",
            ));
        }
        to.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Removes the directory `name` in `parent` and everything in it, never following a
/// symlink (each level is opened with `O_NOFOLLOW` relative to the one above).
pub(crate) fn remove_tree(parent: &impl AsFd, name: &[u8]) -> io::Result<()> {
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    clear_dir(&dir, &|_| false)?;
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

/// Removes every entry of `dir` for which `keep(name)` is false.
fn clear_dir(dir: &OwnedFd, keep: &dyn Fn(&[u8]) -> bool) -> io::Result<()> {
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." || keep(n) {
            continue;
        }
        names.push((n.to_vec(), e.file_type()));
    }
    for (n, ft) in names {
        let is_dir = match ft {
            FileType::Directory => true,
            FileType::Unknown => {
                let st = rustix::fs::statat(dir, &n[..], AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(st.st_mode) == FileType::Directory
            }
            _ => false,
        };
        if is_dir {
            remove_tree(dir, &n)?;
        } else {
            rustix::fs::unlinkat(dir, &n[..], AtFlags::empty())?;
        }
    }
    Ok(())
}

/// Apply mode's opaque marker: hide what lower layers put in `dir` (path `rel`), keeping
/// what this layer created there (recursively).
fn clear_opaque(pfd: &OwnedFd, rel: &[u8], created: &HashSet<Vec<u8>>) -> io::Result<()> {
    let dir = rustix::fs::openat(
        pfd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let child = |n: &[u8]| -> Vec<u8> {
        if rel.is_empty() {
            n.to_vec()
        } else {
            [rel, b"/", n].concat()
        }
    };
    clear_dir(&dir, &|n| created.contains(&child(n)))?;
    // Directories this layer created may hold lower content too.
    let mut keep_dirs = Vec::new();
    for e in rustix::fs::Dir::read_from(&dir)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            let st = rustix::fs::statat(&dir, n, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                keep_dirs.push(n.to_vec());
            }
        }
    }
    for n in keep_dirs {
        let sub = rustix::fs::openat(
            &dir,
            &n[..],
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        clear_opaque(&sub, &child(&n), created)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_escapes() {
        assert_eq!(
            components(b"./a//b/./c/").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert!(components(b"/etc/x").is_err());
        assert!(components(b"a/../../x").is_err());
        assert!(components(b"..").is_err());
        assert!(components(b"./").unwrap().is_empty());
    }
}
