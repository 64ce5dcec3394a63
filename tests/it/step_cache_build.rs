//! Issue 14, the QEMU step cache end to end through `kiln build` under the real
//! qemu-system-x86_64: a first build boots and records each step's state; a second
//! build with only its last step changed restores the VM's memory state after the
//! unchanged steps (no boot) and runs only the last step. One boot in all: TCG is slow
//! here.

use std::path::Path;

use crate::cli::{Project, kiln_cmd, text};
use crate::qemu::{VM_LOCK, base_image};

fn script(base: &Path, last: &str) -> String {
    format!(
        r#"
source("vm", qemu(#{{
    disk_image: "{base}",
    disk_size: "4G",
    memory: 1024,
    cpus: 1,
    accelerator: "auto",
    ssh: #{{ user: "root", private_key_file: "keys/id_ed25519", timeout: "15m" }},
    shutdown_command: "systemctl poweroff",
    output_directory: "output",
    vm_name: "img.qcow2",
}}), #{{ allow: #{{ read: [".", "{dir}"] }} }});

build("web", #{{ sources: ["vm"], steps: [
    file("files/one.txt", "/root/one.txt"),
    // A marker only this step writes: a restored prefix does not run it again.
    shell(["echo ran >> /root/step2-runs", "cat /proc/sys/kernel/random/boot_id > /root/boot-at-step2"]),
    {last}
]}});
"#,
        base = base.display(),
        dir = base.parent().expect("base image dir").display(),
    )
}

#[test]
fn a_rebuild_with_the_last_step_changed_restores_the_cached_vm_without_booting() {
    let _vm = VM_LOCK.blocking_lock();
    let (base, key) = base_image();
    let p = Project::new();
    let cache = tempfile::Builder::new()
        .prefix("kiln-cache-")
        .tempdir()
        .expect("temp cache dir");
    std::fs::create_dir_all(p.path().join("keys")).expect("keys dir");
    std::fs::copy(&key, p.path().join("keys/id_ed25519")).expect("copy key");
    p.write("files/one.txt", "one\n");
    let build = |p: &Project| {
        kiln_cmd(p.path(), &["build", "--force", "."])
            .env("KILN_CACHE_DIR", cache.path())
            .output()
            .expect("run kiln")
    };

    p.write(
        "build.rhai",
        // Written and synced to the disk after two captures: each capture puts a new
        // overlay under the running guest, and a broken switch (qemu once reopened a
        // new file as the old top) shows here as an I/O error and a read-only root.
        &script(
            &base,
            r#"shell(["echo v1 > /root/last && sync && touch /root/after-sync && if dmesg | grep -Ei 'EXT4-fs error|I/O error'; then exit 1; fi"]),"#,
        ),
    );
    let first = build(&p);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let all = text(&first);
    assert!(!all.contains("Using cached state"), "{all}");
    assert!(p.path().join("output/img.qcow2").is_file(), "{all}");

    // `kiln cache list` shows the three steps of the build.
    let list = kiln_cmd(p.path(), &["cache", "list"])
        .env("KILN_CACHE_DIR", cache.path())
        .output()
        .expect("run kiln cache list");
    assert_eq!(list.status.code(), Some(0), "{}", text(&list));
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains("web.vm"), "{listed}");

    // Only the last step changes: steps 1-2 come from the cache, step 3 runs.
    p.write(
        "build.rhai",
        &script(
            &base,
            r#"step(|m| {
        m.exec("echo v2 > /root/last && cat /proc/sys/kernel/random/boot_id > /root/boot-now");
        m.download("/root/step2-runs", "seen/runs");
        m.download("/root/boot-at-step2", "seen/boot-at-step2");
        m.download("/root/boot-now", "seen/boot-now");
        m.download("/root/one.txt", "seen/one.txt");
    }, #{ allow: #{ write: ["seen"] } }),"#,
        ),
    );
    // The dry run sees the cached prefix and touches nothing.
    let dry = kiln_cmd(p.path(), &["build", "--dry-run", "."])
        .env("KILN_CACHE_DIR", cache.path())
        .output()
        .expect("run kiln build --dry-run");
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let d = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(
        d.matches("from the cache (memory state: no boot)").count(),
        2,
        "{d}"
    );
    assert!(d.contains("3/3 closure"), "{d}");
    assert!(d.contains("would run"), "{d}");
    assert!(!p.path().join("seen").exists(), "{d}");

    let second = build(&p);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    let all = text(&second);
    assert!(
        all.contains("Using cached state after step 2 (key "),
        "{all}"
    );
    assert!(
        all.contains("Restored the VM's memory state after step 2"),
        "the VM was not restored from its memory state:\n{all}"
    );
    let seen = |f: &str| {
        std::fs::read_to_string(p.path().join("seen").join(f))
            .unwrap_or_else(|e| panic!("seen/{f}: {e}\n{all}"))
    };
    // Step 2 ran once (in the first build), and the guest was not booted since.
    assert_eq!(seen("runs"), "ran\n", "{all}");
    assert_eq!(
        seen("boot-now"),
        seen("boot-at-step2"),
        "the VM was rebooted\n{all}"
    );
    assert_eq!(seen("one.txt"), "one\n", "{all}");
    assert!(p.path().join("output/img.qcow2").is_file(), "{all}");
}
