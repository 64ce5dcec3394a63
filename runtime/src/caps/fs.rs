//! The project directory as a capability: every file a script names is opened through
//! cap-std `Dir` handles rooted at a granted directory, so `..`, absolute paths and
//! symlinks that lead outside are refused by the kernel (openat2 RESOLVE_BENEATH) or
//! cap-std's own path walk, never by string checks.

use std::io;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, File, OpenOptions};

use super::broker::{Denied, Scope};
use super::grants::Capability;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

impl FsError {
    fn io(path: &str, source: io::Error) -> Self {
        FsError::Io {
            path: path.to_string(),
            source,
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

    /// Opens the granted root `root` ("." = the project itself) as a `Dir`.
    fn open_root(&self, root: &str) -> Result<Dir, FsError> {
        if root == "." || root == "./" {
            return self.root.try_clone().map_err(|e| FsError::io(root, e));
        }
        if Path::new(root).is_absolute() {
            // The script granted this host directory by name: that grant is the
            // authority to open it.
            return Dir::open_ambient_dir(root, ambient_authority())
                .map_err(|e| FsError::io(root, e));
        }
        self.root.open_dir(root).map_err(|e| FsError::io(root, e))
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
        let parent = Path::new(path)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| ".".into());
        let cap = Capability::FsWrite(path.to_string());
        scope.check(&cap, "")?;
        if parent != "." {
            drop(self.open_dir_write(scope, &parent)?);
        }
        scope.record(&cap, "create", "ok", 0.0);
        Ok(self.absolute(path))
    }

    fn absolute(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.join(p)
        }
    }

    /// Splits `path` into (granted root, path relative to it). The component match
    /// only selects the root; cap-std then refuses any escape from it.
    fn locate<'a>(root: &str, path: &'a str) -> &'a Path {
        let p = Path::new(path);
        if root == "." {
            return p;
        }
        let r = root
            .strip_prefix("./")
            .unwrap_or(root)
            .trim_end_matches('/');
        p.strip_prefix(r).unwrap_or(p)
    }

    /// Checks `cap` for `path`, opens the granted root it falls under (creating it
    /// for writes), and returns that root with `path` relative to it. Every file
    /// operation below goes through here, so all of them are confined the same way.
    fn granted<'a>(
        &self,
        scope: &Scope,
        cap: &Capability,
        path: &'a str,
    ) -> Result<(Dir, &'a Path), FsError> {
        scope.check(cap, "")?;
        let root_name = match cap {
            Capability::FsWrite(_) => {
                let root = scope.grants().write_root_for(path).unwrap_or(".");
                if !Path::new(root).is_absolute() {
                    self.root
                        .create_dir_all(root)
                        .map_err(|e| FsError::io(root, e))?;
                }
                root
            }
            _ => scope.grants().read_root_for(path).unwrap_or("."),
        };
        let root = self.open_root(root_name)?;
        Ok((root, Self::locate(root_name, path)))
    }

    /// Opens a file for reading if `scope` may read it.
    pub fn open_read(&self, scope: &Scope, path: &str) -> Result<File, FsError> {
        let cap = Capability::FsRead(path.to_string());
        let (root, rel) = self.granted(scope, &cap, path)?;
        let result = root.open(rel).map_err(|e| FsError::io(path, e));
        scope.record(&cap, "open", outcome(&result), 0.0);
        result
    }

    /// Opens a directory for reading (a `file` step uploading a tree).
    pub fn open_dir_read(&self, scope: &Scope, path: &str) -> Result<Dir, FsError> {
        let cap = Capability::FsRead(path.to_string());
        let (root, rel) = self.granted(scope, &cap, path)?;
        let result = if rel.as_os_str().is_empty() {
            Ok(root)
        } else {
            root.open_dir(rel).map_err(|e| FsError::io(path, e))
        };
        scope.record(&cap, "open dir", outcome(&result), 0.0);
        result
    }

    /// Is `path` a directory (through the same confinement as reading it)?
    pub fn is_dir(&self, scope: &Scope, path: &str) -> Result<bool, FsError> {
        let cap = Capability::FsRead(path.to_string());
        let (root, rel) = self.granted(scope, &cap, path)?;
        if rel.as_os_str().is_empty() {
            return Ok(true);
        }
        root.metadata(rel)
            .map(|m| m.is_dir())
            .map_err(|e| FsError::io(path, e))
    }

    /// Creates (or truncates) a file for writing if `scope` may write there, creating
    /// parent directories under the granted root.
    pub fn create(&self, scope: &Scope, path: &str) -> Result<File, FsError> {
        let cap = Capability::FsWrite(path.to_string());
        let (root, rel) = self.granted(scope, &cap, path)?;
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            root.create_dir_all(parent)
                .map_err(|e| FsError::io(path, e))?;
        }
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        let result = root.open_with(rel, &opts).map_err(|e| FsError::io(path, e));
        scope.record(&cap, "create", outcome(&result), 0.0);
        result
    }

    /// Creates (if needed) and opens a directory for writing under a write grant.
    pub fn open_dir_write(&self, scope: &Scope, path: &str) -> Result<Dir, FsError> {
        let cap = Capability::FsWrite(path.to_string());
        let (root, rel) = self.granted(scope, &cap, path)?;
        let result = if rel.as_os_str().is_empty() {
            Ok(root)
        } else {
            root.create_dir_all(rel)
                .and_then(|_| root.open_dir(rel))
                .map_err(|e| FsError::io(path, e))
        };
        scope.record(&cap, "open dir", outcome(&result), 0.0);
        result
    }

    /// Reads a whole file (bounded) if `scope` may read it.
    pub fn read_to_vec(&self, scope: &Scope, path: &str, max: u64) -> Result<Vec<u8>, FsError> {
        use std::io::Read;
        let file = self.open_read(scope, path)?;
        let mut buf = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| FsError::io(path, e))?;
        if buf.len() as u64 > max {
            return Err(FsError::io(
                path,
                io::Error::other(format!("larger than the {max}-byte limit")),
            ));
        }
        Ok(buf)
    }
}

fn outcome<T>(r: &Result<T, FsError>) -> &'static str {
    if r.is_ok() { "ok" } else { "error" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{AuditLog, Broker, Grants};
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
        let grants = Grants {
            read: vec!["files".into()],
            write: vec!["out".into()],
            ..Default::default()
        };
        let scope = broker.scope("b", "s", grants);
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
