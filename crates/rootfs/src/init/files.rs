//! File requests, served inside the container after `pivot_root`: every path, `..` and
//! symlink resolves within the container's root, never on the host.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;

use super::server::Shared;
use super::users;
use crate::protocol::{CHUNK, FailKind, FileKind, FileStat, Kind, Reply};

fn check_path(sh: &Shared, id: u64, path: &str) -> bool {
    if path.is_empty() || path.contains('\0') {
        sh.fail(
            id,
            FailKind::Invalid,
            None,
            format!("invalid path {path:?}"),
        );
        return false;
    }
    true
}

/// Receiving end of an upload as `Read`, counting bytes. The reader thread sends an
/// empty chunk when kiln sent `End`; a channel that closes without it was cancelled.
struct Input {
    rx: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    total: u64,
    complete: bool,
}

impl Input {
    fn new(rx: Receiver<Vec<u8>>) -> Self {
        Input {
            rx,
            buf: Vec::new(),
            pos: 0,
            total: 0,
            complete: false,
        }
    }

    /// The next chunk, `None` at the end of the upload (see `complete`).
    fn chunk(&mut self) -> Option<Vec<u8>> {
        if self.complete {
            return None;
        }
        let c = self.rx.recv().ok()?;
        if c.is_empty() {
            self.complete = true;
            return None;
        }
        self.total += c.len() as u64;
        Some(c)
    }
}

impl Read for Input {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.chunk() {
                Some(c) => {
                    self.buf = c;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Files are opened with O_NONBLOCK so that a FIFO cannot hang the request in `open`;
/// FIFOs and sockets are then refused, and anything else goes back to blocking I/O.
fn blocking_unless_fifo(f: std::fs::File) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::FileTypeExt;
    let ft = f.metadata()?.file_type();
    if ft.is_fifo() || ft.is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is a FIFO or socket, not a file",
        ));
    }
    rustix::fs::fcntl_setfl(&f, rustix::fs::OFlags::empty())?;
    Ok(f)
}

/// `cat > path` semantics: created or truncated, symlinks followed (inside the container).
/// With a mode the file is created private and gets its mode once the content is complete.
pub(super) fn write_file(
    sh: &Shared,
    id: u64,
    path: &str,
    mode: Option<u32>,
    rx: Receiver<Vec<u8>>,
) {
    if !check_path(sh, id, path) {
        return;
    }
    let mut file = match OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if mode.is_some() { 0o600 } else { 0o666 })
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .and_then(blocking_unless_fifo)
    {
        Ok(f) => f,
        Err(e) => return sh.fail_io(id, "open", &e),
    };
    let mut input = Input::new(rx);
    while let Some(chunk) = input.chunk() {
        if let Err(e) = file.write_all(&chunk) {
            return sh.fail_io(id, "write", &e);
        }
    }
    if !input.complete {
        return sh.fail(id, FailKind::Io, None, "the upload was cancelled");
    }
    if let Some(m) = mode
        && let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(m & 0o7777))
    {
        return sh.fail_io(id, "chmod", &e);
    }
    // Closed before the reply: the client may run the file next, and exec refuses a
    // file still open for writing (ETXTBSY, "Text file busy").
    drop(file);
    let _ = sh.send(id, &Reply::Done { bytes: input.total });
}

pub(super) fn read_file(sh: &Shared, id: u64, path: &str, max: Option<u64>, stop: &AtomicBool) {
    if !check_path(sh, id, path) {
        return;
    }
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .and_then(blocking_unless_fifo)
    {
        Ok(f) => f,
        Err(e) => return sh.fail_io(id, "open", &e),
    };
    let size = match file.metadata() {
        Ok(m) if m.is_dir() => {
            return sh.fail(
                id,
                FailKind::IsDirectory,
                Some(libc::EISDIR),
                "is a directory",
            );
        }
        Ok(m) => m.len(),
        Err(e) => return sh.fail_io(id, "stat", &e),
    };
    let too_large = |sh: &Shared| {
        sh.fail(
            id,
            FailKind::TooLarge,
            None,
            format!("larger than {} bytes", max.unwrap_or(0)),
        )
    };
    if max.is_some_and(|m| size > m) {
        return too_large(sh);
    }
    if sh.send(id, &Reply::Size { size }).is_err() {
        return;
    }
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        // Fill whole chunks: fewer, larger frames.
        let mut filled = 0;
        while filled < CHUNK {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return sh.fail_io(id, "read", &e),
            }
        }
        total += filled as u64;
        // procfs and growing files report one size and deliver another.
        if max.is_some_and(|m| total > m) {
            return too_large(sh);
        }
        if filled > 0 && sh.frame(Kind::Data, id, &buf[..filled]).is_err() {
            return;
        }
        if filled < CHUNK {
            break;
        }
    }
    let _ = sh.send(id, &Reply::Done { bytes: total });
}

/// Joins an archive path under `dir`, refusing absolute paths and `..`.
fn inside(dir: &Path, entry: &Path) -> Option<PathBuf> {
    let mut out = dir.to_path_buf();
    for c in entry.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Unpacks a tar stream under `dir` (created if needed): directories, regular files and
/// symlinks with their modes, owned by root like `tar --no-same-owner`. Absolute paths,
/// `..`, writes through a symlink that leads out of `dir`, hard links and device nodes are
/// refused.
pub(super) fn upload_tree(sh: &Shared, id: u64, dir: &str, rx: Receiver<Vec<u8>>) {
    if !check_path(sh, id, dir) {
        return;
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        return sh.fail_io(id, &format!("mkdir -p {dir}"), &e);
    }
    let root = match std::fs::canonicalize(dir) {
        Ok(p) => p,
        Err(e) => return sh.fail_io(id, "resolving the destination", &e),
    };
    let mut input = Input::new(rx);
    let mut archive = tar::Archive::new(&mut input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => return sh.fail_io(id, "reading the tar stream", &e),
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => return sh.fail_io(id, "reading the tar stream", &e),
        };
        let name = entry.path().map(|p| p.into_owned()).unwrap_or_default();
        let shown = name.display().to_string();
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Directory | T::Symlink | T::Continuous => {}
            other => {
                return sh.fail(
                    id,
                    FailKind::UnsafePath,
                    None,
                    format!("{shown}: entry type {other:?} is not uploaded (only files, directories and symlinks)"),
                );
            }
        }
        if inside(&root, &name).is_none() {
            return sh.fail(
                id,
                FailKind::UnsafePath,
                None,
                format!("{shown}: leaves the destination directory"),
            );
        }
        // unpack_in checks again, resolving symlinks met on the way, that the entry stays
        // under `root`; it answers false when it would not.
        match entry.unpack_in(&root) {
            Ok(true) => {}
            Ok(false) => {
                return sh.fail(
                    id,
                    FailKind::UnsafePath,
                    None,
                    format!("{shown}: leaves the destination directory"),
                );
            }
            Err(e) => {
                let text = e.to_string();
                let kind = if text.contains("outside of") {
                    FailKind::UnsafePath
                } else {
                    FailKind::from_io(&e)
                };
                return sh.fail(id, kind, e.raw_os_error(), format!("{shown}: {text}"));
            }
        }
    }
    // Whatever follows the end-of-archive blocks is drained so the count is the stream's.
    while input.chunk().is_some() {}
    if !input.complete {
        return sh.fail(id, FailKind::Io, None, "the upload was cancelled");
    }
    let _ = sh.send(id, &Reply::Done { bytes: input.total });
}

pub(super) fn stat(sh: &Shared, id: u64, path: &str) {
    if !check_path(sh, id, path) {
        return;
    }
    let stat = match std::fs::metadata(path) {
        Ok(m) => Some(FileStat {
            kind: if m.is_file() {
                FileKind::File
            } else if m.is_dir() {
                FileKind::Directory
            } else {
                FileKind::Other
            },
            size: m.len(),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: m.mtime(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return sh.fail_io(id, "stat", &e),
    };
    let _ = sh.send(id, &Reply::Stat { stat });
}

/// Strips the quotes of an os-release value (`"..."` or `'...'`, with `\` escapes).
fn unquote(v: &str) -> String {
    let v = v.trim();
    let inner = match (v.chars().next(), v.chars().last()) {
        (Some(q @ ('"' | '\'')), Some(e)) if q == e && v.len() >= 2 => &v[1..v.len() - 1],
        _ => return v.to_string(),
    };
    let mut out = String::with_capacity(inner.len());
    let mut esc = false;
    for c in inner.chars() {
        if esc {
            out.push(c);
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else {
            out.push(c);
        }
    }
    out
}

pub(super) fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_string(), unquote(v)))
        })
        .collect()
}

/// The same facts kiln's SSH machine reports, computed without a shell (so `scratch`
/// images have them too): os_id, os_version, os_name, arch, kernel, hostname, user.
pub(super) fn facts(sh: &Shared, id: u64) {
    let os = ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| {
            let f = std::fs::File::open(p).ok()?;
            let mut s = String::new();
            f.take(64 * 1024).read_to_string(&mut s).ok()?;
            Some(parse_os_release(&s))
        })
        .unwrap_or_default();
    let u = rustix::system::uname();
    let text = |c: &std::ffi::CStr| c.to_string_lossy().into_owned();
    let get = |k: &str| os.get(k).cloned().unwrap_or_default();
    let mut facts = BTreeMap::new();
    facts.insert(
        "os_id".into(),
        os.get("ID").cloned().unwrap_or_else(|| "unknown".into()),
    );
    facts.insert("os_version".into(), get("VERSION_ID"));
    facts.insert("os_name".into(), get("PRETTY_NAME"));
    facts.insert("arch".into(), text(u.machine()));
    facts.insert("kernel".into(), text(u.release()));
    facts.insert("hostname".into(), text(u.nodename()));
    facts.insert(
        "user".into(),
        users::name_of(0).unwrap_or_else(|| "root".into()),
    );
    let _ = sh.send(id, &Reply::Facts { facts });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_are_unquoted() {
        let m = parse_os_release(
            "# comment\nID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME='A \\'b\\''\n",
        );
        assert_eq!(m["ID"], "debian");
        assert_eq!(m["VERSION_ID"], "12");
        assert_eq!(m["PRETTY_NAME"], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(m["NAME"], "A 'b'");
    }

    #[test]
    fn archive_paths_stay_inside() {
        let d = Path::new("/dest");
        assert_eq!(
            inside(d, Path::new("a/./b")),
            Some(PathBuf::from("/dest/a/b"))
        );
        assert_eq!(inside(d, Path::new("../x")), None);
        assert_eq!(inside(d, Path::new("/etc/shadow")), None);
        assert_eq!(inside(d, Path::new("a/../../x")), None);
    }
}
