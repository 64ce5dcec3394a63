//! kiln's local OCI store, under its cache dir (`<cache>/oci/`):
//!
//! ```text
//! lock                  flock: shared while a build uses the store, exclusive to prune it
//! steps/<key>/          a cached step: meta.json, upper/ (an overlay lowerdir), layer (blob)
//! layers/<diff_id>/     a base image layer unpacked for overlayfs: meta.json, tree/
//! pulled/               an OCI layout that registry pulls write into
//! tmp/<uuid>/           one build's work (step dirs, the image it assembles); flock held
//! ```
//!
//! Entries are made in `tmp/` and renamed into place complete (meta.json included), so
//! an entry that exists is whole; a crash leaves only a `tmp/` dir whose lock nobody
//! holds, which the next build removes. Pruning (least recently used first, down to a
//! size limit) runs only when no build holds the store.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("kiln's OCI store {path}: {what}: {source}")]
pub struct StoreError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError + use<> {
    let path = path.to_path_buf();
    move |source| StoreError { what, path, source }
}

/// A layer blob as an image references it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
}

/// What a cached step left: a layer, or nothing (`layer: None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepMeta {
    pub version: u32,
    /// The step as declared (`shell (2 commands)`), for messages.
    pub created_by: String,
    pub layer: Option<LayerMeta>,
    /// Bytes the entry takes on disk (upper dir and blob), for the size limit.
    pub bytes: u64,
}

const META_VERSION: u32 = 1;
const MAX_META: u64 = 64 * 1024;

/// A cached step found in the store.
#[derive(Debug, Clone)]
pub struct StepEntry {
    pub dir: PathBuf,
    pub meta: StepMeta,
}

impl StepEntry {
    /// The step's changes in lowerdir format.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn blob(&self) -> PathBuf {
        self.dir.join("layer")
    }
}

/// An advisory lock on a file, released on drop (closing the file releases it).
struct Flock(#[allow(dead_code)] File);

impl Flock {
    fn take(path: &Path, exclusive: bool, wait: bool) -> io::Result<Option<Flock>> {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        let mut op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        if !wait {
            op |= libc::LOCK_NB;
        }
        // SAFETY: flock on a descriptor this File owns for the call's duration.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(Some(Flock(f)));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

/// The store, held (shared lock) for as long as this value lives.
pub struct Store {
    root: PathBuf,
    shared: std::sync::Mutex<Option<Flock>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

/// A step key usable as a directory name (the runner's keys are hex digests).
fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 128 && key.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

impl Store {
    /// Opens (creating) the store at `root` and holds it until dropped. Stale build
    /// directories of crashed runs are removed.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for d in ["steps", "layers", "tmp"] {
            fs::create_dir_all(root.join(d)).map_err(err("cannot create", root))?;
        }
        // Layer trees hold image files as they are; only root reads the store.
        let _ = fs::set_permissions(root, fs::Permissions::from_mode(0o700));
        let lock = root.join("lock");
        let shared = Flock::take(&lock, false, true)
            .map_err(err("cannot lock", &lock))?
            .ok_or_else(|| StoreError {
                what: "cannot lock",
                path: lock.clone(),
                source: io::Error::other("lock unavailable"),
            })?;
        let store = Store {
            root: root.to_path_buf(),
            shared: std::sync::Mutex::new(Some(shared)),
        };
        store.remove_stale_builds();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The layout pulls write into.
    pub fn pulled_dir(&self) -> PathBuf {
        self.root.join("pulled")
    }

    fn step_dir(&self, key: &str) -> PathBuf {
        self.root.join("steps").join(key)
    }

    /// Where a base layer's tree is (whether or not it is there yet).
    pub fn layer_tree(&self, diff_id_hex: &str) -> PathBuf {
        self.root.join("layers").join(diff_id_hex).join("tree")
    }

    /// Whether the base layer `diff_id_hex` is unpacked (and marks it used).
    pub fn has_layer_tree(&self, diff_id_hex: &str) -> bool {
        let meta = self.root.join("layers").join(diff_id_hex).join("meta.json");
        if meta.is_file() {
            touch(&meta);
            true
        } else {
            false
        }
    }

    /// A fresh directory in `tmp/` to unpack a layer into; [`Store::publish_layer_tree`]
    /// moves it into place.
    pub fn new_layer_work(&self) -> Result<PathBuf, StoreError> {
        let d = self
            .root
            .join("tmp")
            .join(format!("layer-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(d.join("tree")).map_err(err("cannot create", &d))?;
        Ok(d)
    }

    /// Moves an unpacked layer (`work/tree`) into place as `diff_id_hex`. If another
    /// build got there first, its copy is kept and `work` removed.
    pub fn publish_layer_tree(&self, work: &Path, diff_id_hex: &str) -> Result<(), StoreError> {
        let bytes = disk_usage(&work.join("tree"));
        write_json(
            &work.join("meta.json"),
            &serde_json::json!({ "bytes": bytes }),
        )
        .map_err(err("cannot write", work))?;
        let dest = self.root.join("layers").join(diff_id_hex);
        match fs::rename(work, &dest) {
            Ok(()) => Ok(()),
            Err(_) if dest.join("meta.json").is_file() => {
                remove_tree(work);
                Ok(())
            }
            Err(e) => {
                remove_tree(work);
                Err(err("cannot store a layer in", &dest)(e))
            }
        }
    }

    /// The cached step `key`, if there is a complete one (and marks it used).
    pub fn lookup_step(&self, key: &str) -> Option<StepEntry> {
        if !valid_key(key) {
            return None;
        }
        let dir = self.step_dir(key);
        let meta_path = dir.join("meta.json");
        let meta: StepMeta = read_json(&meta_path)?;
        if meta.version != META_VERSION {
            return None;
        }
        if meta.layer.is_some() && !(dir.join("upper").is_dir() && dir.join("layer").is_file()) {
            return None;
        }
        touch(&meta_path);
        Some(StepEntry { dir, meta })
    }

    /// Moves a finished step directory (`upper/`, `layer`) into the cache as `key`.
    /// Returns the entry, or `None` when the key is unusable or already cached (the
    /// caller keeps using its own directory then).
    pub fn publish_step(&self, key: &str, dir: &Path, mut meta: StepMeta) -> Option<StepEntry> {
        if !valid_key(key) {
            return None;
        }
        meta.version = META_VERSION;
        meta.bytes = disk_usage(dir);
        if let Err(e) = write_json(&dir.join("meta.json"), &meta) {
            tracing::warn!(dir = %dir.display(), "cannot write a cache entry: {e}");
            return None;
        }
        let dest = self.step_dir(key);
        match fs::rename(dir, &dest) {
            Ok(()) => Some(StepEntry { dir: dest, meta }),
            Err(e) => {
                tracing::debug!(key, "step not cached: {e}");
                let _ = fs::remove_file(dir.join("meta.json"));
                None
            }
        }
    }

    /// A new build directory in `tmp/`, locked while the build runs.
    pub fn new_build_dir(&self) -> Result<BuildDir, StoreError> {
        let path = self
            .root
            .join("tmp")
            .join(format!("build-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&path).map_err(err("cannot create", &path))?;
        let lock = Flock::take(&path.join("lock"), true, false)
            .map_err(err("cannot lock", &path))?
            .ok_or_else(|| StoreError {
                what: "cannot lock",
                path: path.clone(),
                source: io::Error::other("a fresh build directory is locked"),
            })?;
        Ok(BuildDir {
            path,
            _lock: Some(lock),
        })
    }

    /// Build and layer directories in `tmp/` that no running build holds.
    fn remove_stale_builds(&self) {
        let Ok(rd) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = if name.starts_with("build-") {
                matches!(Flock::take(&p.join("lock"), true, false), Ok(Some(_)))
            } else {
                // Layer unpacks are short; one older than an hour was interrupted.
                e.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age.as_secs() > 3600)
            };
            if stale {
                tracing::debug!(dir = %p.display(), "removing a stale build directory");
                remove_tree(&p);
            }
        }
    }

    /// Ends this build's hold on the store, then removes least recently used entries
    /// until the store is at most `max_bytes`; does nothing while another build holds
    /// it. Returns the bytes removed.
    pub fn release_and_prune(&self, max_bytes: u64) -> u64 {
        let root = self.root.clone();
        drop(self.shared.lock().unwrap_or_else(|p| p.into_inner()).take());
        let Ok(Some(_excl)) = Flock::take(&root.join("lock"), true, false) else {
            tracing::debug!("another build uses the OCI store; not pruning it now");
            return 0;
        };
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        for kind in ["steps", "layers"] {
            let Ok(rd) = fs::read_dir(root.join(kind)) else {
                continue;
            };
            for e in rd.flatten() {
                let meta = e.path().join("meta.json");
                let used = fs::metadata(&meta)
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                let bytes = read_json::<serde_json::Value>(&meta)
                    .and_then(|v| v.get("bytes").and_then(|b| b.as_u64()))
                    .unwrap_or_else(|| disk_usage(&e.path()));
                entries.push((used, bytes, e.path()));
            }
        }
        if let Ok(rd) = fs::read_dir(root.join("pulled/blobs/sha256")) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    let used = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    entries.push((used, m.len(), e.path()));
                }
            }
        }
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        if total <= max_bytes {
            return 0;
        }
        entries.sort_by_key(|e| e.0);
        let mut removed = 0;
        for (_, bytes, path) in entries {
            if total <= max_bytes {
                break;
            }
            if path.is_dir() {
                remove_tree(&path);
            } else {
                let _ = fs::remove_file(&path);
            }
            total = total.saturating_sub(bytes);
            removed += bytes;
        }
        tracing::info!(removed, left = total, "pruned kiln's OCI store");
        removed
    }
}

/// One build's work directory; removed with [`BuildDir::remove`] (the build's cleanup
/// does it) or by a later build once its lock is gone.
pub struct BuildDir {
    path: PathBuf,
    _lock: Option<Flock>,
}

impl std::fmt::Debug for BuildDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildDir")
            .field("path", &self.path)
            .finish()
    }
}

impl BuildDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory (everything in it belongs to this build).
    pub fn remove(&self) {
        remove_tree(&self.path);
    }
}

/// Marks an entry as used now (least-recently-used pruning reads this).
fn touch(path: &Path) {
    if let Ok(f) = File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    use std::io::Read;
    let f = File::open(path).ok()?;
    let mut v = Vec::new();
    f.take(MAX_META).read_to_end(&mut v).ok()?;
    serde_json::from_slice(&v).ok()
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(v).map_err(io::Error::other)?)?;
    f.sync_data()?;
    fs::rename(tmp, path)
}

/// Removes a tree, logging (not failing) what could not be removed: overlay work
/// directories have mode 000 subdirectories, which root removes anyway.
pub fn remove_tree(path: &Path) {
    match fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), "cannot remove: {e}"),
    }
}

/// Bytes the files under `path` take (apparent sizes; hard links counted once).
pub fn disk_usage(path: &Path) -> u64 {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>, total: &mut u64) {
        let Ok(m) = fs::symlink_metadata(p) else {
            return;
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            return;
        }
        *total += m.len();
        if m.is_dir()
            && let Ok(rd) = fs::read_dir(p)
        {
            for e in rd.flatten() {
                walk(&e.path(), seen, total);
            }
        }
    }
    let mut total = 0;
    walk(path, &mut HashSet::new(), &mut total);
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(bytes: u64) -> StepMeta {
        StepMeta {
            version: 0,
            created_by: "shell (1 commands)".into(),
            layer: None,
            bytes,
        }
    }

    #[test]
    fn steps_publish_once_and_are_found_whole() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        assert!(store.lookup_step("abc").is_none());
        let b = store.new_build_dir().unwrap();
        let d = b.path().join("step-1");
        fs::create_dir_all(d.join("upper")).unwrap();
        fs::write(d.join("upper/f"), "x").unwrap();
        let e = store.publish_step("abc", &d, meta(0)).unwrap();
        assert!(e.meta.bytes > 0);
        assert!(!d.exists());
        assert_eq!(
            store.lookup_step("abc").unwrap().meta.created_by,
            e.meta.created_by
        );
        // A second publish of the same key keeps the first entry.
        fs::create_dir_all(d.join("upper")).unwrap();
        assert!(store.publish_step("abc", &d, meta(0)).is_none());
        assert!(d.join("upper").exists());
        // Keys that are not hex are never used as paths.
        assert!(store.publish_step("../evil", &d, meta(0)).is_none());
        assert!(store.lookup_step("../evil").is_none());
    }

    #[test]
    fn stale_build_dirs_go_and_locked_ones_stay() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let live = store.new_build_dir().unwrap();
        let dead = store.new_build_dir().unwrap();
        let dead_path = dead.path().to_path_buf();
        drop(dead);
        drop(store);
        let _store = Store::open(t.path()).unwrap();
        assert!(live.path().exists());
        assert!(!dead_path.exists());
    }

    #[test]
    fn prune_removes_least_recently_used_first_and_waits_for_builds() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        for (i, key) in ["aa", "bb", "cc"].iter().enumerate() {
            let b = store.new_build_dir().unwrap();
            let d = b.path().join("s");
            fs::create_dir_all(d.join("upper")).unwrap();
            fs::write(d.join("upper/f"), vec![0u8; 10_000]).unwrap();
            store.publish_step(key, &d, meta(0)).unwrap();
            let m = t.path().join("steps").join(key).join("meta.json");
            let f = File::options().write(true).open(&m).unwrap();
            f.set_modified(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64),
            )
            .unwrap();
        }
        // "aa" is used again: now the most recent.
        let one = store.lookup_step("aa").unwrap().meta.bytes;
        // Another holder of the store blocks pruning.
        let other = Store::open(t.path()).unwrap();
        assert_eq!(store.release_and_prune(one + 100), 0);
        assert!(t.path().join("steps/bb").exists());
        let removed = other.release_and_prune(one + 100);
        assert!(removed > 0);
        assert!(!t.path().join("steps/bb").exists(), "oldest goes first");
        assert!(!t.path().join("steps/cc").exists());
        assert!(t.path().join("steps/aa").exists(), "recently used stays");
    }
}
