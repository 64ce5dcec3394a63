//! The VM step cache on disk: the state of a QEMU build's machine after each
//! successful step, found by the step's cache key (`runner::stepkey`).
//!
//! Layout under `<kiln cache dir>/steps/vm/`:
//!
//! - `layers/<id>.qcow2`: immutable qcow2 layers. A *disk* layer holds what one step
//!   wrote, captured with the guest's file systems frozen; a *memory* layer sits on
//!   it and holds the few writes made between thaw and the memory snapshot, plus an
//!   internal snapshot (`savevm`) with the VM's memory and device state. Each layer's
//!   backing file is the layer below it, by absolute path, down to the base image.
//! - `entries/<key>.json`: one entry per step key, naming its layer chain. An entry is
//!   written last (temp file + rename) after its layers are synced, so a crash leaves
//!   either a complete entry or none; its mtime is when it was last used.
//! - `runs/<id>.lock`: held (flock) by each running build, listing the layers it made
//!   or reads. `prune` never deletes a listed layer; a lock nobody holds is a crashed
//!   build's, and is removed.
//!
//! Layers no entry names and no build holds are leftovers (a crash between a layer and
//! its entry) and go with the next prune.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Entry files are small; anything bigger is not ours.
const MAX_ENTRY: u64 = 64 * 1024;
const ENTRY_VERSION: u32 = 1;
/// The internal snapshot name inside a memory layer.
pub const SNAPSHOT_TAG: &str = "kiln";

#[derive(Debug, thiserror::Error)]
pub enum VmCacheError {
    #[error(
        "no cache directory: set KILN_CACHE_DIR (or HOME) so kiln can keep step states, or build with --no-cache"
    )]
    NoCacheDir,
    #[error("step cache {path}: {what}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "step cache {path} is writable by other users: fix it with `chmod 700 {path}` (its layers are VM disks)"
    )]
    Insecure { path: PathBuf },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmCacheError {
    let path = path.to_path_buf();
    move |source| VmCacheError::Io { what, path, source }
}

/// A layer's name: 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LayerId(String);

impl LayerId {
    pub fn new() -> LayerId {
        LayerId(uuid::Uuid::new_v4().simple().to_string())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for LayerId {
    fn default() -> Self {
        Self::new()
    }
}

impl TryFrom<String> for LayerId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(LayerId(s))
        } else {
            Err(format!("not a layer id: {s:?}"))
        }
    }
}

impl From<LayerId> for String {
    fn from(l: LayerId) -> String {
        l.0
    }
}

/// Step keys are SHA-256 hex digests; nothing else names an entry file.
pub fn valid_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What a memory layer needs to be loaded again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryState {
    pub layer: LayerId,
    /// `query-version` of the qemu that saved it ("10.0.2").
    pub qemu_version: String,
    /// The resolved machine type ("pc-i440fx-10.0").
    pub machine: String,
    /// A digest of the VM's devices and settings (see `qemu::step_cache`); a restore
    /// into a VM started differently is refused before it is tried.
    pub devices: String,
    /// Bytes of RAM the snapshot holds (for `kiln cache list`).
    pub vm_state_bytes: u64,
}

/// One cached step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub v: u32,
    pub key: String,
    /// The previous step's key; `None` for a build's first step.
    pub parent: Option<String>,
    /// `build.source`, and the step as the UI showed it.
    pub build: String,
    pub step: usize,
    pub total: usize,
    pub describe: String,
    /// Unix seconds.
    pub created: u64,
    /// The disk layer (file systems frozen while it was taken, unless `quiesced` is false).
    pub disk: LayerId,
    pub quiesced: bool,
    pub memory: Option<MemoryState>,
    /// Every layer from the bottom up, ending with `disk` (and `memory` if any).
    pub chain: Vec<LayerId>,
    /// The file the bottom layer is backed by (the base image), if any.
    pub base: Option<PathBuf>,
    /// The guest's SSH host key when the state was saved; a restored VM must show it.
    pub host_key: Option<String>,
    pub virtual_size: u64,
}

impl Entry {
    /// The layers this entry adds to its parent's.
    pub fn own_layers(&self) -> Vec<&LayerId> {
        let mut v = vec![&self.disk];
        if let Some(m) = &self.memory {
            v.push(&m.layer);
        }
        v
    }
}

/// An entry as `kiln cache list` shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub entry: Entry,
    /// Bytes of the entry's own layers (disk + memory).
    pub bytes: u64,
    pub last_used: SystemTime,
    /// Why it cannot be used (a missing layer, a moved base image), if so.
    pub broken: Option<String>,
}

/// What `prune` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prune {
    /// Everything no running build uses.
    All,
    /// Least recently used entries until the layers left take at most this many bytes.
    MaxSize(u64),
    /// Entries not used for longer than this.
    OlderThan(std::time::Duration),
}

#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    pub removed_entries: Vec<Entry>,
    pub removed_layers: usize,
    pub freed_bytes: u64,
    /// Layers kept because a running build uses them.
    pub in_use_layers: usize,
    /// Bytes the store still takes.
    pub remaining_bytes: u64,
}

/// The store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct VmCache {
    root: PathBuf,
}

impl VmCache {
    /// The store under kiln's cache dir.
    pub fn default_location() -> Result<PathBuf, VmCacheError> {
        crate::cache_dir()
            .map(|d| d.join("steps").join("vm"))
            .ok_or(VmCacheError::NoCacheDir)
    }

    /// Opens (creating, 0700) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<VmCache, VmCacheError> {
        let root = root.into();
        for d in ["layers", "entries", "runs", "tmp"] {
            let p = root.join(d);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(io("cannot create", &p))?;
        }
        let meta = std::fs::metadata(&root).map_err(io("cannot read", &root))?;
        if meta.mode() & 0o022 != 0 {
            return Err(VmCacheError::Insecure { path: root });
        }
        Ok(VmCache { root })
    }

    /// Opens the store only if it exists (for `list`, `--dry-run`: touch nothing).
    pub fn open_existing(root: impl Into<PathBuf>) -> Option<VmCache> {
        let root = root.into();
        root.join("entries").is_dir().then_some(VmCache { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn layer_path(&self, id: &LayerId) -> PathBuf {
        self.root
            .join("layers")
            .join(format!("{}.qcow2", id.as_str()))
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.root.join("entries").join(format!("{key}.json"))
    }

    /// The entry for `key` if it is complete and usable; otherwise why not.
    pub fn lookup(&self, key: &str) -> Result<Entry, String> {
        if !valid_key(key) {
            return Err("not a step key".into());
        }
        let entry = self.read_entry(&self.entry_path(key))?;
        if entry.key != key {
            return Err(format!("{}: holds key {}", key, entry.key));
        }
        self.check(&entry)?;
        Ok(entry)
    }

    /// Whether every layer of `entry` is there, and the base image too.
    fn check(&self, entry: &Entry) -> Result<(), String> {
        for l in &entry.chain {
            if !self.layer_path(l).is_file() {
                return Err(format!("layer {} is missing", l.as_str()));
            }
        }
        if let Some(b) = &entry.base
            && !b.exists()
        {
            return Err(format!("its base image {} is gone", b.display()));
        }
        Ok(())
    }

    fn read_entry(&self, path: &Path) -> Result<Entry, String> {
        let f = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "not cached".to_string(),
            _ => e.to_string(),
        })?;
        let mut text = String::new();
        f.take(MAX_ENTRY)
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        let e: Entry = serde_json::from_str(&text).map_err(|e| format!("unreadable entry: {e}"))?;
        if e.v != ENTRY_VERSION {
            return Err(format!(
                "entry format {} (this kiln reads {ENTRY_VERSION})",
                e.v
            ));
        }
        Ok(e)
    }

    /// Marks `key` (and its ancestors, whose layers it uses) as just used.
    pub fn touch(&self, key: &str) {
        let now = SystemTime::now();
        let mut next = Some(key.to_string());
        let mut hops = 0;
        while let Some(k) = next.take() {
            hops += 1;
            if hops > 10_000 || !valid_key(&k) {
                break;
            }
            let p = self.entry_path(&k);
            let Ok(f) = File::options().write(true).open(&p) else {
                break;
            };
            let _ = f.set_modified(now);
            next = self.read_entry(&p).ok().and_then(|e| e.parent);
        }
    }

    /// Registers a running build: the layers it lists cannot be pruned while it runs.
    pub fn hold(&self) -> Result<Hold, VmCacheError> {
        let path = self
            .root
            .join("runs")
            .join(format!("{}.lock", uuid::Uuid::new_v4().simple()));
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("cannot create", &path))?;
        file.lock_shared().map_err(io("cannot lock", &path))?;
        Ok(Hold {
            path,
            file: Mutex::new(file),
        })
    }

    /// Publishes `entry`: syncs its own layers, then writes the entry atomically.
    pub fn publish(&self, entry: &Entry) -> Result<(), VmCacheError> {
        for l in entry.own_layers() {
            let p = self.layer_path(l);
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(io("cannot sync", &p))?;
        }
        sync_dir(&self.root.join("layers"));
        let text = serde_json::to_vec_pretty(entry).map_err(|e| VmCacheError::Io {
            what: "cannot encode an entry",
            path: self.entry_path(&entry.key),
            source: std::io::Error::other(e),
        })?;
        self.write_atomic(&self.entry_path(&entry.key), &text)
    }

    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), VmCacheError> {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io("cannot create", &tmp))?;
            f.write_all(bytes).map_err(io("cannot write", &tmp))?;
            f.sync_all().map_err(io("cannot sync", &tmp))?;
            std::fs::rename(&tmp, dest).map_err(io("cannot publish", dest))?;
            if let Some(d) = dest.parent() {
                sync_dir(d);
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Every entry, newest use first.
    pub fn list(&self) -> Result<Vec<Listed>, VmCacheError> {
        let dir = self.root.join("entries");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io("cannot list", &dir))? {
            let Ok(e) = e else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".json") else {
                continue;
            };
            if !valid_key(key) {
                continue;
            }
            let path = e.path();
            let last_used = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH);
            let Ok(entry) = self.read_entry(&path) else {
                continue;
            };
            let bytes = entry
                .own_layers()
                .iter()
                .map(|l| file_bytes(&self.layer_path(l)))
                .sum();
            let broken = self.check(&entry).err();
            out.push(Listed {
                entry,
                bytes,
                last_used,
                broken,
            });
        }
        out.sort_by_key(|l| std::cmp::Reverse(l.last_used));
        Ok(out)
    }

    /// Layers the running builds hold; removes the lock files of builds that are gone.
    fn held_layers(&self) -> BTreeSet<LayerId> {
        let mut held = BTreeSet::new();
        let dir = self.root.join("runs");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return held;
        };
        for e in rd.flatten() {
            let path = e.path();
            let Ok(f) = File::options().read(true).write(true).open(&path) else {
                continue;
            };
            match f.try_lock() {
                // Nobody holds it: a build that crashed. Its layers are leftovers unless
                // an entry names them.
                Ok(()) => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(_) => {
                    let mut text = String::new();
                    let _ = (&f).take(1 << 20).read_to_string(&mut text);
                    for line in text.lines() {
                        if let Ok(id) = LayerId::try_from(line.trim().to_string()) {
                            held.insert(id);
                        }
                    }
                }
            }
        }
        held
    }

    /// Removes what `rule` says, never a layer a running build holds.
    pub fn prune(&self, rule: Prune) -> Result<PruneReport, VmCacheError> {
        let held = self.held_layers();
        let mut entries: Vec<Listed> = self.list()?;
        // Oldest use first.
        entries.reverse();
        let mut report = PruneReport::default();
        let mut keep: Vec<Listed> = Vec::new();
        for l in entries {
            if l.broken.is_some() {
                self.remove_entry(&l.entry.key);
                report.removed_entries.push(l.entry);
            } else {
                keep.push(l);
            }
        }
        let layer_sizes = self.layer_sizes();
        let size_of = |keep: &[Listed]| -> u64 {
            let mut refs: BTreeSet<&LayerId> = keep.iter().flat_map(|l| &l.entry.chain).collect();
            refs.extend(held.iter());
            refs.iter()
                .map(|l| layer_sizes.get(*l).copied().unwrap_or(0))
                .sum()
        };
        match rule {
            Prune::All => {
                for l in keep.drain(..) {
                    self.remove_entry(&l.entry.key);
                    report.removed_entries.push(l.entry);
                }
            }
            Prune::MaxSize(max) => {
                while !keep.is_empty() && size_of(&keep) > max {
                    let l = keep.remove(0);
                    self.remove_entry(&l.entry.key);
                    report.removed_entries.push(l.entry);
                }
            }
            Prune::OlderThan(age) => {
                let (old, young): (Vec<Listed>, Vec<Listed>) = keep
                    .drain(..)
                    .partition(|l| l.last_used.elapsed().is_ok_and(|e| e > age));
                keep = young;
                for l in old {
                    self.remove_entry(&l.entry.key);
                    report.removed_entries.push(l.entry);
                }
            }
        }
        // Layers no remaining entry names: delete unless a running build holds them.
        let referenced: BTreeSet<&LayerId> = keep.iter().flat_map(|l| &l.entry.chain).collect();
        for (id, size) in &layer_sizes {
            if referenced.contains(id) {
                continue;
            }
            if held.contains(id) {
                report.in_use_layers += 1;
                continue;
            }
            if std::fs::remove_file(self.layer_path(id)).is_ok() {
                report.removed_layers += 1;
                report.freed_bytes += size;
            }
        }
        // Temp files of crashed writers.
        if let Ok(rd) = std::fs::read_dir(self.root.join("tmp")) {
            for e in rd.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(3600));
                if old {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        report.remaining_bytes = self.layer_sizes().values().sum();
        Ok(report)
    }

    fn remove_entry(&self, key: &str) {
        let _ = std::fs::remove_file(self.entry_path(key));
    }

    /// Every layer file (and `.part` leftover) with its size on disk.
    fn layer_sizes(&self) -> BTreeMap<LayerId, u64> {
        let mut out = BTreeMap::new();
        let Ok(rd) = std::fs::read_dir(self.root.join("layers")) else {
            return out;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name
                .strip_suffix(".qcow2")
                .or_else(|| name.strip_suffix(".qcow2.part"));
            if let Some(id) = stem.and_then(|s| LayerId::try_from(s.to_string()).ok()) {
                let bytes = e.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
                *out.entry(id).or_insert(0) += bytes;
            }
        }
        out
    }

    /// Total bytes of all layers.
    pub fn total_bytes(&self) -> u64 {
        self.layer_sizes().values().sum()
    }
}

/// A running build's claim on layers (see the module doc). Dropping it releases them.
#[derive(Debug)]
pub struct Hold {
    path: PathBuf,
    file: Mutex<File>,
}

impl Hold {
    /// Claims `id` before its file is created or read.
    pub fn add(&self, id: &LayerId) -> Result<(), VmCacheError> {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        writeln!(f, "{}", id.as_str()).map_err(io("cannot write", &self.path))
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Bytes a file takes on disk (sparse files count what is allocated).
pub fn file_bytes(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

fn sync_dir(d: &Path) {
    if let Ok(f) = File::open(d) {
        let _ = f.sync_all();
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// SHA-256 digests of big input files (base images), remembered by inode, size, mtime
/// and ctime so a 2 GiB base image is not hashed on every build. A file changed in
/// place changes its ctime, so a stale digest is never used.
pub mod digests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[derive(Serialize, Deserialize, Default)]
    struct Memo {
        files: BTreeMap<String, Remembered>,
    }

    #[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
    struct Remembered {
        dev: u64,
        ino: u64,
        size: u64,
        mtime_ns: i128,
        ctime_ns: i128,
        sha256: String,
    }

    fn stamp(m: &std::fs::Metadata) -> (u64, u64, u64, i128, i128) {
        (
            m.dev(),
            m.ino(),
            m.size(),
            i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        )
    }

    /// The SHA-256 of the open `file` (at `path`), remembered in `memo_file` unless
    /// `remember` is false (a dry run writes nothing).
    pub fn sha256(
        file: &mut File,
        path: &Path,
        memo_file: Option<&Path>,
        remember: bool,
    ) -> std::io::Result<String> {
        let meta = file.metadata()?;
        let (dev, ino, size, mtime_ns, ctime_ns) = stamp(&meta);
        let name = path.display().to_string();
        let mut memo: Memo = memo_file
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if let Some(r) = memo.files.get(&name)
            && (r.dev, r.ino, r.size, r.mtime_ns, r.ctime_ns)
                == (dev, ino, size, mtime_ns, ctime_ns)
        {
            return Ok(r.sha256.clone());
        }
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let sha = hex::encode(h.finalize());
        // Only a file that did not change while it was read is remembered.
        let after = stamp(&file.metadata()?);
        if remember
            && after == (dev, ino, size, mtime_ns, ctime_ns)
            && let Some(p) = memo_file
        {
            memo.files.insert(
                name,
                Remembered {
                    dev,
                    ino,
                    size,
                    mtime_ns,
                    ctime_ns,
                    sha256: sha.clone(),
                },
            );
            // A bounded memo: the most recent 256 files.
            while memo.files.len() > 256 {
                let Some(k) = memo.files.keys().next().cloned() else {
                    break;
                };
                memo.files.remove(&k);
            }
            if let Ok(bytes) = serde_json::to_vec(&memo) {
                let tmp = p.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
                if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, p).is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
        Ok(sha)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> String {
        format!("{:064x}", n)
    }

    fn entry(cache: &VmCache, n: u8, parent: Option<&Entry>, layer_bytes: usize) -> Entry {
        let disk = LayerId::new();
        std::fs::write(cache.layer_path(&disk), vec![1u8; layer_bytes]).unwrap();
        let mut chain = parent.map(|p| p.chain.clone()).unwrap_or_default();
        chain.push(disk.clone());
        Entry {
            v: ENTRY_VERSION,
            key: key(n),
            parent: parent.map(|p| p.key.clone()),
            build: "b.s".into(),
            step: usize::from(n),
            total: 9,
            describe: format!("step {n}"),
            created: unix_now(),
            disk,
            quiesced: true,
            memory: None,
            chain,
            base: None,
            host_key: None,
            virtual_size: 1 << 30,
        }
    }

    #[test]
    fn published_entries_are_found_and_broken_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VmCache::open(dir.path().join("vm")).unwrap();
        assert_eq!(cache.lookup(&key(1)).unwrap_err(), "not cached");
        let e1 = entry(&cache, 1, None, 4096);
        cache.publish(&e1).unwrap();
        assert_eq!(cache.lookup(&key(1)).unwrap(), e1);
        let e2 = entry(&cache, 2, Some(&e1), 4096);
        cache.publish(&e2).unwrap();
        // A lost layer below makes the entry above unusable, not wrong.
        std::fs::remove_file(cache.layer_path(&e1.disk)).unwrap();
        assert!(cache.lookup(&key(2)).unwrap_err().contains("missing"));
        assert!(cache.lookup("../etc/passwd").is_err());
        // Garbage in an entry file is a miss, not a panic.
        std::fs::write(cache.entry_path(&key(3)), "{ not json").unwrap();
        assert!(cache.lookup(&key(3)).unwrap_err().contains("unreadable"));
    }

    #[test]
    fn prune_by_size_removes_least_recently_used_and_spares_held_layers() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VmCache::open(dir.path().join("vm")).unwrap();
        let a1 = entry(&cache, 1, None, 1 << 20);
        let a2 = entry(&cache, 2, Some(&a1), 1 << 20);
        let b1 = entry(&cache, 3, None, 1 << 20);
        for e in [&a1, &a2, &b1] {
            cache.publish(e).unwrap();
        }
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(cache.entry_path(&b1.key))
            .unwrap()
            .set_modified(old)
            .unwrap();
        // An orphan layer (a crash before its entry) held by a running build stays.
        let hold = cache.hold().unwrap();
        let orphan = LayerId::new();
        hold.add(&orphan).unwrap();
        std::fs::write(cache.layer_path(&orphan), vec![0u8; 4096]).unwrap();
        let r = cache.prune(Prune::MaxSize((2 << 20) + 8192)).unwrap();
        let removed: Vec<&str> = r.removed_entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(removed, [b1.key.as_str()]);
        assert!(cache.lookup(&a2.key).is_ok());
        assert!(cache.layer_path(&orphan).exists());
        assert_eq!(r.in_use_layers, 1);
        drop(hold);
        let r = cache.prune(Prune::All).unwrap();
        assert_eq!(r.removed_entries.len(), 2);
        assert!(!cache.layer_path(&orphan).exists());
        assert_eq!(cache.total_bytes(), 0);
    }

    #[test]
    fn a_crashed_builds_lock_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VmCache::open(dir.path().join("vm")).unwrap();
        // A lock file nobody holds stands for a build killed with SIGKILL.
        let stale = cache.root().join("runs/dead.lock");
        std::fs::write(&stale, format!("{}\n", LayerId::new().as_str())).unwrap();
        let leftover = LayerId::new();
        std::fs::write(cache.layer_path(&leftover), b"x").unwrap();
        cache.prune(Prune::All).unwrap();
        assert!(!stale.exists());
        assert!(!cache.layer_path(&leftover).exists());
    }

    #[test]
    fn touch_marks_ancestors_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VmCache::open(dir.path().join("vm")).unwrap();
        let a1 = entry(&cache, 1, None, 10);
        let a2 = entry(&cache, 2, Some(&a1), 10);
        cache.publish(&a1).unwrap();
        cache.publish(&a2).unwrap();
        let old = SystemTime::now() - Duration::from_secs(7200);
        for k in [&a1.key, &a2.key] {
            File::options()
                .write(true)
                .open(cache.entry_path(k))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        cache.touch(&a2.key);
        for l in cache.list().unwrap() {
            assert!(l.last_used.elapsed().unwrap() < Duration::from_secs(600));
        }
    }

    #[test]
    fn digests_are_remembered_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("base.img");
        let memo = dir.path().join("memo.json");
        std::fs::write(&f, b"one").unwrap();
        let d1 = digests::sha256(&mut File::open(&f).unwrap(), &f, Some(&memo), true).unwrap();
        assert!(memo.exists());
        assert_eq!(
            d1,
            digests::sha256(&mut File::open(&f).unwrap(), &f, Some(&memo), true).unwrap()
        );
        std::fs::write(&f, b"two").unwrap();
        let d2 = digests::sha256(&mut File::open(&f).unwrap(), &f, Some(&memo), true).unwrap();
        assert_ne!(d1, d2);
    }
}
