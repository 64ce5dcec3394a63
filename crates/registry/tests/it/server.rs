//! The HTTP server: reads, token-guarded writes, hostile requests, the Terraform endpoint.

use kiln_registry::testkit::TestServer;
use kiln_registry::{Platform, Store};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fixtures::{Rec, record, sqlite_store};

async fn setup() -> (Store, TestServer, String, crate::fixtures::Guard) {
    let (store, guard) = sqlite_store().await;
    let (_, token) = store.create_token("ci").await.expect("token");
    let server = TestServer::start(store.clone()).await.expect("server");
    (store, server, token.expose().to_string(), guard)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

fn record_body(bucket: &str, fp: &str) -> Value {
    serde_json::to_value(Rec::new(bucket, fp, "web").build()).expect("json")
}

#[tokio::test]
async fn writes_need_a_valid_bearer_token() {
    let (store, server, token, _g) = setup().await;
    let c = client();
    let url = format!("{}/api/v1/records", server.url());
    let body = record_body("web", "H1");

    let r = c.post(&url).json(&body).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key("www-authenticate"));
    let err: Value = r.json().await.expect("json");
    assert_eq!(err["error"]["kind"], "unauthorized");

    let wrong = format!("kiln_{}_{}", "0".repeat(16), "0".repeat(64));
    for auth in [
        format!("Bearer {wrong}"),
        "Bearer not-a-token".to_string(),
        format!("Basic {token}"),
        format!("Bearer {}x", token),
        "Bearer".to_string(),
    ] {
        let r = c
            .post(&url)
            .header("authorization", auth.clone())
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth}");
    }
    assert!(
        store.buckets().await.expect("buckets").is_empty(),
        "nothing was written"
    );

    // Never in a query string, not even alongside a valid header.
    for q in [
        format!("token={token}"),
        format!("access_token={token}"),
        format!("x={token}"),
        "api_key=abc".to_string(),
    ] {
        let r = c
            .post(format!("{url}?{q}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{q}");
        let err: Value = r.json().await.expect("json");
        assert_eq!(err["error"]["kind"], "credentials_in_query");
        let r = c
            .get(format!("{}/api/v1/buckets?{q}", server.url()))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "GET {q}");
    }
    assert!(store.buckets().await.expect("buckets").is_empty());

    let r = c
        .post(&url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let rec: Value = r.json().await.expect("json");
    assert_eq!(rec["version_complete"], true);

    // Promote, revoke, restore: refused without a token, accepted with one.
    let promote = format!("{}/api/v1/buckets/web/channels/prod", server.url());
    let r = c
        .post(&promote)
        .json(&json!({"fingerprint": "H1"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .post(&promote)
        .bearer_auth(&token)
        .json(&json!({"fingerprint": "H1"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let revoke = format!("{}/api/v1/buckets/web/versions/H1/revoke", server.url());
    let r = c
        .post(&revoke)
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .post(&revoke)
        .bearer_auth(&token)
        .json(&json!({"reason": "CVE-1", "inherit": true}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let out: Value = r.json().await.expect("json");
    assert_eq!(out["revocation"]["revoked_by"], "token:ci");
    let restore = format!("{}/api/v1/buckets/web/versions/H1/restore", server.url());
    let r = c.post(&restore).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .post(&restore)
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .post(&restore)
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CONFLICT);

    // A deleted token stops working.
    store.delete_token("ci").await.expect("delete");
    let r = c
        .post(&url)
        .bearer_auth(&token)
        .json(&record_body("web", "H2"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn reads_are_json() {
    let (store, server, _token, _g) = setup().await;
    record(
        &store,
        Rec::new("web", "J1", "web").artifact(Platform::Qemu, "local", "/out/x.qcow2"),
    )
    .await;
    store
        .promote(
            "web",
            &kiln_registry::VersionRef::Fingerprint("J1".into()),
            "prod",
            "t",
        )
        .await
        .expect("promote");
    let c = client();
    let get = |path: &str| {
        let c = c.clone();
        let url = format!("{}{path}", server.url());
        async move { c.get(url).send().await.expect("send") }
    };
    let v: Value = get("/api/v1/buckets").await.json().await.expect("json");
    assert_eq!(v[0]["name"], "web");
    let v: Value = get("/api/v1/buckets/web/versions?limit=5")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["versions"][0]["fingerprint"], "J1");
    let v: Value = get("/api/v1/buckets/web/versions/@prod")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["fingerprint"], "J1");
    let v: Value = get("/api/v1/buckets/web/channels/prod")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        v["version"]["builds"][0]["artifacts"][0]["external_id"],
        "ami-J1-web"
    );
    assert_eq!(v["channel"]["serial"], 1);
    let v: Value = get("/api/v1/buckets/web/channels")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["history"].as_array().map(Vec::len), Some(2));
    let v: Value = get("/api/v1/buckets/web/versions/J1/ancestry")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["version"]["fingerprint"], "J1");
    let v: Value = get("/api/v1/artifact?bucket=web&channel=prod&platform=qemu&region=local")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["artifact"]["external_id"], "/out/x.qcow2");
    let r = get("/api/v1/schema/provenance.json").await;
    assert_eq!(r.status(), StatusCode::OK);
    let schema: Value = r.json().await.expect("schema");
    assert_eq!(schema["properties"]["schema"]["const"], 1);

    let r = get("/api/v1/buckets/wbe/versions").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let err: Value = r.json().await.expect("json");
    assert_eq!(err["error"]["suggestions"][0], "web");
    let r = get("/api/v1/buckets/web/versions?limit=lots").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = get("/nope").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(get("/healthz").await.text().await.expect("text"), "ok\n");
}

#[tokio::test]
async fn hostile_requests_get_a_clear_4xx() {
    let (store, server, token, _g) = setup().await;
    let c = client();
    let base = server.url();
    for path in [
        "/api/v1/buckets/..%2F..%2Fetc%2Fpasswd/versions",
        "/api/v1/buckets/x'%3BDROP%20TABLE%20buckets%3B--/versions",
        "/api/v1/buckets/a%00b/versions",
        "/api/v1/buckets/web%20x/channels/prod",
        "/api/v1/buckets/web/versions/..%2F..",
        "/terraform/..%2Fetc/prod",
        "/b/%3Cscript%3E",
    ] {
        let r = c.get(format!("{base}{path}")).send().await.expect("send");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
    }
    // Raw `..` segments are not normalised into another route.
    let r = c
        .get(format!("{base}/api/v1/buckets/../versions"))
        .send()
        .await
        .expect("send");
    assert!(r.status().is_client_error(), "{}", r.status());

    let url = format!("{base}/api/v1/records");
    let mut body = record_body("web", "X1");
    body["bucket"] = json!("../../etc");
    let r = c
        .post(&url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let err: Value = r.json().await.expect("json");
    assert_eq!(err["error"]["kind"], "invalid_input");

    // A 1 MiB label: the body is over the limit.
    let mut body = record_body("web", "X2");
    body["build"]["labels"] = json!({ "big": "x".repeat(1024 * 1024) });
    let r = c
        .post(&url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A 100 KiB label fits the body but not the label limit.
    body["build"]["labels"] = json!({ "big": "x".repeat(100 * 1024) });
    let r = c
        .post(&url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Not JSON, unknown fields, a secret with a value.
    let r = c
        .post(&url)
        .bearer_auth(&token)
        .body("{nope")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let mut body = record_body("web", "X3");
    body["surprise"] = json!(1);
    let r = c
        .post(&url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let mut body = record_body("web", "X4");
    body["provenance"]["variables"] = json!([{ "name": "pw", "value": "hunter2", "secret": true }]);
    let r = c
        .post(&url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(!r.text().await.expect("text").contains("hunter2"));

    // SQL and HTML in a label are stored as they are and escaped on the page.
    let nasty = "'; DROP TABLE builds; --<script>alert(1)</script>";
    let mut body = record_body("web", "X5");
    body["build"]["labels"] = json!({ "note": nasty });
    let r = c
        .post(&url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let v = store
        .version("web", &kiln_registry::VersionRef::Fingerprint("X5".into()))
        .await
        .expect("show");
    assert_eq!(v.builds[0].labels["note"], nasty);
    let html = c
        .get(format!("{base}/b/web/v/X5"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("html");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!html.contains("<script>"), "no script element on the page");
    assert_eq!(store.buckets().await.expect("buckets").len(), 1);
}

#[tokio::test]
async fn terraform_endpoint_is_read_only() {
    let (store, server, _token, _g) = setup().await;
    record(&store, Rec::new("web", "T1", "web")).await;
    store
        .promote(
            "web",
            &kiln_registry::VersionRef::Fingerprint("T1".into()),
            "prod",
            "t",
        )
        .await
        .expect("promote");
    let c = client();
    let url = format!("{}/terraform/web/prod", server.url());
    let doc: Value = c
        .get(&url)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["version"], 4);
    assert_eq!(doc["terraform_version"], "1.0.3");
    assert_eq!(doc["serial"], 1);
    assert_eq!(doc["resources"], json!([]));
    assert_eq!(
        doc["outputs"]["artifacts"]["value"]["aws"]["us-east-1"],
        "ami-T1-web"
    );
    assert_eq!(
        doc["outputs"]["artifacts"]["type"],
        json!(["map", ["map", "string"]])
    );
    assert_eq!(doc["outputs"]["fingerprint"]["value"], "T1");
    assert_eq!(doc["outputs"]["revoked"]["value"], false);
    for m in ["POST", "PUT", "DELETE", "LOCK", "UNLOCK"] {
        let r = c
            .request(Method::from_bytes(m.as_bytes()).expect("method"), &url)
            .body("{}")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{m}");
    }
    let r = c
        .get(format!("{}/terraform/web/prdo", server.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        r.text()
            .await
            .expect("text")
            .contains("did you mean \"prod\"")
    );
    let r = c
        .get(format!("{url}?fail_if_revoked=1"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
}
