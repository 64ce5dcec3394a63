//! One suite, two backends: every case runs on SQLite and on PostgreSQL.

use kiln_registry::cli::{self, Command, Format, Output};
use kiln_registry::provenance::ParentRef;
use kiln_registry::{
    ArtifactQuery, BuildStatus, Freshness, Platform, RegistryError, RevokeRequest, Store,
    Timestamp, VersionRef,
};

use crate::fixtures::{Rec, record};

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, _guard) = crate::fixtures::sqlite_store().await;
                    super::$case(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, _guard) = crate::fixtures::pg_store().await;
                    super::$case(store).await;
                }
            )*
        }
    };
}

suite!(
    record_show_and_latest,
    complete_only_when_every_expected_build_succeeded,
    succeeded_builds_and_complete_versions_are_immutable,
    promote_and_channel_history,
    unknown_names_suggest_nearest,
    fingerprint_prefixes,
    revoke_schedule_and_restore,
    revocation_inherited_by_descendants,
    ancestry_up_to_date_and_out_of_date,
    resolve_artifact_for_chained_builds,
    parent_links_are_validated,
    versions_page_newest_first,
    hostile_input_refused_or_stored_inertly,
    tokens_hashed_and_verified,
    cli_commands_render,
);

fn fp(v: &str) -> VersionRef {
    VersionRef::Fingerprint(v.into())
}

fn ch(c: &str) -> VersionRef {
    VersionRef::Channel(c.into())
}

async fn record_show_and_latest(store: Store) {
    let r = record(
        &store,
        Rec::new("web", "F1", "web")
            .label("os", "debian-12")
            .artifact(Platform::Qemu, "local", "/out/web.qcow2")
            .describe("the web tier"),
    )
    .await;
    assert!(r.version_complete && r.latest_moved, "{r:?}");
    assert!(
        r.summary()
            .contains("kiln artifacts promote web F1 --channel prod")
    );

    let v = store.version("web", &fp("F1")).await.expect("show");
    assert!(v.complete);
    assert_eq!(v.channels, vec!["latest"]);
    assert_eq!(v.builds.len(), 1);
    let b = &v.builds[0];
    assert_eq!(b.status, BuildStatus::Succeeded);
    assert_eq!(b.labels.get("os").map(String::as_str), Some("debian-12"));
    assert_eq!(b.artifacts.len(), 2);
    assert_eq!(b.artifacts[0].external_id, "ami-F1-web");
    assert_eq!(v.provenance.len(), 1);
    let p = &v.provenance[0].document;
    let secret = p
        .variables
        .iter()
        .find(|x| x.name == "db_password")
        .expect("secret var");
    assert!(secret.secret && secret.value.is_none());
    assert_eq!(v.provenance[0].builds, vec!["web"]);

    let (latest, info) = store.channel("web", "latest").await.expect("latest");
    assert_eq!(latest.fingerprint, "F1");
    assert!(info.managed);
    assert_eq!(info.serial, 1);

    let buckets = store.buckets().await.expect("buckets");
    assert_eq!(buckets.len(), 1);
    assert_eq!(buckets[0].description, "the web tier");
    assert_eq!(buckets[0].version_count, 1);
}

async fn complete_only_when_every_expected_build_succeeded(store: Store) {
    let r = record(&store, Rec::new("app", "V1", "a").expect(&["a", "b"])).await;
    assert!(!r.version_complete && !r.latest_moved);
    assert_eq!(r.missing_builds, vec!["b"]);
    assert!(matches!(
        store.channel("app", "latest").await,
        Err(RegistryError::UnknownChannel { .. })
    ));

    let r = record(
        &store,
        Rec::new("app", "V1", "b").status(BuildStatus::Failed),
    )
    .await;
    assert!(!r.version_complete);
    assert_eq!(r.missing_builds, vec!["b"]);
    let v = store.version("app", &fp("V1")).await.expect("show");
    assert_eq!(v.missing_builds, vec!["b"]);
    let failed = v.builds.iter().find(|b| b.name == "b").expect("b");
    assert_eq!(failed.status, BuildStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("step 2 exited 1"));

    let e = store
        .promote("app", &fp("V1"), "prod", "t")
        .await
        .expect_err("incomplete");
    assert!(
        matches!(&e, RegistryError::Incomplete { missing, .. } if missing == &vec!["b".to_string()]),
        "{e}"
    );

    // The retry of the failed build replaces it and completes the version.
    let r = record(&store, Rec::new("app", "V1", "b")).await;
    assert!(r.version_complete && r.latest_moved, "{r:?}");
    let v = store.version("app", &fp("V1")).await.expect("show");
    assert_eq!(v.builds.len(), 2);
    assert!(v.builds.iter().all(|b| b.status == BuildStatus::Succeeded));
    assert_eq!(
        v.builds[1].artifacts.len(),
        1,
        "the failed build's artifacts are replaced"
    );
}

async fn succeeded_builds_and_complete_versions_are_immutable(store: Store) {
    record(&store, Rec::new("img", "C1", "x")).await;
    let e = store
        .record(Rec::new("img", "C1", "x").build())
        .await
        .expect_err("again");
    assert!(matches!(e, RegistryError::Conflict { .. }), "{e}");
    assert!(e.to_string().contains("immutable"), "{e}");
    let e = store
        .record(Rec::new("img", "C1", "y").build())
        .await
        .expect_err("join complete");
    assert!(matches!(e, RegistryError::Conflict { .. }), "{e}");
    let v = store.version("img", &fp("C1")).await.expect("show");
    assert_eq!(v.builds.len(), 1);
}

async fn promote_and_channel_history(store: Store) {
    record(&store, Rec::new("web", "P1", "web")).await;
    record(&store, Rec::new("web", "P2", "web")).await;
    let p = store
        .promote("web", &fp("P1"), "prod", "alice")
        .await
        .expect("promote");
    assert!(p.changed && p.previous.is_none());
    let p = store
        .promote("web", &fp("P1"), "prod", "alice")
        .await
        .expect("again");
    assert!(!p.changed);
    let p = store
        .promote("web", &fp("P2"), "prod", "bob")
        .await
        .expect("move");
    assert_eq!(p.previous.as_deref(), Some("P1"));
    let e = store
        .promote("web", &fp("P2"), "latest", "bob")
        .await
        .expect_err("latest is kiln's");
    assert!(matches!(e, RegistryError::InvalidInput { .. }), "{e}");

    let view = store.channels("web", 100).await.expect("channels");
    let names: Vec<&str> = view.channels.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["latest", "prod"]);
    let prod = &view.channels[1];
    assert_eq!(prod.fingerprint, "P2");
    assert_eq!(prod.serial, 2);
    let moves: Vec<(&str, &str, Option<&str>, &str)> = view
        .history
        .iter()
        .map(|m| {
            (
                m.channel.as_str(),
                m.fingerprint.as_str(),
                m.previous.as_deref(),
                m.actor.as_str(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        vec![
            ("prod", "P2", Some("P1"), "bob"),
            ("prod", "P1", None, "alice"),
            ("latest", "P2", Some("P1"), "kiln"),
            ("latest", "P1", None, "kiln"),
        ]
    );
    let v = store
        .version("web", &ch("prod"))
        .await
        .expect("via channel");
    assert_eq!(v.fingerprint, "P2");
    assert_eq!(v.channels, vec!["latest", "prod"]);
}

async fn unknown_names_suggest_nearest(store: Store) {
    record(&store, Rec::new("web", "01JABCDEF", "web")).await;
    store
        .promote("web", &fp("01JABCDEF"), "prod", "t")
        .await
        .expect("promote");
    match store.versions("wbe", 10, None).await {
        Err(RegistryError::UnknownBucket { suggestions, .. }) => {
            assert_eq!(suggestions, vec!["web"])
        }
        other => panic!("{other:?}"),
    }
    match store.channel("web", "prdo").await {
        Err(RegistryError::UnknownChannel { suggestions, .. }) => {
            assert_eq!(suggestions, vec!["prod"])
        }
        other => panic!("{other:?}"),
    }
    match store.version("web", &fp("01JABCDEG")).await {
        Err(e @ RegistryError::UnknownVersion { .. }) => {
            assert_eq!(e.suggestions(), ["01JABCDEF".to_string()]);
            assert_eq!(e.exit_code(), 2);
        }
        other => panic!("{other:?}"),
    }
}

async fn fingerprint_prefixes(store: Store) {
    record(&store, Rec::new("web", "01JAAAA1", "web")).await;
    record(&store, Rec::new("web", "01JAAAA2", "web")).await;
    record(&store, Rec::new("web", "01JB_x", "web")).await;
    let v = store
        .version("web", &fp("01JB"))
        .await
        .expect("unique prefix");
    assert_eq!(v.fingerprint, "01JB_x");
    // `_` is not a wildcard.
    assert!(matches!(
        store.version("web", &fp("01J_")).await,
        Err(RegistryError::UnknownVersion { .. })
    ));
    match store.version("web", &fp("01JAAAA")).await {
        Err(RegistryError::AmbiguousVersion { candidates, .. }) => {
            assert_eq!(candidates.len(), 2);
        }
        other => panic!("{other:?}"),
    }
}

async fn revoke_schedule_and_restore(store: Store) {
    record(&store, Rec::new("web", "R1", "web")).await;
    record(&store, Rec::new("web", "R2", "web")).await;
    store
        .promote("web", &fp("R1"), "prod", "t")
        .await
        .expect("promote");
    let req = RevokeRequest {
        reason: "CVE-2026-0001 in openssl".into(),
        at: None,
        inherit: false,
    };
    let r = store
        .revoke("web", &fp("R1"), &req, "sec")
        .await
        .expect("revoke");
    assert!(r.descendants.is_empty());
    let v = store.version("web", &fp("R1")).await.expect("show");
    let rs = v.revocation.expect("revoked");
    assert!(rs.effective && rs.inherited_from.is_none());
    assert_eq!(rs.reason, "CVE-2026-0001 in openssl");
    assert_eq!(rs.revoked_by, "sec");
    let e = store
        .promote("web", &fp("R1"), "dev", "t")
        .await
        .expect_err("revoked");
    assert!(matches!(e, RegistryError::Revoked { .. }), "{e}");
    let e = store
        .revoke("web", &fp("R1"), &req, "sec")
        .await
        .expect_err("twice");
    assert!(matches!(e, RegistryError::Conflict { .. }), "{e}");
    // The channel keeps pointing at it, flagged.
    let (_, info) = store.channel("web", "prod").await.expect("prod");
    assert!(info.revocation.as_ref().is_some_and(|r| r.effective));

    store
        .restore("web", &fp("R1"), "sec")
        .await
        .expect("restore");
    assert!(
        store
            .version("web", &fp("R1"))
            .await
            .expect("show")
            .revocation
            .is_none()
    );
    let e = store
        .restore("web", &fp("R1"), "sec")
        .await
        .expect_err("not revoked");
    assert!(
        matches!(
            e,
            RegistryError::NotRevoked {
                inherited_from: None,
                ..
            }
        ),
        "{e}"
    );
    store
        .promote("web", &fp("R1"), "dev", "t")
        .await
        .expect("promotable again");

    // Scheduled in the future: not yet effective, promotion warns.
    let later = RevokeRequest {
        reason: "end of support".into(),
        at: Some(Timestamp::now().add_millis(3_600_000)),
        inherit: false,
    };
    store
        .revoke("web", &fp("R2"), &later, "sec")
        .await
        .expect("schedule");
    let rs = store
        .version("web", &fp("R2"))
        .await
        .expect("show")
        .revocation
        .expect("scheduled");
    assert!(!rs.effective);
    let p = store
        .promote("web", &fp("R2"), "prod", "t")
        .await
        .expect("still promotable");
    assert!(p.scheduled_revocation.is_some());

    // In the past: effective.
    record(&store, Rec::new("web", "R3", "web")).await;
    let past = RevokeRequest {
        reason: "bad".into(),
        at: Some(Timestamp::now().add_millis(-60_000)),
        inherit: false,
    };
    store
        .revoke("web", &fp("R3"), &past, "sec")
        .await
        .expect("past");
    assert!(
        store
            .version("web", &fp("R3"))
            .await
            .expect("show")
            .is_revoked()
    );

    let history = store.revocations("web").await.expect("revocations");
    assert_eq!(history.len(), 3);
    assert!(
        history
            .iter()
            .any(|r| r.fingerprint == "R1" && r.lifted_by.as_deref() == Some("sec"))
    );

    let e = store
        .revoke(
            "web",
            &fp("R3"),
            &RevokeRequest {
                reason: " ".into(),
                at: None,
                inherit: false,
            },
            "sec",
        )
        .await
        .expect_err("empty reason");
    assert!(matches!(e, RegistryError::InvalidInput { .. }), "{e}");
}

/// base → app → svc through parent links.
async fn chain(store: &Store) -> (String, String) {
    record(
        store,
        Rec::new("base", "B1", "base").only_artifact(Platform::Qemu, "local", "/img/base-1.qcow2"),
    )
    .await;
    store
        .promote("base", &fp("B1"), "prod", "t")
        .await
        .expect("promote base");
    let parent = store
        .resolve_artifact(&ArtifactQuery {
            bucket: "base".into(),
            channel: Some("prod".into()),
            platform: Platform::Qemu,
            region: "local".into(),
            build: None,
        })
        .await
        .expect("resolve base");
    record(
        store,
        Rec::new("app", "A1", "app")
            .only_artifact(Platform::Qemu, "local", "/img/app-1.qcow2")
            .parent(parent.parent),
    )
    .await;
    store
        .promote("app", &fp("A1"), "prod", "t")
        .await
        .expect("promote app");
    let parent = store
        .resolve_artifact(&ArtifactQuery {
            bucket: "app".into(),
            channel: Some("prod".into()),
            platform: Platform::Qemu,
            region: "local".into(),
            build: None,
        })
        .await
        .expect("resolve app");
    record(store, Rec::new("svc", "S1", "svc").parent(parent.parent)).await;
    ("B1".into(), "A1".into())
}

async fn revocation_inherited_by_descendants(store: Store) {
    chain(&store).await;
    let req = RevokeRequest {
        reason: "kernel CVE".into(),
        at: None,
        inherit: true,
    };
    let r = store
        .revoke("base", &fp("B1"), &req, "sec")
        .await
        .expect("revoke");
    let desc: Vec<String> = r.descendants.iter().map(|k| k.to_string()).collect();
    assert_eq!(desc, vec!["app/A1", "svc/S1"]);

    let svc = store.version("svc", &fp("S1")).await.expect("svc");
    let rs = svc.revocation.expect("inherited");
    assert!(rs.effective);
    assert_eq!(
        rs.inherited_from.map(|k| k.to_string()).as_deref(),
        Some("base/B1")
    );
    assert!(
        svc.parents[0].revocation.is_some(),
        "the parent app is revoked too"
    );

    let e = store
        .resolve_artifact(&ArtifactQuery {
            bucket: "app".into(),
            channel: Some("prod".into()),
            platform: Platform::Qemu,
            region: "local".into(),
            build: None,
        })
        .await
        .expect_err("revoked parent");
    match &e {
        RegistryError::Revoked { inherited_from, .. } => {
            assert_eq!(inherited_from.as_deref(), Some("base/B1"))
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("restore base/B1"), "{e}");

    let e = store
        .restore("app", &fp("A1"), "sec")
        .await
        .expect_err("inherited only");
    assert!(
        matches!(&e, RegistryError::NotRevoked { inherited_from: Some(f), .. } if f == "base/B1"),
        "{e}"
    );
    store
        .restore("base", &fp("B1"), "sec")
        .await
        .expect("restore base");
    assert!(
        store
            .version("svc", &fp("S1"))
            .await
            .expect("svc")
            .revocation
            .is_none()
    );

    // Without inherit only the version itself is revoked.
    let req = RevokeRequest {
        reason: "only base".into(),
        at: None,
        inherit: false,
    };
    let r = store
        .revoke("base", &fp("B1"), &req, "sec")
        .await
        .expect("revoke");
    assert!(r.descendants.is_empty());
    assert!(
        store
            .version("app", &fp("A1"))
            .await
            .expect("app")
            .revocation
            .is_none()
    );
}

async fn ancestry_up_to_date_and_out_of_date(store: Store) {
    chain(&store).await;
    let a = store.ancestry("base", &fp("B1")).await.expect("ancestry");
    assert!(a.ancestors.is_empty());
    assert_eq!(a.children.len(), 1);
    assert_eq!(a.children[0].child.to_string(), "app/A1");
    assert_eq!(a.children[0].freshness, Freshness::UpToDate);

    let a = store
        .ancestry("svc", &fp("S1"))
        .await
        .expect("ancestry svc");
    let chain: Vec<(u32, String)> = a
        .ancestors
        .iter()
        .map(|l| (l.depth, l.link.parent.to_string()))
        .collect();
    assert_eq!(
        chain,
        vec![(1, "app/A1".to_string()), (2, "base/B1".to_string())]
    );

    // The parent channel moves: the child is out of date.
    record(
        &store,
        Rec::new("base", "B2", "base").only_artifact(Platform::Qemu, "local", "/img/base-2.qcow2"),
    )
    .await;
    store
        .promote("base", &fp("B2"), "prod", "t")
        .await
        .expect("promote B2");
    let a = store.ancestry("base", &fp("B1")).await.expect("ancestry");
    assert_eq!(
        a.children[0].freshness,
        Freshness::OutOfDate {
            current: Some("B2".into())
        }
    );
    let app = store.version("app", &fp("A1")).await.expect("app");
    assert_eq!(
        app.parents[0].freshness,
        Freshness::OutOfDate {
            current: Some("B2".into())
        }
    );

    // A child that named its parent by fingerprint is pinned.
    record(
        &store,
        Rec::new("pinned", "X1", "x").parent(ParentRef {
            bucket: "base".into(),
            fingerprint: "B2".into(),
            channel: None,
            build: None,
            platform: Platform::Qemu,
            region: "local".into(),
            external_id: "/img/base-2.qcow2".into(),
        }),
    )
    .await;
    let a = store
        .ancestry("base", &ch("prod"))
        .await
        .expect("ancestry B2");
    assert_eq!(a.version.fingerprint, "B2");
    assert_eq!(a.children[0].freshness, Freshness::Pinned);
}

async fn resolve_artifact_for_chained_builds(store: Store) {
    record(
        &store,
        Rec::new("multi", "M1", "east").only_artifact(Platform::Aws, "us-east-1", "ami-east"),
    )
    .await;
    let q = |region: &str, build: Option<&str>| ArtifactQuery {
        bucket: "multi".into(),
        channel: None,
        platform: Platform::Aws,
        region: region.into(),
        build: build.map(str::to_string),
    };
    let r = store
        .resolve_artifact(&q("us-east-1", None))
        .await
        .expect("latest");
    assert_eq!(r.artifact.external_id, "ami-east");
    assert_eq!(r.parent.channel.as_deref(), Some("latest"));
    assert_eq!(r.parent.fingerprint, "M1");
    assert_eq!(r.build, "east");
    match store.resolve_artifact(&q("eu-west-1", None)).await {
        Err(RegistryError::UnknownArtifact { available, .. }) => {
            assert_eq!(available, vec!["aws/us-east-1"])
        }
        other => panic!("{other:?}"),
    }

    record(
        &store,
        Rec::new("multi", "M2", "a")
            .expect(&["a", "b"])
            .only_artifact(Platform::Aws, "us-east-1", "ami-a"),
    )
    .await;
    record(
        &store,
        Rec::new("multi", "M2", "b").only_artifact(Platform::Aws, "us-east-1", "ami-b"),
    )
    .await;
    let e = store
        .resolve_artifact(&q("us-east-1", None))
        .await
        .expect_err("ambiguous");
    assert!(matches!(e, RegistryError::Conflict { .. }), "{e}");
    let r = store
        .resolve_artifact(&q("us-east-1", Some("b")))
        .await
        .expect("by build");
    assert_eq!(r.artifact.external_id, "ami-b");
}

async fn parent_links_are_validated(store: Store) {
    record(
        &store,
        Rec::new("base", "B1", "base").only_artifact(Platform::Qemu, "local", "/img/b.qcow2"),
    )
    .await;
    let parent = |bucket: &str, fp: &str, id: &str| ParentRef {
        bucket: bucket.into(),
        fingerprint: fp.into(),
        channel: None,
        build: None,
        platform: Platform::Qemu,
        region: "local".into(),
        external_id: id.into(),
    };
    let e = store
        .record(
            Rec::new("app", "A1", "app")
                .parent(parent("base", "B1", "/img/other.qcow2"))
                .build(),
        )
        .await
        .expect_err("artifact not in parent");
    assert!(matches!(e, RegistryError::UnknownArtifact { .. }), "{e}");
    let e = store
        .record(
            Rec::new("app", "A1", "app")
                .parent(parent("bsae", "B1", "/img/b.qcow2"))
                .build(),
        )
        .await
        .expect_err("unknown bucket");
    assert!(
        matches!(&e, RegistryError::UnknownBucket { suggestions, .. } if suggestions == &vec!["base".to_string()]),
        "{e}"
    );
    // Nothing of the refused records was kept.
    assert!(matches!(
        store.versions("app", 10, None).await,
        Err(RegistryError::UnknownBucket { .. })
    ));
    let e = store
        .record(
            Rec::new("base", "B2", "base")
                .only_artifact(Platform::Qemu, "local", "/img/b2.qcow2")
                .parent(parent("base", "B2", "/img/b2.qcow2"))
                .build(),
        )
        .await
        .expect_err("self parent");
    assert!(
        matches!(
            e,
            RegistryError::InvalidInput { .. } | RegistryError::UnknownVersion { .. }
        ),
        "{e}"
    );
}

async fn versions_page_newest_first(store: Store) {
    for i in 0..7 {
        record(&store, Rec::new("many", &format!("V{i}"), "b")).await;
    }
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = store
            .versions("many", 3, before.as_deref())
            .await
            .expect("page");
        assert_eq!(page.version_count, 7);
        seen.extend(page.versions.iter().map(|v| v.fingerprint.clone()));
        assert!(
            page.versions
                .iter()
                .all(|v| v.complete && v.artifact_count == 1)
        );
        match page.next_before {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, vec!["V6", "V5", "V4", "V3", "V2", "V1", "V0"]);
    let first = store.versions("many", 1, None).await.expect("page");
    assert_eq!(first.versions[0].channels, vec!["latest"]);
}

async fn hostile_input_refused_or_stored_inertly(store: Store) {
    for bad in [
        "../../etc/passwd",
        "x';DROP TABLE buckets;--",
        "a b",
        "",
        "web/../x",
        ".hidden",
        "naïve",
    ] {
        let e = store
            .record(Rec::new(bad, "F1", "b").build())
            .await
            .expect_err(bad);
        assert!(
            matches!(e, RegistryError::InvalidInput { .. }),
            "{bad}: {e}"
        );
        assert!(matches!(
            store.versions(bad, 10, None).await,
            Err(RegistryError::InvalidInput { .. })
        ));
    }
    let sql = "'; DROP TABLE builds; -- \" <script>alert(1)</script> %_";
    record(
        &store,
        Rec::new("safe", "F1", "b").label("note", sql).describe(sql),
    )
    .await;
    let v = store.version("safe", &fp("F1")).await.expect("show");
    assert_eq!(
        v.builds[0].labels.get("note").map(String::as_str),
        Some(sql)
    );

    let huge = "x".repeat(1024 * 1024);
    let e = store
        .record(Rec::new("safe", "F2", "b").label("big", &huge).build())
        .await
        .expect_err("1 MiB label");
    assert!(
        matches!(&e, RegistryError::InvalidInput { field, .. } if field.contains("big")),
        "{e}"
    );
    assert!(
        e.to_string().len() < 400,
        "the message does not echo the input"
    );
    let e = store
        .record(Rec::new("safe", "F2", "b").label(&huge[..200], "v").build())
        .await
        .expect_err("long key");
    assert!(matches!(e, RegistryError::InvalidInput { .. }), "{e}");
    let e = store
        .record(
            Rec::new("safe", "F2", "b")
                .label("ctl", "a\u{1b}[31mred")
                .build(),
        )
        .await
        .expect_err("control chars");
    assert!(matches!(e, RegistryError::InvalidInput { .. }), "{e}");

    // The tables are intact and only the valid records exist.
    let buckets = store.buckets().await.expect("buckets");
    assert_eq!(
        buckets.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        vec!["safe"]
    );
    assert_eq!(buckets[0].description, sql);
}

async fn tokens_hashed_and_verified(store: Store) {
    let (info, secret) = store.create_token("ci").await.expect("token");
    assert_eq!(info.name, "ci");
    assert!(!format!("{secret:?}{secret}").contains(&secret.expose()[5..]));
    assert_eq!(
        store
            .verify_token(&secret)
            .await
            .expect("verify")
            .as_deref(),
        Some("ci")
    );
    let mut wrong = secret.expose().to_string();
    let last = wrong.pop().expect("char");
    wrong.push(if last == '0' { '1' } else { '0' });
    let wrong = kiln_registry::SecretToken::new(wrong);
    assert_eq!(store.verify_token(&wrong).await.expect("verify"), None);
    assert_eq!(
        store
            .verify_token(&kiln_registry::SecretToken::new("'; DROP TABLE tokens; --"))
            .await
            .expect("verify"),
        None
    );
    let e = store.create_token("ci").await.expect_err("duplicate");
    assert!(matches!(e, RegistryError::Conflict { .. }));
    assert_eq!(store.tokens().await.expect("list").len(), 1);
    assert!(store.delete_token("ci").await.expect("delete"));
    assert_eq!(store.verify_token(&secret).await.expect("verify"), None);
}

async fn cli_commands_render(store: Store) {
    record(
        &store,
        Rec::new("web", "01JCLI0001", "web").label("os", "debian"),
    )
    .await;
    let run = |cmd: Command| {
        let store = store.clone();
        async move { cli::execute(&store, cmd, "cli:test").await }
    };
    let out = run(Command::List {
        bucket: None,
        limit: 50,
        before: None,
    })
    .await
    .expect("list");
    let text = out.render(Format::Human);
    assert!(text.starts_with("BUCKET"), "{text}");
    assert!(
        text.contains("web") && text.contains("01JCLI0001"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&out.render(Format::Json)).expect("json");
    assert_eq!(json[0]["name"], "web");

    let out = run(Command::Promote {
        bucket: "web".into(),
        version: VersionRef::parse("01JCLI"),
        channel: "prod".into(),
    })
    .await
    .expect("promote");
    assert!(
        out.render(Format::Human)
            .contains("promoted web/01JCLI0001 to prod")
    );

    let out = run(Command::Show {
        bucket: "web".into(),
        version: VersionRef::parse("@prod"),
    })
    .await
    .expect("show");
    let text = out.render(Format::Human);
    assert!(
        text.contains("ami-01JCLI0001-web") && text.contains("db_password=<secret>"),
        "{text}"
    );
    assert!(matches!(out, Output::Version(_)));

    let out = run(Command::Revoke {
        bucket: "web".into(),
        version: VersionRef::parse("01JCLI0001"),
        reason: "broken".into(),
        at: Some("2h".into()),
        inherit: true,
    })
    .await
    .expect("revoke");
    assert!(
        out.render(Format::Human)
            .contains("revoked web/01JCLI0001 from"),
        "{}",
        out.render(Format::Human)
    );
    let e = run(Command::Revoke {
        bucket: "web".into(),
        version: VersionRef::parse("01JCLI0001"),
        reason: "x".into(),
        at: Some("soon".into()),
        inherit: false,
    })
    .await
    .expect_err("bad time");
    assert_eq!(e.exit_code(), 2);

    let out = run(Command::Channels {
        bucket: "web".into(),
        history: 10,
    })
    .await
    .expect("channels");
    let text = out.render(Format::Human);
    assert!(
        text.contains("latest (kiln)") && text.contains("revokes"),
        "{text}"
    );
    let out = run(Command::Restore {
        bucket: "web".into(),
        version: VersionRef::parse("01JCLI0001"),
    })
    .await
    .expect("restore");
    assert!(
        out.render(Format::Human)
            .starts_with("restored web/01JCLI0001")
    );
    let out = run(Command::Ancestry {
        bucket: "web".into(),
        version: VersionRef::parse("@latest"),
    })
    .await
    .expect("ancestry");
    assert!(out.render(Format::Human).contains("children: none"));
    let out = run(Command::List {
        bucket: Some("web".into()),
        limit: 10,
        before: None,
    })
    .await
    .expect("versions");
    assert!(out.render(Format::Human).contains("FINGERPRINT"));
    let e = run(Command::Show {
        bucket: "wbe".into(),
        version: VersionRef::parse("@latest"),
    })
    .await
    .expect_err("typo");
    assert!(cli::render_error(&e, Format::Human).contains("did you mean \"web\""));
}
