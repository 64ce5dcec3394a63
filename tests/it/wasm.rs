//! WASM provisioners: real components (built by tools/build-guests.sh) run in the
//! wasmtime host against a recording `GuestHost`. The hostile guests each try one way
//! out of the sandbox; every attempt must fail, leave the host untouched, and be
//! reported through `GuestHost::audit`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use kiln::wasm::{
    ExecOutput, GuestError, GuestHost, LogLevel, Preopen, WasmEngine, WasmError, WasmGrants,
    WasmLimits, inspect,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf()
}

/// Builds all guests once per test binary; a failed build fails every test that needs one.
pub(crate) fn guest_dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = DIR.get_or_init(|| {
        let target = root().join("target").join("guests");
        let out = std::process::Command::new("bash")
            .arg(root().join("tools/build-guests.sh"))
            .env("KILN_GUEST_TARGET_DIR", &target)
            .output()
            .map_err(|e| format!("could not run tools/build-guests.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tools/build-guests.sh failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(target.join("wasm32-wasip2").join("release"))
    });
    match r {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn guest(name: &str) -> Vec<u8> {
    let path = guest_dir().join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("guest {} missing after build: {e}", path.display()))
}

fn engine() -> &'static WasmEngine {
    static E: OnceLock<WasmEngine> = OnceLock::new();
    E.get_or_init(|| {
        WasmEngine::new(Some(
            root().join("target").join("guests").join("kiln-cache"),
        ))
        .expect("engine")
    })
}

/// A `GuestHost` that records everything and plays the machine inside a temp dir.
#[derive(Default)]
struct Recorder {
    machine_root: Option<PathBuf>,
    secrets: HashMap<String, String>,
    execs: Mutex<Vec<String>>,
    writes: Mutex<Vec<(String, Option<u32>)>>,
    logs: Mutex<Vec<(LogLevel, String)>>,
    audits: Mutex<Vec<(String, String, String)>>,
    secret_calls: Mutex<Vec<String>>,
}

impl Recorder {
    fn audits(&self) -> Vec<(String, String, String)> {
        self.audits.lock().unwrap().clone()
    }
    fn audited(&self, cap: &str) -> bool {
        self.audits().iter().any(|(c, _, _)| c == cap)
    }
    fn machine_dir(&self) -> Dir {
        let root = self
            .machine_root
            .as_ref()
            .expect("this test has no machine root");
        Dir::open_ambient_dir(root, ambient_authority()).unwrap()
    }
    fn put(&self, guest_path: &str, contents: &[u8]) -> Result<(), GuestError> {
        let rel = guest_path.trim_start_matches('/');
        let dir = self.machine_dir();
        if let Some(parent) = Path::new(rel).parent() {
            dir.create_dir_all(parent)
                .map_err(|e| GuestError::Io(e.to_string()))?;
        }
        dir.write(rel, contents)
            .map_err(|e| GuestError::Io(e.to_string()))
    }
}

#[async_trait::async_trait]
impl GuestHost for Recorder {
    async fn exec(
        &self,
        command: String,
        _env: Vec<(String, String)>,
    ) -> Result<ExecOutput, GuestError> {
        self.execs.lock().unwrap().push(command.clone());
        let stdout = command
            .strip_prefix("echo ")
            .map(|s| format!("{s}\n"))
            .unwrap_or_default();
        Ok(ExecOutput {
            exit_code: 0,
            stdout: stdout.into_bytes(),
            stderr: vec![],
        })
    }
    async fn upload(
        &self,
        mut source: cap_std::fs::File,
        guest_path: String,
        mode: Option<u32>,
    ) -> Result<u64, GuestError> {
        let mut buf = Vec::new();
        source
            .read_to_end(&mut buf)
            .map_err(|e| GuestError::Io(e.to_string()))?;
        self.put(&guest_path, &buf)?;
        self.writes.lock().unwrap().push((guest_path, mode));
        Ok(buf.len() as u64)
    }
    async fn write_file(
        &self,
        guest_path: String,
        contents: Vec<u8>,
        mode: Option<u32>,
    ) -> Result<(), GuestError> {
        self.put(&guest_path, &contents)?;
        self.writes.lock().unwrap().push((guest_path, mode));
        Ok(())
    }
    async fn read_file(&self, guest_path: String) -> Result<Vec<u8>, GuestError> {
        self.machine_dir()
            .read(guest_path.trim_start_matches('/'))
            .map_err(|e| GuestError::NotFound(e.to_string()))
    }
    async fn facts(&self) -> Vec<(String, String)> {
        vec![("os_id".into(), "debian".into())]
    }
    fn secret(&self, name: &str) -> Result<String, GuestError> {
        self.secret_calls.lock().unwrap().push(name.to_string());
        self.secrets
            .get(name)
            .cloned()
            .ok_or_else(|| GuestError::NotFound(name.to_string()))
    }
    fn allow_http(&self, _host: &str, _port: u16) -> Result<(), GuestError> {
        Ok(())
    }
    fn log(&self, level: LogLevel, message: &str) {
        self.logs.lock().unwrap().push((level, message.to_string()));
    }
    fn audit(&self, capability: &str, object: &str, outcome: &str) {
        self.audits
            .lock()
            .unwrap()
            .push((capability.into(), object.into(), outcome.into()));
    }
}

fn preopen(dir: &Path, guest_path: &str) -> Preopen {
    Preopen {
        dir: Dir::open_ambient_dir(dir, ambient_authority()).unwrap(),
        guest_path: guest_path.into(),
        label: guest_path.trim_start_matches('/').into(),
    }
}

fn limits() -> WasmLimits {
    WasmLimits {
        timeout: Duration::from_secs(20),
        ..WasmLimits::default()
    }
}

async fn run(
    name: &str,
    config: serde_json::Value,
    grants: WasmGrants,
    limits: WasmLimits,
    host: &Arc<Recorder>,
) -> Result<String, WasmError> {
    let p = engine().load(&guest(name)).expect("load");
    p.run(&config.to_string(), grants, limits, host.clone())
        .await
}

/// A host dir with a secret outside the granted `granted/` subdir.
struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("outside.txt"), "TOPSECRET").unwrap();
        std::fs::create_dir(tmp.path().join("granted")).unwrap();
        std::fs::write(tmp.path().join("granted/inside.txt"), "fine").unwrap();
        Sandbox { tmp }
    }
    fn path(&self) -> &Path {
        self.tmp.path()
    }
    /// Every file under the sandbox, to show nothing was created or changed.
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(p: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            let mut entries: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            for e in entries {
                let meta = std::fs::symlink_metadata(&e).unwrap();
                if meta.is_dir() {
                    walk(&e, out);
                } else if meta.is_file() {
                    out.push((e.clone(), std::fs::read(&e).unwrap()));
                } else {
                    out.push((
                        e.clone(),
                        std::fs::read_link(&e)
                            .unwrap()
                            .into_os_string()
                            .into_encoded_bytes(),
                    ));
                }
            }
        }
        let mut out = Vec::new();
        walk(self.path(), &mut out);
        out
    }
}

fn assert_refused(result: &Result<String, WasmError>) -> String {
    match result {
        Ok(s) => panic!("the guest got out: {s}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.contains("TOPSECRET") && !msg.contains("ESCAPED"),
                "{msg}"
            );
            msg
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_runs_reads_config_and_calls_machine_exec() {
    let host = Arc::new(Recorder::default());
    let grants = WasmGrants {
        machine: true,
        ..Default::default()
    };
    let out = run(
        "hello_provisioner",
        serde_json::json!({ "name": "tester", "command": "echo hi" }),
        grants,
        limits(),
        &host,
    )
    .await
    .expect("hello runs");
    assert_eq!(out, "hello tester: hi");
    assert_eq!(*host.execs.lock().unwrap(), vec!["echo hi".to_string()]);
    assert!(
        host.logs
            .lock()
            .unwrap()
            .iter()
            .any(|(l, m)| *l == LogLevel::Info && m == "hello, tester")
    );
    assert!(host.audits().is_empty(), "{:?}", host.audits());
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_config_fails_with_serde_message() {
    let host = Arc::new(Recorder::default());
    let grants = WasmGrants {
        machine: true,
        ..Default::default()
    };
    let err = run(
        "hello_provisioner",
        serde_json::json!({ "nmae": "typo" }),
        grants,
        limits(),
        &host,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, WasmError::Guest(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("invalid provisioner config") && msg.contains("nmae"),
        "{msg}"
    );
    assert!(host.execs.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn consul_writes_service_definition_and_uploads_files() {
    let machine = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(project.path().join("files/consul")).unwrap();
    std::fs::write(project.path().join("files/consul/extra.hcl"), "meta {}\n").unwrap();
    let host = Arc::new(Recorder {
        machine_root: Some(machine.path().into()),
        ..Default::default()
    });
    let grants = WasmGrants {
        machine: true,
        read: vec![preopen(
            &project.path().join("files/consul"),
            "files/consul",
        )],
        ..Default::default()
    };
    let config = serde_json::json!({
        "service": "web", "port": 80, "tags": ["v1"],
        "check": { "http": "http://localhost:80/health", "interval": "10s", "timeout": "2s" },
        "files": [{ "from": "files/consul/extra.hcl", "to": "/etc/consul.d/extra.hcl" }],
    });
    let summary = run("consul_provisioner", config, grants, limits(), &host)
        .await
        .expect("consul runs");
    assert!(
        summary.contains("consul service web on port 80 -> /etc/consul.d/web.json"),
        "{summary}"
    );

    let written: serde_json::Value = serde_json::from_slice(
        &std::fs::read(machine.path().join("etc/consul.d/web.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        written,
        serde_json::json!({ "service": {
            "name": "web", "port": 80, "tags": ["v1"],
            "check": { "id": "web-check", "name": "web health", "http": "http://localhost:80/health",
                       "interval": "10s", "timeout": "2s" },
        }})
    );
    assert_eq!(
        std::fs::read_to_string(machine.path().join("etc/consul.d/extra.hcl")).unwrap(),
        "meta {}\n"
    );
    let writes = host.writes.lock().unwrap().clone();
    assert!(
        writes.contains(&("/etc/consul.d/web.json".into(), Some(0o640))),
        "{writes:?}"
    );
    assert_eq!(
        *host.execs.lock().unwrap(),
        vec!["mkdir -p '/etc/consul.d'".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consul_rejects_invalid_config_before_touching_the_machine() {
    for (config, expect) in [
        (
            serde_json::json!({ "service": "web", "port": 70000 }),
            "out of range",
        ),
        (
            serde_json::json!({ "service": "bad name!", "port": 80 }),
            "must be 1-63",
        ),
        (
            serde_json::json!({ "service": "web", "port": 80, "check": { "tcp": "db:5432", "interval": "often" } }),
            "not a duration",
        ),
        (
            serde_json::json!({ "service": "web", "port": 80, "check": { "interval": "10s" } }),
            "exactly one",
        ),
    ] {
        let host = Arc::new(Recorder::default());
        let grants = WasmGrants {
            machine: true,
            ..Default::default()
        };
        let err = run("consul_provisioner", config, grants, limits(), &host)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "expected {expect:?} in {err}");
        assert!(host.execs.lock().unwrap().is_empty() && host.writes.lock().unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consul_upload_outside_read_grant_is_denied() {
    let machine = tempfile::tempdir().unwrap();
    let sb = Sandbox::new();
    let host = Arc::new(Recorder {
        machine_root: Some(machine.path().into()),
        ..Default::default()
    });
    let grants = WasmGrants {
        machine: true,
        read: vec![preopen(&sb.path().join("granted"), "files")],
        ..Default::default()
    };
    let config = serde_json::json!({
        "service": "web", "port": 80,
        "files": [{ "from": "files/../outside.txt", "to": "/etc/consul.d/stolen" }],
    });
    let msg = assert_refused(&run("consul_provisioner", config, grants, limits(), &host).await);
    assert!(msg.contains("denied"), "{msg}");
    assert!(!machine.path().join("etc/consul.d/stolen").exists());
    assert!(host.audited("fs.read"), "{:?}", host.audits());
}

#[tokio::test(flavor = "multi_thread")]
async fn machine_import_without_grant_is_refused_at_link_time() {
    let host = Arc::new(Recorder::default());
    let err = run(
        "machine_sneak",
        serde_json::json!({}),
        WasmGrants::default(),
        limits(),
        &host,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, WasmError::Link(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "component imports kiln:host/machine@0.1.0 but this step is not granted machine; add allow: #{ machine: true }"
    );
    assert!(host.execs.lock().unwrap().is_empty());
    assert!(host.audited("wasm.link"));
    // With the grant the same component links and runs: the refusal was the grant.
    let host = Arc::new(Recorder::default());
    let grants = WasmGrants {
        machine: true,
        ..Default::default()
    };
    run(
        "machine_sneak",
        serde_json::json!({}),
        grants,
        limits(),
        &host,
    )
    .await
    .expect("runs with the grant");
}

#[tokio::test(flavor = "multi_thread")]
async fn read_via_dotdot_is_refused() {
    let sb = Sandbox::new();
    let before = sb.snapshot();
    let host = Arc::new(Recorder::default());
    let grants = WasmGrants {
        read: vec![preopen(&sb.path().join("granted"), "/data")],
        ..Default::default()
    };
    let ok = run(
        "read_dotdot",
        serde_json::json!({ "path": "/data/inside.txt" }),
        grants,
        limits(),
        &host,
    )
    .await;
    assert_eq!(
        ok.expect("a granted file is readable"),
        "ESCAPED: fine",
        "control: reading inside the grant works"
    );

    let grants = WasmGrants {
        read: vec![preopen(&sb.path().join("granted"), "/data")],
        ..Default::default()
    };
    let r = run(
        "read_dotdot",
        serde_json::json!({ "path": "/data/../outside.txt" }),
        grants,
        limits(),
        &host,
    )
    .await;
    assert_refused(&r);
    assert_eq!(sb.snapshot(), before);
    assert!(
        host.audits()
            .iter()
            .any(|(c, o, _)| c == "fs.read" && o.contains("outside.txt")),
        "{:?}",
        host.audits()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn read_via_absolute_path_is_refused() {
    let sb = Sandbox::new();
    let before = sb.snapshot();
    let host = Arc::new(Recorder::default());
    let target = sb.path().join("outside.txt").display().to_string();
    let grants = WasmGrants {
        read: vec![preopen(&sb.path().join("granted"), "/data")],
        ..Default::default()
    };
    let msg = assert_refused(
        &run(
            "read_absolute",
            serde_json::json!({ "path": target }),
            grants,
            limits(),
            &host,
        )
        .await,
    );
    assert!(msg.contains("refused"), "{msg}");
    assert_eq!(sb.snapshot(), before);
    assert!(
        host.audits()
            .iter()
            .any(|(c, o, _)| c == "fs.read" && *o == target),
        "{:?}",
        host.audits()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn read_via_planted_symlink_is_refused() {
    let sb = Sandbox::new();
    std::os::unix::fs::symlink(
        sb.path().join("outside.txt"),
        sb.path().join("granted/abs-link"),
    )
    .unwrap();
    std::os::unix::fs::symlink("../outside.txt", sb.path().join("granted/rel-link")).unwrap();
    let before = sb.snapshot();
    for link in ["abs-link", "rel-link"] {
        let host = Arc::new(Recorder::default());
        let grants = WasmGrants {
            read: vec![preopen(&sb.path().join("granted"), "/data")],
            ..Default::default()
        };
        let r = run(
            "read_symlink",
            serde_json::json!({ "path": format!("/data/{link}") }),
            grants,
            limits(),
            &host,
        )
        .await;
        assert_refused(&r);
        assert!(
            host.audits()
                .iter()
                .any(|(c, o, _)| c == "fs.read" && o.contains(link)),
            "{link}: {:?}",
            host.audits()
        );
    }
    assert_eq!(sb.snapshot(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_outside_the_write_grant_are_refused() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path().join("out")).unwrap();
    let grants = || WasmGrants {
        read: vec![preopen(&sb.path().join("granted"), "/ro")],
        write: vec![preopen(&sb.path().join("out"), "/out")],
        ..Default::default()
    };
    let host = Arc::new(Recorder::default());
    run(
        "write_outside",
        serde_json::json!({ "path": "/out/ok.txt" }),
        grants(),
        limits(),
        &host,
    )
    .await
    .expect("control: writing inside the write grant works");
    assert!(sb.path().join("out/ok.txt").exists());
    let before = sb.snapshot();

    for path in [
        "/out/../escaped.txt",
        "/ro/new.txt",
        "/ro/inside.txt",
        sb.path().join("escaped.txt").to_str().unwrap(),
    ] {
        let host = Arc::new(Recorder::default());
        let r = run(
            "write_outside",
            serde_json::json!({ "path": path }),
            grants(),
            limits(),
            &host,
        )
        .await;
        assert_refused(&r);
        assert_eq!(sb.snapshot(), before, "{path} changed the host");
        if path.starts_with("/out") || path.starts_with("/ro") {
            assert!(host.audited("fs.write"), "{path}: {:?}", host.audits());
        }
    }
    assert_eq!(
        std::fs::read_to_string(sb.path().join("granted/inside.txt")).unwrap(),
        "fine"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn network_needs_a_grant_and_only_reaches_granted_hosts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let config = serde_json::json!({ "addr": addr.to_string() });

    let host = Arc::new(Recorder::default());
    let err = run(
        "net_connect",
        config.clone(),
        WasmGrants::default(),
        limits(),
        &host,
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, WasmError::Link(_))
            && msg.contains("wasi:sockets/")
            && msg.contains("allow: #{ http:"),
        "{msg}"
    );

    let host = Arc::new(Recorder::default());
    let other_port = WasmGrants {
        http: vec![format!("127.0.0.1:{}", addr.port().wrapping_add(1))],
        ..Default::default()
    };
    assert_refused(&run("net_connect", config.clone(), other_port, limits(), &host).await);
    assert!(
        listener.accept().is_err(),
        "the listener must not have seen a connection"
    );
    assert!(
        host.audits()
            .iter()
            .any(|(c, o, _)| c == "net.http" && *o == addr.to_string()),
        "{:?}",
        host.audits()
    );

    let host = Arc::new(Recorder::default());
    let granted = WasmGrants {
        http: vec![addr.to_string()],
        ..Default::default()
    };
    let ok = run("net_connect", config, granted, limits(), &host)
        .await
        .expect("granted host is reachable");
    assert!(ok.starts_with("CONNECTED"));
    let (mut conn, _) = listener
        .accept()
        .expect("control: the granted connection arrived");
    conn.set_nonblocking(false).unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"GET ");
    let _ = conn.write_all(b"");
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_checked_per_name() {
    let mk = || {
        Arc::new(Recorder {
            secrets: HashMap::from([
                ("ALLOWED".into(), "v1".into()),
                ("DB_PASSWORD".into(), "hunter2".into()),
            ]),
            ..Default::default()
        })
    };
    let host = mk();
    let err = run(
        "secret_steal",
        serde_json::json!({ "name": "DB_PASSWORD" }),
        WasmGrants::default(),
        limits(),
        &host,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, WasmError::Link(_)) && err.to_string().contains("kiln:host/secrets@0.1.0"),
        "{err}"
    );

    let host = mk();
    let grants = WasmGrants {
        secrets: vec!["ALLOWED".into()],
        ..Default::default()
    };
    let msg = assert_refused(
        &run(
            "secret_steal",
            serde_json::json!({ "name": "DB_PASSWORD" }),
            grants,
            limits(),
            &host,
        )
        .await,
    );
    assert!(
        msg.contains("secret `DB_PASSWORD` is not granted")
            && msg.contains("secrets: [\"DB_PASSWORD\"]"),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"));
    assert!(
        host.secret_calls.lock().unwrap().is_empty(),
        "the broker was never asked for an ungranted secret"
    );
    assert!(
        host.audits()
            .contains(&("secret".into(), "DB_PASSWORD".into(), "denied".into()))
    );

    let host = mk();
    let grants = WasmGrants {
        secrets: vec!["ALLOWED".into()],
        ..Default::default()
    };
    let ok = run(
        "secret_steal",
        serde_json::json!({ "name": "ALLOWED" }),
        grants,
        limits(),
        &host,
    )
    .await
    .unwrap();
    assert_eq!(
        ok, "STOLE ALLOWED (2 bytes)",
        "control: a granted secret is readable"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_is_stopped_at_the_deadline_without_blocking_tokio() {
    let host = Arc::new(Recorder::default());
    let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let t = ticks.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let started = Instant::now();
    let lim = WasmLimits {
        timeout: Duration::from_millis(800),
        ..WasmLimits::default()
    };
    let err = run(
        "spin",
        serde_json::json!({}),
        WasmGrants::default(),
        lim,
        &host,
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    ticker.abort();
    assert!(matches!(err, WasmError::Deadline { .. }), "{err:?}");
    assert!(
        err.to_string().contains("deadline exceeded after 0.8s"),
        "{err}"
    );
    assert!(took < Duration::from_secs(3), "stopped after {took:?}");
    assert!(
        ticks.load(std::sync::atomic::Ordering::Relaxed) >= 5,
        "tokio was starved while the guest spun"
    );
    assert!(host.audited("wasm.deadline"));
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_hog_is_stopped_at_the_limit() {
    let host = Arc::new(Recorder::default());
    let lim = WasmLimits {
        memory_bytes: 64 << 20,
        ..limits()
    };
    let err = run(
        "mem_hog",
        serde_json::json!({}),
        WasmGrants::default(),
        lim,
        &host,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, WasmError::MemoryLimit { mib: 64 }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "provisioner stopped: memory limit of 64 MiB exceeded"
    );
    assert!(host.audited("wasm.memory"));
}

#[tokio::test(flavor = "multi_thread")]
async fn log_flood_is_truncated_and_reported() {
    let host = Arc::new(Recorder::default());
    let lim = WasmLimits {
        max_log_bytes: 64 << 10,
        ..limits()
    };
    let out = run(
        "log_flood",
        serde_json::json!({ "lines": 3000 }),
        WasmGrants::default(),
        lim,
        &host,
    )
    .await
    .unwrap();
    assert_eq!(
        out, "flooded 3000 lines",
        "the guest keeps running; only its output is dropped"
    );
    let logs = host.logs.lock().unwrap().clone();
    let total: usize = logs.iter().map(|(_, m)| m.len()).sum();
    assert!(total <= (64 << 10) + 200, "logged {total} bytes");
    assert!(
        logs.iter()
            .any(|(l, m)| *l == LogLevel::Warn && m.contains("further output is dropped"))
    );
    assert!(
        host.audits()
            .iter()
            .filter(|(c, _, _)| c == "wasm.log")
            .count()
            == 1,
        "{:?}",
        host.audits()
    );
}

#[test]
fn inspect_reports_imports_and_needed_grants() {
    let hello = inspect(&guest("hello_provisioner")).unwrap();
    assert!(hello.is_provisioner());
    assert!(hello.imports.iter().any(|i| i == "kiln:host/machine@0.1.0"));
    assert_eq!(hello.allow_line(), "#{ machine: true }");
    let net = inspect(&guest("net_connect")).unwrap();
    assert!(net.network && !net.machine);
    let sec = inspect(&guest("secret_steal")).unwrap();
    assert!(sec.secrets);
    let shown = hello.to_string();
    assert!(
        shown.contains("needs:    allow: #{ machine: true }"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compiled_components_are_cached_on_disk_and_tampering_is_ignored() {
    let cache = tempfile::tempdir().unwrap();
    let wasm = guest("hello_provisioner");
    let e1 = WasmEngine::new(Some(cache.path().to_path_buf())).unwrap();
    e1.load(&wasm).unwrap();
    let files: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");

    // A cache hit reads the file; a miss would compile again and rename a new file
    // into place (a new inode).
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(&files[0]).unwrap().ino();
    let e2 = WasmEngine::new(Some(cache.path().to_path_buf())).unwrap();
    e2.load(&wasm).unwrap();
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().ino(),
        inode,
        "the second engine recompiled"
    );

    let mut bytes = std::fs::read(&files[0]).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();
    let e3 = WasmEngine::new(Some(cache.path().to_path_buf())).unwrap();
    let p = e3.load(&wasm).unwrap();
    let host = Arc::new(Recorder::default());
    let out = p
        .run(
            r#"{"command":"echo ok"}"#,
            WasmGrants {
                machine: true,
                ..Default::default()
            },
            limits(),
            host,
        )
        .await
        .unwrap();
    assert_eq!(out, "hello world: ok");
}
