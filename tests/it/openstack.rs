//! The `openstack_image` post-processor through `kiln build`, against a real Glance 33
//! (and Keystone 30) that each test starts on 127.0.0.1 with kiln-openstack's testkit
//! (`tools/setup.d/glance.sh` installs them). Most builds use a tiny project builder
//! that hands over a qcow2 made with qemu-img; one publishes examples/qemu-debian's real
//! image. Each test checks Glance itself afterwards: what exists, its hash, its
//! properties, and that nothing is left after a failure or Ctrl-C.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use kiln_openstack::testkit::{self, GlanceOptions, GlancePeer, KeystonePeer};
use kiln_openstack::{CloudConfig, CloudOptions, Environment, Glance, Image, ImageStatus, Secret};
use sha2::{Digest, Sha512};

use crate::cli::{Project, kiln_cmd, text};

/// A builder that only hands over an existing file as its artifact.
const IMAGE_BUILDER: &str = r#"
fn options() { #{ file: () } }
fn required() { ["file"] }
fn run(cfg, ctx) { ctx.artifact(#{ id: cfg.file, files: [cfg.file] }) }
"#;

fn glance() -> GlancePeer {
    GlancePeer::start().unwrap_or_else(|e| panic!("the Glance peer did not start: {e}"))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A client of the test's own, to look at what kiln left in Glance.
fn client(rt: &tokio::runtime::Runtime, url: &str, token: Option<&str>) -> Glance {
    let opts = CloudOptions {
        auth_type: Some(if token.is_some() { "token" } else { "none" }.into()),
        endpoint: Some(url.to_string()),
        token: token.map(Secret::new),
        ..Default::default()
    };
    let cfg = CloudConfig::resolve(&opts, &Environment::empty()).unwrap();
    rt.block_on(Glance::connect(&cfg)).unwrap()
}

fn named(rt: &tokio::runtime::Runtime, g: &Glance, name: &str) -> Vec<Image> {
    rt.block_on(g.find_by_name(name, None)).unwrap()
}

fn sha512_file(path: &Path) -> String {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// A project whose one build hands `output/disk.qcow2` (made here, `mib` MiB virtual,
/// `data_mib` written) to the post-processors in `post`.
fn project(post: &str, mib: u64, data_mib: u64) -> Project {
    let p = Project::new();
    p.write("builders/image.rhai", IMAGE_BUILDER);
    std::fs::create_dir_all(p.path().join("output")).unwrap();
    if mib > 0 {
        testkit::make_qcow2(&p.path().join("output/disk.qcow2"), mib, data_mib).unwrap();
    }
    write_build(&p, "output/disk.qcow2", post);
    p
}

fn write_build(p: &Project, file: &str, post: &str) {
    p.write(
        "build.rhai",
        &format!(
            r#"
source("img", builder("builders/image.rhai", #{{ file: "{file}" }}));
build("pub", #{{ sources: ["img"], post: [{post}] }});
"#
        ),
    );
}

fn manifest(p: &Project) -> serde_json::Value {
    let m = std::fs::read_to_string(p.path().join("output/manifest.json")).unwrap();
    serde_json::from_str(&m).unwrap()
}

fn audit(p: &Project) -> String {
    let mut all = String::new();
    for run in std::fs::read_dir(p.path().join(".kiln/runs")).unwrap() {
        let f = run.unwrap().path().join("audit.jsonl");
        all.push_str(&std::fs::read_to_string(f).unwrap_or_default());
    }
    all
}

fn ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
}

#[test]
fn a_qcow2_is_published_active_and_verified_with_its_properties_and_the_cli_agrees() {
    let g = glance();
    let rt = rt();
    let post = format!(
        r#"openstack_image(#{{
            name: "kiln-it-qcow2", endpoint: "{url}", auth_type: "none",
            visibility: "private", min_disk: 1, min_ram: 256, "protected": true,
            tags: ["kiln", "debian-12"],
            properties: #{{ os_distro: "debian", os_version: "12", hw_disk_bus: "virtio",
                           hw_qemu_guest_agent: true }},
        }}), manifest("output/manifest.json")"#,
        url = g.url()
    );
    let p = project(&post, 64, 6);
    let file = p.path().join("output/disk.qcow2");
    let want = sha512_file(&file);
    let out = p.kiln(&["build", "."]);
    ok(&out);
    let all = text(&out);

    let glance = client(&rt, g.url(), None);
    let images = named(&rt, &glance, "kiln-it-qcow2");
    assert_eq!(images.len(), 1, "{images:?}");
    let img = &images[0];
    assert_eq!(img.status, ImageStatus::Active);
    assert_eq!(img.disk_format.as_deref(), Some("qcow2"));
    assert_eq!(img.os_hash_algo.as_deref(), Some("sha512"));
    assert_eq!(img.os_hash_value.as_deref(), Some(want.as_str()));
    assert_eq!(img.size, Some(std::fs::metadata(&file).unwrap().len()));
    assert_eq!(img.visibility.as_deref(), Some("private"));
    assert_eq!((img.min_disk, img.min_ram), (1, 256));
    assert!(
        img.protected,
        "protected is applied once the image is verified"
    );
    let mut tags = img.tags.clone();
    tags.sort();
    assert_eq!(tags, ["debian-12", "kiln"]);
    for (k, v) in [
        ("os_distro", "debian"),
        ("os_version", "12"),
        ("hw_disk_bus", "virtio"),
        ("hw_qemu_guest_agent", "true"),
    ] {
        assert_eq!(img.properties.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(all.contains("matches kiln's"), "{all}");

    // the artifact id is the Glance id; the manifest has the endpoint and Glance's hash
    let m = manifest(&p);
    let b = &m["builds"][0];
    assert_eq!(b["artifact_id"], img.id.as_str());
    let os = &b["openstack"];
    assert_eq!(os["id"], img.id.as_str());
    assert_eq!(os["endpoint"], g.url());
    assert_eq!(os["os_hash_algo"], "sha512");
    assert_eq!(os["os_hash_value"], want.as_str());
    assert_eq!(os["sha512"], want.as_str());
    assert_eq!(os["verified_with"], "sha512");
    assert_eq!(os["status"], "active");

    // every Glance call is an `openstack` audit line naming the endpoint
    let log = audit(&p);
    let port = g.url().rsplit(':').next().unwrap();
    for op in [
        "connect",
        "create image",
        "upload image",
        "wait for image",
        "protect image",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(r#""capability":"openstack""#)
                    && l.contains(&format!("127.0.0.1:{port}: {op}"))
                    && l.contains(r#""outcome":"ok"#)),
            "no audit line for {op}:\n{log}"
        );
    }

    // the real openstack CLI sees the same image and the same checksum
    let shown = g
        .openstack_cli(&["image", "show", &img.id, "-f", "json"])
        .unwrap();
    assert!(shown.status.success(), "{}", text(&shown));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["checksum"], img.checksum.as_deref().unwrap());
    let prop = |k: &str| {
        shown
            .get(k)
            .or_else(|| shown["properties"].get(k))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(prop("os_hash_value"), want.as_str());
    assert_eq!(shown["status"], "active");
}

#[test]
fn a_raw_conversion_is_published_and_the_converted_file_removed() {
    let g = glance();
    let rt = rt();
    let post = format!(
        r#"openstack_image(#{{ name: "kiln-it-raw", disk_format: "raw", endpoint: "{}" }})"#,
        g.url()
    );
    let p = project(&post, 24, 4);
    let raw = tempfile::tempdir().unwrap();
    let expect = raw.path().join("disk.raw");
    testkit::convert(&p.path().join("output/disk.qcow2"), &expect, "raw").unwrap();
    let out = p.kiln(&["build", "."]);
    ok(&out);
    assert!(text(&out).contains("from qcow2 to raw"), "{}", text(&out));
    let images = named(&rt, &client(&rt, g.url(), None), "kiln-it-raw");
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0].disk_format.as_deref(), Some("raw"));
    assert_eq!(images[0].size, Some(24 << 20));
    assert_eq!(
        images[0].os_hash_value.as_deref(),
        Some(sha512_file(&expect).as_str())
    );
    let left: Vec<_> = std::fs::read_dir(p.path().join("output"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["disk.qcow2"], "the converted file must not stay");
}

#[test]
fn glance_direct_import_stages_and_imports_and_is_recorded() {
    let g = glance();
    let rt = rt();
    let post = format!(
        r#"openstack_image(#{{ name: "kiln-it-direct", endpoint: "{}", import_method: "glance-direct" }}),
           manifest("output/manifest.json"), registry(#{{ bucket: "web" }})"#,
        g.url()
    );
    let p = project(&post, 16, 2);
    let want = sha512_file(&p.path().join("output/disk.qcow2"));
    let out = p.kiln(&["build", "."]);
    ok(&out);
    let all = text(&out);
    assert!(all.contains("Staging output/disk.qcow2"), "{all}");
    let images = named(&rt, &client(&rt, g.url(), None), "kiln-it-direct");
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0].status, ImageStatus::Active);
    assert_eq!(images[0].os_hash_value.as_deref(), Some(want.as_str()));
    // the summary names the Glance image, as Packer prints the image id
    assert!(
        all.contains(&format!("Glance image {} at {}", images[0].id, g.url())),
        "{all}"
    );
    let m = manifest(&p);
    assert_eq!(
        m["builds"][0]["openstack"]["import_method"],
        "glance-direct"
    );
    // and the registry records it: platform openstack, the Glance id, the cloud.
    let shown = p.kiln(&["artifacts", "show", "web", "@latest", "--json"]);
    ok(&shown);
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("JSON");
    let recorded = v["builds"][0]["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .find(|a| a["platform"] == "openstack")
        .unwrap_or_else(|| panic!("no openstack artifact recorded: {v}"))
        .clone();
    assert_eq!(recorded["external_id"], images[0].id.as_str(), "{v}");
    assert_eq!(
        recorded["region"], m["builds"][0]["openstack"]["cloud"],
        "{v}"
    );
    let log = audit(&p);
    for op in ["stage image", "import image"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!(": {op} ")) && l.contains(r#""outcome":"ok"#)),
            "no audit line for {op}:\n{log}"
        );
    }
}

#[test]
fn replace_existing_leaves_exactly_one_image_with_the_name() {
    let g = glance();
    let rt = rt();
    let glance = client(&rt, g.url(), None);
    let post = |replace: bool| {
        format!(
            r#"openstack_image(#{{ name: "kiln-it-replace", endpoint: "{}", replace_existing: {replace} }})"#,
            g.url()
        )
    };
    let p = project(&post(false), 16, 1);
    ok(&p.kiln(&["build", "."]));
    ok(&p.kiln(&["build", "."]));
    // without replace_existing, Glance keeps both (names are not unique)
    let before = named(&rt, &glance, "kiln-it-replace");
    assert_eq!(before.len(), 2, "{before:?}");
    // an image with another name is not touched
    let other = rt
        .block_on(glance.create(&kiln_openstack::NewImage::new(
            "kiln-it-replace-not",
            kiln_openstack::DiskFormat::Qcow2,
        )))
        .unwrap();

    testkit::make_qcow2(&p.path().join("output/v2.qcow2"), 16, 2).unwrap();
    write_build(&p, "output/v2.qcow2", &post(true));
    let out = p.kiln(&["build", "."]);
    ok(&out);
    let after = named(&rt, &glance, "kiln-it-replace");
    assert_eq!(after.len(), 1, "{after:?}\n{}", text(&out));
    assert!(before.iter().all(|b| b.id != after[0].id));
    assert_eq!(after[0].status, ImageStatus::Active);
    assert_eq!(
        after[0].os_hash_value.as_deref(),
        Some(sha512_file(&p.path().join("output/v2.qcow2")).as_str())
    );
    let all = text(&out);
    for b in &before {
        assert!(
            all.contains(&format!("Deleted the old image {}", b.id)),
            "{all}"
        );
    }
    assert!(rt.block_on(glance.show(&other.image.id)).is_ok());
}

#[test]
fn a_missing_or_wrong_token_is_a_clear_auth_error_and_creates_nothing() {
    let token = "right-token-kiln-0123";
    let g = GlancePeer::start_with(GlanceOptions {
        token: Some(token.into()),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("the Glance peer did not start: {e}"));
    let rt = rt();
    let glance = client(&rt, g.url(), Some(token));
    let p = project(
        &format!(
            r#"openstack_image(#{{ name: "kiln-it-auth", endpoint: "{}", token: secret("GLANCE_TOKEN") }})"#,
            g.url()
        ),
        16,
        1,
    );
    let build = |tok: &str| {
        kiln_cmd(p.path(), &["build", "."])
            .env("GLANCE_TOKEN", tok)
            .env_remove("OS_CLOUD")
            .output()
            .unwrap()
    };

    let wrong = "wrong-token-kiln-9876";
    let out = build(wrong);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("rejected the credentials (HTTP 401)"), "{all}");
    assert!(all.contains("check the token"), "{all}");
    assert!(!all.contains(wrong), "the token leaked: {all}");
    assert!(!audit(&p).contains(wrong), "the token is in the audit log");
    assert!(named(&rt, &glance, "kiln-it-auth").is_empty());

    // no token at all: the same clear refusal
    p.write(
        "build.rhai",
        &std::fs::read_to_string(p.path().join("build.rhai"))
            .unwrap()
            .replace(r#", token: secret("GLANCE_TOKEN")"#, ""),
    );
    let out = build(wrong);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("rejected the credentials (HTTP 401)"), "{all}");
    assert!(all.contains("this endpoint wants a token"), "{all}");
    assert!(named(&rt, &glance, "kiln-it-auth").is_empty());

    // the right one from OS_TOKEN, the way the CLI takes it; it never shows
    let out = kiln_cmd(p.path(), &["build", "."])
        .env("OS_TOKEN", token)
        .env("KILN_LOG", "debug")
        .output()
        .unwrap();
    ok(&out);
    assert!(!text(&out).contains(token), "{}", text(&out));
    assert!(!audit(&p).contains(token));
    assert_eq!(named(&rt, &glance, "kiln-it-auth").len(), 1);

    // a plain string where a secret goes is refused before anything is sent
    p.write(
        "build.rhai",
        &std::fs::read_to_string(p.path().join("build.rhai"))
            .unwrap()
            .replace(
                r#"auth", endpoint"#,
                &format!(r#"auth2", token: "{token}", endpoint"#),
            ),
    );
    let out = build(wrong);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("token must be a secret(\"NAME\") handle"),
        "{all}"
    );
    assert!(named(&rt, &glance, "kiln-it-auth2").is_empty());
}

#[test]
fn a_disk_format_glance_refuses_deletes_the_image_and_fails_the_build() {
    let g = glance();
    let rt = rt();
    let glance = client(&rt, g.url(), None);
    // qcow2 data labelled iso: Glance inspects the upload and refuses it (415)
    let p = project(
        &format!(
            r#"openstack_image(#{{ name: "kiln-it-refused", disk_format: "iso", endpoint: "{}" }})"#,
            g.url()
        ),
        16,
        1,
    );
    let out = p.kiln(&["build", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("disk_format iso does not match stream data qcow2"),
        "{all}"
    );
    assert!(all.contains("removed: Glance image"), "{all}");
    assert!(named(&rt, &glance, "kiln-it-refused").is_empty());
    let log = audit(&p);
    assert!(
        log.lines()
            .any(|l| l.contains(": delete image ") && l.contains(r#""outcome":"ok"#)),
        "{log}"
    );

    // a qcow2 with a backing file fails Glance's safety checks the same way
    let base = p.path().join("output/base.qcow2");
    testkit::make_qcow2(&base, 16, 1).unwrap();
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(p.path().join("output/overlay.qcow2"))
        .status()
        .unwrap();
    assert!(st.success());
    write_build(
        &p,
        "output/overlay.qcow2",
        &format!(
            r#"openstack_image(#{{ name: "kiln-it-refused", endpoint: "{}" }})"#,
            g.url()
        ),
    );
    let out = p.kiln(&["build", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("safety checks"), "{all}");
    assert!(named(&rt, &glance, "kiln-it-refused").is_empty());
}

#[test]
fn sigint_mid_upload_leaves_no_image() {
    let g = glance();
    let rt = rt();
    let glance = client(&rt, g.url(), None);
    let p = project("", 0, 0);
    // 400 MiB of random bytes: raw, so Glance stores it as it comes, slowly enough here
    let file = p.path().join("output/disk.raw");
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 400M /dev/urandom > {}", file.display()))
        .status()
        .unwrap();
    assert!(st.success());
    write_build(
        &p,
        "output/disk.raw",
        &format!(
            r#"openstack_image(#{{ name: "kiln-it-sigint", endpoint: "{}" }})"#,
            g.url()
        ),
    );
    let mut child = kiln_cmd(p.path(), &["build", "."])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // mid-upload: Glance says `saving` while the data streams in
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let imgs = named(&rt, &glance, "kiln-it-sigint");
        if imgs.iter().any(|i| i.status == ImageStatus::Saving) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the upload never started: {imgs:?}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "kiln ended before the upload was interrupted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let all = format!("{}\n{stderr}", reader.join().unwrap());
    assert_eq!(status.code(), Some(1), "{all}");
    assert!(all.contains("Interrupted by SIGINT"), "{all}");
    assert!(all.contains("removed: Glance image"), "{all}");
    assert!(named(&rt, &glance, "kiln-it-sigint").is_empty(), "{all}");
    let log = audit(&p);
    assert!(
        log.lines().any(
            |l| l.contains(": upload image ") && l.contains("cancelled: interrupted by SIGINT")
        ),
        "{log}"
    );
    // Glance drops the partial data once it sees the connection go
    let mut left = g.stored_files();
    let t = Instant::now();
    while !left.is_empty() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
        left = g.stored_files();
    }
    assert!(left.is_empty(), "data left in Glance's store: {left:?}");
}

#[test]
fn keystone_password_auth_from_clouds_yaml_needs_the_cloud_granted() {
    let ks = KeystonePeer::start().unwrap_or_else(|e| panic!("Keystone did not start: {e}"));
    let g = GlancePeer::start_with(ks.glance_options())
        .unwrap_or_else(|e| panic!("the Glance peer did not start: {e}"));
    let rt = rt();
    rt.block_on(ks.register_image_endpoints(&[("public", "RegionOne", g.url())]))
        .unwrap();
    let password = "kiln-it-Pa55-word";
    let user = rt.block_on(ks.create_user("kiln-it", password)).unwrap();
    // clouds.yaml in the project, the password in secure.yaml, as openstack users keep them
    let p = project(
        r#"openstack_image(#{ name: "kiln-it-keystone", tags: ["kiln"] }), manifest("output/manifest.json")"#,
        16,
        1,
    );
    p.write(
        "clouds.yaml",
        &format!(
            "clouds:\n  kiln-it:\n    region_name: RegionOne\n    auth:\n      auth_url: {}/v3\n      \
             username: {}\n      project_name: {}\n      user_domain_name: Default\n      \
             project_domain_name: Default\n",
            ks.url(),
            user.name,
            user.project_name
        ),
    );
    p.write(
        "secure.yaml",
        &format!("clouds:\n  kiln-it:\n    auth:\n      password: {password}\n"),
    );
    let build = || {
        kiln_cmd(p.path(), &["build", "."])
            .env("OS_CLOUD", "kiln-it")
            .env("KILN_LOG", "debug")
            .output()
            .unwrap()
    };
    // the environment chose the cloud: the script did not grant it
    let out = build();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(r#"is not granted openstack("kiln-it")"#)
            && all.contains(r#"allow: #{ openstack: ["kiln-it"] }"#),
        "{all}"
    );

    write_build(
        &p,
        "output/disk.qcow2",
        r#"openstack_image(#{ name: "kiln-it-keystone", tags: ["kiln"],
               allow: #{ openstack: ["kiln-it"] } }), manifest("output/manifest.json")"#,
    );
    let out = build();
    ok(&out);
    let all = text(&out);
    assert!(!all.contains(password), "the password leaked: {all}");
    let log = audit(&p);
    assert!(!log.contains(password), "the password is in the audit log");
    assert!(
        log.contains(r#""object":"kiln-it: connect (cloud \"kiln-it\": password auth"#),
        "{log}"
    );
    let m = std::fs::read_to_string(p.path().join("output/manifest.json")).unwrap();
    assert!(!m.contains(password));
    let v: serde_json::Value = serde_json::from_str(&m).unwrap();
    let os = &v["builds"][0]["openstack"];
    assert_eq!(os["cloud"], "kiln-it");
    assert_eq!(os["owner"], user.project_id.as_str());
    assert_eq!(os["endpoint"], g.url());

    // the image is the user's, in their project, active and verified
    let opts = CloudOptions {
        auth_url: Some(format!("{}/v3", ks.url())),
        username: Some(user.name.clone()),
        password: Some(Secret::new(password)),
        project_name: Some(user.project_name.clone()),
        ..Default::default()
    };
    let cfg = CloudConfig::resolve(&opts, &Environment::empty()).unwrap();
    let glance = rt.block_on(Glance::connect(&cfg)).unwrap();
    let imgs = named(&rt, &glance, "kiln-it-keystone");
    assert_eq!(imgs.len(), 1, "{imgs:?}");
    assert_eq!(imgs[0].status, ImageStatus::Active);
    assert_eq!(os["id"], imgs[0].id.as_str());
}

/// examples/qemu-debian built for real, its image published with `--var glance_endpoint`.
#[test]
fn the_qemu_debian_example_publishes_its_image() {
    let _vm = crate::qemu::VM_LOCK.blocking_lock();
    let (image, key) = crate::qemu::base_image();
    let g = glance();
    let rt = rt();
    let p = Project::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/qemu-debian");
    for f in ["build.rhai", "files/app.conf", "files/www/index.html"] {
        let dest = p.path().join(f);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(src.join(f), dest).unwrap();
    }
    std::fs::create_dir_all(p.path().join("keys")).unwrap();
    std::fs::copy(&key, p.path().join("keys/id_ed25519")).unwrap();
    let out = p.kiln(&[
        "build",
        "--no-cache",
        "--var",
        &format!("base_image={}", image.display()),
        "--var",
        &format!("glance_endpoint={}", g.url()),
        ".",
    ]);
    ok(&out);
    let qcow2: PathBuf = p.path().join("output/debian-web.qcow2");
    let imgs = named(&rt, &client(&rt, g.url(), None), "debian-web");
    assert_eq!(imgs.len(), 1, "{imgs:?}\n{}", text(&out));
    let img = &imgs[0];
    assert_eq!(img.status, ImageStatus::Active);
    assert_eq!(
        img.os_hash_value.as_deref(),
        Some(sha512_file(&qcow2).as_str())
    );
    assert_eq!(img.virtual_size, Some(4 << 30));
    assert_eq!(
        img.properties.get("os_distro").map(String::as_str),
        Some("debian")
    );
    assert!(img.tags.iter().any(|t| t == "kiln"), "{:?}", img.tags);
    let m = manifest(&p);
    assert_eq!(m["builds"][0]["artifact_id"], img.id.as_str());
    assert_eq!(m["builds"][0]["openstack"]["endpoint"], g.url());
}
