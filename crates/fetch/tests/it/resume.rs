//! Interrupted downloads: resumed with Range (+ If-Range) when the server can, restarted
//! from zero when it cannot, and always verified.

use std::process::{Command, Stdio};
use std::time::Duration;

use kiln_fetch::testkit::{self, HttpServer};
use kiln_fetch::{ChecksumSpec, EntryState, FetchError, FetchRequest, Fetcher, Origin, Restart};

use crate::common::{Event, Recorder, cache_files, config, serve_file};

const SIZE: u64 = 4 << 20;
const CUT: u64 = 1 << 20;

fn no_retry(cache: &std::path::Path) -> Fetcher {
    let mut c = config(cache);
    c.resume_attempts = 0;
    Fetcher::new(c).unwrap()
}

fn spec(sha: &str) -> ChecksumSpec {
    ChecksumSpec::parse(&format!("sha256:{sha}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connection_then_next_fetch_resumes_with_range() {
    let server = HttpServer::builder()
        .cut_after(CUT)
        .start()
        .expect("http server");
    let sha = serve_file(&server, "big.qcow2", SIZE, 40);
    let cache = tempfile::tempdir().unwrap();
    let f = no_retry(cache.path());
    let req = FetchRequest::new(server.url("big.qcow2"), spec(&sha));

    let err = f.fetch(&req, &Recorder::default()).await.unwrap_err();
    match &err {
        FetchError::Interrupted { received, .. } => assert_eq!(*received, CUT),
        other => panic!("{other:?}"),
    }
    assert!(err.is_resumable());
    // The partial is kept (and listed as such), nothing is a complete entry.
    let listed = f.cache().list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, EntryState::Partial);
    assert_eq!(listed[0].size, CUT);

    let rec = Recorder::default();
    let got = f.fetch(&req, &rec).await.unwrap();
    assert_eq!(got.origin, Origin::Downloaded);
    assert_eq!(testkit::sha256_file(&got.path).unwrap(), sha);
    let gets = server.gets("/big.qcow2");
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    assert_eq!(
        gets[1].range.as_deref(),
        Some(format!("bytes={CUT}-").as_str())
    );
    assert!(
        gets[1]
            .if_range
            .as_deref()
            .is_some_and(|v| v.starts_with('"')),
        "If-Range carries the ETag: {:?}",
        gets[1].if_range
    );
    assert!(rec.events().contains(&Event::Resumed(CUT)));
    // The final progress report covers the whole file.
    assert!(rec.events().contains(&Event::Done(SIZE)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fetch_resumes_by_itself_after_repeated_cuts() {
    let server = HttpServer::builder()
        .cut_after(CUT)
        .cut_times(2)
        .start()
        .expect("http server");
    let sha = serve_file(&server, "big.qcow2", SIZE, 41);
    let cache = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    let got = crate::common::fetcher(cache.path())
        .fetch(
            &FetchRequest::new(server.url("big.qcow2"), spec(&sha)),
            &rec,
        )
        .await
        .unwrap();
    assert_eq!(testkit::sha256_file(&got.path).unwrap(), sha);
    let ranges: Vec<Option<String>> = server
        .gets("/big.qcow2")
        .into_iter()
        .map(|r| r.range)
        .collect();
    assert_eq!(
        ranges,
        vec![
            None,
            Some(format!("bytes={CUT}-")),
            Some(format!("bytes={}-", 2 * CUT))
        ]
    );
    let retries: Vec<_> = rec
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::Retrying(_)))
        .collect();
    assert_eq!(retries, vec![Event::Retrying(1), Event::Retrying(2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_ignoring_range_restarts_from_zero_and_verifies() {
    let server = HttpServer::builder()
        .cut_after(CUT)
        .ignore_range()
        .start()
        .expect("http server");
    let sha = serve_file(&server, "big.qcow2", SIZE, 42);
    let cache = tempfile::tempdir().unwrap();
    let f = no_retry(cache.path());
    let req = FetchRequest::new(server.url("big.qcow2"), spec(&sha));
    assert!(
        f.fetch(&req, &Recorder::default())
            .await
            .unwrap_err()
            .is_resumable()
    );
    let rec = Recorder::default();
    let got = f.fetch(&req, &rec).await.unwrap();
    assert_eq!(testkit::sha256_file(&got.path).unwrap(), sha);
    let gets = server.gets("/big.qcow2");
    assert_eq!(gets.len(), 2);
    // We asked to resume; the server sent the whole file (200) and we took it from zero.
    assert_eq!(
        gets[1].range.as_deref(),
        Some(format!("bytes={CUT}-").as_str())
    );
    assert!(
        rec.events()
            .contains(&Event::Restarted(Restart::RangeIgnored))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changed_on_the_server_restarts_via_if_range() {
    let server = HttpServer::builder()
        .cut_after(CUT)
        .start()
        .expect("http server");
    serve_file(&server, "rel.iso", SIZE, 43);
    let cache = tempfile::tempdir().unwrap();
    let f = no_retry(cache.path());
    // The checksum of the new release, which the server does not have yet.
    let new_path = tempfile::tempdir().unwrap();
    let new_sha = testkit::write_mixed_file(&new_path.path().join("x"), SIZE, 44).unwrap();
    let req = FetchRequest::new(server.url("rel.iso"), spec(&new_sha));
    assert!(
        f.fetch(&req, &Recorder::default())
            .await
            .unwrap_err()
            .is_resumable()
    );
    // The mirror is updated (new content, new mtime, so a new ETag).
    std::thread::sleep(Duration::from_millis(20));
    std::fs::copy(new_path.path().join("x"), server.root().join("rel.iso")).unwrap();
    let rec = Recorder::default();
    let got = f.fetch(&req, &rec).await.unwrap();
    assert_eq!(testkit::sha256_file(&got.path).unwrap(), new_sha);
    assert!(
        rec.events()
            .contains(&Event::Restarted(Restart::ValidatorChanged)),
        "{:?}",
        rec.events()
    );
    assert!(server.gets("/rel.iso")[1].if_range.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spliced_resume_without_validators_is_caught_and_redone() {
    // No ETag/Last-Modified: resuming is still allowed because the checksum checks the
    // result; a splice of two versions fails it and one full download follows.
    let server = HttpServer::builder()
        .cut_after(CUT)
        .no_validators()
        .start()
        .expect("http server");
    serve_file(&server, "rel.iso", SIZE, 45);
    let other = tempfile::tempdir().unwrap();
    let new_sha = testkit::write_mixed_file(&other.path().join("x"), SIZE, 46).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let f = no_retry(cache.path());
    let req = FetchRequest::new(server.url("rel.iso"), spec(&new_sha));
    assert!(
        f.fetch(&req, &Recorder::default())
            .await
            .unwrap_err()
            .is_resumable()
    );
    std::fs::copy(other.path().join("x"), server.root().join("rel.iso")).unwrap();
    let rec = Recorder::default();
    let got = f.fetch(&req, &rec).await.unwrap();
    assert_eq!(testkit::sha256_file(&got.path).unwrap(), new_sha);
    let gets = server.gets("/rel.iso");
    let ranges: Vec<Option<String>> = gets.iter().map(|r| r.range.clone()).collect();
    assert_eq!(ranges, vec![None, Some(format!("bytes={CUT}-")), None]);
    assert_eq!(gets[1].if_range, None);
    assert!(
        rec.events()
            .contains(&Event::Restarted(Restart::MismatchAfterResume))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_transfer_times_out_and_resumes() {
    let server = HttpServer::builder()
        .stall_after(CUT)
        .start()
        .expect("http server");
    let sha = serve_file(&server, "slow.iso", 2 * CUT, 47);
    let cache = tempfile::tempdir().unwrap();
    let mut c = config(cache.path());
    // The server never sends more: the outcome does not depend on the machine's speed.
    c.read_timeout = Duration::from_secs(2);
    c.resume_attempts = 0;
    let f = Fetcher::new(c).unwrap();
    let req = FetchRequest::new(server.url("slow.iso"), spec(&sha));
    match f.fetch(&req, &Recorder::default()).await {
        Err(FetchError::Stalled {
            received, after, ..
        }) => {
            assert_eq!(received, CUT);
            assert_eq!(after, Duration::from_secs(2));
        }
        other => panic!("{other:?}"),
    }
    // The partial is kept for the next fetch (resuming is covered above).
    let listed = f.cache().list().unwrap();
    assert_eq!(listed[0].state, EntryState::Partial);
    assert_eq!(listed[0].size, CUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_leaves_a_resumable_partial() {
    // The example binary is killed (SIGKILL) mid-download; the next fetch resumes from
    // whatever reached the disk and the result verifies.
    let hold = 3 << 20;
    let server = HttpServer::builder()
        .hold_after(hold)
        .start()
        .expect("http server");
    let size = 6 << 20;
    let sha = serve_file(&server, "k.qcow2", size, 48);
    let cache = tempfile::tempdir().unwrap();
    let bin = testkit::example_binary("kiln-fetch").expect("example binary");
    let mut child = Command::new(&bin)
        .args(["--no-proxy", "--cache"])
        .arg(cache.path())
        .args([
            "--checksum",
            &format!("sha256:{sha}"),
            &server.url("k.qcow2"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn example");
    // Wait until at least 2 MiB are on disk (the writer buffers up to 1 MiB).
    let part_size = || {
        cache_files(cache.path())
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "part"))
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let start = std::time::Instant::now();
    while part_size() < (2 << 20) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no partial appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the example exited early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = part_size();
    assert!(kept >= 2 << 20 && kept <= hold, "{kept}");
    server.release();
    let f = crate::common::fetcher(cache.path());
    let got = f
        .fetch(
            &FetchRequest::new(server.url("k.qcow2"), spec(&sha)),
            &Recorder::default(),
        )
        .await
        .unwrap();
    assert_eq!(testkit::sha256_file(&got.path).unwrap(), sha);
    let gets = server.gets("/k.qcow2");
    assert_eq!(gets.len(), 2);
    assert_eq!(
        gets[1].range.as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_partials_resume_only_within_the_same_boot() {
    let server = HttpServer::builder()
        .cut_after(CUT)
        .cut_times(2)
        .start()
        .expect("http server");
    let sha = serve_file(&server, "n.img", SIZE, 49);
    let cache = tempfile::tempdir().unwrap();
    let f = no_retry(cache.path());
    let req = FetchRequest::new(server.url("n.img"), ChecksumSpec::None);
    assert!(
        f.fetch(&req, &Recorder::default())
            .await
            .unwrap_err()
            .is_resumable()
    );
    // Same boot, validators present: `none` resumes too.
    match f.fetch(&req, &Recorder::default()).await {
        Err(FetchError::Interrupted { received, .. }) => assert_eq!(received, 2 * CUT),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        server.gets("/n.img")[1].range.as_deref(),
        Some(format!("bytes={CUT}-").as_str())
    );
    // The partial claims an earlier boot: without a checksum it is not trusted.
    let meta = cache_files(cache.path())
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".part.json"))
        .expect("resume record");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    v["boot_id"] = "00000000-0000-0000-0000-000000000000".into();
    std::fs::write(&meta, serde_json::to_vec(&v).unwrap()).unwrap();
    let rec = Recorder::default();
    let got = f.fetch(&req, &rec).await.unwrap();
    assert_eq!(testkit::sha256_file(&got.path).unwrap(), sha);
    assert!(
        rec.events()
            .contains(&Event::Restarted(Restart::PartialFromEarlierBoot))
    );
    assert_eq!(server.gets("/n.img")[2].range, None);
}
