//! Against a real Glance 33 (uWSGI, SQLite, file store) that each test starts on 127.0.0.1
//! through the testkit. Install the peer with `tools/setup.d/glance.sh`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kiln_openstack::testkit::{self, GlanceOptions, GlancePeer};
use kiln_openstack::{
    CloudConfig, CloudOptions, Deleted, DiskFormat, Environment, Error, Glance, ImagePatch,
    ImageStatus, NewImage, Secret, Visibility, WaitOptions,
};

fn peer() -> GlancePeer {
    GlancePeer::start().unwrap_or_else(|e| panic!("the Glance peer did not start: {e}"))
}

async fn client(url: &str, token: Option<&str>) -> Glance {
    let opts = CloudOptions {
        auth_type: Some(if token.is_some() { "token" } else { "none" }.into()),
        endpoint: Some(url.to_string()),
        token: token.map(Secret::new),
        ..Default::default()
    };
    let cfg = CloudConfig::resolve(&opts, &Environment::empty()).expect("config");
    Glance::connect(&cfg).await.expect("connect")
}

fn wait() -> WaitOptions {
    WaitOptions {
        timeout: Duration::from_secs(180),
        interval: Duration::from_millis(300),
    }
}

fn qcow2(dir: &Path, name: &str, virtual_mib: u64, data_mib: u64) -> std::path::PathBuf {
    let p = dir.join(name);
    testkit::make_qcow2(&p, virtual_mib, data_mib).expect("qemu-img");
    p
}

/// A file of `mib` MiB of non-repeating bytes (so nothing upstream can dedupe or compress it).
fn data_file(path: &Path, mib: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_published_active_verified_and_seen_by_the_openstack_cli() {
    let g = peer();
    let tmp = tempfile::tempdir().unwrap();
    let file = qcow2(tmp.path(), "disk.qcow2", 64, 6);
    let glance = client(g.url(), None).await;

    let mut new = NewImage::new("kiln-qcow2", DiskFormat::Qcow2);
    new.visibility = Some(Visibility::Private);
    new.min_disk = Some(1);
    new.min_ram = Some(256);
    new.tags = vec!["kiln".into(), "debian-12".into()];
    for (k, v) in [
        ("os_distro", "debian"),
        ("os_version", "12"),
        ("hw_disk_bus", "virtio"),
        ("hw_qemu_guest_agent", "yes"),
    ] {
        new.properties.insert(k.into(), v.into());
    }
    let created = glance.create(&new).await.expect("create");
    assert_eq!(created.image.status, ImageStatus::Queued);

    let last = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let (l2, c2) = (last.clone(), calls.clone());
    let report = glance
        .upload(
            &created.image.id,
            &file,
            Some(Arc::new(move |p| {
                l2.store(p.sent, Ordering::SeqCst);
                c2.fetch_add(1, Ordering::SeqCst);
            })),
        )
        .await
        .expect("upload");
    let size = std::fs::metadata(&file).unwrap().len();
    assert_eq!(report.bytes, size);
    assert_eq!(
        last.load(Ordering::SeqCst),
        size,
        "progress reached the end"
    );
    assert!(calls.load(Ordering::SeqCst) >= 1);

    let img = glance
        .wait_active(&created.image.id, wait())
        .await
        .expect("active");
    let verified = img.verify(&report).expect("hash matches");
    assert_eq!(verified.algo, "sha512");
    assert_eq!(img.os_hash_value.as_deref(), Some(report.sha512.as_str()));
    assert_eq!(img.checksum.as_deref(), Some(report.md5.as_str()));
    assert_eq!(img.size, Some(size));
    assert_eq!(img.virtual_size, Some(64 << 20));
    assert_eq!(img.visibility.as_deref(), Some("private"));
    assert_eq!((img.min_disk, img.min_ram), (1, 256));
    let mut tags = img.tags.clone();
    tags.sort();
    assert_eq!(tags, vec!["debian-12", "kiln"]);
    assert_eq!(img.properties["os_distro"], "debian");
    assert_eq!(img.properties["os_version"], "12");
    assert_eq!(img.properties["hw_disk_bus"], "virtio");
    assert_eq!(img.properties["hw_qemu_guest_agent"], "yes");
    // the bytes Glance stored are the file's
    let stored = g.stored_files();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        std::fs::read(&stored[0]).unwrap(),
        std::fs::read(&file).unwrap()
    );

    // the real openstack CLI sees the same image and hashes
    let out = g
        .openstack_cli(&["image", "show", &img.id, "-f", "json"])
        .expect("openstack CLI");
    assert!(
        out.status.success(),
        "openstack image show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("CLI JSON");
    assert_eq!(shown["checksum"], report.md5.as_str());
    // the CLI (openstacksdk) nests the hash under `properties`
    let prop = |k: &str| {
        shown
            .get(k)
            .or_else(|| shown["properties"].get(k))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(prop("os_hash_algo"), "sha512");
    assert_eq!(prop("os_hash_value"), report.sha512.as_str());
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["size"], size);

    // JSON-patch update
    let img = glance
        .update(
            &img.id,
            &[
                ImagePatch::SetProperty("os_version".into(), "12.8".into()),
                ImagePatch::RemoveProperty("hw_disk_bus".into()),
                ImagePatch::SetTags(vec!["kiln".into()]),
                ImagePatch::SetMinRam(512),
            ],
        )
        .await
        .expect("update");
    assert_eq!(img.properties["os_version"], "12.8");
    assert!(!img.properties.contains_key("hw_disk_bus"));
    assert_eq!(img.tags, vec!["kiln"]);
    assert_eq!(img.min_ram, 512);

    assert_eq!(
        glance.delete(&img.id, false).await.unwrap(),
        Deleted::Deleted
    );
    assert_eq!(
        glance.delete(&img.id, false).await.unwrap(),
        Deleted::AlreadyGone
    );
    assert!(glance.show(&img.id).await.unwrap_err().is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_conversion_published_and_verified() {
    let g = peer();
    let tmp = tempfile::tempdir().unwrap();
    let q = qcow2(tmp.path(), "disk.qcow2", 24, 4);
    let raw = tmp.path().join("disk.raw");
    testkit::convert(&q, &raw, DiskFormat::Raw.qemu_img_format().unwrap()).expect("convert");
    let glance = client(g.url(), None).await;
    let created = glance
        .create(&NewImage::new("kiln-raw", DiskFormat::Raw))
        .await
        .unwrap();
    let report = glance.upload(&created.image.id, &raw, None).await.unwrap();
    assert_eq!(report.bytes, 24 << 20);
    let img = glance.wait_active(&created.image.id, wait()).await.unwrap();
    img.verify(&report).expect("hash");
    assert_eq!(img.disk_format.as_deref(), Some("raw"));
    assert_eq!(img.size, Some(24 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_by_name_leaves_exactly_one_image() {
    let g = peer();
    let tmp = tempfile::tempdir().unwrap();
    let v1 = qcow2(tmp.path(), "v1.qcow2", 16, 1);
    let v2 = qcow2(tmp.path(), "v2.qcow2", 16, 2);
    let glance = client(g.url(), None).await;
    let name = "kiln-replace-me";
    // an unrelated image with another name stays
    let other = glance
        .create(&NewImage::new("kiln-replace-me-not", DiskFormat::Qcow2))
        .await
        .unwrap();

    let publish = |file: std::path::PathBuf| {
        let glance = glance.clone();
        async move {
            let c = glance
                .create(&NewImage::new(name, DiskFormat::Qcow2))
                .await
                .unwrap();
            let r = glance.upload(&c.image.id, &file, None).await.unwrap();
            let img = glance.wait_active(&c.image.id, wait()).await.unwrap();
            img.verify(&r).unwrap();
            img
        }
    };
    let first = publish(v1).await;

    // the post-processor's replace_existing: find the old, publish the new, then delete the old
    let old = glance.find_by_name(name, None).await.unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].id, first.id);
    let second = publish(v2).await;
    assert_eq!(glance.find_by_name(name, None).await.unwrap().len(), 2);
    for o in &old {
        assert_eq!(glance.delete(&o.id, false).await.unwrap(), Deleted::Deleted);
    }
    let now = glance.find_by_name(name, None).await.unwrap();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].id, second.id);
    assert_eq!(now[0].status, ImageStatus::Active);
    // owner filter: the noauth peer's project
    assert_eq!(
        glance
            .find_by_name(name, Some("kiln-project"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        glance
            .find_by_name(name, Some("someone-else"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(glance.show(&other.image.id).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_token_is_an_auth_error_and_creates_nothing() {
    let g = GlancePeer::start_with(GlanceOptions {
        token: Some("right-token-0123".into()),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("the Glance peer did not start: {e}"));
    let new = NewImage::new("kiln-auth", DiskFormat::Qcow2);

    let none = client(g.url(), None).await;
    let e = none.create(&new).await.unwrap_err();
    assert!(e.is_auth_rejected(), "{e:?}");

    let wrong = client(g.url(), Some("wrong-token-9876")).await;
    let e = wrong.create(&new).await.unwrap_err();
    match &e {
        Error::AuthRejected {
            service,
            credential,
            ..
        } => {
            assert_eq!(*service, "Glance");
            assert_eq!(*credential, "token");
        }
        other => panic!("{other:?}"),
    }
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("check the token"), "{shown}");
    assert!(
        !shown.contains("wrong-token-9876"),
        "the token leaked: {shown}"
    );
    assert!(!format!("{wrong:?}").contains("wrong-token"));

    let right = client(g.url(), Some("right-token-0123")).await;
    assert!(
        right
            .find_by_name("kiln-auth", None)
            .await
            .unwrap()
            .is_empty(),
        "a rejected create must leave nothing"
    );
    // and the right token works end to end
    let c = right.create(&new).await.unwrap();
    assert_eq!(
        right.delete(&c.image.id, false).await.unwrap(),
        Deleted::Deleted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_disk_format_gives_glances_message_and_the_image_can_be_deleted() {
    let g = peer();
    let tmp = tempfile::tempdir().unwrap();
    let file = qcow2(tmp.path(), "disk.qcow2", 16, 1);
    let glance = client(g.url(), None).await;
    // Glance inspects uploads: qcow2 data under disk_format vmdk is refused
    let created = glance
        .create(&NewImage::new("kiln-wrong-format", DiskFormat::Vmdk))
        .await
        .unwrap();
    let e = glance
        .upload(&created.image.id, &file, None)
        .await
        .unwrap_err();
    match &e {
        Error::BadRequest {
            status, message, ..
        } => {
            assert_eq!(*status, 415);
            assert!(
                message.contains("disk_format vmdk does not match stream data qcow2"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // the caller's cleanup
    assert_eq!(
        glance.delete(&created.image.id, false).await.unwrap(),
        Deleted::Deleted
    );
    assert!(
        glance
            .find_by_name("kiln-wrong-format", None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_upload_then_delete_leaves_nothing() {
    let g = peer();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("big.raw");
    data_file(&file, 256);
    let glance = client(g.url(), None).await;
    let created = glance
        .create(&NewImage::new("kiln-cancelled", DiskFormat::Raw))
        .await
        .unwrap();
    let id = created.image.id.clone();

    let started = Arc::new(tokio::sync::Notify::new());
    let s2 = started.clone();
    let upload = glance.upload(
        &id,
        &file,
        Some(Arc::new(move |p| {
            if p.sent >= 16 << 20 {
                s2.notify_one();
            }
        })),
    );
    // Ctrl-C: the upload future is dropped once data is flowing
    tokio::select! {
        r = upload => panic!("the upload finished before it was cancelled: {r:?}"),
        _ = started.notified() => {}
    }

    assert_eq!(glance.delete(&id, false).await.unwrap(), Deleted::Deleted);
    assert!(glance.show(&id).await.unwrap_err().is_not_found());
    assert!(
        glance
            .find_by_name("kiln-cancelled", None)
            .await
            .unwrap()
            .is_empty()
    );
    // Glance removes the partial data once it notices the broken connection
    let mut left = g.stored_files();
    for _ in 0..300 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = g.stored_files();
    }
    assert!(
        left.is_empty(),
        "data left in the store: {left:?}\n{}",
        g.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glance_direct_import_flow() {
    let g = peer();
    let tmp = tempfile::tempdir().unwrap();
    let file = qcow2(tmp.path(), "disk.qcow2", 32, 3);
    let glance = client(g.url(), None).await;
    assert!(
        glance
            .import_methods()
            .await
            .unwrap()
            .contains(&"glance-direct".to_string())
    );
    let created = glance
        .create(&NewImage::new("kiln-imported", DiskFormat::Qcow2))
        .await
        .unwrap();
    assert!(
        created.offers("glance-direct"),
        "{:?}",
        created.import_methods
    );
    let report = glance
        .stage(&created.image.id, &file, None)
        .await
        .expect("stage");
    assert_eq!(
        glance.show(&created.image.id).await.unwrap().status,
        ImageStatus::Uploading
    );
    glance
        .import_staged(&created.image.id, &created.import_methods)
        .await
        .expect("import");
    let img = glance
        .wait_active(&created.image.id, wait())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", g.log_tail()));
    img.verify(&report).expect("hash");
    assert_eq!(img.virtual_size, Some(32 << 20));

    // a method the cloud does not offer is refused before any request
    let e = glance
        .import_staged(&created.image.id, &["web-download".to_string()])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ImportNotOffered { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_images_timeouts_and_bad_ids() {
    let g = peer();
    let glance = client(g.url(), None).await;
    let mut new = NewImage::new("kiln-protected", DiskFormat::Qcow2);
    new.protected = true;
    let c = glance.create(&new).await.unwrap();
    assert!(c.image.protected);
    let e = glance.delete(&c.image.id, false).await.unwrap_err();
    assert!(matches!(e, Error::Forbidden { .. }), "{e:?}");
    assert_eq!(
        glance.delete(&c.image.id, true).await.unwrap(),
        Deleted::Deleted
    );

    // an image nobody uploads to stays queued: the timeout names what it waited for
    let c = glance
        .create(&NewImage::new("kiln-never-uploaded", DiskFormat::Qcow2))
        .await
        .unwrap();
    let e = glance
        .wait_active(
            &c.image.id,
            WaitOptions {
                timeout: Duration::from_secs(2),
                interval: Duration::from_millis(500),
            },
        )
        .await
        .unwrap_err();
    match &e {
        Error::Timeout {
            waited_for,
            last_status,
            ..
        } => {
            assert_eq!(waited_for, "active");
            assert_eq!(last_status, "queued");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("last status was queued"), "{e}");

    let e = glance.show("../../etc").await.unwrap_err();
    assert!(matches!(e, Error::InvalidRequest(_)));
    let e = glance
        .show("00000000-0000-0000-0000-000000000000")
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listens_is_a_connect_error() {
    // a port that was free a moment ago
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let glance = client(&format!("http://127.0.0.1:{port}"), None).await;
    let e = glance.show("abc").await.unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_cacert_works_and_without_it_is_a_tls_error() {
    let g = GlancePeer::start_with(GlanceOptions {
        tls: true,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("the TLS Glance peer did not start: {e}"));
    assert!(g.url().starts_with("https://"));
    let base = CloudOptions {
        auth_type: Some("none".into()),
        endpoint: Some(g.url().to_string()),
        ..Default::default()
    };
    let connect = |o: CloudOptions| async move {
        Glance::connect(&CloudConfig::resolve(&o, &Environment::empty()).unwrap())
            .await
            .unwrap()
    };

    // the system roots do not know the throwaway CA
    let e = connect(base.clone())
        .await
        .find_by_name("x", None)
        .await
        .unwrap_err();
    match &e {
        Error::Tls { detail, .. } => assert!(detail.to_lowercase().contains("issuer"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("cacert"), "{e}");

    // with cacert (OS_CACERT's job) the whole flow works over TLS
    let glance = connect(CloudOptions {
        cacert: g.cacert().map(Path::to_path_buf),
        ..base.clone()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let file = qcow2(tmp.path(), "disk.qcow2", 16, 2);
    let c = glance
        .create(&NewImage::new("kiln-tls", DiskFormat::Qcow2))
        .await
        .unwrap();
    let r = glance.upload(&c.image.id, &file, None).await.unwrap();
    glance
        .wait_active(&c.image.id, wait())
        .await
        .unwrap()
        .verify(&r)
        .unwrap();

    // insecure only when asked for, and then it works without the CA
    let insecure = connect(CloudOptions {
        insecure: Some(true),
        ..base
    })
    .await;
    assert_eq!(insecure.show(&c.image.id).await.unwrap().id, c.image.id);
}

/// On the wire: the upload carries `Content-Length` and the octet-stream type, never
/// `Transfer-Encoding: chunked` (which Glance under uWSGI rejects for big chunks). A bare TCP
/// listener records the request exactly as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_sends_content_length_not_chunked() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("d.raw");
    data_file(&file, 3);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 64 << 10];
        let head_end = loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the headers ended");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let mut body = buf.len() - head_end;
        while body < 3 << 20 {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "body ended after {body} bytes");
            body += n;
        }
        s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        (head, body)
    });
    let glance = client(&url, Some("tok")).await;
    let report = glance
        .upload("7eca3b96-872a-4bd4-a5ab-dc410788378b", &file, None)
        .await
        .expect("upload");
    let (head, body) = server.await.unwrap();
    assert!(
        head.starts_with("put /v2/images/7eca3b96-872a-4bd4-a5ab-dc410788378b/file http/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("content-length: {}\r\n", 3 << 20)),
        "{head}"
    );
    assert!(
        head.contains("content-type: application/octet-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("x-auth-token: tok\r\n"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(body, 3 << 20);
    assert_eq!(report.bytes, 3 << 20);
}
