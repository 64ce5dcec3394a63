//! WASM provisioner step cost: cold (compile into an empty cache), warm (compiled
//! component from the disk cache in a fresh engine; and again in a long-lived
//! engine), and the overhead of one `machine.exec` round trip through the host.
//!
//! `cargo bench -p kiln --bench wasm_step` (builds the guests with tools/build-guests.sh).
//! The machine answers immediately, so the exec number is kiln's own per-call cost:
//! the WASM boundary, the broker check and the audit line (to a real file).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::caps::machine::MachineCap;
use kiln::caps::{AuditLog, Broker, Grants, Holder, Project, Scope};
use kiln::host::machine::{
    ExecOutput, Facts, Machine, MachineError, OnOutput, Progress, UploadPath, Uploaded,
};
use kiln::ui::Redactor;
use kiln::wasm::{StepEnv, WasmEngine, WasmLimits};

/// A machine that answers at once: what is measured is kiln's side of each call
/// (the broker check, the audit line, the WASM boundary).
struct Immediate;

#[async_trait::async_trait]
impl Machine for Immediate {
    fn target(&self) -> String {
        "immediate".into()
    }
    async fn exec(
        &self,
        _command: &str,
        _env: &[(String, String)],
        _on_output: OnOutput<'_>,
    ) -> Result<ExecOutput, MachineError> {
        Ok(ExecOutput {
            exit_code: 0,
            stdout: b"ok\n".to_vec(),
            ..Default::default()
        })
    }
    async fn upload(
        &self,
        _src: &cap_std::fs::File,
        _dest: &str,
        _mode: Option<u32>,
        _progress: Progress<'_>,
    ) -> Result<Uploaded, MachineError> {
        Ok(Uploaded {
            bytes: 0,
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
        Ok(0)
    }
    async fn write_file(&self, _d: &str, _c: &[u8], _m: Option<u32>) -> Result<(), MachineError> {
        Ok(())
    }
    async fn read_file(&self, _p: &str, _max: u64) -> Result<Vec<u8>, MachineError> {
        Ok(Vec::new())
    }
    async fn download(
        &self,
        _r: &str,
        _l: &mut cap_std::fs::File,
        _p: Progress<'_>,
    ) -> Result<u64, MachineError> {
        Ok(0)
    }
    async fn facts(&self) -> Result<Facts, MachineError> {
        Ok(Facts::new())
    }
    async fn reconnect(&self) -> Result<(), MachineError> {
        Ok(())
    }
    async fn close(&self) {}
}

/// A step holding `machine`, auditing to a real file as `kiln build` does.
fn env(scope: &Scope, project: &Project) -> StepEnv {
    StepEnv {
        machine: Some(MachineCap::new(
            Arc::new(Immediate),
            scope.clone(),
            Arc::new(|_, _| {}),
        )),
        scope: scope.clone(),
        project: project.clone(),
        redactor: Redactor::default(),
        log: Arc::new(|_, _| {}),
        secret_source: Arc::new(|_| None),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf()
}

fn hello_wasm() -> Vec<u8> {
    let target = root().join("target/guests");
    let status = std::process::Command::new("bash")
        .arg(root().join("tools/build-guests.sh"))
        .env("KILN_GUEST_TARGET_DIR", &target)
        .status()
        .expect("run tools/build-guests.sh");
    assert!(status.success(), "tools/build-guests.sh failed");
    std::fs::read(target.join("wasm32-wasip2/release/hello_provisioner.wasm"))
        .expect("hello_provisioner.wasm")
}

async fn step(engine: &WasmEngine, wasm: &[u8], config: &str, e: &StepEnv) {
    let p = engine.load(wasm).expect("load");
    p.run(config, e.clone(), WasmLimits::default())
        .await
        .expect("run");
}

fn stats(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let median = samples[samples.len() / 2];
    println!(
        "{name:<44} n={:<4} min {:>9.3} ms  median {:>9.3} ms  max {:>9.3} ms",
        samples.len(),
        samples[0].as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    );
    median
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let wasm = hello_wasm();
    let one = r#"{"command":"true"}"#;
    println!("hello_provisioner.wasm: {} bytes", wasm.len());

    let dir = tempfile::tempdir().expect("tempdir");
    let audit =
        AuditLog::open(&dir.path().join("audit.jsonl"), Redactor::default()).expect("audit");
    let broker = Broker::new("bench", audit);
    let mut grants = Grants::default();
    grants
        .apply_allow(
            &rhai::Engine::new_raw()
                .eval::<rhai::Map>("#{ machine: true }")
                .expect("map"),
        )
        .expect("grants");
    let scope = broker.scope("bench", "step 1 wasm", Holder::Step, grants);
    let project = Project::open(dir.path()).expect("project");
    let e = env(&scope, &project);
    rt.block_on(async {
        let mut cold = Vec::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let engine = WasmEngine::new(Some(dir.path().to_path_buf())).expect("engine");
            let t = Instant::now();
            step(&engine, &wasm, one, &e).await;
            cold.push(t.elapsed());
        }
        let cold = stats("cold: compile + instantiate + run", cold);

        let cache = tempfile::tempdir().expect("tempdir");
        step(
            &WasmEngine::new(Some(cache.path().to_path_buf())).expect("engine"),
            &wasm,
            one,
            &e,
        )
        .await;
        let mut warm_disk = Vec::new();
        for _ in 0..30 {
            let engine = WasmEngine::new(Some(cache.path().to_path_buf())).expect("engine");
            let t = Instant::now();
            step(&engine, &wasm, one, &e).await;
            warm_disk.push(t.elapsed());
        }
        let warm = stats("warm: disk cache, fresh engine", warm_disk);

        let engine = WasmEngine::new(Some(cache.path().to_path_buf())).expect("engine");
        step(&engine, &wasm, one, &e).await;
        let mut warm_mem = Vec::new();
        for _ in 0..300 {
            let t = Instant::now();
            step(&engine, &wasm, one, &e).await;
            warm_mem.push(t.elapsed());
        }
        stats("warm: same engine (load + fresh store + run)", warm_mem);

        let calls = 2000u32;
        let many = format!(r#"{{"command":"true","repeat":{calls}}}"#);
        let mut base = Vec::new();
        let mut loaded = Vec::new();
        for _ in 0..15 {
            let t = Instant::now();
            step(&engine, &wasm, one, &e).await;
            base.push(t.elapsed());
            let t = Instant::now();
            step(&engine, &wasm, &many, &e).await;
            loaded.push(t.elapsed());
        }
        let b = stats("exec: step with 1 call", base);
        let l = stats(&format!("exec: step with {calls} calls"), loaded);
        let per_call = l.saturating_sub(b) / (calls - 1);
        println!(
            "{:<44} {:>9.2} µs",
            "machine.exec round trip (host overhead)",
            per_call.as_secs_f64() * 1e6
        );

        println!();
        println!(
            "goals: warm <= 5 ms ({}), cold <= 200 ms ({})",
            if warm <= Duration::from_millis(5) {
                "met"
            } else {
                "MISSED"
            },
            if cold <= Duration::from_millis(200) {
                "met"
            } else {
                "MISSED"
            }
        );
    });
}
