//! Mirrors, redirects, TLS and the typed errors for what goes wrong.

use std::sync::Arc;
use std::time::Duration;

use kiln_fetch::testkit::{self, HttpServer, TestCa};
use kiln_fetch::{ChecksumSpec, FetchError, FetchRequest, Fetcher, Origin, Silent, Target};

use crate::common::{Event, Recorder, cache_files, config, dead_port, fetcher, serve_file};

fn spec(sha: &str) -> ChecksumSpec {
    ChecksumSpec::parse(&format!("sha256:{sha}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_list_skips_a_dead_first_url() {
    let server = HttpServer::start().expect("http server");
    let sha = serve_file(&server, "m.iso", 500_000, 60);
    let dead = format!("http://127.0.0.1:{}/m.iso", dead_port());
    let missing = server.url("gone/m.iso");
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(cache.path());
    let req = FetchRequest::mirrors(
        [dead.clone(), missing.clone(), server.url("m.iso")],
        spec(&sha),
    );
    let rec = Recorder::default();
    let got = f.fetch(&req, &rec).await.unwrap();
    assert_eq!(got.url, server.url("m.iso"));
    assert_eq!(testkit::sha256_file(&got.path).unwrap(), sha);
    let failed: Vec<Event> = rec
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::FailedOver(_)))
        .collect();
    assert_eq!(
        failed,
        vec![
            Event::FailedOver(dead.clone()),
            Event::FailedOver(missing.clone())
        ]
    );
    drop(got);

    // The next build finds the entry of the third mirror without contacting the first two.
    let before = server.requests().len();
    let again = f.fetch(&req, &Silent).await.unwrap();
    assert_eq!(again.origin, Origin::Cache);
    assert_eq!(server.requests().len(), before);

    // Every mirror failing: each URL with its own reason, in order.
    let req = FetchRequest::mirrors([dead.clone(), missing.clone()], spec(&sha));
    match f.fetch(&req, &Silent).await {
        Err(e @ FetchError::AllFailed { .. }) => {
            let FetchError::AllFailed { attempts } = &e else {
                unreachable!()
            };
            assert_eq!(attempts.len(), 2);
            assert_eq!(attempts[0].0, dead);
            assert!(
                matches!(attempts[0].1, FetchError::Connect { .. }),
                "{:?}",
                attempts[0].1
            );
            assert!(matches!(attempts[1].1, FetchError::NotFound { .. }));
            let msg = e.to_string();
            assert!(msg.contains(&format!("1. {dead}")), "{msg}");
            assert!(msg.contains(&format!("2. {missing}")), "{msg}");
            assert!(msg.contains("404"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_typed_and_name_the_url() {
    let server = HttpServer::builder()
        .status("/broken.iso", 503)
        .status("/secret.iso", 403)
        .status("/teapot.iso", 418)
        .start()
        .expect("http server");
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(cache.path());
    let get = |p: &str| FetchRequest::new(server.url(p), ChecksumSpec::None);
    match f.fetch(&get("nope.iso"), &Silent).await {
        Err(e @ FetchError::NotFound { .. }) => {
            assert!(e.to_string().contains(&server.url("nope.iso")), "{e}");
            assert!(e.to_string().contains("404"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        f.fetch(&get("broken.iso"), &Silent).await,
        Err(FetchError::ServerError { status: 503, .. })
    ));
    assert!(matches!(
        f.fetch(&get("secret.iso"), &Silent).await,
        Err(FetchError::AccessDenied { status: 403, .. })
    ));
    assert!(matches!(
        f.fetch(&get("teapot.iso"), &Silent).await,
        Err(FetchError::ClientError { status: 418, .. })
    ));
    let dead = FetchRequest::new(
        format!("http://127.0.0.1:{}/x", dead_port()),
        ChecksumSpec::None,
    );
    match f.fetch(&dead, &Silent).await {
        Err(e @ FetchError::Connect { .. }) => {
            assert!(e.to_string().to_lowercase().contains("refused"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        f.fetch(
            &FetchRequest::new("ftp://127.0.0.1/x.iso", ChecksumSpec::None),
            &Silent
        )
        .await,
        Err(FetchError::InvalidSource { .. })
    ));
    assert!(cache_files(cache.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limit_is_enforced() {
    let server = HttpServer::start().expect("http server");
    serve_file(&server, "huge.img", 300_000, 61);
    let cache = tempfile::tempdir().unwrap();
    let mut c = config(cache.path());
    c.max_size = 100_000;
    let f = Fetcher::new(c).unwrap();
    match f
        .fetch(
            &FetchRequest::new(server.url("huge.img"), ChecksumSpec::None),
            &Silent,
        )
        .await
    {
        Err(FetchError::TooLarge { size, limit, .. }) => {
            assert_eq!(size, 300_000);
            assert_eq!(limit, 100_000);
        }
        other => panic!("{other:?}"),
    }
    assert!(cache_files(cache.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_followed_bounded_and_guarded() {
    let server = HttpServer::builder()
        .redirect("/latest.iso", "/releases/v2.iso")
        .redirect("/loop.iso", "/loop.iso")
        .start()
        .expect("http server");
    let sha = serve_file(&server, "releases/v2.iso", 300_000, 62);
    let other = HttpServer::start().expect("second http server");
    let other_sha = serve_file(&other, "x.iso", 1000, 63);
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(cache.path());
    let got = f
        .fetch(
            &FetchRequest::new(server.url("latest.iso"), spec(&sha)),
            &Silent,
        )
        .await
        .unwrap();
    assert_eq!(testkit::sha256_file(&got.path).unwrap(), sha);
    assert_eq!(server.gets("/releases/v2.iso").len(), 1);
    // Named after the URL asked for.
    assert!(got.path.to_string_lossy().ends_with("-latest.iso"));

    match f
        .fetch(
            &FetchRequest::new(server.url("loop.iso"), ChecksumSpec::None),
            &Silent,
        )
        .await
    {
        Err(FetchError::TooManyRedirects { max, .. }) => assert_eq!(max, 10),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.gets("/loop.iso").len(), 11);

    // A guard that only grants the first server's port refuses a redirect to the other.
    let cross = HttpServer::builder()
        .redirect("/away.iso", &other.url("x.iso"))
        .start()
        .expect("third http server");
    let allowed = cross.port();
    let mut c = config(cache.path());
    c.redirect_guard = Some(Arc::new(move |t: &Target| {
        t.host == "127.0.0.1" && t.port == allowed
    }));
    let guarded = Fetcher::new(c).unwrap();
    match guarded
        .fetch(
            &FetchRequest::new(cross.url("away.iso"), spec(&other_sha)),
            &Silent,
        )
        .await
    {
        Err(FetchError::RedirectDenied { to, .. }) => assert_eq!(to, other.url("x.iso")),
        other => panic!("{other:?}"),
    }
    assert!(other.gets("/x.iso").is_empty());
    // Without the guard the same redirect is followed.
    assert!(
        f.fetch(
            &FetchRequest::new(cross.url("away.iso"), spec(&other_sha)),
            &Silent
        )
        .await
        .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_and_without_the_ca() {
    let ca = TestCa::generate().expect("test CA");
    let server = HttpServer::builder()
        .tls(&ca)
        .start()
        .expect("https server");
    let sha = serve_file(&server, "secure.iso", 1 << 20, 64);
    let url = server.url("secure.iso");
    assert!(url.starts_with("https://"));

    let cache = tempfile::tempdir().unwrap();
    match fetcher(cache.path())
        .fetch(&FetchRequest::new(url.clone(), spec(&sha)), &Silent)
        .await
    {
        Err(e @ FetchError::Tls { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("certificate"), "{msg}");
            assert!(msg.contains("ca_file"), "says what to do: {msg}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        server.gets("/secure.iso").is_empty(),
        "no request got through"
    );

    let mut c = config(cache.path());
    c.ca_file = Some(ca.ca_cert.clone());
    let got = Fetcher::new(c)
        .unwrap()
        .fetch(&FetchRequest::new(url, spec(&sha)), &Silent)
        .await
        .unwrap();
    assert_eq!(testkit::sha256_file(&got.path).unwrap(), sha);

    // localhost is in the certificate too; a name that is not fails as TLS.
    let mut c = config(cache.path());
    c.ca_file = Some(ca.ca_cert.clone());
    let f = Fetcher::new(c).unwrap();
    let by_name = format!("https://localhost:{}/secure.iso", server.port());
    assert!(
        f.fetch(&FetchRequest::new(by_name, spec(&sha)), &Silent)
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_that_never_finishes_is_a_connect_timeout() {
    // Accepts TCP and then says nothing: the TLS handshake cannot complete.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(1) {
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(10));
        drop(held);
    });
    let cache = tempfile::tempdir().unwrap();
    let mut c = config(cache.path());
    c.connect_timeout = Duration::from_secs(2);
    let f = Fetcher::new(c).unwrap();
    let url = format!("https://127.0.0.1:{port}/x.iso");
    match f
        .fetch(&FetchRequest::new(url.clone(), ChecksumSpec::None), &Silent)
        .await
    {
        Err(FetchError::ConnectTimeout { url: u, after }) => {
            assert_eq!(u, url);
            assert_eq!(after, Duration::from_secs(2));
        }
        other => panic!("{other:?}"),
    }
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_urls_never_show() {
    let server = HttpServer::start().expect("http server");
    let url = format!(
        "http://user:hunter2@127.0.0.1:{}/nope.iso?X-Amz-Signature=deadbeef",
        server.port()
    );
    let cache = tempfile::tempdir().unwrap();
    let err = fetcher(cache.path())
        .fetch(&FetchRequest::new(url, ChecksumSpec::None), &Silent)
        .await
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(matches!(err, FetchError::NotFound { .. }));
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("deadbeef"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}
