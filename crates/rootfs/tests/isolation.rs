//! What the container cannot reach: the host's filesystem through symlinks, the host's
//! network (unless granted), the host's mount table; and what happens when its owner dies.
// Test fixtures pass pids to syscalls and make bytes by truncation; fine here.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{busybox, init, run, sh, start};
use kiln_rootfs::testkit::{
    FAKE_SHADOW, Proc, eventually, host_mounts_mentioning, namespace_of, processes_in, procs_in,
};
use kiln_rootfs::{Container, Error, ExecRequest, InitProgram, Network};

#[tokio::test]
async fn symlinks_to_host_paths_resolve_inside_the_container() {
    let l = busybox();
    let root = &l.lower[0];
    std::os::unix::fs::symlink("/etc/shadow", root.join("abs-shadow")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/shadow", root.join("tmp/rel-shadow"))
        .unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
    std::os::unix::fs::symlink("/proc/1/root/etc/shadow", root.join("proc-shadow")).unwrap();
    let host_shadow = std::fs::read("/etc/shadow").unwrap();

    let c = start(l.config(init())).await;
    for p in [
        "/abs-shadow",
        "/tmp/rel-shadow",
        "/etc-link/shadow",
        "/proc-shadow",
    ] {
        assert_eq!(
            c.read_file(p, 4096).await.unwrap(),
            FAKE_SHADOW.as_bytes(),
            "{p} must read the image's /etc/shadow"
        );
    }
    c.write_file("/abs-shadow", b"written through a link\n", None)
        .await
        .unwrap();
    let mut reader: &[u8] = b"streamed through a link\n";
    c.upload_reader(&mut reader, "/tmp/rel-shadow", None, &|_| {})
        .await
        .unwrap();
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("f"), b"tree").unwrap();
    c.upload_tree(
        std::fs::File::open(t.path()).unwrap(),
        "/etc-link/kiln-tree",
        &|_| {},
    )
    .await
    .unwrap();
    let got = c.read_file("/etc/shadow", 4096).await.unwrap();
    assert_eq!(got, b"streamed through a link\n");
    assert_eq!(run(&c, "cat /etc/kiln-tree/f").await, "tree");
    let dl = tempfile::tempfile().unwrap();
    c.download_file("/abs-shadow", dl, &|_| {}).await.unwrap();
    c.stop().await.unwrap();

    assert_eq!(
        std::fs::read("/etc/shadow").unwrap(),
        host_shadow,
        "the host's /etc/shadow changed"
    );
    assert!(!std::path::Path::new("/etc/kiln-tree").exists());
    // The writes went to the layer, not to the image and not to the host.
    assert_eq!(
        std::fs::read(l.upper.join("etc/shadow")).unwrap(),
        b"streamed through a link\n"
    );
    assert_eq!(
        std::fs::read(l.lower[0].join("etc/shadow")).unwrap(),
        FAKE_SHADOW.as_bytes()
    );
}

#[tokio::test]
async fn nothing_is_mounted_on_the_host() {
    let l = busybox();
    let needle = l.root().display().to_string();
    assert_eq!(host_mounts_mentioning(&needle), Vec::<String>::new());
    let c = start(l.config(init())).await;
    // Inside, the overlay is the root...
    let inside = run(&c, "cat /proc/self/mountinfo").await;
    assert!(inside.contains(&needle), "{inside}");
    // ...while the host's mount table never sees it, not even while it runs.
    assert_eq!(host_mounts_mentioning(&needle), Vec::<String>::new());
    let mnt = namespace_of(c.host_pid(), "mnt").unwrap();
    assert_ne!(
        mnt,
        namespace_of(std::process::id().cast_signed(), "mnt").unwrap()
    );
    let members = procs_in("mnt", &mnt);
    assert!(members.len() >= 2, "the outer init and pid 1: {members:?}");
    c.stop().await.unwrap();
    assert_eq!(host_mounts_mentioning(&needle), Vec::<String>::new());
    assert_eq!(
        members.iter().filter(|p| p.is_alive()).count(),
        0,
        "the mount namespace is gone"
    );
}

fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a port on 127.0.0.1");
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    (l, port)
}

/// Accepts one connection within `limit` and returns the first line it sends.
fn accept_line(l: &TcpListener, limit: Duration) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < limit {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).ok()?;
                let _ = (&s).write_all(b"bye\n");
                return Some(line);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(_) => return None,
        }
    }
    None
}

#[tokio::test]
async fn no_network_unless_granted() {
    let (l_tcp, port) = listener();
    let l = busybox();
    let c = start(l.config(init())).await;
    let devs = run(&c, "grep : /proc/net/dev | cut -d: -f1 | tr -d ' '").await;
    assert_eq!(devs, "lo\n", "only a loopback interface");
    let out = sh(&c, &format!("echo hi | nc -w 5 127.0.0.1 {port}")).await;
    assert!(!out.success(), "the host's 127.0.0.1 must be unreachable");
    assert!(accept_line(&l_tcp, Duration::from_millis(200)).is_none());
    // Loopback inside works (a step may run its own local server).
    let out = sh(
        &c,
        "nc -l -p 8123 > /tmp/got & sleep 0.3; echo ping | nc -w 5 127.0.0.1 8123; sleep 0.3; cat /tmp/got",
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ping");
    assert!(!c.has_dns());
    c.stop().await.unwrap();
}

#[tokio::test]
async fn granted_network_reaches_the_host() {
    let (l_tcp, port) = listener();
    let accepted = std::thread::spawn(move || accept_line(&l_tcp, Duration::from_secs(120)));
    let l = busybox();
    let mut cfg = l.config(init());
    cfg.network = Network::Host;
    let c = start(cfg).await;
    let out = sh(
        &c,
        &format!("echo hello-from-the-step | nc -w 60 127.0.0.1 {port}"),
    )
    .await;
    assert_eq!(
        accepted.join().unwrap().as_deref(),
        Some("hello-from-the-step\n"),
        "nc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bye\n");
    if let Ok(host) = std::fs::read("/etc/resolv.conf") {
        assert!(c.has_dns());
        assert_eq!(c.read_file("/etc/resolv.conf", 65536).await.unwrap(), host);
        // Read-only: a step cannot change the host's DNS settings.
        assert!(
            !sh(&c, "echo nameserver 6.6.6.6 >> /etc/resolv.conf")
                .await
                .success()
        );
    }
    c.stop().await.unwrap();
    // The bound resolv.conf was created for the bind only: not part of the layer.
    assert!(!l.upper.join("etc/resolv.conf").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_do_not_interfere() {
    let (la, lb) = (busybox(), busybox());
    let mut ca = la.config(init());
    ca.hostname = "alpha".into();
    let mut cb = lb.config(init());
    cb.hostname = "beta".into();
    let (a, b) = tokio::join!(start(ca), start(cb));
    let (ra, rb) = tokio::join!(
        run(&a, "echo A > /tmp/who; sleep 0.2; cat /tmp/who; hostname"),
        run(
            &b,
            "echo B > /tmp/who; sleep 0.2; cat /tmp/who; hostname; sleep 1000 &"
        ),
    );
    assert_eq!((ra.as_str(), rb.as_str()), ("A\nalpha\n", "B\nbeta\n"));
    assert_ne!(
        namespace_of(a.host_pid(), "pid").unwrap(),
        namespace_of(b.host_pid(), "pid").unwrap()
    );
    // Each sees only its own processes: B's background sleep is invisible to A.
    assert_eq!(
        run(&b, "cat /proc/[0-9]*/comm | grep -c sleep").await,
        "1\n"
    );
    let out = sh(&a, "cat /proc/[0-9]*/comm | grep -c sleep").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");
    a.stop().await.unwrap();
    assert_eq!(run(&b, "cat /tmp/who").await, "B\n");
    b.stop().await.unwrap();
    assert_eq!(std::fs::read(la.upper.join("tmp/who")).unwrap(), b"A\n");
    assert_eq!(std::fs::read(lb.upper.join("tmp/who")).unwrap(), b"B\n");
}

#[tokio::test]
async fn facts_describe_the_image() {
    let l = busybox();
    let mut cfg = l.config(init());
    cfg.hostname = "facts-host".into();
    let c = start(cfg).await;
    let f = c.facts().await.unwrap();
    assert_eq!(f["os_id"], "kiln-busybox");
    assert_eq!(f["os_version"], "1.35");
    assert_eq!(f["os_name"], "kiln busybox test image");
    assert_eq!(f["hostname"], "facts-host");
    assert_eq!(f["user"], "root");
    assert_eq!(format!("{}\n", f["arch"]), run(&c, "uname -m").await);
    assert_eq!(format!("{}\n", f["kernel"]), run(&c, "uname -r").await);
    c.stop().await.unwrap();
}

#[tokio::test]
async fn start_failures_are_typed_and_say_what_to_fix() {
    // The overlay refuses a work directory on another filesystem than the upper one.
    let l = busybox();
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let mut cfg = l.config(init());
    cfg.work = shm.path().to_path_buf();
    match Container::start(cfg).await {
        Err(Error::Mount { options, errno, .. }) => {
            assert!(
                options.contains("upperdir=") && options.contains("workdir="),
                "{options}"
            );
            assert!(errno.is_some());
        }
        other => panic!("expected a mount error, got {other:?}"),
    }
    assert_eq!(
        host_mounts_mentioning(&l.root().display().to_string()),
        Vec::<String>::new()
    );

    // Missing lower directory: refused before anything starts.
    let mut cfg = l.config(init());
    cfg.lower.push("/nonexistent/kiln-layer".into());
    assert!(matches!(Container::start(cfg).await, Err(Error::Config(_))));

    // An init program that does not exist, and one that is not kiln's init.
    let cfg = l.config(InitProgram::new("/nonexistent/kiln"));
    assert!(matches!(
        Container::start(cfg).await,
        Err(Error::InitSpawn { .. })
    ));
    let cfg = l.config(InitProgram::new("/bin/true"));
    assert!(matches!(
        Container::start(cfg).await,
        Err(Error::ContainerDied { .. })
    ));

    // Without privileges (an unprivileged user, as setpriv(1) makes it), unshare fails and
    // the error says what is needed.
    let mut unprivileged = InitProgram::new("/usr/bin/setpriv");
    for a in [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ] {
        unprivileged = unprivileged.arg(a);
    }
    let cfg = l.config(unprivileged.arg(env!("CARGO_BIN_EXE_kiln-rootfs-init")));
    match Container::start(cfg).await {
        Err(e @ Error::Namespaces { .. }) => {
            let text = e.to_string();
            assert!(text.contains("EPERM") && text.contains("root"), "{text}");
        }
        other => panic!("expected a namespace error, got {other:?}"),
    }

    // The init refuses to run by hand.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-rootfs-init"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("internal"));
}

const HOLDER_ENV: &str = "KILN_ROOTFS_HOLDER_LAYERS";

/// Not a test on its own: the process `the_owner_dying_takes_the_container_along` starts
/// and SIGKILLs. It starts a container with a sleeping process and reports the pids.
#[test]
#[ignore = "helper process for the_owner_dying_takes_the_container_along"]
fn holder() {
    let Ok(spec) = std::env::var(HOLDER_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg =
            kiln_rootfs::ContainerConfig::new(init(), vec![parts[0].into()], parts[1], parts[2]);
        let c = Container::start(cfg).await.unwrap();
        let out = c
            .exec(&ExecRequest::new("sleep 1000 & echo $!"), &mut |_, _| {})
            .await
            .unwrap();
        assert!(out.success());
        let pid1 = c.host_pid();
        let pidns = namespace_of(pid1, "pid").unwrap();
        let mntns = namespace_of(pid1, "mnt").unwrap();
        let sleeper = processes_in("pid", &pidns)
            .into_iter()
            .find(|p| *p != pid1)
            .unwrap();
        println!(
            "READY {} {} {} {} {}",
            c.init_pid(),
            pid1,
            sleeper,
            pidns,
            mntns
        );
        std::io::stdout().flush().unwrap();
        std::future::pending::<()>().await;
    });
}

#[tokio::test]
async fn the_owner_dying_takes_the_container_along() {
    let l = busybox();
    let spec = format!(
        "{}|{}|{}",
        l.lower[0].display(),
        l.upper.display(),
        l.work.display()
    );
    let mut holder = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "holder",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_ENV, spec)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the holder on any early return (a failed assertion included).
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = holder.stdout.take().unwrap();
    let holder = Reap(holder);
    let ready = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines() {
            // libtest prints "test holder ... " before the line, without a newline.
            let line = line.ok()?;
            if let Some(at) = line.find("READY ") {
                return Some(line[at + 6..].to_string());
            }
        }
        None
    });
    let ready = tokio::time::timeout(Duration::from_secs(120), ready)
        .await
        .expect("the holder did not report within 120 s")
        .unwrap()
        .expect("the holder exited without starting its container");
    let f: Vec<&str> = ready.split(' ').collect();
    let (init_pid, pid1, sleeper): (i32, i32, i32) = (
        f[0].parse().unwrap(),
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
    );
    let (pidns, mntns) = (f[3].to_string(), f[4].to_string());
    // Everything in the container's namespaces, taken while they surely exist.
    let mut procs: Vec<Proc> = [init_pid, pid1, sleeper]
        .into_iter()
        .filter_map(Proc::of)
        .collect();
    assert_eq!(procs.len(), 3, "init, pid 1 and the sleep are running");
    procs.extend(procs_in("pid", &pidns));
    procs.extend(procs_in("mnt", &mntns));

    let mut holder = holder;
    holder.0.kill().unwrap(); // SIGKILL: no destructor, no stop()
    holder.0.wait().unwrap();

    assert!(
        eventually(Duration::from_secs(60), || procs
            .iter()
            .all(|p| !p.is_alive()))
        .await,
        "the container outlived its owner: {:?}",
        procs.iter().filter(|p| p.is_alive()).collect::<Vec<_>>()
    );
    assert_eq!(
        host_mounts_mentioning(&l.root().display().to_string()),
        Vec::<String>::new()
    );
}
