//! Per-build state shared by the orchestrator and the Rhai objects (`ctx`, machines):
//! who is running, its cleanup stack, and cancellation (Ctrl-C, step timeouts).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::cleanup::CleanupStack;
use crate::caps::{Broker, Scope};
use crate::plan::{BuildSpec, Plan, SourceSpec};
use crate::ui::Ui;

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
    pub started: time::OffsetDateTime,
    /// The builder's own scope (its grants).
    pub builder_scope: Scope,
    pub wasm: Arc<crate::build::wasm_step::WasmRuntime>,
    /// Files and directories the build created, by path, until kept as artifacts.
    owned: Mutex<std::collections::HashMap<String, super::cleanup::CleanupId>>,
    /// Host objects that must live as long as the build (an HTTP server for the guest).
    held: Mutex<Vec<Box<dyn std::any::Any + Send>>>,
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
        wasm: Arc<crate::build::wasm_step::WasmRuntime>,
    ) -> Self {
        let label = crate::plan::pair_name(&build, &source);
        let builder_scope = broker.scope(
            &label,
            &format!("builder {}", source.builder),
            source.grants.clone(),
        );
        BuildRt {
            label,
            build,
            source,
            plan,
            ui,
            broker,
            cleanup: CleanupStack::new(),
            handle: tokio::runtime::Handle::current(),
            current: Mutex::new(cancel.clone()),
            cancel,
            force,
            started: time::OffsetDateTime::now_utc(),
            builder_scope,
            wasm,
            owned: Mutex::new(Default::default()),
            held: Mutex::new(Vec::new()),
        }
    }

    /// Remembers that `path` was created under cleanup entry `id`.
    pub fn own(&self, path: &str, id: super::cleanup::CleanupId) {
        self.owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_string(), id);
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
