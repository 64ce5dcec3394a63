//! The `kiln` command. Exit codes live here and only here: 0 success, 1 a build
//! failed (or was interrupted), 2 a usage, script or configuration error.

/// `println!` for the command's own output, except that a reader who went away
/// (`kiln artifacts list | head`, a test that stopped reading) is not a panic:
/// there is nobody left to tell, so the write error is dropped.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod args;
mod artifacts;
mod cache;
mod cleanup;
mod init;
mod step_cache;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use crate::caps::{AuditLog, Broker};
use crate::context::Cancel;
use crate::plan::{self, Plan};
use crate::runner::{OnError, RunOptions};
use crate::script::{LoadOptions, Program};
use crate::ui::{Mode, Redactor, Ui, Verbosity};
use args::{BuildArgs, Cli, Command, ModuleCommand, OnErrorArg, PlanArgs};

pub const EXIT_OK: u8 = 0;
pub const EXIT_BUILD_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let redactor = Redactor::default();
    init_tracing(&redactor);
    let mode = if cli.global.machine_readable {
        Mode::MachineReadable
    } else {
        Mode::Human
    };
    let verbosity = if cli.global.quiet {
        Verbosity::Quiet
    } else if cli.global.verbose > 0 {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    let ui = Ui::new(mode, verbosity, cli.global.timestamp_ui, redactor.clone());
    let code = match cli.command {
        Command::Build(args) => cmd_build(&ui, args),
        Command::Validate(args) => cmd_validate(&ui, &args),
        Command::Inspect(args) => cmd_inspect(&ui, &args),
        Command::Init { dir } => init::run(&ui, &dir),
        Command::Cleanup(args) => cleanup::run(&ui, &args),
        Command::Module(ModuleCommand::Inspect { file }) => cmd_module_inspect(&ui, &file),
        Command::Artifacts(cmd) => exit_code(artifacts::run(cmd, cli.global.machine_readable)),
        Command::Registry(cmd) => exit_code(artifacts::registry(cmd, cli.global.machine_readable)),
        Command::Cache(c) => cache::run(&ui, &c),
        Command::Version => {
            say!("kiln {}", env!("CARGO_PKG_VERSION"));
            EXIT_OK
        }
    };
    ExitCode::from(code)
}

fn exit_code(o: artifacts::Outcome) -> u8 {
    match o {
        artifacts::Outcome::Ok => EXIT_OK,
        artifacts::Outcome::Failed => EXIT_BUILD_FAILED,
        artifacts::Outcome::Usage => EXIT_USAGE,
    }
}

/// `KILN_LOG=debug` turns on logs; they go to stderr through the redactor, with
/// control characters escaped (colours only on a terminal without `NO_COLOR`).
fn init_tracing(redactor: &Redactor) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let r = redactor.clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(move || RedactingWriter {
            redactor: r.clone(),
            buf: Vec::new(),
            ansi,
        })
        .try_init();
}

/// One log event: collected whole, then redacted (so nothing in it is cut before
/// redaction), escaped and written in one piece.
struct RedactingWriter {
    redactor: Redactor,
    buf: Vec<u8>,
    ansi: bool,
}

/// Longest log event kept; the rest of a bigger one is dropped after redaction.
const MAX_LOG_EVENT: usize = 1 << 20;

impl Write for RedactingWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        // Bounded: a huge field must not grow memory without limit. Keeping a bit more
        // than the limit lets a secret at the edge still be matched whole.
        let room = (MAX_LOG_EVENT + (64 << 10)).saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactingWriter {
    fn drop(&mut self) {
        let text = self.redactor.redact(&String::from_utf8_lossy(&self.buf));
        let mut text = if self.ansi {
            crate::ui::escape_controls_but_colours(&text).into_owned()
        } else {
            crate::ui::escape_controls(&text).into_owned()
        };
        if text.len() > MAX_LOG_EVENT {
            let mut end = MAX_LOG_EVENT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str("… (log event truncated)\n");
        }
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
}

fn load_plan(ui: &Ui, args: &PlanArgs) -> Result<Program, u8> {
    let opts = LoadOptions {
        vars: args.vars.clone(),
        var_files: args.var_files.clone(),
    };
    crate::script::load(&args.path, &opts, ui.redactor()).map_err(|e| {
        report_error(ui, &e.to_string());
        EXIT_USAGE
    })
}

fn report_error(ui: &Ui, msg: &str) {
    if ui.mode() == Mode::MachineReadable {
        ui.event("error", serde_json::json!({ "message": msg }));
    } else {
        // Errors quote what guests and scripts wrote: no control characters reach the
        // terminal.
        let text = ui.redactor().redact(&format!("Error: {msg}"));
        eprintln!("{}", crate::ui::escape_controls(&text));
    }
}

fn cmd_validate(ui: &Ui, args: &PlanArgs) -> u8 {
    let program = match load_plan(ui, args) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let plan: &Plan = &program.plan;
    let selection = RunOptions {
        only: args.only.clone(),
        except: args.except.clone(),
        ..RunOptions::default()
    };
    if let Err(e) = crate::runner::select(plan, &selection) {
        report_error(ui, &e);
        return EXIT_USAGE;
    }
    // Files the builders and steps name must exist and be granted, and WASM modules
    // must import only what their steps hold, so a typo fails now, not mid-build.
    let problems = crate::runner::validate::check(&program);
    if !problems.is_empty() {
        for p in &problems {
            report_error(ui, p);
        }
        return EXIT_USAGE;
    }
    ui.plain("The build script is valid.");
    ui.event(
        "validate",
        serde_json::json!({ "ok": true, "script": plan.script_name }),
    );
    EXIT_OK
}

fn cmd_inspect(ui: &Ui, args: &PlanArgs) -> u8 {
    let program = match load_plan(ui, args) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let plan: &Plan = &program.plan;
    let grant_project = plan.project.clone();
    let grant_info = move |g: &crate::caps::Grants| resolved_paths(&grant_project, g);
    if ui.mode() == Mode::MachineReadable {
        ui.event("inspect", plan::inspect_json(plan, &grant_info));
        return EXIT_OK;
    }
    let project = plan.project.clone();
    let wasm_info = move |path: &str| -> Option<String> {
        let file = project.dir().open(path).ok()?.into_std();
        let bytes = match crate::wasm::read_component(file) {
            Ok(b) => b,
            Err(e) => return Some(format!("(cannot inspect: {e})")),
        };
        match crate::wasm::inspect(&bytes) {
            Ok(info) => Some(format!(
                "imports: {}\n{}",
                info.imports.join(", "),
                info.allow_line()
            )),
            Err(e) => Some(format!("(cannot inspect: {e})")),
        }
    };
    let text = ui
        .redactor()
        .redact(&plan::render_inspect(plan, &wasm_info, &grant_info));
    print!("{}", crate::ui::escape_controls(&text));
    EXIT_OK
}

/// Where each `read`/`write` grant leads once `~` and symlinks are resolved, when that
/// differs from what it says, and which grants kiln refuses (`/proc/self/root`).
fn resolved_paths(project: &crate::caps::Project, grants: &crate::caps::Grants) -> Vec<String> {
    use crate::caps::FsError;
    use crate::caps::fs::{READ, WRITE, resolve_grant};
    let mut out = Vec::new();
    for spec in [&READ, &WRITE] {
        for g in grants.paths(spec) {
            let what = format!("{}({})", spec.key, g.written);
            let lexical = if g.is_project() {
                project.path().to_path_buf()
            } else if Path::new(&g.path).is_absolute() {
                Path::new(&g.path).to_path_buf()
            } else {
                project.path().join(g.normalized())
            };
            match resolve_grant(project, g) {
                Ok(p) if p == lexical && g.path == g.written => {}
                Ok(p) => out.push(format!("{what} -> {}", p.display())),
                Err(FsError::Refused { reason, .. }) => {
                    out.push(format!("{what} -> refused: {reason}"))
                }
                // Missing directories are created (write) or reported when used.
                Err(e) if e.is_not_found() => {}
                Err(e) => out.push(format!("{what} -> cannot be opened: {e}")),
            }
        }
    }
    out
}

fn cmd_module_inspect(ui: &Ui, file: &Path) -> u8 {
    let bytes = match std::fs::File::open(file).and_then(crate::wasm::read_component) {
        Ok(b) => b,
        Err(e) => {
            report_error(ui, &format!("{}: {e}", file.display()));
            return EXIT_USAGE;
        }
    };
    match crate::wasm::inspect(&bytes) {
        Ok(info) => {
            // Import and export names come from the file: shown escaped.
            say!("{}", crate::ui::escape_controls(&info.to_string()));
            EXIT_OK
        }
        Err(e) => {
            report_error(ui, &format!("{}: {e}", file.display()));
            EXIT_USAGE
        }
    }
}

fn cmd_build(ui: &Ui, args: BuildArgs) -> u8 {
    let program = match load_plan(ui, &args.plan) {
        Ok(p) => Arc::new(p),
        Err(c) => return c,
    };
    let mut opts = RunOptions {
        only: args.plan.only.clone(),
        except: args.plan.except.clone(),
        parallel_builds: args.parallel_builds,
        on_error: match args.on_error {
            OnErrorArg::Cleanup => OnError::Cleanup,
            OnErrorArg::Abort => OnError::Abort,
            OnErrorArg::Ask => OnError::Ask,
        },
        force: args.force,
        debug: args.debug,
        cache: step_cache::mode(args.no_cache),
        resume: None,
        post_only: args.post_only,
        reload: Some(reloader(ui, &args.plan)),
        no_cache: args.no_cache,
    };
    let selected = match crate::runner::select(&program.plan, &opts) {
        Ok(s) => s,
        Err(e) => {
            report_error(ui, &e);
            return EXIT_USAGE;
        }
    };
    if args.dry_run {
        let plans = crate::runner::dryrun::plan(&program, &selected, args.no_cache);
        if ui.mode() == crate::ui::Mode::MachineReadable {
            ui.event(
                "dry-run",
                serde_json::json!({ "builds": crate::runner::dryrun::to_json(&plans) }),
            );
        } else {
            print!(
                "{}",
                ui.redactor().redact(&crate::runner::dryrun::render(&plans))
            );
        }
        return EXIT_OK;
    }
    if args.resume {
        let project = program.plan.project.path();
        let Some(last) = crate::runner::run_history::last_run(project) else {
            report_error(
                ui,
                &format!(
                    "--resume: no earlier run to continue in {}",
                    project.display()
                ),
            );
            return EXIT_USAGE;
        };
        let open: Vec<&String> = selected
            .iter()
            .filter(|n| last.builds.get(*n).is_some_and(|b| b.resumable()))
            .collect();
        if open.is_empty() {
            ui.plain(&format!(
                "==> Nothing to resume: run {} left no selected build unfinished",
                last.run
            ));
            return EXIT_OK;
        }
        for n in open {
            let b = &last.builds[n];
            let good = b.steps.last().map(|s| format!("step {}", s.index));
            ui.say(
                n,
                &format!(
                    "Resuming run {} ({:?}) after its last good step ({})",
                    last.run,
                    b.status,
                    good.as_deref().unwrap_or("none")
                ),
            );
        }
        opts.resume = Some(Arc::new(last));
    }
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
    runtime.block_on(run_build(ui, program, opts, selected))
}

async fn run_build(ui: &Ui, program: Arc<Program>, opts: RunOptions, selected: Vec<String>) -> u8 {
    let plan = program.plan.clone();
    let run_id = uuid::Uuid::new_v4().to_string();
    let audit_path = plan
        .project
        .path()
        .join(".kiln")
        .join("runs")
        .join(&run_id)
        .join("audit.jsonl");
    let audit = match AuditLog::open(&audit_path, ui.redactor().clone()) {
        Ok(a) => a,
        Err(e) => {
            report_error(
                ui,
                &format!("cannot create the audit log {}: {e}", audit_path.display()),
            );
            return EXIT_BUILD_FAILED;
        }
    };
    let ledger = cleanup::open_run_ledger(ui, &run_id, plan.project.path());
    let broker = Broker::with_ledger(run_id.clone(), audit, ledger.clone());
    let cancel = Cancel::new();
    spawn_signal_handler(ui.clone(), cancel.clone());
    ui.event(
        "run-start",
        serde_json::json!({ "run_uuid": run_id, "builds": selected, "audit_log": audit_path }),
    );
    let started = std::time::Instant::now();
    let recorder = crate::runner::registry_record::start(&plan);
    let outcomes = crate::runner::run_builds(
        program,
        ui.clone(),
        broker.clone(),
        opts,
        cancel.clone(),
        selected,
    )
    .await;

    let secs = started.elapsed().as_secs_f64();
    let failed: Vec<_> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    let ok: Vec<_> = outcomes.iter().filter(|o| o.error.is_none()).collect();
    ui.plain(&format!(
        "==> Wait completed after {}",
        crate::runner::run::fmt_secs(secs)
    ));
    if !failed.is_empty() {
        ui.plain("\n==> Some builds didn't complete successfully and had errors:");
        for o in &failed {
            ui.plain(&format!(
                "--> {}: {}",
                o.name,
                o.error.as_deref().unwrap_or("")
            ));
        }
    }
    if !ok.is_empty() {
        ui.plain("\n==> Builds finished. The artifacts of successful builds are:");
        for o in &ok {
            ui.plain(&format!(
                "--> {}: {}",
                o.name,
                describe_artifact(o.artifact.as_ref())
            ));
        }
    }
    let recorded = recorder
        .finish(&plan, &broker, ui, &outcomes, cancel.is_cancelled())
        .await;
    ui.plain(&format!("\nAudit log: {}", audit_path.display()));
    if let Some(l) = &ledger {
        cleanup::finish_run_ledger(ui, l);
    }
    ui.event(
        "run-end",
        serde_json::json!({ "run_uuid": run_id, "ok": failed.is_empty(), "seconds": secs, "audit_log": audit_path }),
    );
    if failed.is_empty() && recorded && !cancel.is_cancelled() {
        EXIT_OK
    } else {
        EXIT_BUILD_FAILED
    }
}

/// Re-reads the script the way this run read it (for `[r]etry` at a pause).
fn reloader(ui: &Ui, args: &PlanArgs) -> crate::runner::pause::Reloader {
    let path = args.path.clone();
    let opts = LoadOptions {
        vars: args.vars.clone(),
        var_files: args.var_files.clone(),
    };
    let redactor = ui.redactor().clone();
    crate::runner::pause::Reloader(Arc::new(move || {
        crate::script::load(&path, &opts, &redactor).map_err(|e| e.to_string())
    }))
}

fn describe_artifact(a: Option<&serde_json::Value>) -> String {
    let Some(a) = a else {
        return "(no artifact)".into();
    };
    let files: Vec<&str> = a["files"]
        .as_array()
        .map(|f| f.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let id = a["id"].as_str().unwrap_or("");
    let mut out = if files.is_empty() {
        format!("{id} (provisioned; no files produced)")
    } else {
        files.join(", ")
    };
    // published by openstack_image: where users find it (Packer prints the image id)
    if let Some(image) = a["openstack"]["id"].as_str() {
        let at = a["openstack"]["endpoint"].as_str().unwrap_or("Glance");
        out.push_str(&format!("; Glance image {image} at {at}"));
    }
    out
}

/// First SIGINT/SIGTERM cancels every build (which then unwinds its cleanup
/// stack); later ones only say that cleanup is in progress, since leaving now would
/// leak what is being removed.
fn spawn_signal_handler(ui: Ui, cancel: Cancel) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::warn!("cannot install signal handlers");
            return;
        };
        let mut first = true;
        loop {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            if first {
                ui.plain(&format!(
                    "==> Interrupted by {name}: stopping builds and cleaning up..."
                ));
                cancel.cancel(format!("interrupted by {name}"));
                first = false;
            } else {
                ui.plain("==> Cleanup in progress; kiln exits when it is done.");
            }
        }
    });
}
