//! `read` and `write`: files on the host, as the project directory and the
//! directories a step is granted.
//!
//! [`Project`] is the facade: every file a script, a builder or a guest names is
//! opened through cap-std `Dir` handles rooted at a granted directory, so `..`,
//! absolute paths and symlinks that lead outside are refused by the kernel (openat2
//! RESOLVE_BENEATH) or cap-std's own path walk, never by string checks. Every open
//! goes through [`Scope::run_sync`], so it is checked and audited in one place.
//!
//! A granted directory is checked as opened, not as written: the directory the handle
//! points at must not be the host's `/` under another name (`/proc/self/root`, a
//! symlink to `/`, a bind mount of it) and must not be on procfs (whose `root`, `cwd`
//! and `fd` links lead to other processes' files). [`resolve_grant`] says where a
//! grant leads, for `kiln inspect` and `kiln validate`.

pub mod rhai;
pub mod wasm;

use std::io;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, File, OpenOptions};

use super::broker::{Denied, Scope, ScopeError};
use super::grants::Use;
use super::rule::PathGrant;
use super::spec::{CapSpec, Grammar};

pub static READ: CapSpec = CapSpec {
    key: "read",
    summary: "read files under the granted directories",
    grammar: Grammar::Paths,
    wit: &[],
    example: r#"allow: #{ read: ["files"] }"#,
};

pub static WRITE: CapSpec = CapSpec {
    key: "write",
    summary: "create and change files under the granted directories",
    grammar: Grammar::Paths,
    wit: &[],
    example: r#"allow: #{ write: ["output"] }"#,
};

pub struct Read;
pub struct Write;

impl super::Capability for Read {
    fn spec(&self) -> &'static CapSpec {
        &READ
    }
    fn register_rhai(&self, engine: &mut ::rhai::Engine) {
        rhai::register(engine);
    }
    fn wasm(&self) -> Option<&'static dyn crate::wasm::host::Adapter> {
        Some(&wasm::Preopens)
    }
}

impl super::Capability for Write {
    fn spec(&self) -> &'static CapSpec {
        &WRITE
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    /// kiln refuses this use whatever the grants say: a granted directory that is the
    /// whole file system under another name, or a path over its size limit.
    #[error("{what}: {reason}")]
    Refused { what: String, reason: String },
}

/// `~/x` as the home directory's `x` (what a `~/...` grant covers); other paths as given.
pub fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) if !home.is_empty() => {
            Path::new(&home).join(rest).to_string_lossy().into_owned()
        }
        _ => path.to_string(),
    }
}

impl FsError {
    fn io(path: &str, source: io::Error) -> Self {
        FsError::Io {
            path: path.to_string(),
            source,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, FsError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

impl From<ScopeError<FsError>> for FsError {
    fn from(e: ScopeError<FsError>) -> Self {
        match e {
            ScopeError::Denied(d) => FsError::Denied(d),
            ScopeError::Failed(f) => f,
        }
    }
}

/// The project directory, opened once at start-up. This is the only place kiln opens
/// a directory with ambient authority on behalf of scripts.
#[derive(Clone)]
pub struct Project {
    root: std::sync::Arc<Dir>,
    path: PathBuf,
}

impl Project {
    pub fn open(path: &Path) -> io::Result<Self> {
        let root = Dir::open_ambient_dir(path, ambient_authority())?;
        let path = path.canonicalize()?;
        Ok(Project {
            root: std::sync::Arc::new(root),
            path,
        })
    }

    /// The absolute path, for messages and for handing to external tools (qemu-img).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dir(&self) -> &Dir {
        &self.root
    }

    /// Opens a granted root as a `Dir`, refusing one that is the whole file system or
    /// on procfs, whatever its name.
    fn open_root(&self, root: &PathGrant) -> Result<Dir, FsError> {
        let dir = if root.is_project() {
            self.root
                .try_clone()
                .map_err(|e| FsError::io(&root.written, e))?
        } else if Path::new(&root.path).is_absolute() {
            // The script granted this host directory by name: that grant is the
            // authority to open it.
            Dir::open_ambient_dir(&root.path, ambient_authority())
                .map_err(|e| FsError::io(&root.written, e))?
        } else {
            self.root
                .open_dir(root.normalized())
                .map_err(|e| FsError::io(&root.written, e))?
        };
        check_granted_dir(&dir, root)?;
        Ok(dir)
    }

    /// Picks the granted root `path` falls under (the broker has already allowed the
    /// use), opens it (creating it for writes), and returns it with `path` relative
    /// to it. Every operation below goes through here, so all are confined the same way.
    fn granted<'a>(
        &self,
        scope: &Scope,
        cap: &'static CapSpec,
        path: &'a str,
    ) -> Result<(Dir, &'a Path), FsError> {
        let root = scope
            .grants()
            .root_for(cap, path)
            .ok_or_else(|| FsError::io(path, io::Error::other("no granted directory holds it")))?
            .clone();
        if cap == &WRITE && !root.is_project() && !Path::new(&root.path).is_absolute() {
            self.root
                .create_dir_all(root.normalized())
                .map_err(|e| FsError::io(&root.written, e))?;
        }
        let dir = self.open_root(&root)?;
        let rel = if root.is_project() {
            Path::new(path)
        } else {
            let p = path.strip_prefix("./").unwrap_or(path);
            Path::new(p)
                .strip_prefix(root.normalized())
                .unwrap_or(Path::new(p))
        };
        Ok((dir, rel))
    }

    fn read_op<T>(
        &self,
        scope: &Scope,
        path: &str,
        detail: &str,
        op: impl FnOnce(Dir, &Path) -> io::Result<T>,
    ) -> Result<T, FsError> {
        path_size(path)?;
        Ok(scope.run_sync(&Use::path(&READ, path), detail, || {
            let (root, rel) = self.granted(scope, &READ, path)?;
            op(root, rel).map_err(|e| FsError::io(path, e))
        })?)
    }

    fn write_op<T>(
        &self,
        scope: &Scope,
        path: &str,
        detail: &str,
        op: impl FnOnce(Dir, &Path) -> io::Result<T>,
    ) -> Result<T, FsError> {
        path_size(path)?;
        Ok(scope.run_sync(&Use::path(&WRITE, path), detail, || {
            let (root, rel) = self.granted(scope, &WRITE, path)?;
            op(root, rel).map_err(|e| FsError::io(path, e))
        })?)
    }

    /// Opens a file for reading if `scope` may read it.
    pub fn open_read(&self, scope: &Scope, path: &str) -> Result<File, FsError> {
        self.read_op(scope, path, "open", |root, rel| root.open(rel))
    }

    /// Opens a directory for reading (a `file` step uploading a tree).
    pub fn open_dir_read(&self, scope: &Scope, path: &str) -> Result<Dir, FsError> {
        self.read_op(scope, path, "open dir", |root, rel| {
            if rel.as_os_str().is_empty() {
                Ok(root)
            } else {
                root.open_dir(rel)
            }
        })
    }

    /// Is `path` a directory (through the same confinement as reading it)?
    pub fn is_dir(&self, scope: &Scope, path: &str) -> Result<bool, FsError> {
        self.read_op(scope, path, "stat", |root, rel| {
            if rel.as_os_str().is_empty() {
                return Ok(true);
            }
            root.metadata(rel).map(|m| m.is_dir())
        })
    }

    /// Reads a whole file (bounded) if `scope` may read it.
    pub fn read_to_vec(&self, scope: &Scope, path: &str, max: u64) -> Result<Vec<u8>, FsError> {
        use std::io::Read;
        let file = self.open_read(scope, path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size > max {
            return Err(FsError::io(
                path,
                io::Error::other(format!("{size} bytes is larger than the {max}-byte limit")),
            ));
        }
        let mut buf = Vec::new();
        file.take(max.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| FsError::io(path, e))?;
        if u64::try_from(buf.len()).unwrap_or(u64::MAX) > max {
            return Err(FsError::io(
                path,
                io::Error::other(format!("larger than the {max}-byte limit")),
            ));
        }
        Ok(buf)
    }

    /// Creates (or truncates) a file for writing if `scope` may write there, creating
    /// parent directories under the granted root.
    pub fn create(&self, scope: &Scope, path: &str) -> Result<File, FsError> {
        self.write_op(scope, path, "create", |root, rel| {
            if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                root.create_dir_all(parent)?;
            }
            let mut opts = OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            root.open_with(rel, &opts)
        })
    }

    /// Creates (if needed) and opens a directory for writing under a write grant.
    pub fn open_dir_write(&self, scope: &Scope, path: &str) -> Result<Dir, FsError> {
        self.write_op(scope, path, "open dir", |root, rel| {
            if rel.as_os_str().is_empty() {
                Ok(root)
            } else {
                root.create_dir_all(rel).and_then(|_| root.open_dir(rel))
            }
        })
    }

    /// The absolute host path of a file `scope` may read, for handing to an external
    /// tool (qemu-img). The file is opened through its grant first, so `..`, and
    /// symlinks out of the granted directory, are refused as for any other read.
    pub fn host_path_read(&self, scope: &Scope, path: &str) -> Result<PathBuf, FsError> {
        drop(self.open_read(scope, path)?);
        Ok(self.absolute(path))
    }

    /// The absolute host path for a new file under a write grant; its parent
    /// directory is created and opened through the grant first.
    pub fn host_path_write(&self, scope: &Scope, path: &str) -> Result<PathBuf, FsError> {
        self.write_op(scope, path, "create", |root, rel| {
            if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                root.create_dir_all(parent)?;
                drop(root.open_dir(parent)?);
            }
            Ok(())
        })?;
        Ok(self.absolute(path))
    }

    /// `path` on the host: absolute, or in the project.
    fn absolute(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.join(p)
        }
    }
}

/// Refuses a path over the size limit before it is matched, audited or opened.
fn path_size(path: &str) -> Result<(), FsError> {
    super::limits::path(path.len()).map_err(|e| FsError::Refused {
        what: "a path".into(),
        reason: e.to_string(),
    })
}

/// `st_dev`/`st_ino` of an open file descriptor.
fn identity(fd: std::os::fd::RawFd) -> io::Result<(u64, u64)> {
    // SAFETY: `fd` is open for the duration of the call; `st` is a plain C struct
    // that fstat fills in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.st_dev, st.st_ino))
}

/// Whether the directory behind `fd` lives on procfs.
fn on_procfs(fd: std::os::fd::RawFd) -> io::Result<bool> {
    // SAFETY: as for `identity`.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type == libc::PROC_SUPER_MAGIC)
}

/// The checks on a granted directory, made on the open handle (so a symlink swapped
/// in after the check changes nothing).
fn check_granted_dir(dir: &Dir, grant: &PathGrant) -> Result<(), FsError> {
    use std::os::fd::AsRawFd;
    let refused = |reason: String| FsError::Refused {
        what: format!("the grant {:?}", grant.written),
        reason,
    };
    let fd = dir.as_raw_fd();
    let fs_root = std::fs::metadata("/").map_err(|e| FsError::io("/", e))?;
    let (dev, ino) = identity(fd).map_err(|e| FsError::io(&grant.written, e))?;
    {
        use std::os::unix::fs::MetadataExt;
        if (dev, ino) == (fs_root.dev(), fs_root.ino()) {
            return Err(refused(
                "it leads to / (the whole file system); grant the directories you need".into(),
            ));
        }
    }
    let proc_links = || {
        refused(
            "it leads into /proc, whose links reach other processes' files and whole file systems; grant the directories you need".into(),
        )
    };
    if on_procfs(fd).map_err(|e| FsError::io(&grant.written, e))? {
        return Err(proc_links());
    }
    // Where the kernel says the handle is: a directory reached through another
    // process's `root` link (another mount namespace's `/`) reads as `/` or under
    // /proc from here.
    if let Ok(at) = std::fs::read_link(format!("/proc/self/fd/{fd}")) {
        if at == Path::new("/") {
            return Err(refused(
                "it leads to the root of a file system (`/` as another process sees it); grant the directories you need".into(),
            ));
        }
        if at.starts_with("/proc") {
            return Err(proc_links());
        }
    }
    Ok(())
}

/// Where a granted directory leads once symlinks and `~` are resolved, or why it is
/// refused (or cannot be opened). Opens, never creates.
pub fn resolve_grant(project: &Project, grant: &PathGrant) -> Result<PathBuf, FsError> {
    use std::os::fd::AsRawFd;
    let dir = project.open_root(grant)?;
    std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(|e| FsError::io(&grant.written, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{AuditLog, Broker, Grants, Holder};
    use crate::ui::Redactor;

    fn setup() -> (tempfile::TempDir, tempfile::TempDir, Project, Scope) {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.txt"), "top secret").unwrap();
        let proj = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(proj.path().join("files/sub")).unwrap();
        std::fs::write(proj.path().join("files/app.conf"), "ok").unwrap();
        std::fs::write(proj.path().join("other.txt"), "other").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.txt"),
            proj.path().join("files/escape"),
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path(), proj.path().join("files/escdir")).unwrap();
        let project = Project::open(proj.path()).unwrap();
        let broker = Broker::new("r", AuditLog::disabled(Redactor::default()));
        let mut grants = Grants::default();
        grants
            .apply_allow(
                &::rhai::Engine::new_raw()
                    .eval::<::rhai::Map>(r#"#{ read: ["files"], write: ["out"] }"#)
                    .unwrap(),
            )
            .unwrap();
        let scope = broker.scope("b", "s", Holder::Step, grants);
        (outside, proj, project, scope)
    }

    #[test]
    fn reads_inside_the_grant() {
        let (_o, _p, project, scope) = setup();
        let data = project.read_to_vec(&scope, "files/app.conf", 100).unwrap();
        assert_eq!(data, b"ok");
    }

    #[test]
    fn refuses_dotdot_escape() {
        let (_o, _p, project, scope) = setup();
        // Lexically under "files", but resolves to the project root: cap-std refuses.
        let e = project
            .read_to_vec(&scope, "files/../other.txt", 100)
            .unwrap_err();
        assert!(matches!(e, FsError::Io { .. }), "{e}");
        let e = project
            .read_to_vec(&scope, "files/../../../../etc/passwd", 100)
            .unwrap_err();
        assert!(matches!(e, FsError::Io { .. }), "{e}");
    }

    #[test]
    fn refuses_absolute_paths() {
        let (o, _p, project, scope) = setup();
        let abs = o.path().join("secret.txt");
        let e = project
            .read_to_vec(&scope, abs.to_str().unwrap(), 100)
            .unwrap_err();
        assert!(matches!(e, FsError::Denied(_)), "{e}");
    }

    #[test]
    fn refuses_symlink_escapes() {
        let (_o, _p, project, scope) = setup();
        assert!(project.read_to_vec(&scope, "files/escape", 100).is_err());
        assert!(
            project
                .read_to_vec(&scope, "files/escdir/secret.txt", 100)
                .is_err()
        );
    }

    #[test]
    fn refuses_paths_outside_the_grant() {
        let (_o, _p, project, scope) = setup();
        let e = project.read_to_vec(&scope, "other.txt", 100).unwrap_err();
        assert!(
            e.to_string().contains(r#"allow: #{ read: ["other.txt"] }"#),
            "{e}"
        );
    }

    /// `/` under other names is refused as `/` itself is.
    #[test]
    fn grants_that_alias_the_file_system_root_are_refused() {
        let (o, _p, project, _scope) = setup();
        std::os::unix::fs::symlink("/", o.path().join("to-root")).unwrap();
        let link = o.path().join("to-root").display().to_string();
        for grant in [
            "/proc/self/root",
            "/proc/self/task",
            "/proc",
            link.as_str(),
            "/dev/fd",
        ] {
            let Ok(g) = PathGrant::parse(grant, None) else {
                continue; // `..` is refused at parse time already
            };
            let e = resolve_grant(&project, &g).unwrap_err();
            assert!(matches!(e, FsError::Refused { .. }), "{grant}: {e}");
            let broker = Broker::new("r", AuditLog::disabled(Redactor::default()));
            let mut grants = Grants::default();
            grants
                .apply_allow(
                    &::rhai::Engine::new_raw()
                        .eval::<::rhai::Map>(&format!("#{{ read: [{grant:?}] }}"))
                        .unwrap(),
                )
                .unwrap();
            let scope = broker.scope("b", "s", Holder::Step, grants);
            let e = project
                .read_to_vec(&scope, &format!("{grant}/etc/hostname"), 1 << 20)
                .unwrap_err();
            assert!(matches!(e, FsError::Refused { .. }), "{grant}: {e}");
        }
        // A real directory resolves to its canonical path.
        let g = PathGrant::parse(o.path().to_str().unwrap(), None).unwrap();
        assert_eq!(
            resolve_grant(&project, &g).unwrap(),
            o.path().canonicalize().unwrap()
        );
    }

    #[test]
    fn writes_only_under_write_grant() {
        let (_o, p, project, scope) = setup();
        use std::io::Write;
        let mut f = project.create(&scope, "out/a/b.txt").unwrap();
        f.write_all(b"x").unwrap();
        assert_eq!(std::fs::read(p.path().join("out/a/b.txt")).unwrap(), b"x");
        assert!(project.create(&scope, "files/new.txt").is_err());
        assert!(project.create(&scope, "out/../files/new.txt").is_err());
        assert!(!p.path().join("files/new.txt").exists());
    }
}
