//! Separate OS processes writing one registry at once (the `registry-writer` example).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;

use kiln_registry::testkit::Postgres;
use kiln_registry::{Store, VersionRef};

/// `target/<profile>/examples/registry-writer`, built by `cargo test` with the examples.
fn writer_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let bin = profile_dir.join("examples").join("registry-writer");
    assert!(
        bin.is_file(),
        "{} is missing: `cargo test -p kiln-registry` builds it (or cargo build --examples -p kiln-registry)",
        bin.display()
    );
    bin
}

async fn run_writers(args: Vec<Vec<String>>) -> Vec<String> {
    let bin = writer_bin();
    let mut children = Vec::new();
    for a in &args {
        let child = tokio::process::Command::new(&bin)
            .args(a)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn registry-writer");
        children.push(child);
    }
    let mut outs = Vec::new();
    for c in children {
        let out = c.wait_with_output().await.expect("writer output");
        assert!(
            out.status.success(),
            "writer failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        outs.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    outs
}

#[tokio::test]
async fn sqlite_eight_writer_processes_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The file does not exist yet: the eight processes also race to create and migrate it.
    let db = dir.path().join("shared.db");
    let loc = format!("sqlite:{}", db.display());
    const WRITERS: usize = 8;
    const EACH: usize = 25;
    let args: Vec<Vec<String>> = (0..WRITERS)
        .map(|w| {
            vec![
                "--registry".into(),
                loc.clone(),
                "--bucket".into(),
                "par".into(),
                "--writer".into(),
                w.to_string(),
                "--count".into(),
                EACH.to_string(),
            ]
        })
        .collect();
    let outs = run_writers(args).await;
    assert_eq!(outs.len(), WRITERS);

    let store = Store::open(&loc).await.expect("open");
    let mut seen = HashSet::new();
    let mut before: Option<String> = None;
    loop {
        let page = store
            .versions("par", 100, before.as_deref())
            .await
            .expect("page");
        assert_eq!(page.version_count, i64::try_from(WRITERS * EACH).unwrap());
        for v in &page.versions {
            assert!(v.complete, "{} incomplete", v.fingerprint);
            assert!(
                seen.insert(v.fingerprint.clone()),
                "duplicate {}",
                v.fingerprint
            );
        }
        match page.next_before {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    for w in 0..WRITERS {
        for i in 0..EACH {
            assert!(seen.contains(&format!("w{w}-{i}")), "w{w}-{i} lost");
        }
    }
    let channels = store.channels("par", 10_000).await.expect("channels");
    assert_eq!(
        channels.history.len(),
        WRITERS * EACH,
        "latest moved once per completed version"
    );
    assert_eq!(
        channels.channels[0].serial,
        i64::try_from(WRITERS * EACH).unwrap()
    );
}

#[tokio::test]
async fn postgres_two_recorders_one_fingerprint_make_one_version() {
    let pg = Postgres::shared().expect("PostgreSQL test cluster must start");
    let url = pg.create_database().expect("database");
    let store = Store::open(&url).await.expect("open");
    let pair = |fp: &str, status_b: &str| -> Vec<Vec<String>> {
        ["a", "b"]
            .iter()
            .map(|b| {
                let mut a: Vec<String> = vec![
                    "--registry".into(),
                    url.clone(),
                    "--bucket".into(),
                    "web".into(),
                    "--fingerprint".into(),
                    fp.into(),
                    "--build".into(),
                    b.to_string(),
                    "--expected".into(),
                    "a,b".into(),
                ];
                if *b == "b" {
                    a.extend(["--status".into(), status_b.into()]);
                }
                a
            })
            .collect()
    };

    // Several rounds so the two transactions really overlap at least once.
    for round in 0..4 {
        let fp = format!("SHARED{round}");
        run_writers(pair(&fp, "succeeded")).await;
        let v = store
            .version("web", &VersionRef::Fingerprint(fp.clone()))
            .await
            .expect("version");
        assert!(v.complete, "round {round}: {v:?}");
        let names: Vec<&str> = v.builds.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(v.expected_builds, vec!["a", "b"]);
        let (latest, _) = store.channel("web", "latest").await.expect("latest");
        assert_eq!(latest.fingerprint, fp);
    }
    let history = store.channels("web", 100).await.expect("channels").history;
    assert_eq!(
        history.len(),
        4,
        "exactly one recorder completed each version"
    );

    // One of the two fails: the version stays incomplete until b succeeds.
    run_writers(pair("HALF", "failed")).await;
    let v = store
        .version("web", &VersionRef::Fingerprint("HALF".into()))
        .await
        .expect("version");
    assert!(!v.complete);
    assert_eq!(v.missing_builds, vec!["b"]);
    let (latest, _) = store.channel("web", "latest").await.expect("latest");
    assert_eq!(latest.fingerprint, "SHARED3");
    let mut retry = pair("HALF", "succeeded");
    retry.remove(0);
    run_writers(retry).await;
    let v = store
        .version("web", &VersionRef::Fingerprint("HALF".into()))
        .await
        .expect("version");
    assert!(v.complete);
    let (latest, _) = store.channel("web", "latest").await.expect("latest");
    assert_eq!(latest.fingerprint, "HALF");
}
