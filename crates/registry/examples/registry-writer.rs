//! Records builds into a registry from a separate process: the concurrency tests spawn it
//! several times at once, and `bench/registry/run.sh` uses it for writer throughput.
//!
//! ```text
//! registry-writer --registry LOCATION --bucket B [--writer ID] [--count N]
//!                 [--fingerprint FP --build NAME --expected a,b] [--status succeeded|failed]
//! ```
//! Without `--fingerprint`, each record is its own version `w<ID>-<i>` (one build, so it is
//! complete at once). With it, one build NAME is recorded into version FP that expects the
//! builds listed in `--expected`. Prints one JSON line: `{"recorded":N,"seconds":S,...}`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use kiln_registry::provenance::Variable;
use kiln_registry::{
    Artifact, BuildRecord, BuildStatus, Fingerprint, Platform, Provenance, RecordBuild, Store,
};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn record_input(
    bucket: &str,
    fp: &str,
    build: &str,
    expected: Vec<String>,
    status: BuildStatus,
    i: usize,
) -> Result<RecordBuild, String> {
    let mut provenance = Provenance::new("build.rhai", &"ab".repeat(32), env!("CARGO_PKG_VERSION"));
    provenance.variables = vec![
        Variable::plain("n", &i.to_string()),
        Variable::secret("token"),
    ];
    let mut labels = BTreeMap::new();
    labels.insert("writer".to_string(), build.to_string());
    Ok(RecordBuild {
        bucket: bucket.to_string(),
        description: None,
        fingerprint: Fingerprint::parse(fp).map_err(|e| e.to_string())?,
        expected_builds: expected,
        build: BuildRecord {
            name: build.to_string(),
            labels,
            status,
            error: None,
            started_at: None,
            finished_at: None,
            artifacts: vec![Artifact::new(
                Platform::Aws,
                "us-east-1",
                &format!("ami-{fp}-{build}"),
            )],
        },
        provenance,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(location), Some(bucket)) = (arg(&args, "--registry"), arg(&args, "--bucket")) else {
        eprintln!(
            "usage: registry-writer --registry LOCATION --bucket B [--writer ID] [--count N] [--fingerprint FP --build NAME --expected a,b]"
        );
        return ExitCode::from(2);
    };
    let writer = arg(&args, "--writer").unwrap_or_else(|| "0".into());
    let count: usize = arg(&args, "--count")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    let status = match arg(&args, "--status").as_deref() {
        Some("failed") => BuildStatus::Failed,
        _ => BuildStatus::Succeeded,
    };
    let store = match Store::open(&location).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let t0 = Instant::now();
    let mut complete = 0usize;
    for i in 0..count {
        let input = match arg(&args, "--fingerprint") {
            Some(fp) => {
                let build = arg(&args, "--build").unwrap_or_else(|| format!("b{writer}"));
                let expected = arg(&args, "--expected")
                    .map(|e| e.split(',').map(str::to_string).collect())
                    .unwrap_or_default();
                record_input(&bucket, &fp, &build, expected, status, i)
            }
            None => record_input(
                &bucket,
                &format!("w{writer}-{i}"),
                "main",
                vec![],
                status,
                i,
            ),
        };
        let input = match input {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        match store.record(input).await {
            Ok(r) => complete += usize::from(r.version_complete),
            Err(e) => {
                eprintln!("error: record {i} of writer {writer}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{{\"writer\":\"{writer}\",\"recorded\":{count},\"complete\":{complete},\"seconds\":{secs:.3}}}"
    );
    ExitCode::SUCCESS
}
