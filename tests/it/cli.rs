//! End-to-end tests of the `kiln` binary against a real loopback sshd: the spine of
//! issue 2 (scripts, broker, SSH communicator, orchestrator, cleanup, UI).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::peers::sshd::Sshd;

/// A temp project with a build script, and a temp dir standing for "the machine"'s
/// filesystem (the sshd runs on this host, so results are checked directly).
pub struct Project {
    pub dir: tempfile::TempDir,
    pub remote: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        Project {
            dir: tempfile::Builder::new()
                .prefix("kiln-proj-")
                .tempdir()
                .unwrap(),
            remote: tempfile::Builder::new()
                .prefix("kiln-remote-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Writes build.rhai with `{SSH}` replaced by the peer's ssh map.
    pub fn script(&self, sshd: &Sshd, text: &str) {
        let ssh = sshd.ssh_config_rhai_in(self.path());
        self.write("build.rhai", &text.replace("{SSH}", &ssh));
    }

    pub fn kiln(&self, args: &[&str]) -> Output {
        kiln_cmd(self.path(), args).output().expect("run kiln")
    }
}

pub fn kiln_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("KILN_LOG");
    c
}

pub fn text(o: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn shell_file_and_closure_steps_land_on_the_machine() {
    let sshd = Sshd::start();
    let p = Project::new();
    p.write("files/app.conf", "listen = 8080\n");
    p.write("files/tree/a.txt", "A");
    p.write("files/tree/sub/b.txt", "B");
    p.write(
        "scripts/setup.sh",
        "#!/bin/sh\necho \"from script $GREETING\" > \"$OUT\"\n",
    );
    let script = r#"
source("box", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
build("web", #{
    sources: ["box"],
    steps: [
        shell(["echo hello > REMOTE/hello", "echo line2 >> REMOTE/hello"]),
        shell("scripts/setup.sh", #{ env: #{ GREETING: "hi there", OUT: "REMOTE/script.out" } }),
        file("files/app.conf", "REMOTE/etc/app.conf"),
        file("files/tree", "REMOTE/tree"),
        |m| {
            let f = m.facts();
            m.write_file("REMOTE/facts.txt", `${f.os_id} ${f.arch}`);
            let r = m.exec("cat REMOTE/hello");
            m.write_file("REMOTE/closure.txt", r.stdout);
            let r = m.exec("exit 3", #{ check: false });
            m.write_file("REMOTE/code.txt", `${r.exit_code}`);
        },
    ],
});
"#
    .replace("REMOTE", p.remote.path().to_str().unwrap());
    std::fs::create_dir_all(p.remote.path().join("etc")).unwrap();
    p.script(&sshd, &script);
    let out = p.kiln(&["build", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let read = |rel: &str| {
        std::fs::read_to_string(p.remote.path().join(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}\n{}", text(&out)))
    };
    assert_eq!(read("hello"), "hello\nline2\n");
    assert_eq!(read("script.out"), "from script hi there\n");
    assert_eq!(read("etc/app.conf"), "listen = 8080\n");
    assert_eq!(read("tree/a.txt"), "A");
    assert_eq!(read("tree/sub/b.txt"), "B");
    assert_eq!(read("closure.txt"), "hello\nline2\n");
    assert_eq!(read("code.txt"), "3");
    assert!(
        read("facts.txt").contains("x86_64"),
        "{}",
        read("facts.txt")
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("==> web.box: Uploading files/app.conf => "),
        "{stdout}"
    );
    // The audit log records every capability use.
    let audit = find_audit(p.path());
    assert!(audit.contains("\"capability\":\"machine\""), "{audit}");
    assert!(audit.contains("\"capability\":\"ssh\""), "{audit}");
}

pub fn find_audit(project: &Path) -> String {
    let runs = project.join(".kiln/runs");
    let mut out = String::new();
    for e in std::fs::read_dir(&runs).unwrap_or_else(|e| panic!("{}: {e}", runs.display())) {
        out.push_str(
            &std::fs::read_to_string(e.unwrap().path().join("audit.jsonl")).unwrap_or_default(),
        );
    }
    out
}

#[test]
fn a_denied_capability_names_it_and_the_allow_line() {
    let sshd = Sshd::start();
    let p = Project::new();
    p.script(
        &sshd,
        r#"
source("box", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
build("web", #{ sources: ["box"], steps: [
    step(|m| { m.exec("true"); }, #{ allow: #{ machine: false } }),
]});
"#,
    );
    let out = p.kiln(&["build", "."]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("is not granted machine"), "{all}");
    assert!(all.contains("allow: #{ machine: true }"), "{all}");
    assert!(find_audit(p.path()).contains("\"outcome\":\"denied\""));
}

#[test]
fn reading_outside_the_grant_is_denied_even_through_dotdot() {
    let sshd = Sshd::start();
    let p = Project::new();
    p.write("files/ok.txt", "ok");
    let script = r#"
source("box", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
build("web", #{ sources: ["box"], steps: [
    file("files/../../../../etc/hostname", "REMOTE/stolen", #{ allow: #{ read: ["files"] } }),
]});
"#
    .replace("REMOTE", p.remote.path().to_str().unwrap());
    p.script(&sshd, &script);
    let out = p.kiln(&["build", "."]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!p.remote.path().join("stolen").exists());
}

#[test]
fn a_syntax_error_reports_file_line_and_column() {
    let p = Project::new();
    p.write(
        "build.rhai",
        "let x = 1;\nsource(\"a\", ssh_host(#{ host: \"h\" ssh: #{} }));\n",
    );
    let out = p.kiln(&["validate", "."]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("build.rhai:2:"), "{err}");
    assert!(err.contains("2 | source(\"a\""), "{err}");
}

#[test]
fn an_unknown_config_key_is_refused_with_the_allowed_keys() {
    let p = Project::new();
    p.write(
        "build.rhai",
        r#"source("a", ssh_host(#{ host: "h", ssh: #{ user: "root" }, hots: 1 }));
build("b", #{ sources: ["a"] });"#,
    );
    let out = p.kiln(&["validate", "."]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key `hots`"), "{err}");
    assert!(err.contains("allowed keys: host, ssh"), "{err}");
    assert!(err.contains("build.rhai:1:"), "{err}");

    p.write(
        "build.rhai",
        r#"source("a", ssh_host(#{ host: "h", ssh: #{ user: "root", private_key: "x" } }));
build("b", #{ sources: ["a"] });"#,
    );
    let out = p.kiln(&["validate", "."]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("private_key"), "{}", text(&out));
}

#[test]
fn a_wrong_host_key_is_refused() {
    let sshd = Sshd::start();
    let p = Project::new();
    let ssh = sshd.ssh_config_rhai_in(p.path());
    let wrong = ssh.replace(
        &sshd.host_key_fingerprint,
        "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    p.write(
        "build.rhai",
        &format!(
            r#"source("box", ssh_host(#{{ host: "127.0.0.1", ssh: {wrong} }}));
build("web", #{{ sources: ["box"], steps: [ shell(["touch {}/should-not-exist"]) ] }});"#,
            p.remote.path().display()
        ),
    );
    let out = p.kiln(&["build", "."]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out).to_lowercase();
    assert!(all.contains("host key mismatch"), "{all}");
    // Refused at once, not retried until the 5-minute default timeout.
    assert!(!all.contains("gave up connecting"), "{all}");
    assert!(!p.remote.path().join("should-not-exist").exists());
}

#[test]
fn a_failing_step_fails_the_build_and_cleans_up() {
    let sshd = Sshd::start();
    let p = Project::new();
    let script = r#"
source("box", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
build("web", #{ sources: ["box"], steps: [
    shell(["echo before > REMOTE/before", "echo failing >&2; exit 7"]),
    shell(["touch REMOTE/after"]),
]});
"#
    .replace("REMOTE", p.remote.path().to_str().unwrap());
    p.script(&sshd, &script);
    let out = p.kiln(&["build", "."]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("exited with status 7"), "{all}");
    assert!(all.contains("Cleaning up"), "{all}");
    assert!(all.contains("removed: SSH session"), "{all}");
    assert!(p.remote.path().join("before").exists());
    assert!(
        !p.remote.path().join("after").exists(),
        "steps after a failure must not run"
    );
}

#[test]
fn retries_and_timeouts() {
    let sshd = Sshd::start();
    let p = Project::new();
    let marker = format!("600.{}", std::process::id());
    let script = r#"
source("box", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
build("retry", #{ sources: ["box"], steps: [
    shell(["if [ -f REMOTE/once ]; then echo second > REMOTE/ok; else touch REMOTE/once; exit 1; fi"], #{ max_retries: 1 }),
]});
build("slow", #{ sources: ["box"], steps: [
    shell(["sleep MARKER"], #{ timeout: "1s" }),
]});
"#
    .replace("REMOTE", p.remote.path().to_str().unwrap())
    .replace("MARKER", &marker);
    p.script(&sshd, &script);
    let out = p.kiln(&["build", "--only", "retry", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("retrying (attempt 2 of 2)"),
        "{}",
        text(&out)
    );
    assert!(p.remote.path().join("ok").exists());

    let out = p.kiln(&["build", "--only", "slow", "."]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("timed out after 1s"), "{}", text(&out));
    // The timeout stopped the remote command too (it would sleep for 10 minutes).
    wait_for("the timed-out command to be stopped", || {
        sleepers(&marker).is_empty()
    });
}

/// Polls `cond` until it holds; a loaded machine is slow, only a hang fails.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn only_and_except_select_builds_and_builds_run_in_parallel() {
    let sshd = Sshd::start();
    let p = Project::new();
    let script = r#"
source("box", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
build("a", #{ sources: ["box"], steps: [
    shell(["date +%s.%N > REMOTE/a.start", "sleep 2", "date +%s.%N > REMOTE/a.end"]),
]});
build("b", #{ sources: ["box"], steps: [
    shell(["date +%s.%N > REMOTE/b.start", "sleep 2", "date +%s.%N > REMOTE/b.end"]),
]});
"#
    .replace("REMOTE", p.remote.path().to_str().unwrap());
    p.script(&sshd, &script);
    let out = p.kiln(&["build", "--only", "a.box", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(p.remote.path().join("a.end").exists());
    assert!(!p.remote.path().join("b.start").exists());

    std::fs::remove_file(p.remote.path().join("a.end")).unwrap();
    let out = p.kiln(&["build", "--except", "a", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(p.remote.path().join("b.end").exists());
    assert!(!p.remote.path().join("a.end").exists());

    let out = p.kiln(&["build", "--only", "nope", "."]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("matches no build"), "{}", text(&out));

    // Both at once: each waits for the other to have started (a barrier), which
    // builds run one after the other could never pass.
    let together = r#"
source("box", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
build("a", #{ sources: ["box"], steps: [
    shell(["touch REMOTE/a.here", "i=0; while [ ! -e REMOTE/b.here ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done", "test -e REMOTE/b.here"]),
]});
build("b", #{ sources: ["box"], steps: [
    shell(["touch REMOTE/b.here", "i=0; while [ ! -e REMOTE/a.here ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done", "test -e REMOTE/a.here"]),
]});
"#
    .replace("REMOTE", p.remote.path().to_str().unwrap())
    .replace("{SSH}", &sshd.ssh_config_rhai_in(p.path()));
    p.write("together.rhai", &together);
    let out = p.kiln(&["build", "together.rhai"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "builds did not overlap: {}",
        text(&out)
    );
    let t = |f: &str| -> f64 {
        std::fs::read_to_string(p.remote.path().join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };

    // --parallel-builds 1 serializes them.
    let out = p.kiln(&["build", "--parallel-builds", "1", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        t("a.end") <= t("b.start") || t("b.end") <= t("a.start"),
        "builds overlapped with -j1"
    );
}

#[test]
fn manifest_and_checksum_post_processors() {
    let sshd = Sshd::start();
    let p = Project::new();
    p.write(
        "builders/fetcher.rhai",
        r#"
fn options() { #{ host: (), ssh: (), output_directory: "output" } }
fn grants(cfg) { #{ machine: true, ssh: [cfg.host] } }
fn run(cfg, ctx) {
    let ssh = cfg.ssh; ssh.host = cfg.host;
    let m = ctx.connect(ssh);
    ctx.provision(m);
    let out = `${cfg.output_directory}/motd.txt`;
    m.download("REMOTE/motd", out);
    ctx.artifact(#{ id: "motd", files: [out] })
}
"#
        .replace("REMOTE", p.remote.path().to_str().unwrap())
        .as_str(),
    );
    let script = r#"
source("box", builder("builders/fetcher.rhai", #{ host: "127.0.0.1", ssh: {SSH} }));
build("web", #{ sources: ["box"],
    steps: [ shell(["echo welcome > REMOTE/motd"]) ],
    post: [checksum(["sha256", "sha512"]), manifest(#{ output: "output/manifest.json", custom_data: #{ team: "infra" } })],
});
"#
    .replace("REMOTE", p.remote.path().to_str().unwrap());
    p.script(&sshd, &script);
    let out = p.kiln(&["build", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let sum = std::fs::read_to_string(p.path().join("output/motd.txt.sha256")).unwrap();
    assert!(sum.ends_with("  motd.txt\n"), "{sum}");
    let check = Command::new("sha256sum")
        .arg("-c")
        .arg("motd.txt.sha256")
        .current_dir(p.path().join("output"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    assert!(p.path().join("output/motd.txt.sha512").exists());
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.path().join("output/manifest.json")).unwrap(),
    )
    .unwrap();
    let b = &m["builds"][0];
    assert_eq!(b["name"], "box");
    assert_eq!(b["builder_type"], "fetcher");
    assert!(b["build_time"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(b["files"][0]["name"], "output/motd.txt");
    assert_eq!(b["files"][0]["size"], 8);
    assert_eq!(b["artifact_id"], "motd");
    assert_eq!(b["custom_data"]["team"], "infra");
    assert_eq!(b["run_uuid"], m["last_run_uuid"]);
    assert_eq!(b["script_sha256"].as_str().unwrap().len(), 64);
    assert!(b["grants"].as_array().unwrap().len() >= 2);
    // A second run appends, as Packer's manifest does.
    let out = p.kiln(&["build", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.path().join("output/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["builds"].as_array().unwrap().len(), 2);
}

#[test]
fn inspect_shows_grants_and_validate_touches_nothing() {
    let p = Project::new();
    p.write("files/x", "x");
    p.write(
        "keys/id",
        "validate checks that the key file is there and readable",
    );
    p.write(
        "build.rhai",
        r#"let img = var("image", "debian");
source("box", ssh_host(#{ host: "h.example", ssh: #{ user: "root", private_key_file: "keys/id", host_key: "SHA256:x" } }));
build("web", #{ sources: ["box"], steps: [
    shell(["echo hi"], #{ timeout: "5m", max_retries: 2 }),
    file("files/x", "/etc/x"),
    step(|m| { m.exec("true"); }, #{ allow: #{ secrets: ["DB_PW"], read: ["files"] } }),
], post: [manifest("out/m.json")] });"#,
    );
    let out = p.kiln(&["inspect", ".", "--var", "image=ubuntu"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("image = \"ubuntu\" (--var)"), "{s}");
    assert!(s.contains("grants: machine, read(.)"), "{s}");
    // The builder declares its own grants: SSH to the host its config names, no more.
    assert!(s.contains("ssh(h.example)"), "{s}");
    assert!(s.contains("secrets(DB_PW)"), "{s}");
    assert!(s.contains("timeout 5m"), "{s}");
    let out = p.kiln(&["validate", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !p.path().join(".kiln").exists(),
        "validate must not write anything"
    );
    assert!(!p.path().join("out").exists());
}

#[test]
fn secrets_never_appear_in_output() {
    let sshd = Sshd::start();
    let p = Project::new();
    let script = r#"
let pw = secret("KILN_TEST_PW");
source("box", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
build("web", #{ sources: ["box"], steps: [
    shell(["echo plain=$PW", "printf %s \"$PW\" | base64", "echo \"json={\\\"pw\\\":\\\"$PW\\\"}\""], #{ env: #{ PW: pw } }),
    |m| { print(`the secret is ${pw}`); },
]});
"#;
    p.script(&sshd, script);
    let secret = "s3cr3t-Pa55 'q\"uote";
    let out = kiln_cmd(p.path(), &["build", "."])
        .env("KILN_TEST_PW", secret)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(!all.contains("s3cr3t-Pa55"), "secret leaked:\n{all}");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    assert!(!all.contains(&b64), "base64 secret leaked:\n{all}");
    assert!(all.contains("plain=<secret:KILN_TEST_PW>"), "{all}");
    assert!(all.contains("secret(\"KILN_TEST_PW\")"), "{all}");
    assert!(!find_audit(p.path()).contains("s3cr3t"));

    let out = kiln_cmd(p.path(), &["build", "--machine-readable", "."])
        .env("KILN_TEST_PW", secret)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("s3cr3t-Pa55"), "{stdout}");
    for line in stdout.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        assert!(v["type"].is_string(), "{line}");
    }
}

#[test]
fn sigint_mid_build_stops_the_remote_work_and_cleans_up() {
    let sshd = Sshd::start();
    let p = Project::new();
    // A distinctive command line to find the remote process by.
    let marker = format!("300.{}", std::process::id());
    let script = r#"
source("box", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
build("web", #{ sources: ["box"], steps: [
    shell(["echo started > REMOTE/started", "sleep MARKER"]),
    shell(["touch REMOTE/after"]),
]});
"#
    .replace("REMOTE", p.remote.path().to_str().unwrap())
    .replace("MARKER", &marker);
    p.script(&sshd, &script);
    let child = kiln_cmd(p.path(), &["build", "."])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = p.remote.path().join("started");
    wait_for("the step to start", || started.exists());
    wait_for("the remote process to run", || {
        !sleepers(&marker).is_empty()
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t1 = Instant::now();
    let out = child.wait_with_output().unwrap();
    // Generous: the point is that kiln stops instead of waiting out the 300 s sleep.
    assert!(
        t1.elapsed() < Duration::from_secs(150),
        "kiln took {:?} to stop",
        t1.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("Interrupted by SIGINT"), "{all}");
    assert!(all.contains("removed: remote script"), "{all}");
    wait_for("the remote process to be stopped", || {
        sleepers(&marker).is_empty()
    });
    assert!(!p.remote.path().join("after").exists());
    // The script this build uploaded (named in the cleanup report) is gone.
    let script = all
        .split("removed: remote script /tmp/kiln-shell-")
        .nth(1)
        .and_then(|s| s.split(".sh").next())
        .unwrap_or_else(|| panic!("no script in the cleanup report: {all}"));
    assert!(find_audit(p.path()).contains("cancelled: interrupted by SIGINT"));
    assert!(
        !Path::new(&format!("/tmp/kiln-shell-{script}.sh")).exists(),
        "temp script left behind"
    );
}

/// Pids of `sleep ARG` processes (exact command line, read from /proc).
pub(crate) fn sleepers(arg: &str) -> Vec<u32> {
    let want = format!("sleep\0{arg}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want.as_bytes())
        })
        .collect()
}

/// Every example's build script validates (its builders, options and grants are
/// current), with the files its run.sh would put in place.
#[test]
fn every_example_validates() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for e in std::fs::read_dir(&examples).unwrap() {
        let dir = e.unwrap().path();
        if !dir.join("build.rhai").exists() {
            continue;
        }
        // The secrets examples read are set by their run.sh (examples/aws-ami: moto's
        // test credentials); `inspect` needs them set, not real.
        let out = kiln_cmd(&dir, &["inspect", "."])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            dir.display(),
            text(&out)
        );
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} examples found");
}

#[test]
fn imports_resolve_only_in_the_project_and_kilns_library() {
    let p = Project::new();
    p.write("lib/common.rhai", "fn motd() { \"hello from a module\" }\n");
    let outside = tempfile::Builder::new()
        .prefix("kiln-outside-")
        .tempdir()
        .unwrap();
    std::fs::write(outside.path().join("evil.rhai"), "fn x() { 1 }\n").unwrap();
    let base = r#"
source("box", ssh_host(#{ host: "h", ssh: #{ user: "root", host_key: "SHA256:x" } }));
build("web", #{ sources: ["box"], steps: [ shell([`echo ${c::motd()}`]) ] });
"#;
    p.write(
        "build.rhai",
        &format!("import \"lib/common\" as c;\n{base}"),
    );
    let out = p.kiln(&["inspect", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for bad in [
        "/etc/passwd".to_string(),
        outside.path().join("evil").display().to_string(),
        format!(
            "../{}/evil",
            outside.path().file_name().unwrap().to_str().unwrap()
        ),
    ] {
        p.write("build.rhai", &format!("import {bad:?} as c;\n{base}"));
        let out = p.kiln(&["validate", "."]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        assert!(
            text(&out).contains("cannot import"),
            "{bad}: {}",
            text(&out)
        );
    }
}
