//! Inputs and stores shared by the tests.

use std::collections::BTreeMap;

use kiln_registry::provenance::{ParentRef, Variable};
use kiln_registry::testkit::Postgres;
use kiln_registry::{
    Artifact, BuildRecord, BuildStatus, Fingerprint, Platform, Provenance, RecordBuild, Store,
};

/// Keeps whatever backs a store (a temp dir) alive for the test.
pub enum Guard {
    Dir { _dir: tempfile::TempDir },
    None,
}

pub async fn sqlite_store() -> (Store, Guard) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("registry.db");
    let store = Store::open(&format!("sqlite:{}", path.display()))
        .await
        .expect("open sqlite registry");
    (store, Guard::Dir { _dir: dir })
}

/// A fresh database in the process-wide PostgreSQL cluster.
pub async fn pg_store() -> (Store, Guard) {
    let pg = Postgres::shared().expect("PostgreSQL test cluster must start");
    let url = pg.create_database().expect("create database");
    let store = Store::open(&url).await.expect("open postgres registry");
    (store, Guard::None)
}

pub fn provenance() -> Provenance {
    let mut p = Provenance::new("build.rhai", &"0".repeat(64), "0.1.0-test");
    p.variables = vec![
        Variable::plain("region", "us-east-1"),
        Variable::secret("db_password"),
    ];
    p
}

pub struct Rec {
    pub input: RecordBuild,
}

impl Rec {
    pub fn new(bucket: &str, fp: &str, build: &str) -> Rec {
        Rec {
            input: RecordBuild {
                bucket: bucket.into(),
                description: None,
                fingerprint: Fingerprint::parse(fp).expect("fingerprint"),
                expected_builds: vec![],
                build: BuildRecord {
                    name: build.into(),
                    labels: BTreeMap::new(),
                    status: BuildStatus::Succeeded,
                    error: None,
                    started_at: None,
                    finished_at: None,
                    artifacts: vec![Artifact::new(
                        Platform::Aws,
                        "us-east-1",
                        &format!("ami-{fp}-{build}"),
                    )],
                },
                provenance: provenance(),
            },
        }
    }

    pub fn expect(mut self, builds: &[&str]) -> Rec {
        self.input.expected_builds = builds.iter().map(|b| b.to_string()).collect();
        self
    }

    pub fn status(mut self, s: BuildStatus) -> Rec {
        self.input.build.status = s;
        if s != BuildStatus::Succeeded {
            self.input.build.error = Some("step 2 exited 1".into());
        }
        self
    }

    pub fn artifact(mut self, p: Platform, region: &str, id: &str) -> Rec {
        self.input
            .build
            .artifacts
            .push(Artifact::new(p, region, id));
        self
    }

    pub fn only_artifact(mut self, p: Platform, region: &str, id: &str) -> Rec {
        self.input.build.artifacts = vec![Artifact::new(p, region, id)];
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> Rec {
        self.input.build.labels.insert(k.into(), v.into());
        self
    }

    pub fn parent(mut self, p: ParentRef) -> Rec {
        self.input.provenance.parent = Some(p);
        self
    }

    pub fn describe(mut self, d: &str) -> Rec {
        self.input.description = Some(d.into());
        self
    }

    pub fn build(self) -> RecordBuild {
        self.input
    }
}

/// Records and expects success.
pub async fn record(store: &Store, r: Rec) -> kiln_registry::Recorded {
    store.record(r.build()).await.expect("record")
}
