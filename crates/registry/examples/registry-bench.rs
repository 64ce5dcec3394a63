//! The registry benchmark's driver (`bench/registry/run.sh` runs it).
//!
//! ```text
//! registry-bench generate --registry LOC --versions N [--tasks T]
//!     records N versions into bucket `bench` (one build, two artifacts each) and promotes
//!     one of the oldest to `prod`; prints records/s
//! registry-bench http --registry LOC [--requests N]
//!     serves LOC on a free 127.0.0.1 port and measures, sequentially over one keep-alive
//!     connection: channel lookup (/api/v1/buckets/bench/channels/prod), the Terraform state
//!     (/terraform/bench/prod), `list` (/api/v1/buckets/bench/versions?limit=50) and a deep
//!     page (?before=<middle>); plus the same channel lookup through the Store API directly
//!     (the baseline: what HTTP adds). Prints one JSON line per measurement.
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use kiln_registry::server::Server;
use kiln_registry::{
    Artifact, BuildRecord, BuildStatus, Fingerprint, Platform, Provenance, RecordBuild, Store,
    VersionRef,
};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn fingerprint(i: usize) -> String {
    format!("BENCH{i:08}")
}

fn input(i: usize) -> Result<RecordBuild, String> {
    let fp = fingerprint(i);
    Ok(RecordBuild {
        bucket: "bench".into(),
        description: None,
        fingerprint: Fingerprint::parse(&fp).map_err(|e| e.to_string())?,
        expected_builds: vec![],
        build: BuildRecord {
            name: "web".into(),
            labels: [("os".to_string(), "debian-12".to_string())].into(),
            status: BuildStatus::Succeeded,
            error: None,
            started_at: None,
            finished_at: None,
            artifacts: vec![
                Artifact::new(Platform::Aws, "us-east-1", &format!("ami-{fp}")),
                Artifact::new(Platform::Qemu, "local", &format!("/images/{fp}.qcow2")),
            ],
        },
        provenance: Provenance::new("build.rhai", &"ab".repeat(32), env!("CARGO_PKG_VERSION")),
    })
}

async fn generate(store: &Store, n: usize, tasks: usize) -> Result<(), String> {
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut i = t;
            while i < n {
                store.record(input(i)?).await.map_err(|e| e.to_string())?;
                i += tasks;
            }
            Ok::<(), String>(())
        }));
    }
    for h in handles {
        h.await.map_err(|e| e.to_string())??;
    }
    let secs = t0.elapsed().as_secs_f64();
    store
        .promote(
            "bench",
            &VersionRef::Fingerprint(fingerprint(n / 10)),
            "prod",
            "bench",
        )
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "{{\"measure\":\"generate\",\"backend\":\"{}\",\"versions\":{n},\"seconds\":{secs:.2},\"per_second\":{:.0}}}",
        store.backend_name(),
        n as f64 / secs
    );
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // A percentile index: in 0..len by construction.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn report(backend: &str, name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{{\"measure\":\"{name}\",\"backend\":\"{backend}\",\"requests\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0),
    );
}

async fn time_get(client: &reqwest::Client, url: &str, n: usize) -> Result<Vec<Duration>, String> {
    // Warm up the connection and the caches first.
    for _ in 0..20 {
        client
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .bytes()
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client.get(url).send().await.map_err(|e| e.to_string())?;
        let status = r.status();
        r.bytes().await.map_err(|e| e.to_string())?;
        samples.push(t.elapsed());
        if !status.is_success() {
            return Err(format!("GET {url}: {status}"));
        }
    }
    Ok(samples)
}

async fn http(store: Store, n: usize) -> Result<(), String> {
    let backend = store.backend_name();
    let page = store
        .versions("bench", 1, None)
        .await
        .map_err(|e| e.to_string())?;
    let total = usize::try_from(page.version_count.max(1)).unwrap_or(1);
    let server = Server::bind(
        store.clone(),
        "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
    )
    .await
    .map_err(|e| e.to_string())?;
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .build()
        .map_err(|e| e.to_string())?;

    // Baseline: the same lookup without HTTP (warmed up like the HTTP loops).
    for _ in 0..20 {
        store
            .channel("bench", "prod")
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut direct = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        store
            .channel("bench", "prod")
            .await
            .map_err(|e| e.to_string())?;
        direct.push(t.elapsed());
    }
    report(backend, "channel_lookup_store", direct);
    report(
        backend,
        "channel_lookup_http",
        time_get(
            &client,
            &format!("{base}/api/v1/buckets/bench/channels/prod"),
            n,
        )
        .await?,
    );
    report(
        backend,
        "terraform_state_http",
        time_get(&client, &format!("{base}/terraform/bench/prod"), n).await?,
    );
    report(
        backend,
        "list_first_page_http",
        time_get(
            &client,
            &format!("{base}/api/v1/buckets/bench/versions?limit=50"),
            n,
        )
        .await?,
    );
    report(
        backend,
        "list_deep_page_http",
        time_get(
            &client,
            &format!(
                "{base}/api/v1/buckets/bench/versions?limit=50&before={}",
                fingerprint(total / 2)
            ),
            n,
        )
        .await?,
    );
    let _ = stop.send(());
    serving
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(location)) = (args.get(1).cloned(), arg(&args, "--registry")) else {
        eprintln!(
            "usage: registry-bench generate|http --registry LOCATION [--versions N] [--tasks T] [--requests N]"
        );
        return ExitCode::from(2);
    };
    let store = match Store::open(&location).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match mode.as_str() {
        "generate" => {
            let n = arg(&args, "--versions")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100_000);
            let tasks = arg(&args, "--tasks")
                .and_then(|v| v.parse().ok())
                .unwrap_or(4);
            generate(&store, n, tasks).await
        }
        "http" => {
            let n = arg(&args, "--requests")
                .and_then(|v| v.parse().ok())
                .unwrap_or(2000);
            http(store, n).await
        }
        other => Err(format!("unknown mode {other:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
