//! `kiln cache list` and `kiln cache prune`: kiln's caches under `$KILN_CACHE_DIR`
//! (default `~/.cache/kiln`). Each line names its cache kind: `download` for inputs
//! fetched by URL (`downloads/`), `step` for the VM states the step cache keeps after
//! each step (`steps/vm`, its half is `cli/step_cache.rs`); both are pruned here. The
//! WASM compile cache (`wasm/`) is listed as a total and rebuilt on demand. An entry a
//! build is using holds a shared lock and is never pruned.

use std::path::Path;
use std::time::{Duration, SystemTime};

use clap::Subcommand;
use kiln_fetch::{Cache, CacheEntry, EntryState, Prune};

use super::{EXIT_BUILD_FAILED, EXIT_OK, EXIT_USAGE, report_error};
use crate::ui::{Mode, Ui, human_bytes};

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List cached entries: downloads (size, last use, state, URL and checksum) and
    /// step states (build, step, size, last use).
    List,
    /// Remove cached downloads and step states that no build is using: all of them,
    /// or only the least recently used until each cache fits --max-size, or those
    /// unused for longer than --older-than.
    Prune {
        /// Keep the cache at most this big ("20G", "500M"), least recently used first out.
        #[arg(long, value_name = "SIZE", conflicts_with = "older_than")]
        max_size: Option<String>,
        /// Remove what was not used for this long ("30d", "12h").
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
    },
}

/// The kind of the download cache's entries, in every line and JSON event.
const DOWNLOAD: &str = "download";

pub fn run(ui: &Ui, cmd: &CacheCommand) -> u8 {
    let Some(dir) = crate::caps::net::fetch::cache_dir() else {
        report_error(
            ui,
            "no cache directory: set KILN_CACHE_DIR (or HOME, for ~/.cache/kiln)",
        );
        return EXIT_USAGE;
    };
    match cmd {
        CacheCommand::List => list(ui, &dir),
        CacheCommand::Prune {
            max_size,
            older_than,
        } => {
            let rule = match (max_size, older_than) {
                (Some(s), _) => match crate::script::value::parse_size(s) {
                    Some(n) => Prune::MaxSize(n),
                    None => {
                        report_error(ui, &format!("--max-size {s:?} is not a size like \"20G\""));
                        return EXIT_USAGE;
                    }
                },
                (None, Some(d)) => match humantime::parse_duration(d) {
                    Ok(d) => Prune::OlderThan(d),
                    Err(e) => {
                        report_error(
                            ui,
                            &format!("--older-than {d:?} is not a duration like \"30d\": {e}"),
                        );
                        return EXIT_USAGE;
                    }
                },
                (None, None) => Prune::All,
            };
            let code = prune(ui, &dir, rule);
            code.max(super::step_cache::prune(ui, rule))
        }
    }
}

fn open(ui: &Ui, dir: &Path) -> Option<Cache> {
    match Cache::open(dir) {
        Ok(c) => Some(c),
        Err(e) => {
            report_error(ui, &e.to_string());
            None
        }
    }
}

fn state(s: EntryState) -> &'static str {
    match s {
        EntryState::Complete => "complete",
        EntryState::Partial => "partial",
        EntryState::Broken => "broken",
    }
}

fn when(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .to_string()
}

fn entry_json(e: &CacheEntry) -> serde_json::Value {
    serde_json::json!({
        "kind": DOWNLOAD,
        "key": e.key,
        "url": e.url,
        "checksum": e.checksum,
        "size": e.size,
        "state": state(e.state),
        "last_used": when(e.last_used),
        "created": when(e.created),
        "path": e.path,
    })
}

/// Files and bytes of the WASM compile cache, if there is one.
fn wasm_totals() -> Option<(usize, u64, std::path::PathBuf)> {
    let dir = crate::cache_dir()?.join("wasm");
    let rd = std::fs::read_dir(&dir).ok()?;
    let (mut n, mut bytes) = (0usize, 0u64);
    for e in rd.flatten() {
        if let Ok(m) = e.metadata()
            && m.is_file()
        {
            n += 1;
            bytes += m.len();
        }
    }
    Some((n, bytes, dir))
}

fn list(ui: &Ui, dir: &Path) -> u8 {
    let Some(cache) = open(ui, dir) else {
        return EXIT_BUILD_FAILED;
    };
    let entries = match cache.list() {
        Ok(e) => e,
        Err(e) => {
            report_error(ui, &e.to_string());
            return EXIT_BUILD_FAILED;
        }
    };
    let total: u64 = entries.iter().map(|e| e.size).sum();
    let wasm = wasm_totals();
    if ui.mode() == Mode::MachineReadable {
        for e in &entries {
            ui.event("cache-entry", entry_json(e));
        }
        let mut kinds = vec![serde_json::json!({
            "kind": DOWNLOAD, "dir": dir, "entries": entries.len(), "bytes": total,
        })];
        match super::step_cache::list(ui) {
            Ok(Some(steps)) => kinds.push(steps),
            Ok(None) => {}
            Err(code) => return code,
        }
        if let Some((n, bytes, wdir)) = &wasm {
            kinds.push(
                serde_json::json!({ "kind": "wasm", "dir": wdir, "entries": n, "bytes": bytes }),
            );
        }
        ui.event("cache-list", serde_json::json!({ "kinds": kinds }));
        return EXIT_OK;
    }
    say!("Downloads: {}", dir.display());
    if entries.is_empty() {
        say!("  (empty)");
    } else {
        say!(
            "{:<9} {:>10}  {:<20}  {:<8}  URL (checksum)",
            "KIND",
            "SIZE",
            "LAST USED",
            "STATE"
        );
        for e in &entries {
            say!(
                "{:<9} {:>10}  {:<20}  {:<8}  {} ({})",
                DOWNLOAD,
                human_bytes(e.size),
                when(e.last_used),
                state(e.state),
                e.url,
                short_checksum(&e.checksum)
            );
        }
    }
    say!(
        "{DOWNLOAD}: {} entries, {}",
        entries.len(),
        human_bytes(total)
    );
    if let Some((n, bytes, wdir)) = wasm {
        say!(
            "wasm: {n} compiled components, {} in {} (rebuilt on demand; not pruned here)",
            human_bytes(bytes),
            wdir.display()
        );
    }
    match super::step_cache::list(ui) {
        Ok(_) => EXIT_OK,
        Err(code) => code,
    }
}

/// `sha256:0123456789ab…`: enough to recognise, short enough for a line.
fn short_checksum(c: &str) -> String {
    match c.split_once(':') {
        Some((algo, hex)) if hex.len() > 12 => format!("{algo}:{}…", &hex[..12]),
        _ => c.to_string(),
    }
}

fn prune(ui: &Ui, dir: &Path, rule: Prune) -> u8 {
    let Some(cache) = open(ui, dir) else {
        return EXIT_BUILD_FAILED;
    };
    let report = match cache.prune(rule) {
        Ok(r) => r,
        Err(e) => {
            report_error(ui, &e.to_string());
            return EXIT_BUILD_FAILED;
        }
    };
    if ui.mode() == Mode::MachineReadable {
        ui.event(
            "cache-prune",
            serde_json::json!({
                "kind": DOWNLOAD,
                "removed": report.removed.iter().map(entry_json).collect::<Vec<_>>(),
                "in_use": report.in_use.iter().map(entry_json).collect::<Vec<_>>(),
                "freed_bytes": report.freed_bytes,
            }),
        );
        return EXIT_OK;
    }
    for e in &report.removed {
        say!(
            "removed {DOWNLOAD} {} ({}, {})",
            e.url,
            human_bytes(e.size),
            state(e.state)
        );
    }
    for e in &report.in_use {
        say!("kept {DOWNLOAD} {} (in use by a running build)", e.url);
    }
    say!(
        "{DOWNLOAD}: removed {} entries, freed {}",
        report.removed.len(),
        human_bytes(report.freed_bytes)
    );
    EXIT_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_shortened_for_the_listing() {
        assert_eq!(
            short_checksum("sha256:0123456789abcdef0123"),
            "sha256:0123456789ab…"
        );
        assert_eq!(short_checksum("none"), "none");
    }
}
