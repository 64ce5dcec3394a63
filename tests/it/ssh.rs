//! The SSH communicator against a real OpenSSH sshd on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use kiln::host::ssh::{
    BastionConfig, ConnectOptions, KeyFiles, Session, SshConfig, SshError, Stream,
};

use crate::peers::sshd::{PASSWORD, PASSWORD_USER, Sshd, SshdOptions};

fn project(sshd: &Sshd) -> Dir {
    Dir::open_ambient_dir(sshd.dir.path(), ambient_authority()).expect("open peer dir")
}

fn cfg(sshd: &Sshd) -> SshConfig {
    SshConfig {
        host: Some("127.0.0.1".into()),
        port: Some(sshd.port),
        user: sshd.user.clone(),
        private_key_file: Some("id_ed25519".into()),
        host_key: Some(sshd.host_key_fingerprint.clone()),
        timeout: Some("20s".into()),
        ..Default::default()
    }
}

async fn connect(sshd: &Sshd, c: &SshConfig) -> Result<Session, SshError> {
    let files = KeyFiles::read_beneath(c, &project(sshd))?;
    Session::connect(c, &files, &ConnectOptions::default()).await
}

async fn run(s: &Session, cmd: &str) -> String {
    let out = s.exec(cmd, &[], &mut |_, _| {}).await.expect("exec");
    assert_eq!(
        out.exit_code,
        0,
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

fn other_key(sshd: &Sshd, name: &str) {
    sshd.run(&format!(
        "ssh-keygen -q -t ed25519 -N '' -f {}/{name}",
        sshd.dir.path().display()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_auth_ed25519_ecdsa_rsa() {
    let sshd = Sshd::start_with(SshdOptions {
        extra_key_types: true,
        ..Default::default()
    });
    for key in ["id_ed25519", "id_ecdsa", "id_rsa"] {
        let mut c = cfg(&sshd);
        c.private_key_file = Some(key.into());
        let s = connect(&sshd, &c)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}\n{}", sshd.log()));
        assert_eq!(run(&s, "echo ok").await, "ok\n", "{key}");
        assert_eq!(s.host_key_fingerprint(), sshd.host_key_fingerprint);
        s.close().await;
    }
    // rsa-sha2 was used, not the SHA-1 "ssh-rsa" signature.
    assert!(
        sshd.log()
            .contains("Accepted publickey for root from 127.0.0.1")
            && sshd.log().contains("RSA")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth() {
    let sshd = Sshd::start_with(SshdOptions {
        password_auth: true,
        ..Default::default()
    });
    let c = SshConfig {
        user: PASSWORD_USER.into(),
        private_key_file: None,
        password: Some(PASSWORD.into()),
        ..cfg(&sshd)
    };
    let s = connect(&sshd, &c)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
    assert_eq!(run(&s, "id -un").await.trim(), PASSWORD_USER);
    // A wrong password is rejected, and the message says which methods were tried. OpenSSH's
    // PAM answers a wrong password after ~2 s: with a 1 s timeout that slow answer must still
    // be reported as a rejection, not as a stalled handshake.
    let bad = SshConfig {
        password: Some("wrong".into()),
        timeout: Some("1s".into()),
        ..c.clone()
    };
    let err = connect(&sshd, &bad).await.unwrap_err().to_string();
    assert!(
        err.contains("authentication rejected") && err.contains("password"),
        "{err}"
    );
    assert!(!err.contains("stalled"), "{err}");
    assert!(
        !err.contains("wrong"),
        "password leaked into the error: {err}"
    );
    // With time to spare, kiln stops after `handshake_attempts` rejections instead of
    // retrying until `timeout` (which would trip fail2ban or an account lockout).
    let failed_before = sshd.log().matches("Failed password").count();
    let capped = SshConfig {
        password: Some("wrong".into()),
        timeout: Some("10m".into()),
        handshake_attempts: Some(2),
        ..c
    };
    let err = connect(&sshd, &capped).await.unwrap_err().to_string();
    assert!(
        err.contains("authentication rejected (password) 2 times"),
        "{err}"
    );
    assert!(
        !err.contains("wrong"),
        "password leaked into the error: {err}"
    );
    let failed_logins = sshd.log().matches("Failed password").count() - failed_before;
    assert!(
        (1..=2).contains(&failed_logins),
        "expected at most 2 failed logins (the cap), the server logged {failed_logins}:\n{}",
        sshd.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_host_key_is_refused_at_once_naming_both() {
    let sshd = Sshd::start();
    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let c = SshConfig {
        host_key: Some(wrong.into()),
        timeout: Some("60s".into()),
        ..cfg(&sshd)
    };
    let err = connect(&sshd, &c).await.unwrap_err();
    // Not retried: a retried mismatch would end as GaveUp after the 60 s timeout.
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(wrong) && msg.contains(&sshd.host_key_fingerprint),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_hosts_accepted_and_mismatch_refused() {
    let sshd = Sshd::start();
    let c = SshConfig {
        host_key: None,
        known_hosts: Some("known_hosts".into()),
        ..cfg(&sshd)
    };
    let s = connect(&sshd, &c)
        .await
        .expect("known_hosts entry accepted");
    assert_eq!(run(&s, "echo ok").await, "ok\n");

    other_key(&sshd, "other_host_key");
    let other = sshd.run(&format!(
        "cut -d' ' -f1-2 {}/other_host_key.pub",
        sshd.dir.path().display()
    ));
    std::fs::write(
        sshd.dir.path().join("bad_known_hosts"),
        format!("# stale entry\n[127.0.0.1]:{} {other}", sshd.port),
    )
    .unwrap();
    let bad = SshConfig {
        known_hosts: Some("bad_known_hosts".into()),
        ..c.clone()
    };
    let err = connect(&sshd, &bad).await.unwrap_err();
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&sshd.host_key_fingerprint),
        "{err}"
    );

    // A known_hosts without this host says how to add it.
    std::fs::write(sshd.dir.path().join("empty_known_hosts"), "").unwrap();
    let unknown = SshConfig {
        known_hosts: Some("empty_known_hosts".into()),
        ..c
    };
    let err = connect(&sshd, &unknown).await.unwrap_err().to_string();
    assert!(err.contains("ssh-keyscan"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_host_key_config_is_refused_with_guidance_unless_tofu() {
    let sshd = Sshd::start();
    let c = SshConfig {
        host_key: None,
        ..cfg(&sshd)
    };
    let err = connect(&sshd, &c).await.unwrap_err();
    assert!(
        matches!(err, SshError::NoHostKeyVerification { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("host_key") && msg.contains("known_hosts"),
        "{msg}"
    );

    let opts = ConnectOptions {
        trust_on_first_use: true,
        ..Default::default()
    };
    let files = KeyFiles::read_beneath(&c, &project(&sshd)).expect("key files");
    let s = Session::connect(&c, &files, &opts).await.expect("tofu");
    assert_eq!(s.host_key_fingerprint(), sshd.host_key_fingerprint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_fails_within_timeout_saying_refused() {
    let sshd = Sshd::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = SshConfig {
        port: Some(port),
        timeout: Some("2s".into()),
        ..cfg(&sshd)
    };
    let t = Instant::now();
    let err = connect(&sshd, &c).await.unwrap_err();
    let took = t.elapsed();
    // Retried until the 2 s timeout (a loaded machine only makes that later), then
    // given up with the last answer: the default 5 minutes were not used.
    match &err {
        SshError::GaveUp { attempts, last, .. } => {
            assert!(*attempts >= 2, "not retried: {err}");
            assert!(
                matches!(**last, SshError::ConnectionRefused { .. }),
                "{err:?}"
            );
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    assert!(took >= Duration::from_millis(1500), "took {took:?}");
    assert!(took < Duration::from_secs(120), "took {took:?}");
    assert!(err.to_string().contains("connection refused"), "{err}");
}

/// What QEMU's user networking looks like while the guest boots: the host port accepts
/// at once, then nothing is said on connections made before the guest's sshd is up.
/// kiln must drop a silent connection and dial again, not wait on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_port_is_redialled_until_the_server_answers() {
    const SILENT: usize = 3;
    let sshd = Sshd::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = sshd.port;
    // The first SILENT connections are accepted and never answered; the proxy counts
    // the ones kiln itself closed.
    let closed_by_kiln = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let closed = closed_by_kiln.clone();
    let proxy = tokio::spawn(async move {
        let mut accepted = 0;
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            accepted += 1;
            if accepted <= SILENT {
                let closed = closed.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 256];
                    // Whatever kiln sends, we never answer; EOF means it hung up.
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            break;
                        }
                    }
                });
                continue;
            }
            tokio::spawn(async move {
                let mut up = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
            });
        }
    });
    // One attempt that waited on a silent banner for its whole 20 s would spend
    // this timeout on the first three connections.
    let c = SshConfig {
        port: Some(port),
        timeout: Some("60s".into()),
        ..cfg(&sshd)
    };
    let s = connect(&sshd, &c).await.expect("connect through the proxy");
    assert_eq!(run(&s, "echo ok").await.trim(), "ok");
    proxy.abort();
    let t = Instant::now();
    while closed_by_kiln.load(std::sync::atomic::Ordering::SeqCst) < SILENT {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "kiln did not hang up on the silent connections"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_rejected_within_timeout_says_so() {
    let sshd = Sshd::start();
    other_key(&sshd, "unauthorized");
    let c = SshConfig {
        private_key_file: Some("unauthorized".into()),
        timeout: Some("2s".into()),
        ..cfg(&sshd)
    };
    let t = Instant::now();
    let err = connect(&sshd, &c).await.unwrap_err();
    // Within the 2 s timeout plus the attempt in flight, not the default 5 minutes.
    assert!(
        t.elapsed() < Duration::from_secs(120),
        "took {:?}",
        t.elapsed()
    );
    let msg = err.to_string();
    assert!(
        msg.contains("authentication rejected") && msg.contains("publickey"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_lines_in_order_with_exit_code_and_stderr() {
    let sshd = Sshd::start();
    let s = connect(&sshd, &cfg(&sshd)).await.expect("connect");
    // The command goes on only once the test has seen its first line: if output were
    // delivered at the end, it would give up waiting and exit 9 instead of 3.
    let flag = sshd.dir.path().join("seen-one");
    let cmd = format!(
        "echo one; i=0; while [ ! -e {f} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; \
         [ -e {f} ] || exit 9; echo two; echo oops >&2; printf 'no newline'; exit 3",
        f = flag.display()
    );
    let seen: Arc<Mutex<Vec<(Stream, String)>>> = Arc::default();
    let seen2 = seen.clone();
    let out = s
        .exec(&cmd, &[], &mut move |st, data: &[u8]| {
            let text = String::from_utf8_lossy(data).into_owned();
            if st == Stream::Stdout && text.contains("one") {
                std::fs::write(&flag, "").expect("flag");
            }
            seen2.lock().unwrap().push((st, text))
        })
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 3, "the first line was not streamed: {out:?}");
    assert_eq!(out.signal, None);
    assert_eq!(out.stdout, b"one\ntwo\nno newline");
    assert_eq!(out.stderr, b"oops\n");
    let seen = seen.lock().unwrap();
    // Output is handed on raw, as it arrives (the machine facade splits lines).
    let stdout: String = seen
        .iter()
        .filter(|x| x.0 == Stream::Stdout)
        .map(|x| x.1.as_str())
        .collect();
    assert_eq!(stdout, "one\ntwo\nno newline");
    let stderr: String = seen
        .iter()
        .filter(|x| x.0 == Stream::Stderr)
        .map(|x| x.1.as_str())
        .collect();
    assert_eq!(stderr, "oops\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reports_signals_and_env_survives_quoting() {
    let sshd = Sshd::start();
    let s = connect(&sshd, &cfg(&sshd)).await.expect("connect");
    let out = s
        .exec("kill -TERM $$", &[], &mut |_, _| {})
        .await
        .expect("exec");
    assert_eq!((out.exit_code, out.signal.as_deref()), (-1, Some("TERM")));

    let tricky = "it's a \"test\" with $HOME, `date`, \\ and  two spaces ";
    let env = vec![
        ("KILN_V".to_string(), tricky.to_string()),
        ("EMPTY".into(), String::new()),
    ];
    let out = s
        .exec(
            "printf '%s|%s' \"$KILN_V\" \"$EMPTY\"",
            &env,
            &mut |_, _| {},
        )
        .await
        .expect("exec");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{tricky}|"));
    let bad = s
        .exec("true", &[("A B".into(), "x".into())], &mut |_, _| {})
        .await;
    assert!(bad.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_file_content_and_mode() {
    let sshd = Sshd::start();
    let s = connect(&sshd, &cfg(&sshd)).await.expect("connect");
    let local = sshd.dir.path().join("payload.bin");
    sshd.run(&format!(
        "head -c 3000000 /dev/urandom > {}",
        local.display()
    ));
    let file = project(&sshd).open("payload.bin").unwrap();
    let remote = sshd.dir.path().join("remote dir/payload copy.bin");
    std::fs::create_dir_all(remote.parent().unwrap()).unwrap();
    let last = Arc::new(Mutex::new(0u64));
    let last2 = last.clone();
    let n = s
        .upload_file(&file, remote.to_str().unwrap(), Some(0o640), &move |b| {
            *last2.lock().unwrap() = b
        })
        .await
        .expect("upload");
    assert_eq!(n, 3_000_000);
    assert_eq!(*last.lock().unwrap(), 3_000_000);
    let sums = sshd.run(&format!(
        "sha256sum < '{}'; sha256sum < '{}'",
        local.display(),
        remote.display()
    ));
    let lines: Vec<&str> = sums.lines().collect();
    assert_eq!(lines[0], lines[1]);
    assert_eq!(
        sshd.run(&format!("stat -c %a '{}'", remote.display()))
            .trim(),
        "640"
    );

    // Into a directory that does not exist: the remote error comes back.
    let err = s
        .upload_file(&file, "/nonexistent-dir/x", None, &|_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nonexistent-dir"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_tree_dirs_modes_and_no_escaping_symlinks() {
    let sshd = Sshd::start();
    let s = connect(&sshd, &cfg(&sshd)).await.expect("connect");
    let d = sshd.dir.path().display().to_string();
    sshd.run(&format!(
        "set -e; mkdir -p {d}/outside {d}/tree/a/b {d}/tree/empty; echo secret > {d}/outside/secret; \
         echo c > {d}/tree/a/b/c.txt; chmod 600 {d}/tree/a/b/c.txt; \
         printf '#!/bin/sh\\necho hi\\n' > {d}/tree/run.sh; chmod 755 {d}/tree/run.sh; chmod 700 {d}/tree/a; \
         ln -s a/b/c.txt {d}/tree/link_in; ln -s ../outside/secret {d}/tree/link_out; \
         ln -s /etc/passwd {d}/tree/link_abs"
    ));
    let tree = project(&sshd).open_dir("tree").unwrap();
    let dest = format!("{d}/uploaded");
    let n = s
        .upload_tree(&tree, &dest, &|_| {})
        .await
        .expect("upload_tree");
    assert!(n > 0);
    assert_eq!(sshd.run(&format!("cat {dest}/a/b/c.txt")), "c\n");
    assert_eq!(
        sshd.run(&format!(
            "stat -c %a {dest}/a/b/c.txt {dest}/run.sh {dest}/a"
        )),
        "600\n755\n700\n"
    );
    assert_eq!(
        sshd.run(&format!("test -d {dest}/empty && echo yes")),
        "yes\n"
    );
    assert_eq!(sshd.run(&format!("readlink {dest}/link_in")), "a/b/c.txt\n");
    assert_eq!(
        sshd.run(&format!("ls -A {dest}/ | sort | tr '\\n' ' '")),
        "a empty link_in run.sh ",
        "links pointing outside the tree must be skipped"
    );
    assert!(
        !sshd
            .run(&format!("grep -rs secret {dest} || true"))
            .contains("secret")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_write_and_read_files() {
    let sshd = Sshd::start();
    let s = connect(&sshd, &cfg(&sshd)).await.expect("connect");
    let d = sshd.dir.path().display().to_string();
    sshd.run(&format!("head -c 2500000 /dev/urandom > {d}/remote.bin"));
    let mut local = project(&sshd).create("downloaded.bin").unwrap();
    let n = s
        .download_file(&format!("{d}/remote.bin"), &mut local, &|_| {})
        .await
        .expect("download");
    drop(local);
    assert_eq!(n, 2_500_000);
    assert_eq!(
        sshd.run(&format!(
            "cmp {d}/remote.bin {d}/downloaded.bin && echo same"
        )),
        "same\n"
    );

    let path = format!("{d}/written.conf");
    s.write_file(&path, b"key = 'value'\n", Some(0o600))
        .await
        .expect("write");
    assert_eq!(sshd.run(&format!("stat -c %a {path}")), "600\n");
    assert_eq!(
        s.read_file(&path, 1024).await.expect("read"),
        b"key = 'value'\n"
    );
    let err = s.read_file(&path, 4).await.unwrap_err();
    assert!(matches!(err, SshError::TooLarge { .. }), "{err:?}");
    let err = s
        .read_file(&format!("{d}/missing"), 1024)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("No such file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bastion_reaches_the_target() {
    let target = Sshd::start();
    let jump = Sshd::start();
    std::fs::copy(&jump.key_path, target.dir.path().join("jump_key")).unwrap();
    let c = SshConfig {
        bastion: Some(Box::new(BastionConfig {
            host: "127.0.0.1".into(),
            port: Some(jump.port),
            user: jump.user.clone(),
            private_key_file: Some("jump_key".into()),
            host_key: Some(jump.host_key_fingerprint.clone()),
            ..Default::default()
        })),
        ..cfg(&target)
    };
    let s = connect(&target, &c)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", jump.log()));
    assert_eq!(run(&s, "echo through").await, "through\n");
    assert_eq!(s.host_key_fingerprint(), target.host_key_fingerprint);
    assert!(
        jump.log().contains("Accepted publickey"),
        "the bastion was not used"
    );

    // The bastion's own host key is verified too.
    let mut bad = c.clone();
    if let Some(b) = bad.bastion.as_mut() {
        b.host_key = Some(target.host_key_fingerprint.clone());
    }
    let err = connect(&target, &bad).await.unwrap_err();
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_execs_on_one_session() {
    const N: usize = 8;
    let sshd = Sshd::start();
    let s = connect(&sshd, &cfg(&sshd)).await.expect("connect");
    let dir = sshd.dir.path().join("barrier");
    std::fs::create_dir_all(&dir).unwrap();
    // A barrier: each command waits until all N have started. Serialized execs would
    // never all be running at once, and the first would give up (exit 9).
    let mut tasks = Vec::new();
    for i in 0..N {
        let s = s.clone();
        let cmd = format!(
            "touch {d}/{i}; j=0; while [ $(ls {d} | wc -l) -lt {N} ] && [ $j -lt 1200 ]; do \
             sleep 0.1; j=$((j+1)); done; [ $(ls {d} | wc -l) -ge {N} ] || exit 9; echo {i}",
            d = dir.display()
        );
        tasks.push(tokio::spawn(async move {
            let out = s.exec(&cmd, &[], &mut |_, _| {}).await.expect("exec");
            assert_eq!(out.exit_code, 0, "execs were serialized: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), format!("{i}\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connection_is_distinguishable() {
    let sshd = Sshd::start();
    let s = connect(&sshd, &cfg(&sshd)).await.expect("connect");
    // Kill the per-connection sshd process, as a reboot would.
    let err = s
        .exec("kill -9 $PPID; sleep 5", &[], &mut |_, _| {})
        .await
        .unwrap_err();
    assert!(err.is_disconnect(), "{err:?}");
}
