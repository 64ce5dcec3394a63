//! The shared download cache: one flat directory, entries keyed by URL and checksum.
//!
//! Layout for a key `K` (32 hex characters of SHA-256 over the URL identity and checksum):
//!
//! * `K.lock`: the flock file (see `lock`).
//! * `K-<name>`: the verified content, named after the URL's file name so tools that look
//!   at extensions still work.
//! * `K.json`: the marker that makes the entry valid: URL, checksum, size, inode and mtime
//!   of the content file, created / last used.
//! * `K.part` and `K.part.json`: a partial download and what is needed to resume it.
//!
//! Invariants: content appears under its final name only by `rename` after the checksum
//! matched; the marker is written (tmp + rename) after the content, so a crash of the
//! process leaves a complete entry, a resumable partial, or content without a marker,
//! which is never used and is cleaned up by the next download or prune.
//!
//! Trust on a hit: the marker exists and the content file still has the recorded size,
//! inode and mtime (a cheap `stat`). The content was hashed while it was written, the
//! directory is private to the user, and any write to the file changes its mtime.
//! `Check::Deep` (the fetcher's `reverify_cached`) rehashes instead.
//!
//! Durability without an fsync on the hot path: the marker records the kernel's boot id
//! (`/proc/sys/kernel/random/boot_id`) instead of fsyncing the content. Within one boot
//! the page cache is coherent, so what was verified is what is read, even after the
//! writing process crashed. Only a kernel crash or power loss can leave unwritten blocks
//! behind, and that always changes the boot id: the first use of an entry from an earlier
//! boot rehashes it, and only then trusts it again. Where no boot id can be read, content
//! and marker are fsynced before the rename instead.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::checksum::{Algorithm, Digest, Hasher};
use crate::error::FetchError;
use crate::lock::{KeyLock, Mode};

/// Markers and resume records are tiny; anything bigger is not ours.
const MAX_META: u64 = 64 * 1024;
const MARKER_VERSION: u32 = 1;

/// The download cache in one directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// One entry as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The cache key (32 hex characters).
    pub key: String,
    /// The URL it was downloaded from (credentials redacted).
    pub url: String,
    /// The checksum it was verified against (`sha256:…`), or `none`.
    pub checksum: String,
    /// Bytes on disk (for a partial: how much is there so far).
    pub size: u64,
    pub created: SystemTime,
    pub last_used: SystemTime,
    /// The content file (for a partial: the `.part` file).
    pub path: PathBuf,
    pub state: EntryState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// Verified and usable.
    Complete,
    /// An interrupted download that the next fetch resumes.
    Partial,
    /// Left over by a crash or changed on disk: never used, removed by any prune.
    Broken,
}

/// What `prune` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prune {
    /// Everything not in use.
    All,
    /// Entries not used for longer than this.
    OlderThan(Duration),
    /// Least recently used entries until the cache holds at most this many bytes.
    MaxSize(u64),
}

/// What `prune` did.
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    pub removed: Vec<CacheEntry>,
    pub freed_bytes: u64,
    /// Entries that matched but are in use (a build holds them, or a download runs).
    pub in_use: Vec<CacheEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key(String);

impl Key {
    pub(crate) fn new(identity: &str, checksum: &str) -> Key {
        let mut h = sha2::Sha256::new();
        h.update(b"kiln-fetch cache v1\n");
        h.update(identity.as_bytes());
        h.update(b"\n");
        h.update(checksum.as_bytes());
        Key(hex::encode(&h.finalize()[..16]))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Marker {
    pub(crate) v: u32,
    pub(crate) url: String,
    pub(crate) checksum: String,
    /// The content's digest (`sha256:…`): the expected one, or for `none` the computed one.
    pub(crate) digest: String,
    pub(crate) file: String,
    pub(crate) size: u64,
    pub(crate) ino: u64,
    pub(crate) mtime: i64,
    pub(crate) mtime_nsec: i64,
    pub(crate) created: u64,
    pub(crate) last_used: u64,
    /// Local sources copied into the cache: size and mtime of the source when copied.
    #[serde(default)]
    pub(crate) source_stamp: Option<String>,
    /// The boot the content was written in without an fsync; `None` once it is known to
    /// be on disk (fsynced, or rehashed in a later boot).
    #[serde(default)]
    pub(crate) boot_id: Option<String>,
}

/// What a partial download needs to be resumed safely.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PartMeta {
    pub(crate) url: String,
    pub(crate) checksum: String,
    pub(crate) etag: Option<String>,
    pub(crate) last_modified: Option<String>,
    pub(crate) total: Option<u64>,
    pub(crate) started: u64,
    /// The boot the partial was written in (see the module doc).
    #[serde(default)]
    pub(crate) boot_id: Option<String>,
}

pub(crate) struct KeyPaths {
    pub(crate) lock: PathBuf,
    pub(crate) marker: PathBuf,
    pub(crate) part: PathBuf,
    pub(crate) part_meta: PathBuf,
}

/// How much `Cache::valid` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Marker and `stat` only: is there a complete entry at all (no locks held).
    Shallow,
    /// What a use needs: shallow, plus a rehash when the entry is from an earlier boot.
    Use,
    /// Always rehash.
    Deep,
}

/// The current boot's id, if the kernel tells it.
pub(crate) fn boot_id() -> Option<&'static str> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && s.len() <= 64)
    })
    .as_deref()
}

/// A valid entry found by `Cache::valid`.
pub(crate) struct Hit {
    pub(crate) marker: Marker,
    pub(crate) path: PathBuf,
}

impl Cache {
    /// Opens (creating it 0700 if needed) the cache directory. Refuses a directory owned
    /// by another user or writable by group or others: whoever can write there could
    /// plant content that builds would use as verified. A directory of ours that others
    /// can only read is made 0700.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Cache, FetchError> {
        let dir: PathBuf = dir.into();
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| FetchError::CacheIo {
                what: "creating",
                path: dir.clone(),
                source,
            })?;
        let meta = fs::metadata(&dir).map_err(|source| FetchError::CacheIo {
            what: "reading",
            path: dir.clone(),
            source,
        })?;
        let shown = dir.display().to_string();
        if !meta.is_dir() {
            return Err(FetchError::InsecureCacheDir {
                path: dir.clone(),
                reason: "it is not a directory".into(),
                fix: format!("rm {shown}"),
            });
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(FetchError::InsecureCacheDir {
                path: dir.clone(),
                reason: format!(
                    "it is owned by uid {}, not by this user (uid {me})",
                    meta.uid()
                ),
                fix: format!("chown {me} {shown}"),
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o022 != 0 {
            return Err(FetchError::InsecureCacheDir {
                path: dir.clone(),
                reason: format!("it is writable by group or others (mode {mode:03o})"),
                fix: format!("chmod 700 {shown}"),
            });
        }
        if mode & 0o077 != 0 {
            // Ours and not writable by others, but readable: what a user downloads is
            // nobody else's business, so make it private like a directory we create.
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
                FetchError::CacheIo {
                    what: "restricting the permissions of",
                    path: dir.clone(),
                    source,
                }
            })?;
        }
        Ok(Cache { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn paths(&self, key: &Key) -> KeyPaths {
        let k = key.as_str();
        KeyPaths {
            lock: self.dir.join(format!("{k}.lock")),
            marker: self.dir.join(format!("{k}.json")),
            part: self.dir.join(format!("{k}.part")),
            part_meta: self.dir.join(format!("{k}.part.json")),
        }
    }

    /// The entry for `key` if it is complete and unchanged, checked as `check` says (see
    /// the module doc).
    pub(crate) fn valid(&self, key: &Key, check: Check) -> Option<Hit> {
        let paths = self.paths(key);
        let marker: Marker = read_json(&paths.marker).ok()??;
        let path = self.content_path(key, &marker)?;
        let meta = fs::metadata(&path).ok()?;
        let unchanged = meta.is_file()
            && marker.v == MARKER_VERSION
            && meta.len() == marker.size
            && meta.ino() == marker.ino
            && meta.mtime() == marker.mtime
            && meta.mtime_nsec() == marker.mtime_nsec;
        if !unchanged {
            tracing::debug!(key = key.as_str(), "cache entry changed on disk; not used");
            return None;
        }
        let from_other_boot = marker.boot_id.is_some() && marker.boot_id.as_deref() != boot_id();
        let rehash = match check {
            Check::Shallow => false,
            Check::Use => from_other_boot,
            Check::Deep => true,
        };
        let mut marker = marker;
        if rehash {
            let (algo, hex) = marker.digest.split_once(':')?;
            let algorithm = Algorithm::from_name(algo)?;
            let got = hash_file(&path, algorithm).ok()?;
            if got.hex() != hex {
                tracing::warn!(
                    key = key.as_str(),
                    "cache entry content does not match its checksum; not used"
                );
                return None;
            }
            if from_other_boot {
                // Read back from disk after a reboot and correct: durable from now on
                // (recorded by the caller's `touch`).
                marker.boot_id = None;
            }
        }
        Some(Hit { marker, path })
    }

    /// Records a use of an entry (for `prune`'s least-recently-used order).
    pub(crate) fn touch(&self, key: &Key, mut marker: Marker) {
        marker.last_used = now_secs();
        if let Err(e) = write_json_atomic(&self.paths(key).marker, &marker) {
            tracing::debug!(error = %e, "could not record the cache entry's last use");
        }
    }

    fn content_path(&self, key: &Key, marker: &Marker) -> Option<PathBuf> {
        // The marker is ours, but never let it point outside the directory.
        let ok = marker.file.starts_with(&format!("{}-", key.as_str()))
            && !marker.file.contains('/')
            && !marker.file.contains('\0');
        ok.then(|| self.dir.join(&marker.file))
    }

    /// Moves a verified partial into place and writes its marker.
    pub(crate) fn commit(
        &self,
        key: &Key,
        file_name: &str,
        url: &str,
        checksum: &str,
        digest: &Digest,
        source_stamp: Option<String>,
    ) -> Result<Hit, FetchError> {
        let paths = self.paths(key);
        let file = format!("{}-{}", key.as_str(), sanitize(file_name));
        let path = self.dir.join(&file);
        let io_err = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| FetchError::CacheIo { what, path, source }
        };
        // The content is fsynced by its writer exactly when there is no boot id to
        // record instead (see the module doc).
        let boot = boot_id().map(str::to_string);
        fs::rename(&paths.part, &path).map_err(io_err("moving into place", &paths.part))?;
        let meta = fs::metadata(&path).map_err(io_err("reading", &path))?;
        let now = now_secs();
        let marker = Marker {
            v: MARKER_VERSION,
            url: url.to_string(),
            checksum: checksum.to_string(),
            digest: digest.to_string(),
            file,
            size: meta.len(),
            ino: meta.ino(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            created: now,
            last_used: now,
            source_stamp,
            boot_id: boot.clone(),
        };
        write_json_atomic(&paths.marker, &marker).map_err(io_err("writing", &paths.marker))?;
        remove_if_exists(&paths.part_meta).map_err(io_err("removing", &paths.part_meta))?;
        if boot.is_none() {
            sync_dir(&self.dir);
        }
        Ok(Hit { marker, path })
    }

    /// Removes the entry's files. With `keep_partial` the resumable partial stays.
    pub(crate) fn remove_entry(&self, key: &Key, keep_partial: bool) -> io::Result<()> {
        let paths = self.paths(key);
        remove_if_exists(&paths.marker)?;
        let prefix = format!("{}-", key.as_str());
        let tmp_prefix = format!("{}.", key.as_str());
        for e in fs::read_dir(&self.dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix)
                || (name.starts_with(&tmp_prefix) && name.contains(".tmp."))
            {
                remove_if_exists(&self.dir.join(&*name))?;
            }
        }
        if !keep_partial {
            self.remove_partial(key)?;
        }
        Ok(())
    }

    pub(crate) fn remove_partial(&self, key: &Key) -> io::Result<()> {
        let paths = self.paths(key);
        remove_if_exists(&paths.part)?;
        remove_if_exists(&paths.part_meta)
    }

    pub(crate) fn read_part_meta(&self, key: &Key) -> Option<PartMeta> {
        read_json(&self.paths(key).part_meta).ok()?
    }

    pub(crate) fn write_part_meta(&self, key: &Key, meta: &PartMeta) -> Result<(), FetchError> {
        let p = self.paths(key).part_meta;
        write_json_atomic(&p, meta).map_err(|source| FetchError::CacheIo {
            what: "writing",
            path: p,
            source,
        })
    }

    /// Every entry, complete, partial or broken, most recently used first.
    pub fn list(&self) -> Result<Vec<CacheEntry>, FetchError> {
        let rd = fs::read_dir(&self.dir).map_err(|source| FetchError::CacheIo {
            what: "listing",
            path: self.dir.clone(),
            source,
        })?;
        let mut keys: Vec<String> = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(k) = key_prefix(&name)
                && !keys.iter().any(|x| x == k)
            {
                keys.push(k.to_string());
            }
        }
        let mut out: Vec<CacheEntry> = keys
            .into_iter()
            .filter_map(|k| self.describe(&Key(k)))
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        Ok(out)
    }

    /// What is on disk for a key, or `None` if only a lock file is.
    fn describe(&self, key: &Key) -> Option<CacheEntry> {
        let paths = self.paths(key);
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        if let Some(hit) = self.valid(key, Check::Shallow) {
            let m = hit.marker;
            return Some(CacheEntry {
                key: key.0.clone(),
                url: m.url,
                checksum: m.checksum,
                size: m.size,
                created: at(m.created),
                last_used: at(m.last_used),
                path: hit.path,
                state: EntryState::Complete,
            });
        }
        let stray = self.stray_files(key);
        let stray_size: u64 = stray
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        if let Ok(pm) = fs::metadata(&paths.part) {
            let meta = self.read_part_meta(key).unwrap_or_default();
            let mtime = pm.modified().unwrap_or(UNIX_EPOCH);
            // Content without a valid marker next to a partial: garbage, shown as broken.
            let state = if stray.is_empty() {
                EntryState::Partial
            } else {
                EntryState::Broken
            };
            return Some(CacheEntry {
                key: key.0.clone(),
                url: meta.url,
                checksum: meta.checksum,
                size: pm.len() + stray_size,
                created: at(meta.started),
                last_used: mtime,
                path: paths.part,
                state,
            });
        }
        if stray.is_empty() && !paths.marker.exists() {
            return None;
        }
        let marker: Option<Marker> = read_json(&paths.marker).ok().flatten();
        let first = stray.first().cloned().unwrap_or(paths.marker.clone());
        let mtime = fs::metadata(&first)
            .and_then(|m| m.modified())
            .unwrap_or(UNIX_EPOCH);
        Some(CacheEntry {
            key: key.0.clone(),
            url: marker.as_ref().map(|m| m.url.clone()).unwrap_or_default(),
            checksum: marker.map(|m| m.checksum).unwrap_or_default(),
            size: stray_size,
            created: mtime,
            last_used: mtime,
            path: first,
            state: EntryState::Broken,
        })
    }

    /// Content and temporary files of a key (not its lock, marker or partial).
    fn stray_files(&self, key: &Key) -> Vec<PathBuf> {
        let prefix = format!("{}-", key.as_str());
        let tmp_prefix = format!("{}.", key.as_str());
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut v: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with(&prefix) || (n.starts_with(&tmp_prefix) && n.contains(".tmp."))
            })
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }

    /// Removes entries by `rule`; entries in use are skipped and reported. Broken leftovers
    /// are removed by every rule.
    pub fn prune(&self, rule: Prune) -> Result<PruneReport, FetchError> {
        let entries = self.list()?;
        let now = SystemTime::now();
        let mut victims: Vec<CacheEntry> = Vec::new();
        let mut keep: Vec<CacheEntry> = Vec::new();
        for e in entries {
            let matches = e.state == EntryState::Broken
                || match rule {
                    Prune::All => true,
                    Prune::OlderThan(d) => now.duration_since(e.last_used).is_ok_and(|age| age > d),
                    Prune::MaxSize(_) => false,
                };
            if matches {
                victims.push(e);
            } else {
                keep.push(e);
            }
        }
        if let Prune::MaxSize(max) = rule {
            // Oldest first until what is left fits.
            keep.sort_by_key(|e| e.last_used);
            let mut total: u64 = keep.iter().map(|e| e.size).sum();
            let mut rest = Vec::new();
            for e in keep {
                if total > max {
                    total -= e.size;
                    victims.push(e);
                } else {
                    rest.push(e);
                }
            }
        }
        let mut report = PruneReport::default();
        for e in victims {
            let key = Key(e.key.clone());
            let paths = self.paths(&key);
            let lock = KeyLock::try_acquire(&paths.lock, Mode::Exclusive).map_err(|source| {
                FetchError::CacheIo {
                    what: "locking",
                    path: paths.lock.clone(),
                    source,
                }
            })?;
            let Some(lock) = lock else {
                report.in_use.push(e);
                continue;
            };
            let io = |source| FetchError::CacheIo {
                what: "removing",
                path: e.path.clone(),
                source,
            };
            self.remove_entry(&key, false).map_err(io)?;
            lock.remove_file().map_err(io)?;
            report.freed_bytes += e.size;
            report.removed.push(e);
        }
        self.remove_lone_locks();
        sync_dir(&self.dir);
        Ok(report)
    }

    /// Lock files of keys that have nothing else left (a failed download, a crash): free
    /// to remove when nobody holds them.
    fn remove_lone_locks(&self) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Some(k) = name.strip_suffix(".lock").and_then(key_prefix_exact) else {
                continue;
            };
            let key = Key(k.to_string());
            if self.describe(&key).is_some() {
                continue;
            }
            if let Ok(Some(lock)) = KeyLock::try_acquire(&e.path(), Mode::Exclusive)
                && self.describe(&key).is_none()
            {
                let _ = lock.remove_file();
            }
        }
    }
}

/// The key a cache file name starts with.
fn key_prefix(name: &str) -> Option<&str> {
    let k = name.get(..32)?;
    let rest = &name[32..];
    let ok = k
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && (rest.starts_with('.') || rest.starts_with('-'));
    ok.then_some(k)
}

/// `name` if it is exactly a key.
fn key_prefix_exact(name: &str) -> Option<&str> {
    (name.len() == 32
        && name
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(name)
}

/// A file name safe to put in the cache directory.
pub(crate) fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+') {
                c
            } else {
                '_'
            }
        })
        .take(96)
        .collect();
    let s = s.trim_start_matches('.');
    if s.is_empty() {
        "download".to_string()
    } else {
        s.to_string()
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Hashes a file with a 1 MiB buffer (local sources, `reverify`).
pub(crate) fn hash_file(path: &Path, algorithm: Algorithm) -> io::Result<Digest> {
    let mut f = fs::File::open(path)?;
    let mut h = Hasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    f.take(MAX_META).read_to_end(&mut buf)?;
    // A corrupt record is treated like a missing one.
    Ok(serde_json::from_slice(&buf).ok())
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `value` to a unique temporary file and renames it over `path` (fsynced first
/// where there is no boot id; see the module doc).
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}.{n}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        if boot_id().is_none() {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes renames in `dir` durable (only where there is no boot id). Best effort: a failure
/// here only weakens crash safety against power loss, which the checksum still catches.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(data: &[u8]) -> Digest {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(data);
        h.finish()
    }

    fn put(cache: &Cache, key: &Key, data: &[u8]) -> Hit {
        fs::write(cache.paths(key).part, data).unwrap();
        cache
            .commit(
                key,
                "x.iso",
                "http://h/x.iso",
                "none",
                &digest_of(data),
                None,
            )
            .unwrap()
    }

    #[test]
    fn open_creates_private_dir_and_refuses_shared_ones() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path().join("a/b")).unwrap();
        let mode = fs::metadata(c.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let shared = t.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        match Cache::open(&shared) {
            Err(FetchError::InsecureCacheDir { fix, .. }) => assert!(fix.contains("chmod 700")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn commit_then_valid_then_change_invalidates() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let key = Key::new("http://h/x.iso", "none");
        let hit = put(&c, &key, b"hello");
        assert!(
            hit.path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .ends_with("-x.iso")
        );
        let mode = fs::metadata(c.paths(&key).marker)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(c.valid(&key, Check::Shallow).is_some());
        assert!(c.valid(&key, Check::Use).is_some());
        assert!(c.valid(&key, Check::Deep).is_some());
        // Rewriting the content (same size) changes its mtime/inode: no longer trusted.
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&hit.path, b"HELLO").unwrap();
        assert!(c.valid(&key, Check::Use).is_none());
        let listed = c.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, EntryState::Broken);
        let r = c
            .prune(Prune::OlderThan(Duration::from_secs(3600)))
            .unwrap();
        assert_eq!(r.removed.len(), 1, "broken entries go with any rule");
        assert!(c.list().unwrap().is_empty());
    }

    #[test]
    fn entries_from_an_earlier_boot_are_rehashed_before_use() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let key = Key::new("http://h/b.iso", "none");
        let hit = put(&c, &key, b"written before a power loss");
        assert_eq!(hit.marker.boot_id.as_deref(), boot_id());
        // Pretend it was written in another boot, and the disk lost the data (zeros of the
        // same length; size, inode and mtime unchanged).
        let mut m = hit.marker.clone();
        m.boot_id = Some("00000000-0000-0000-0000-000000000000".into());
        write_json_atomic(&c.paths(&key).marker, &m).unwrap();
        let mtime = fs::metadata(&hit.path).unwrap().modified().unwrap();
        let zeros = vec![0u8; usize::try_from(hit.marker.size).expect("test file size fits usize")];
        {
            let f = fs::OpenOptions::new().write(true).open(&hit.path).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &zeros, 0).unwrap();
            f.set_modified(mtime).unwrap();
        }
        assert!(
            c.valid(&key, Check::Shallow).is_some(),
            "stat alone cannot tell"
        );
        assert!(
            c.valid(&key, Check::Use).is_none(),
            "the other boot forces a rehash"
        );
        // Intact content from an earlier boot is trusted after the rehash, durably.
        let key2 = Key::new("http://h/c.iso", "none");
        let hit2 = put(&c, &key2, b"fine");
        let mut m2 = hit2.marker.clone();
        m2.boot_id = Some("00000000-0000-0000-0000-000000000000".into());
        write_json_atomic(&c.paths(&key2).marker, &m2).unwrap();
        let used = c.valid(&key2, Check::Use).unwrap();
        assert_eq!(used.marker.boot_id, None);
    }

    #[test]
    fn prune_max_size_removes_least_recently_used() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let keys: Vec<Key> = (0..3).map(|i| Key::new(&format!("u{i}"), "none")).collect();
        for (i, k) in keys.iter().enumerate() {
            put(&c, k, &[b'x'; 100]);
            // Distinct last-use times, oldest first.
            let mut m = c.valid(k, Check::Shallow).unwrap().marker;
            m.last_used = 1000 + i as u64;
            write_json_atomic(&c.paths(k).marker, &m).unwrap();
        }
        let r = c.prune(Prune::MaxSize(150)).unwrap();
        let removed: Vec<&str> = r.removed.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(removed, vec![keys[0].as_str(), keys[1].as_str()]);
        assert_eq!(r.freed_bytes, 200);
        assert_eq!(c.list().unwrap().len(), 1);
    }

    #[test]
    fn prune_skips_entries_in_use() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let key = Key::new("u", "none");
        put(&c, &key, b"data");
        let lease = KeyLock::try_acquire(&c.paths(&key).lock, Mode::Shared)
            .unwrap()
            .unwrap();
        let r = c.prune(Prune::All).unwrap();
        assert!(r.removed.is_empty());
        assert_eq!(r.in_use.len(), 1);
        drop(lease);
        let r = c.prune(Prune::All).unwrap();
        assert_eq!(r.removed.len(), 1);
        assert_eq!(
            fs::read_dir(c.dir()).unwrap().count(),
            0,
            "lock file removed too"
        );
    }

    #[test]
    fn prune_removes_lone_lock_files() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let key = Key::new("u", "none");
        drop(KeyLock::try_acquire(&c.paths(&key).lock, Mode::Exclusive).unwrap());
        let held_key = Key::new("v", "none");
        let held = KeyLock::try_acquire(&c.paths(&held_key).lock, Mode::Exclusive).unwrap();
        fs::write(t.path().join("README"), b"not ours").unwrap();
        c.prune(Prune::OlderThan(Duration::from_secs(60))).unwrap();
        assert!(!c.paths(&key).lock.exists());
        assert!(c.paths(&held_key).lock.exists(), "a held lock stays");
        assert!(t.path().join("README").exists(), "foreign files stay");
        drop(held);
    }

    #[test]
    fn sanitize_keeps_names_flat() {
        assert_eq!(sanitize("debian-12.qcow2"), "debian-12.qcow2");
        assert_eq!(sanitize("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(sanitize(""), "download");
        assert_eq!(sanitize("..."), "download");
        assert_eq!(sanitize(&"é".repeat(300)).len(), 96);
    }

    #[test]
    fn key_prefix_parses_only_our_names() {
        let k = "0123456789abcdef0123456789abcdef";
        assert_eq!(key_prefix(&format!("{k}.lock")), Some(k));
        assert_eq!(key_prefix(&format!("{k}-x.iso")), Some(k));
        assert_eq!(key_prefix("README"), None);
        assert_eq!(key_prefix(&format!("{k}x")), None);
    }
}
