//! The qemu builder end to end through `kiln build`, under the real
//! qemu-system-x86_64 (TCG here; KVM is probed): the example image is built, then
//! booted again to read back what provisioning put in it; failures (a wrong key,
//! Ctrl-C, forced KVM) leave no qemu process, disk or port behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::cli::{Project, kiln_cmd, text};
use crate::qemu::{VM_LOCK, base_image};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/qemu-debian")
}

/// A temp copy of examples/qemu-debian with the base image's key.
fn example_project() -> (Project, PathBuf) {
    let (image, key) = base_image();
    let p = Project::new();
    let src = example_dir();
    std::fs::copy(src.join("build.rhai"), p.path().join("build.rhai")).unwrap();
    for f in ["files/app.conf", "files/www/index.html"] {
        let dest = p.path().join(f);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(src.join(f), dest).unwrap();
    }
    std::fs::create_dir_all(p.path().join("keys")).unwrap();
    std::fs::copy(&key, p.path().join("keys/id_ed25519")).unwrap();
    (p, image)
}

/// Replaces `from` with `to` in the project's build.rhai; the example must still
/// contain `from`, or the test would silently run an unmodified build.
fn patch_script(p: &Project, from: &str, to: &str) {
    let script = std::fs::read_to_string(p.path().join("build.rhai")).unwrap();
    assert!(
        script.contains(from),
        "build.rhai no longer contains {from:?}"
    );
    p.write("build.rhai", &script.replace(from, to));
}

/// `kiln build` arguments for the example project on `base`. These tests are about
/// the build itself: the step cache (tests/it/step_cache_build.rs) stays out of them.
fn build_args(base: &Path) -> [String; 5] {
    [
        "build".into(),
        "--no-cache".into(),
        "--var".into(),
        format!("base_image={}", base.display()),
        ".".into(),
    ]
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// qemu processes whose command line mentions `needle`.
fn qemu_processes(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("qemu-system") && c.contains(needle)
            })
        })
        .collect()
}

/// The forwarded SSH port, from "Waiting for SSH on 127.0.0.1:PORT...".
fn ssh_port(output: &str) -> Option<u16> {
    output
        .split("Waiting for SSH on 127.0.0.1:")
        .nth(1)?
        .split("...")
        .next()?
        .parse()
        .ok()
}

fn assert_nothing_left(p: &Project, all: &str) {
    assert!(
        qemu_processes(&p.path().display().to_string()).is_empty(),
        "qemu left running\n{all}"
    );
    assert!(
        !p.path().join("output").exists(),
        "output directory (overlay) left behind\n{all}"
    );
    if let Some(port) = ssh_port(all) {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still open\n{all}"
        );
    }
}

#[test]
fn the_example_builds_an_image_that_contains_what_was_provisioned() {
    let _vm = VM_LOCK.blocking_lock();
    let (p, base) = example_project();
    let base_before = sha256(&base);
    let args = build_args(&base);
    let out = p.kiln(&args.each_ref().map(String::as_str));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("Using tcg acceleration") || all.contains("Using kvm acceleration"),
        "{all}"
    );
    assert_eq!(sha256(&base), base_before, "the base image was modified");

    let o = p.path().join("output");
    for f in [
        "debian-web.qcow2",
        "debian-web.qcow2.sha256",
        "debian_libvirt.box",
        "manifest.json",
    ] {
        assert!(o.join(f).is_file(), "{f} missing\n{all}");
    }
    assert!(
        !o.join(".kiln-work.qcow2").exists(),
        "the work overlay must not be left in the output"
    );
    let check = std::process::Command::new("sha256sum")
        .args(["-c", "debian-web.qcow2.sha256"])
        .current_dir(&o)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));

    // The box: metadata.json, Vagrantfile and box.img, as vagrant-libvirt expects.
    let list = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(o.join("debian_libvirt.box"))
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&list.stdout);
    for n in ["metadata.json", "Vagrantfile", "box.img"] {
        assert!(
            names.lines().any(|l| l.trim_start_matches("./") == n),
            "{n} not in box: {names}"
        );
    }
    let meta = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(o.join("debian_libvirt.box"))
        .arg("metadata.json")
        .output()
        .unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
    assert_eq!(meta["provider"], "libvirt");
    assert_eq!(meta["format"], "qcow2");
    assert_eq!(meta["virtual_size"], 4);
    let vagrant = std::process::Command::new("vagrant")
        .args([
            "box",
            "add",
            "--force",
            "--name",
            &format!("kiln-test-{}", std::process::id()),
        ])
        .arg(o.join("debian_libvirt.box"))
        .env("VAGRANT_HOME", p.path().join(".vagrant.d"))
        .output()
        .expect("vagrant is installed by tools/qemu-setup.sh");
    assert!(
        vagrant.status.success(),
        "vagrant box add refused the box: {}",
        text(&vagrant)
    );

    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o.join("manifest.json")).unwrap()).unwrap();
    let b = &m["builds"][0];
    assert_eq!(b["builder_type"], "qemu");
    assert_eq!(b["artifact_id"], "output/debian-web.qcow2");
    let files: Vec<&str> = b["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        ["output/debian-web.qcow2", "output/debian_libvirt.box"]
    );

    // Boot the result and read back what provisioning wrote.
    let verify = r#"
source("check", qemu(#{
    disk_image: "output/debian-web.qcow2", memory: 1024,
    ssh: #{ user: "root", private_key_file: "keys/id_ed25519", timeout: "5m" },
    shutdown_command: "systemctl poweroff", output_directory: "verify-out",
}));
build("verify", #{ sources: ["check"], steps: [
    shell(["id -un deploy > /tmp/ids", "stat -c %U /srv/www >> /tmp/ids"]),
    step(|m| {
        m.download("/etc/app.conf", "verify/app.conf");
        m.download("/srv/www/index.html", "verify/index.html");
        m.download("/etc/motd", "verify/motd");
        m.download("/etc/kiln-build-info", "verify/build-info");
        m.download("/tmp/ids", "verify/ids");
    }, #{ allow: #{ write: ["verify"] } }),
]});
"#;
    p.write("verify.rhai", verify);
    let out = p.kiln(&["build", "--no-cache", "verify.rhai"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = |f: &str| std::fs::read_to_string(p.path().join("verify").join(f)).unwrap();
    assert_eq!(
        v("app.conf"),
        std::fs::read_to_string(example_dir().join("files/app.conf")).unwrap()
    );
    assert_eq!(
        v("index.html"),
        std::fs::read_to_string(example_dir().join("files/www/index.html")).unwrap()
    );
    assert_eq!(v("motd"), "Welcome to a kiln-built image\n");
    assert!(
        v("build-info").contains("os=debian 12"),
        "{}",
        v("build-info")
    );
    assert_eq!(v("ids"), "deploy\ndeploy\n");
}

/// A key the image does not know: kiln stops after `handshake_attempts` rejections
/// (not at a clock's deadline, which a loaded machine's slow boot could reach first and
/// report as a stalled banner), names authentication as the cause, and leaves nothing.
#[test]
fn a_wrong_key_fails_after_the_handshake_attempts_naming_the_cause_and_leaves_nothing() {
    let _vm = VM_LOCK.blocking_lock();
    let (p, base) = example_project();
    std::fs::remove_file(p.path().join("keys/id_ed25519")).unwrap();
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(p.path().join("keys/id_ed25519"))
        .output()
        .unwrap();
    assert!(keygen.status.success());
    // Generous time to boot; three rejections end it.
    patch_script(
        &p,
        "timeout: \"5m\"",
        "timeout: \"15m\", handshake_attempts: 3",
    );
    let args = build_args(&base);
    let out = p.kiln(&args.each_ref().map(String::as_str));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("authentication rejected (publickey) 3 times"),
        "the error must name the cause (authentication): {all}"
    );
    assert!(!all.contains("stalled"), "{all}");
    assert!(all.contains("removed: qemu"), "{all}");
    assert_nothing_left(&p, &all);
}

#[test]
fn sigint_during_provisioning_leaves_nothing_behind() {
    let _vm = VM_LOCK.blocking_lock();
    let (p, base) = example_project();
    patch_script(
        &p,
        "\"useradd --create-home --shell /bin/bash deploy\",",
        "\"sleep 600\",",
    );
    let mut child = kiln_cmd(p.path(), &build_args(&base).each_ref().map(String::as_str))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("provisioning never started");
        if line.contains("Provisioning with shell") {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    let status = child.wait().unwrap();
    let stdout = reader.join().unwrap();
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let all = format!("{stdout}\n{stderr}");
    // Generous: the point is stopping instead of waiting out the 600 s sleep.
    assert!(
        t.elapsed() < Duration::from_secs(150),
        "took {:?} to stop\n{all}",
        t.elapsed()
    );
    assert_eq!(status.code(), Some(1), "{all}");
    assert!(all.contains("removed: qemu"), "{all}");
    assert_nothing_left(&p, &all);
}

#[test]
fn forcing_kvm_here_fails_fast_with_the_reason() {
    let _vm = VM_LOCK.blocking_lock();
    let (p, base) = example_project();
    patch_script(&p, "accelerator: \"auto\"", "accelerator: \"kvm\"");
    let started = Instant::now();
    let args = build_args(&base);
    let out = p.kiln(&args.each_ref().map(String::as_str));
    let all = text(&out);
    if std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .contains(" vmx")
    {
        // A host with working KVM builds fine; nothing to prove here.
        assert_eq!(out.status.code(), Some(0), "{all}");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{all}");
    // Fails instead of booting a guest that never runs (generous for a loaded host).
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        all.contains("KVM is present but cannot run guests") || all.contains("KVM"),
        "{all}"
    );
    assert!(
        all.contains("accelerator: \"tcg\""),
        "the message must say how to fix it: {all}"
    );
    assert_nothing_left(&p, &all);
}

/// Files of 16 MiB and more go into kiln's own VM as a hot-plugged read-only disk;
/// when the guest cannot copy from it (here: `dd` made to fail) the same upload goes
/// over SSH, and the content and mode are the same either way.
#[test]
fn large_uploads_take_a_virtio_disk_and_fall_back_to_ssh() {
    let _vm = VM_LOCK.blocking_lock();
    let (image, key) = base_image();
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("keys")).unwrap();
    std::fs::copy(&key, p.path().join("keys/id_ed25519")).unwrap();
    // Not a whole number of sectors: the guest must stop at the file's last byte.
    let mut data = vec![0u8; (20 << 20) + 123];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let big = p.path().join("big.bin");
    std::fs::write(&big, &data).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o640)).unwrap();
    let want = sha256(&big);
    let script = format!(
        r#"
source("vm", qemu(#{{
    disk_image: "{image}", memory: 512,
    ssh: #{{ user: "root", private_key_file: "keys/id_ed25519", timeout: "5m" }},
    shutdown_command: "systemctl poweroff", output_directory: "out",
}}), #{{ allow: #{{ read: [".", "{dir}"] }} }});
build("b", #{{ sources: ["vm"], steps: [
    file("big.bin", "/root/one.bin"),
    shell(["mount --bind /bin/false /usr/bin/dd"]),
    file("big.bin", "/root/two.bin"),
    shell([
        "umount /usr/bin/dd",
        "sha256sum /root/one.bin /root/two.bin | sed 's/^/SUM /'",
        "stat -c 'MODE %a %s' /root/one.bin /root/two.bin",
        "echo DISKS $(ls /sys/block | grep -c '^vd')",
    ]),
]}});
"#,
        image = image.display(),
        dir = image.parent().unwrap().display(),
    );
    p.write("build.rhai", &script);
    let out = p.kiln(&["build", "--no-cache", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let uploads: Vec<&str> = all.lines().filter(|l| l.contains("Uploaded ")).collect();
    assert_eq!(uploads.len(), 2, "{all}");
    assert!(uploads[0].contains("via a virtio disk"), "{all}");
    assert!(!uploads[1].contains("virtio"), "{all}");
    let sums: Vec<&str> = all.lines().filter_map(|l| l.split("SUM ").nth(1)).collect();
    assert_eq!(sums.len(), 2, "{all}");
    for s in sums {
        assert!(
            s.starts_with(&want),
            "content differs: {s} vs {want}\n{all}"
        );
    }
    let size = data.len();
    assert_eq!(
        all.matches(&format!("MODE 640 {size}")).count(),
        2,
        "mode or size differs\n{all}"
    );
    // The transfer disk was unplugged again: only the system disk is left.
    assert!(all.contains("DISKS 1"), "{all}");
    let audit = crate::cli::find_audit(p.path());
    assert!(audit.contains("bytes via a virtio disk)"), "{audit}");
}
