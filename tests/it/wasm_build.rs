//! WASM provisioners inside a real `kiln build` against a real sshd: the guest SDK's
//! consul provisioner lands its files, and grants are enforced end to end.

use crate::cli::{Project, kiln_cmd, text};
use crate::peers::sshd::Sshd;

fn with_component(p: &Project, name: &str) {
    let src = crate::wasm::guest_dir().join(format!("{name}.wasm"));
    let dest = p.path().join("provisioners").join(format!("{name}.wasm"));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(&src, &dest).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
}

#[test]
fn consul_provisioner_bakes_its_service_definition_over_ssh() {
    let sshd = Sshd::start();
    let p = Project::new();
    with_component(&p, "consul_provisioner");
    p.write(
        "files/consul/web-extra.hcl",
        "# extra\nlog_level = \"INFO\"\n",
    );
    p.write("secret.txt", "do not ship");
    let script = r#"
source("box", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
build("web", #{ sources: ["box"], steps: [
    wasm("provisioners/consul_provisioner.wasm", #{
        service: "web", port: 80, tags: ["v1"], consul_dir: "REMOTE/consul.d",
        check: #{ http: "http://localhost:80/health", interval: "10s" },
        files: [#{ from: "files/consul/web-extra.hcl", to: "REMOTE/consul.d/web-extra.hcl" }],
    }, #{ allow: #{ read: ["files/consul"] } }),
]});
"#
    .replace("REMOTE", p.remote.path().to_str().unwrap());
    p.script(&sshd, &script);
    let out = p.kiln(&["build", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let def = p.remote.path().join("consul.d/web.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&def).unwrap()).unwrap();
    assert_eq!(v["service"]["name"], "web");
    assert_eq!(v["service"]["port"], 80);
    assert_eq!(v["service"]["check"]["http"], "http://localhost:80/health");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&def).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert_eq!(
        std::fs::read_to_string(p.remote.path().join("consul.d/web-extra.hcl")).unwrap(),
        "# extra\nlog_level = \"INFO\"\n"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("consul service web on port 80"), "{stdout}");

    // The same provisioner asked to ship a file outside its read grant is refused,
    // and nothing lands.
    let script = script.replace("files/consul/web-extra.hcl\", to", "secret.txt\", to");
    p.write(
        "build.rhai",
        &script.replace("{SSH}", &sshd.ssh_config_rhai_in(p.path())),
    );
    std::fs::remove_dir_all(p.remote.path().join("consul.d")).unwrap();
    let out = p.kiln(&["build", "."]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!p.remote.path().join("consul.d/web-extra.hcl").exists());
    assert!(text(&out).contains("secret.txt"), "{}", text(&out));
}

#[test]
fn an_ungranted_import_fails_before_the_guest_runs() {
    let sshd = Sshd::start();
    let p = Project::new();
    with_component(&p, "hello_provisioner");
    let script = r#"
source("box", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
build("web", #{ sources: ["box"], steps: [
    wasm("provisioners/hello_provisioner.wasm", #{ command: "touch REMOTE/ran" }, #{ allow: #{ machine: false } }),
]});
"#
    .replace("REMOTE", p.remote.path().to_str().unwrap());
    p.script(&sshd, &script);
    let out = p.kiln(&["build", "."]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("kiln:host/machine"), "{all}");
    assert!(all.contains("allow: #{ machine: true }"), "{all}");
    assert!(!p.remote.path().join("ran").exists());

    // Granted, it runs and its command reaches the machine through the broker.
    p.write(
        "build.rhai",
        &script
            .replace("#{ allow: #{ machine: false } }", "#{}")
            .replace("{SSH}", &sshd.ssh_config_rhai_in(p.path())),
    );
    let out = p.kiln(&["build", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(p.remote.path().join("ran").exists());
}

#[test]
fn module_inspect_and_plan_inspect_show_imports() {
    let p = Project::new();
    with_component(&p, "consul_provisioner");
    let out = kiln_cmd(
        p.path(),
        &["module", "inspect", "provisioners/consul_provisioner.wasm"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("kiln:host/machine"), "{s}");
    assert!(s.contains("provision"), "{s}");
    p.write(
        "build.rhai",
        r#"source("box", ssh_host(#{ host: "h", ssh: #{ user: "root", host_key: "SHA256:x" } }));
build("web", #{ sources: ["box"], steps: [ wasm("provisioners/consul_provisioner.wasm", #{ service: "web", port: 80 }) ] });"#,
    );
    let out = p.kiln(&["inspect", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("imports: ") && s.contains("kiln:host/machine"),
        "{s}"
    );
}

/// The same machine call made from a Rhai closure and from a WASM guest goes through
/// one facade, so both write the same audit record (capability, object, outcome).
#[test]
fn rhai_and_wasm_audit_the_same_call_identically() {
    let sshd = Sshd::start();
    let p = Project::new();
    with_component(&p, "hello_provisioner");
    let script = r#"
source("box", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
build("web", #{ sources: ["box"], steps: [
    |m| { m.exec("echo same-call"); },
    wasm("provisioners/hello_provisioner.wasm", #{ command: "echo same-call" }),
]});
"#;
    p.script(&sshd, script);
    let out = p.kiln(&["build", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let audit = crate::cli::find_audit(p.path());
    let records: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["object"] == "exec echo same-call")
        .collect();
    assert_eq!(records.len(), 2, "{audit}");
    let key = |r: &serde_json::Value| {
        (
            r["capability"].clone(),
            r["object"].clone(),
            r["outcome"].clone(),
        )
    };
    assert_eq!(key(&records[0]), key(&records[1]), "{audit}");
    assert_eq!(records[0]["outcome"], "ok (exit 0)");
    assert_eq!(records[0]["step"], "step 1 closure");
    assert_eq!(records[1]["step"], "step 2 wasm");
    assert!(
        records
            .iter()
            .all(|r| r["duration_ms"].as_f64().unwrap() > 0.0)
    );
}
