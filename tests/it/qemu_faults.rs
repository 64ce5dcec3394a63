//! The fault matrix with VMs (RELIABILITY.md), kept to two boots' worth of TCG time:
//! qemu killed in the middle of a step, and four qemu builds at once on this 2-core
//! machine (two `kiln build` processes of two builds each, so ports and temp paths are
//! contended both inside one kiln and between two).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::cli::{Project, kiln_cmd, text};
use crate::qemu::{VM_LOCK, base_image};

/// qemu processes whose command line mentions `needle`.
fn qemu_pids(needle: &str) -> Vec<u32> {
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

/// A project with one qemu build per source; `ssh_timeout` bounds the wait for each
/// guest's SSH (generous: TCG guests booting side by side on a loaded machine are slow).
fn vm_project(steps: &str, sources: &[&str], ssh_timeout: &str) -> Project {
    let (image, key) = base_image();
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("keys")).unwrap();
    std::fs::copy(&key, p.path().join("keys/id_ed25519")).unwrap();
    let mut script = String::new();
    for s in sources {
        script.push_str(&format!(
            r#"source("{s}", qemu(#{{
    disk_image: "{image}", memory: 512,
    ssh: #{{ user: "root", private_key_file: "keys/id_ed25519", timeout: "{ssh_timeout}" }},
    shutdown_command: "systemctl poweroff", output_directory: "out-{s}",
}}), #{{ allow: #{{ read: [".", "{dir}"] }} }});
build("{s}", #{{ sources: ["{s}"], steps: [{steps}] }});
"#,
            image = image.display(),
            dir = image.parent().unwrap().display(),
            steps = steps.replace("SRC", s),
        ));
    }
    p.write("build.rhai", &script);
    p
}

#[test]
fn qemu_killed_mid_step_fails_naming_its_exit_and_leaves_nothing() {
    let _vm = VM_LOCK.blocking_lock();
    let p = vm_project(
        r#"shell(["touch /root/started", "sleep 600"])"#,
        &["vm"],
        "10m",
    );
    let mut child = kiln_cmd(p.path(), &["build", "--no-cache", "."])
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
    // Generous: a TCG boot on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("provisioning never started");
        if line.contains("Provisioning with shell") {
            break;
        }
    }
    let pids = qemu_pids(&p.path().display().to_string());
    assert_eq!(pids.len(), 1, "{pids:?}");
    unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
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
    assert_eq!(status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!(
            "qemu (pid {}) exited (signal: 9 (SIGKILL))",
            pids[0]
        )),
        "the failure must name qemu's exit: {all}"
    );
    assert!(!all.contains("Build finished"), "{all}");
    assert!(all.contains("removed: qemu"), "{all}");
    assert!(all.contains("removed: output directory out-vm"), "{all}");
    assert!(!p.path().join("out-vm").exists(), "overlay left\n{all}");
    assert!(qemu_pids(&p.path().display().to_string()).is_empty());
}

/// Four VMs at once: every build gets its own forwarded port and its own VM (each
/// guest holds only its own build's marker), and all four images are written.
#[test]
fn four_qemu_builds_in_parallel_all_succeed_without_collisions() {
    let _vm = VM_LOCK.blocking_lock();
    let step = r#"shell(["touch /root/mark-SRC", "echo MARKS $(ls /root | grep -c '^mark-') $(ls /root | grep '^mark-')"])"#;
    let groups: [&[&str]; 2] = [&["a", "b"], &["c", "d"]];
    let projects: Vec<Project> = groups.iter().map(|g| vm_project(step, g, "40m")).collect();
    let children: Vec<_> = projects
        .iter()
        .map(|p| {
            kiln_cmd(p.path(), &["build", "--no-cache", "."])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut ports = BTreeSet::new();
    for ((o, p), group) in outputs.iter().zip(&projects).zip(groups) {
        let all = text(o);
        assert_eq!(o.status.code(), Some(0), "{all}");
        let out = String::from_utf8_lossy(&o.stdout);
        for part in out.split("Waiting for SSH on 127.0.0.1:").skip(1) {
            ports.insert(part.split("...").next().unwrap_or("").to_string());
        }
        for s in group {
            // Its own VM: only its own marker there.
            assert!(
                out.contains(&format!("MARKS 1 mark-{s}")),
                "build {s} saw another build's VM\n{all}"
            );
            let img = p.path().join(format!("out-{s}/{s}.qcow2"));
            assert!(img.is_file(), "{} missing\n{all}", img.display());
            assert!(
                !p.path().join(format!("out-{s}/.kiln-work.qcow2")).exists(),
                "{all}"
            );
        }
        assert!(
            qemu_pids(&p.path().display().to_string()).is_empty(),
            "{all}"
        );
    }
    assert_eq!(ports.len(), 4, "forwarded ports collided: {ports:?}");
}
