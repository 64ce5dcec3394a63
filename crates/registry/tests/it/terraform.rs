//! A real Terraform 1.0.3 reads the registry through `terraform_remote_state` (built-in http
//! backend, no provider download).

use kiln_registry::testkit::{Terraform, TestServer};
use kiln_registry::{Platform, RevokeRequest, VersionRef};
use serde_json::Value;

use crate::fixtures::{Rec, record, sqlite_store};

fn config(address: &str) -> String {
    format!(
        r#"
data "terraform_remote_state" "web" {{
  backend = "http"
  config  = {{ address = "{address}" }}
}}
output "ami" {{ value = data.terraform_remote_state.web.outputs.artifacts["aws"]["us-east-1"] }}
output "fingerprint" {{ value = data.terraform_remote_state.web.outputs.fingerprint }}
output "revoked" {{ value = data.terraform_remote_state.web.outputs.revoked }}
output "revoked_reason" {{ value = data.terraform_remote_state.web.outputs.revoked_reason }}
output "by_build" {{ value = data.terraform_remote_state.web.outputs.builds["web"]["aws"]["us-east-1"] }}
"#
    )
}

fn apply(tf: &Terraform) -> Value {
    for args in [
        vec!["init", "-input=false", "-no-color"],
        vec!["apply", "-auto-approve", "-input=false", "-no-color"],
    ] {
        let r = tf.run(&args).expect("terraform runs");
        assert!(
            r.success,
            "terraform {args:?} failed: {}\n{}",
            r.stdout, r.stderr
        );
    }
    let r = tf.run(&["output", "-json", "-no-color"]).expect("output");
    assert!(r.success, "{}", r.stderr);
    serde_json::from_str(&r.stdout).expect("output json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_reads_promoted_and_revoked_amis() {
    let (store, _g) = sqlite_store().await;
    record(
        &store,
        Rec::new("web", "01JTFGOOD", "web").only_artifact(
            Platform::Aws,
            "us-east-1",
            "ami-0123456789abcdef0",
        ),
    )
    .await;
    record(
        &store,
        Rec::new("web", "01JTFBAD", "web").only_artifact(
            Platform::Aws,
            "us-east-1",
            "ami-0badbadbadbadbad0",
        ),
    )
    .await;
    let v = |f: &str| VersionRef::Fingerprint(f.into());
    store
        .promote("web", &v("01JTFGOOD"), "prod", "t")
        .await
        .expect("promote prod");
    store
        .promote("web", &v("01JTFBAD"), "staging", "t")
        .await
        .expect("promote staging");
    store
        .revoke(
            "web",
            &v("01JTFBAD"),
            &RevokeRequest {
                reason: "CVE-2026-1234 in the kernel".into(),
                at: None,
                inherit: false,
            },
            "sec",
        )
        .await
        .expect("revoke");
    let server = TestServer::start(store.clone()).await.expect("server");
    let base = server.url();

    // Terraform blocks; run it off the runtime the server is on.
    let outputs = tokio::task::spawn_blocking(move || {
        let good = Terraform::new(&config(&format!("{base}/terraform/web/prod"))).expect("tf dir");
        let good_out = apply(&good);
        let bad =
            Terraform::new(&config(&format!("{base}/terraform/web/staging"))).expect("tf dir");
        let bad_out = apply(&bad);

        let strict = Terraform::new(&config(&format!(
            "{base}/terraform/web/staging?fail_if_revoked=1"
        )))
        .expect("tf dir");
        let init = strict
            .run(&["init", "-input=false", "-no-color"])
            .expect("init");
        assert!(init.success, "{}", init.stderr);
        let plan = strict
            .run(&["plan", "-input=false", "-no-color"])
            .expect("plan");
        let strict_ok = Terraform::new(&config(&format!(
            "{base}/terraform/web/prod?fail_if_revoked=1"
        )))
        .expect("tf dir");
        let ok_out = apply(&strict_ok);
        (good_out, bad_out, plan, ok_out)
    })
    .await
    .expect("terraform thread");
    let (good, bad, plan, strict_ok) = outputs;

    assert_eq!(good["ami"]["value"], "ami-0123456789abcdef0");
    assert_eq!(good["by_build"]["value"], "ami-0123456789abcdef0");
    assert_eq!(good["fingerprint"]["value"], "01JTFGOOD");
    assert_eq!(good["revoked"]["value"], false);
    assert_eq!(good["revoked_reason"]["value"], "");

    assert_eq!(bad["ami"]["value"], "ami-0badbadbadbadbad0");
    assert_eq!(bad["revoked"]["value"], true);
    assert_eq!(
        bad["revoked_reason"]["value"],
        "CVE-2026-1234 in the kernel"
    );

    assert!(
        !plan.success,
        "plan must stop on a revoked version:\n{}",
        plan.stdout
    );
    let text = format!("{}{}", plan.stdout, plan.stderr);
    assert!(text.contains("409"), "{text}");

    assert_eq!(strict_ok["ami"]["value"], "ami-0123456789abcdef0");
    drop(server);
}
