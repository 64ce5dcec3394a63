//! The artifact registry through `kiln`: builds recorded with their provenance by the
//! `registry(...)` post-processor, `kiln artifacts …` (human and `--json`), chained
//! builds through `registry_artifact(...)` (a revoked parent fails the child), `kiln
//! registry serve` read by a real Terraform 1.0.3, token-guarded writes, and two kiln
//! processes contributing to one version in PostgreSQL. Peers: a loopback sshd, the
//! registry crate's PostgreSQL and Terraform testkits, qemu-img.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kiln_registry::testkit::{Chromium, Postgres, Terraform};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cli::{Project, find_audit, kiln_cmd, text};
use crate::peers::sshd::Sshd;

/// `kiln ARGS` in the project, with the registry and fingerprint only from `env`.
fn kiln(p: &Project, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = kiln_cmd(p.path(), args);
    c.env_remove("KILN_REGISTRY")
        .env_remove("KILN_BUILD_FINGERPRINT");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run kiln")
}

fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{}", text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> Value {
    let s = ok(o);
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The fingerprint in `kiln build`'s "Promote it with" line for `bucket`.
fn recorded_fingerprint(stdout: &str, bucket: &str) -> String {
    let marker = format!("kiln artifacts promote {bucket} ");
    stdout
        .lines()
        .filter_map(|l| l.split_once(&marker).map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_whitespace().next())
        .next_back()
        .unwrap_or_else(|| panic!("no version of {bucket} recorded in:\n{stdout}"))
        .to_string()
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).expect("read file")))
}

fn git(dir: &Path, args: &[&str]) -> String {
    let o = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=kiln-test",
            "-c",
            "user.email=kiln@test.invalid",
        ])
        .args(args)
        .output()
        .expect("git");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `kiln registry serve` on a free port, stopped on drop.
struct Serve {
    child: Child,
    addr: String,
}

impl Serve {
    fn start(p: &Project, env: &[(&str, &str)]) -> Serve {
        let mut c = kiln_cmd(p.path(), &["registry", "serve", "--listen", "127.0.0.1:0"]);
        c.env_remove("KILN_REGISTRY")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("spawn kiln registry serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the address is found: the server's later lines
            // must not meet a closed pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut serve = Serve {
            child,
            addr: String::new(),
        };
        // Generous: the machine is shared and loaded.
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(120)) {
            if let Some(rest) = line.split_once(" on http://").map(|(_, r)| r) {
                serve.addr = rest.trim_end_matches('/').to_string();
                return serve;
            }
        }
        panic!("kiln registry serve did not say where it listens");
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request; (status, body).
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the registry server");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut out = String::new();
    s.take(1 << 20).read_to_string(&mut out).expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

fn terraform_config(address: &str) -> Terraform {
    Terraform::new(&format!(
        r#"
data "terraform_remote_state" "web" {{
  backend = "http"
  config  = {{ address = "{address}" }}
}}
output "image" {{ value = data.terraform_remote_state.web.outputs.artifacts["qemu"]["local"] }}
output "ami" {{ value = data.terraform_remote_state.web.outputs.artifacts["aws"]["us-east-1"] }}
output "fingerprint" {{ value = data.terraform_remote_state.web.outputs.fingerprint }}
output "revoked" {{ value = data.terraform_remote_state.web.outputs.revoked }}
output "revoked_reason" {{ value = data.terraform_remote_state.web.outputs.revoked_reason }}
"#
    ))
    .expect("Terraform 1.0.3 must be installed (tools/setup.d/terraform.sh)")
}

fn terraform_outputs(address: &str) -> Value {
    let tf = terraform_config(address);
    for args in [
        vec!["init", "-input=false", "-no-color"],
        vec!["apply", "-auto-approve", "-input=false", "-no-color"],
    ] {
        let r = tf.run(&args).expect("terraform runs");
        assert!(r.success, "terraform {args:?}: {}\n{}", r.stdout, r.stderr);
    }
    let r = tf.run(&["output", "-json", "-no-color"]).expect("output");
    assert!(r.success, "{}", r.stderr);
    serde_json::from_str(&r.stdout).expect("terraform output json")
}

fn with_consul(p: &Project) -> PathBuf {
    let src = crate::wasm::guest_dir().join("consul_provisioner.wasm");
    let dest = p.path().join("provisioners/consul_provisioner.wasm");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(&src, &dest).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    dest
}

const SECRET_VALUE: &str = "hunter2-registry-secret";

/// The README's flow: a build makes an image, kiln records it with its provenance and
/// says how to promote it; promoted, it is served, and a stock Terraform reads it
/// through `terraform_remote_state`. Writes over HTTP need a token.
#[test]
fn a_recorded_build_is_promoted_and_read_by_terraform() {
    let sshd = Sshd::start();
    let p = Project::new();
    let wasm = with_consul(&p);
    let script = r#"
let region = var("region", "us-east-1");
let token = secret("KILN_TEST_REGISTRY_SECRET");
source("box", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
build("web", #{
    sources: ["box"],
    steps: [
        shell(["qemu-img create -q -f qcow2 REMOTE/web.qcow2 16M"], #{ env: #{ TOKEN: token } }),
        wasm("provisioners/consul_provisioner.wasm",
             #{ service: "web", port: 80, tags: ["v1", "prod"], consul_dir: "REMOTE/consul.d" }),
        step(|m| { m.download("REMOTE/web.qcow2", "output/web.qcow2"); },
             #{ allow: #{ write: ["output"] } }),
    ],
    post: [registry(#{
        labels: #{ os: "debian-12", team: "platform" },
        description: "web servers",
        artifacts: [
            #{ platform: "qemu", file: "output/web.qcow2" },
            #{ platform: "aws", region: region, external_id: "ami-0123456789abcdef0" },
        ],
    })],
});
"#
    .replace("REMOTE", p.remote.path().to_str().unwrap());
    p.script(&sshd, &script);
    git(p.path(), &["init", "-q"]);
    git(p.path(), &["add", "-A"]);
    git(p.path(), &["commit", "-q", "-m", "web image"]);
    let head = git(p.path(), &["rev-parse", "HEAD"]);

    let env = [("KILN_TEST_REGISTRY_SECRET", SECRET_VALUE)];
    let out = kiln(&p, &env, &["build", "."]);
    let stdout = ok(&out);
    assert!(stdout.contains("==> Registry (sqlite:"), "{stdout}");
    assert!(
        stdout.contains("version complete, now `latest`"),
        "{stdout}"
    );
    let fp = recorded_fingerprint(&stdout, "web");
    assert!(
        stdout.contains(&format!(
            "Promote it with: kiln artifacts promote web {fp} --channel prod"
        )),
        "{stdout}"
    );
    assert!(
        p.path().join(".kiln/registry.db").is_file(),
        "the default registry is the project's .kiln/registry.db"
    );

    // Everything about the version, as JSON.
    let v = json(&kiln(
        &p,
        &[],
        &["artifacts", "show", "web", "@latest", "--json"],
    ));
    assert_eq!(v["fingerprint"], fp.as_str());
    assert_eq!(v["complete"], true);
    assert_eq!(v["channels"], serde_json::json!(["latest"]));
    let build = &v["builds"][0];
    assert_eq!(build["name"], "box");
    assert_eq!(build["status"], "succeeded");
    assert_eq!(build["labels"]["os"], "debian-12");
    let image = p.path().canonicalize().unwrap().join("output/web.qcow2");
    let qemu = build["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["platform"] == "qemu")
        .expect("the qcow2 artifact");
    assert_eq!(qemu["external_id"], image.to_str().unwrap());
    assert_eq!(qemu["region"], "local");
    assert_eq!(qemu["sha256"], sha256_file(&image).as_str());
    assert_eq!(qemu["size"], std::fs::metadata(&image).unwrap().len());

    let doc = &v["provenance"][0]["document"];
    assert_eq!(doc["script"]["path"], "build.rhai");
    assert_eq!(
        doc["script"]["sha256"],
        sha256_file(&p.path().join("build.rhai")).as_str()
    );
    assert_eq!(doc["kiln_version"], env!("CARGO_PKG_VERSION"));
    let vars = doc["variables"].as_array().unwrap();
    assert!(
        vars.contains(&serde_json::json!({ "name": "region", "value": "us-east-1" })),
        "{vars:?}"
    );
    assert!(
        vars.contains(&serde_json::json!({ "name": "KILN_TEST_REGISTRY_SECRET", "secret": true })),
        "secrets are recorded by name only: {vars:?}"
    );
    assert_eq!(
        doc["wasm_modules"],
        serde_json::json!([{ "path": "provisioners/consul_provisioner.wasm", "sha256": sha256_file(&wasm) }])
    );
    assert_eq!(
        doc["consul_services"],
        serde_json::json!([{ "name": "web", "port": 80, "tags": ["v1", "prod"] }]),
        "the consul provisioner reports what it baked"
    );
    let grants = doc["grants"].as_array().unwrap();
    let step = |name: &str| {
        grants
            .iter()
            .find(|g| g["step"] == name)
            .unwrap_or_else(|| panic!("no grants for {name}: {grants:?}"))["capabilities"]
            .clone()
    };
    assert_eq!(
        step("builder ssh_host"),
        serde_json::json!([
            { "capability": "machine" },
            { "capability": "read", "object": "." },
            { "capability": "ssh", "object": "127.0.0.1" },
        ])
    );
    assert_eq!(
        step("step 2 wasm"),
        serde_json::json!([{ "capability": "machine" }, { "capability": "metadata" }])
    );
    assert_eq!(
        doc["git"],
        serde_json::json!({ "commit": head, "dirty": false })
    );
    // The audit digest covers the log as it was when the run ended (the record lines
    // themselves come after it).
    let audit = find_audit(p.path());
    let records = doc["audit_log"]["records"].as_u64().unwrap();
    let covered: String = audit
        .split_inclusive('\n')
        .take(usize::try_from(records).unwrap())
        .collect();
    assert!(records >= 5, "{audit}");
    assert_eq!(
        doc["audit_log"]["sha256"],
        hex::encode(Sha256::digest(covered.as_bytes())).as_str()
    );
    assert!(
        audit.contains(&format!(
            r#""capability":"registry","object":"web: record {fp} build box (succeeded)","outcome":"ok (version complete)""#
        )),
        "the record is audited: {audit}"
    );
    let everything = format!("{} {audit}", serde_json::to_string(&v).unwrap());
    assert!(
        !everything.contains(SECRET_VALUE),
        "a secret leaked: {everything}"
    );

    // list and channels, as tables and JSON.
    let buckets = json(&kiln(&p, &[], &["artifacts", "list", "--json"]));
    assert_eq!(buckets[0]["name"], "web");
    assert_eq!(buckets[0]["description"], "web servers");
    let table = ok(&kiln(&p, &[], &["artifacts", "list", "web"]));
    assert!(table.contains(&fp), "{table}");

    // Promote, then Terraform reads the channel through `kiln registry serve`.
    let promoted = json(&kiln(
        &p,
        &[],
        &[
            "artifacts",
            "promote",
            "web",
            &fp,
            "--channel",
            "prod",
            "--json",
        ],
    ));
    assert_eq!(promoted["channel"], "prod");
    assert_eq!(promoted["changed"], true);
    let channels = json(&kiln(&p, &[], &["artifacts", "channels", "web", "--json"]));
    let prod = channels["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "prod")
        .expect("prod channel");
    assert_eq!(prod["fingerprint"], fp.as_str());

    let server = Serve::start(&p, &[]);
    let outputs = terraform_outputs(&format!("{}/terraform/web/prod", server.url()));
    assert_eq!(outputs["image"]["value"], image.to_str().unwrap());
    assert_eq!(outputs["ami"]["value"], "ami-0123456789abcdef0");
    assert_eq!(outputs["fingerprint"]["value"], fp.as_str());
    assert_eq!(outputs["revoked"]["value"], false);

    // A write without a token is refused and says how to get one; with one it works.
    let body = format!(r#"{{"fingerprint":"{fp}"}}"#);
    let (status, reply) = http(
        &server.addr,
        "POST",
        "/api/v1/buckets/web/channels/dev",
        None,
        &body,
    );
    assert_eq!(status, 401, "{reply}");
    assert!(reply.contains("kiln registry token create"), "{reply}");
    let created = ok(&kiln(&p, &[], &["registry", "token", "create", "ci"]));
    let token = created.lines().last().unwrap().trim().to_string();
    assert!(token.starts_with("kiln_"), "{created}");
    let (status, reply) = http(
        &server.addr,
        "POST",
        &format!("/api/v1/buckets/web/channels/dev?token={token}"),
        None,
        &body,
    );
    assert_eq!(
        status, 400,
        "a token in the query string is refused: {reply}"
    );
    let (status, reply) = http(
        &server.addr,
        "POST",
        "/api/v1/buckets/web/channels/dev",
        Some(&token),
        &body,
    );
    assert_eq!(status, 200, "{reply}");
    let channels = json(&kiln(&p, &[], &["artifacts", "channels", "web", "--json"]));
    assert!(
        channels["channels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "dev" && c["fingerprint"] == fp.as_str()),
        "{channels}"
    );
    let tokens = ok(&kiln(&p, &[], &["registry", "token", "list"]));
    assert!(
        tokens.contains("ci") && !tokens.contains(&token),
        "{tokens}"
    );

    // The server's web page, rendered by a real headless Chromium, shows the version,
    // its artifacts and its channels.
    let chrome = Chromium::new().expect("Chromium must be installed (tools/setup.d/chromium.sh)");
    let page = chrome
        .dump_dom(&format!("{}/b/web/v/{fp}", server.url()))
        .expect("the version page renders");
    for want in [fp.as_str(), "ami-0123456789abcdef0", "prod", "debian-12"] {
        assert!(page.contains(want), "{want} not on the page:\n{page}");
    }
    let index = chrome
        .dump_dom(&format!("{}/", server.url()))
        .expect("the index renders");
    assert!(index.contains("web servers"), "{index}");

    // Revoked with `kiln artifacts revoke`: Terraform reads `revoked = true` and the
    // reason, and the `?fail_if_revoked=1` address stops `terraform plan`.
    ok(&kiln(
        &p,
        &[],
        &[
            "artifacts",
            "revoke",
            "web",
            &fp,
            "--reason",
            "CVE-2026-1234 in openssl",
        ],
    ));
    let outputs = terraform_outputs(&format!("{}/terraform/web/prod", server.url()));
    assert_eq!(outputs["ami"]["value"], "ami-0123456789abcdef0");
    assert_eq!(outputs["revoked"]["value"], true);
    assert_eq!(
        outputs["revoked_reason"]["value"],
        "CVE-2026-1234 in openssl"
    );
    let strict = terraform_config(&format!(
        "{}/terraform/web/prod?fail_if_revoked=1",
        server.url()
    ));
    let init = strict
        .run(&["init", "-input=false", "-no-color"])
        .expect("terraform init");
    assert!(init.success, "{}\n{}", init.stdout, init.stderr);
    let plan = strict
        .run(&["plan", "-input=false", "-no-color"])
        .expect("terraform plan");
    assert!(!plan.success, "plan must stop:\n{}", plan.stdout);
    let said = format!("{}{}", plan.stdout, plan.stderr);
    assert!(said.contains("409"), "{said}");
    drop(server);

    // Errors: an unknown bucket is a usage error with a suggestion, in JSON too.
    let e = kiln(&p, &[], &["artifacts", "show", "wbe", "--json"]);
    assert_eq!(e.status.code(), Some(2), "{}", text(&e));
    let body: Value = serde_json::from_slice(&e.stdout).expect("JSON error");
    assert_eq!(body["error"]["kind"], "unknown_bucket");
    assert_eq!(body["error"]["suggestions"], serde_json::json!(["web"]));
    // No registry where none was made: said so, and nothing is created.
    let empty = Project::new();
    let e = kiln(&empty, &[], &["artifacts", "list"]);
    assert_eq!(e.status.code(), Some(2), "{}", text(&e));
    assert!(text(&e).contains("there is no registry at"), "{}", text(&e));
    assert!(!empty.path().join(".kiln").exists());
}

/// A builder that makes qcow2 images without booting them (what the qemu builder does
/// around its VM): blank, or `disk_image` flattened through an overlay.
const IMAGE_BUILDER: &str = r#"
fn options() { #{ disk_image: (), output_directory: "output" } }
fn grants(cfg) { #{ qemu: true } }
fn inputs(cfg) { #{ disk_image: cfg.disk_image } }
fn run(cfg, ctx) {
    let out = cfg.output_directory;
    ctx.output_dir(out);
    let image = `${out}/${ctx.source_name}.qcow2`;
    if cfg.disk_image == () {
        ctx.image_blank(image, "16M", "qcow2");
    } else {
        ctx.say(`based on ${cfg.disk_image}`);
        let work = `${out}/.work.qcow2`;
        ctx.image_overlay(cfg.disk_image, work, ());
        ctx.image_convert(work, image, "qcow2", "none");
    }
    ctx.keep(image);
    ctx.keep(out);
    ctx.artifact(#{ id: image, files: [image] })
}
"#;

/// Chained builds: the child's source names `registry_artifact(...)`; it is built from
/// what the channel points at, records its parent, shows up to date / out of date in
/// `ancestry`, and fails with the reason when the parent is revoked.
#[test]
fn a_chained_build_records_its_parent_and_a_revoked_parent_fails_it() {
    let p = Project::new();
    p.write("builders/image.rhai", IMAGE_BUILDER);
    p.write(
        "build.rhai",
        r#"
source("base", builder("builders/image.rhai", #{ output_directory: "output/base" }));
source("app", builder("builders/image.rhai", #{
    output_directory: "output/app",
    disk_image: registry_artifact(#{ bucket: "base", channel: "prod", platform: "qemu" }),
}));
build("base", #{ sources: ["base"], post: [registry()] });
build("app", #{ sources: ["app"], post: [registry(#{ labels: #{ role: "app" } })] });
"#,
    );
    // The plan shows the reference and the grant it brings; nothing is looked up yet.
    let inspect = ok(&kiln(&p, &[], &["inspect", "."]));
    assert!(
        inspect.contains("disk_image: registry_artifact(base@prod, qemu/local)"),
        "{inspect}"
    );
    assert!(inspect.contains("registry(base)"), "{inspect}");
    ok(&kiln(&p, &[], &["validate", "."]));

    let fp1 = recorded_fingerprint(
        &ok(&kiln(&p, &[], &["build", "--only", "base", "."])),
        "base",
    );
    // No `prod` yet: the child fails before its builder runs, naming the channel.
    let early = kiln(&p, &[], &["build", "--only", "app", "."]);
    assert_eq!(early.status.code(), Some(1), "{}", text(&early));
    assert!(
        text(&early).contains("has no channel \"prod\""),
        "{}",
        text(&early)
    );
    assert!(!p.path().join("output/app").exists());

    ok(&kiln(
        &p,
        &[],
        &["artifacts", "promote", "base", &fp1, "--channel", "prod"],
    ));
    let out = ok(&kiln(&p, &[], &["build", "--only", "app", "--force", "."]));
    assert!(
        out.contains(&format!(
            "Using base/{fp1} (@prod, build base) from the registry for disk_image"
        )),
        "{out}"
    );
    assert!(out.contains("based on output/base/base.qcow2"), "{out}");
    let child = recorded_fingerprint(&out, "app");
    assert!(p.path().join("output/app/app.qcow2").is_file());
    let v = json(&kiln(
        &p,
        &[],
        &["artifacts", "show", "app", "@latest", "--json"],
    ));
    let parent = &v["provenance"][0]["document"]["parent"];
    assert_eq!(parent["bucket"], "base");
    assert_eq!(parent["fingerprint"], fp1.as_str());
    assert_eq!(parent["channel"], "prod");
    assert_eq!(parent["platform"], "qemu");
    assert_eq!(v["parents"][0]["freshness"]["state"], "up_to_date");
    let audit = find_audit(p.path());
    assert!(
        audit.contains(r#""step":"builder image","capability":"registry","object":"base: resolve @prod qemu/local""#),
        "the lookup is audited under the builder's scope: {audit}"
    );

    let anc = json(&kiln(
        &p,
        &[],
        &["artifacts", "ancestry", "base", &fp1, "--json"],
    ));
    assert_eq!(anc["children"][0]["child"]["fingerprint"], child.as_str());
    assert_eq!(anc["children"][0]["freshness"]["state"], "up_to_date");

    // A new base moves prod: the child is out of date.
    let fp2 = recorded_fingerprint(
        &ok(&kiln(&p, &[], &["build", "--only", "base", "--force", "."])),
        "base",
    );
    ok(&kiln(
        &p,
        &[],
        &["artifacts", "promote", "base", &fp2, "--channel", "prod"],
    ));
    let anc = json(&kiln(
        &p,
        &[],
        &["artifacts", "ancestry", "base", &fp1, "--json"],
    ));
    assert_eq!(anc["children"][0]["freshness"]["state"], "out_of_date");
    assert_eq!(anc["children"][0]["freshness"]["current"], fp2.as_str());
    let table = ok(&kiln(&p, &[], &["artifacts", "ancestry", "base", &fp1]));
    assert!(
        table.contains(&format!("out of date (channel now {fp2})")),
        "{table}"
    );

    // Revoked: the child fails before its builder starts, saying why and what to do.
    let revoked = json(&kiln(
        &p,
        &[],
        &[
            "artifacts",
            "revoke",
            "base",
            &fp2,
            "--reason",
            "CVE-2026-0002 in openssl",
            "--json",
        ],
    ));
    assert_eq!(revoked["revocation"]["reason"], "CVE-2026-0002 in openssl");
    // The earlier child's output goes, so a builder that ran would show.
    std::fs::remove_dir_all(p.path().join("output/app")).expect("remove output/app");
    let failed = kiln(&p, &[], &["build", "--only", "app", "--force", "."]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let msg = text(&failed);
    assert!(
        msg.contains(&format!(
            "version {fp2} of \"base\" is revoked: CVE-2026-0002 in openssl"
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("kiln artifacts restore base {fp2}")),
        "{msg}"
    );
    assert!(
        msg.contains("registry_artifact(base@prod, qemu/local) (build.rhai:"),
        "{msg}"
    );
    assert!(
        !p.path().join("output/app/app.qcow2").exists(),
        "the builder never ran"
    );
    // The failed build is recorded too, so its version shows what is missing.
    let page = json(&kiln(&p, &[], &["artifacts", "list", "app", "--json"]));
    let newest = &page["versions"][0];
    assert_eq!(newest["complete"], false, "{page}");
    assert_eq!(newest["builds"][0]["status"], "failed", "{page}");

    // Restored, the child builds again; revoked with --inherit, the child inherits it.
    ok(&kiln(&p, &[], &["artifacts", "restore", "base", &fp2]));
    let out = ok(&kiln(&p, &[], &["build", "--only", "app", "--force", "."]));
    let child2 = recorded_fingerprint(&out, "app");
    ok(&kiln(
        &p,
        &[],
        &[
            "artifacts",
            "revoke",
            "base",
            &fp2,
            "--reason",
            "bad kernel",
            "--inherit",
        ],
    ));
    let v = json(&kiln(
        &p,
        &[],
        &["artifacts", "show", "app", &child2, "--json"],
    ));
    assert_eq!(
        v["revocation"]["inherited_from"]["fingerprint"],
        fp2.as_str(),
        "{v}"
    );
    assert_eq!(v["revocation"]["effective"], true);
    // A scheduled revocation is not in force yet.
    let later = json(&kiln(
        &p,
        &[],
        &[
            "artifacts",
            "revoke",
            "base",
            &fp1,
            "--reason",
            "end of life",
            "--at",
            "2h",
            "--json",
        ],
    ));
    assert!(later["revocation"]["effective_at"].is_string(), "{later}");
    let v = json(&kiln(
        &p,
        &[],
        &["artifacts", "show", "base", &fp1, "--json"],
    ));
    assert_eq!(v["revocation"]["effective"], false, "{v}");
}

/// Two kiln processes with one KILN_BUILD_FINGERPRINT and different --only build the
/// two halves of one version, at the same time, into PostgreSQL: exactly one of them
/// completes it.
#[test]
fn two_processes_contribute_to_one_version_in_postgres() {
    let sshd = Sshd::start();
    let pg =
        Postgres::shared().expect("PostgreSQL test cluster must start (tools/setup.d/postgres.sh)");
    let url = pg.create_database().expect("database");
    let p = Project::new();
    p.script(
        &sshd,
        r#"
source("a", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
source("b", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
build("web", #{
    sources: ["a", "b"],
    steps: [shell(["true"])],
    post: [registry(#{ artifacts: [#{ platform: "aws", region: "us-east-1", external_id: "ami-0aaaabbbbccccdddd" }] })],
});
"#,
    );
    let fp = "01JKILNTWOPROCESSES0000001";
    let env = [
        ("KILN_REGISTRY", url.as_str()),
        ("KILN_BUILD_FINGERPRINT", fp),
    ];
    let spawn = |only: &str| {
        let mut c = kiln_cmd(p.path(), &["build", "--only", only, "."]);
        c.env_remove("KILN_REGISTRY");
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().expect("spawn kiln")
    };
    let (a, b) = (spawn("web.a"), spawn("web.b"));
    let outs = [
        a.wait_with_output().expect("kiln a"),
        b.wait_with_output().expect("kiln b"),
    ];
    let stdouts: Vec<String> = outs.iter().map(ok).collect();
    for s in &stdouts {
        assert!(s.contains("==> Registry (postgres://"), "{s}");
    }
    let complete = stdouts
        .iter()
        .filter(|s| s.contains("version complete, now `latest`"))
        .count();
    let waiting = stdouts
        .iter()
        .filter(|s| s.contains("version incomplete, waiting for:"))
        .count();
    assert_eq!((complete, waiting), (1, 1), "{stdouts:#?}");

    let v = json(&kiln(
        &p,
        &[("KILN_REGISTRY", &url)],
        &["artifacts", "show", "web", "@latest", "--json"],
    ));
    assert_eq!(v["fingerprint"], fp);
    assert_eq!(v["complete"], true);
    assert_eq!(v["expected_builds"], serde_json::json!(["a", "b"]));
    let names: Vec<&str> = v["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["a", "b"]);
    assert!(
        !p.path().join(".kiln/registry.db").exists(),
        "KILN_REGISTRY points at PostgreSQL; no SQLite file is made"
    );
}

/// Eight `kiln build` processes at once, each its own project, record into one SQLite
/// file (`KILN_REGISTRY`): eight complete versions, nothing lost, each with its label.
#[test]
fn eight_parallel_builds_record_into_one_sqlite_file() {
    let shared = tempfile::tempdir().expect("tempdir");
    let db = shared.path().join("registry.db");
    let db = db.to_str().expect("utf-8 path");
    let projects: Vec<Project> = (0..8)
        .map(|i| {
            let p = Project::new();
            p.write(
                "builders/none.rhai",
                r#"
fn options() { #{} }
fn run(cfg, ctx) { ctx.artifact(#{ id: ctx.source_name, files: [] }) }
"#,
            );
            p.write(
                "build.rhai",
                &format!(
                    r#"
source("box", builder("builders/none.rhai", #{{}}));
build("fleet", #{{
    sources: ["box"],
    post: [registry(#{{
        labels: #{{ n: "{i}" }},
        artifacts: [#{{ platform: "aws", region: "us-east-1", external_id: "ami-{i:017}" }}],
    }})],
}});
"#
                ),
            );
            p
        })
        .collect();
    let children: Vec<Child> = projects
        .iter()
        .map(|p| {
            let mut c = kiln_cmd(p.path(), &["build", "."]);
            c.env_remove("KILN_BUILD_FINGERPRINT")
                .env("KILN_REGISTRY", db)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c.spawn().expect("spawn kiln")
        })
        .collect();
    let mut fingerprints: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("kiln build");
            recorded_fingerprint(&ok(&out), "fleet")
        })
        .collect();
    fingerprints.sort();
    fingerprints.dedup();
    assert_eq!(
        fingerprints.len(),
        8,
        "one version per run: {fingerprints:?}"
    );

    let page = json(&kiln(
        &projects[0],
        &[("KILN_REGISTRY", db)],
        &["artifacts", "list", "fleet", "--limit", "50", "--json"],
    ));
    let versions = page["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 8, "{page}");
    let mut listed: Vec<String> = versions
        .iter()
        .map(|v| {
            assert_eq!(v["complete"], true, "{v}");
            v["fingerprint"].as_str().expect("fingerprint").to_string()
        })
        .collect();
    listed.sort();
    assert_eq!(listed, fingerprints);
    // Each run's own label and artifact, none mixed up.
    let mut seen: Vec<(String, String)> = fingerprints
        .iter()
        .map(|fp| {
            let v = json(&kiln(
                &projects[0],
                &[("KILN_REGISTRY", db)],
                &["artifacts", "show", "fleet", fp, "--json"],
            ));
            let b = &v["builds"][0];
            (
                b["labels"]["n"].as_str().unwrap_or("").to_string(),
                b["artifacts"][0]["external_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    seen.sort();
    let want: Vec<(String, String)> = (0..8)
        .map(|i| (i.to_string(), format!("ami-{i:017}")))
        .collect();
    assert_eq!(seen, want);
    for p in &projects {
        assert!(
            !p.path().join(".kiln/registry.db").exists(),
            "KILN_REGISTRY names the file; no per-project registry is made"
        );
    }
}

/// Hostile names and labels: SQL text or `../` in a bucket name and a 1 MiB label fail
/// `kiln validate` at their line, before anything runs; SQL and HTML in label values
/// and external ids are stored as the text they are; the CLI refuses such names too.
#[test]
fn hostile_names_are_refused_and_hostile_text_is_stored_inertly() {
    let p = Project::new();
    p.write(
        "builders/none.rhai",
        r#"
fn options() { #{} }
fn run(cfg, ctx) { ctx.artifact(#{ id: ctx.source_name, files: [] }) }
"#,
    );
    let script = |post: &str| {
        format!(
            "source(\"box\", builder(\"builders/none.rhai\", #{{}}));\n\
             build(\"web\", #{{ sources: [\"box\"], post: [{post}] }});\n"
        )
    };
    let huge = "x".repeat(1 << 20);
    for (post, says) in [
        (
            r#"registry(#{ bucket: "web'; DROP TABLE versions;--" })"#.to_string(),
            "invalid bucket",
        ),
        (
            r#"registry("../../etc/passwd")"#.to_string(),
            "invalid bucket",
        ),
        (
            format!(r#"registry(#{{ labels: #{{ big: "{huge}" }} }})"#),
            "longer than the limit",
        ),
    ] {
        p.write("build.rhai", &script(&post));
        for cmd in ["validate", "build"] {
            let o = kiln(&p, &[], &[cmd, "."]);
            assert_eq!(o.status.code(), Some(2), "{cmd}: {}", text(&o));
            let msg = text(&o);
            assert!(
                msg.contains(says) && msg.contains("build.rhai:2:"),
                "{cmd}: {}",
                &msg[..msg.len().min(2000)]
            );
        }
        assert!(!p.path().join(".kiln/registry.db").exists());
    }

    let sql = "x'); DELETE FROM builds;--<script>alert(1)</script>";
    p.write(
        "build.rhai",
        &script(&format!(
            r#"registry(#{{ labels: #{{ note: "{sql}" }}, artifacts: [#{{ platform: "aws", region: "us-east-1", external_id: "ami-'; DROP TABLE artifacts;--" }}] }})"#
        )),
    );
    let fp = recorded_fingerprint(&ok(&kiln(&p, &[], &["build", "."])), "web");
    let v = json(&kiln(&p, &[], &["artifacts", "show", "web", &fp, "--json"]));
    assert_eq!(v["builds"][0]["labels"]["note"], sql);
    assert_eq!(
        v["builds"][0]["artifacts"][0]["external_id"],
        "ami-'; DROP TABLE artifacts;--"
    );
    for bad in ["web'; DROP TABLE buckets;--", "../web", "web/../../x"] {
        let o = kiln(&p, &[], &["artifacts", "show", bad, "--json"]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o));
        let e: Value = serde_json::from_slice(&o.stdout).expect("JSON error");
        assert_eq!(e["error"]["kind"], "invalid_input", "{bad}: {e}");
    }
    // Still all there.
    let buckets = json(&kiln(&p, &[], &["artifacts", "list", "--json"]));
    assert_eq!(buckets.as_array().map(Vec::len), Some(1), "{buckets}");
}

/// A reader that goes away is not a crash: `kiln registry serve` whose stdout was
/// closed after its first line keeps answering, and on SIGTERM stops with exit 0
/// (its "stopped" line meets the closed pipe). CI once saw the server panic with
/// "failed printing to stdout: Broken pipe" and Terraform then got "connection refused".
#[test]
fn registry_serve_survives_a_closed_stdout() {
    let p = Project::new();
    let mut c = kiln_cmd(p.path(), &["registry", "serve", "--listen", "127.0.0.1:0"]);
    c.env_remove("KILN_REGISTRY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn kiln registry serve");
    let mut first = String::new();
    {
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        out.read_line(&mut first).expect("first line");
        // `out` dropped here: the pipe's only reader is gone.
    }
    let addr = first
        .split_once(" on http://")
        .map(|(_, r)| r.trim().trim_end_matches('/').to_string())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    let (status, body) = http(&addr, "GET", "/api/v1/buckets", None, "");
    assert_eq!(status, 200, "{body}");
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
