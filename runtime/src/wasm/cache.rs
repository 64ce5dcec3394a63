//! On-disk cache of compiled components.
//!
//! Deserializing native code is only safe for bytes wasmtime itself produced, so the
//! cache only ever loads files it wrote: each file starts with a magic header and the
//! SHA-256 of the payload, is written to a temp file and renamed into place, and
//! lives in a directory created with mode 0700. A file that fails the check is
//! ignored and rewritten.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"KILNCW01";
const HEADER_LEN: usize = MAGIC.len() + 32;

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

pub(crate) struct DiskCache {
    dir: PathBuf,
    engine_key: String,
}

impl DiskCache {
    pub(crate) fn open(dir: PathBuf, engine_key: String) -> std::io::Result<Self> {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(&dir)?;
        Ok(DiskCache { dir, engine_key })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// The payload kiln stored for `digest`, if present and intact.
    pub(crate) fn get(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.path(digest);
        let mut bytes = std::fs::read(&path).ok()?;
        if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
            tracing::warn!(path = %path.display(), "ignoring compiled-component cache file without kiln's header");
            return None;
        }
        let (header, payload) = bytes.split_at(HEADER_LEN);
        if Sha256::digest(payload).as_slice() != &header[MAGIC.len()..] {
            tracing::warn!(path = %path.display(), "ignoring corrupt compiled-component cache file (digest mismatch)");
            return None;
        }
        bytes.drain(..HEADER_LEN);
        Some(bytes)
    }

    /// Stores `payload` atomically: readers see the old file, no file, or the whole new one.
    pub(crate) fn put(&self, digest: &str, payload: &[u8]) -> std::io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(MAGIC)?;
        tmp.write_all(&Sha256::digest(payload))?;
        tmp.write_all(payload)?;
        tmp.as_file().sync_data()?;
        tmp.persist(self.path(digest)).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejects_tampering() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(tmp.path().join("c"), "k".into()).unwrap();
        assert_eq!(cache.get("abc"), None);
        cache.put("abc", b"payload").unwrap();
        assert_eq!(cache.get("abc").as_deref(), Some(&b"payload"[..]));

        let path = cache.path("abc");
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

    #[cfg(unix)]
    #[test]
    fn cache_dir_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(tmp.path().join("private"), "k".into()).unwrap();
        let mode = std::fs::metadata(cache.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }
}
