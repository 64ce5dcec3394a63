//! On-disk cache of compiled components.
//!
//! Deserializing native code is only safe for bytes wasmtime itself produced from the
//! component being loaded, so the cache trusts nothing it finds by name:
//! - The directory must be kiln's user's and not writable by group or others (a
//!   shared or world-writable cache is refused with a warning, and kiln compiles
//!   every time). It is opened once and every file is reached through that handle,
//!   never by re-resolving its path, and never through a symlink.
//! - Each file is authenticated: its header holds an HMAC-SHA256, under a random key
//!   kept in the directory (mode 0600), over the SHA-256 of the *source component*,
//!   the engine's compatibility key and the native payload. A file planted under
//!   another component's name, copied from elsewhere, or edited, fails the check and
//!   is ignored. A file not owned by kiln's user, or writable by others, is ignored
//!   without being read.
//! - Files are written to a fresh temporary name (O_EXCL, 0600) and renamed into
//!   place, so readers see the old file, no file, or the whole new one.

use cap_std::fs::MetadataExt;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"KILNCW02";
const MAC_LEN: usize = 32;
const HEADER_LEN: usize = MAGIC.len() + MAC_LEN;
/// The cache's key file (32 random bytes).
const KEY_FILE: &str = "key";
/// Largest cache file read (a compiled 256 MiB component stays well below this).
const MAX_FILE: u64 = 2 << 30;

/// Feeds `Hash` output into SHA-256 so the engine's compatibility hash is stable
/// across processes (std's hashers are not).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        // Only the digest is used; `finish` exists to satisfy the trait.
        0
    }
}

/// A stable key for an engine configuration, combined with the wasm digest in file names.
pub(crate) fn engine_key(engine: &wasmtime::Engine) -> String {
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.write(env!("CARGO_PKG_VERSION").as_bytes());
    hex::encode(&h.0.finalize()[..8])
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Where compiled components go when the caller does not say:
/// `$KILN_CACHE_DIR/wasm`, else `$XDG_CACHE_HOME/kiln/wasm`, else `~/.cache/kiln/wasm`.
pub(crate) fn default_dir() -> Option<PathBuf> {
    crate::cache_dir().map(|d| d.join("wasm"))
}

/// HMAC-SHA256 (RFC 2104) over `parts`.
fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    k[..key.len()].copy_from_slice(key);
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses what another user could have written: not ours, or group/other writable.
fn check_private(meta: &cap_std::fs::Metadata, what: &str) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(io::Error::other(format!(
            "{what} is owned by uid {}, not by kiln's user (uid {me})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{what} is writable by other users (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: the pointer and length describe the unfilled part of `buf`.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += usize::try_from(n).unwrap_or(0);
    }
    Ok(buf)
}

/// A fresh temporary name in the cache directory.
fn temp_name() -> io::Result<String> {
    Ok(format!(".tmp-{}", hex::encode(random_bytes::<12>()?)))
}

/// Creates `name` in `dir` with `bytes`, atomically (temporary file, then rename).
fn write_atomically(dir: &Dir, name: &str, parts: &[&[u8]]) -> io::Result<()> {
    use cap_std::fs::OpenOptionsExt;
    let tmp = temp_name()?;
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true).mode(0o600);
    let result = (|| {
        let mut f = dir.open_with(&tmp, &opts)?;
        for p in parts {
            f.write_all(p)?;
        }
        f.sync_data()?;
        dir.rename(&tmp, dir, name)
    })();
    if result.is_err() {
        let _ = dir.remove_file(&tmp);
    }
    result
}

pub(crate) struct DiskCache {
    path: PathBuf,
    dir: Dir,
    key: [u8; 32],
    engine_key: String,
}

impl DiskCache {
    /// Opens (creating with mode 0700) the cache directory and its key. Refuses a
    /// directory or key another user could write; the caller then goes without a cache.
    pub(crate) fn open(path: PathBuf, engine_key: String) -> io::Result<Self> {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(&path)?;
        let dir = Dir::open_ambient_dir(&path, ambient_authority())?;
        check_private(
            &dir.dir_metadata()?,
            &format!("the cache directory {}", path.display()),
        )?;
        let key = Self::key(&dir, &path)?;
        Ok(DiskCache {
            path,
            dir,
            key,
            engine_key,
        })
    }

    /// The directory's key: read if there, else created (by whichever process is first).
    fn key(dir: &Dir, path: &Path) -> io::Result<[u8; 32]> {
        use cap_std::fs::OpenOptionsExt;
        let what = format!("the cache key {}", path.join(KEY_FILE).display());
        for _ in 0..3 {
            let mut opts = OpenOptions::new();
            opts.read(true).custom_flags(libc::O_NOFOLLOW);
            match dir.open_with(KEY_FILE, &opts) {
                Ok(mut f) => {
                    let meta = f.metadata()?;
                    check_private(&meta, &what)?;
                    if meta.mode() & 0o077 != 0 || !meta.is_file() || meta.len() != 32 {
                        return Err(io::Error::other(format!(
                            "{what} is not a private 32-byte file (mode {:o}, {} bytes)",
                            meta.mode() & 0o7777,
                            meta.len()
                        )));
                    }
                    let mut key = [0u8; 32];
                    f.read_exact(&mut key)?;
                    return Ok(key);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Written under a temporary name and linked into place, which fails
                    // if another process got there first; then its key is read.
                    let key = random_bytes::<32>()?;
                    let tmp = temp_name()?;
                    let mut opts = OpenOptions::new();
                    opts.write(true).create_new(true).mode(0o600);
                    let mut f = dir.open_with(&tmp, &opts)?;
                    f.write_all(&key)?;
                    f.sync_data()?;
                    let linked = dir.hard_link(&tmp, dir, KEY_FILE);
                    let _ = dir.remove_file(&tmp);
                    match linked {
                        Ok(()) => return Ok(key),
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!("{what} keeps changing")))
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.path
    }

    fn name(&self, digest: &str) -> String {
        format!("{digest}-{}.cwasm", self.engine_key)
    }

    /// The MAC that binds `payload` to the component it was compiled from.
    fn mac(&self, digest: &str, payload: &[u8]) -> [u8; MAC_LEN] {
        hmac(
            &self.key,
            &[
                b"kiln compiled component v2\0",
                digest.as_bytes(),
                b"\0",
                self.engine_key.as_bytes(),
                b"\0",
                payload,
            ],
        )
    }

    /// The native code kiln compiled from the component whose SHA-256 is `digest`, if
    /// the cache holds it intact.
    pub(crate) fn get(&self, digest: &str) -> Option<Vec<u8>> {
        use cap_std::fs::OpenOptionsExt;
        let name = self.name(digest);
        let shown = self.path.join(&name);
        let mut opts = OpenOptions::new();
        opts.read(true).custom_flags(libc::O_NOFOLLOW);
        let mut file = match self.dir.open_with(&name, &opts) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %shown.display(), error = %e, "ignoring compiled-component cache file that cannot be opened");
                return None;
            }
        };
        let meta = file.metadata().ok()?;
        if let Err(e) = check_private(&meta, "the file") {
            tracing::warn!(path = %shown.display(), reason = %e, "ignoring compiled-component cache file another user could have written");
            return None;
        }
        if !meta.is_file() || meta.len() > MAX_FILE {
            tracing::warn!(path = %shown.display(), "ignoring compiled-component cache file that is not a regular file of a sane size");
            return None;
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        (&mut file).take(MAX_FILE).read_to_end(&mut bytes).ok()?;
        if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
            tracing::warn!(path = %shown.display(), "ignoring compiled-component cache file without kiln's header");
            return None;
        }
        let (header, payload) = bytes.split_at(HEADER_LEN);
        if !same(&header[MAGIC.len()..], &self.mac(digest, payload)) {
            tracing::warn!(path = %shown.display(), "ignoring compiled-component cache file that fails authentication (not compiled by kiln from this component)");
            return None;
        }
        bytes.drain(..HEADER_LEN);
        Some(bytes)
    }

    /// Stores the native code compiled from the component `digest`, atomically.
    pub(crate) fn put(&self, digest: &str, payload: &[u8]) -> io::Result<()> {
        let mac = self.mac(digest, payload);
        write_atomically(&self.dir, &self.name(digest), &[MAGIC, &mac, payload])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231 uses a short key; ours are always 32 bytes, so
        // check against a key padded the way HMAC pads it.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(hmac(&key, &[b"what do ya want ", b"for nothing?"])),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn roundtrip_and_rejects_tampering() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(tmp.path().join("c"), "k".into()).unwrap();
        assert_eq!(cache.get("abc"), None);
        cache.put("abc", b"payload").unwrap();
        assert_eq!(cache.get("abc").as_deref(), Some(&b"payload"[..]));

        let path = cache.dir().join(cache.name("abc"));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            cache.get("abc"),
            None,
            "a modified payload must not be loaded"
        );

        std::fs::write(
            &path,
            b"not a kiln file at all, but long enough to have a header",
        )
        .unwrap();
        assert_eq!(cache.get("abc"), None, "a foreign file must not be loaded");
    }

    /// The attack: a file kiln wrote for one component, renamed to another's name.
    #[test]
    fn an_artifact_under_another_components_name_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(tmp.path().join("c"), "k".into()).unwrap();
        cache
            .put("evil", b"native code of another component")
            .unwrap();
        std::fs::rename(
            cache.dir().join(cache.name("evil")),
            cache.dir().join(cache.name("good")),
        )
        .unwrap();
        assert_eq!(cache.get("good"), None);
        // And one made with another cache's key.
        let other = DiskCache::open(tmp.path().join("other"), "k".into()).unwrap();
        other.put("good", b"forged").unwrap();
        std::fs::copy(
            other.dir().join(other.name("good")),
            cache.dir().join(cache.name("good")),
        )
        .unwrap();
        assert_eq!(cache.get("good"), None);
    }

    #[test]
    fn shared_directories_and_foreign_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shared");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = DiskCache::open(dir.clone(), "k".into())
            .err()
            .expect("refused");
        assert!(e.to_string().contains("writable by other users"), "{e}");

        let cache = DiskCache::open(tmp.path().join("mine"), "k".into()).unwrap();
        cache.put("abc", b"payload").unwrap();
        let file = cache.dir().join(cache.name("abc"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(
            cache.get("abc"),
            None,
            "a world-writable file must not be loaded"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(cache.get("abc").is_some());
        // A symlink in place of a file is not followed.
        std::fs::remove_file(&file).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::write(&elsewhere, b"x").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
        assert_eq!(cache.get("abc"), None);
    }

    #[test]
    fn cache_dir_and_key_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(tmp.path().join("private"), "k".into()).unwrap();
        let mode = std::fs::metadata(cache.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        let key = std::fs::metadata(cache.dir().join(KEY_FILE)).unwrap();
        assert_eq!(key.permissions().mode() & 0o077, 0);
        // The same key on the next open.
        let again = DiskCache::open(tmp.path().join("private"), "k".into()).unwrap();
        assert_eq!(again.key, cache.key);
    }
}
