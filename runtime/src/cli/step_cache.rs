//! The step cache's half of `kiln cache list|prune` (VM states after each step, see
//! `host::vm_cache`), called from `cli/cache.rs`, and the run's cache mode. `list`
//! creates nothing; `prune` never removes what a running build uses.

use std::time::SystemTime;

use super::{EXIT_BUILD_FAILED, EXIT_OK, report_error};
use crate::host::qemu::step_cache::CacheMode;
use crate::host::vm_cache::{Prune, VmCache};
use crate::ui::{Mode, Ui, human_bytes};

/// The kind of the step cache's entries, in every line and JSON event.
pub const STEP: &str = "step";

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

fn ago(t: SystemTime) -> String {
    let secs = t.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        0..120 => format!("{secs}s ago"),
        120..7200 => format!("{}m ago", secs / 60),
        7200..172_800 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// Prints the step cache's entries; in machine-readable mode one `cache-entry` event
/// each, and returns its totals as a `kinds` item for `cache-list`.
pub fn list(ui: &Ui) -> Result<Option<serde_json::Value>, u8> {
    let Ok(root) = VmCache::default_location() else {
        return Ok(None);
    };
    let human = ui.mode() != Mode::MachineReadable;
    let Some(cache) = VmCache::open_existing(&root) else {
        if human {
            say!("Step cache: {}\n  (empty)", root.display());
        }
        return Ok(None);
    };
    let entries = cache.list().map_err(|e| {
        report_error(ui, &e.to_string());
        EXIT_BUILD_FAILED
    })?;
    if human {
        say!("Step cache: {}", root.display());
        if entries.is_empty() {
            say!("  (empty)");
        }
    }
    for l in &entries {
        let e = &l.entry;
        let state = match (&l.broken, &e.memory) {
            (Some(why), _) => format!("broken: {why}"),
            (None, Some(m)) => format!("disk + memory (qemu {})", m.qemu_version),
            (None, None) => "disk".to_string(),
        };
        if human {
            say!(
                "{STEP:<9} {:>10}  {}  {} step {}/{} {}  ({}, used {})",
                human_bytes(l.bytes),
                &e.key[..12.min(e.key.len())],
                e.build,
                e.step,
                e.total,
                e.describe,
                state,
                ago(l.last_used)
            );
        } else {
            ui.event(
                "cache-entry",
                serde_json::json!({
                    "kind": STEP, "key": e.key, "build": e.build, "step": e.step,
                    "total": e.total, "describe": e.describe, "size": l.bytes,
                    "memory": e.memory.is_some(), "broken": l.broken,
                }),
            );
        }
    }
    let total = cache.total_bytes();
    if human {
        say!("{STEP}: {} entries, {}", entries.len(), human_bytes(total));
    }
    Ok(Some(serde_json::json!({
        "kind": STEP, "dir": root, "entries": entries.len(), "bytes": total,
    })))
}

/// Prunes the step cache by the same rule as the downloads.
pub fn prune(ui: &Ui, rule: kiln_fetch::Prune) -> u8 {
    let Ok(root) = VmCache::default_location() else {
        return EXIT_OK;
    };
    let Some(cache) = VmCache::open_existing(&root) else {
        if ui.mode() != Mode::MachineReadable {
            say!("{STEP}: the step cache is empty");
        }
        return EXIT_OK;
    };
    let rule = match rule {
        kiln_fetch::Prune::All => Prune::All,
        kiln_fetch::Prune::MaxSize(n) => Prune::MaxSize(n),
        kiln_fetch::Prune::OlderThan(d) => Prune::OlderThan(d),
    };
    match cache.prune(rule) {
        Ok(r) => {
            if ui.mode() == Mode::MachineReadable {
                ui.event(
                    "cache-prune",
                    serde_json::json!({ "kind": STEP, "removed": r.removed_entries.len(),
                        "freed_bytes": r.freed_bytes, "remaining_bytes": r.remaining_bytes,
                        "in_use_layers": r.in_use_layers }),
                );
            } else {
                for e in &r.removed_entries {
                    say!(
                        "removed {STEP} {} step {}/{} {}",
                        e.build,
                        e.step,
                        e.total,
                        e.describe
                    );
                }
                say!(
                    "{STEP}: removed {} entries and {} layers, freed {}; {} layers in use by running builds; {} left",
                    r.removed_entries.len(),
                    r.removed_layers,
                    human_bytes(r.freed_bytes),
                    r.in_use_layers,
                    human_bytes(r.remaining_bytes)
                );
            }
            EXIT_OK
        }
        Err(e) => {
            report_error(ui, &e.to_string());
            EXIT_BUILD_FAILED
        }
    }
}
