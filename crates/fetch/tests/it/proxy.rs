//! Proxies from HTTP_PROXY / HTTPS_PROXY / NO_PROXY against a real forward proxy
//! (the test server in proxy mode: absolute-form GET and CONNECT tunnels).

use std::collections::HashMap;

use kiln_fetch::testkit::{self, HttpServer, TestCa};
use kiln_fetch::{ChecksumSpec, FetchError, FetchRequest, Fetcher, ProxySettings, Silent};

use crate::common::{config, serve_file};

fn spec(sha: &str) -> ChecksumSpec {
    ChecksumSpec::parse(&format!("sha256:{sha}")).unwrap()
}

fn env(pairs: &[(&str, String)]) -> ProxySettings {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    ProxySettings::from_lookup(|k| m.get(k).cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_https_through_the_proxy_and_no_proxy_bypass() {
    let origin = HttpServer::start().expect("origin");
    let sha = serve_file(&origin, "p.iso", 700_000, 70);
    let ca = TestCa::generate().expect("test CA");
    let secure = HttpServer::builder()
        .tls(&ca)
        .start()
        .expect("https origin");
    let ssha = serve_file(&secure, "s.iso", 300_000, 71);
    let proxy = HttpServer::builder().proxy().start().expect("proxy");
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port());

    let cache = tempfile::tempdir().unwrap();
    let mut c = config(cache.path());
    c.proxy = env(&[
        ("HTTP_PROXY", proxy_url.clone()),
        ("HTTPS_PROXY", proxy_url.clone()),
    ]);
    c.ca_file = Some(ca.ca_cert.clone());
    let f = Fetcher::new(c).unwrap();

    let got = f
        .fetch(&FetchRequest::new(origin.url("p.iso"), spec(&sha)), &Silent)
        .await
        .unwrap();
    assert_eq!(testkit::sha256_file(&got.path).unwrap(), sha);
    let seen = proxy.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "GET");
    assert_eq!(
        seen[0].path,
        origin.url("p.iso"),
        "absolute-form through the proxy"
    );
    assert_eq!(origin.gets("/p.iso").len(), 1);

    let got = f
        .fetch(
            &FetchRequest::new(secure.url("s.iso"), spec(&ssha)),
            &Silent,
        )
        .await
        .unwrap();
    assert_eq!(testkit::sha256_file(&got.path).unwrap(), ssha);
    let seen = proxy.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].method, "CONNECT");
    assert_eq!(seen[1].path, format!("127.0.0.1:{}", secure.port()));
    assert_eq!(
        secure.gets("/s.iso").len(),
        1,
        "the origin saw the tunnelled request"
    );

    // NO_PROXY: straight to the origin.
    let serve2 = serve_file(&origin, "q.iso", 1000, 72);
    let mut c = config(cache.path());
    c.proxy = env(&[
        ("http_proxy", proxy_url.clone()),
        ("no_proxy", "127.0.0.1".into()),
    ]);
    let direct = Fetcher::new(c).unwrap();
    direct
        .fetch(
            &FetchRequest::new(origin.url("q.iso"), spec(&serve2)),
            &Silent,
        )
        .await
        .unwrap();
    assert_eq!(proxy.requests().len(), 2, "the proxy saw nothing new");
    assert_eq!(origin.gets("/q.iso").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_credentials_are_sent_and_never_shown() {
    let origin = HttpServer::start().expect("origin");
    let sha = serve_file(&origin, "a.iso", 10_000, 73);
    let proxy = HttpServer::builder()
        .proxy()
        .proxy_auth("kiln:pr0xy-pw")
        .start()
        .expect("proxy");
    let cache = tempfile::tempdir().unwrap();

    let mut c = config(cache.path());
    c.proxy =
        ProxySettings::none().http(format!("http://kiln:pr0xy-pw@127.0.0.1:{}", proxy.port()));
    assert!(!format!("{c:?}").contains("pr0xy-pw"));
    let f = Fetcher::new(c).unwrap();
    f.fetch(&FetchRequest::new(origin.url("a.iso"), spec(&sha)), &Silent)
        .await
        .unwrap();
    assert!(proxy.requests()[0].proxy_auth);

    let mut c = config(cache.path());
    c.proxy =
        ProxySettings::none().http(format!("http://kiln:wrong-pw@127.0.0.1:{}", proxy.port()));
    let f = Fetcher::new(c).unwrap();
    let other = serve_file(&origin, "b.iso", 10_000, 74);
    match f
        .fetch(
            &FetchRequest::new(origin.url("b.iso"), spec(&other)),
            &Silent,
        )
        .await
    {
        Err(e @ FetchError::AccessDenied { status: 407, .. }) => {
            assert!(!format!("{e} {e:?}").contains("wrong-pw"));
        }
        other => panic!("{other:?}"),
    }

    // A malformed proxy setting is a typed error naming the variable.
    let mut c = config(cache.path());
    c.proxy = ProxySettings::none().https("http://[::1");
    match Fetcher::new(c) {
        Err(FetchError::Proxy { name, .. }) => assert_eq!(name, "HTTPS_PROXY"),
        other => panic!("{other:?}"),
    }
}
