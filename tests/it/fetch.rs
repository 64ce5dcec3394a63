//! Inputs by URL through `kiln build`, against the Range-capable HTTP(S) server of
//! kiln-fetch's testkit on 127.0.0.1: the example boots its base image downloaded over
//! HTTPS (a private CA) and verified against a SHA256SUMS; a second build uses the
//! cache; a wrong checksum fails naming both digests and caches nothing; a cut
//! connection is resumed by the next build with `Range`; two builds at once download
//! once; local files and `file://` URLs are verified where they are, through the read
//! grants; `net` is granted per host and shown by `inspect`; redirects to other hosts
//! are refused. Only the first test boots a VM: the others stop after the fetch, most
//! with a small builder of the test's own over the same `ctx.fetch` primitive.

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln_fetch::testkit::{HttpServer, TestCa, sha256_file, write_mixed_file};

use crate::cli::{Project, find_audit, kiln_cmd, text};
use crate::qemu::{VM_LOCK, base_image};

/// Temp state on /var/tmp, where the base image is, so it can be hard-linked.
fn state_dir(prefix: &str) -> tempfile::TempDir {
    let root = Path::new("/var/tmp/kiln-peers");
    std::fs::create_dir_all(root).expect("create /var/tmp/kiln-peers");
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(root)
        .expect("temp dir")
}

/// The base image's SHA-256, computed once per test run.
fn base_sha256() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    SHA.get_or_init(|| sha256_file(&base_image().0).expect("hash the base image"))
}

/// Puts the base image into `root` (a hard link; a copy across filesystems).
fn serve_base(root: &Path) {
    let (image, _) = base_image();
    let dest = root.join("base.qcow2");
    if std::fs::hard_link(&image, &dest).is_err() {
        std::fs::copy(&image, &dest).expect("copy the base image");
    }
}

/// A fresh KILN_CACHE_DIR (the downloads cache is `downloads/` in it).
fn cache() -> tempfile::TempDir {
    state_dir("kiln-cache-")
}

/// `kiln ARGS` in `p` with its own cache and no proxies from the environment.
fn kiln_with(p: &Path, cache: &Path, args: &[&str]) -> std::process::Command {
    let mut c = kiln_cmd(p, args);
    c.env("KILN_CACHE_DIR", cache);
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        c.env_remove(v);
    }
    c
}

fn run(p: &Path, cache: &Path, args: &[&str]) -> Output {
    kiln_with(p, cache, args).output().expect("run kiln")
}

/// A project whose source is a small builder over `ctx.fetch`: it fetches, reports
/// what it got, and stops (no VM). `cfg` is the builder's config map body.
fn fetch_project(cfg: &str) -> Project {
    let p = Project::new();
    p.write(
        "builders/fetch_only.rhai",
        r#"
fn options() { #{ url: (), urls: [], checksum: (), ca_file: () } }
fn urls(cfg) { if cfg.url == () { cfg.urls } else { [cfg.url] } }
fn grants(cfg) { #{ net: fetch_hosts(urls(cfg), cfg.checksum) } }
fn run(cfg, ctx) {
    let dl = ctx.fetch(#{ what: "image", urls: urls(cfg), checksum: cfg.checksum, ca_file: cfg.ca_file });
    ctx.say(`fetched origin=${dl.origin} size=${dl.size} verified=${dl.verified} digest=${dl.digest}`);
    ctx.artifact(#{ id: dl.url })
}
"#,
    );
    p.write(
        "build.rhai",
        &format!(
            "source(\"img\", builder(\"builders/fetch_only.rhai\", #{{ {cfg} }}));\n\
             build(\"fetch\", #{{ sources: [\"img\"], steps: [] }});\n"
        ),
    );
    p
}

/// Files of the downloads cache (entries, markers, partials), without lock files.
fn cached_files(cache: &Path) -> Vec<String> {
    let dir = cache.join("downloads");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    v.sort();
    v
}

/// A temp copy of examples/qemu-debian with the base image's key.
fn example_project() -> Project {
    let (_, key) = base_image();
    let p = Project::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/qemu-debian");
    for f in ["build.rhai", "files/app.conf", "files/www/index.html"] {
        let dest = p.path().join(f);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(src.join(f), dest).unwrap();
    }
    std::fs::create_dir_all(p.path().join("keys")).unwrap();
    std::fs::copy(&key, p.path().join("keys/id_ed25519")).unwrap();
    // A TCG boot on a loaded 2-core machine can take longer than the example's 5 min.
    let script = std::fs::read_to_string(p.path().join("build.rhai")).unwrap();
    assert!(
        script.contains("timeout: \"5m\""),
        "the example's ssh timeout moved"
    );
    p.write(
        "build.rhai",
        &script.replace("timeout: \"5m\"", "timeout: \"20m\""),
    );
    p
}

#[test]
fn the_example_builds_from_an_https_url_checked_by_sha256sums_and_the_next_build_uses_the_cache() {
    let _vm = VM_LOCK.blocking_lock();
    let root = state_dir("kiln-serve-");
    serve_base(root.path());
    // BSD format ("SHA256 (name) = hex"), which `shasum --tag` and *BSD write.
    std::fs::write(
        root.path().join("SHA256SUMS"),
        format!(
            "SHA256 (other.iso) = {}\nSHA256 (base.qcow2) = {}\n",
            "0".repeat(64),
            base_sha256()
        ),
    )
    .unwrap();
    let ca = TestCa::generate().expect("test CA");
    let server = HttpServer::builder()
        .root(root.path())
        .tls(&ca)
        .start()
        .expect("https server");
    let cache = cache();
    let p = example_project();
    std::fs::copy(&ca.ca_cert, p.path().join("keys/ca.pem")).unwrap();
    let url = server.url("base.qcow2");
    let sums = format!("file:{}", server.url("SHA256SUMS"));
    let vars = [
        "--var".to_string(),
        format!("base_image={url}"),
        "--var".into(),
        format!("base_checksum={sums}"),
        "--var".into(),
        "ca_file=keys/ca.pem".into(),
    ];
    let with = |cmd: &str| -> Vec<String> {
        let mut a = vec![cmd.to_string()];
        a.extend(vars.iter().cloned());
        a.push(".".into());
        a
    };

    // inspect shows the host the builder holds `net` for, and nothing is contacted.
    let args = with("inspect");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(p.path(), cache.path(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!("net(127.0.0.1:{})", server.port())),
        "{shown}"
    );
    assert!(server.requests().is_empty(), "inspect contacted the server");

    let args = with("build");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(p.path(), cache.path(), &args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains(&format!("checksum sha256:{} verified", base_sha256())),
        "{all}"
    );
    assert!(p.path().join("output/debian-web.qcow2").is_file(), "{all}");
    assert_eq!(
        server.gets("/base.qcow2").len(),
        1,
        "{:?}",
        server.requests()
    );
    let audit = find_audit(p.path());
    let fetch_line = audit
        .lines()
        .find(|l| l.contains("fetch disk_image"))
        .unwrap_or_else(|| panic!("no fetch line in the audit log:\n{audit}"));
    let size = std::fs::metadata(base_image().0).unwrap().len();
    assert!(
        fetch_line.contains("\"capability\":\"net\"")
            && fetch_line.contains(&format!("127.0.0.1:{}", server.port()))
            && fetch_line.contains(&format!("ok (downloaded {size} bytes")),
        "{fetch_line}"
    );
    // The cached image was a read-only backing file: it still has its checksum.
    let listed = run(p.path(), cache.path(), &["cache", "list"]);
    let listing = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listing.contains("download") && listing.contains(&url) && listing.contains("complete"),
        "{listing}"
    );
    let entry = cached_files(cache.path())
        .into_iter()
        .find(|f| f.ends_with("-base.qcow2"))
        .unwrap_or_else(|| panic!("no cached image: {:?}", cached_files(cache.path())));
    assert_eq!(
        sha256_file(&cache.path().join("downloads").join(entry)).unwrap(),
        base_sha256(),
        "the cached base image was modified"
    );

    // The next build of the same URL and checksum downloads nothing.
    let q = fetch_project(&format!(
        "url: \"{url}\", checksum: \"{sums}\", ca_file: \"ca.pem\""
    ));
    std::fs::copy(&ca.ca_cert, q.path().join("ca.pem")).unwrap();
    let out = run(q.path(), cache.path(), &["build", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("from the download cache") && all.contains("fetched origin=cache"),
        "{all}"
    );
    assert_eq!(
        server.gets("/base.qcow2").len(),
        1,
        "{:?}",
        server.requests()
    );

    // `kiln cache prune` removes what no build uses.
    let out = run(p.path(), cache.path(), &["cache", "prune"]);
    let s = text(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");
    assert!(
        s.contains("removed download") && s.contains("removed 1 entries"),
        "{s}"
    );
    assert!(
        cached_files(cache.path()).is_empty(),
        "{:?}",
        cached_files(cache.path())
    );
}

#[test]
fn a_wrong_checksum_fails_the_qemu_build_naming_both_digests_and_caches_nothing() {
    let root = state_dir("kiln-serve-");
    let real = write_mixed_file(&root.path().join("disk.qcow2"), 4 << 20, 7).unwrap();
    let server = HttpServer::builder()
        .root(root.path())
        .start()
        .expect("http server");
    let cache = cache();
    let p = example_project();
    let wrong = "ab".repeat(32);
    let out = run(
        p.path(),
        cache.path(),
        &[
            "build",
            "--var",
            &format!("base_image={}", server.url("disk.qcow2")),
            "--var",
            &format!("base_checksum=sha256:{wrong}"),
            ".",
        ],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!("expected sha256:{wrong}"))
            && all.contains(&format!("got sha256:{real}")),
        "{all}"
    );
    assert!(all.contains("nothing was cached"), "{all}");
    assert!(
        cached_files(cache.path()).is_empty(),
        "{:?}",
        cached_files(cache.path())
    );
    assert!(!p.path().join("output").exists(), "{all}");
    // No VM was started for it.
    assert!(!all.contains("Started qemu"), "{all}");

    // A URL without a checksum is refused before anything is contacted.
    let before = server.requests().len();
    let out = run(
        p.path(),
        cache.path(),
        &[
            "build",
            "--var",
            &format!("base_image={}", server.url("disk.qcow2")),
            ".",
        ],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("needs a checksum"), "{all}");
    assert_eq!(server.requests().len(), before);
}

#[test]
fn an_interrupted_download_is_resumed_by_the_next_build() {
    let root = state_dir("kiln-serve-");
    let sha = write_mixed_file(&root.path().join("img.raw"), 16 << 20, 3).unwrap();
    // Every GET of the first build is cut after 1 MiB: the first, and each of its
    // three resumes. The next build resumes at 4 MiB and gets the rest.
    let server = HttpServer::builder()
        .root(root.path())
        .cut_after(1 << 20)
        .cut_times(4)
        .start()
        .expect("http server");
    let cache = cache();
    let p = fetch_project(&format!(
        "url: \"{}\", checksum: \"sha256:{sha}\"",
        server.url("img.raw")
    ));
    let out = run(p.path(), cache.path(), &["build", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("the connection broke after"), "{all}");
    assert!(all.contains("Resuming the download"), "{all}");
    let partial: Vec<String> = cached_files(cache.path())
        .into_iter()
        .filter(|f| f.ends_with(".part"))
        .collect();
    assert_eq!(partial.len(), 1, "{:?}", cached_files(cache.path()));

    let out = run(p.path(), cache.path(), &["build", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("fetched origin=downloaded"), "{all}");
    assert!(all.contains(&format!("digest=sha256:{sha}")), "{all}");
    let gets = server.gets("/img.raw");
    assert_eq!(gets.len(), 5, "{gets:?}");
    assert_eq!(gets[0].range, None, "{gets:?}");
    assert_eq!(
        gets[4].range.as_deref(),
        Some(format!("bytes={}-", 4 << 20).as_str()),
        "{gets:?}"
    );
}

#[test]
fn two_builds_at_once_download_once_and_the_second_waits() {
    let root = state_dir("kiln-serve-");
    let sha = write_mixed_file(&root.path().join("shared.img"), 8 << 20, 11).unwrap();
    // The first response stops after 2 MiB until the test releases it, so the second
    // build is sure to find the download in progress.
    let server = HttpServer::builder()
        .root(root.path())
        .hold_after(2 << 20)
        .start()
        .expect("http server");
    let cache = cache();
    let cfg = format!(
        "url: \"{}\", checksum: \"sha256:{sha}\"",
        server.url("shared.img")
    );
    let a = fetch_project(&cfg);
    let b = fetch_project(&cfg);
    let logs = state_dir("kiln-logs-");
    let spawn = |p: &Project, name: &str| {
        let out = std::fs::File::create(logs.path().join(name)).unwrap();
        kiln_with(p.path(), cache.path(), &["build", "."])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn kiln")
    };
    let read = |name: &str| std::fs::read_to_string(logs.path().join(name)).unwrap_or_default();
    let mut first = spawn(&a, "a.log");
    assert!(
        server.wait_for(Duration::from_secs(120), |r| r
            .iter()
            .any(|x| x.path == "/shared.img")),
        "the first build never asked for the file\n{}",
        read("a.log")
    );
    let mut second = spawn(&b, "b.log");
    let started = Instant::now();
    while !read("b.log").contains("Waiting for another kiln to finish downloading") {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the second build did not wait for the first:\n{}\n---\n{}",
            read("b.log"),
            read("a.log")
        );
        if let Ok(Some(st)) = second.try_wait() {
            panic!(
                "the second build ended ({st}) without waiting:\n{}",
                read("b.log")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    server.release();
    let (sa, sb) = (first.wait().unwrap(), second.wait().unwrap());
    let (la, lb) = (read("a.log"), read("b.log"));
    assert!(sa.success(), "{la}");
    assert!(sb.success(), "{lb}");
    assert!(la.contains("fetched origin=downloaded"), "{la}");
    assert!(lb.contains("fetched origin=cache"), "{lb}");
    assert_eq!(
        server.gets("/shared.img").len(),
        1,
        "{:?}",
        server.requests()
    );
}

#[test]
fn local_paths_and_file_urls_are_verified_in_place_through_the_read_grant() {
    let p = fetch_project("urls: [\"images/disk.img\"], checksum: \"file:images/SHA256SUMS\"");
    std::fs::create_dir_all(p.path().join("images")).unwrap();
    let sha = write_mixed_file(&p.path().join("images/disk.img"), 1 << 20, 5).unwrap();
    p.write("images/SHA256SUMS", &format!("{sha}  disk.img\n"));
    let cache = cache();
    let out = run(p.path(), cache.path(), &["build", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("fetched origin=local") && all.contains("verified=true"),
        "{all}"
    );
    assert!(
        cached_files(cache.path()).is_empty(),
        "local files are not copied"
    );

    // A file:// URL outside the project needs a read grant for its directory.
    let outside = state_dir("kiln-outside-");
    let sha2 = write_mixed_file(&outside.path().join("o.img"), 1 << 20, 6).unwrap();
    let url = format!("file://{}/o.img", outside.path().display());
    let q = fetch_project(&format!("url: \"{url}\", checksum: \"{sha2}\""));
    let out = run(q.path(), cache.path(), &["build", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!(
            "allow: #{{ read: [\"{}\"] }}",
            outside.path().display()
        )),
        "{all}"
    );
    let script = std::fs::read_to_string(q.path().join("build.rhai")).unwrap();
    q.write(
        "build.rhai",
        &script.replace(
            "}));\n",
            &format!(
                "}}), #{{ allow: #{{ read: [\".\", \"{}\"] }} }});\n",
                outside.path().display()
            ),
        ),
    );
    let out = run(q.path(), cache.path(), &["build", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("fetched origin=local"), "{all}");
}

#[test]
fn hosts_are_granted_per_source_and_redirects_to_other_hosts_are_refused() {
    let root = state_dir("kiln-serve-");
    let sha = write_mixed_file(&root.path().join("f.img"), 256 << 10, 9).unwrap();
    let server = HttpServer::builder()
        .root(root.path())
        .redirect("/elsewhere", "http://localhost:1/f.img")
        .redirect("/here", "/f.img")
        .status("/gone", 404)
        .start()
        .expect("http server");
    let cache = cache();

    // A redirect on the same host is followed; one to a host the source does not
    // hold is refused, and the refusal is audited.
    let p = fetch_project(&format!(
        "url: \"{}\", checksum: \"sha256:{sha}\"",
        server.url("here")
    ));
    let out = run(p.path(), cache.path(), &["build", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let p = fetch_project(&format!(
        "url: \"{}\", checksum: \"sha256:{sha}\"",
        server.url("elsewhere")
    ));
    let out = run(p.path(), cache.path(), &["build", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("redirected to") && all.contains("not allowed for this build"),
        "{all}"
    );
    let audit = find_audit(p.path());
    assert!(
        audit.contains("\"object\":\"localhost:1\"") && audit.contains("\"outcome\":\"denied\""),
        "{audit}"
    );

    // 404 says so.
    let p = fetch_project(&format!(
        "url: \"{}\", checksum: \"sha256:{sha}\"",
        server.url("gone")
    ));
    let out = run(p.path(), cache.path(), &["build", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("was not found on the server (HTTP 404)"),
        "{all}"
    );

    // A source whose `allow` replaces the builder's `net` grant: validate names the
    // missing host, and the build is denied before contacting it.
    let p = example_project();
    let script = std::fs::read_to_string(p.path().join("build.rhai")).unwrap();
    p.write(
        "build.rhai",
        &script.replace(
            "#{ allow: #{ read: reads } }",
            "#{ allow: #{ read: reads, net: [\"mirror.example.com:443\"] } }",
        ),
    );
    let image = format!("base_image={}", server.url("f.img"));
    let checksum = format!("base_checksum=sha256:{sha}");
    let args = ["validate", "--var", &image, "--var", &checksum, "."];
    let out = run(p.path(), cache.path(), &args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains(&format!(
            "needs allow: #{{ net: [\"127.0.0.1:{}\"] }}",
            server.port()
        )),
        "{all}"
    );
    let before = server.requests().len();
    let args = ["build", "--var", &image, "--var", &checksum, "."];
    let out = run(p.path(), cache.path(), &args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("denied") && all.contains("net("), "{all}");
    assert_eq!(
        server.requests().len(),
        before,
        "a denied host was contacted"
    );
}

#[test]
fn https_needs_the_ca_and_a_private_ca_works_through_ca_file() {
    let root = state_dir("kiln-serve-");
    let sha = write_mixed_file(&root.path().join("t.img"), 256 << 10, 13).unwrap();
    std::fs::write(root.path().join("SHA256SUMS"), format!("{sha}  t.img\n")).unwrap();
    let ca = TestCa::generate().expect("test CA");
    let server = HttpServer::builder()
        .root(root.path())
        .tls(&ca)
        .start()
        .expect("https server");
    let cache = cache();
    let cfg = format!(
        "url: \"{}\", checksum: \"file:{}\"",
        server.url("t.img"),
        server.url("SHA256SUMS")
    );
    let p = fetch_project(&cfg);
    let out = run(p.path(), cache.path(), &["build", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("TLS with") && all.contains("ca_file"), "{all}");

    let p = fetch_project(&format!("{cfg}, ca_file: \"ca.pem\""));
    std::fs::copy(&ca.ca_cert, p.path().join("ca.pem")).unwrap();
    let out = run(p.path(), cache.path(), &["build", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains(&format!("digest=sha256:{sha}")), "{all}");
}
