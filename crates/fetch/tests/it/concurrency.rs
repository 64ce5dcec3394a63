//! Two fetches of the same URL at once, in two threads and in two processes: one GET,
//! the second waits (and says so) and then uses the finished entry.
//!
//! The server holds the first response after 1 MiB until the test releases it, so the
//! second fetch starts for certain while the first is mid-transfer; no timing involved.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_fetch::testkit::{self, HttpServer};
use kiln_fetch::{ChecksumSpec, FetchRequest, Origin};

use crate::common::{Recorder, fetcher, serve_file};

const SIZE: u64 = 4 << 20;
const PATIENCE: Duration = Duration::from_secs(120);

fn until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_threads_download_once() {
    let server = HttpServer::builder()
        .hold_after(1 << 20)
        .start()
        .expect("http server");
    let sha = serve_file(&server, "shared.qcow2", SIZE, 50);
    let cache = tempfile::tempdir().unwrap();
    let req = FetchRequest::new(
        server.url("shared.qcow2"),
        ChecksumSpec::parse(&format!("sha256:{sha}")).unwrap(),
    );
    let spawn = |rec: Arc<Recorder>| {
        let dir = cache.path().to_path_buf();
        let req = req.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // Each thread has its own Fetcher, like two builds in one process would.
            rt.block_on(async { fetcher(&dir).fetch(&req, &*rec).await })
        })
    };
    let rec_a = Arc::new(Recorder::default());
    let rec_b = Arc::new(Recorder::default());
    let a = spawn(rec_a.clone());
    until("the first GET", || server.gets("/shared.qcow2").len() == 1);
    let b = spawn(rec_b.clone());
    until("the second thread to wait", || rec_b.waited());
    server.release();
    let fa = a.join().unwrap().expect("first fetch");
    let fb = b.join().unwrap().expect("second fetch");
    assert_eq!(fa.origin, Origin::Downloaded);
    assert_eq!(fb.origin, Origin::Cache);
    assert_eq!(fa.path, fb.path);
    assert_eq!(testkit::sha256_file(&fb.path).unwrap(), sha);
    assert!(!rec_a.waited());
    assert_eq!(
        server.gets("/shared.qcow2").len(),
        1,
        "{:?}",
        server.requests()
    );
}

#[test]
fn two_processes_download_once() {
    let server = HttpServer::builder()
        .hold_after(1 << 20)
        .start()
        .expect("http server");
    let sha = serve_file(&server, "shared.qcow2", SIZE, 51);
    let cache = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let bin = testkit::example_binary("kiln-fetch").expect("example binary");
    let spawn = |name: &str| {
        let err = std::fs::File::create(logs.path().join(name)).unwrap();
        Command::new(&bin)
            .args(["--no-proxy", "--cache"])
            .arg(cache.path())
            .args(["--checksum", &format!("sha256:{sha}")])
            .arg(server.url("shared.qcow2"))
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn the example")
    };
    let a = spawn("a.err");
    until("the first GET", || server.gets("/shared.qcow2").len() == 1);
    let b = spawn("b.err");
    let b_err = logs.path().join("b.err");
    until("the second process to wait", || {
        std::fs::read_to_string(&b_err)
            .unwrap_or_default()
            .contains("waiting for another kiln to finish downloading")
    });
    server.release();
    let out_a = a.wait_with_output().unwrap();
    let out_b = b.wait_with_output().unwrap();
    let read = |o: &std::process::Output, err: &str| {
        assert!(
            o.status.success(),
            "{err}: {}",
            std::fs::read_to_string(logs.path().join(err)).unwrap_or_default()
        );
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let ja = read(&out_a, "a.err");
    let jb = read(&out_b, "b.err");
    assert_eq!(ja["origin"], "Downloaded");
    assert_eq!(jb["origin"], "Cache");
    assert_eq!(ja["path"], jb["path"]);
    assert_eq!(jb["digest"], format!("sha256:{sha}"));
    assert_eq!(
        server.gets("/shared.qcow2").len(),
        1,
        "{:?}",
        server.requests()
    );
}

#[test]
fn waiter_takes_over_and_resumes_when_the_downloader_dies() {
    // A downloads and is killed while B waits for its lock: flock is released with the
    // process, B takes over and resumes A's partial with a Range request.
    let hold = 3 << 20;
    let server = HttpServer::builder()
        .hold_after(hold)
        .start()
        .expect("http server");
    let size = 6 << 20;
    let sha = serve_file(&server, "shared.qcow2", size, 52);
    let cache = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let bin = testkit::example_binary("kiln-fetch").expect("example binary");
    let spawn = |name: &str| {
        let err = std::fs::File::create(logs.path().join(name)).unwrap();
        Command::new(&bin)
            .args(["--no-proxy", "--cache"])
            .arg(cache.path())
            .args(["--checksum", &format!("sha256:{sha}")])
            .arg(server.url("shared.qcow2"))
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn the example")
    };
    let part_size = || {
        std::fs::read_dir(cache.path())
            .unwrap()
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "part"))
            .and_then(|e| e.metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let mut a = spawn("a.err");
    // More than the writer's 1 MiB buffer is on disk.
    until("A's partial", || part_size() >= 2 << 20);
    let b = spawn("b.err");
    let b_err = logs.path().join("b.err");
    until("B to wait", || {
        std::fs::read_to_string(&b_err)
            .unwrap_or_default()
            .contains("waiting for another kiln")
    });
    a.kill().unwrap();
    a.wait().unwrap();
    server.release();
    let out = b.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        std::fs::read_to_string(&b_err).unwrap_or_default()
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["origin"], "Downloaded");
    assert_eq!(
        testkit::sha256_file(std::path::Path::new(j["path"].as_str().unwrap())).unwrap(),
        sha
    );
    let gets = server.gets("/shared.qcow2");
    assert_eq!(gets.len(), 2, "{gets:?}");
    // B resumed from what A had on disk: at least the 2 MiB seen, at most what A got.
    let from: u64 = gets[1]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a resume: {:?}", gets[1]));
    assert!((2 << 20..=hold).contains(&from), "{from}");
}
