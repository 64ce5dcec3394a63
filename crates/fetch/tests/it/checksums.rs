//! Download + verify with every checksum form, by URL and by path.

use std::fs;

use kiln_fetch::testkit::HttpServer;
use kiln_fetch::{ChecksumSpec, FetchError, FetchRequest, LocalMode, Origin, Silent, testkit};

use crate::common::{fetcher, serve_file};

const SIZE: u64 = 3 * 1024 * 1024 + 17;

/// Digests of a file by every algorithm, via the system tools (an independent check).
fn digest_with(tool: &str, path: &std::path::Path) -> String {
    let out = std::process::Command::new(tool)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(out.status.success(), "{tool} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_inline_form_by_url() {
    let server = HttpServer::start().expect("http server");
    let sha256 = serve_file(&server, "disk.qcow2", SIZE, 1);
    let file = server.root().join("disk.qcow2");
    let sha512 = digest_with("sha512sum", &file);
    let sha1 = digest_with("sha1sum", &file);
    let md5 = digest_with("md5sum", &file);
    assert_eq!(digest_with("sha256sum", &file), sha256);
    let url = server.url("disk.qcow2");
    let forms = [
        format!("sha256:{sha256}"),
        format!("SHA256:{}", sha256.to_uppercase()),
        format!("sha512:{sha512}"),
        format!("sha1:{sha1}"),
        format!("md5:{md5}"),
        sha256.clone(),
        sha512.clone(),
        sha1.clone(),
        md5.clone(),
    ];
    for form in &forms {
        // A fresh cache per form: each one really downloads and verifies.
        let cache = tempfile::tempdir().unwrap();
        let f = fetcher(cache.path());
        let spec = ChecksumSpec::parse(form).unwrap();
        let got = f
            .fetch(&FetchRequest::new(url.clone(), spec.clone()), &Silent)
            .await
            .unwrap_or_else(|e| panic!("{form}: {e}"));
        assert_eq!(got.origin, Origin::Downloaded, "{form}");
        assert!(got.verified, "{form}");
        assert_eq!(got.size, SIZE);
        assert_eq!(testkit::sha256_file(&got.path).unwrap(), sha256, "{form}");
        let ChecksumSpec::Digest(want) = spec else {
            unreachable!()
        };
        assert_eq!(got.digest.as_ref(), Some(&want), "{form}");
        assert!(got.path.starts_with(cache.path()));
    }
    assert_eq!(server.gets("/disk.qcow2").len(), forms.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sums_files_gnu_bsd_by_url_and_path() {
    let server = HttpServer::start().expect("http server");
    let sha256 = serve_file(&server, "images/debian-12.qcow2", SIZE, 2);
    let other = serve_file(&server, "images/other.iso", 1000, 3);
    let sha512 = digest_with("sha512sum", &server.root().join("images/debian-12.qcow2"));
    let z = "0".repeat(64);
    // GNU text mode with ./, binary mode, and a relative path below the sums file.
    fs::write(
        server.root().join("images/SHA256SUMS"),
        format!("{other}  other.iso\n{sha256} *./debian-12.qcow2\n{z}  unrelated.img\n"),
    )
    .unwrap();
    fs::write(
        server.root().join("SHA256SUMS"),
        format!("{z}  debian-12.qcow2\n{sha256}  ./images/debian-12.qcow2\n"),
    )
    .unwrap();
    // BSD format, with a weaker md5 line for the same file that must lose.
    fs::write(
        server.root().join("images/CHECKSUM"),
        format!(
            "MD5 (debian-12.qcow2) = 00000000000000000000000000000000\nSHA512 (debian-12.qcow2) = {sha512}\n"
        ),
    )
    .unwrap();
    let local_sums = tempfile::tempdir().unwrap();
    fs::write(
        local_sums.path().join("SHA256SUMS"),
        format!("{sha256}  debian-12.qcow2\n"),
    )
    .unwrap();

    let url = server.url("images/debian-12.qcow2");
    let cases = [
        format!("file:{}", server.url("images/SHA256SUMS")),
        // Matched by the path relative to the sums file (the base name's line is wrong).
        format!("file:{}", server.url("SHA256SUMS")),
        format!("file:{}", server.url("images/CHECKSUM")),
        format!("file:{}", local_sums.path().join("SHA256SUMS").display()),
        format!(
            "file:file://{}",
            local_sums.path().join("SHA256SUMS").display()
        ),
    ];
    for case in &cases {
        let cache = tempfile::tempdir().unwrap();
        let got = fetcher(cache.path())
            .fetch(
                &FetchRequest::new(url.clone(), ChecksumSpec::parse(case).unwrap()),
                &Silent,
            )
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(got.verified);
        assert_eq!(testkit::sha256_file(&got.path).unwrap(), sha256, "{case}");
    }
    let bsd = &cases[2];
    let cache = tempfile::tempdir().unwrap();
    let got = fetcher(cache.path())
        .fetch(
            &FetchRequest::new(url.clone(), ChecksumSpec::parse(bsd).unwrap()),
            &Silent,
        )
        .await
        .unwrap();
    assert_eq!(
        got.digest.unwrap().algorithm(),
        kiln_fetch::Algorithm::Sha512
    );

    // A relative `file:` path resolves against the request's base dir.
    let cache = tempfile::tempdir().unwrap();
    let got = fetcher(cache.path())
        .fetch(
            &FetchRequest::new(url.clone(), ChecksumSpec::parse("file:SHA256SUMS").unwrap())
                .base_dir(local_sums.path()),
            &Silent,
        )
        .await
        .unwrap();
    assert!(got.verified);

    // A name that is not in the sums file, and a sums URL that serves HTML.
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(cache.path());
    let spec = ChecksumSpec::parse(&format!("file:{}", server.url("images/SHA256SUMS"))).unwrap();
    fs::write(server.root().join("images/missing.iso"), b"x").unwrap();
    match f
        .fetch(
            &FetchRequest::new(server.url("images/missing.iso"), spec),
            &Silent,
        )
        .await
    {
        Err(FetchError::NotInSumsFile { name, entries, .. }) => {
            assert_eq!(name, "missing.iso");
            assert_eq!(entries, 3);
        }
        other => panic!("{other:?}"),
    }
    fs::write(server.root().join("index.html"), "<html>Not here</html>").unwrap();
    let spec = ChecksumSpec::parse(&format!("file:{}", server.url("index.html"))).unwrap();
    match f
        .fetch(&FetchRequest::new(url.clone(), spec), &Silent)
        .await
    {
        Err(e @ FetchError::BadSumsFile { .. }) => {
            assert!(e.to_string().contains("no checksum line"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let spec = ChecksumSpec::parse(&format!("file:{}", server.url("NOPE"))).unwrap();
    assert!(matches!(
        f.fetch(&FetchRequest::new(url, spec), &Silent).await,
        Err(FetchError::NotFound { .. })
    ));
    assert!(cache_is_empty(cache.path()));
}

fn cache_is_empty(dir: &std::path::Path) -> bool {
    crate::common::cache_files(dir).is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_paths_in_place_and_copied() {
    let src_dir = tempfile::tempdir().unwrap();
    let file = src_dir.path().join("base image.qcow2");
    let sha256 = testkit::write_mixed_file(&file, SIZE, 4).unwrap();
    let md5 = digest_with("md5sum", &file);
    fs::write(
        src_dir.path().join("SHA256SUMS"),
        format!("{sha256}  base image.qcow2\n"),
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(cache.path());
    let file_url = format!("file://{}", file.display()).replace(' ', "%20");
    let specs = [
        format!("sha256:{sha256}"),
        md5.clone(),
        format!("file:{}", src_dir.path().join("SHA256SUMS").display()),
    ];
    for input in [
        file.display().to_string(),
        file_url.clone(),
        "base image.qcow2".into(),
    ] {
        for spec in &specs {
            let req = FetchRequest::new(input.clone(), ChecksumSpec::parse(spec).unwrap())
                .base_dir(src_dir.path());
            let got = f
                .fetch(&req, &Silent)
                .await
                .unwrap_or_else(|e| panic!("{input} {spec}: {e}"));
            // Used where it is: no copy.
            assert_eq!(got.origin, Origin::Local);
            assert_eq!(got.path, file);
            assert!(got.verified);
        }
    }
    assert!(cache_is_empty(cache.path()), "in-place use copies nothing");

    // A wrong digest fails on a local file too.
    let wrong = format!("sha256:{}", "1".repeat(64));
    match f
        .fetch(
            &FetchRequest::new(file_url.clone(), ChecksumSpec::parse(&wrong).unwrap()),
            &Silent,
        )
        .await
    {
        Err(FetchError::ChecksumMismatch { expected, got, .. }) => {
            assert_eq!(expected, "1".repeat(64));
            assert_eq!(got, sha256);
        }
        other => panic!("{other:?}"),
    }

    // Copy mode: verified into the cache, a hit the second time, re-copied when the
    // source changes.
    let spec = ChecksumSpec::None;
    let req = FetchRequest::new(file_url.clone(), spec).local(LocalMode::Copy);
    let first = f.fetch(&req, &Silent).await.unwrap();
    assert_eq!(first.origin, Origin::Downloaded);
    assert!(first.path.starts_with(cache.path()));
    assert!(!first.verified);
    assert_eq!(
        first.digest.as_ref().unwrap().hex(),
        sha256,
        "none still records sha256"
    );
    drop(first);
    let second = f.fetch(&req, &Silent).await.unwrap();
    assert_eq!(second.origin, Origin::Cache);
    drop(second);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let new_sha = testkit::write_mixed_file(&file, 1234, 5).unwrap();
    let third = f.fetch(&req, &Silent).await.unwrap();
    assert_eq!(third.origin, Origin::Downloaded);
    assert_eq!(testkit::sha256_file(&third.path).unwrap(), new_sha);

    // Missing files and directories.
    let missing = FetchRequest::new("/nonexistent/x.iso", ChecksumSpec::None);
    assert!(matches!(
        f.fetch(&missing, &Silent).await,
        Err(FetchError::LocalFile { .. })
    ));
    let dir = FetchRequest::new(src_dir.path().display().to_string(), ChecksumSpec::None);
    assert!(matches!(
        f.fetch(&dir, &Silent).await,
        Err(FetchError::NotAFile { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_is_accepted_and_reports_the_computed_digest() {
    let server = HttpServer::start().expect("http server");
    let sha256 = serve_file(&server, "a.iso", 100_000, 6);
    let cache = tempfile::tempdir().unwrap();
    let got = fetcher(cache.path())
        .fetch(
            &FetchRequest::new(server.url("a.iso"), ChecksumSpec::None),
            &Silent,
        )
        .await
        .unwrap();
    assert!(!got.verified);
    assert_eq!(got.digest.unwrap().to_string(), format!("sha256:{sha256}"));
}
