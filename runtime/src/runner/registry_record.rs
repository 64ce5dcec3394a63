//! Recording a run's builds in the artifact registry when the run ends.
//!
//! The `registry(...)` post-processor stages each build's record (artifacts, labels);
//! when every build of the run has finished, this module adds the run's provenance
//! (the script's digest, the variables with secrets by name only, the WASM modules each
//! build ran, the grants of every step, the audit log's sha256 and record count, kiln's
//! version, the git commit and dirty flag taken before the builds ran, the parent
//! artifact, the Consul services guests reported) and records each build through the
//! `registry` capability, so each record is checked and audited. A build that failed
//! before its post-processor ran is recorded as failed, so the version shows what is
//! missing. One fingerprint serves the whole run (`KILN_BUILD_FINGERPRINT` shares it
//! between runs).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use kiln_registry::provenance::{AuditDigest, GitState, Grant, StepGrants, Variable};
use kiln_registry::{BuildRecord, BuildStatus, Provenance, RecordBuild, Timestamp, limits};

use super::BuildOutcome;
use crate::caps::registry::{self, RegistryCap, RegistryRun, Target};
use crate::caps::{Broker, Grants, Holder};
use crate::plan::{Plan, ScriptRef};
use crate::ui::Ui;

/// What is known before the builds run.
pub struct Recorder {
    targets: Vec<Target>,
    git: Option<GitState>,
}

/// Call before the builds run: the git state is taken now, before the builds write
/// their outputs into the checkout.
pub fn start(plan: &Plan) -> Recorder {
    let targets = registry::targets(plan);
    // A project post-processor may record too (`ctx.registry_record`).
    let may_record = !targets.is_empty()
        || plan.builds.iter().any(|b| {
            b.post
                .iter()
                .any(|p| matches!(p.script, ScriptRef::Project(_)))
        });
    Recorder {
        git: if may_record {
            git_state(plan.project.path())
        } else {
            None
        },
        targets,
    }
}

/// One record to write.
struct Entry {
    scope: crate::caps::Scope,
    input: RecordBuild,
}

impl Recorder {
    /// Records every build of the run that has a registry post-processor, prints what
    /// was recorded (version, how to promote it), and returns false if a record failed.
    pub async fn finish(
        self,
        plan: &Plan,
        broker: &Arc<Broker>,
        ui: &Ui,
        outcomes: &[BuildOutcome],
        cancelled: bool,
    ) -> bool {
        let run = broker.extension::<RegistryRun>();
        let staged = run.staged_builds();
        if self.targets.is_empty() && staged.is_empty() {
            return true;
        }
        let fingerprint = match run.fingerprint() {
            Ok(f) => f,
            Err(e) => {
                ui.error("registry", &format!("cannot record this run: {e}"));
                return false;
            }
        };
        // One digest for the whole run, taken after the last build's last audit line.
        let audit = broker.audit_log().path().and_then(audit_digest);
        let base = self.provenance(plan, ui, audit);
        let mut entries = Vec::new();
        for o in outcomes {
            let notes = run.take(&o.name);
            let status = match (&o.error, cancelled) {
                (None, _) => BuildStatus::Succeeded,
                (Some(_), true) => BuildStatus::Cancelled,
                (Some(_), false) => BuildStatus::Failed,
            };
            let error = o.error.as_deref().map(|e| ui.redactor().redact(e));
            let mut provenance = base.clone();
            provenance.wasm_modules = notes.modules.clone();
            provenance.grants = grants_of(plan, &o.name);
            provenance.parent = notes.parent.clone();
            provenance.consul_services = notes.consul_services.clone();
            let mut records: Vec<(crate::caps::Scope, registry::Staged)> = notes
                .staged
                .iter()
                .map(|s| (s.scope.clone(), s.clone()))
                .collect();
            // A build that never reached its post-processor is recorded as failed.
            for t in self.targets.iter().filter(|t| t.label == o.name) {
                if status == BuildStatus::Succeeded
                    || records.iter().any(|(_, s)| s.bucket == t.bucket)
                {
                    continue;
                }
                let scope = broker.scope(
                    &o.name,
                    "post-processor registry",
                    Holder::PostProcessor,
                    bucket_grant(&t.bucket),
                );
                records.push((
                    scope.clone(),
                    registry::Staged {
                        scope,
                        bucket: t.bucket.clone(),
                        name: t.name.clone(),
                        description: t.description.clone(),
                        labels: t.labels.clone(),
                        artifacts: vec![],
                        started_at: None,
                        finished_at: Timestamp::now(),
                    },
                ));
            }
            for (scope, s) in records {
                let mut labels: BTreeMap<String, String> = notes.labels.clone();
                labels.extend(s.labels.clone());
                for v in labels.values_mut() {
                    *v = ui.redactor().redact(v);
                }
                entries.push(Entry {
                    scope,
                    input: RecordBuild {
                        expected_builds: registry::expected_builds(&self.targets, &s.bucket),
                        bucket: s.bucket,
                        description: s.description,
                        fingerprint: fingerprint.clone(),
                        build: BuildRecord {
                            name: s.name,
                            labels,
                            status,
                            error: error.clone(),
                            started_at: s.started_at,
                            finished_at: Some(s.finished_at),
                            // A failed build's files were cleaned up: nothing to point at.
                            artifacts: if status == BuildStatus::Succeeded {
                                s.artifacts
                            } else {
                                vec![]
                            },
                        },
                        provenance: provenance.clone(),
                    },
                });
            }
        }
        if entries.is_empty() {
            return true;
        }
        let store = run.store(plan.project.path()).await;
        let location = store
            .as_ref()
            .map(|s| s.location().to_string())
            .unwrap_or_else(|_| "unavailable".into());
        ui.plain(&format!("\n==> Registry ({location}):"));
        let mut ok = true;
        for e in entries {
            let what = format!(
                "{}/{} build {}",
                e.input.bucket, fingerprint, e.input.build.name
            );
            let cap = RegistryCap::new(e.scope, plan.project.path());
            match cap.record(e.input).await {
                Ok(r) => {
                    ui.plain(&format!("--> {}", r.summary()));
                    ui.event(
                        "registry-record",
                        serde_json::to_value(&r).unwrap_or_default(),
                    );
                }
                Err(err) => {
                    ok = false;
                    ui.error("registry", &format!("could not record {what}: {err}"));
                }
            }
        }
        ok
    }

    /// What every build of the run shares.
    fn provenance(&self, plan: &Plan, ui: &Ui, audit: Option<AuditDigest>) -> Provenance {
        let mut p = Provenance::new(
            &plan.script_name,
            &plan.script_sha256,
            env!("CARGO_PKG_VERSION"),
        );
        for (name, v) in &plan.vars {
            // `inspect` shows strings quoted; the record keeps the value itself.
            let value =
                serde_json::from_str::<String>(&v.value).unwrap_or_else(|_| v.value.clone());
            let value = limits::truncate(&ui.redactor().redact(&value), 4096);
            p.variables.push(Variable::plain(name, &value));
        }
        for name in &plan.secrets {
            p.variables.push(Variable::secret(name));
        }
        p.audit_log = audit;
        p.git = self.git.clone();
        p
    }
}

/// `registry: [bucket]`, the grant the registry post-processor holds.
fn bucket_grant(bucket: &str) -> Grants {
    let mut g = Grants::default();
    let mut allow = rhai::Map::new();
    allow.insert(
        "registry".into(),
        rhai::Dynamic::from_array(vec![bucket.to_string().into()]),
    );
    if let Err(e) = g.apply_allow(&allow) {
        tracing::debug!(error = %e, "bucket grant");
    }
    g
}

/// The grants of the builder and of every step one build ran, named as in the audit log.
fn grants_of(plan: &Plan, label: &str) -> Vec<StepGrants> {
    let Some((b, s)) = plan
        .pairs()
        .into_iter()
        .find(|(b, s)| crate::plan::pair_name(b, s) == label)
    else {
        return vec![];
    };
    let mut out = vec![step_grants(
        label,
        &format!("builder {}", s.builder),
        &s.grants,
    )];
    for (i, step) in b.steps.iter().enumerate() {
        if step.applies_to(&s.name) {
            out.push(step_grants(
                label,
                &format!("step {} {}", i + 1, step.kind_name()),
                &step.grants,
            ));
        }
    }
    out
}

fn step_grants(build: &str, step: &str, g: &Grants) -> StepGrants {
    let mut capabilities = Vec::new();
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(g) {
        for (cap, v) in m {
            match v {
                serde_json::Value::Array(items) => {
                    for item in items {
                        capabilities.push(Grant {
                            capability: cap.clone(),
                            object: item.as_str().map(str::to_string),
                        });
                    }
                }
                _ => capabilities.push(Grant {
                    capability: cap,
                    object: None,
                }),
            }
        }
    }
    StepGrants {
        build: build.to_string(),
        step: step.to_string(),
        capabilities,
    }
}

/// The audit log's sha256 and line count as it is now (streamed).
fn audit_digest(path: &Path) -> Option<AuditDigest> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = sha2::Sha256::new();
    let mut records = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        records += u64::try_from(buf[..n].iter().filter(|b| **b == b'\n').count()).unwrap_or(0);
    }
    Some(AuditDigest {
        sha256: hex::encode(h.finalize()),
        records,
    })
}

/// The commit of the checkout holding `dir` and whether files under `dir` differ from
/// it (kiln's own `.kiln/` aside), or `None` when `dir` is not in a git checkout (or
/// git is not installed).
fn git_state(dir: &Path) -> Option<GitState> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_OPTIONAL_LOCKS", "0")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    let head = git(&["rev-parse", "--verify", "HEAD"])?;
    let commit = String::from_utf8_lossy(&head.stdout).trim().to_string();
    let full =
        (commit.len() == 40 || commit.len() == 64) && commit.bytes().all(|b| b.is_ascii_hexdigit());
    if !full {
        return None;
    }
    let dirty = match git(&["status", "--porcelain", "--", ".", ":(exclude).kiln"]) {
        Some(o) => !o.stdout.is_empty(),
        // A checkout whose status cannot be read is not known to be clean.
        None => true,
    };
    Some(GitState { commit, dirty })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_digest_counts_lines_and_hashes_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        std::fs::write(&p, "{\"a\":1}\n{\"b\":2}\n").unwrap();
        let d = audit_digest(&p).unwrap();
        assert_eq!(d.records, 2);
        use sha2::Digest;
        assert_eq!(
            d.sha256,
            hex::encode(sha2::Sha256::digest(b"{\"a\":1}\n{\"b\":2}\n"))
        );
        assert!(audit_digest(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn git_state_of_a_checkout_and_of_a_plain_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(git_state(dir.path()), None);
        let run = |args: &[&str]| {
            let ok = std::process::Command::new("git")
                .arg("-C")
                .arg(dir.path())
                .args(args)
                .output()
                .unwrap()
                .status
                .success();
            assert!(ok, "git {args:?}");
        };
        run(&["init", "-q"]);
        std::fs::write(dir.path().join("build.rhai"), "// x\n").unwrap();
        run(&["add", "build.rhai"]);
        run(&[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-q",
            "-m",
            "x",
        ]);
        std::fs::create_dir_all(dir.path().join(".kiln/runs")).unwrap();
        std::fs::write(dir.path().join(".kiln/runs/a"), "x").unwrap();
        let clean = git_state(dir.path()).expect("a checkout");
        assert_eq!(clean.commit.len(), 40);
        assert!(!clean.dirty, "kiln's own .kiln/ does not make it dirty");
        std::fs::write(dir.path().join("build.rhai"), "// changed\n").unwrap();
        assert!(git_state(dir.path()).expect("a checkout").dirty);
    }

    #[test]
    fn grants_become_capability_names_and_objects() {
        let g = Grants::provisioner_default();
        let s = step_grants("web.box", "step 1 shell", &g);
        let pairs: Vec<(String, Option<String>)> = s
            .capabilities
            .into_iter()
            .map(|c| (c.capability, c.object))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("machine".to_string(), None),
                ("read".to_string(), Some(".".to_string()))
            ]
        );
    }
}
