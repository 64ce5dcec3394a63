//! Shared helpers: a fetcher without proxies, a recording observer, served test files.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_fetch::testkit::{self, HttpServer};
use kiln_fetch::{FetchConfig, FetchError, Fetcher, Observer, Progress, ProxySettings, Restart};

/// A config for `cache` that ignores the environment's proxies.
pub fn config(cache: &Path) -> FetchConfig {
    let mut c = FetchConfig::new(cache);
    c.proxy = ProxySettings::none();
    c
}

pub fn fetcher(cache: &Path) -> Fetcher {
    Fetcher::new(config(cache)).expect("fetcher")
}

/// A file in the server's root with deterministic mixed content; returns its SHA-256.
pub fn serve_file(server: &HttpServer, name: &str, size: u64, seed: u64) -> String {
    let path = server.root().join(name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    testkit::write_mixed_file(&path, size, seed).expect("write test file")
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Waiting(String),
    Resumed(u64),
    Restarted(Restart),
    Retrying(u32),
    FailedOver(String),
    Done(u64),
}

/// Records what the fetch reported.
#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<Event>>,
    pub progress: Mutex<Vec<Progress>>,
}

impl Recorder {
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
    pub fn waited(&self) -> bool {
        self.events().iter().any(|e| matches!(e, Event::Waiting(_)))
    }
    fn push(&self, e: Event) {
        self.events.lock().unwrap().push(e);
    }
}

impl Observer for Recorder {
    fn waiting(&self, url: &str) {
        self.push(Event::Waiting(url.into()));
    }
    fn progress(&self, p: &Progress) {
        if p.done {
            self.push(Event::Done(p.bytes));
        }
        self.progress.lock().unwrap().push(p.clone());
    }
    fn resumed(&self, _url: &str, offset: u64) {
        self.push(Event::Resumed(offset));
    }
    fn restarted(&self, _url: &str, why: Restart) {
        self.push(Event::Restarted(why));
    }
    fn retrying(&self, _url: &str, _e: &FetchError, attempt: u32, _max: u32) {
        self.push(Event::Retrying(attempt));
    }
    fn failed_over(&self, url: &str, _e: &FetchError) {
        self.push(Event::FailedOver(url.into()));
    }
}

/// Files in the cache directory other than lock files.
pub fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_none_or(|e| e != "lock"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A port nothing listens on (bound, then released).
pub fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
