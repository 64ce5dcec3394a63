//! `kiln cleanup`: removes what earlier runs left behind, from the resource ledger
//! ([`crate::ledger`]): EC2 resources (found by id, or by the name, client token or tags
//! an intent recorded, then everything still tagged with the run), QEMU runtime dirs and
//! partial output directories, and a step's script still running on an `ssh_host`.
//!
//! It never touches a live run: it takes each run's lock first and skips a run whose
//! lock is held. Every removal goes through a capability facade under a scope that holds
//! exactly what the run's records name, so it is checked and audited like a build
//! (`<state>/cleanup/<uuid>.audit.jsonl`). Removing what is already gone counts as done,
//! so running it twice is harmless. `--region` also sweeps a region for kiln-tagged
//! resources whose `kiln:expires` has passed (a ledger lost with its machine).
//!
//! This module also holds the build's side of the ledger: opening it at the start of
//! `kiln build` (and saying, in one line, if earlier runs left something) and closing the
//! run at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rhai::{Array, Dynamic, Map};

use super::args::CleanupArgs;
use super::{EXIT_BUILD_FAILED, EXIT_OK, EXIT_USAGE, report_error};
use crate::caps::ec2::{ClientSpec, EXPIRES_AFTER, audit_observer, reap};
use crate::caps::{AuditLog, Broker, Grants, Holder, Project, Scope, Use, fs, machine, ssh};
use crate::host::machine::Machine;
use crate::ledger::{Kind, Ledger, Record, Resolution, RunInfo, RunLedger, RunStatus};
use crate::ui::Ui;

/// Opens the ledger for a new run; says in one line if dead runs left something. A
/// build goes on without a ledger (with a warning) rather than not at all.
pub(super) fn open_run_ledger(ui: &Ui, run_id: &str, project: &Path) -> Option<RunLedger> {
    let ledger = match Ledger::open_default() {
        Ok(l) => l,
        Err(e) => {
            ui.plain(&format!(
                "kiln: warning: {e}; what this run leaves after a crash cannot be found by kiln cleanup"
            ));
            return None;
        }
    };
    match ledger.stale_runs() {
        Ok(stale) => {
            if let Some(line) = crate::ledger::stale_line(&stale) {
                ui.plain(&line);
            }
        }
        Err(e) => tracing::warn!("cannot read the resource ledger: {e}"),
    }
    match ledger.begin_run(run_id, project) {
        Ok(r) => Some(r),
        Err(e) => {
            ui.plain(&format!(
                "kiln: warning: {e}; what this run leaves after a crash cannot be found by kiln cleanup"
            ));
            None
        }
    }
}

/// Closes the run in the ledger; names what it left, if anything.
pub(super) fn finish_run_ledger(ui: &Ui, run: &RunLedger) {
    match run.finish() {
        Ok(open) if !open.is_empty() => {
            ui.plain(&format!(
                "kiln: this run left {} resource{} behind; `kiln cleanup --run {}` removes {}",
                open.len(),
                if open.len() == 1 { "" } else { "s" },
                run.run_id(),
                if open.len() == 1 { "it" } else { "them" },
            ));
            for r in &open {
                ui.plain(&format!("  left: {}", r.describe()));
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot close the run in the resource ledger: {e}"),
    }
}

pub(super) fn run(ui: &Ui, args: &CleanupArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            report_error(ui, &format!("cannot start the async runtime: {e}"));
            return EXIT_BUILD_FAILED;
        }
    };
    runtime.block_on(cleanup(ui, args))
}

/// What one invocation did, for the summary.
#[derive(Default)]
struct Tally {
    runs: usize,
    removed: usize,
    listed: usize,
    failed: usize,
}

async fn cleanup(ui: &Ui, args: &CleanupArgs) -> u8 {
    if let Some(run) = &args.run
        && uuid::Uuid::parse_str(run).is_err()
    {
        report_error(
            ui,
            &format!(
                "--run {run:?} is not a run uuid (the build prints it as run_uuid and in the audit log path)"
            ),
        );
        return EXIT_USAGE;
    }
    let ledger = match Ledger::open_default() {
        Ok(l) => l,
        Err(e) => {
            report_error(ui, &e.to_string());
            return EXIT_BUILD_FAILED;
        }
    };
    let runs = match &args.run {
        Some(id) => match ledger.run(id) {
            Ok(r) => vec![r],
            Err(e) => {
                report_error(ui, &e.to_string());
                return EXIT_USAGE;
            }
        },
        None => match ledger.runs() {
            Ok(r) => r,
            Err(e) => {
                report_error(ui, &e.to_string());
                return EXIT_BUILD_FAILED;
            }
        },
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let audit = match open_audit(ui, &ledger) {
        Some(a) => a,
        None => return EXIT_BUILD_FAILED,
    };
    let broker = Broker::new(uuid::Uuid::new_v4().to_string(), audit);
    let mut tally = Tally::default();
    let mut live = BTreeSet::new();
    let mut busy = false;
    for run in runs {
        if run.status == RunStatus::Cleaned && args.run.is_none() {
            continue;
        }
        if let Some(d) = args.older_than
            && now - run.started_unix < i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
        {
            continue;
        }
        // Never a live run; the lock also keeps a second `kiln cleanup` off this one.
        let lock = match ledger.try_lock(&run.run) {
            Ok(Some(l)) => l,
            Ok(None) => {
                live.insert(run.run.clone());
                if args.run.is_some() {
                    ui.plain(&format!(
                        "Run {} is still running (process {}), or another kiln cleanup is working on it: skipped",
                        run.run, run.pid
                    ));
                    busy = true;
                }
                continue;
            }
            Err(e) => {
                report_error(ui, &e.to_string());
                tally.failed += 1;
                continue;
            }
        };
        let records = match ledger.records(&run.run) {
            Ok(r) => r,
            Err(e) => {
                report_error(ui, &e.to_string());
                tally.failed += 1;
                continue;
            }
        };
        clean_run(
            ui,
            &ledger,
            &broker,
            &run,
            &records,
            args.dry_run,
            &mut tally,
        )
        .await;
        drop(lock);
    }
    for region in &args.regions {
        sweep_region(ui, &broker, &ledger, args, region, &live, &mut tally).await;
    }
    let s = |n: usize| if n == 1 { "" } else { "s" };
    if args.dry_run {
        if tally.listed == 0 {
            ui.plain("Nothing to clean up.");
        } else {
            ui.plain(&format!(
                "{} leftover{} of {} run{}; run `kiln cleanup` to remove {}.",
                tally.listed,
                s(tally.listed),
                tally.runs,
                s(tally.runs),
                if tally.listed == 1 { "it" } else { "them" },
            ));
        }
    } else if tally.removed == 0 && tally.failed == 0 {
        ui.plain("Nothing to clean up.");
    } else {
        ui.plain(&format!(
            "Removed {} leftover{} of {} run{}.",
            tally.removed,
            s(tally.removed),
            tally.runs,
            s(tally.runs)
        ));
    }
    if tally.failed > 0 {
        ui.plain(&format!(
            "{} could not be removed (see above); they stay on record: run `kiln cleanup` again once the cause is fixed.",
            tally.failed
        ));
        return EXIT_BUILD_FAILED;
    }
    if busy { EXIT_BUILD_FAILED } else { EXIT_OK }
}

fn open_audit(ui: &Ui, ledger: &Ledger) -> Option<AuditLog> {
    let path = ledger
        .dir()
        .join("cleanup")
        .join(format!("{}.audit.jsonl", uuid::Uuid::new_v4()));
    match AuditLog::open(&path, ui.redactor().clone()) {
        Ok(a) => Some(a),
        Err(e) => {
            report_error(
                ui,
                &format!("cannot create the audit log {}: {e}", path.display()),
            );
            None
        }
    }
}

/// The grants a cleanup of `records` needs: EC2 in their regions, writing the
/// directories they name, SSH to their machines and reading those machines' key files.
fn grants_for(records: &[Record]) -> Grants {
    let strings = |v: BTreeSet<String>| -> Dynamic {
        Dynamic::from_array(v.into_iter().map(Dynamic::from).collect::<Array>())
    };
    let mut regions = BTreeSet::new();
    let mut dirs = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    let mut reads = BTreeSet::new();
    for r in records {
        match r.kind {
            k if k.is_cloud() => {
                regions.insert(r.scope.clone());
            }
            Kind::QemuRuntimeDir | Kind::OutputDir => {
                if let Some(p) = &r.resource_id {
                    dirs.insert(p.clone());
                }
            }
            Kind::SshTarget => {
                if let Some(rc) = reconnect_of(r) {
                    hosts.insert(rc.host.clone());
                    for f in [&rc.private_key_file, &rc.known_hosts]
                        .into_iter()
                        .flatten()
                    {
                        if let Some(d) = Path::new(f).parent() {
                            reads.insert(d.display().to_string());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let mut allow = Map::new();
    allow.insert("ec2".into(), strings(regions));
    allow.insert("write".into(), strings(dirs));
    allow.insert("ssh".into(), strings(hosts));
    allow.insert("read".into(), strings(reads));
    allow.insert("machine".into(), Dynamic::from(true));
    let mut g = Grants::default();
    if let Err(e) = g.apply_allow(&allow) {
        tracing::warn!("cleanup grants: {e}");
    }
    g
}

fn reconnect_of(r: &Record) -> Option<ssh::Reconnect> {
    serde_json::from_value(r.detail.get("reconnect")?.clone()).ok()
}

fn client_spec_of(r: &Record) -> ClientSpec {
    r.detail
        .get("client")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default()
}

async fn clean_run(
    ui: &Ui,
    ledger: &Arc<Ledger>,
    broker: &Arc<Broker>,
    run: &RunInfo,
    records: &[Record],
    dry_run: bool,
    tally: &mut Tally,
) {
    let open: Vec<&Record> = records.iter().filter(|r| r.is_leftover()).collect();
    let cloud_regions: BTreeMap<String, ClientSpec> = records
        .iter()
        .filter(|r| r.kind.is_cloud())
        .map(|r| (r.scope.clone(), client_spec_of(r)))
        .collect();
    // A killed run whose records are all closed may still have tagged resources (a copy
    // whose answer was lost): the sweep below looks once more. Otherwise: done.
    if open.is_empty() && (cloud_regions.is_empty() || run.status == RunStatus::Cleaned) {
        if !dry_run {
            let _ = ledger.set_run_status(&run.run, RunStatus::Cleaned);
            ledger.forget_lock(&run.run);
        }
        return;
    }
    let mut out = RunReport {
        ui,
        header: format!(
            "Run {} (started {}, project {}):",
            run.run, run.started, run.project
        ),
        said: false,
    };
    let scope = broker.scope(
        &format!("run {}", run.run),
        "kiln cleanup",
        Holder::Source,
        grants_for(records),
    );
    let mut failures = 0;
    let before = (tally.removed, tally.listed);

    // 1. Scripts still running on machines, while those machines still exist.
    for r in open.iter().filter(|r| r.kind == Kind::RemoteProcess) {
        if dry_run {
            out.line(&format!("would stop: {}", r.describe()));
            tally.listed += 1;
            continue;
        }
        match stop_remote(ledger, &scope, records, r).await {
            Ok(Some(note)) => {
                out.line(&format!("skipped: {} ({note})", r.describe()));
                let _ = ledger.resolve(r.id, Resolution::Released, Some(&note));
            }
            Ok(None) => {
                out.line(&format!("stopped: {}", r.describe()));
                let _ = ledger.resolve(r.id, Resolution::Deleted, None);
                tally.removed += 1;
            }
            Err(e) => {
                out.line(&format!("FAILED: {}: {e}", r.describe()));
                let _ = ledger.note(r.id, &e);
                failures += 1;
            }
        }
    }

    // 2. Cloud resources, newest first (an AMI before its instance, the instance before
    //    its security group and key pair).
    let mut clients: BTreeMap<String, Result<kiln_ec2::Ec2Client, String>> = BTreeMap::new();
    for (region, spec) in &cloud_regions {
        clients.insert(region.clone(), make_client(&scope, spec, region));
    }
    // In a dry run, what the records stand for, so the tag listing does not repeat it.
    let mut listed_ids: BTreeSet<String> = BTreeSet::new();
    for r in open.iter().rev().filter(|r| r.kind.is_cloud()) {
        let client = match clients.get(&r.scope) {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                out.line(&format!("FAILED: {}: {e}", r.describe()));
                failures += 1;
                continue;
            }
            None => continue,
        };
        let leftover = leftover_of(r);
        if dry_run {
            match reap::resolve(client, &leftover).await {
                Ok(ids) if ids.is_empty() => {
                    out.line(&format!(
                        "would close: {} (nothing of it is in EC2)",
                        r.describe()
                    ));
                }
                Ok(ids) => {
                    out.line(&format!(
                        "would remove: {} ({})",
                        r.describe(),
                        ids.join(", ")
                    ));
                    listed_ids.extend(ids);
                }
                Err(e) => out.line(&format!(
                    "would remove: {} (cannot look it up: {e})",
                    r.describe()
                )),
            }
            tally.listed += 1;
            continue;
        }
        let l2 = ledger.clone();
        let id = r.id;
        let note = move |snaps: &[String]| {
            let _ = l2.add_detail(id, &serde_json::json!({ "snapshots": snaps }));
        };
        match reap::reap(client, &leftover, &note).await {
            Ok(done) => {
                if done.is_empty() {
                    out.line(&format!("already gone: {}", r.describe()));
                }
                for d in &done {
                    out.line(&format!("removed: {d}"));
                }
                tally.removed += done.len();
                let _ = ledger.resolve(r.id, Resolution::Deleted, None);
            }
            Err(e) => {
                out.line(&format!("FAILED: {}: {e}", r.describe()));
                let _ = ledger.note(r.id, &e.to_string());
                failures += 1;
            }
        }
    }

    // 3. Local directories.
    for r in open
        .iter()
        .filter(|r| matches!(r.kind, Kind::QemuRuntimeDir | Kind::OutputDir))
    {
        if dry_run {
            out.line(&format!("would remove: {}", r.describe()));
            tally.listed += 1;
            continue;
        }
        match remove_dir(&scope, r) {
            Ok(true) => {
                out.line(&format!("removed: {}", r.describe()));
                tally.removed += 1;
                let _ = ledger.resolve(r.id, Resolution::Deleted, None);
            }
            Ok(false) => {
                out.line(&format!("already gone: {}", r.describe()));
                let _ = ledger.resolve(r.id, Resolution::Deleted, None);
            }
            Err(e) => {
                out.line(&format!("FAILED: {}: {e}", r.describe()));
                let _ = ledger.note(r.id, &e);
                failures += 1;
            }
        }
    }

    // 4. Anything else still tagged with the run and not an artifact (its volumes, a
    //    snapshot whose AMI is gone, a copy whose id was never recorded).
    for (region, client) in &clients {
        let Ok(client) = client else { continue };
        let filter = reap::SweepFilter::Run(run.run.clone());
        match reap::find_for_sweep(client, &filter, &listed_ids).await {
            Ok(found) => {
                if dry_run {
                    for (k, r) in &found {
                        out.line(&format!(
                            "would remove: {} {} in {region} (tagged kiln:run={})",
                            k.describe(),
                            r.id,
                            run.run
                        ));
                        tally.listed += 1;
                    }
                    continue;
                }
                let (done, failed) = reap::sweep(client, &found).await;
                for d in &done {
                    out.line(&format!("removed: {d} (tagged kiln:run={})", run.run));
                }
                tally.removed += done.len();
                for f in &failed {
                    out.line(&format!("FAILED: {f}"));
                }
                failures += failed.len();
            }
            Err(e) => {
                out.line(&format!(
                    "FAILED: listing what is tagged kiln:run={} in {region}: {e}",
                    run.run
                ));
                failures += 1;
            }
        }
    }

    tally.failed += failures;
    if (tally.removed, tally.listed) != before || failures > 0 {
        tally.runs += 1;
    }
    if !dry_run && failures == 0 {
        let _ = ledger.set_run_status(&run.run, RunStatus::Cleaned);
        ledger.forget_lock(&run.run);
    }
}

/// A run's lines, under a header printed with the first of them.
struct RunReport<'a> {
    ui: &'a Ui,
    header: String,
    said: bool,
}

impl RunReport<'_> {
    fn line(&mut self, msg: &str) {
        if !self.said {
            self.ui.plain(&self.header);
            self.said = true;
        }
        self.ui.plain(&format!("  {msg}"));
    }
}

fn leftover_of(r: &Record) -> reap::Leftover {
    reap::Leftover {
        kind: r.kind,
        region: r.scope.clone(),
        id: r.resource_id.clone(),
        name: r.name.clone(),
        token: r.token.clone(),
        run: r.run.clone(),
        not_before: r.created_unix,
        snapshots: r
            .detail
            .get("snapshots")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default(),
    }
}

fn make_client(
    scope: &Scope,
    spec: &ClientSpec,
    region: &str,
) -> Result<kiln_ec2::Ec2Client, String> {
    scope
        .check(&Use::name(&crate::caps::ec2::SPEC, region))
        .map_err(|e| e.to_string())?;
    spec.client(
        Some(region),
        &spec.credentials_from_env(),
        Some(audit_observer(scope.clone())),
    )
    .map_err(|e| {
        let vars: Vec<&str> = [&spec.access_key_env, &spec.secret_key_env]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if vars.is_empty() {
            format!("cannot reach EC2 in {region}: {e}")
        } else {
            format!(
                "cannot reach EC2 in {region}: {e} (the build read its keys from {}: export them here too)",
                vars.join(", ")
            )
        }
    })
}

/// Removes a recorded directory through the `write` grant for it. False if it was gone.
fn remove_dir(scope: &Scope, r: &Record) -> Result<bool, String> {
    let Some(path) = r.resource_id.as_deref() else {
        return Ok(false);
    };
    let p = Path::new(path);
    // Only what kiln makes: an absolute path that is not a root, and for runtime dirs
    // the name kiln gives them.
    let name_ok = p.file_name().is_some_and(|n| {
        r.kind != Kind::QemuRuntimeDir || n.to_string_lossy().starts_with("kiln-qemu-")
    });
    if !p.is_absolute() || p.parent().is_none() || !name_ok {
        return Err(format!(
            "refusing to remove {path:?}: not a directory kiln creates"
        ));
    }
    scope
        .run_sync(
            &Use::path(&fs::WRITE, path),
            "remove directory",
            || match std::fs::remove_dir_all(p) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            },
        )
        .map_err(|e| e.to_string())
}

/// Stops a step's script on its machine. `Some(why)` when the machine cannot be
/// reached again (its record says why; such processes ended with their machine).
async fn stop_remote(
    ledger: &Ledger,
    scope: &Scope,
    records: &[Record],
    r: &Record,
) -> Result<Option<String>, String> {
    let target = records
        .iter()
        .rev()
        .find(|t| t.kind == Kind::SshTarget && t.scope == r.scope);
    let Some(target) = target else {
        return Ok(Some("no record of how its machine was reached".into()));
    };
    let Some(rc) = reconnect_of(target) else {
        let why = target
            .detail
            .get("why_not")
            .and_then(|w| w.as_str())
            .unwrap_or("its machine cannot be reached again");
        return Ok(Some(why.to_string()));
    };
    let script = r.name.as_deref().unwrap_or_default();
    let hex = script
        .strip_prefix("/tmp/kiln-shell-")
        .and_then(|s| s.strip_suffix(".sh"))
        .unwrap_or_default();
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{script:?} is not a script path kiln uses"));
    }
    let cfg = crate::host::ssh::SshConfig {
        host: Some(rc.host.clone()),
        port: Some(rc.port),
        user: rc.user.clone(),
        private_key_file: rc.private_key_file.clone(),
        known_hosts: rc.known_hosts.clone(),
        host_key: rc.host_key.clone(),
        agent: rc.agent,
        timeout: Some("60s".into()),
        handshake_attempts: Some(2),
        ..Default::default()
    };
    let project = Project::open(ledger.dir()).map_err(|e| e.to_string())?;
    let m = ssh::connect(scope, &project, cfg, Default::default())
        .await
        .map_err(|e| format!("cannot reach {}: {e}", r.scope))?;
    let pidf = format!("{script}.pid");
    // Children first: once the script dies they are re-parented and lost to -P.
    let cmd = format!(
        "p=$(cat {pidf} 2>/dev/null); [ -n \"$p\" ] && {{ pkill -TERM -P $p; kill -TERM $p; }} 2>/dev/null; rm -f {script} {pidf}; true"
    );
    let machine: Arc<dyn Machine> = Arc::new(m);
    let cap = machine::MachineCap::new(machine.clone(), scope.clone(), Arc::new(|_, _| {}));
    let out = cap
        .exec_quiet(&cmd, &format!("stop {script}"))
        .await
        .map_err(|e| e.to_string());
    machine.close().await;
    out.map(|_| None)
}

/// `kiln cleanup --region R`: kiln-tagged resources in R whose `kiln:expires` has
/// passed (with `--older-than D`: whose run started more than D ago), except those of
/// runs that are alive here.
async fn sweep_region(
    ui: &Ui,
    broker: &Arc<Broker>,
    ledger: &Ledger,
    args: &CleanupArgs,
    region: &str,
    live: &BTreeSet<String>,
    tally: &mut Tally,
) {
    let mut allow = Map::new();
    allow.insert(
        "ec2".into(),
        Dynamic::from_array(vec![Dynamic::from(region.to_string())]),
    );
    let mut g = Grants::default();
    if let Err(e) = g.apply_allow(&allow) {
        ui.plain(&format!("  FAILED: region {region:?}: {e}"));
        tally.failed += 1;
        return;
    }
    let scope = broker.scope(
        &format!("region {region}"),
        "kiln cleanup --region",
        Holder::Source,
        g,
    );
    let spec = ClientSpec {
        endpoint: args.endpoint.clone(),
        profile: args.profile.clone(),
        ..Default::default()
    };
    let client = match make_client(&scope, &spec, region) {
        Ok(c) => c,
        Err(e) => {
            ui.plain(&format!("  FAILED: {e}"));
            tally.failed += 1;
            return;
        }
    };
    // Runs that are alive here keep their resources, whatever their tags say.
    let mut except = live.clone();
    if let Ok(runs) = ledger.runs() {
        for r in runs.iter().filter(|r| r.status == RunStatus::Running) {
            if matches!(ledger.try_lock(&r.run), Ok(None)) {
                except.insert(r.run.clone());
            }
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let cutoff = match args.older_than {
        // Started more than D ago = expires (start + EXPIRES_AFTER) before now - D + EXPIRES_AFTER.
        Some(d) => now + EXPIRES_AFTER - d.min(Duration::from_secs(100 * 365 * 86400)),
        None => now,
    };
    let filter = reap::SweepFilter::ExpiredBefore {
        cutoff,
        except_runs: except,
    };
    ui.plain(&format!("Region {region} (resources tagged kiln:expires):"));
    match reap::find_for_sweep(&client, &filter, &BTreeSet::new()).await {
        Ok(found) if found.is_empty() => {}
        Ok(found) => {
            tally.runs += 1;
            if args.dry_run {
                for (k, r) in &found {
                    ui.plain(&format!(
                        "  would remove: {} {} (run {})",
                        k.describe(),
                        r.id,
                        r.tags.get(reap::RUN_TAG).map(String::as_str).unwrap_or("?")
                    ));
                    tally.listed += 1;
                }
                return;
            }
            let (done, failed) = reap::sweep(&client, &found).await;
            for d in &done {
                ui.plain(&format!("  removed: {d}"));
            }
            tally.removed += done.len();
            for f in &failed {
                ui.plain(&format!("  FAILED: {f}"));
            }
            tally.failed += failed.len();
        }
        Err(e) => {
            ui.plain(&format!("  FAILED: {e}"));
            tally.failed += 1;
        }
    }
}
