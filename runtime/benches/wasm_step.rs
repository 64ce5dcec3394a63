//! WASM provisioner step cost: cold (compile into an empty cache), warm (compiled
//! component from the disk cache in a fresh engine; and again in a long-lived
//! engine), and the overhead of one `machine.exec` round trip through the host.
//!
//! `cargo bench -p kiln --bench wasm_step` (builds the guests with tools/build-guests.sh).
//! The GuestHost answers immediately, so the exec number is pure host-call overhead.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::wasm::{ExecOutput, GuestError, GuestHost, LogLevel, WasmEngine, WasmGrants, WasmLimits};

struct Immediate;

#[async_trait::async_trait]
impl GuestHost for Immediate {
    async fn exec(
        &self,
        _command: String,
        _env: Vec<(String, String)>,
    ) -> Result<ExecOutput, GuestError> {
        Ok(ExecOutput {
            exit_code: 0,
            stdout: b"ok\n".to_vec(),
            stderr: Vec::new(),
        })
    }
    async fn upload(
        &self,
        _s: cap_std::fs::File,
        _g: String,
        _m: Option<u32>,
    ) -> Result<u64, GuestError> {
        Ok(0)
    }
    async fn write_file(&self, _g: String, _c: Vec<u8>, _m: Option<u32>) -> Result<(), GuestError> {
        Ok(())
    }
    async fn read_file(&self, _g: String) -> Result<Vec<u8>, GuestError> {
        Ok(Vec::new())
    }
    async fn facts(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    fn secret(&self, name: &str) -> Result<String, GuestError> {
        Err(GuestError::NotFound(name.into()))
    }
    fn allow_http(&self, _host: &str, _port: u16) -> Result<(), GuestError> {
        Ok(())
    }
    fn log(&self, _level: LogLevel, _message: &str) {}
    fn audit(&self, _capability: &str, _object: &str, _outcome: &str) {}
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

async fn step(engine: &WasmEngine, wasm: &[u8], config: &str) {
    let p = engine.load(wasm).expect("load");
    let grants = WasmGrants {
        machine: true,
        ..Default::default()
    };
    p.run(config, grants, WasmLimits::default(), Arc::new(Immediate))
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

    rt.block_on(async {
        let mut cold = Vec::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let engine = WasmEngine::new(Some(dir.path().to_path_buf())).expect("engine");
            let t = Instant::now();
            step(&engine, &wasm, one).await;
            cold.push(t.elapsed());
        }
        let cold = stats("cold: compile + instantiate + run", cold);

        let cache = tempfile::tempdir().expect("tempdir");
        step(
            &WasmEngine::new(Some(cache.path().to_path_buf())).expect("engine"),
            &wasm,
            one,
        )
        .await;
        let mut warm_disk = Vec::new();
        for _ in 0..30 {
            let engine = WasmEngine::new(Some(cache.path().to_path_buf())).expect("engine");
            let t = Instant::now();
            step(&engine, &wasm, one).await;
            warm_disk.push(t.elapsed());
        }
        let warm = stats("warm: disk cache, fresh engine", warm_disk);

        let engine = WasmEngine::new(Some(cache.path().to_path_buf())).expect("engine");
        step(&engine, &wasm, one).await;
        let mut warm_mem = Vec::new();
        for _ in 0..300 {
            let t = Instant::now();
            step(&engine, &wasm, one).await;
            warm_mem.push(t.elapsed());
        }
        stats("warm: same engine (load + fresh store + run)", warm_mem);

        let calls = 2000u32;
        let many = format!(r#"{{"command":"true","repeat":{calls}}}"#);
        let mut base = Vec::new();
        let mut loaded = Vec::new();
        for _ in 0..15 {
            let t = Instant::now();
            step(&engine, &wasm, one).await;
            base.push(t.elapsed());
            let t = Instant::now();
            step(&engine, &wasm, &many).await;
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
