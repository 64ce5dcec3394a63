//! WASM provisioners: real components (built by tools/build-guests.sh) run in the
//! wasmtime host over a fake machine, behind a real broker scope whose audit log the
//! tests read. The hostile guests each try one way out of the sandbox; every attempt
//! must fail, leave the host untouched, and be audited.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kiln::caps::machine::MachineCap;
use kiln::caps::{AuditLog, Broker, Grants, Holder, Project, Scope};
use kiln::host::machine::{
    ExecOutput, Facts, Machine, MachineError, OnOutput, Progress, UploadPath, Uploaded,
};
use kiln::ui::Redactor;
use kiln::wasm::{LogLevel, StepEnv, WasmEngine, WasmError, WasmLimits, inspect};

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

pub(crate) fn guest(name: &str) -> Vec<u8> {
    let path = guest_dir().join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("guest {} missing after build: {e}", path.display()))
}

pub(crate) fn engine() -> &'static WasmEngine {
    static E: OnceLock<WasmEngine> = OnceLock::new();
    E.get_or_init(|| {
        WasmEngine::new(Some(
            root().join("target").join("guests").join("kiln-cache"),
        ))
        .expect("engine")
    })
}

/// A machine that records what it was asked and keeps files under a temp dir.
#[derive(Default)]
pub(crate) struct FakeMachine {
    root: Option<PathBuf>,
    pub(crate) execs: Mutex<Vec<String>>,
    pub(crate) writes: Mutex<Vec<(String, Option<u32>)>>,
}

impl FakeMachine {
    fn put(&self, guest_path: &str, contents: &[u8]) -> Result<(), MachineError> {
        let root = self
            .root
            .as_ref()
            .ok_or_else(|| MachineError::Failed("this test has no machine root".into()))?;
        let path = root.join(guest_path.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| MachineError::Failed(e.to_string()))?;
        }
        std::fs::write(path, contents).map_err(|e| MachineError::Failed(e.to_string()))
    }
}

#[async_trait::async_trait]
impl Machine for FakeMachine {
    fn target(&self) -> String {
        "fake".into()
    }
    async fn exec(
        &self,
        command: &str,
        _env: &[(String, String)],
        _on_output: OnOutput<'_>,
    ) -> Result<ExecOutput, MachineError> {
        self.execs.lock().unwrap().push(command.to_string());
        let stdout = command
            .strip_prefix("echo ")
            .map(|s| format!("{s}\n"))
            .unwrap_or_default();
        Ok(ExecOutput {
            exit_code: 0,
            stdout: stdout.into_bytes(),
            ..Default::default()
        })
    }
    async fn upload(
        &self,
        src: &cap_std::fs::File,
        dest: &str,
        mode: Option<u32>,
        _progress: Progress<'_>,
    ) -> Result<Uploaded, MachineError> {
        let mut buf = Vec::new();
        src.try_clone()
            .map_err(|e| MachineError::Failed(e.to_string()))?
            .read_to_end(&mut buf)
            .map_err(|e| MachineError::Failed(e.to_string()))?;
        self.put(dest, &buf)?;
        self.writes.lock().unwrap().push((dest.to_string(), mode));
        Ok(Uploaded {
            bytes: buf.len() as u64,
            via: UploadPath::Normal,
            retried: false,
        })
    }
    async fn upload_tree(
        &self,
        _src: &cap_std::fs::Dir,
        _dest: &str,
        _progress: Progress<'_>,
    ) -> Result<u64, MachineError> {
        Err(MachineError::Failed("not used by these tests".into()))
    }
    async fn write_file(
        &self,
        dest: &str,
        contents: &[u8],
        mode: Option<u32>,
    ) -> Result<(), MachineError> {
        self.put(dest, contents)?;
        self.writes.lock().unwrap().push((dest.to_string(), mode));
        Ok(())
    }
    async fn read_file(&self, path: &str, _max: u64) -> Result<Vec<u8>, MachineError> {
        let root = self.root.clone().unwrap_or_default();
        std::fs::read(root.join(path.trim_start_matches('/')))
            .map_err(|e| MachineError::Failed(e.to_string()))
    }
    async fn download(
        &self,
        _remote: &str,
        _local: &mut cap_std::fs::File,
        _progress: Progress<'_>,
    ) -> Result<u64, MachineError> {
        Err(MachineError::Failed("not used by these tests".into()))
    }
    async fn facts(&self) -> Result<Facts, MachineError> {
        Ok(Facts::from([("os_id".to_string(), "debian".to_string())]))
    }
    async fn reconnect(&self) -> Result<(), MachineError> {
        Ok(())
    }
    async fn close(&self) {}
}

/// One step's world: a real broker and audit log, a project dir, a fake machine.
pub(crate) struct Host {
    _dir: tempfile::TempDir,
    audit_path: PathBuf,
    broker: Arc<Broker>,
    project: Project,
    pub(crate) machine: Arc<FakeMachine>,
    pub(crate) logs: Arc<Mutex<Vec<(LogLevel, String)>>>,
    pub(crate) secrets: HashMap<String, String>,
    secret_calls: Arc<Mutex<Vec<String>>>,
}

impl Host {
    pub(crate) fn new() -> Self {
        Self::with(None, None)
    }

    pub(crate) fn with(project: Option<&Path>, machine_root: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let audit_path = dir.path().join("audit.jsonl");
        let project_dir = project.map(Path::to_path_buf).unwrap_or_else(|| {
            let p = dir.path().join("project");
            std::fs::create_dir_all(&p).unwrap();
            p
        });
        let broker = Broker::new(
            "run-test",
            AuditLog::open(&audit_path, Redactor::default()).unwrap(),
        );
        Host {
            audit_path,
            broker,
            project: Project::open(&project_dir).unwrap(),
            machine: Arc::new(FakeMachine {
                root: machine_root.map(Path::to_path_buf),
                ..Default::default()
            }),
            logs: Arc::default(),
            secrets: HashMap::new(),
            secret_calls: Arc::default(),
            _dir: dir,
        }
    }

    /// The step's grants, from an `allow` map as a script writes it.
    fn scope(&self, allow: &str) -> Scope {
        let mut g = Grants::default();
        let map: rhai::Map = rhai::Engine::new_raw().eval(allow).expect("allow map");
        g.apply_allow(&map).expect("grants");
        self.broker
            .scope("web.test", "step 1 wasm", Holder::Step, g)
    }

    pub(crate) fn env(&self, allow: &str) -> StepEnv {
        let scope = self.scope(allow);
        let logs = self.logs.clone();
        let secrets = self.secrets.clone();
        let calls = self.secret_calls.clone();
        StepEnv {
            machine: Some(MachineCap::new(
                self.machine.clone(),
                scope.clone(),
                Arc::new(|_, _| {}),
            )),
            scope,
            project: self.project.clone(),
            redactor: Redactor::default(),
            log: Arc::new(move |l, m| logs.lock().unwrap().push((l, m.to_string()))),
            secret_source: Arc::new(move |name| {
                calls.lock().unwrap().push(name.to_string());
                secrets.get(name).cloned()
            }),
        }
    }

    pub(crate) async fn run(
        &self,
        name: &str,
        config: serde_json::Value,
        allow: &str,
        limits: WasmLimits,
    ) -> Result<String, WasmError> {
        let p = engine().load(&guest(name)).expect("load");
        p.run(&config.to_string(), self.env(allow), limits).await
    }

    /// (capability, object, outcome) of every audit line so far.
    pub(crate) fn audits(&self) -> Vec<(String, String, String)> {
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["capability"].as_str().unwrap_or("").to_string(),
                    v["object"].as_str().unwrap_or("").to_string(),
                    v["outcome"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    pub(crate) fn audited(&self, cap: &str) -> bool {
        self.audits().iter().any(|(c, _, _)| c == cap)
    }

    pub(crate) fn denied(&self, cap: &str) -> Vec<String> {
        self.audits()
            .into_iter()
            .filter(|(c, _, o)| c == cap && o.starts_with("denied"))
            .map(|(_, o, _)| o)
            .collect()
    }
}

pub(crate) fn limits() -> WasmLimits {
    WasmLimits {
        // Generous: only a guest that hangs should hit it on a loaded machine.
        timeout: Duration::from_secs(120),
        ..WasmLimits::default()
    }
}

/// `#{ read: ["<dir>"] }` for an absolute directory.
pub(crate) fn read_grant(dir: &Path) -> String {
    format!("#{{ read: [{:?}] }}", dir.display().to_string())
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

pub(crate) fn assert_refused(result: &Result<String, WasmError>) -> String {
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
    let host = Host::new();
    let out = host
        .run(
            "hello_provisioner",
            serde_json::json!({ "name": "tester", "command": "echo hi" }),
            "#{ machine: true }",
            limits(),
        )
        .await
        .expect("hello runs");
    assert_eq!(out, "hello tester: hi");
    assert_eq!(
        *host.machine.execs.lock().unwrap(),
        vec!["echo hi".to_string()]
    );
    assert!(
        host.logs
            .lock()
            .unwrap()
            .iter()
            .any(|(l, m)| *l == LogLevel::Info && m == "hello, tester")
    );
    // The exec went through the broker: one audit line, with its outcome.
    assert_eq!(
        host.audits(),
        vec![(
            "machine".into(),
            "exec echo hi".into(),
            "ok (exit 0)".into()
        )]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_config_fails_with_serde_message() {
    let host = Host::new();
    let err = host
        .run(
            "hello_provisioner",
            serde_json::json!({ "nmae": "typo" }),
            "#{ machine: true }",
            limits(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, WasmError::Guest(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("invalid provisioner config") && msg.contains("nmae"),
        "{msg}"
    );
    assert!(host.machine.execs.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn consul_writes_service_definition_and_uploads_files() {
    let machine = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(project.path().join("files/consul")).unwrap();
    std::fs::write(project.path().join("files/consul/extra.hcl"), "meta {}\n").unwrap();
    let host = Host::with(Some(project.path()), Some(machine.path()));
    let config = serde_json::json!({
        "service": "web", "port": 80, "tags": ["v1"],
        "check": { "http": "http://localhost:80/health", "interval": "10s", "timeout": "2s" },
        "files": [{ "from": "files/consul/extra.hcl", "to": "/etc/consul.d/extra.hcl" }],
    });
    let summary = host
        .run(
            "consul_provisioner",
            config,
            r#"#{ machine: true, metadata: true, read: ["files/consul"] }"#,
            limits(),
        )
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
    let writes = host.machine.writes.lock().unwrap().clone();
    assert!(
        writes.contains(&("/etc/consul.d/web.json".into(), Some(0o640))),
        "{writes:?}"
    );
    assert_eq!(
        *host.machine.execs.lock().unwrap(),
        vec!["mkdir -p '/etc/consul.d'".to_string()]
    );
    // The upload's source was opened through the read grant, and both are audited.
    let audits = host.audits();
    assert!(
        audits.contains(&(
            "read".into(),
            "files/consul/extra.hcl: open".into(),
            "ok".into()
        )),
        "{audits:?}"
    );
    assert!(
        audits.iter().any(|(c, o, r)| c == "machine"
            && o == "upload files/consul/extra.hcl => /etc/consul.d/extra.hcl"
            && r.starts_with("ok (")),
        "{audits:?}"
    );
    // The service is reported as build metadata for the registry record, and audited.
    assert!(
        audits.contains(&(
            "metadata".into(),
            "consul service web:80".into(),
            "ok".into()
        )),
        "{audits:?}"
    );
    let notes = host
        .broker
        .extension::<kiln::caps::registry::RegistryRun>()
        .take("web.test");
    assert_eq!(notes.consul_services.len(), 1);
    assert_eq!(notes.consul_services[0].name, "web");
    assert_eq!(notes.consul_services[0].port, Some(80));
    assert_eq!(notes.consul_services[0].tags, vec!["v1".to_string()]);
}

/// A step that turns `metadata` off cannot run a guest that reports metadata: the link
/// is refused before anything runs, naming the grant.
#[tokio::test(flavor = "multi_thread")]
async fn consul_without_the_metadata_grant_is_refused_at_link() {
    let machine = tempfile::tempdir().unwrap();
    let host = Host::with(None, Some(machine.path()));
    let err = host
        .run(
            "consul_provisioner",
            serde_json::json!({ "service": "web", "port": 80 }),
            "#{ machine: true, metadata: false }",
            limits(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, WasmError::Link(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("metadata"), "{msg}");
    assert!(host.machine.execs.lock().unwrap().is_empty());
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
        let host = Host::new();
        let err = host
            .run(
                "consul_provisioner",
                config,
                "#{ machine: true, metadata: true }",
                limits(),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "expected {expect:?} in {err}");
        assert!(
            host.machine.execs.lock().unwrap().is_empty()
                && host.machine.writes.lock().unwrap().is_empty()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consul_upload_outside_read_grant_is_denied() {
    let machine = tempfile::tempdir().unwrap();
    let sb = Sandbox::new();
    let host = Host::with(Some(sb.path()), Some(machine.path()));
    let config = serde_json::json!({
        "service": "web", "port": 80,
        "files": [{ "from": "granted/../outside.txt", "to": "/etc/consul.d/stolen" }],
    });
    let msg = assert_refused(
        &host
            .run(
                "consul_provisioner",
                config,
                r#"#{ machine: true, metadata: true, read: ["granted"] }"#,
                limits(),
            )
            .await,
    );
    assert!(msg.contains("denied") || msg.contains("outside"), "{msg}");
    assert!(!machine.path().join("etc/consul.d/stolen").exists());
    assert!(host.audited("read"), "{:?}", host.audits());
}

#[tokio::test(flavor = "multi_thread")]
async fn machine_import_without_grant_is_refused_at_link_time() {
    let host = Host::new();
    let err = host
        .run("machine_sneak", serde_json::json!({}), "#{}", limits())
        .await
        .unwrap_err();
    assert!(matches!(err, WasmError::Link(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "component imports kiln:host/machine@0.1.0, which needs the `machine` capability (run commands and move files on the machine being built); this step is not granted it: add allow: #{ machine: true }"
    );
    assert!(host.machine.execs.lock().unwrap().is_empty());
    assert!(host.audited("wasm.link"));
    // With the grant the same component links and runs: the refusal was the grant.
    let host = Host::new();
    host.run(
        "machine_sneak",
        serde_json::json!({}),
        "#{ machine: true }",
        limits(),
    )
    .await
    .expect("runs with the grant");
}

#[tokio::test(flavor = "multi_thread")]
async fn read_via_dotdot_is_refused() {
    let sb = Sandbox::new();
    let before = sb.snapshot();
    let granted = sb.path().join("granted");
    let host = Host::new();
    let ok = host
        .run(
            "read_dotdot",
            serde_json::json!({ "path": granted.join("inside.txt") }),
            &read_grant(&granted),
            limits(),
        )
        .await;
    assert_eq!(
        ok.expect("a granted file is readable"),
        "ESCAPED: fine",
        "control: reading inside the grant works"
    );

    let r = host
        .run(
            "read_dotdot",
            serde_json::json!({ "path": format!("{}/../outside.txt", granted.display()) }),
            &read_grant(&granted),
            limits(),
        )
        .await;
    assert_refused(&r);
    assert_eq!(sb.snapshot(), before);
    assert!(
        host.denied("read")
            .iter()
            .any(|o| o.contains("outside.txt")),
        "{:?}",
        host.audits()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn read_via_absolute_path_is_refused() {
    let sb = Sandbox::new();
    let before = sb.snapshot();
    let host = Host::new();
    let target = sb.path().join("outside.txt").display().to_string();
    let msg = assert_refused(
        &host
            .run(
                "read_absolute",
                serde_json::json!({ "path": target }),
                &read_grant(&sb.path().join("granted")),
                limits(),
            )
            .await,
    );
    assert!(msg.contains("refused"), "{msg}");
    assert_eq!(sb.snapshot(), before);
    assert!(host.denied("read").contains(&target), "{:?}", host.audits());
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
    let granted = sb.path().join("granted");
    for link in ["abs-link", "rel-link"] {
        let host = Host::new();
        let r = host
            .run(
                "read_symlink",
                serde_json::json!({ "path": granted.join(link) }),
                &read_grant(&granted),
                limits(),
            )
            .await;
        assert_refused(&r);
        assert!(
            host.denied("read").iter().any(|o| o.contains(link)),
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
    let ro = sb.path().join("granted");
    let out = sb.path().join("out");
    let allow = format!(
        "#{{ read: [{:?}], write: [{:?}] }}",
        ro.display().to_string(),
        out.display().to_string()
    );
    let host = Host::new();
    host.run(
        "write_outside",
        serde_json::json!({ "path": out.join("ok.txt") }),
        &allow,
        limits(),
    )
    .await
    .expect("control: writing inside the write grant works");
    assert!(sb.path().join("out/ok.txt").exists());
    let before = sb.snapshot();

    for path in [
        format!("{}/../escaped.txt", out.display()),
        ro.join("new.txt").display().to_string(),
        ro.join("inside.txt").display().to_string(),
        sb.path().join("escaped.txt").display().to_string(),
    ] {
        let host = Host::new();
        let r = host
            .run(
                "write_outside",
                serde_json::json!({ "path": path }),
                &allow,
                limits(),
            )
            .await;
        assert_refused(&r);
        assert_eq!(sb.snapshot(), before, "{path} changed the host");
        if path.starts_with(&*out.to_string_lossy()) || path.starts_with(&*ro.to_string_lossy()) {
            assert!(
                !host.denied("write").is_empty(),
                "{path}: {:?}",
                host.audits()
            );
        }
    }
    assert_eq!(
        std::fs::read_to_string(sb.path().join("granted/inside.txt")).unwrap(),
        "fine"
    );
}

/// The `net` grant as a script writes it (`host:port`) reaches that host and port
/// through the real broker, and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn network_needs_a_grant_and_only_reaches_granted_hosts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let config = serde_json::json!({ "addr": addr.to_string() });

    let host = Host::new();
    let err = host
        .run("net_connect", config.clone(), "#{}", limits())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, WasmError::Link(_))
            && msg.contains("wasi:sockets/")
            && msg.contains("allow: #{ net:"),
        "{msg}"
    );

    let host = Host::new();
    let other_port = format!(
        r#"#{{ net: ["127.0.0.1:{}"] }}"#,
        addr.port().wrapping_add(1)
    );
    assert_refused(
        &host
            .run("net_connect", config.clone(), &other_port, limits())
            .await,
    );
    assert!(
        listener.accept().is_err(),
        "the listener must not have seen a connection"
    );
    assert!(
        host.denied("net").contains(&addr.to_string()),
        "{:?}",
        host.audits()
    );

    let host = Host::new();
    let granted = format!(r#"#{{ net: ["{addr}"] }}"#);
    let ok = host
        .run("net_connect", config, &granted, limits())
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
    assert!(
        host.audits()
            .iter()
            .any(|(c, o, r)| c == "net" && o.starts_with(&addr.to_string()) && r == "ok"),
        "{:?}",
        host.audits()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_checked_per_name() {
    let mk = || {
        let mut h = Host::new();
        h.secrets = HashMap::from([
            ("ALLOWED".into(), "v1".into()),
            ("DB_PASSWORD".into(), "hunter2".into()),
        ]);
        h
    };
    let host = mk();
    let err = host
        .run(
            "secret_steal",
            serde_json::json!({ "name": "DB_PASSWORD" }),
            "#{}",
            limits(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, WasmError::Link(_)) && err.to_string().contains("kiln:host/secrets@0.1.0"),
        "{err}"
    );

    let host = mk();
    let msg = assert_refused(
        &host
            .run(
                "secret_steal",
                serde_json::json!({ "name": "DB_PASSWORD" }),
                r#"#{ secrets: ["ALLOWED"] }"#,
                limits(),
            )
            .await,
    );
    assert!(
        msg.contains(r#"secrets("DB_PASSWORD")"#) && msg.contains(r#"secrets: ["DB_PASSWORD"]"#),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"));
    assert!(
        host.secret_calls.lock().unwrap().is_empty(),
        "an ungranted secret was looked up"
    );
    assert!(
        host.audits()
            .contains(&("secrets".into(), "DB_PASSWORD".into(), "denied".into())),
        "{:?}",
        host.audits()
    );

    let host = mk();
    let ok = host
        .run(
            "secret_steal",
            serde_json::json!({ "name": "ALLOWED" }),
            r#"#{ secrets: ["ALLOWED"] }"#,
            limits(),
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
    let host = Host::new();
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
        // Long enough for the ticker to tick a few times even on a loaded machine.
        timeout: Duration::from_secs(3),
        ..WasmLimits::default()
    };
    let err = host
        .run("spin", serde_json::json!({}), "#{}", lim)
        .await
        .unwrap_err();
    let took = started.elapsed();
    ticker.abort();
    assert!(matches!(err, WasmError::Deadline { .. }), "{err:?}");
    assert!(err.to_string().contains("deadline exceeded after"), "{err}");
    // Generous: the point is that the deadline stops the guest, not how fast.
    assert!(took < Duration::from_secs(30), "stopped after {took:?}");
    assert!(
        ticks.load(std::sync::atomic::Ordering::Relaxed) >= 5,
        "tokio was starved while the guest spun"
    );
    assert!(host.audited("wasm.deadline"));
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_hog_is_stopped_at_the_limit() {
    let host = Host::new();
    let lim = WasmLimits {
        memory_bytes: 64 << 20,
        ..limits()
    };
    let err = host
        .run("mem_hog", serde_json::json!({}), "#{}", lim)
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
    let host = Host::new();
    let lim = WasmLimits {
        max_log_bytes: 64 << 10,
        ..limits()
    };
    let out = host
        .run(
            "log_flood",
            serde_json::json!({ "lines": 3000 }),
            "#{}",
            lim,
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
    let keys = |i: &kiln::wasm::ComponentInfo| i.needs.iter().map(|c| c.key).collect::<Vec<_>>();
    assert_eq!(keys(&net), vec!["net"]);
    let sec = inspect(&guest("secret_steal")).unwrap();
    assert_eq!(keys(&sec), vec!["secrets"]);
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
    // The compiled component, beside the cache's key.
    let files: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
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
    let host = Host::new();
    let out = p
        .run(
            r#"{"command":"echo ok"}"#,
            host.env("#{ machine: true }"),
            limits(),
        )
        .await
        .unwrap();
    assert_eq!(out, "hello world: ok");
}
