//! The broker: the one checkpoint every host call passes.
//!
//! A [`Scope`] is "this step of this build, holding these grants". Host code calls
//! [`Scope::check`] (or [`Scope::run`], which also times the call) before it touches
//! anything; the broker compares against the grants, writes the audit line, and on
//! refusal returns a [`Denied`] that says exactly which `allow` line to add.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use super::audit::{AuditLog, AuditRecord, now_rfc3339};
use super::grants::{Capability, Grants};

/// A refused capability use.
#[derive(Debug, Clone, thiserror::Error)]
#[error("denied: {step} is not granted {cap}; to grant it, add to the step's options: {allow}")]
pub struct Denied {
    pub step: String,
    pub cap: String,
    pub allow: String,
}

/// Shared by every scope of a run.
pub struct Broker {
    run_id: String,
    audit: AuditLog,
}

impl Broker {
    pub fn new(run_id: impl Into<String>, audit: AuditLog) -> Arc<Self> {
        Arc::new(Broker {
            run_id: run_id.into(),
            audit,
        })
    }

    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// A scope for one build/step with its grants.
    pub fn scope(self: &Arc<Self>, build: &str, step: &str, grants: Grants) -> Scope {
        Scope {
            broker: self.clone(),
            build: build.into(),
            step: step.into(),
            grants: Arc::new(grants),
        }
    }
}

/// A caller (build + step) with its grants. Cheap to clone.
#[derive(Clone)]
pub struct Scope {
    broker: Arc<Broker>,
    build: String,
    step: String,
    grants: Arc<Grants>,
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
    pub fn with_step(&self, step: &str, grants: Grants) -> Scope {
        self.broker.scope(&self.build, step, grants)
    }

    /// Checks `cap` against the grants. A refusal is audited here; a permitted use is
    /// audited by the caller through [`Scope::record`] once it knows the outcome, or
    /// use [`Scope::run`] which does both.
    pub fn check(&self, cap: &Capability, detail: &str) -> Result<(), Denied> {
        if self.grants.allows(cap) {
            return Ok(());
        }
        self.record(cap, detail, "denied", 0.0);
        tracing::debug!(step = %self.step, %cap, "denied");
        Err(Denied {
            step: format!("step {:?} of build {:?}", self.step, self.build),
            cap: cap.to_string(),
            allow: cap.allow_line(),
        })
    }

    /// Checks, runs `op`, and audits the outcome and duration.
    pub async fn run<T, E, F>(
        &self,
        cap: Capability,
        detail: &str,
        op: F,
    ) -> Result<T, ScopeError<E>>
    where
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        self.check(&cap, detail).map_err(ScopeError::Denied)?;
        let start = Instant::now();
        let result = op.await;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        match &result {
            Ok(_) => self.record(&cap, detail, "ok", ms),
            Err(e) => self.record(&cap, detail, &format!("error: {e}"), ms),
        }
        result.map_err(ScopeError::Failed)
    }

    /// Writes one audit line for a use of `cap`.
    pub fn record(&self, cap: &Capability, detail: &str, outcome: &str, duration_ms: f64) {
        let object = match (cap.object(), detail.is_empty()) {
            (Some(o), true) => o.to_string(),
            (Some(o), false) => format!("{o}: {detail}"),
            (None, _) => detail.to_string(),
        };
        self.record_named(cap.name(), &object, outcome, duration_ms);
    }

    /// Writes one audit line for an event named by string (sandbox containment
    /// events such as `wasm.deadline` that are not grants themselves).
    pub fn record_named(&self, capability: &str, object: &str, outcome: &str, duration_ms: f64) {
        self.broker.audit.record(&AuditRecord {
            ts: now_rfc3339(),
            run: &self.broker.run_id,
            build: &self.build,
            step: &self.step,
            capability,
            object: &truncate(object, 512),
            outcome,
            duration_ms: (duration_ms * 1000.0).round() / 1000.0,
        });
    }
}

/// Either the broker refused, or the operation itself failed.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError<E> {
    #[error(transparent)]
    Denied(Denied),
    #[error("{0}")]
    Failed(E),
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::Redactor;

    #[tokio::test]
    async fn denied_names_capability_and_allow_line_and_is_audited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let redactor = Redactor::default();
        redactor.add("SECRET_NAME", "hunter22");
        let broker = Broker::new("run-1", AuditLog::open(&path, redactor).unwrap());
        let scope = broker.scope("web.ssh_host", "step 2 (wasm)", Grants::wasm_default());
        let err = scope
            .check(&Capability::FsRead("files/consul".into()), "")
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(r#"fs.read("files/consul")"#), "{msg}");
        assert!(
            msg.contains(r#"allow: #{ read: ["files/consul"] }"#),
            "{msg}"
        );

        let r: Result<u32, ScopeError<String>> = scope
            .run(Capability::Machine, "exec echo hunter22", async { Ok(7) })
            .await;
        assert_eq!(r.unwrap(), 7);

        let log = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["outcome"], "denied");
        assert_eq!(lines[0]["capability"], "fs.read");
        assert_eq!(lines[1]["outcome"], "ok");
        assert!(
            !log.contains("hunter22"),
            "secret leaked into the audit log: {log}"
        );
    }
}
