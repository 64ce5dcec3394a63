//! The entry point: resolve the checksum, try each URL of the request in order, and get
//! each through the cache (lock, hit, or download + verify + commit).

use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cache::{self, Cache, Check, Hit, Key};
use crate::checksum::{Algorithm, ChecksumSpec, Digest};
use crate::client::{self, ProxySettings, RedirectGuard};
use crate::download::{self, Done, Transfer};
use crate::error::{self, FetchError};
use crate::lock::{KeyLock, Mode};
use crate::observe::{Observer, Restart};
use crate::source::{Source, SumsLocation, Target};
use crate::sums::{self, SumsEntry};

/// A sums file larger than this is not a sums file.
const MAX_SUMS_FILE: u64 = 4 * 1024 * 1024;
/// Polling interval bounds while another holder has the key's lock.
const WAIT_MIN: Duration = Duration::from_millis(50);
const WAIT_MAX: Duration = Duration::from_millis(500);

/// How the fetcher is set up; one per build run (the client and cache are shared by all
/// fetches through it).
#[derive(Clone)]
pub struct FetchConfig {
    /// The download cache directory (created 0700). The runtime passes a directory under
    /// `KILN_CACHE_DIR`.
    pub cache_dir: PathBuf,
    /// Extra trusted CA certificates (PEM), added to the system roots.
    pub ca_file: Option<PathBuf>,
    pub proxy: ProxySettings,
    /// For the TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// How long a transfer may receive nothing before it counts as stalled.
    pub read_timeout: Duration,
    pub max_redirects: usize,
    /// Downloads larger than this are refused (announced or actual size).
    pub max_size: u64,
    /// How often one fetch resumes after a broken connection before it gives up (each
    /// time only if the previous try received something).
    pub resume_attempts: u32,
    /// Rehash every cache hit instead of trusting the verified marker (by default only
    /// entries from an earlier boot are rehashed; see `cache`).
    pub reverify_cached: bool,
    /// Checks every redirect target (the runtime's host grants); `None` allows all.
    pub redirect_guard: Option<RedirectGuard>,
    pub user_agent: String,
}

impl FetchConfig {
    /// Defaults: proxies from the environment, 30 s connect, 60 s stall, 10 redirects,
    /// 256 GiB size limit, 3 resumes per fetch, trusted markers.
    pub fn new(cache_dir: impl Into<PathBuf>) -> FetchConfig {
        FetchConfig {
            cache_dir: cache_dir.into(),
            ca_file: None,
            proxy: ProxySettings::from_env(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            max_redirects: 10,
            max_size: 256 << 30,
            resume_attempts: 3,
            reverify_cached: false,
            redirect_guard: None,
            user_agent: concat!("kiln-fetch/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

impl fmt::Debug for FetchConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchConfig")
            .field("cache_dir", &self.cache_dir)
            .field("ca_file", &self.ca_file)
            .field("proxy", &self.proxy)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("max_redirects", &self.max_redirects)
            .field("max_size", &self.max_size)
            .field("resume_attempts", &self.resume_attempts)
            .field("reverify_cached", &self.reverify_cached)
            .field(
                "redirect_guard",
                &self.redirect_guard.as_ref().map(|_| "<fn>"),
            )
            .field("user_agent", &self.user_agent)
            .finish()
    }
}

/// What to do with `file://` URLs and paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LocalMode {
    /// Verify the file where it is and return its own path (no copy).
    #[default]
    InPlace,
    /// Copy it into the cache (verified while copying) and return the cached path.
    Copy,
}

/// One input to fetch: a URL (or a mirror list tried in order) and its checksum.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// `http(s)://` or `file://` URLs, or paths; tried in order (`iso_urls`).
    pub urls: Vec<String>,
    pub checksum: ChecksumSpec,
    pub local: LocalMode,
    /// Relative paths (of sources and `file:` sums files) are relative to this; by
    /// default the current directory.
    pub base_dir: PathBuf,
}

impl FetchRequest {
    pub fn new(url: impl Into<String>, checksum: ChecksumSpec) -> FetchRequest {
        FetchRequest::mirrors([url.into()], checksum)
    }

    /// A mirror list (`iso_urls`), tried in order.
    pub fn mirrors(urls: impl IntoIterator<Item = String>, checksum: ChecksumSpec) -> FetchRequest {
        FetchRequest {
            urls: urls.into_iter().collect(),
            checksum,
            local: LocalMode::InPlace,
            base_dir: PathBuf::from("."),
        }
    }

    pub fn local(mut self, mode: LocalMode) -> FetchRequest {
        self.local = mode;
        self
    }

    pub fn base_dir(mut self, dir: impl Into<PathBuf>) -> FetchRequest {
        self.base_dir = dir.into();
        self
    }

    /// Every host this request contacts before redirects (its URLs and a `file:` sums
    /// URL), for the runtime to check against its grants up front.
    pub fn network_targets(&self) -> Result<Vec<Target>, FetchError> {
        let mut out: Vec<Target> = Vec::new();
        let mut add = |t: Option<Target>| {
            if let Some(t) = t
                && !out.contains(&t)
            {
                out.push(t);
            }
        };
        for u in &self.urls {
            add(Source::parse(u, &self.base_dir)?.target());
        }
        if let ChecksumSpec::SumsFile(loc) = &self.checksum
            && let SumsLocation::Http(u) = SumsLocation::parse(loc, &self.base_dir)?
        {
            add(Target::of(&u));
        }
        Ok(out)
    }
}

/// Where a fetched file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A verified cache entry; nothing was transferred.
    Cache,
    /// Downloaded (or copied) into the cache by this fetch.
    Downloaded,
    /// A local file used where it is.
    Local,
}

/// A fetched, verified file. Keep it alive while the file is in use: it holds a shared
/// lock on the cache entry, so `prune` in another process leaves the entry alone.
#[derive(Debug)]
pub struct Fetched {
    pub path: PathBuf,
    /// The URL (redacted) or path that was used.
    pub url: String,
    pub size: u64,
    /// The verified digest; for `none`, the SHA-256 computed while downloading (so the
    /// caller can suggest it), and `None` for a local file used in place unverified.
    pub digest: Option<Digest>,
    /// The digest was checked against the requested checksum.
    pub verified: bool,
    pub origin: Origin,
    _lease: Option<KeyLock>,
}

/// Fetches inputs through one HTTP client and one cache.
pub struct Fetcher {
    cfg: FetchConfig,
    client: reqwest::Client,
    cache: Cache,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher").field("cfg", &self.cfg).finish()
    }
}

impl Fetcher {
    /// Opens the cache (see `Cache::open`) and builds the HTTP client.
    pub fn new(cfg: FetchConfig) -> Result<Fetcher, FetchError> {
        let cache = Cache::open(&cfg.cache_dir)?;
        let client = client::build(client::ClientSettings {
            ca_file: cfg.ca_file.as_deref(),
            proxy: &cfg.proxy,
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.read_timeout,
            max_redirects: cfg.max_redirects,
            redirect_guard: cfg.redirect_guard.clone(),
            user_agent: &cfg.user_agent,
        })?;
        Ok(Fetcher { cfg, client, cache })
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Fetches `req`: a cache hit of any of its URLs, else each URL in order until one
    /// downloads and verifies. With one URL its error is returned as is; with several,
    /// `AllFailed` lists every URL and why it failed. Must run inside a tokio runtime with
    /// the time driver enabled.
    pub async fn fetch(
        &self,
        req: &FetchRequest,
        observer: &dyn Observer,
    ) -> Result<Fetched, FetchError> {
        let sources: Vec<Source> = req
            .urls
            .iter()
            .map(|u| Source::parse(u, &req.base_dir))
            .collect::<Result<_, _>>()?;
        if sources.is_empty() {
            return Err(FetchError::InvalidSource {
                input: String::new(),
                reason: "no URL given".into(),
            });
        }
        let sums = match &req.checksum {
            ChecksumSpec::SumsFile(loc) => {
                let loc = SumsLocation::parse(loc, &req.base_dir)?;
                let entries = self.load_sums(&loc).await?;
                Some((loc, entries))
            }
            _ => None,
        };
        let mut plans: Vec<(Source, Option<Expected>)> = sources
            .into_iter()
            .map(|s| {
                let expected = expected_digest(&req.checksum, &s, sums.as_ref());
                (s, Some(expected))
            })
            .collect();

        // A URL already in the cache goes first: no mirror is contacted at all.
        let hit_first = plans.iter().position(|(s, exp)| match (s, exp) {
            (Source::Local(_), _) if req.local == LocalMode::InPlace => false,
            (s, Some(Ok(exp))) => self
                .cache
                .valid(&self.key(s, exp.as_ref()), Check::Shallow)
                .is_some(),
            _ => false,
        });
        let mut order: Vec<usize> = (0..plans.len()).collect();
        if let Some(i) = hit_first {
            order.remove(i);
            order.insert(0, i);
        }

        let mut attempts: Vec<(String, FetchError)> = Vec::new();
        for (n, i) in order.iter().enumerate() {
            let (src, expected) = &mut plans[*i];
            let src = &*src;
            // `order` is a permutation of the plans, so each is taken exactly once.
            let expected = expected.take().expect("each URL is tried once");
            let result = match expected {
                Err(e) => Err(e),
                Ok(exp) => self.fetch_one(src, exp.as_ref(), req.local, observer).await,
            };
            match result {
                Ok(f) => return Ok(f),
                Err(e) => {
                    tracing::warn!(url = %src.shown(), error = %e, "fetch failed");
                    if n + 1 < order.len() {
                        observer.failed_over(&src.shown(), &e);
                    }
                    attempts.push((src.shown(), e));
                }
            }
        }
        if attempts.len() == 1 {
            let (_, e) = attempts.remove(0);
            return Err(e);
        }
        // Back into the user's order for the message.
        let mut sorted: Vec<(usize, (String, FetchError))> =
            order.into_iter().zip(attempts).collect();
        sorted.sort_by_key(|(i, _)| *i);
        Err(FetchError::AllFailed {
            attempts: sorted.into_iter().map(|(_, a)| a).collect(),
        })
    }

    fn key(&self, src: &Source, expected: Option<&Digest>) -> Key {
        Key::new(&src.identity(), &checksum_label(expected))
    }

    async fn fetch_one(
        &self,
        src: &Source,
        expected: Option<&Digest>,
        local: LocalMode,
        observer: &dyn Observer,
    ) -> Result<Fetched, FetchError> {
        match src {
            Source::Local(p) if local == LocalMode::InPlace => {
                self.verify_in_place(p, expected).await
            }
            _ => self.through_cache(src, expected, observer).await,
        }
    }

    async fn verify_in_place(
        &self,
        path: &Path,
        expected: Option<&Digest>,
    ) -> Result<Fetched, FetchError> {
        let meta = std::fs::metadata(path).map_err(|source| FetchError::LocalFile {
            path: path.to_path_buf(),
            source,
        })?;
        if !meta.is_file() {
            return Err(FetchError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let digest = match expected {
            None => None,
            Some(exp) => {
                let got = hash_blocking(path, exp.algorithm()).await?;
                check(&path.display().to_string(), exp, &got)?;
                Some(got)
            }
        };
        Ok(Fetched {
            path: path.to_path_buf(),
            url: path.display().to_string(),
            size: meta.len(),
            verified: digest.is_some(),
            digest,
            origin: Origin::Local,
            _lease: None,
        })
    }

    /// Lock, hit or download, verify, commit. See `lock` for the protocol.
    async fn through_cache(
        &self,
        src: &Source,
        expected: Option<&Digest>,
        observer: &dyn Observer,
    ) -> Result<Fetched, FetchError> {
        let shown = src.shown();
        let key = self.key(src, expected);
        let paths = self.cache.paths(&key);
        let stamp = match src {
            Source::Local(p) => Some(source_stamp(p)?),
            Source::Http(_) => None,
        };
        let check = if self.cfg.reverify_cached {
            Check::Deep
        } else {
            Check::Use
        };
        let lock_err = |source| FetchError::CacheIo {
            what: "locking",
            path: paths.lock.clone(),
            source,
        };
        let mut notified = false;
        let mut wait = WAIT_MIN;
        loop {
            // 1. A complete entry: share it.
            if self.usable(&key, Check::Shallow, &stamp).is_some()
                && let Some(lease) =
                    KeyLock::try_acquire(&paths.lock, Mode::Shared).map_err(lock_err)?
                && let Some(hit) = self.usable(&key, check, &stamp)
            {
                return Ok(self.hit(src, hit, &key, lease, Origin::Cache));
            }
            // 2. Nobody else at work on it: download it ourselves.
            if let Some(lock) =
                KeyLock::try_acquire(&paths.lock, Mode::Exclusive).map_err(lock_err)?
            {
                if let Some(hit) = self.usable(&key, check, &stamp) {
                    // Finished by someone else between our two checks.
                    if let Some(lease) = lock.downgrade().map_err(lock_err)? {
                        return Ok(self.hit(src, hit, &key, lease, Origin::Cache));
                    }
                    continue;
                }
                let digest = self.fill(src, &key, expected, observer).await?;
                let hit = self.cache.commit(
                    &key,
                    &src.file_name().unwrap_or_default(),
                    &shown,
                    &checksum_label(expected),
                    &digest,
                    stamp.clone(),
                )?;
                tracing::info!(url = %shown, path = %hit.path.display(), "downloaded and verified");
                match lock.downgrade().map_err(lock_err)? {
                    Some(lease) => return Ok(self.hit(src, hit, &key, lease, Origin::Downloaded)),
                    // Someone took the lock in flock's non-atomic downgrade; start over
                    // (the entry is complete, so the next round is a hit).
                    None => continue,
                }
            }
            // 3. Someone else downloads (or prunes) it: wait, then look again.
            if !notified {
                tracing::info!(url = %shown, "waiting for another kiln to finish downloading");
                observer.waiting(&shown);
                notified = true;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(WAIT_MAX);
        }
    }

    fn usable(&self, key: &Key, check: Check, stamp: &Option<String>) -> Option<Hit> {
        self.cache
            .valid(key, check)
            .filter(|h| stamp.is_none() || h.marker.source_stamp == *stamp)
    }

    fn hit(&self, src: &Source, hit: Hit, key: &Key, lease: KeyLock, origin: Origin) -> Fetched {
        let digest = hit
            .marker
            .digest
            .split_once(':')
            .and_then(|(a, h)| Algorithm::from_name(a).and_then(|a| Digest::new(a, h).ok()));
        let verified = hit.marker.checksum != "none";
        let size = hit.marker.size;
        self.cache.touch(key, hit.marker);
        Fetched {
            path: hit.path,
            url: src.shown(),
            size,
            digest,
            verified,
            origin,
            _lease: Some(lease),
        }
    }

    /// Gets the content into the key's partial file and checks it. Holding the exclusive
    /// lock. Leaves nothing unverified behind: on a mismatch the partial is deleted.
    async fn fill(
        &self,
        src: &Source,
        key: &Key,
        expected: Option<&Digest>,
        observer: &dyn Observer,
    ) -> Result<Digest, FetchError> {
        let shown = src.shown();
        // Stale content or marker of this key (changed on disk, or a crash before the
        // marker): never used, replaced now. A resumable partial stays.
        self.cache
            .remove_entry(key, true)
            .map_err(|source| FetchError::CacheIo {
                what: "cleaning",
                path: self.cache.dir().to_path_buf(),
                source,
            })?;
        let algorithm = expected.map_or(Algorithm::Sha256, Digest::algorithm);
        let mut full_retry_done = false;
        loop {
            let done = match src {
                Source::Http(url) => {
                    Transfer {
                        client: &self.client,
                        cache: &self.cache,
                        key,
                        url,
                        shown: &shown,
                        checksum: &checksum_label(expected),
                        algorithm,
                        verifying: expected.is_some(),
                        max_size: self.cfg.max_size,
                        resume_attempts: self.cfg.resume_attempts,
                        connect_timeout: self.cfg.connect_timeout,
                        read_timeout: self.cfg.read_timeout,
                        max_redirects: self.cfg.max_redirects,
                        observer,
                    }
                    .run()
                    .await?
                }
                Source::Local(p) => self.copy_in(p, key, algorithm).await?,
            };
            let Some(exp) = expected else {
                return Ok(done.digest);
            };
            match check(&shown, exp, &done.digest) {
                Ok(()) => return Ok(done.digest),
                Err(mismatch) => {
                    self.cache
                        .remove_partial(key)
                        .map_err(|source| FetchError::CacheIo {
                            what: "removing",
                            path: self.cache.paths(key).part,
                            source,
                        })?;
                    if done.resumed && !full_retry_done {
                        // The kept prefix may be of another version (or damaged by a
                        // crash): one clean download decides.
                        full_retry_done = true;
                        tracing::warn!(url = %shown, "checksum mismatch after resuming; downloading again from zero");
                        observer.restarted(&shown, Restart::MismatchAfterResume);
                        continue;
                    }
                    return Err(mismatch);
                }
            }
        }
    }

    /// Copies a local file into the key's partial, hashing it on the way.
    async fn copy_in(
        &self,
        src: &Path,
        key: &Key,
        algorithm: Algorithm,
    ) -> Result<Done, FetchError> {
        let part = self.cache.paths(key).part;
        let from = src.to_path_buf();
        let res = tokio::task::spawn_blocking(move || copy_hashing(&from, &part, algorithm))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
        let (digest, _size) = res.map_err(|source| {
            // A copy is not resumable: leave nothing behind.
            let _ = self.cache.remove_partial(key);
            FetchError::LocalFile {
                path: src.to_path_buf(),
                source,
            }
        })?;
        Ok(Done {
            digest,
            resumed: false,
        })
    }

    async fn load_sums(&self, loc: &SumsLocation) -> Result<Vec<SumsEntry>, FetchError> {
        let shown = loc.shown();
        let bad = |reason: String| FetchError::BadSumsFile {
            sums: shown.clone(),
            reason,
        };
        let bytes = match loc {
            SumsLocation::Local(p) => {
                let f = std::fs::File::open(p).map_err(|source| FetchError::LocalFile {
                    path: p.clone(),
                    source,
                })?;
                let mut buf = Vec::new();
                f.take(MAX_SUMS_FILE + 1)
                    .read_to_end(&mut buf)
                    .map_err(|source| FetchError::LocalFile {
                        path: p.clone(),
                        source,
                    })?;
                buf
            }
            SumsLocation::Http(u) => {
                let rq = |e: reqwest::Error, received| {
                    error::from_reqwest(
                        &shown,
                        e,
                        self.cfg.connect_timeout,
                        self.cfg.read_timeout,
                        received,
                        self.cfg.max_redirects,
                    )
                };
                let mut resp = self
                    .client
                    .get(u.clone())
                    .send()
                    .await
                    .map_err(|e| rq(e, 0))?;
                if let Some(e) = download::status_error(&shown, resp.status()) {
                    return Err(e);
                }
                let mut buf: Vec<u8> = Vec::new();
                while let Some(chunk) = resp.chunk().await.map_err(|e| rq(e, 0))? {
                    buf.extend_from_slice(&chunk);
                    if buf.len() as u64 > MAX_SUMS_FILE {
                        break;
                    }
                }
                buf
            }
        };
        if bytes.len() as u64 > MAX_SUMS_FILE {
            return Err(bad(format!(
                "larger than {MAX_SUMS_FILE} bytes, which no checksum file is"
            )));
        }
        sums::parse(&String::from_utf8_lossy(&bytes)).map_err(bad)
    }
}

/// The digest a source must have (`None` for `none`), or why it has none.
type Expected = Result<Option<Digest>, FetchError>;

/// The digest a source must have, from the request's checksum.
fn expected_digest(
    spec: &ChecksumSpec,
    src: &Source,
    sums: Option<&(SumsLocation, Vec<SumsEntry>)>,
) -> Result<Option<Digest>, FetchError> {
    match spec {
        ChecksumSpec::None => Ok(None),
        ChecksumSpec::Digest(d) => Ok(Some(d.clone())),
        ChecksumSpec::SumsFile(_) => {
            let Some((loc, entries)) = sums else {
                return Err(FetchError::BadSumsFile {
                    sums: String::new(),
                    reason: "not loaded".into(),
                });
            };
            let candidates = src.sums_candidates(loc);
            sums::lookup(entries, &candidates)
                .cloned()
                .map(Some)
                .ok_or_else(|| FetchError::NotInSumsFile {
                    sums: loc.shown(),
                    name: src.file_name().unwrap_or_default(),
                    entries: entries.len(),
                })
        }
    }
}

fn checksum_label(expected: Option<&Digest>) -> String {
    expected.map_or_else(|| "none".to_string(), Digest::to_string)
}

fn check(shown: &str, expected: &Digest, got: &Digest) -> Result<(), FetchError> {
    if expected == got {
        return Ok(());
    }
    Err(FetchError::ChecksumMismatch {
        url: shown.to_string(),
        algorithm: expected.algorithm(),
        expected: expected.hex().to_string(),
        got: got.hex().to_string(),
    })
}

async fn hash_blocking(path: &Path, algorithm: Algorithm) -> Result<Digest, FetchError> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || cache::hash_file(&p, algorithm))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(|source| FetchError::LocalFile {
            path: path.to_path_buf(),
            source,
        })
}

/// Size and mtime of a local source: a cached copy is only used while they are unchanged.
fn source_stamp(p: &Path) -> Result<String, FetchError> {
    let m = std::fs::metadata(p).map_err(|source| FetchError::LocalFile {
        path: p.to_path_buf(),
        source,
    })?;
    if !m.is_file() {
        return Err(FetchError::NotAFile {
            path: p.to_path_buf(),
        });
    }
    Ok(format!("{}:{}.{}", m.len(), m.mtime(), m.mtime_nsec()))
}

fn copy_hashing(from: &Path, part: &Path, algorithm: Algorithm) -> std::io::Result<(Digest, u64)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = std::fs::File::open(from)?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(part)?;
    let mut h = crate::checksum::Hasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
        size += n as u64;
    }
    if cache::boot_id().is_none() {
        dst.sync_all()?;
    }
    Ok((h.finish(), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_targets_cover_mirrors_and_the_sums_url() {
        let req = FetchRequest::mirrors(
            [
                "https://a.example/x.iso".to_string(),
                "http://b.example:8080/x.iso".to_string(),
                "https://a.example/y.iso".to_string(),
                "/local/x.iso".to_string(),
            ],
            ChecksumSpec::parse("file:https://sums.example/SHA256SUMS").unwrap(),
        );
        let shown: Vec<String> = req
            .network_targets()
            .unwrap()
            .iter()
            .map(Target::to_string)
            .collect();
        assert_eq!(
            shown,
            vec![
                "https://a.example:443",
                "http://b.example:8080",
                "https://sums.example:443"
            ]
        );
        let bad = FetchRequest::new("gopher://x/y", ChecksumSpec::None);
        assert!(matches!(
            bad.network_targets(),
            Err(FetchError::InvalidSource { .. })
        ));
    }

    #[test]
    fn fetch_futures_are_send() {
        // The runtime spawns fetches on its multi-thread tokio runtime.
        fn assert_send<T: Send>(_: &T) {}
        let dir = tempfile::tempdir().unwrap();
        let f = Fetcher::new(FetchConfig::new(dir.path())).unwrap();
        let req = FetchRequest::new("http://127.0.0.1:1/x", ChecksumSpec::None);
        let fut = f.fetch(&req, &crate::Silent);
        assert_send(&fut);
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<Fetcher>();
        assert_sync::<Fetched>();
    }
}
