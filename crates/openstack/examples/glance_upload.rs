//! Publishes one file to Glance the way kiln's `openstack_image` post-processor will:
//! create → upload (streamed, hashed) → wait active → verify Glance's sha512 → (optionally)
//! delete. Auth comes from clouds.yaml / `OS_*` like the `openstack` CLI, or `--endpoint`
//! for a Keystone-less Glance. Used by bench/openstack/run.sh.
//!
//! usage: glance_upload FILE [--name N] [--disk-format F] [--endpoint URL] [--import]
//!                           [--delete] [--progress]
//! prints one line: `id=… bytes=… upload_s=… total_s=… mib_s=… sha512_ok=… peak_rss_kib=…`

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_openstack::{
    CloudConfig, CloudOptions, DiskFormat, Environment, Glance, NewImage, WaitOptions,
};

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("glance_upload: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let mut name = "kiln-upload".to_string();
    let mut disk_format = DiskFormat::Raw;
    let mut opts = CloudOptions::default();
    let (mut import, mut delete, mut progress) = (false, false, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--name" => name = args.next().ok_or("--name needs a value")?,
            "--disk-format" => {
                disk_format = args.next().ok_or("--disk-format needs a value")?.parse()?
            }
            "--endpoint" => {
                opts.endpoint = Some(args.next().ok_or("--endpoint needs a value")?);
                opts.auth_type.get_or_insert("none".into());
            }
            "--cloud" => opts.cloud = Some(args.next().ok_or("--cloud needs a value")?),
            "--import" => import = true,
            "--delete" => delete = true,
            "--progress" => progress = true,
            f if !f.starts_with("--") && file.is_none() => file = Some(std::path::PathBuf::from(f)),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let file = file.ok_or("usage: glance_upload FILE [--name N] [--disk-format F] [--endpoint URL] [--import] [--delete]")?;
    let t0 = Instant::now();
    let cfg = CloudConfig::resolve(&opts, &Environment::from_process())?;
    let glance = Glance::connect(&cfg).await?;
    let created = glance.create(&NewImage::new(&name, disk_format)).await?;
    let id = created.image.id.clone();
    // from here on the image exists: delete it on any failure (kiln's cleanup stack does this)
    let result = async {
        let cb: Option<kiln_openstack::ProgressFn> = progress.then(|| {
            let last = std::sync::Mutex::new(Instant::now());
            Arc::new(move |p: kiln_openstack::Progress| {
                if let Ok(mut l) = last.lock()
                    && (l.elapsed() >= Duration::from_secs(1) || p.sent == p.total)
                {
                    *l = Instant::now();
                    eprintln!("{} / {} MiB", p.sent >> 20, p.total >> 20);
                }
            }) as kiln_openstack::ProgressFn
        });
        let report = if import {
            let r = glance.stage(&id, &file, cb).await?;
            glance.import_staged(&id, &created.import_methods).await?;
            r
        } else {
            glance.upload(&id, &file, cb).await?
        };
        let img = glance
            .wait_active(
                &id,
                WaitOptions {
                    timeout: Duration::from_secs(1800),
                    interval: Duration::from_millis(250),
                },
            )
            .await?;
        let v = img.verify(&report)?;
        Ok::<_, kiln_openstack::Error>((report, v))
    }
    .await;
    let (report, verified) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = glance.delete(&id, true).await;
            return Err(e.into());
        }
    };
    let total = t0.elapsed();
    if delete {
        glance.delete(&id, false).await?;
    }
    let up = report.elapsed.as_secs_f64();
    println!(
        "id={id} bytes={} upload_s={up:.3} total_s={:.3} mib_s={:.1} {}_ok=true peak_rss_kib={}",
        report.bytes,
        total.as_secs_f64(),
        report.bytes as f64 / (1 << 20) as f64 / total.as_secs_f64(),
        verified.algo,
        peak_rss_kib()
    );
    Ok(())
}
