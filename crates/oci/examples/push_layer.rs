//! Streams a big layer through kiln-oci and measures it: build the layer from a tree
//! holding one file of random data, push it to a local docker-registry, pull it back;
//! then the same push with `skopeo copy` as the baseline. Peak RSS is this process's
//! VmHWM, reset between phases (`/proc/self/clear_refs`), so each phase is measured on
//! its own; skopeo's comes from `/usr/bin/time`.
//!
//!     cargo run --release -p kiln-oci --features testkit --example push_layer -- 500

use std::io::{Read, Write};
use std::process::Command;
use std::time::Instant;

use kiln_oci::registry::PushOptions;
use kiln_oci::testkit::RegistryPeer;
use kiln_oci::{
    ImageBuilder, LayerOptions, LayerSource, OciLayout, Platform, RegistryClient, RegistryOptions,
    Step, Uncompressed,
};

fn vm_hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn reset_hwm() {
    // "5" resets the peak RSS counter (Linux ≥ 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let size_mib: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(500);
    let peer = RegistryPeer::plain()?;
    std::fs::create_dir_all("/var/tmp/kiln-peers")?;
    let dir = tempfile::Builder::new()
        .prefix("kiln-bench-")
        .tempdir_in("/var/tmp/kiln-peers")?;
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree)?;
    {
        let mut rnd = std::fs::File::open("/dev/urandom")?;
        let mut out = std::io::BufWriter::new(std::fs::File::create(tree.join("random.bin"))?);
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..size_mib {
            rnd.read_exact(&mut buf)?;
            out.write_all(&buf)?;
        }
        out.flush()?;
    }
    println!(
        "registry {} | layer of {size_mib} MiB random data",
        peer.url
    );

    let layout = OciLayout::create(&dir.path().join("layout"))?;
    reset_hwm();
    let t = Instant::now();
    let opts = LayerOptions {
        source: LayerSource::Tree,
        source_date_epoch: Some(0),
    };
    let layer = layout.write_layer(&tree, &opts, &Uncompressed)?;
    let build_s = t.elapsed().as_secs_f64();
    let build_hwm = vm_hwm_kib();
    let mut b = ImageBuilder::scratch(&Platform::linux_amd64());
    b.add_layer_info(
        &layer,
        &Step {
            created_by: "bench".into(),
            created: Some(0),
            comment: None,
        },
    );
    let img = b.build();
    layout.put_image(&img, Some("bench"))?;
    let local = layout.read_image("bench", &Platform::linux_amd64())?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = RegistryClient::new(
        &peer.host,
        RegistryOptions {
            insecure: vec![peer.host.clone()],
            ..Default::default()
        },
    )?;
    reset_hwm();
    let t = Instant::now();
    let report = rt.block_on(client.push(
        &layout,
        &local,
        "bench/kiln",
        &["1".into()],
        &PushOptions::default(),
    ))?;
    let push_s = t.elapsed().as_secs_f64();
    let push_hwm = vm_hwm_kib();

    let back = OciLayout::create(&dir.path().join("back"))?;
    reset_hwm();
    let t = Instant::now();
    rt.block_on(client.pull("bench/kiln", "1", &Platform::linux_amd64(), &back, None))?;
    let pull_s = t.elapsed().as_secs_f64();
    let pull_hwm = vm_hwm_kib();

    let t = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:bench", layout.root().display()))
        .arg(format!("docker://{}/bench/skopeo:1", peer.host))
        .output()?;
    let skopeo_s = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let skopeo_kib: u64 = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);

    let n = mib(layer.size);
    println!(
        "{:<28} {:>9} {:>10} {:>13}",
        "phase", "seconds", "MiB/s", "peak RSS MiB"
    );
    println!(
        "{:<28} {:>9.2} {:>10.1} {:>13.1}",
        "kiln build layer (tar)",
        build_s,
        n / build_s,
        build_hwm as f64 / 1024.0
    );
    println!(
        "{:<28} {:>9.2} {:>10.1} {:>13.1}",
        "kiln push",
        push_s,
        n / push_s,
        push_hwm as f64 / 1024.0
    );
    println!(
        "{:<28} {:>9.2} {:>10.1} {:>13.1}",
        "kiln pull (verified)",
        pull_s,
        n / pull_s,
        pull_hwm as f64 / 1024.0
    );
    println!(
        "{:<28} {:>9.2} {:>10.1} {:>13.1}",
        "skopeo copy oci: → docker://",
        skopeo_s,
        n / skopeo_s,
        skopeo_kib as f64 / 1024.0
    );
    println!(
        "ratios kiln/skopeo push: time {:.2}x, peak RSS {:.2}x | uploaded {} bytes, manifest {}",
        push_s / skopeo_s,
        push_hwm as f64 / skopeo_kib.max(1) as f64,
        report.bytes_uploaded,
        report.manifest_digest
    );
    let peak_mib = push_hwm as f64 / 1024.0;
    if peak_mib > 64.0 {
        return Err(format!(
            "kiln's push peaked at {peak_mib:.1} MiB RSS, above the 64 MiB budget"
        )
        .into());
    }
    Ok(())
}
