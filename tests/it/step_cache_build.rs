//! Issue 14, the QEMU step cache end to end through `kiln build` under the real
//! qemu-system-x86_64, on one boot in all (TCG is slow here):
//! 1. a first build boots and records each step's state (and writes to its disk after
//!    two captures: the overlays switched under a running guest must keep it writable);
//! 2. only the last step changed: the VM's memory state after step 2 is restored (no
//!    boot; the guest's boot_id is the one step 1 saw) and only step 3 runs;
//! 3. the file step 2 uploads changed: step 1 is restored, steps 2 and 3 run, and the
//!    machine has the new file;
//! 4. a build interrupted by SIGINT in step 3, then `kiln build --resume`: it continues
//!    from the cached state after step 2;
//! 5. a kiln killed outright (SIGKILL) in step 3: the next build still restores and
//!    succeeds (the entries a dead kiln leaves are whole or absent).
//!
//! In each, the files the last step downloads from the machine are what the steps
//! (run or restored) wrote.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};

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
    // A marker only this step writes: a restored prefix does not run it again.
    shell(["echo ran >> /root/step1-runs", "cat /proc/sys/kernel/random/boot_id > /root/boot-at-step1"]),
    file("files/one.txt", "/root/one.txt"),
    {last}
]}});
"#,
        base = base.display(),
        dir = base.parent().expect("base image dir").display(),
    )
}

/// The last step of builds 2 to 5: what the machine holds, downloaded. `tag` makes it
/// a new step each time (a step the cache has would not run, and download nothing).
fn see(tag: &str) -> String {
    SEE.replace("TAG", tag)
}

const SEE: &str = r#"step(|m| {
        m.exec("echo TAG > /root/last && cat /proc/sys/kernel/random/boot_id > /root/boot-now");
        m.download("/root/step1-runs", "seen/runs");
        m.download("/root/boot-at-step1", "seen/boot-at-step1");
        m.download("/root/boot-now", "seen/boot-now");
        m.download("/root/one.txt", "seen/one.txt");
    }, #{ allow: #{ write: ["seen"] } }),"#;

/// A last step that says so and waits, for the signal tests.
const WAIT: &str = r#"shell(["echo kiln-test-waiting-in-step-3", "sleep 900"]),"#;

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
    // Its own resource ledger too: `kiln cleanup` below must see only this test's runs.
    let state = tempfile::Builder::new()
        .prefix("kiln-state-")
        .tempdir()
        .expect("temp state dir");
    let kiln = |args: &[&str]| {
        let mut c = kiln_cmd(p.path(), args);
        c.env("KILN_CACHE_DIR", cache.path())
            .env("KILN_STATE_DIR", state.path());
        c
    };
    let build = |args: &[&str]| -> (Output, String) {
        let o = kiln(args).output().expect("run kiln");
        let all = text(&o);
        assert_eq!(o.status.code(), Some(0), "{all}");
        (o, all)
    };
    let seen = |f: &str, all: &str| {
        std::fs::read_to_string(p.path().join("seen").join(f))
            .unwrap_or_else(|e| panic!("seen/{f}: {e}\n{all}"))
    };

    // 1. Cold: boots, records 3 steps. Written and synced to the disk after two
    // captures: each capture puts a new overlay under the running guest, and a broken
    // switch (qemu once reopened a new file as the old top) shows here as an I/O error
    // and a read-only root.
    p.write(
        "build.rhai",
        &script(
            &base,
            r#"shell(["echo v1 > /root/last && sync && touch /root/after-sync && if dmesg | grep -Ei 'EXT4-fs error|I/O error'; then exit 1; fi"]),"#,
        ),
    );
    let (_, all) = build(&["build", "--force", "."]);
    assert!(!all.contains("Using cached state"), "{all}");
    assert!(p.path().join("output/img.qcow2").is_file(), "{all}");

    // `kiln cache list` shows the build's steps.
    let list = kiln(&["cache", "list"]).output().expect("kiln cache list");
    assert_eq!(list.status.code(), Some(0), "{}", text(&list));
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.contains("web.vm step 3/3") && listed.contains("web.vm step 1/3"),
        "{listed}"
    );

    // 2. Only the last step changes: steps 1-2 come from the cache, step 3 runs.
    p.write("build.rhai", &script(&base, &see("v2")));
    // The dry run sees the cached prefix and touches nothing.
    let dry = kiln(&["build", "--dry-run", "."])
        .output()
        .expect("dry run");
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

    let (_, all) = build(&["build", "--force", "."]);
    assert!(
        all.contains("Using cached state after step 2 (key "),
        "{all}"
    );
    assert!(
        all.contains("Restored the VM's memory state after step 2"),
        "the VM was not restored from its memory state:\n{all}"
    );
    // Step 1 ran once (in the first build), and the guest was not booted since.
    assert_eq!(seen("runs", &all), "ran\n", "{all}");
    assert_eq!(
        seen("boot-now", &all),
        seen("boot-at-step1", &all),
        "the VM was rebooted\n{all}"
    );
    assert_eq!(seen("one.txt", &all), "one\n", "{all}");
    assert!(p.path().join("output/img.qcow2").is_file(), "{all}");

    // 3. The uploaded file changes: its step and the later ones run again, the step
    // before it comes from the cache.
    p.write("files/one.txt", "two\n");
    p.write("build.rhai", &script(&base, &see("v3")));
    std::fs::remove_dir_all(p.path().join("seen")).expect("clear seen/");
    let (_, all) = build(&["build", "--force", "."]);
    assert!(
        all.contains("Using cached state after step 1 (key "),
        "{all}"
    );
    assert!(!all.contains("after step 2 (key "), "{all}");
    assert!(all.contains("Uploading files/one.txt"), "{all}");
    assert_eq!(seen("one.txt", &all), "two\n", "{all}");
    assert_eq!(seen("runs", &all), "ran\n", "step 1 ran again:\n{all}");

    // 4. SIGINT in step 3, then --resume: from the cached state after step 2.
    p.write("build.rhai", &script(&base, WAIT));
    let interrupted = run_until_waiting_then(kiln(&["build", "--force", "."]), libc::SIGINT);
    assert_eq!(interrupted.0, Some(1), "{}", interrupted.1);
    assert!(
        interrupted.1.contains("Interrupted by SIGINT"),
        "{}",
        interrupted.1
    );
    p.write("build.rhai", &script(&base, &see("v4")));
    std::fs::remove_dir_all(p.path().join("seen")).expect("clear seen/");
    let (_, all) = build(&["build", "--resume", "--force", "."]);
    assert!(
        all.contains("Using cached state after step 2 (key "),
        "{all}"
    );
    assert_eq!(seen("one.txt", &all), "two\n", "{all}");

    // 5. kiln killed outright in step 3: what it left in the cache does not corrupt
    // the next build, which restores and succeeds.
    p.write("build.rhai", &script(&base, WAIT));
    let killed = run_until_waiting_then(kiln(&["build", "--force", "."]), libc::SIGKILL);
    assert_eq!(killed.0, None, "killed by a signal: {}", killed.1);
    p.write("build.rhai", &script(&base, &see("v5")));
    std::fs::remove_dir_all(p.path().join("seen")).expect("clear seen/");
    let cleanup = kiln(&["cleanup"]).output().expect("kiln cleanup");
    assert_eq!(cleanup.status.code(), Some(0), "{}", text(&cleanup));
    let (_, all) = build(&["build", "--force", "."]);
    assert!(
        all.contains("Using cached state after step 2 (key "),
        "{all}"
    );
    assert_eq!(seen("one.txt", &all), "two\n", "{all}");
    assert_eq!(seen("runs", &all), "ran\n", "{all}");
    assert!(p.path().join("output/img.qcow2").is_file(), "{all}");
}

/// Runs `cmd` until its step 3 says it is waiting, then sends `sig`. Returns the exit
/// code and everything it printed.
fn run_until_waiting_then(mut cmd: std::process::Command, sig: i32) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut out = String::new();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref().map_while(Result::ok) {
        out.push_str(&line);
        out.push('\n');
        if line.contains("kiln-test-waiting-in-step-3") && !line.contains("echo") {
            let pid = libc::pid_t::try_from(child.id()).expect("pid");
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
            break;
        }
    }
    for line in lines.map_while(Result::ok) {
        out.push_str(&line);
        out.push('\n');
    }
    let status = child.wait().expect("wait for kiln");
    out.push_str(&err.join().unwrap_or_default());
    (status.code(), out)
}
