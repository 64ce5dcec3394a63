//! Command-line arguments (clap types only).

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "Build machine images with sandboxed build logic",
    long_about = "kiln builds machine images (QEMU disk images, Vagrant boxes, ...) from Rhai build \
                  scripts. Build logic runs sandboxed and reaches machines, clouds and files only \
                  through capabilities the script grants; every use is audited.\n\n\
                  Logs: KILN_LOG=debug (separate from the build output)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: GlobalArgs,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// More output (-v); repeat for more.
    #[arg(short, long, global = true, action = ArgAction::Count, help_heading = "Global options")]
    pub verbose: u8,
    /// Only errors.
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    pub quiet: bool,
    /// One JSON event per line on stdout instead of human output.
    #[arg(long, global = true, help_heading = "Global options")]
    pub machine_readable: bool,
    /// Prefix every line with an RFC 3339 timestamp.
    #[arg(long, global = true, help_heading = "Global options")]
    pub timestamp_ui: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the builds of a build script.
    Build(BuildArgs),
    /// Check a build script without touching anything.
    Validate(PlanArgs),
    /// Show the plan: sources, builds, steps, post-processors and their grants.
    Inspect(PlanArgs),
    /// Write a starter build script.
    Init {
        /// Directory to create the project in.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Remove what earlier runs left behind (cloud resources, temp dirs, remote processes).
    Cleanup(CleanupArgs),
    /// WASM provisioner modules.
    #[command(subcommand)]
    Module(ModuleCommand),
    /// The artifact registry: list, show, promote, revoke, restore, ancestry.
    #[command(subcommand)]
    Artifacts(super::artifacts::ArtifactsCommand),
    /// Serve the artifact registry (API, Terraform state, web page); manage its tokens.
    #[command(subcommand)]
    Registry(super::artifacts::RegistryCommand),
    /// kiln's caches (downloaded inputs): list or prune them.
    #[command(subcommand)]
    Cache(super::cache::CacheCommand),
    /// Print kiln's version.
    Version,
}

#[derive(Subcommand, Debug)]
pub enum ModuleCommand {
    /// Print what a component imports and exports, its digest, and the grants it needs.
    Inspect {
        /// The .wasm component.
        file: PathBuf,
    },
}

#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// A build script, or a directory holding build.rhai.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Set a variable: --var name=value (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// Read variables from a file (JSON object or `name = "value"` lines; repeatable).
    #[arg(long = "var-file", value_name = "FILE")]
    pub var_files: Vec<PathBuf>,
    /// Only these builds (`build.source`, `build`, or `source`; `*` globs; comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// All builds except these (same patterns as --only).
    #[arg(long, value_delimiter = ',', conflicts_with = "only")]
    pub except: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct BuildArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// How many builds run at once (0 = all).
    #[arg(long, short = 'j', default_value_t = 0)]
    pub parallel_builds: usize,
    /// On failure: clean up what the build made, keep it for debugging, or ask
    /// (retry the step after editing the script, open a shell on the machine, ...).
    #[arg(long, value_enum, default_value_t = OnErrorArg::Cleanup)]
    pub on_error: OnErrorArg,
    /// Overwrite existing outputs instead of refusing.
    #[arg(long)]
    pub force: bool,
    /// Pause before every step with the --on-error=ask menu plus [n]ext.
    #[arg(long)]
    pub debug: bool,
    /// Do not reuse or record cached results: VM step states (the step cache) and the
    /// oci builder's layers.
    #[arg(long)]
    pub no_cache: bool,
    /// Continue the last run's failed or interrupted builds from their last good step.
    #[arg(long, conflicts_with_all = ["no_cache", "post_only"])]
    pub resume: bool,
    /// Only re-run the post-processors, on the artifacts of the last successful run.
    #[arg(long, conflicts_with_all = ["no_cache", "debug"])]
    pub post_only: bool,
    /// Print what each build would do (cached steps, steps to run, resources,
    /// grants) and touch nothing.
    #[arg(long, conflicts_with_all = ["resume", "post_only"])]
    pub dry_run: bool,
}

/// `kiln cleanup` (its logic is in `cli/cleanup.rs`).
#[derive(Args, Debug, Clone)]
pub struct CleanupArgs {
    /// Only this run (its uuid, as the build printed it).
    #[arg(long, value_name = "RUN_UUID")]
    pub run: Option<String>,
    /// List what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only runs started longer ago than this ("2h", "30m", "7d").
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Option<std::time::Duration>,
    /// Also sweep this EC2 region for resources tagged by kiln whose `kiln:expires` has
    /// passed (runs whose ledger is lost); repeatable. Credentials come from the
    /// environment or `~/.aws` as for a build.
    #[arg(long = "region", value_name = "REGION")]
    pub regions: Vec<String>,
    /// The EC2 endpoint for --region sweeps (moto, LocalStack, a VPC endpoint).
    #[arg(long, value_name = "URL", requires = "regions")]
    pub endpoint: Option<String>,
    /// The AWS profile for --region sweeps.
    #[arg(long, value_name = "NAME", requires = "regions")]
    pub profile: Option<String>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like \"2h\" or \"30m\" ({e})"))
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnErrorArg {
    Cleanup,
    Abort,
    Ask,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?}: the name is empty"));
    }
    Ok((k.to_string(), v.to_string()))
}
