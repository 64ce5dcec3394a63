//! The broker: the one checkpoint every host call passes.
//!
//! A [`Scope`] is "this step of this build, holding these grants". Capability facades
//! call [`Scope::run`] (async) or [`Scope::run_sync`] around every operation: it checks
//! the [`Use`] against the grants, times the operation, and writes one audit line
//! with the real duration and the error text. A refusal is audited too and returns a
//! [`Denied`] that says exactly which `allow` line to add, and where. Nothing else in
//! kiln writes capability audit lines, so every path (Rhai, WASM, builders) records
//! the same call the same way.
//!
//! The broker also keeps the run's capability state ([`Broker::extension`]): what a
//! capability must remember between calls of one run (the registry connection, what
//! each build resolved and reported), reached from any scope without the layers in
//! between knowing of it.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::audit::{AuditLog, AuditRecord, now_rfc3339};
use super::grants::{Grants, Use};

/// A refused capability use.
#[derive(Debug, Clone, thiserror::Error)]
#[error("denied: {who} is not granted {what}; to grant it, add to {hint}: {allow}")]
pub struct Denied {
    /// "step 2 (wasm) of build \"web\"".
    pub who: String,
    /// `read("files/x")`.
    pub what: String,
    /// Where the `allow` goes: "the step's options", "the source's options".
    pub hint: &'static str,
    /// `allow: #{ read: ["files"] }`.
    pub allow: String,
}

/// Who holds a scope, which decides where the user grants more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// A provisioning step: `allow` goes in the step's options.
    Step,
    /// A builder: `allow` goes in `source(name, builder, #{ allow: ... })`.
    Source,
    /// A post-processor: it gets what its inputs and outputs need.
    PostProcessor,
}

impl Holder {
    fn hint(self) -> &'static str {
        match self {
            Holder::Step => "the step's options",
            Holder::Source => "the source's options (source(name, builder, #{ allow: ... }))",
            Holder::PostProcessor => "the post-processor's options",
        }
    }
}

/// Shared by every scope of a run.
pub struct Broker {
    run_id: String,
    audit: AuditLog,
    ledger: Option<crate::ledger::RunLedger>,
    extensions: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl Broker {
    pub fn new(run_id: impl Into<String>, audit: AuditLog) -> Arc<Self> {
        Self::with_ledger(run_id, audit, None)
    }

    /// A broker whose builds record what they create in the run's resource ledger.
    pub fn with_ledger(
        run_id: impl Into<String>,
        audit: AuditLog,
        ledger: Option<crate::ledger::RunLedger>,
    ) -> Arc<Self> {
        Arc::new(Broker {
            run_id: run_id.into(),
            audit,
            ledger,
            extensions: Mutex::new(HashMap::new()),
        })
    }

    /// The run's resource ledger, if kiln could open it.
    pub fn ledger(&self) -> Option<&crate::ledger::RunLedger> {
        self.ledger.as_ref()
    }

    /// The run's one `T`, created on first use: state a capability keeps for the whole
    /// run (each capability owns its type, so none sees another's).
    pub fn extension<T: Any + Send + Sync + Default>(&self) -> Arc<T> {
        let mut map = self.extensions.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()));
        match entry.clone().downcast::<T>() {
            Ok(t) => t,
            // Unreachable: entries are keyed by their own TypeId. Replace rather than panic.
            Err(_) => {
                let t = Arc::new(T::default());
                *entry = t.clone();
                t
            }
        }
    }

    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// The run's redactor: every secret value read in the run is registered here.
    pub fn redactor(&self) -> &crate::ui::Redactor {
        self.audit.redactor()
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// A scope for one build/step with its grants.
    pub fn scope(
        self: &Arc<Self>,
        build: &str,
        step: &str,
        holder: Holder,
        grants: Grants,
    ) -> Scope {
        Scope {
            broker: self.clone(),
            build: build.into(),
            step: step.into(),
            holder,
            grants: Arc::new(grants),
            stop_reason: None,
        }
    }
}

/// Why the work a scope runs was stopped (Ctrl-C, a step timeout), for audit lines of
/// operations that never finished.
pub type StopReason = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// A caller (build + step) with its grants. Cheap to clone.
#[derive(Clone)]
pub struct Scope {
    broker: Arc<Broker>,
    build: String,
    step: String,
    holder: Holder,
    grants: Arc<Grants>,
    stop_reason: Option<StopReason>,
}

/// Either the broker refused, or the operation itself failed.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError<E> {
    #[error(transparent)]
    Denied(Denied),
    #[error("{0}")]
    Failed(E),
}

impl Scope {
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    pub fn step(&self) -> &str {
        &self.step
    }

    pub fn build(&self) -> &str {
        &self.build
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The same build with another step name and grants.
    pub fn with_step(&self, step: &str, holder: Holder, grants: Grants) -> Scope {
        Scope {
            stop_reason: self.stop_reason.clone(),
            ..self.broker.scope(&self.build, step, holder, grants)
        }
    }

    /// Where a cancelled operation's audit line finds why it was cancelled.
    pub fn with_stop_reason(mut self, reason: StopReason) -> Scope {
        self.stop_reason = Some(reason);
        self
    }

    /// Checks `u` against the grants; a refusal is audited here. Facades use
    /// [`Scope::run`] instead, which also audits the outcome.
    pub fn check(&self, u: &Use) -> Result<(), Denied> {
        if self.grants.allows(u) {
            return Ok(());
        }
        self.write(u, "", "denied", 0.0);
        tracing::debug!(step = %self.step, use_ = %u, "denied");
        Err(Denied {
            who: format!("{} of build {:?}", self.step, self.build),
            what: u.to_string(),
            hint: self.holder.hint(),
            allow: u.allow_line(),
        })
    }

    /// Checks `u`, runs `op`, and audits the outcome (`ok` or `error: <message>`) with
    /// its duration. If the future is dropped before it finishes (the step was
    /// cancelled), the line says `cancelled`.
    pub async fn run<T, E, F>(&self, u: &Use, detail: &str, op: F) -> Result<T, ScopeError<E>>
    where
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        self.run_with(u, detail, op, |_| "ok".to_string()).await
    }

    /// [`Scope::run`] with the success outcome described by `ok` (e.g. `ok (exit 0)`).
    pub async fn run_with<T, E, F>(
        &self,
        u: &Use,
        detail: &str,
        op: F,
        ok: impl FnOnce(&T) -> String,
    ) -> Result<T, ScopeError<E>>
    where
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        self.check(u).map_err(ScopeError::Denied)?;
        let mut pending = Pending {
            scope: self,
            u,
            detail,
            started: Instant::now(),
            done: false,
        };
        let result = op.await;
        pending.finish(match &result {
            Ok(v) => ok(v),
            Err(e) => format!("error: {e}"),
        });
        result.map_err(ScopeError::Failed)
    }

    /// The synchronous form of [`Scope::run`], for file opens and other local calls.
    pub fn run_sync<T, E: std::fmt::Display>(
        &self,
        u: &Use,
        detail: &str,
        op: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, ScopeError<E>> {
        self.check(u).map_err(ScopeError::Denied)?;
        let started = Instant::now();
        let result = op();
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        self.write(u, detail, &outcome, ms_since(started));
        result.map_err(ScopeError::Failed)
    }

    /// Writes one audit line for a sandbox containment event that is not itself a
    /// grant (`wasm.deadline`, `wasm.memory`, `wasm.log`, `wasm.link`, `wasm.run`).
    pub fn event(&self, name: &str, object: &str, outcome: &str, duration_ms: f64) {
        self.broker.audit.record(&AuditRecord {
            ts: now_rfc3339(),
            run: &self.broker.run_id,
            build: &self.build,
            step: &self.step,
            capability: name,
            object,
            outcome,
            duration_ms: (duration_ms * 1000.0).round() / 1000.0,
        });
    }

    /// Audits one use that [`Scope::check`] already allowed, for calls a library makes
    /// on its own (one line per EC2 API call, reported by the client's observer).
    pub fn audit(&self, u: &Use, detail: &str, outcome: &str, duration_ms: f64) {
        self.write(u, detail, outcome, duration_ms);
    }

    /// A refusal that the sandbox itself enforced before kiln was asked (a WASI open
    /// beneath a preopen, a socket to an address no grant names): audited as denied.
    pub fn denied_by_sandbox(&self, u: &Use, why: &str) {
        self.write(u, "", &format!("denied ({why})"), 0.0);
    }

    fn write(&self, u: &Use, detail: &str, outcome: &str, duration_ms: f64) {
        let object = match (u.object(), detail.is_empty()) {
            (Some(o), true) => o,
            (Some(o), false) => format!("{o}: {detail}"),
            (None, _) => detail.to_string(),
        };
        self.event(u.cap.key, &object, outcome, duration_ms);
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Audits an operation when it ends, or as cancelled if it never does.
struct Pending<'a> {
    scope: &'a Scope,
    u: &'a Use,
    detail: &'a str,
    started: Instant,
    done: bool,
}

impl Pending<'_> {
    fn finish(&mut self, outcome: String) {
        self.done = true;
        self.scope
            .write(self.u, self.detail, &outcome, ms_since(self.started));
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            let outcome = match self.scope.stop_reason.as_ref().and_then(|r| r()) {
                Some(reason) => format!("cancelled: {reason}"),
                None => "cancelled".to_string(),
            };
            self.scope
                .write(self.u, self.detail, &outcome, ms_since(self.started));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{fs, machine};
    use crate::ui::Redactor;

    #[tokio::test]
    async fn denied_names_capability_and_allow_line_and_is_audited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let redactor = Redactor::default();
        redactor.add("SECRET_NAME", "hunter22");
        let broker = Broker::new("run-1", AuditLog::open(&path, redactor).unwrap());
        let scope = broker.scope(
            "web.ssh_host",
            "step 2 (wasm)",
            Holder::Step,
            Grants::wasm_default(),
        );
        let err = scope
            .check(&Use::path(&fs::READ, "files/consul/a.json"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(r#"read("files/consul/a.json")"#), "{msg}");
        assert!(
            msg.contains(r#"allow: #{ read: ["files/consul"] }"#),
            "{msg}"
        );
        assert!(msg.contains("the step's options"), "{msg}");

        let r: Result<u32, ScopeError<String>> = scope
            .run(&Use::flag(&machine::SPEC), "exec echo hunter22", async {
                Ok(7)
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        let r: Result<u32, ScopeError<String>> = scope
            .run(&Use::flag(&machine::SPEC), "exec false", async {
                Err("it broke".to_string())
            })
            .await;
        assert!(matches!(r, Err(ScopeError::Failed(_))));
        // A dropped operation is audited as cancelled.
        {
            let u = Use::flag(&machine::SPEC);
            let fut = scope.run(&u, "exec sleep 100", async {
                std::future::pending::<Result<(), String>>().await
            });
            let _ = tokio::time::timeout(std::time::Duration::from_millis(1), fut).await;
        }

        let log = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4, "{log}");
        assert_eq!(lines[0]["outcome"], "denied");
        assert_eq!(lines[0]["capability"], "read");
        assert_eq!(lines[1]["outcome"], "ok");
        assert_eq!(lines[1]["capability"], "machine");
        assert_eq!(lines[2]["outcome"], "error: it broke");
        assert_eq!(lines[3]["outcome"], "cancelled");
        assert!(
            !log.contains("hunter22"),
            "secret leaked into the audit log: {log}"
        );
    }
}
