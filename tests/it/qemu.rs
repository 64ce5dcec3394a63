//! The qemu primitives against real qemu, qemu-img, blkid, gzip, tar and vagrant.
//!
//! Needs `tools/qemu-setup.sh` (packages) and `tools/base-image.sh` (the Debian image
//! in /var/tmp/kiln-base); without them these tests fail and say which to run. Tests
//! that boot a VM hold VM_LOCK so two TCG guests never share the 2 cores.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::artifact::compress::{CompressOptions, compress_blocking};
use kiln::artifact::vagrant::{BoxOptions, LibvirtDriver, libvirt_box};
use kiln::cleanup::CleanupStack;
use kiln::host::httpd::{self, HttpdConfig};
use kiln::host::image::{self, ImageCompression, ImageFormat};
use kiln::host::qemu::{self, AccelKind, Accelerator, Drive, VmSpec};
use kiln::host::ssh::{ConnectOptions, Session, SshConfig};
use sha2::{Digest, Sha256};

pub(crate) static VM_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BASE_DIR: &str = "/var/tmp/kiln-base";
const SSH_TIMEOUT: Duration = Duration::from_secs(180);

pub(crate) fn base_image() -> (PathBuf, PathBuf) {
    let dir = PathBuf::from(std::env::var("KILN_BASE_DIR").unwrap_or_else(|_| BASE_DIR.into()));
    let image = dir.join("base.qcow2");
    let key = dir.join("keys/id_ed25519");
    assert!(
        image.is_file() && key.is_file(),
        "the base image {} or its key {} is missing: run `sudo tools/qemu-setup.sh && \
         sudo tools/base-image.sh`",
        image.display(),
        key.display()
    );
    require_tool("qemu-system-x86_64");
    (image, key)
}

fn require_tool(name: &str) {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: run `sudo tools/qemu-setup.sh`"
    );
}

fn fingerprint(path: &Path) -> (u64, std::time::SystemTime, String) {
    let meta = std::fs::metadata(path).unwrap();
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    (
        meta.len(),
        meta.modified().unwrap(),
        hex::encode(h.finalize()),
    )
}

fn no_progress() -> &'static (dyn Fn(u64) + Send + Sync) {
    &|_| {}
}

/// Connects with kiln's own SSH communicator, pinning the VM's key on first use as
/// the qemu builder does.
async fn connect(vm: &qemu::Vm, key: &Path) -> (Session, Duration) {
    let project = cap_std::fs::Dir::open_ambient_dir(
        key.parent().unwrap().parent().unwrap(),
        cap_std::ambient_authority(),
    )
    .unwrap();
    let cfg = SshConfig {
        user: "root".into(),
        private_key_file: Some("keys/id_ed25519".into()),
        timeout: Some(format!("{}s", SSH_TIMEOUT.as_secs())),
        ..Default::default()
    };
    let opts = ConnectOptions {
        trust_on_first_use: true,
        host_override: Some("127.0.0.1".into()),
        port_override: Some(vm.ssh_port()),
        ..Default::default()
    };
    let start = Instant::now();
    let files = kiln::host::ssh::KeyFiles::read_beneath(&cfg, &project).expect("key files");
    match Session::connect(&cfg, &files, &opts).await {
        Ok(s) => (s, start.elapsed()),
        Err(e) => panic!(
            "SSH to the VM failed: {e}\nqemu running: {}, stderr:\n{}\nserial:\n{}",
            vm.is_running(),
            vm.stderr_tail(),
            std::fs::read_to_string(vm.serial_log_path()).unwrap_or_default()
        ),
    }
}

async fn run(session: &Session, cmd: &str) -> String {
    let out = session.exec(cmd, &[], &mut |_, _| {}).await.unwrap();
    assert!(out.success(), "{cmd}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn pid_alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would still count as present.
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_boots_from_overlay_answers_ssh_types_keys_and_powers_off() {
    let (base, key) = base_image();
    let _lock = VM_LOCK.lock().await;
    let before = fingerprint(&base);
    let dir = tempfile::tempdir().unwrap();
    let cleanup = CleanupStack::new();

    let accel = qemu::probe_accelerator(Accelerator::Auto).await.unwrap();
    eprintln!("accelerator: {:?} ({})", accel.kind, accel.reason);
    let overlay = image::create_overlay(
        &base,
        &dir.path().join("disk.qcow2"),
        Some(4 << 30),
        &cleanup,
    )
    .await
    .unwrap();
    let info = image::info(&overlay.path).await.unwrap();
    assert_eq!(info.format, "qcow2");
    assert_eq!(info.virtual_size, 4 << 30);
    assert_eq!(
        info.backing_file.as_deref(),
        Some(std::fs::canonicalize(&base).unwrap().to_str().unwrap())
    );

    let mut spec = VmSpec::new("kiln-it-boot", accel, &overlay.path, dir.path().join("out"));
    spec.memory_mib = 512;
    let vm = qemu::start(spec, &cleanup).await.unwrap();
    assert!(pid_alive(vm.pid()));
    let (session, to_ssh) = connect(&vm, &key).await;
    eprintln!("qemu start -> SSH: {:.1} s", to_ssh.as_secs_f64());
    assert_eq!(run(&session, "cat /etc/hostname").await, "kiln-base");

    // The guest reaches kiln's HTTP server the way an installer does: 10.0.2.2:PORT.
    let mut http = HttpdConfig::default();
    http.files
        .insert("meta-data".into(), b"instance-id: kiln-it\n".to_vec());
    let server = httpd::serve(http, &cleanup).await.unwrap();
    let fetched = run(
        &session,
        &format!(
            "exec 3<>/dev/tcp/10.0.2.2/{}; printf 'GET /meta-data HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
            server.port()
        ),
    )
    .await;
    assert!(
        fetched.starts_with("HTTP/1.1 200") && fetched.ends_with("instance-id: kiln-it"),
        "{fetched}"
    );
    drop(server);

    // The forward listens on loopback only.
    let listening = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port_hex = format!(":{:04X} ", vm.ssh_port());
    let lines: Vec<&str> = listening
        .lines()
        .filter(|l| l.contains(&port_hex))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().nth(1).unwrap().starts_with("0100007F")),
        "no 127.0.0.1 listener for the SSH forward: {lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.split_whitespace().nth(1).unwrap().starts_with("00000000")),
        "the SSH forward listens on all interfaces: {lines:?}"
    );

    // Keys typed through QMP reach the VGA console: log in on tty1 and leave a mark.
    vm.send_boot_command(
        "<wait>root<enter><wait2>kiln<enter><wait3>echo typed-by-kiln > /tmp/typed<enter><wait2>",
    )
    .await
    .unwrap();
    let mut typed = String::new();
    for _ in 0..120 {
        typed = run(&session, "cat /tmp/typed 2>/dev/null || true").await;
        if !typed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        typed, "typed-by-kiln",
        "the boot command did not reach the guest console"
    );

    let status = vm.qmp("query-status", None).await.unwrap();
    assert_eq!(status["status"], "running");

    session.close().await;
    vm.powerdown().await.unwrap();
    assert!(
        vm.wait_exit(Duration::from_secs(90)).await,
        "the guest ignored ACPI power-down; serial:\n{}",
        std::fs::read_to_string(vm.serial_log_path()).unwrap_or_default()
    );
    assert!(cleanup.release(vm.cleanup_id()));
    assert_eq!(vm.exit_status().as_deref(), Some("exit status: 0"));
    let serial = std::fs::read_to_string(vm.serial_log_path()).unwrap();
    assert!(!serial.is_empty(), "nothing on the serial console");

    // The overlay took the writes; the base is byte-for-byte what it was.
    assert_eq!(fingerprint(&base), before, "the base image changed");
    assert!(std::fs::metadata(&overlay.path).unwrap().len() > 0);
    cleanup.unwind().await;
    assert!(
        !overlay.path.exists(),
        "unwinding did not remove the overlay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_build_leaves_no_qemu_and_no_overlay() {
    let (base, _key) = base_image();
    let _lock = VM_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cleanup = CleanupStack::new();
    let overlay = image::create_overlay(&base, &dir.path().join("o.qcow2"), None, &cleanup)
        .await
        .unwrap();
    let spec = VmSpec::new(
        "kiln-it-kill",
        kiln::host::qemu::Accel::tcg("test"),
        &overlay.path,
        dir.path(),
    );
    let vm = qemu::start(spec, &cleanup).await.unwrap();
    let pid = vm.pid();
    assert!(pid_alive(pid));
    assert_eq!(cleanup.pending().len(), 2, "{:?}", cleanup.pending());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The build fails: the stack unwinds while the Vm handle is still held.
    let reports = cleanup.unwind().await;
    assert!(reports.iter().all(|r| r.error.is_none()), "{reports:?}");
    assert!(reports[0].what.starts_with("qemu process"), "{reports:?}");
    assert!(!vm.is_running());
    let deadline = Instant::now() + Duration::from_secs(60);
    while pid_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!pid_alive(pid), "qemu {pid} survived the unwind");
    assert!(!overlay.path.exists(), "the overlay survived the unwind");

    // An explicit kill: the VM is gone when kill() returns, and its entry can go.
    let blank = image::create_blank(
        &dir.path().join("b.qcow2"),
        1 << 30,
        ImageFormat::Qcow2,
        &cleanup,
    )
    .await
    .unwrap();
    let spec = VmSpec::new(
        "kiln-it-kill2",
        qemu::Accel::tcg("test"),
        &blank.path,
        dir.path(),
    );
    let vm = qemu::start(spec, &cleanup).await.unwrap();
    let pid = vm.pid();
    assert!(vm.kill().await);
    assert!(!vm.is_running());
    assert!(
        vm.exit_status().unwrap().contains("SIGKILL"),
        "{:?}",
        vm.exit_status()
    );
    assert!(matches!(
        vm.powerdown().await,
        Err(qemu::QemuError::NotRunning)
    ));
    assert!(cleanup.release(vm.cleanup_id()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while pid_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!pid_alive(pid), "qemu {pid} survived kill()");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_early_exit_reports_stderr() {
    base_image();
    let dir = tempfile::tempdir().unwrap();
    let cleanup = CleanupStack::new();
    let mut spec = VmSpec::new(
        "bad",
        qemu::Accel::tcg("test"),
        dir.path().join("missing.qcow2"),
        dir.path(),
    );
    spec.qemuargs = vec![vec!["-no-reboot".into()]];
    let err = qemu::start(spec, &cleanup).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("exited during start-up") && msg.contains("missing.qcow2"),
        "{msg}"
    );
    assert!(cleanup.is_empty(), "{:?}", cleanup.pending());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accelerator_is_probed_not_assumed() {
    require_tool("qemu-system-x86_64");
    let _lock = VM_LOCK.lock().await;
    let started = Instant::now();
    let forced = qemu::probe_accelerator(Accelerator::Kvm).await;
    let elapsed = started.elapsed();
    let auto = qemu::probe_accelerator(Accelerator::Auto).await.unwrap();
    let tcg = qemu::probe_accelerator(Accelerator::Tcg).await.unwrap();
    assert_eq!(tcg.kind, AccelKind::Tcg);
    assert!(!auto.reason.is_empty());
    eprintln!("forced kvm: {forced:?} in {elapsed:?}; auto: {auto:?}");

    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let no_kvm = !Path::new("/dev/kvm").exists();
    if pvm || no_kvm {
        // This machine kind: /dev/kvm is a nested kvm_pvm that cannot run guests.
        let err = forced.unwrap_err().to_string();
        assert!(
            err.contains("cannot run guests here") && err.contains("\"tcg\""),
            "{err}"
        );
        // Fails instead of hanging on a guest that never runs (generous for a loaded host).
        assert!(
            elapsed < Duration::from_secs(90),
            "forced KVM took {elapsed:?} to fail"
        );
        assert_eq!(auto.kind, AccelKind::Tcg);
        assert!(auto.reason.contains("TCG"), "{}", auto.reason);
        if pvm {
            assert!(auto.reason.contains("kvm_pvm"), "{}", auto.reason);
        }
    } else {
        // A host with KVM: the probe must agree with a forced choice.
        assert_eq!(
            forced.is_ok(),
            auto.kind == AccelKind::Kvm,
            "{forced:?} vs {auto:?}"
        );
    }
    // The verdict is kept for the process (a static OnceCell): asked again, the same.
    let again = qemu::probe_accelerator(Accelerator::Auto).await.unwrap();
    assert_eq!((again.kind, &again.reason), (auto.kind, &auto.reason));
}

#[tokio::test]
async fn images_convert_resize_and_report_info() {
    require_tool("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let cleanup = CleanupStack::new();
    let blank = image::create_blank(
        &dir.path().join("a.qcow2"),
        64 << 20,
        ImageFormat::Qcow2,
        &cleanup,
    )
    .await
    .unwrap();
    assert!(matches!(
        image::create_blank(&blank.path, 1 << 20, ImageFormat::Raw, &cleanup).await,
        Err(image::ImageError::Exists { .. })
    ));
    image::resize(&blank.path, 128 << 20).await.unwrap();
    assert_eq!(
        image::info(&blank.path).await.unwrap().virtual_size,
        128 << 20
    );
    assert!(matches!(
        image::resize(&blank.path, 1 << 20).await,
        Err(image::ImageError::Shrink { .. })
    ));

    let percents = Arc::new(std::sync::Mutex::new(Vec::new()));
    for (name, format, compression, expect) in [
        ("b.vmdk", ImageFormat::Vmdk, ImageCompression::None, "vmdk"),
        ("b.raw", ImageFormat::Raw, ImageCompression::None, "raw"),
        ("b.vdi", ImageFormat::Vdi, ImageCompression::None, "vdi"),
        ("b.vhdx", ImageFormat::Vhdx, ImageCompression::None, "vhdx"),
        (
            "b.qcow2",
            ImageFormat::Qcow2,
            ImageCompression::Zstd,
            "qcow2",
        ),
    ] {
        let p = percents.clone();
        let out = image::convert(
            &blank.path,
            &dir.path().join(name),
            format,
            compression,
            &cleanup,
            &move |pct| p.lock().unwrap().push(pct),
        )
        .await
        .unwrap();
        let info = image::info(&out.path).await.unwrap();
        assert_eq!(info.format, expect, "{name}");
        assert!(
            info.virtual_size >= 128 << 20,
            "{name}: {}",
            info.virtual_size
        );
        if compression == ImageCompression::Zstd {
            assert_eq!(info.compression_type.as_deref(), Some("zstd"));
        }
    }
    assert_eq!(percents.lock().unwrap().last(), Some(&100));
    assert!(matches!(
        image::convert(
            &blank.path,
            &dir.path().join("c.raw"),
            ImageFormat::Raw,
            ImageCompression::Zstd,
            &cleanup,
            no_progress()
        )
        .await,
        Err(image::ImageError::CompressionUnsupported { .. })
    ));
    assert!(!dir.path().join("c.raw").exists());

    // Everything created is on the stack and goes away with it.
    assert_eq!(cleanup.pending().len(), 6, "{:?}", cleanup.pending());
    cleanup.unwind().await;
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

fn http(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httpd_serves_a_dir_and_memory_files_and_refuses_escapes() {
    let root = tempfile::tempdir().unwrap();
    let served = root.path().join("http");
    std::fs::create_dir_all(served.join("sub")).unwrap();
    std::fs::write(
        served.join("preseed.cfg"),
        "d-i debian-installer/locale string en_US\n",
    )
    .unwrap();
    std::fs::write(served.join("sub/index.html"), "<h1>sub</h1>").unwrap();
    std::fs::write(root.path().join("secret.txt"), "TOP-SECRET").unwrap();
    std::os::unix::fs::symlink(root.path().join("secret.txt"), served.join("link.txt")).unwrap();

    let cleanup = CleanupStack::new();
    let dir = cap_std::fs::Dir::open_ambient_dir(&served, cap_std::ambient_authority()).unwrap();
    let mut config = HttpdConfig {
        dir: Some(dir),
        ..Default::default()
    };
    config
        .files
        .insert("user-data".into(), b"#cloud-config\n".to_vec());
    let server = httpd::serve(config, &cleanup).await.unwrap();
    let addr = server.addr();
    assert!(addr.ip().is_loopback());
    assert_eq!(
        server.guest_url(),
        format!("http://10.0.2.2:{}", addr.port())
    );

    let r = tokio::task::spawn_blocking(move || {
        vec![
            http(addr, "GET /preseed.cfg HTTP/1.1\r\nHost: x\r\n\r\n"),
            http(addr, "HEAD /preseed.cfg HTTP/1.1\r\n\r\n"),
            http(addr, "GET /user-data HTTP/1.0\r\n\r\n"),
            http(addr, "GET /sub/ HTTP/1.1\r\n\r\n"),
            http(addr, "GET /../secret.txt HTTP/1.1\r\n\r\n"),
            http(addr, "GET /%2e%2e/secret.txt HTTP/1.1\r\n\r\n"),
            http(addr, "GET /sub/../../secret.txt HTTP/1.1\r\n\r\n"),
            http(addr, "GET /link.txt HTTP/1.1\r\n\r\n"),
            http(addr, "GET /nope HTTP/1.1\r\n\r\n"),
            http(addr, "POST /preseed.cfg HTTP/1.1\r\n\r\n"),
        ]
    })
    .await
    .unwrap();
    assert_eq!(
        r[0],
        (200, "d-i debian-installer/locale string en_US\n".into())
    );
    assert_eq!(r[1], (200, String::new()));
    assert_eq!(r[2], (200, "#cloud-config\n".into()));
    assert_eq!(r[3], (200, "<h1>sub</h1>".into()));
    for (i, (code, body)) in r[4..8].iter().enumerate() {
        assert!(
            matches!(code, 400 | 403 | 404),
            "escape {i} answered {code}"
        );
        assert!(!body.contains("TOP-SECRET"), "escape {i} leaked the secret");
    }
    assert_eq!(r[8].0, 404);
    assert_eq!(r[9].0, 405);

    cleanup.unwind().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_ok() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        TcpStream::connect(addr).is_err(),
        "the server still answers after cleanup"
    );
    drop(server);
}

#[tokio::test]
async fn nocloud_seed_disk_is_a_cidata_filesystem() {
    require_tool("blkid");
    let dir = tempfile::tempdir().unwrap();
    let cleanup = CleanupStack::new();
    let user_data = b"#cloud-config\nusers: [{name: kiln}]\n";
    let meta_data = b"instance-id: kiln-1\nlocal-hostname: kiln\n";
    let seed = httpd::nocloud_seed_disk(
        &dir.path().join("seed.img"),
        user_data,
        meta_data,
        None,
        &cleanup,
    )
    .await
    .unwrap();
    let path = seed.path.clone();
    let blkid = |tag: &str| {
        let out = std::process::Command::new("blkid")
            .args(["-p", "-o", "value", "-s", tag])
            .arg(&path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(blkid("TYPE"), "vfat");
    assert_eq!(blkid("LABEL").to_ascii_lowercase(), "cidata");
    let (label, data) = httpd::read_seed_file(&path, "user-data").unwrap();
    assert_eq!(label, "CIDATA");
    assert_eq!(data, user_data);
    assert_eq!(
        httpd::read_seed_file(&path, "meta-data").unwrap().1,
        meta_data
    );
    // The qemu side accepts it as a drive spec.
    let d = Drive::seed(&path);
    assert!(d.read_only);
    assert!(cleanup.release(seed.cleanup));
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half compressible, half noise: both codecs' paths get exercised.
            if (i / 4096) % 2 == 0 {
                (i % 61) as u8
            } else {
                x as u8
            }
        })
        .collect()
}

#[test]
fn compress_round_trips_every_format() {
    require_tool("gzip");
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("disk.qcow2");
    let b = dir.path().join("notes.txt");
    let big = pseudo_random(9 << 20, 7);
    std::fs::write(&a, &big).unwrap();
    std::fs::write(&b, b"hello\n").unwrap();
    let cleanup = CleanupStack::new();
    let opts = CompressOptions {
        level: None,
        threads: 2,
    };
    let seen = std::sync::atomic::AtomicU64::new(0);
    let progress = |n: u64| seen.store(n, std::sync::atomic::Ordering::Relaxed);

    let read_tar = |r: Box<dyn Read>| {
        let mut ar = tar::Archive::new(r);
        let mut files = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            files.push((name, data));
        }
        files
    };
    let expect = vec![
        ("disk.qcow2".to_string(), big.clone()),
        ("notes.txt".to_string(), b"hello\n".to_vec()),
    ];

    let tgz = compress_blocking(
        &[a.clone(), b.clone()],
        &dir.path().join("x.tar.gz"),
        &opts,
        &cleanup,
        &progress,
    )
    .unwrap();
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::Relaxed),
        big.len() as u64 + 6
    );
    assert_eq!(tgz.size, std::fs::metadata(&tgz.path).unwrap().len());
    assert!(tgz.size < big.len() as u64);
    let f = std::fs::File::open(&tgz.path).unwrap();
    assert_eq!(
        read_tar(Box::new(flate2::read::MultiGzDecoder::new(f))),
        expect
    );
    // System tools read the multi-member gzip too.
    let ok = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&tgz.path)
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "disk.qcow2\nnotes.txt\n"
    );

    let tzst = compress_blocking(
        &[a.clone(), b.clone()],
        &dir.path().join("x.tar.zst"),
        &opts,
        &cleanup,
        no_progress(),
    )
    .unwrap();
    let f = std::fs::File::open(&tzst.path).unwrap();
    assert_eq!(
        read_tar(Box::new(zstd::stream::read::Decoder::new(f).unwrap())),
        expect
    );

    let gz = compress_blocking(
        std::slice::from_ref(&a),
        &dir.path().join("disk.qcow2.gz"),
        &CompressOptions {
            level: Some(1),
            threads: 0,
        },
        &cleanup,
        no_progress(),
    )
    .unwrap();
    let out = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(&gz.path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, big);

    let zst = compress_blocking(
        std::slice::from_ref(&a),
        &dir.path().join("disk.qcow2.zst"),
        &CompressOptions {
            level: Some(19),
            threads: 2,
        },
        &cleanup,
        no_progress(),
    )
    .unwrap();
    let back = zstd::decode_all(std::fs::File::open(&zst.path).unwrap()).unwrap();
    assert_eq!(back, big);

    let tar_only = compress_blocking(
        std::slice::from_ref(&b),
        &dir.path().join("x.tar"),
        &opts,
        &cleanup,
        no_progress(),
    )
    .unwrap();
    assert_eq!(
        read_tar(Box::new(std::fs::File::open(&tar_only.path).unwrap())),
        vec![expect[1].clone()]
    );

    // Mistakes are refused without leaving a file behind.
    assert!(
        compress_blocking(
            &[a.clone(), b.clone()],
            &dir.path().join("y.gz"),
            &opts,
            &cleanup,
            no_progress()
        )
        .is_err()
    );
    assert!(
        compress_blocking(
            std::slice::from_ref(&a),
            &dir.path().join("y.zip"),
            &opts,
            &cleanup,
            no_progress()
        )
        .is_err()
    );
    assert!(
        compress_blocking(
            std::slice::from_ref(&a),
            &tgz.path,
            &opts,
            &cleanup,
            no_progress()
        )
        .is_err()
    );
    assert!(!dir.path().join("y.gz").exists());
    assert_eq!(cleanup.pending().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vagrant_libvirt_box_is_well_formed_and_accepted() {
    require_tool("qemu-img");
    require_tool("vagrant");
    let dir = tempfile::tempdir().unwrap();
    let cleanup = CleanupStack::new();
    let disk = image::create_blank(
        &dir.path().join("disk.qcow2"),
        3 << 29,
        ImageFormat::Qcow2,
        &cleanup,
    )
    .await
    .unwrap();
    let opts = BoxOptions {
        driver: LibvirtDriver::Qemu,
        ..Default::default()
    };
    let bx = libvirt_box(
        &disk.path,
        &dir.path().join("kiln_libvirt.box"),
        &opts,
        &cleanup,
        Arc::new(|_| {}),
    )
    .await
    .unwrap();
    assert_eq!(bx.virtual_size_gib, 2, "1.5 GiB rounds up");

    let f = std::fs::File::open(&bx.path).unwrap();
    let mut ar = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        match name.as_str() {
            "metadata.json" => {
                let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
                assert_eq!(v["provider"], "libvirt");
                assert_eq!(v["format"], "qcow2");
                assert_eq!(v["virtual_size"], 2);
            }
            "Vagrantfile" => {
                assert!(String::from_utf8_lossy(&data).contains("libvirt.driver = \"qemu\""))
            }
            "box.img" => assert_eq!(data, std::fs::read(&disk.path).unwrap()),
            other => panic!("unexpected entry {other}"),
        }
        names.push(name);
    }
    assert_eq!(names, ["metadata.json", "Vagrantfile", "box.img"]);

    // An overlay is refused: a box must not point at a file on this machine.
    let overlay = image::create_overlay(&disk.path, &dir.path().join("ov.qcow2"), None, &cleanup)
        .await
        .unwrap();
    let err = libvirt_box(
        &overlay.path,
        &dir.path().join("bad.box"),
        &opts,
        &cleanup,
        Arc::new(|_| {}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("backing file"), "{err}");

    let home = dir.path().join("vagrant-home");
    let out = tokio::process::Command::new("vagrant")
        .args(["box", "add", "--name", "kiln-it"])
        .arg(&bx.path)
        .env("VAGRANT_HOME", &home)
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "vagrant box add refused the box:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let added = home.join("boxes/kiln-it/0/libvirt");
    assert!(added.join("box.img").is_file() && added.join("metadata.json").is_file());
    cleanup.unwind().await;
}

const DEATH_CHILD_ENV: &str = "KILN_IT_QEMU_DEATH_CHILD";

/// kiln dies by SIGKILL (no unwinding, no destructors): the kernel must take qemu with
/// it. The test runs itself as a child process that starts a VM and is then killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_dies_when_kiln_is_killed() {
    if let Ok(dir) = std::env::var(DEATH_CHILD_ENV) {
        // The child: start a VM from a blocking-pool thread (where scripts run) and wait.
        let (base, _) = base_image();
        let cleanup = CleanupStack::new();
        let dir = PathBuf::from(dir);
        let overlay = image::create_overlay(&base, &dir.join("o.qcow2"), None, &cleanup)
            .await
            .unwrap();
        let handle = tokio::runtime::Handle::current();
        let vm = tokio::task::spawn_blocking(move || {
            handle.block_on(qemu::start(
                VmSpec::new(
                    "kiln-it-orphan",
                    qemu::Accel::tcg("test"),
                    &overlay.path,
                    &dir,
                ),
                &cleanup,
            ))
        })
        .await
        .unwrap()
        .unwrap();
        println!(
            "QEMU_PID={} QMP={}",
            vm.pid(),
            vm.qmp_socket_path().display()
        );
        // Longer than tokio's 10 s idle timeout for blocking threads: the VM must
        // survive the thread that asked for it.
        tokio::time::sleep(Duration::from_secs(600)).await;
        return;
    }

    base_image();
    let _lock = VM_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "qemu::qemu_dies_when_kiln_is_killed",
            "--exact",
            "--nocapture",
        ])
        .env(DEATH_CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let line = tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            match lines.next_line().await.unwrap() {
                Some(l) if l.starts_with("QEMU_PID=") => return l,
                Some(_) => continue,
                None => panic!("the child exited without starting a VM"),
            }
        }
    })
    .await
    .expect("the child did not start a VM within 180 s");
    let mut fields = line.split_whitespace();
    let pid: u32 = fields.next().unwrap()["QEMU_PID=".len()..].parse().unwrap();
    let qmp = PathBuf::from(&fields.next().unwrap()["QMP=".len()..]);
    // Outlive the idle timeout of the blocking thread that spawned qemu.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        pid_alive(pid),
        "qemu died with its spawning thread, not with kiln"
    );

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while pid_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let survived = pid_alive(pid);
    if survived {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let _ = std::fs::remove_dir_all(qmp.parent().unwrap());
    assert!(!survived, "qemu {pid} outlived the killed kiln process");
}
