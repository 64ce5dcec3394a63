//! The web page in real headless Chromium: the DOM shows the data, and screenshots at phone
//! and desktop sizes are not blank.

use std::path::Path;

use kiln_registry::testkit::{Chromium, TestServer};
use kiln_registry::{ArtifactQuery, Platform, RevokeRequest, VersionRef};

use crate::fixtures::{Rec, record, sqlite_store};

/// Share of pixels that differ clearly from the page background, and of dark (text) pixels.
fn ink(png_path: &Path, width: u32, height: u32) -> (f64, f64) {
    let file = std::fs::File::open(png_path).expect("open png");
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let mut reader = decoder.read_info().expect("png header");
    let size = reader.output_buffer_size().expect("png buffer size");
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf).expect("png frame");
    assert_eq!(
        (info.width, info.height),
        (width, height),
        "screenshot size"
    );
    let channels = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("unexpected colour type {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let pixels = &buf[..info.buffer_size()];
    let total = (info.width * info.height) as f64;
    let (mut differ, mut dark) = (0u64, 0u64);
    for px in pixels.chunks_exact(channels) {
        let (r, g, b) = (px[0] as i32, px[1] as i32, px[2] as i32);
        // The page background is white.
        if (255 - r) + (255 - g) + (255 - b) > 60 {
            differ += 1;
        }
        if (r * 299 + g * 587 + b * 114) / 1000 < 110 {
            dark += 1;
        }
    }
    (differ as f64 / total, dark as f64 / total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_renders_in_headless_chromium() {
    let (store, _g) = sqlite_store().await;
    let v = |f: &str| VersionRef::Fingerprint(f.into());
    record(
        &store,
        Rec::new("base-image", "01JPAGEBASE1", "base")
            .only_artifact(Platform::Qemu, "local", "/images/base-1.qcow2")
            .describe("Debian 12 base image"),
    )
    .await;
    store
        .promote("base-image", &v("01JPAGEBASE1"), "prod", "t")
        .await
        .expect("promote");
    let parent = store
        .resolve_artifact(&ArtifactQuery {
            bucket: "base-image".into(),
            channel: Some("prod".into()),
            platform: Platform::Qemu,
            region: "local".into(),
            build: None,
        })
        .await
        .expect("resolve");
    record(
        &store,
        Rec::new("webapp", "01JPAGEWEB01", "web")
            .only_artifact(Platform::Aws, "us-east-1", "ami-0feedfacecafe0001")
            .artifact(Platform::Aws, "eu-west-1", "ami-0feedfacecafe0002")
            .label("team", "payments")
            .parent(parent.parent.clone())
            .describe("The <public> web tier"),
    )
    .await;
    record(
        &store,
        Rec::new("webapp", "01JPAGEWEB02", "web").only_artifact(
            Platform::Aws,
            "us-east-1",
            "ami-0deadbeef00000002",
        ),
    )
    .await;
    store
        .promote("webapp", &v("01JPAGEWEB01"), "prod", "t")
        .await
        .expect("promote");
    store
        .revoke(
            "webapp",
            &v("01JPAGEWEB02"),
            &RevokeRequest {
                reason: "leaked debug credentials".into(),
                at: None,
                inherit: false,
            },
            "sec",
        )
        .await
        .expect("revoke");
    // The base moves on: webapp's first version is now out of date.
    record(
        &store,
        Rec::new("base-image", "01JPAGEBASE2", "base").only_artifact(
            Platform::Qemu,
            "local",
            "/images/base-2.qcow2",
        ),
    )
    .await;
    store
        .promote("base-image", &v("01JPAGEBASE2"), "prod", "t")
        .await
        .expect("promote");

    let server = TestServer::start(store.clone()).await.expect("server");
    let base = server.url();
    let shots = tempfile::tempdir().expect("tempdir");
    let shots_dir = shots.path().to_path_buf();

    let (index, bucket, version, base_page, metrics) = tokio::task::spawn_blocking(move || {
        let chrome = Chromium::new().expect("chromium");
        let index = chrome.dump_dom(&format!("{base}/")).expect("index dom");
        let bucket = chrome
            .dump_dom(&format!("{base}/b/webapp"))
            .expect("bucket dom");
        let version = chrome
            .dump_dom(&format!("{base}/b/webapp/v/01JPAGEWEB01"))
            .expect("version dom");
        let base_page = chrome
            .dump_dom(&format!("{base}/b/base-image/v/01JPAGEBASE1"))
            .expect("base dom");
        let mut metrics = Vec::new();
        for (w, h) in [(390u32, 844u32), (1280, 800)] {
            let out = shots_dir.join(format!("bucket-{w}x{h}.png"));
            chrome
                .screenshot(&format!("{base}/b/webapp"), w, h, &out)
                .expect("screenshot");
            metrics.push(((w, h), ink(&out, w, h)));
            // Set KILN_REGISTRY_SCREENSHOTS=DIR to keep the screenshots for a look.
            if let Some(keep) = std::env::var_os("KILN_REGISTRY_SCREENSHOTS") {
                let keep = std::path::PathBuf::from(keep);
                let _ = std::fs::create_dir_all(&keep);
                let _ = std::fs::copy(&out, keep.join(format!("bucket-{w}x{h}.png")));
                for (name, path) in [("index", "/"), ("version", "/b/webapp/v/01JPAGEWEB01")] {
                    let _ = chrome.screenshot(
                        &format!("{base}{path}"),
                        w,
                        h,
                        &keep.join(format!("{name}-{w}x{h}.png")),
                    );
                }
            }
        }
        (index, bucket, version, base_page, metrics)
    })
    .await
    .expect("chromium thread");

    for s in [
        "base-image",
        "webapp",
        "Debian 12 base image",
        "01JPAGEWEB01",
    ] {
        assert!(index.contains(s), "index lacks {s}");
    }
    assert!(
        index.contains("The &lt;public&gt; web tier"),
        "description is escaped"
    );
    for s in [
        "01JPAGEWEB01",
        "01JPAGEWEB02",
        "ami-0feedfacecafe0001",
        "eu-west-1",
        "prod",
        "latest",
        "leaked debug credentials",
        "Revocations",
        "Channel history",
        "/terraform/webapp/prod",
    ] {
        assert!(bucket.contains(s), "bucket page lacks {s}");
    }
    for s in [
        "ami-0feedfacecafe0002",
        "team=payments",
        "base-image/01JPAGEBASE1",
        "out of date (channel now 01JPAGEBASE2)",
        "db_password",
        "build.rhai",
    ] {
        assert!(version.contains(s), "version page lacks {s}");
    }
    assert!(
        base_page.contains("webapp/01JPAGEWEB01"),
        "the base lists its child"
    );
    assert!(!version.contains("<script"), "no scripts");

    for ((w, h), (differ, dark)) in metrics {
        assert!(
            differ > 0.03,
            "{w}x{h}: only {:.2}% of pixels are not background",
            differ * 100.0
        );
        assert!(
            dark > 0.005,
            "{w}x{h}: only {:.3}% dark (text) pixels",
            dark * 100.0
        );
    }
    drop(server);
}
