//! `registry` and `metadata`: kiln's artifact registry (crate `kiln-registry`) as
//! capabilities.
//!
//! - `registry` (`allow: #{ registry: ["web"] }`, bucket names, `*` for all) reads
//!   artifacts from a bucket and records builds into it. A source whose configuration
//!   names `registry_artifact(#{ bucket: "base", ... })` holds `registry: ["base"]`, and
//!   the `registry(...)` post-processor holds the bucket it records into.
//! - `metadata` (a switch) lets a WASM guest report what it baked into the image (a
//!   Consul service, a label) for the build's registry record, through
//!   `kiln:host/metadata`. WASM steps hold it unless `metadata: false`.
//!
//! [`RegistryCap`] and [`MetadataCap`] are the facades: every lookup, record and report
//! goes through [`Scope::run`]/[`Scope::run_sync`], so it is checked against the
//! caller's grants and audited. What one run learns along the way (the parents each
//! build resolved, the WASM modules it ran, what guests reported, the records the
//! post-processor staged) is kept in the run's [`RegistryRun`] on the broker, and
//! recorded when the run ends (`runner::registry_record`).

pub mod rhai;
pub mod wasm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use kiln_registry::provenance::{ConsulService, ModuleDigest, ParentRef};
use kiln_registry::{
    Artifact, ArtifactQuery, Fingerprint, Location, RecordBuild, Recorded, RegistryError,
    ResolvedArtifact, Store, Timestamp, limits,
};

use super::broker::{Scope, ScopeError};
use super::grants::Use;
use super::spec::{CapSpec, Grammar};
use crate::plan::{Plan, ScriptRef};

pub static SPEC: CapSpec = CapSpec {
    key: "registry",
    summary: "read artifacts from and record builds into the artifact registry's buckets",
    grammar: Grammar::Names { wildcard: true },
    wit: &[],
    example: r#"allow: #{ registry: ["web"] }"#,
};

pub static METADATA: CapSpec = CapSpec {
    key: "metadata",
    summary: "report build metadata (labels, Consul services) for the build's registry record",
    grammar: Grammar::Flag,
    wit: &["kiln:host/metadata"],
    example: "allow: #{ metadata: true }",
};

pub struct Cap;

impl super::Capability for Cap {
    fn spec(&self) -> &'static CapSpec {
        &SPEC
    }
    fn register_rhai(&self, engine: &mut ::rhai::Engine) {
        rhai::register(engine);
    }
}

pub struct Metadata;

impl super::Capability for Metadata {
    fn spec(&self) -> &'static CapSpec {
        &METADATA
    }
    fn wasm(&self) -> Option<&'static dyn crate::wasm::host::Adapter> {
        Some(&wasm::Adapter)
    }
}

/// The embedded post-processor that records builds (`registry(#{ ... })`).
pub const POST_PROCESSOR: &str = "post/registry";

/// Most Consul services and labels one build may report.
const MAX_REPORTED: usize = 64;

/// A build the post-processor staged for recording when the run ends.
#[derive(Clone)]
pub struct Staged {
    /// The post-processor's scope: the record is checked and audited against it.
    pub scope: Scope,
    pub bucket: String,
    /// The build's name inside the version (its source name, see [`targets`]).
    pub name: String,
    pub description: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub artifacts: Vec<Artifact>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
}

/// What one build (`build.source`) did that its record carries.
#[derive(Clone, Default)]
pub struct BuildNotes {
    /// The registry artifact its source was built from (the first one, if several).
    pub parent: Option<ParentRef>,
    /// Every WASM module it ran, by path, with its sha256.
    pub modules: Vec<ModuleDigest>,
    /// Labels guests reported.
    pub labels: BTreeMap<String, String>,
    /// Consul services guests reported.
    pub consul_services: Vec<ConsulService>,
    pub staged: Vec<Staged>,
}

/// The run's registry state, one per broker ([`crate::caps::Broker::extension`]).
#[derive(Default)]
pub struct RegistryRun {
    /// Where the registry is, when set before first use; else from the environment.
    location: OnceLock<Location>,
    store: tokio::sync::OnceCell<Result<Store, RegistryError>>,
    fingerprint: OnceLock<Result<Fingerprint, RegistryError>>,
    builds: Mutex<BTreeMap<String, BuildNotes>>,
}

impl RegistryRun {
    /// The registry (`KILN_REGISTRY`, else `<project>/.kiln/registry.db`), opened once.
    pub async fn store(&self, project: &Path) -> Result<Store, RegistryError> {
        self.store
            .get_or_init(|| async {
                let location = match self.location.get() {
                    Some(l) => l.clone(),
                    None => Location::from_env(project)?,
                };
                Store::open_location(&location).await
            })
            .await
            .clone()
    }

    /// Uses `location` instead of `KILN_REGISTRY` (before the first use only).
    pub fn use_location(&self, location: Location) {
        let _ = self.location.set(location);
    }

    /// The run's version fingerprint (`KILN_BUILD_FINGERPRINT`, else a new ULID), the
    /// same for every build of the run.
    pub fn fingerprint(&self) -> Result<Fingerprint, RegistryError> {
        self.fingerprint
            .get_or_init(Fingerprint::from_env_or_generate)
            .clone()
    }

    fn note(&self, build: &str, f: impl FnOnce(&mut BuildNotes)) {
        let mut m = self.builds.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry(build.to_string()).or_default());
    }

    /// What the run noted about `build`, removed (it is recorded once).
    pub fn take(&self, build: &str) -> BuildNotes {
        self.builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(build)
            .unwrap_or_default()
    }

    /// Builds that staged a record.
    pub fn staged_builds(&self) -> Vec<String> {
        self.builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, n)| !n.staged.is_empty())
            .map(|(k, _)| k.clone())
            .collect()
    }
}

fn run_of(scope: &Scope) -> Arc<RegistryRun> {
    scope.broker().extension::<RegistryRun>()
}

/// Remembers that `scope`'s build ran the WASM module at `path` with digest `sha256`.
pub fn note_module(scope: &Scope, path: &str, sha256: &str) {
    run_of(scope).note(scope.build(), |n| {
        if !n
            .modules
            .iter()
            .any(|m| m.path == path && m.sha256 == sha256)
        {
            n.modules.push(ModuleDigest {
                path: path.to_string(),
                sha256: sha256.to_string(),
            });
        }
    });
}

/// Stages a record for the end of the run (the post-processor's `ctx.registry_record`).
pub fn stage(staged: Staged) {
    let scope = staged.scope.clone();
    run_of(&scope).note(scope.build(), |n| n.staged.push(staged));
}

/// The registry as one caller (a source resolving its parent, the post-processor
/// recording) may use it.
#[derive(Clone)]
pub struct RegistryCap {
    scope: Scope,
    project: PathBuf,
    run: Arc<RegistryRun>,
}

impl RegistryCap {
    pub fn new(scope: Scope, project: &Path) -> Self {
        RegistryCap {
            run: run_of(&scope),
            scope,
            project: project.to_path_buf(),
        }
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The artifact `query` names, for the caller's build to start from; remembered as
    /// the build's parent. A revoked version fails with [`RegistryError::Revoked`].
    pub async fn resolve(
        &self,
        query: &ArtifactQuery,
    ) -> Result<ResolvedArtifact, ScopeError<RegistryError>> {
        let u = Use::name(&SPEC, &query.bucket);
        let detail = format!(
            "resolve @{} {}/{}",
            query.channel.as_deref().unwrap_or(kiln_registry::LATEST),
            query.platform,
            query.region
        );
        let r = self
            .scope
            .run_with(
                &u,
                &detail,
                async {
                    let store = self.run.store(&self.project).await?;
                    store.resolve_artifact(query).await
                },
                |r| {
                    format!(
                        "ok ({}/{} {})",
                        r.parent.bucket, r.parent.fingerprint, r.artifact.external_id
                    )
                },
            )
            .await?;
        let parent = r.parent.clone();
        self.run.note(self.scope.build(), |n| {
            n.parent.get_or_insert(parent);
        });
        Ok(r)
    }

    /// Records one build of the run's version.
    pub async fn record(&self, input: RecordBuild) -> Result<Recorded, ScopeError<RegistryError>> {
        let u = Use::name(&SPEC, &input.bucket);
        let detail = format!(
            "record {} build {} ({})",
            input.fingerprint, input.build.name, input.build.status
        );
        self.scope
            .run_with(
                &u,
                &detail,
                async {
                    let store = self.run.store(&self.project).await?;
                    store.record(input).await
                },
                |r| {
                    if r.version_complete {
                        "ok (version complete)".to_string()
                    } else {
                        format!("ok (waiting for {})", r.missing_builds.join(", "))
                    }
                },
            )
            .await
    }

    /// The run's fingerprint.
    pub fn fingerprint(&self) -> Result<Fingerprint, RegistryError> {
        self.run.fingerprint()
    }
}

/// Build metadata as one WASM step may report it.
#[derive(Clone)]
pub struct MetadataCap {
    scope: Scope,
}

impl MetadataCap {
    pub fn new(scope: Scope) -> Self {
        MetadataCap { scope }
    }

    /// The build baked `service` into the image.
    pub fn consul_service(&self, service: ConsulService) -> Result<(), ScopeError<RegistryError>> {
        let detail = format!(
            "consul service {}{}",
            service.name,
            service.port.map(|p| format!(":{p}")).unwrap_or_default()
        );
        self.scope.run_sync(&Use::flag(&METADATA), &detail, || {
            check_short("consul service name", &service.name)?;
            if service.tags.len() > MAX_REPORTED {
                return Err(invalid(
                    "consul service tags",
                    format!("more than {MAX_REPORTED}"),
                ));
            }
            for t in &service.tags {
                check_short("consul service tag", t)?;
            }
            let run = run_of(&self.scope);
            let mut result = Ok(());
            run.note(self.scope.build(), |n| {
                if let Some(same) = n
                    .consul_services
                    .iter_mut()
                    .find(|s| s.name == service.name)
                {
                    *same = service.clone();
                } else if n.consul_services.len() >= MAX_REPORTED {
                    result = Err(invalid(
                        "consul services",
                        format!("more than {MAX_REPORTED} in one build"),
                    ));
                } else {
                    n.consul_services.push(service.clone());
                }
            });
            result
        })
    }

    /// A label for the build's record (a label the `registry(...)` post-processor sets
    /// itself takes precedence).
    pub fn label(&self, key: &str, value: &str) -> Result<(), ScopeError<RegistryError>> {
        let detail = format!("label {}", limits::truncate(key, limits::MAX_LABEL_KEY));
        self.scope.run_sync(&Use::flag(&METADATA), &detail, || {
            limits::check_label_key(key)?;
            limits::check_text(
                &format!("label {key:?}"),
                value,
                limits::MAX_LABEL_VALUE,
                false,
            )?;
            let mut result = Ok(());
            run_of(&self.scope).note(self.scope.build(), |n| {
                if n.labels.len() >= MAX_REPORTED && !n.labels.contains_key(key) {
                    result = Err(invalid(
                        "labels",
                        format!("more than {MAX_REPORTED} reported by one build"),
                    ));
                } else {
                    n.labels.insert(key.to_string(), value.to_string());
                }
            });
            result
        })
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> RegistryError {
    RegistryError::InvalidInput {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn check_short(field: &str, value: &str) -> Result<(), RegistryError> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    limits::check_text(field, value, 512, false)
}

/// A build of the plan that records into the registry: where and under which name.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `build.source`.
    pub label: String,
    pub bucket: String,
    /// The build's name in the version: the source name, or `build.source` when two
    /// builds recording into one bucket share a source.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub description: Option<String>,
}

/// Every (build, source) pair of the plan with a `registry(...)` post-processor, run or
/// not (a version expects every build of its bucket, even under `--only`).
pub fn targets(plan: &Plan) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    for (b, s) in plan.pairs() {
        for p in &b.post {
            if p.script != ScriptRef::Embedded(POST_PROCESSOR.into()) {
                continue;
            }
            let text = |k: &str| {
                p.config
                    .get(k)
                    .filter(|v| v.is_string())
                    .map(|v| v.to_string())
            };
            let labels = p
                .config
                .get("labels")
                .and_then(|v| v.clone().try_cast::<::rhai::Map>())
                .map(|m| {
                    m.into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Target {
                label: crate::plan::pair_name(b, s),
                bucket: text("bucket").unwrap_or_else(|| b.name.clone()),
                name: s.name.clone(),
                labels,
                description: text("description"),
            });
        }
    }
    // Two builds of one bucket from the same source keep apart by their full names.
    let clashes: Vec<(String, String)> = out
        .iter()
        .filter(|t| {
            out.iter()
                .filter(|o| o.bucket == t.bucket && o.name == t.name)
                .count()
                > 1
        })
        .map(|t| (t.bucket.clone(), t.name.clone()))
        .collect();
    for t in &mut out {
        if clashes.contains(&(t.bucket.clone(), t.name.clone())) {
            t.name = t.label.clone();
        }
    }
    out
}

/// The names a version of `bucket` is made of.
pub fn expected_builds(targets: &[Target], bucket: &str) -> Vec<String> {
    let mut names: Vec<String> = targets
        .iter()
        .filter(|t| t.bucket == bucket)
        .map(|t| t.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{AuditLog, Broker, Grants, Holder};
    use crate::ui::Redactor;
    use kiln_registry::{BuildRecord, BuildStatus, Platform, Provenance};

    fn scope(allow: &str, audit: &Path) -> Scope {
        let broker = Broker::new(
            "run-1",
            AuditLog::open(audit, Redactor::default()).expect("audit"),
        );
        let mut g = Grants::default();
        let map: ::rhai::Map = ::rhai::Engine::new_raw().eval(allow).expect("allow");
        g.apply_allow(&map).expect("grants");
        broker.scope(
            "web.box",
            "post-processor registry",
            Holder::PostProcessor,
            g,
        )
    }

    fn input(bucket: &str, fp: &Fingerprint) -> RecordBuild {
        RecordBuild {
            bucket: bucket.into(),
            description: None,
            fingerprint: fp.clone(),
            expected_builds: vec![],
            build: BuildRecord {
                name: "box".into(),
                labels: BTreeMap::new(),
                status: BuildStatus::Succeeded,
                error: None,
                started_at: None,
                finished_at: None,
                artifacts: vec![Artifact::new(Platform::Qemu, "local", "/img/web.qcow2")],
            },
            provenance: Provenance::new("build.rhai", &"a".repeat(64), "0.1.0"),
        }
    }

    /// Recording and resolving go through the broker: a bucket outside the grant is
    /// refused and audited, a granted one is recorded, resolved, and noted as the
    /// build's parent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_and_resolves_only_granted_buckets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = dir.path().join("audit.jsonl");
        let s = scope(r#"#{ registry: ["web"] }"#, &audit);
        run_of(&s).use_location(Location::Sqlite(dir.path().join("r.db")));
        let cap = RegistryCap::new(s.clone(), dir.path());
        let fp = cap.fingerprint().expect("fingerprint");
        assert_eq!(cap.fingerprint().expect("again"), fp, "one per run");

        let denied = cap.record(input("db", &fp)).await.expect_err("denied");
        assert!(matches!(denied, ScopeError::Denied(_)), "{denied}");
        assert!(
            denied
                .to_string()
                .contains(r#"allow: #{ registry: ["db"] }"#)
        );

        let rec = cap.record(input("web", &fp)).await.expect("record");
        assert!(rec.version_complete, "{rec:?}");
        let got = cap
            .resolve(&ArtifactQuery {
                bucket: "web".into(),
                channel: None,
                platform: Platform::Qemu,
                region: "local".into(),
                build: None,
            })
            .await
            .expect("resolve");
        assert_eq!(got.artifact.external_id, "/img/web.qcow2");
        let notes = run_of(&s).take("web.box");
        assert_eq!(
            notes.parent.map(|p| p.fingerprint),
            Some(fp.to_string()),
            "the resolved version is the build's parent"
        );

        let log = std::fs::read_to_string(&audit).expect("audit log");
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 3, "{log}");
        assert_eq!(lines[0]["capability"], "registry");
        assert_eq!(lines[0]["outcome"], "denied");
        assert_eq!(lines[1]["outcome"], "ok (version complete)");
        assert!(
            lines[2]["object"]
                .as_str()
                .is_some_and(|o| o.starts_with("web: resolve @latest qemu/local")),
            "{log}"
        );
    }

    #[test]
    fn metadata_is_checked_bounded_and_noted_per_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = dir.path().join("audit.jsonl");
        let off = MetadataCap::new(scope(r#"#{ metadata: false }"#, &audit));
        assert!(matches!(
            off.label("os", "debian"),
            Err(ScopeError::Denied(_))
        ));
        let s = scope(r#"#{ metadata: true }"#, &audit);
        let m = MetadataCap::new(s.clone());
        m.label("os", "debian").expect("label");
        assert!(matches!(
            m.label("../x", "v"),
            Err(ScopeError::Failed(RegistryError::InvalidInput { .. }))
        ));
        let svc = |name: &str| ConsulService {
            name: name.into(),
            port: Some(80),
            tags: vec!["v1".into()],
        };
        m.consul_service(svc("web")).expect("service");
        m.consul_service(svc("web"))
            .expect("same service again replaces it");
        assert!(m.consul_service(svc("")).is_err());
        for i in 1..MAX_REPORTED {
            m.consul_service(svc(&format!("s{i}")))
                .expect("within the limit");
        }
        assert!(m.consul_service(svc("one-too-many")).is_err());
        let notes = run_of(&s).take("web.box");
        assert_eq!(notes.labels.get("os").map(String::as_str), Some("debian"));
        assert_eq!(notes.consul_services.len(), MAX_REPORTED);
        let log = std::fs::read_to_string(&audit).expect("audit log");
        assert!(log.contains(r#""capability":"metadata""#), "{log}");
        assert!(log.contains("consul service web:80"), "{log}");
    }
}
