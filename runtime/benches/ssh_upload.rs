//! kiln's SSH upload vs OpenSSH `scp`, same file, same loopback sshd, same cipher.
//!
//!   cargo bench -p kiln --bench ssh_upload
//!
//! Env: KILN_BENCH_MIB (default 1024), KILN_BENCH_ROUNDS (default 3), KILN_BENCH_CIPHER
//! (default chacha20-poly1305@openssh.com). The incompressible source file is created once
//! under /var/tmp/kiln-bench and reused. Each round runs both tools (alternating which goes
//! first), each timed from connect to the remote close of the file, with `sync` outside the
//! timed part; medians are printed with the ratio (throughput kiln / scp).

#[path = "../../tests/it/peers/sshd.rs"]
mod sshd;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use kiln::host::ssh::{ConnectOptions, Session, SshConfig};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn source_file(mib: u64) -> PathBuf {
    let dir = Path::new("/var/tmp/kiln-bench");
    std::fs::create_dir_all(dir).expect("create /var/tmp/kiln-bench");
    let path = dir.join(format!("upload-{mib}MiB.bin"));
    let want = mib * 1024 * 1024;
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(want) {
        eprintln!(
            "creating {} ({mib} MiB of random data, once)",
            path.display()
        );
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("head -c {want} /dev/urandom > {}", path.display()))
            .status()
            .expect("run head");
        assert!(ok.success(), "could not create {}", path.display());
    }
    path
}

fn sync() {
    let _ = Command::new("sync").status();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let mib: u64 = env_or("KILN_BENCH_MIB", 1024);
    let rounds: usize = env_or("KILN_BENCH_ROUNDS", 3);
    let cipher: String = env_or(
        "KILN_BENCH_CIPHER",
        "chacha20-poly1305@openssh.com".to_string(),
    );
    let src = source_file(mib);
    let bytes = mib * 1024 * 1024;

    let peer = sshd::Sshd::start();
    let dest_dir = tempfile::Builder::new()
        .prefix("kiln-bench-dest-")
        .tempdir_in("/var/tmp")
        .expect("dest dir");
    let src_dir = Dir::open_ambient_dir(src.parent().expect("parent"), ambient_authority())
        .expect("open src dir");
    let project =
        Dir::open_ambient_dir(peer.dir.path(), ambient_authority()).expect("open peer dir");
    let cfg = SshConfig {
        host: Some("127.0.0.1".into()),
        port: Some(peer.port),
        user: peer.user.clone(),
        private_key_file: Some("id_ed25519".into()),
        host_key: Some(peer.host_key_fingerprint.clone()),
        ciphers: Some(vec![cipher.clone()]),
        timeout: Some("30s".into()),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");

    let kiln_once = |dest: &Path| -> Duration {
        rt.block_on(async {
            let t = Instant::now();
            let files = kiln::host::ssh::KeyFiles::read_beneath(&cfg, &project).expect("key files");
            let s = Session::connect(&cfg, &files, &ConnectOptions::default())
                .await
                .expect("kiln connect");
            let f = src_dir
                .open(src.file_name().expect("name"))
                .expect("open src");
            let n = s
                .upload_file(&f, dest.to_str().expect("utf8"), None, &|_| {})
                .await
                .expect("kiln upload");
            let took = t.elapsed();
            assert_eq!(n, bytes);
            s.close().await;
            took
        })
    };
    let scp_once = |dest: &Path| -> Duration {
        let t = Instant::now();
        let st = Command::new("scp")
            .args(["-q", "-c", &cipher, "-P", &peer.port.to_string(), "-i"])
            .arg(&peer.key_path)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg(&src)
            .arg(format!("root@127.0.0.1:{}", dest.display()))
            .status()
            .expect("run scp");
        let took = t.elapsed();
        assert!(st.success(), "scp failed");
        took
    };

    let (mut kiln_rates, mut scp_rates) = (Vec::new(), Vec::new());
    let rate = |d: Duration| bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64();
    for round in 0..rounds {
        let kdest = dest_dir.path().join("kiln.bin");
        let sdest = dest_dir.path().join("scp.bin");
        let mut run = |which: &str| {
            sync();
            let d = if which == "kiln" {
                kiln_once(&kdest)
            } else {
                scp_once(&sdest)
            };
            let r = rate(d);
            println!(
                "round {} {which:>4}: {:.2} s  {r:.0} MiB/s",
                round + 1,
                d.as_secs_f64()
            );
            if which == "kiln" {
                kiln_rates.push(r)
            } else {
                scp_rates.push(r)
            }
            let _ = std::fs::remove_file(if which == "kiln" { &kdest } else { &sdest });
        };
        if round % 2 == 0 {
            run("kiln");
            run("scp");
        } else {
            run("scp");
            run("kiln");
        }
    }
    let (k, s) = (median(kiln_rates), median(scp_rates));
    println!(
        "ssh_upload {mib} MiB, cipher {cipher}, {rounds} rounds: kiln median {k:.0} MiB/s, scp median {s:.0} MiB/s, ratio kiln/scp {:.2}x",
        k / s
    );
}
