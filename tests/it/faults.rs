//! The fault matrix without VMs (RELIABILITY.md): SSH connections cut mid-upload and
//! mid-command by a TCP proxy in front of a real sshd, the output directory's file
//! system filling up during conversion and compression (a small tmpfs), and a soak of
//! 30 builds in one `kiln build` with kiln's memory and descriptors read from /proc.
//! Every fault is injected for real; every assertion is about an outcome (what the
//! user is told, what is left where), never about how long something took.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use kiln::host::ssh::{ConnectOptions, KeyFiles, Session, SshConfig, SshError};

use crate::cli::{Project, kiln_cmd, text};
use crate::peers::cutter::Cutter;
use crate::peers::sshd::Sshd;

/// Generous: a loaded 2-core machine is slow, and only a hang should fail a wait.
const PATIENCE: Duration = Duration::from_secs(120);

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Polls `cond` until it holds; panics with `what` after [`PATIENCE`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cfg_via(sshd: &Sshd, port: u16) -> SshConfig {
    SshConfig {
        host: Some("127.0.0.1".into()),
        port: Some(port),
        user: sshd.user.clone(),
        private_key_file: Some("id_ed25519".into()),
        host_key: Some(sshd.host_key_fingerprint.clone()),
        timeout: Some("60s".into()),
        ..Default::default()
    }
}

async fn connect_via(sshd: &Sshd, port: u16) -> Session {
    let c = cfg_via(sshd, port);
    let dir = Dir::open_ambient_dir(sshd.dir.path(), ambient_authority()).expect("peer dir");
    let files = KeyFiles::read_beneath(&c, &dir).expect("key files");
    Session::connect(&c, &files, &ConnectOptions::default())
        .await
        .unwrap_or_else(|e| panic!("connect through the proxy: {e}\n{}", sshd.log()))
}

/// SFTP uploads (new file and replacement) and an exec-channel write, each cut
/// mid-transfer: the error is a lost connection, the destination holds nothing or
/// its old content, and a later session removes the hidden temporary file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_mid_transfer_never_leaves_a_partial_file() {
    let sshd = Sshd::start();
    let cut = Cutter::start(sshd.port);
    let d = sshd.dir.path().join("dest");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(sshd.dir.path().join("payload.bin"), noise(24 << 20, 3)).unwrap();
    std::fs::write(d.join("old.bin"), "old").unwrap();
    let project = Dir::open_ambient_dir(sshd.dir.path(), ambient_authority()).unwrap();
    let file = project.open("payload.bin").unwrap();

    for dest in ["new.bin", "old.bin"] {
        let s = connect_via(&sshd, cut.port).await;
        cut.cut_after(4 << 20, false);
        let path = d.join(dest);
        let err = s
            .upload_file(&file, path.to_str().unwrap(), Some(0o644), &|_| {})
            .await
            .expect_err("the upload survived the cut");
        assert!(err.is_disconnect(), "{dest}: {err:?}");
        match dest {
            "new.bin" => assert!(!path.exists(), "a partial {dest} was left"),
            _ => assert_eq!(std::fs::read_to_string(&path).unwrap(), "old"),
        }
    }
    // What the cut uploads left is hidden next to the destination, and goes away.
    let left = names(&d);
    assert!(
        left.iter().all(|n| n == "old.bin" || n.contains(".kiln-")),
        "{left:?}"
    );
    let s = connect_via(&sshd, cut.port).await;
    for dest in ["new.bin", "old.bin"] {
        s.remove_upload_leftovers(d.join(dest).to_str().unwrap())
            .await
            .unwrap();
    }
    assert_eq!(names(&d), ["old.bin"]);

    // The exec-channel path (what write_file and servers without SFTP use): the remote
    // side checks the byte count, so the truncated stream is never renamed into place,
    // and it removes its own temporary file.
    cut.cut_after(2 << 20, false);
    let big = noise(8 << 20, 5);
    let path = d.join("written.bin");
    let err = s
        .write_file(path.to_str().unwrap(), &big, Some(0o600))
        .await
        .expect_err("the write survived the cut");
    assert!(err.is_disconnect(), "{err:?}");
    wait_until("the remote side to remove its temporary file", || {
        names(&d) == ["old.bin"]
    });
    assert_eq!(cut.cuts(), 3);

    // Uncut, through the same proxy: replaced whole, mode applied.
    let s = connect_via(&sshd, cut.port).await;
    s.upload_file(
        &file,
        d.join("old.bin").to_str().unwrap(),
        Some(0o640),
        &|_| {},
    )
    .await
    .expect("upload");
    assert_eq!(
        sha256(&d.join("old.bin")),
        sha256(&sshd.dir.path().join("payload.bin")),
        "the replaced file differs"
    );
    assert_eq!(names(&d), ["old.bin"]);
}

/// A command whose connection is cut while it runs fails as a lost connection; it is
/// never reported as a success or as an exit status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_cut_mid_command_reports_the_lost_connection() {
    let sshd = Sshd::start();
    let cut = Cutter::start(sshd.port);
    let s = connect_via(&sshd, cut.port).await;
    let marker = sshd.dir.path().join("finished");
    let cmd = format!("echo started; sleep 20; touch {}", marker.display());
    let mut seen = Vec::new();
    let r = s
        .exec(&cmd, &[], &mut |_, data: &[u8]| {
            let text = String::from_utf8_lossy(data);
            if text.contains("started") {
                cut.cut_now();
            }
            seen.push(text.into_owned());
        })
        .await;
    let err = match r {
        Ok(out) => panic!("the cut command reported a result: {out:?}"),
        Err(e) => e,
    };
    assert!(err.is_disconnect(), "{err:?}");
    assert!(matches!(err, SshError::Disconnected { .. }), "{err:?}");
    assert!(err.to_string().contains("lost"), "{err}");
    assert_eq!(seen.concat().trim_end(), "started");
    // The session is gone for good: the next command says so too.
    let again = s.exec("true", &[], &mut |_, _| {}).await.unwrap_err();
    assert!(again.is_disconnect(), "{again:?}");
}

/// `kiln build` with a file step through the proxy: cut once mid-upload, kiln
/// reconnects and uploads again from the start (the build succeeds, the file is whole,
/// nothing is left beside it); cut with the machine staying unreachable, the build
/// fails saying so and the destination keeps its old content.
#[test]
fn a_build_retries_a_cut_upload_once_and_fails_cleanly_when_the_machine_stays_away() {
    let sshd = Sshd::start();
    let cut = Cutter::start(sshd.port);
    let p = Project::new();
    let payload = noise(16 << 20, 7);
    std::fs::create_dir_all(p.path().join("files")).unwrap();
    std::fs::write(p.path().join("files/big.bin"), &payload).unwrap();
    let remote = p.remote.path();
    let ssh = sshd
        .ssh_config_rhai_in(p.path())
        .replace(
            &format!("port: {}", sshd.port),
            &format!("port: {}", cut.port),
        )
        .replace(" }", ", timeout: \"10s\" }");
    p.write(
        "build.rhai",
        &format!(
            r#"source("box", ssh_host(#{{ host: "127.0.0.1", ssh: {ssh} }}));
build("up", #{{ sources: ["box"], steps: [ file("files/big.bin", "{dest}") ] }});"#,
            dest = remote.join("big.bin").display()
        ),
    );

    cut.cut_after(4 << 20, false);
    let out = p.kiln(&["build", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(cut.cuts(), 1, "the proxy never cut the upload\n{all}");
    assert!(all.contains("uploaded again from the start"), "{all}");
    assert!(
        std::fs::read(remote.join("big.bin")).unwrap() == payload,
        "content differs"
    );
    assert_eq!(names(remote), ["big.bin"]);

    std::fs::write(remote.join("big.bin"), "old").unwrap();
    cut.cut_after(4 << 20, true);
    let out = p.kiln(&["build", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("connection"), "{all}");
    assert!(
        all.contains("reconnecting to retry the upload failed"),
        "{all}"
    );
    assert!(!all.contains("Build finished"), "{all}");
    assert_eq!(
        std::fs::read_to_string(remote.join("big.bin")).unwrap(),
        "old"
    );
    // The unreachable machine keeps the hidden partial file of the cut attempt (kiln
    // could not reach it to remove it); the next upload there removes it.
    for n in names(remote) {
        assert!(n == "big.bin" || n.starts_with(".big.bin.kiln-"), "{n}");
    }
}

/// A shell step whose connection is cut while its command runs fails the build with
/// the lost connection; it is never reported as a success.
#[test]
fn a_build_whose_command_is_cut_fails_naming_the_lost_connection() {
    let sshd = Sshd::start();
    let cut = Cutter::start(sshd.port);
    let p = Project::new();
    let remote = p.remote.path().display().to_string();
    let marker = format!("20.{}", std::process::id());
    let ssh = sshd
        .ssh_config_rhai_in(p.path())
        .replace(
            &format!("port: {}", sshd.port),
            &format!("port: {}", cut.port),
        )
        .replace(" }", ", timeout: \"10s\" }");
    p.write(
        "build.rhai",
        &format!(
            r#"source("box", ssh_host(#{{ host: "127.0.0.1", ssh: {ssh} }}));
build("cmd", #{{ sources: ["box"], steps: [
    shell(["touch {remote}/started", "sleep {marker}", "touch {remote}/after"]),
] }});"#
        ),
    );
    let child = kiln_cmd(p.path(), &["build", "."])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the step to start", || {
        p.remote.path().join("started").exists()
    });
    cut.cut_now();
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    // The remote script is out of kiln's reach now (RELIABILITY.md); end it here.
    for pid in crate::cli::sleepers(&marker) {
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("lost"), "{all}");
    assert!(!all.contains("Build finished"), "{all}");
    assert!(!p.remote.path().join("after").exists());
}

/// `pid` and its descendants whose command is `sshd` (the listener's per-connection
/// processes; not the user's shell or its children), from /proc.
fn sshd_tree(pid: u32) -> Vec<u32> {
    let procs: Vec<(u32, u32, String)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // pid (comm) state ppid ...: comm may hold spaces, so split at the last ')'.
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid, comm))
        })
        .collect();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        let children: Vec<u32> = procs
            .iter()
            .filter(|(p, pp, comm)| *pp == parent && comm == "sshd" && !tree.contains(p))
            .map(|(p, _, _)| *p)
            .collect();
        tree.extend(children);
        i += 1;
    }
    tree
}

/// The SSH server itself dies while a shell step runs (the listener and every
/// per-connection sshd process SIGKILLed, so the machine stays unreachable): the build
/// fails naming the lost connection, says the remote script could not be stopped and
/// may still run, and the build's own cleanup still unwinds.
#[test]
fn sshd_killed_mid_step_fails_naming_the_lost_connection_and_what_may_still_run() {
    let sshd = Sshd::start();
    let p = Project::new();
    let remote = p.remote.path().display().to_string();
    let marker = format!("600.{}", std::process::id());
    let ssh = sshd
        .ssh_config_rhai_in(p.path())
        .replace(" }", ", timeout: \"10s\" }");
    p.write(
        "build.rhai",
        &format!(
            r#"source("box", ssh_host(#{{ host: "127.0.0.1", ssh: {ssh} }}));
build("cmd", #{{ sources: ["box"], steps: [
    shell(["touch {remote}/started", "sleep {marker}", "touch {remote}/after"]),
] }});"#
        ),
    );
    let child = kiln_cmd(p.path(), &["build", "."])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the step to start", || {
        p.remote.path().join("started").exists()
    });
    let victims = sshd_tree(sshd.pid());
    assert!(
        victims.len() > 1,
        "no per-connection sshd found: {victims:?}"
    );
    for pid in &victims {
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    let left = crate::cli::sleepers(&marker);
    for pid in &left {
        unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
    }
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("lost"), "{all}");
    assert!(!all.contains("Build finished"), "{all}");
    // The remote command outlived its session (it does not write, so nothing tells it);
    // kiln says so instead of claiming it was stopped.
    assert!(
        !left.is_empty(),
        "the remote command was expected to outlive sshd\n{all}"
    );
    assert!(all.contains("could not stop remote script"), "{all}");
    assert!(all.contains("may still be running"), "{all}");
    assert!(!p.remote.path().join("after").exists());
}

/// A tmpfs of `mib` MiB mounted at `dir` (created), unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a {mib} MiB tmpfs at {} (the fault tests need root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

fn sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// The output directory's file system fills up, first while qemu-img converts the
/// disk, then while the compress post-processor writes its archive: each time a
/// clear error naming the path, the partial output removed, the base image untouched.
#[test]
fn a_full_output_file_system_fails_naming_the_path_and_removes_partial_outputs() {
    let p = Project::new();
    // A base image of incompressible data, on the normal disk.
    let base = p.path().join("base.raw");
    std::fs::write(&base, noise(48 << 20, 11)).unwrap();
    let base_sum = sha256(&base);
    let small = p.path().join("small");
    let _fs = Tmpfs::mount(&small, 64);
    p.write(
        "builders/disk.rhai",
        r#"
fn options() { #{ base: (), output_directory: (), compress_to: () } }
fn grants(cfg) { #{ qemu: true } }
fn run(cfg, ctx) {
    let out = cfg.output_directory;
    ctx.output_dir(out);
    let work = `${out}/.kiln-work.qcow2`;
    ctx.image_overlay(cfg.base, work, ());
    let image = `${out}/disk.qcow2`;
    ctx.image_convert(work, image, "qcow2", "none");
    ctx.keep(image);
    ctx.keep(out);
    ctx.artifact(#{ id: image, files: [image] })
}
"#,
    );
    let script = |out: &str, post: &str| {
        format!(
            r#"source("img", builder("builders/disk.rhai", #{{ base: "base.raw", output_directory: "{out}" }}));
build("b", #{{ sources: ["img"], post: [{post}] }});"#
        )
    };

    // 1. Conversion: a flat 48 MiB qcow2 does not fit in 64 MiB next to a 40 MiB filler.
    std::fs::write(small.join("filler"), noise(40 << 20, 13)).unwrap();
    p.write("build.rhai", &script("small/out", ""));
    let out = p.kiln(&["build", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let image = small.join("out/disk.qcow2");
    assert!(
        all.contains(&format!("ran out of space writing {}", image.display())),
        "{all}"
    );
    assert!(all.contains("is full"), "{all}");
    assert_eq!(names(&small), ["filler"], "partial outputs left\n{all}");
    assert_eq!(sha256(&base), base_sum, "the base image changed");

    // 2. Compression: the image fits, its (incompressible) archive does not.
    std::fs::remove_file(small.join("filler")).unwrap();
    p.write(
        "build.rhai",
        &script(
            "small/out",
            r#"compress(#{ output: "small/out/disk.qcow2.tar.gz" })"#,
        ),
    );
    let out = p.kiln(&["build", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let archive = small.join("out/disk.qcow2.tar.gz");
    assert!(
        all.contains(&format!("no space left writing {}", archive.display())),
        "{all}"
    );
    assert!(!archive.exists(), "the partial archive was left\n{all}");
    // The converted image is a finished artifact of the builder and stays, as Packer
    // keeps a builder's artifact when a post-processor fails.
    assert!(image.is_file(), "{all}");
    assert_eq!(names(&small.join("out")), ["disk.qcow2"], "{all}");
    assert_eq!(sha256(&base), base_sum, "the base image changed");
}

/// kiln's resident memory (KiB) and open descriptors, from /proc.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

/// 30 consecutive ssh_host builds in one `kiln build`, each running a shell step, a
/// 1 MiB upload, a closure and a download: kiln's RSS and open descriptors, read from
/// /proc at the same point of every build (its last step waits for the test to look),
/// stay flat after the first few builds.
#[test]
fn thirty_builds_in_one_run_keep_kilns_memory_and_descriptors_flat() {
    const BUILDS: usize = 30;
    let sshd = Sshd::start();
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("files")).unwrap();
    std::fs::write(p.path().join("files/payload.bin"), noise(1 << 20, 17)).unwrap();
    let remote = p.remote.path().display().to_string();
    let script = r#"
source("box", ssh_host(#{ host: "127.0.0.1", ssh: {SSH} }));
for i in 0..BUILDS {
    build(`b${i}`, #{ sources: ["box"], steps: [
        shell([`echo build ${i} > REMOTE/out-${i}`, "uname -a"]),
        file("files/payload.bin", `REMOTE/payload-${i}.bin`),
        step(|m| {
            let f = m.facts();
            m.exec("true");
            m.download("REMOTE/out-0", "downloads/out.txt");
        }, #{ allow: #{ write: ["downloads"] } }),
        shell([`touch REMOTE/ready-${i}`, `while [ ! -e REMOTE/sampled-${i} ]; do sleep 0.05; done`]),
    ] });
}
"#
    .replace("REMOTE", &remote)
    .replace("BUILDS", &BUILDS.to_string());
    p.script(&sshd, &script);
    let mut child = kiln_cmd(p.path(), &["build", "--parallel-builds", "1", "."])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    let mut samples: BTreeMap<usize, (u64, usize)> = BTreeMap::new();
    let mut order = Vec::new();
    let t = Instant::now();
    while samples.len() < BUILDS {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!(
                "kiln exited ({status}) after {} builds\n{}\n{err}",
                samples.len(),
                log.join().unwrap()
            );
        }
        assert!(
            t.elapsed() < PATIENCE * 5,
            "30 builds did not finish: {} sampled",
            samples.len()
        );
        let ready = (0..BUILDS).find(|i| {
            !samples.contains_key(i) && p.remote.path().join(format!("ready-{i}")).exists()
        });
        match ready {
            Some(i) => {
                samples.insert(i, rss_and_fds(pid));
                order.push(i);
                std::fs::write(p.remote.path().join(format!("sampled-{i}")), "").unwrap();
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let status = child.wait().unwrap();
    let all = log.join().unwrap();
    assert!(status.success(), "{all}");
    assert_eq!(all.matches("Build finished").count(), BUILDS, "{all}");
    let series: Vec<(u64, usize)> = order.iter().map(|i| samples[i]).collect();
    eprintln!("kiln RSS KiB / fds per build: {series:?}");
    // With `--parallel-builds 1` builds run in plan order (build i reads what build 0
    // wrote). Before the permit was taken ahead of the spawn, tokio's scheduling once
    // started build 15 first.
    assert_eq!(
        order,
        (0..BUILDS).collect::<Vec<_>>(),
        "builds ran out of plan order"
    );
    // Warm-up: the first builds fill caches (the WASM engine, the Rhai engine, TLS of
    // the blocking threads); from then on nothing may grow per build.
    let settled = &series[5..];
    let (rss0, fd0) = settled[0];
    let (rss_max, fd_max) = settled
        .iter()
        .fold((0, 0), |(r, f), &(r2, f2)| (r.max(r2), f.max(f2)));
    let fd_min = settled.iter().map(|s| s.1).min().unwrap();
    assert!(
        fd_max - fd_min <= 2,
        "open descriptors grew from {fd0} to {fd_max} over {} builds: {series:?}",
        settled.len()
    );
    // A leak of one upload buffer (1 MiB) per build would add 25 MiB.
    assert!(
        rss_max < rss0 + 8 * 1024,
        "RSS grew from {rss0} KiB to {rss_max} KiB over {} builds: {series:?}",
        settled.len()
    );
}
