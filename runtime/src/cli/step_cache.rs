//! `kiln cache list|prune`: the step cache (VM states after each step, see
//! `host::vm_cache`) and the download cache (`kiln-fetch`, under `downloads/`), both
//! under kiln's cache dir. `list` creates nothing; `prune` never removes what a running
//! build uses.

use std::time::SystemTime;

use super::args::CacheCommand;
use super::{EXIT_BUILD_FAILED, EXIT_OK, EXIT_USAGE, report_error};
use crate::host::qemu::step_cache::CacheMode;
use crate::host::vm_cache::{Prune, VmCache};
use crate::ui::{Ui, human_bytes};

/// The step cache mode for a run: off with `--no-cache`; disk layers only with
/// `KILN_CACHE_MEMORY=0` (a rebuild then boots the cached disk instead of loading the
/// VM's memory).
pub fn mode(no_cache: bool) -> CacheMode {
    if no_cache {
        CacheMode::Off
    } else if std::env::var("KILN_CACHE_MEMORY").is_ok_and(|v| v == "0") {
        CacheMode::Disk
    } else {
        CacheMode::Memory
    }
}

pub fn run(ui: &Ui, cmd: CacheCommand) -> u8 {
    match cmd {
        CacheCommand::List => list(ui),
        CacheCommand::Prune { max_size } => {
            let rule = match max_size {
                None => Prune::All,
                Some(s) => match crate::host::image::parse_size(&s) {
                    Ok(n) => Prune::MaxSize(n),
                    Err(e) => {
                        report_error(ui, &format!("--max-size: {e}"));
                        return EXIT_USAGE;
                    }
                },
            };
            prune(ui, rule)
        }
    }
}

fn ago(t: SystemTime) -> String {
    let secs = t.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        0..120 => format!("{secs}s ago"),
        120..7200 => format!("{}m ago", secs / 60),
        7200..172_800 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

fn downloads() -> Option<kiln_fetch::Cache> {
    let dir = crate::cache_dir()?.join("downloads");
    // `list` must not create it.
    dir.is_dir()
        .then(|| kiln_fetch::Cache::open(dir).ok())
        .flatten()
}

fn list(ui: &Ui) -> u8 {
    let Ok(root) = VmCache::default_location() else {
        report_error(ui, "no cache directory: set KILN_CACHE_DIR or HOME");
        return EXIT_USAGE;
    };
    let mut json_steps = Vec::new();
    ui.plain(&format!("Step cache ({}):", root.display()));
    match VmCache::open_existing(&root).map(|c| (c.list(), c)) {
        None => ui.plain("  (empty)"),
        Some((Err(e), _)) => {
            report_error(ui, &e.to_string());
            return EXIT_BUILD_FAILED;
        }
        Some((Ok(entries), cache)) => {
            if entries.is_empty() {
                ui.plain("  (empty)");
            }
            for l in &entries {
                let e = &l.entry;
                let state = match (&l.broken, &e.memory) {
                    (Some(why), _) => format!("broken: {why}"),
                    (None, Some(m)) => format!("disk + memory (qemu {})", m.qemu_version),
                    (None, None) => "disk".to_string(),
                };
                ui.plain(&format!(
                    "  {}  {} step {}/{} {}  {}  {}, used {}",
                    &e.key[..12],
                    e.build,
                    e.step,
                    e.total,
                    e.describe,
                    human_bytes(l.bytes),
                    state,
                    ago(l.last_used)
                ));
                json_steps.push(serde_json::json!({
                    "key": e.key, "build": e.build, "step": e.step, "total": e.total,
                    "describe": e.describe, "bytes": l.bytes, "memory": e.memory.is_some(),
                    "broken": l.broken,
                }));
            }
            ui.plain(&format!(
                "  {} entries, {} on disk",
                entries.len(),
                human_bytes(cache.total_bytes())
            ));
        }
    }
    let mut json_downloads = Vec::new();
    if let Some(d) = downloads() {
        ui.plain(&format!("Downloads ({}):", d.dir().display()));
        match d.list() {
            Ok(entries) if entries.is_empty() => ui.plain("  (empty)"),
            Ok(entries) => {
                for e in &entries {
                    ui.plain(&format!(
                        "  {}  {}  {}  {:?}, used {}",
                        e.key,
                        e.url,
                        human_bytes(e.size),
                        e.state,
                        ago(e.last_used)
                    ));
                    json_downloads.push(serde_json::json!({
                        "key": e.key, "url": e.url, "bytes": e.size, "state": format!("{:?}", e.state),
                    }));
                }
            }
            Err(e) => report_error(ui, &e.to_string()),
        }
    }
    ui.event(
        "cache-list",
        serde_json::json!({ "steps": json_steps, "downloads": json_downloads }),
    );
    EXIT_OK
}

fn prune(ui: &Ui, rule: Prune) -> u8 {
    let Ok(root) = VmCache::default_location() else {
        report_error(ui, "no cache directory: set KILN_CACHE_DIR or HOME");
        return EXIT_USAGE;
    };
    let mut code = EXIT_OK;
    if let Some(cache) = VmCache::open_existing(&root) {
        match cache.prune(rule) {
            Ok(r) => {
                ui.plain(&format!(
                    "Step cache: removed {} entries and {} layers ({}); {} layers in use by running builds; {} left",
                    r.removed_entries.len(),
                    r.removed_layers,
                    human_bytes(r.freed_bytes),
                    r.in_use_layers,
                    human_bytes(r.remaining_bytes)
                ));
                ui.event(
                    "cache-prune",
                    serde_json::json!({ "store": "steps", "removed": r.removed_entries.len(),
                        "freed_bytes": r.freed_bytes, "remaining_bytes": r.remaining_bytes }),
                );
            }
            Err(e) => {
                report_error(ui, &e.to_string());
                code = EXIT_BUILD_FAILED;
            }
        }
    } else {
        ui.plain("Step cache: empty");
    }
    if let Some(d) = downloads() {
        let fetch_rule = match rule {
            Prune::All => kiln_fetch::Prune::All,
            Prune::MaxSize(n) => kiln_fetch::Prune::MaxSize(n),
        };
        match d.prune(fetch_rule) {
            Ok(r) => ui.plain(&format!(
                "Downloads: removed {} ({}); {} in use",
                r.removed.len(),
                human_bytes(r.freed_bytes),
                r.in_use.len()
            )),
            Err(e) => {
                report_error(ui, &e.to_string());
                code = EXIT_BUILD_FAILED;
            }
        }
    }
    code
}
