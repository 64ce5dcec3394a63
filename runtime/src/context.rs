//! Per-build state shared by the runner and the Rhai objects (`ctx`, machines): who is
//! running, its cleanup stack, cancellation (Ctrl-C, step timeouts), and the typed
//! reasons a step fails. It sits below both the runner and the script layer, so
//! neither depends on the other through it: the runner hands itself in as a
//! [`Provision`] for `ctx.provision(m)`.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::caps::machine::{CallError, MachineCap};
use crate::caps::{Broker, Denied, Holder, Scope, ScopeError};
use crate::cleanup::{CleanupId, CleanupStack};
use crate::host::machine::{ExecOutput, MachineError};
pub use crate::host::qemu::step_cache::{CacheMode, PlannedStep};
use crate::plan::{BuildSpec, Plan, SourceSpec};
use crate::ui::Ui;
use crate::wasm::WasmRuntime;

/// Why a step (or a machine call inside one) failed: the runner matches on these,
/// never on message text.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StepError {
    /// The broker refused a capability; the message names the `allow` line.
    #[error(transparent)]
    Denied(Denied),
    /// The machine dropped the connection (a reboot): `expect_disconnect` accepts it.
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// The step's timeout, Ctrl-C or SIGTERM stopped it.
    #[error("{0}")]
    Cancelled(String),
    /// A command exited non-zero (or was killed) where success was required.
    #[error("{message}")]
    Exit { code: i32, message: String },
    /// Anything else, with its message.
    #[error("{0}")]
    Failed(String),
}

impl StepError {
    pub fn is_disconnect(&self) -> bool {
        matches!(self, StepError::Disconnected(_))
    }
}

impl From<CallError> for StepError {
    fn from(e: CallError) -> Self {
        match e {
            ScopeError::Denied(d) => StepError::Denied(d),
            ScopeError::Failed(MachineError::Disconnected(m)) => StepError::Disconnected(m),
            ScopeError::Failed(other) => StepError::Failed(other.to_string()),
        }
    }
}

/// A command's exit as a step result: success if its status is in `valid`, else an
/// [`StepError::Exit`] quoting the last lines of its stderr.
pub fn check_exit(out: &ExecOutput, valid: &[i32]) -> Result<(), StepError> {
    if out.signal.is_none() && valid.contains(&out.exit_code) {
        return Ok(());
    }
    let mut message = match &out.signal {
        Some(sig) => format!("command was killed by signal {sig}"),
        None => format!("command exited with status {}", out.exit_code),
    };
    let tail = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = tail.lines().rev().take(3).collect();
    if !tail.is_empty() {
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        message.push_str(&format!(" (stderr: {})", tail.join(" | ")));
    }
    Err(StepError::Exit {
        code: out.exit_code,
        message,
    })
}

/// Runs a build's provisioning steps on a machine: the runner implements it, and the
/// builder script reaches it as `ctx.provision(m)`.
pub trait Provision: Send + Sync {
    fn provision(
        &self,
        rt: &Arc<BuildRt>,
        engine: &rhai::Engine,
        machine: &MachineCap,
    ) -> Result<(), String>;

    /// The build's steps with their cache keys, before any machine exists (a step
    /// cache looks its longest cached prefix up with them before booting a VM).
    fn step_keys(&self, rt: &Arc<BuildRt>) -> Vec<PlannedStep>;
}

/// How a run treats step states and pauses (`--no-cache`, `--debug`, breakpoints),
/// for the host code of builders.
#[derive(Debug, Clone, Default)]
pub struct StepControl {
    pub cache: CacheMode,
    /// Step `n` is where the user wants the machine live (the first `breakpoint()`
    /// when there is a terminal): a cache restores no further than the step before.
    pub stop_at: Option<usize>,
}

/// A cancellation token that remembers why it was cancelled.
#[derive(Clone, Default)]
pub struct Cancel {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    parent: Option<Box<Cancel>>,
}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    /// A child: cancelled with its parent, or on its own.
    pub fn child(&self) -> Cancel {
        Cancel {
            token: self.token.child_token(),
            reason: Arc::new(Mutex::new(None)),
            parent: Some(Box::new(self.clone())),
        }
    }

    pub fn cancel(&self, reason: impl Into<String>) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason.into());
        }
        drop(r);
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Why this token (or the nearest cancelled ancestor) was cancelled.
    pub fn reason(&self) -> Option<String> {
        if !self.token.is_cancelled() {
            return None;
        }
        if let Some(r) = self.parent.as_ref().and_then(|p| p.reason()) {
            return Some(r);
        }
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .or_else(|| Some("cancelled".into()))
    }

    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }
}

/// Everything one (build, source) pair needs while it runs.
pub struct BuildRt {
    /// `build.source`, as shown in the UI.
    pub label: String,
    pub build: BuildSpec,
    pub source: SourceSpec,
    pub plan: Arc<Plan>,
    pub ui: Ui,
    pub broker: Arc<Broker>,
    pub cleanup: CleanupStack,
    pub handle: tokio::runtime::Handle,
    pub cancel: Cancel,
    current: Mutex<Cancel>,
    pub force: bool,
    /// `--no-cache`: run every step, reuse no cached step result.
    pub no_cache: bool,
    pub started: time::OffsetDateTime,
    /// The builder's own scope (its grants).
    pub builder_scope: Scope,
    pub wasm: Arc<WasmRuntime>,
    /// The runner, for `ctx.provision(m)`.
    pub provisioner: Arc<dyn Provision>,
    /// Files and directories the build created, by path, until kept as artifacts.
    owned: Mutex<std::collections::HashMap<String, CleanupId>>,
    /// Host objects that must live as long as the build (an HTTP server for the guest).
    held: Mutex<Vec<Box<dyn std::any::Any + Send>>>,
    /// What the builder adds to the step cache's base key (its base image digest, say).
    cache_base: Mutex<String>,
    control: std::sync::OnceLock<StepControl>,
    /// Time spent waiting for the user at a pause menu: not build time.
    paused: Mutex<Duration>,
    /// The user chose `[a]bort` at a pause menu: keep everything on failure.
    keep_on_failure: std::sync::atomic::AtomicBool,
}

impl BuildRt {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        build: BuildSpec,
        source: SourceSpec,
        plan: Arc<Plan>,
        ui: Ui,
        broker: Arc<Broker>,
        cancel: Cancel,
        force: bool,
        no_cache: bool,
        wasm: Arc<WasmRuntime>,
        provisioner: Arc<dyn Provision>,
    ) -> Arc<Self> {
        let label = crate::plan::pair_name(&build, &source);
        // What host code creates for this build is on record in the run's ledger.
        let cleanup = CleanupStack::with_ledger(broker.ledger().map(|l| l.for_build(&label)));
        Arc::new_cyclic(|me: &std::sync::Weak<BuildRt>| {
            let builder_scope = broker
                .scope(
                    &label,
                    &format!("builder {}", source.builder),
                    Holder::Source,
                    source.grants.clone(),
                )
                .with_stop_reason(Self::stop_reason_of(me.clone()));
            BuildRt {
                label,
                build,
                source,
                plan,
                ui,
                broker,
                cleanup,
                handle: tokio::runtime::Handle::current(),
                current: Mutex::new(cancel.clone()),
                cancel,
                force,
                no_cache,
                started: time::OffsetDateTime::now_utc(),
                builder_scope,
                wasm,
                provisioner,
                owned: Mutex::new(Default::default()),
                held: Mutex::new(Vec::new()),
                cache_base: Mutex::new(String::new()),
                control: std::sync::OnceLock::new(),
                paused: Mutex::new(Duration::ZERO),
                keep_on_failure: std::sync::atomic::AtomicBool::new(false),
            }
        })
    }

    /// Why the build's current work stops, read through a weak handle (scopes live
    /// inside the build; a strong one would keep it alive forever).
    pub fn stop_reason_of(me: std::sync::Weak<BuildRt>) -> crate::caps::StopReason {
        Arc::new(move || me.upgrade().and_then(|rt| rt.stop_reason()))
    }

    /// Remembers that `path` was created under cleanup entry `id`.
    pub fn own(&self, path: &str, id: CleanupId) {
        self.owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_string(), id);
    }

    /// Adds `part` to the base of this build's step cache keys (a builder calls it
    /// with what its steps start from, e.g. the digest of its base image).
    pub fn add_step_cache_base(&self, part: &str) {
        let mut b = self.cache_base.lock().unwrap_or_else(|p| p.into_inner());
        b.push_str(part);
        b.push('\n');
    }

    pub fn step_cache_base(&self) -> String {
        self.cache_base
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets how this build treats step states and pauses (once, before it starts).
    pub fn set_step_control(&self, c: StepControl) {
        let _ = self.control.set(c);
    }

    pub fn step_control(&self) -> StepControl {
        self.control.get().cloned().unwrap_or_default()
    }

    /// Adds time the build waited for the user (the clock stops at a pause menu).
    pub fn add_paused(&self, d: Duration) {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) += d;
    }

    pub fn paused(&self) -> Duration {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The user asked to keep everything if the build fails (`[a]bort`).
    pub fn keep_on_failure(&self) {
        self.keep_on_failure
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn keeps_on_failure(&self) -> bool {
        self.keep_on_failure
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Keeps `thing` alive until the build ends.
    pub fn hold(&self, thing: Box<dyn std::any::Any + Send>) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(thing);
    }

    /// `path` becomes part of the artifact: it is no longer removed on failure.
    /// Returns false if the build did not create it.
    pub fn keep(&self, path: &str) -> bool {
        let id = self
            .owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
        id.is_some_and(|id| self.cleanup.release(id))
    }

    fn current(&self) -> Cancel {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why the running work should stop, if it should (checked by Rhai's progress hook).
    pub fn stop_reason(&self) -> Option<String> {
        self.current().reason()
    }

    /// Runs `fut` to completion from a blocking (Rhai) thread, unless the build or the
    /// current step is cancelled first; then the future is dropped and the reason
    /// returned.
    pub fn block_on<F: Future>(&self, fut: F) -> Result<F::Output, String> {
        let c = self.current();
        self.handle.block_on(async {
            tokio::select! {
                biased;
                _ = c.cancelled() => Err(c.reason().unwrap_or_else(|| "cancelled".into())),
                r = fut => Ok(r),
            }
        })
    }

    /// Makes a child cancellation the current one for the duration of a step, with an
    /// optional deadline. Dropping the guard restores the build's token.
    pub fn begin_step(self: &Arc<Self>, timeout: Option<Duration>) -> StepGuard {
        let child = self.cancel.child();
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = child.clone();
        let timer = timeout.map(|t| {
            let c = child.clone();
            self.handle.spawn(async move {
                tokio::time::sleep(t).await;
                c.cancel(format!("timed out after {}", humantime::format_duration(t)));
            })
        });
        StepGuard {
            rt: self.clone(),
            timer,
        }
    }
}

pub struct StepGuard {
    rt: Arc<BuildRt>,
    timer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for StepGuard {
    fn drop(&mut self) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        *self.rt.current.lock().unwrap_or_else(|p| p.into_inner()) = self.rt.cancel.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_reports_parent_reason_first() {
        let parent = Cancel::new();
        let child = parent.child();
        assert!(child.reason().is_none());
        parent.cancel("interrupted");
        assert!(child.is_cancelled());
        assert_eq!(child.reason().as_deref(), Some("interrupted"));
    }

    #[test]
    fn child_alone_keeps_parent_running() {
        let parent = Cancel::new();
        let child = parent.child();
        child.cancel("timed out after 1s");
        assert!(!parent.is_cancelled());
        assert_eq!(child.reason().as_deref(), Some("timed out after 1s"));
    }
}
