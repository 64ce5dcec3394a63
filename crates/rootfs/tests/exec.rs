//! Running commands: streaming, exit codes, signals, environment, users, cancellation.
// Test fixtures pass pids to syscalls and make bytes by truncation; fine here.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

use std::time::Duration;

use common::{busybox, init, run, sh, start};
use kiln_rootfs::testkit::{Proc, eventually, namespace_of, processes_in, procs_in};
use kiln_rootfs::{Error, ExecEvent, ExecRequest, Stream};

#[tokio::test]
async fn output_streams_while_the_command_runs() {
    let l = busybox();
    let c = start(l.config(init())).await;
    // The command waits for a file that the test only writes after it saw the first line:
    // that line must arrive while the command is still running.
    let mut ex = c
        .start_exec(&ExecRequest::new(
            "echo first; echo to-stderr >&2; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo second",
        ))
        .await
        .unwrap();
    let mut stdout = Vec::new();
    let mut saw_stderr = false;
    while !String::from_utf8_lossy(&stdout).contains("first\n") {
        match ex.next().await.unwrap() {
            ExecEvent::Output(Stream::Stdout, d) => stdout.extend(d),
            ExecEvent::Output(Stream::Stderr, d) => {
                saw_stderr |= String::from_utf8_lossy(&d).contains("to-stderr")
            }
            ExecEvent::Exit(..) => panic!("exited before the test released it"),
        }
    }
    c.write_file("/tmp/go", b"", None).await.unwrap();
    let out = ex
        .wait(&mut |s, d| {
            if s == Stream::Stderr && String::from_utf8_lossy(d).contains("to-stderr") {
                saw_stderr = true;
            }
        })
        .await
        .unwrap();
    assert!(out.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "second\n");
    assert!(saw_stderr, "stderr was streamed");
    c.stop().await.unwrap();
}

#[tokio::test]
async fn exit_codes_and_killing_signals_are_reported() {
    let l = busybox();
    let c = start(l.config(init())).await;
    let out = sh(&c, "echo out; echo err >&2; exit 3").await;
    assert_eq!((out.exit_code, out.signal.as_deref()), (3, None));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert!(!out.success());

    let out = sh(&c, "kill -KILL $$").await;
    assert_eq!((out.exit_code, out.signal.as_deref()), (-1, Some("KILL")));
    let out = sh(&c, "kill -TERM $$").await;
    assert_eq!((out.exit_code, out.signal.as_deref()), (-1, Some("TERM")));
    // Not found in PATH: the shell's 127, as over SSH.
    assert_eq!(sh(&c, "no-such-command").await.exit_code, 127);

    // Output larger than a pipe buffer and than one frame, in order.
    let out = sh(&c, "seq 1 300000").await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 300000);
    assert!(text.lines().zip(1..).all(|(l, i)| l == i.to_string()));
    c.stop().await.unwrap();
}

#[tokio::test]
async fn the_environment_is_exactly_what_was_passed() {
    let l = busybox();
    let mut cfg = l.config(init());
    cfg.env = vec![("BASE".into(), "b".into()), ("OVER".into(), "base".into())];
    cfg.hostname = "step-7".into();
    let c = start(cfg).await;
    // The shell's environment as it was executed (the shell adds PWD, SHLVL, PATH itself).
    let req = ExecRequest::new("cat /proc/$$/environ | tr '\\0' '\\n'")
        .env("A", "it's $HOME")
        .env("OVER", "request");
    let out = c.exec(&req, &mut |_, _| {}).await.unwrap();
    assert!(out.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut vars: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    vars.sort();
    assert_eq!(vars, ["A=it's $HOME", "BASE=b", "OVER=request"]);
    assert_eq!(run(&c, "hostname").await, "step-7\n");
    // Commands run from / unless told otherwise.
    assert_eq!(run(&c, "pwd").await, "/\n");
    let out = c
        .exec(&ExecRequest::new("pwd").cwd("/tmp"), &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(out.stdout, b"/tmp\n");
    c.stop().await.unwrap();
}

#[tokio::test]
async fn commands_run_as_the_requested_user() {
    let l = busybox();
    let c = start(l.config(init())).await;
    let as_builder = ExecRequest::new("id -u; id -g; id -G").user("builder");
    let out = c.exec(&as_builder, &mut |_, _| {}).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1000\n1000\n1000 10\n"
    );
    let out = c
        .exec(
            &ExecRequest::new("id -u; id -g").user("4242:77"),
            &mut |_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "4242\n77\n");
    // root keeps only a build's capabilities (Docker's defaults minus MKNOD and NET_RAW):
    // no mounting, no raw devices, nothing to pass on.
    let caps = run(&c, "grep -E '^Cap(Inh|Eff|Bnd|Amb)' /proc/self/status").await;
    assert_eq!(
        caps,
        "CapInh:\t0000000000000000\nCapEff:\t00000000a00405fb\nCapBnd:\t00000000a00405fb\nCapAmb:\t0000000000000000\n"
    );
    let out = sh(&c, "mount -t tmpfs none /mnt 2>&1 || mknod /tmp/sda b 8 0").await;
    assert!(!out.success(), "a step must not mount or create devices");
    match c
        .exec(
            &ExecRequest::new("true").user("nobody-here"),
            &mut |_, _| {},
        )
        .await
    {
        Err(Error::ExecStart { reason, .. }) => assert!(reason.contains("/etc/passwd"), "{reason}"),
        other => panic!("expected ExecStart, got {other:?}"),
    }
    match c
        .exec(
            &ExecRequest::new("true").cwd("/does/not/exist"),
            &mut |_, _| {},
        )
        .await
    {
        Err(Error::ExecStart { reason, .. }) => {
            assert!(reason.contains("/does/not/exist"), "{reason}")
        }
        other => panic!("expected ExecStart, got {other:?}"),
    }
    c.stop().await.unwrap();
}

#[tokio::test]
async fn a_cancelled_or_timed_out_command_leaves_no_process() {
    let l = busybox();
    let c = start(l.config(init())).await;
    let ns = namespace_of(c.host_pid(), "pid").unwrap();

    // The caller's timeout drops the exec: its whole process group is killed.
    let req = ExecRequest::new("sleep 1000 & sleep 1000; wait");
    let mut ignore = |_: Stream, _: &[u8]| {};
    let slow = c.exec(&req, &mut ignore);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), slow)
            .await
            .is_err()
    );
    assert!(
        eventually(Duration::from_secs(60), || processes_in("pid", &ns)
            == [c.host_pid()])
        .await,
        "after the timeout only the init may remain, got {:?}",
        processes_in("pid", &ns)
    );

    // An explicit cancel reports the kill.
    let ex = c.start_exec(&ExecRequest::new("sleep 1000")).await.unwrap();
    ex.cancel();
    let out = ex.wait(&mut |_, _| {}).await.unwrap();
    assert_eq!(out.signal.as_deref(), Some("KILL"));
    // The container is still usable.
    assert_eq!(run(&c, "echo still here").await, "still here\n");
    c.stop().await.unwrap();
}

#[tokio::test]
async fn background_processes_die_with_the_container() {
    let l = busybox();
    let c = start(l.config(init())).await;
    let pid1 = c.host_pid();
    let ns = namespace_of(pid1, "pid").unwrap();
    // The step returns although `sleep` keeps running (and holds stdout open).
    let out = sh(&c, "sleep 1000 & echo started").await;
    assert_eq!(out.stdout, b"started\n");
    let is_sleep = |p: &i32| {
        std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
    };
    // Until the forked shell has exec'd sleep, it is still called sh.
    assert!(
        eventually(Duration::from_secs(60), || {
            let others: Vec<i32> = processes_in("pid", &ns)
                .into_iter()
                .filter(|p| *p != pid1)
                .collect();
            others.len() == 1 && is_sleep(&others[0])
        })
        .await,
        "expected one background sleep besides pid 1, got {:?}",
        processes_in("pid", &ns)
    );
    let procs = procs_in("pid", &ns);
    assert_eq!(procs.len(), 2);
    let init = Proc::of(c.init_pid() as i32).unwrap();

    c.stop().await.unwrap();
    // stop returns only after the namespace is reaped: no polling needed.
    for p in procs.iter().chain([&init]) {
        assert!(!p.is_alive(), "{p:?} survived stop");
    }
    assert!(matches!(
        c.exec(&ExecRequest::new("true"), &mut |_, _| {}).await,
        Err(Error::Stopped)
    ));
    c.stop().await.unwrap(); // idempotent
}

#[tokio::test]
async fn stop_ends_a_running_command() {
    let l = busybox();
    let c = start(l.config(init())).await;
    let ex = c.start_exec(&ExecRequest::new("sleep 1000")).await.unwrap();
    let mut ignore = |_: Stream, _: &[u8]| {};
    let (waited, stopped) = tokio::join!(ex.wait(&mut ignore), c.stop());
    stopped.unwrap();
    assert!(matches!(waited, Err(Error::Stopped)), "{waited:?}");
}

#[tokio::test]
async fn a_dropped_container_takes_its_processes_along() {
    let l = busybox();
    let c = start(l.config(init())).await;
    let ns = namespace_of(c.host_pid(), "pid").unwrap();
    sh(&c, "sleep 1000 &").await;
    let mut procs = procs_in("pid", &ns);
    procs.extend(Proc::of(c.init_pid() as i32));
    assert!(procs.len() >= 3);
    drop(c);
    assert!(
        eventually(Duration::from_secs(60), || procs
            .iter()
            .all(|p| !p.is_alive()))
        .await,
        "processes left after drop: {:?}",
        procs.iter().filter(|p| p.is_alive()).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_commands_at_once() {
    let l = busybox();
    let c = std::sync::Arc::new(start(l.config(init())).await);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..16 {
        let c = c.clone();
        set.spawn(async move {
            let out = sh(&c, &format!("sleep 0.$(( {i} % 3 )); echo {i}")).await;
            assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{i}\n"));
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    c.stop().await.unwrap();
}
