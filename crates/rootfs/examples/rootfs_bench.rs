//! Measures kiln-rootfs against plain baselines in one run (see bench/rootfs/run.sh):
//!
//! * start: `Container::start` until the init is ready, then the first exec round trip,
//!   vs `unshare(1)` doing the same namespaces + an overlay mount + one command;
//! * per-exec: N sequential `true` in one container vs spawning busybox `true` on the host;
//! * throughput: uploading / downloading / reading a file of SIZE MiB vs `cat src > dst`
//!   on the same filesystem.
//!
//! `rootfs_bench [INIT_BINARY] [--starts N] [--execs N] [--mib N]`; INIT_BINARY defaults
//! to `kiln-rootfs-init` next to this example's directory.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_rootfs::testkit::Layers;
use kiln_rootfs::{Container, ExecRequest, InitProgram};

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mibps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

fn default_init() -> PathBuf {
    // target/release/examples/rootfs_bench → target/release/kiln-rootfs-init
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("kiln-rootfs-init"))
        .expect("target dir")
}

/// The baseline for a start: the same namespaces, the overlay, /proc, /dev and /sys
/// mounted by unshare(1) and mount(8), then one command in a chroot, as a shell script
/// would do it.
fn unshare_start(l: &Layers) -> Duration {
    let w = l.work.display();
    let script = format!(
        "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={w} {w} && \
         mount -t proc proc {w}/proc && mount -t tmpfs tmpfs {w}/dev && \
         mount -t sysfs -o ro sysfs {w}/sys && chroot {w} /bin/true",
        l.lower[0].display(),
        l.upper.display(),
    );
    let t = Instant::now();
    let st = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--uts",
            "--ipc",
            "--net",
            "--propagation",
            "private",
        ])
        .args(["sh", "-c", &script])
        .stdout(Stdio::null())
        .status()
        .expect("unshare");
    assert!(st.success(), "the unshare baseline failed");
    t.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let init = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(default_init);
    let starts = arg(&args, "--starts", 20);
    let execs = arg(&args, "--execs", 200);
    let mib = arg(&args, "--mib", 200);
    let init = InitProgram::new(init);

    // 1. Start → ready → first exec → stop.
    let (mut ready, mut first, mut stop, mut base) = (vec![], vec![], vec![], vec![]);
    for _ in 0..starts {
        let l = Layers::busybox().expect("busybox rootfs (tools/setup.d/rootfs.sh)");
        let t = Instant::now();
        let c = Container::start(l.config(init.clone()))
            .await
            .expect("start");
        ready.push(t.elapsed());
        let t = Instant::now();
        let out = c
            .exec(&ExecRequest::new("true"), &mut |_, _| {})
            .await
            .expect("exec");
        assert!(out.success());
        first.push(t.elapsed());
        let t = Instant::now();
        c.stop().await.expect("stop");
        stop.push(t.elapsed());
        let l2 = Layers::busybox().expect("busybox rootfs");
        base.push(unshare_start(&l2));
    }
    let (r, f, s, b) = (median(ready), median(first), median(stop), median(base));
    println!("start ({starts} runs, medians)");
    println!("  kiln start until ready        {:8.2} ms", ms(r));
    println!("  kiln first exec round trip    {:8.2} ms", ms(f));
    println!("  kiln ready + first exec       {:8.2} ms", ms(r + f));
    println!("  kiln stop (all reaped)        {:8.2} ms", ms(s));
    println!("  unshare+mount+chroot true     {:8.2} ms", ms(b));
    println!(
        "  ratio kiln(ready+exec)/unshare {:7.2}",
        (r + f).as_secs_f64() / b.as_secs_f64()
    );

    // 2. Per-exec overhead.
    let l = Layers::busybox().expect("busybox rootfs");
    let c = Container::start(l.config(init.clone()))
        .await
        .expect("start");
    let req = ExecRequest::new("true");
    let t = Instant::now();
    for _ in 0..execs {
        let out = c.exec(&req, &mut |_, _| {}).await.expect("exec");
        assert!(out.success());
    }
    let kiln = t.elapsed();
    let t = Instant::now();
    for _ in 0..execs {
        let st = Command::new("/bin/busybox")
            .args(["sh", "-c", "true"])
            .env_clear()
            .status()
            .expect("spawn");
        assert!(st.success());
    }
    let host = t.elapsed();
    println!("exec ({execs} sequential `true`)");
    println!(
        "  kiln exec in the container    {:8.3} ms each ({:.2} s total)",
        ms(kiln) / execs as f64,
        kiln.as_secs_f64()
    );
    println!(
        "  host spawn of busybox sh -c   {:8.3} ms each ({:.2} s total)",
        ms(host) / execs as f64,
        host.as_secs_f64()
    );
    println!(
        "  ratio kiln/host spawn          {:7.2}",
        kiln.as_secs_f64() / host.as_secs_f64()
    );

    // 3. Throughput of a SIZE MiB file.
    let bytes = (mib as u64) * 1024 * 1024;
    let src = l.root().join("bench-src.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&src).expect("create source");
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut block = vec![0u8; 1024 * 1024];
        for _ in 0..mib {
            for b in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&block).expect("write source");
        }
    }
    // Every phase starts with no dirty pages, so none pays for another's writeback; each
    // runs `reps` times, alternating with the others, and the best run counts (the
    // machine is shared, so the best is the least disturbed).
    let sync = || {
        let _ = Command::new("sync").status();
    };
    let reps = arg(&args, "--reps", 3);
    let dst = l.root().join("bench-dst.bin");
    let (mut cat, mut up, mut down, mut read) = (vec![], vec![], vec![], vec![]);
    for _ in 0..reps {
        sync();
        let t = Instant::now();
        let st = Command::new("sh")
            .args([
                "-c",
                &format!("cat {} > {}.cat", src.display(), src.display()),
            ])
            .status()
            .expect("cat");
        assert!(st.success());
        cat.push(t.elapsed());
        sync();
        let t = Instant::now();
        let sent = c
            .upload_file(
                std::fs::File::open(&src).unwrap(),
                "/tmp/big.bin",
                None,
                &|_| {},
            )
            .await
            .expect("upload");
        up.push(t.elapsed());
        assert_eq!(sent, bytes);
        sync();
        let t = Instant::now();
        let got = c
            .download_file(
                "/tmp/big.bin",
                std::fs::File::create(&dst).unwrap(),
                &|_| {},
            )
            .await
            .expect("download");
        down.push(t.elapsed());
        assert_eq!(got, bytes);
        let t = Instant::now();
        let mem = c.read_file("/tmp/big.bin", bytes).await.expect("read_file");
        read.push(t.elapsed());
        assert_eq!(mem.len() as u64, bytes);
    }
    c.stop().await.expect("stop");
    let best = |v: &Vec<Duration>| *v.iter().min().expect("at least one run");
    let (cat, up, down, read) = (best(&cat), best(&up), best(&down), best(&read));
    println!(
        "throughput ({mib} MiB, best of {reps}, same filesystem, source in the page cache, sync before each)"
    );
    println!(
        "  kiln upload_file (host → container)   {:8.1} MiB/s",
        mibps(bytes, up)
    );
    println!(
        "  kiln download_file (container → host) {:8.1} MiB/s",
        mibps(bytes, down)
    );
    println!(
        "  kiln read_file into memory            {:8.1} MiB/s",
        mibps(bytes, read)
    );
    println!(
        "  host `cat src > dst`                  {:8.1} MiB/s",
        mibps(bytes, cat)
    );
    println!(
        "  ratio upload/cat {:.2}, download/cat {:.2}",
        mibps(bytes, up) / mibps(bytes, cat),
        mibps(bytes, down) / mibps(bytes, cat)
    );
}
