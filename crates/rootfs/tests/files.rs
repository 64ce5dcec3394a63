//! Files in and out of the container, and what the overlay records of a step.
// Test fixtures pass pids to syscalls and make bytes by truncation; fine here.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

use std::io::{Read, Seek};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{busybox, init, run, start};
use kiln_rootfs::testkit::{Layers, busybox_rootfs};
use kiln_rootfs::{Error, FileErrorKind, FileKind};

/// A payload larger than one frame (1 MiB) and not a multiple of it.
fn big_payload() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..(3 * 1024 * 1024 + 17))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

#[tokio::test]
async fn write_read_upload_download_and_stat() {
    let l = busybox();
    let c = start(l.config(init())).await;

    c.write_file("/etc/motd", b"hello\n", Some(0o640))
        .await
        .unwrap();
    assert_eq!(c.read_file("/etc/motd", 100).await.unwrap(), b"hello\n");
    let st = c.stat("/etc/motd").await.unwrap().unwrap();
    assert_eq!(
        (st.kind, st.size, st.mode, st.uid),
        (FileKind::File, 6, 0o640, 0)
    );
    assert_eq!(run(&c, "stat -c %a /etc/motd").await, "640\n");
    assert!(c.exists("/bin/sh").await.unwrap());
    assert!(!c.exists("/nope").await.unwrap());
    assert_eq!(
        c.stat("/tmp").await.unwrap().unwrap().kind,
        FileKind::Directory
    );
    // An empty file, and a rewrite that truncates.
    c.write_file("/tmp/empty", b"", None).await.unwrap();
    assert_eq!(c.read_file("/tmp/empty", 0).await.unwrap(), b"");
    c.write_file("/etc/motd", b"hi", None).await.unwrap();
    assert_eq!(c.read_file("/etc/motd", 100).await.unwrap(), b"hi");

    // A file larger than a chunk, both ways, through local files.
    let payload = big_payload();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.bin");
    std::fs::write(&src, &payload).unwrap();
    let seen = std::sync::atomic::AtomicU64::new(0);
    let sent = c
        .upload_file(
            std::fs::File::open(&src).unwrap(),
            "/root/big.bin",
            Some(0o755),
            &|n| seen.store(n, std::sync::atomic::Ordering::Relaxed),
        )
        .await
        .unwrap();
    assert_eq!(sent, payload.len() as u64);
    assert_eq!(seen.into_inner(), payload.len() as u64);
    let sum_inside = run(&c, "sha256sum /root/big.bin | cut -d' ' -f1").await;
    let out = std::process::Command::new("sha256sum")
        .arg(&src)
        .output()
        .unwrap();
    let sum_here = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        sum_inside.trim(),
        sum_here.split_whitespace().next().unwrap()
    );

    let mut dst = tempfile::tempfile().unwrap();
    let got = c
        .download_file("/root/big.bin", dst.try_clone().unwrap(), &|_| {})
        .await
        .unwrap();
    assert_eq!(got, payload.len() as u64);
    let mut back = Vec::new();
    dst.rewind().unwrap();
    dst.read_to_end(&mut back).unwrap();
    assert!(back == payload, "downloaded bytes differ");
    assert_eq!(
        c.read_file("/root/big.bin", payload.len() as u64)
            .await
            .unwrap(),
        payload
    );

    // Over the limit: a typed error, whatever size the file claims (procfs says 0).
    match c.read_file("/root/big.bin", 1024 * 1024).await {
        Err(Error::TooLarge { path, max }) => {
            assert_eq!((path.as_str(), max), ("/root/big.bin", 1024 * 1024))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(
        c.read_file("/proc/self/status", 10).await,
        Err(Error::TooLarge { .. })
    ));
    match c.read_file("/no/such/file", 10).await {
        Err(Error::File { kind, .. }) => assert_eq!(kind, FileErrorKind::NotFound),
        other => panic!("expected NotFound, got {other:?}"),
    }
    match c.read_file("/etc", 10).await {
        Err(Error::File { kind, .. }) => assert_eq!(kind, FileErrorKind::IsDirectory),
        other => panic!("expected IsDirectory, got {other:?}"),
    }
    match c.write_file("/no/such/dir/f", b"x", None).await {
        Err(Error::File { kind, .. }) => assert_eq!(kind, FileErrorKind::NotFound),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A FIFO neither hangs a read nor a write.
    run(&c, "mkfifo /tmp/fifo").await;
    assert!(matches!(
        c.read_file("/tmp/fifo", 10).await,
        Err(Error::File {
            kind: FileErrorKind::InvalidPath,
            ..
        })
    ));
    assert!(c.write_file("/tmp/fifo", b"x", None).await.is_err());
    c.write_file("/dev/null", b"discarded", None).await.unwrap();
    // A big upload into a missing directory fails early and leaves the container usable.
    let mut reader: &[u8] = &payload;
    assert!(
        c.upload_reader(&mut reader, "/missing/big", None, &|_| {})
            .await
            .is_err()
    );
    assert_eq!(run(&c, "echo ok").await, "ok\n");
    c.stop().await.unwrap();
}

#[tokio::test]
async fn upload_a_tree_and_refuse_escapes() {
    let l = busybox();
    let c = start(l.config(init())).await;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("tree");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::write(src.join("a.txt"), b"A").unwrap();
    std::fs::write(src.join("sub/run.sh"), b"#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(
        src.join("sub/run.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::write(src.join("sub/deeper/big.bin"), big_payload()).unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("link-in")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", src.join("link-out")).unwrap();
    let dir = std::fs::File::open(&src).unwrap();
    let sent = c.upload_tree(dir, "/opt/app", &|_| {}).await.unwrap();
    assert!(sent > big_payload().len() as u64);
    assert_eq!(run(&c, "cat /opt/app/a.txt /opt/app/link-in").await, "AA");
    assert_eq!(run(&c, "/opt/app/sub/run.sh").await, "ran\n");
    assert_eq!(run(&c, "stat -c %a /opt/app/sub/run.sh").await, "750\n");
    assert_eq!(run(&c, "readlink /opt/app/link-in").await, "a.txt\n");
    assert!(
        !c.exists("/opt/app/link-out").await.unwrap(),
        "an escaping symlink is skipped"
    );
    assert_eq!(
        c.stat("/opt/app/sub/deeper/big.bin")
            .await
            .unwrap()
            .unwrap()
            .size,
        big_payload().len() as u64
    );

    // Hand-made tars that try to leave the destination.
    let escape_dotdot = tar_with(|b| add_file(b, "../../etc/evil", b"x"));
    let via_symlink = tar_with(|b| {
        add_symlink(b, "etc-link", "/etc");
        add_file(b, "etc-link/evil", b"x");
    });
    for (name, bytes) in [("dotdot", escape_dotdot), ("symlink", via_symlink)] {
        let mut r: &[u8] = &bytes;
        match c.upload_tar(&mut r, "/srv/drop", &|_| {}).await {
            Err(Error::UnsafePath { .. }) => {}
            other => panic!("{name}: expected UnsafePath, got {other:?}"),
        }
    }
    assert!(!c.exists("/etc/evil").await.unwrap());
    c.stop().await.unwrap();
}

fn tar_with(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    f(&mut b);
    b.into_inner().unwrap()
}

/// Appends a file whose name is written raw (tar's `append_data` refuses `..`).
fn add_file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn add_symlink(b: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, name, target).unwrap();
}

/// (path, kind, size, mode, mtime, content) of every entry under `root`, sorted.
fn snapshot(root: &Path) -> Vec<(String, String, u64, u32, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let (kind, content) = if m.is_dir() {
                stack.push(e.path());
                ("dir", Vec::new())
            } else if m.file_type().is_symlink() {
                (
                    "link",
                    std::fs::read_link(e.path())
                        .unwrap()
                        .display()
                        .to_string()
                        .into_bytes(),
                )
            } else {
                ("file", std::fs::read(e.path()).unwrap())
            };
            out.push((rel, kind.to_string(), m.len(), m.mode(), m.mtime(), content));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn the_upper_dir_holds_exactly_the_steps_changes() {
    let mut l = Layers::new(2).unwrap();
    busybox_rootfs(&l.lower[0], true).unwrap();
    std::fs::create_dir_all(l.lower[1].join("srv/data")).unwrap();
    std::fs::write(l.lower[1].join("srv/data/keep"), b"keep").unwrap();
    std::fs::write(l.lower[1].join("srv/data/drop"), b"drop").unwrap();
    std::fs::create_dir_all(l.lower[1].join("srv/gone/inner")).unwrap();
    // The top layer shadows a file of the bottom one.
    std::fs::create_dir_all(l.lower[1].join("etc")).unwrap();
    std::fs::write(l.lower[1].join("etc/os-release"), b"ID=top\n").unwrap();
    let before: Vec<_> = l.lower.iter().map(|d| snapshot(d)).collect();

    let c = start(l.config(init())).await;
    assert_eq!(c.facts().await.unwrap()["os_id"], "top");
    run(
        &c,
        "rm /srv/data/drop && rm -r /srv/gone && echo new > /srv/data/new && echo more >> /srv/data/keep",
    )
    .await;
    c.stop().await.unwrap();

    let up = &l.upper;
    let wh = std::fs::symlink_metadata(up.join("srv/data/drop")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "deleted file → whiteout"
    );
    let wh = std::fs::symlink_metadata(up.join("srv/gone")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "deleted dir → whiteout"
    );
    assert_eq!(std::fs::read(up.join("srv/data/new")).unwrap(), b"new\n");
    assert_eq!(
        std::fs::read(up.join("srv/data/keep")).unwrap(),
        b"keepmore\n"
    );
    let mut top: Vec<String> = std::fs::read_dir(up)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["srv"],
        "nothing but the step's changes (no /tmp, /proc, /dev...)"
    );
    let after: Vec<_> = l.lower.iter().map(|d| snapshot(d)).collect();
    assert!(before == after, "a lower layer was modified");

    // The next step sees the previous one as a layer.
    let prev = l.upper.clone();
    l.lower.push(prev);
    l.next_step("step2").unwrap();
    let c = start(l.config(init())).await;
    assert_eq!(run(&c, "ls /srv/data").await, "keep\nnew\n");
    assert!(!c.exists("/srv/gone").await.unwrap());
    c.stop().await.unwrap();
}

#[tokio::test]
async fn scratch_images_start_empty_and_leave_no_mount_points_behind() {
    let l = Layers::new(0).unwrap();
    let c = start(l.config(init())).await;
    let facts = c.facts().await.unwrap();
    assert_eq!(facts["os_id"], "unknown");
    assert_eq!(facts["user"], "root");
    c.write_file("/hello", b"from scratch", Some(0o644))
        .await
        .unwrap();
    assert_eq!(c.read_file("/hello", 100).await.unwrap(), b"from scratch");
    match c
        .exec(&kiln_rootfs::ExecRequest::new("true"), &mut |_, _| {})
        .await
    {
        Err(Error::ExecStart { reason, .. }) => assert!(reason.contains("/bin/sh"), "{reason}"),
        other => panic!("expected ExecStart, got {other:?}"),
    }
    c.stop().await.unwrap();
    let names: Vec<String> = std::fs::read_dir(&l.upper)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["hello"],
        "the created /proc, /dev, /sys were removed"
    );
}

#[tokio::test]
async fn an_image_without_mount_points_gets_them_only_while_running() {
    let l = Layers::new(1).unwrap();
    busybox_rootfs(&l.lower[0], false).unwrap();
    let c = start(l.config(init())).await;
    assert_eq!(
        run(&c, "ls /proc/self/fd >/dev/null && echo ok").await,
        "ok\n"
    );
    // A step that writes next to a created mount point keeps its file.
    run(&c, "mkdir -p /tmp/x && echo y > /tmp/x/y").await;
    c.stop().await.unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&l.upper)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["tmp"]);
}
