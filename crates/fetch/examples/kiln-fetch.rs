//! A small CLI over kiln-fetch, for the benchmark and the multi-process tests.
//!
//! ```text
//! kiln-fetch --cache DIR [--checksum SPEC] [--ca-file PEM] [--copy] [--no-proxy]
//!            [--resume-attempts N] [--read-timeout SECS] [--progress] [--reverify] URL [URL...]
//! kiln-fetch --cache DIR --list
//! kiln-fetch --cache DIR --prune all|older:SECS|max:BYTES
//! ```
//!
//! Prints one JSON object on stdout (the fetched file, or the cache listing / prune
//! report); events (waiting, resumed, restarted, 10 % progress lines) go to stderr.
//! Exit status 1 on a fetch error, 2 on bad usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant, UNIX_EPOCH};

use kiln_fetch::{
    CacheEntry, ChecksumSpec, FetchConfig, FetchError, FetchRequest, Fetcher, LocalMode, Observer,
    Progress, ProxySettings, Prune, Restart,
};

struct Events {
    progress: bool,
    last_decile: Mutex<u64>,
}

impl Observer for Events {
    fn waiting(&self, url: &str) {
        eprintln!("waiting for another kiln to finish downloading {url}");
    }
    fn progress(&self, p: &Progress) {
        if !self.progress {
            return;
        }
        let Some(f) = p.fraction() else { return };
        // fraction() is within 0..=1, so the decile is 0..=10.
        let decile = (0..=10u8)
            .rev()
            .find(|d| f * 10.0 >= f64::from(*d))
            .map_or(0, u64::from);
        let Ok(mut last) = self.last_decile.lock() else {
            return;
        };
        if decile > *last || p.done {
            *last = decile;
            eprintln!(
                "{:3.0}% {} of {} at {:.1} MiB/s",
                f * 100.0,
                p.bytes,
                p.total.unwrap_or(0),
                p.rate / (1024.0 * 1024.0)
            );
        }
    }
    fn resumed(&self, url: &str, offset: u64) {
        eprintln!("resuming {url} at byte {offset}");
    }
    fn restarted(&self, url: &str, why: Restart) {
        eprintln!("restarting {url} from zero: {why}");
    }
    fn retrying(&self, url: &str, error: &FetchError, attempt: u32, max: u32) {
        eprintln!("retrying {url} ({attempt}/{max}): {error}");
    }
    fn failed_over(&self, url: &str, error: &FetchError) {
        eprintln!("{url} failed, trying the next URL: {error}");
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("kiln-fetch: {msg}");
    eprintln!(
        "usage: kiln-fetch --cache DIR [--checksum SPEC] [--ca-file PEM] [--copy] [--no-proxy] \
         [--resume-attempts N] [--read-timeout SECS] [--progress] [--reverify] URL [URL...]\n       \
         kiln-fetch --cache DIR --list | --prune all|older:SECS|max:BYTES"
    );
    ExitCode::from(2)
}

fn entry_json(e: &CacheEntry) -> serde_json::Value {
    let secs = |t: std::time::SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    serde_json::json!({
        "key": e.key, "url": e.url, "checksum": e.checksum, "size": e.size,
        "created": secs(e.created), "last_used": secs(e.last_used),
        "path": e.path, "state": format!("{:?}", e.state),
    })
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut cache: Option<PathBuf> = None;
    let mut checksum = "none".to_string();
    let mut ca_file = None;
    let mut copy = false;
    let mut no_proxy = false;
    let mut resume_attempts = None;
    let mut read_timeout = None;
    let mut progress = false;
    let mut reverify = false;
    let mut list = false;
    let mut prune: Option<String> = None;
    let mut urls = Vec::new();
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let r: Result<(), String> = (|| {
            match a.as_str() {
                "--cache" => cache = Some(PathBuf::from(value("--cache")?)),
                "--checksum" => checksum = value("--checksum")?,
                "--ca-file" => ca_file = Some(PathBuf::from(value("--ca-file")?)),
                "--copy" => copy = true,
                "--no-proxy" => no_proxy = true,
                "--progress" => progress = true,
                "--reverify" => reverify = true,
                "--list" => list = true,
                "--prune" => prune = Some(value("--prune")?),
                "--resume-attempts" => {
                    resume_attempts = Some(
                        value("--resume-attempts")?
                            .parse::<u32>()
                            .map_err(|e| e.to_string())?,
                    )
                }
                "--read-timeout" => {
                    read_timeout = Some(Duration::from_secs(
                        value("--read-timeout")?
                            .parse::<u64>()
                            .map_err(|e| e.to_string())?,
                    ))
                }
                s if s.starts_with("--") => return Err(format!("unknown option {s}")),
                s => urls.push(s.to_string()),
            }
            Ok(())
        })();
        if let Err(e) = r {
            return usage(&e);
        }
    }
    let Some(cache) = cache else {
        return usage("--cache is required");
    };
    let mut cfg = FetchConfig::new(cache);
    cfg.ca_file = ca_file;
    if no_proxy {
        cfg.proxy = ProxySettings::none();
    }
    cfg.reverify_cached = reverify;
    if let Some(n) = resume_attempts {
        cfg.resume_attempts = n;
    }
    if let Some(t) = read_timeout {
        cfg.read_timeout = t;
    }
    let fetcher = match Fetcher::new(cfg) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if list {
        return match fetcher.cache().list() {
            Ok(entries) => {
                let v: Vec<_> = entries.iter().map(entry_json).collect();
                println!("{}", serde_json::Value::Array(v));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(rule) = prune {
        let rule = match rule.split_once(':') {
            None if rule == "all" => Prune::All,
            Some(("older", s)) => match s.parse() {
                Ok(s) => Prune::OlderThan(Duration::from_secs(s)),
                Err(_) => return usage("--prune older:SECS"),
            },
            Some(("max", b)) => match b.parse() {
                Ok(b) => Prune::MaxSize(b),
                Err(_) => return usage("--prune max:BYTES"),
            },
            _ => return usage("--prune all|older:SECS|max:BYTES"),
        };
        return match fetcher.cache().prune(rule) {
            Ok(r) => {
                println!(
                    "{}",
                    serde_json::json!({
                        "removed": r.removed.iter().map(entry_json).collect::<Vec<_>>(),
                        "in_use": r.in_use.iter().map(entry_json).collect::<Vec<_>>(),
                        "freed_bytes": r.freed_bytes,
                    })
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    if urls.is_empty() {
        return usage("no URL given");
    }
    let spec = match ChecksumSpec::parse(&checksum) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: invalid checksum: {e}");
            return ExitCode::from(1);
        }
    };
    if spec == ChecksumSpec::None {
        eprintln!("warning: no checksum given; the download is not verified");
    }
    let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let req = FetchRequest::mirrors(urls, spec)
        .local(if copy {
            LocalMode::Copy
        } else {
            LocalMode::InPlace
        })
        .base_dir(base);
    let events = Events {
        progress,
        last_decile: Mutex::new(0),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let start = Instant::now();
    match rt.block_on(fetcher.fetch(&req, &events)) {
        Ok(f) => {
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({
                    "path": f.path, "url": f.url, "size": f.size,
                    "digest": f.digest.as_ref().map(|d| d.to_string()),
                    "verified": f.verified, "origin": format!("{:?}", f.origin),
                    "seconds": secs,
                    "bytes_per_sec": if secs > 0.0 { f.size as f64 / secs } else { 0.0 },
                })
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
