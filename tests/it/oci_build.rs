//! The oci builder end to end through `kiln build`: each step in its own container on
//! a busybox base image (an OCI layout the test makes), one layer per step, pushed to
//! Debian's docker-registry on 127.0.0.1 (plain HTTP, and TLS with htpasswd) and pulled
//! back by digest; reproducible digests; the layer cache; and a failing or interrupted
//! build leaving no image, mount, process or work directory behind.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use kiln_oci::testkit::RegistryPeer;
use kiln_oci::{
    Credentials, Gzip, ImageBuilder, LayerOptions, LayerSource, OciLayout, Platform,
    RegistryClient, RegistryOptions, Secret, Step, UnpackOptions, WhiteoutMode,
};

use crate::cli::{Project, find_audit, kiln_cmd, text};

/// A busybox root filesystem as a one-layer OCI layout (tag `base`), and a private
/// kiln cache dir, under /var/tmp/kiln-peers (a filesystem overlayfs accepts).
pub(crate) struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the oci builder's containers need root (namespaces, overlayfs)"
        );
        std::fs::create_dir_all("/var/tmp/kiln-peers").unwrap();
        let dir = tempfile::Builder::new()
            .prefix("kiln-oci-it-")
            .tempdir_in("/var/tmp/kiln-peers")
            .unwrap();
        let rootfs = dir.path().join("rootfs");
        kiln_rootfs::testkit::busybox_rootfs(&rootfs, true)
            .expect("busybox rootfs (install busybox-static: tools/setup.d/rootfs.sh)");
        let layout = OciLayout::create(&dir.path().join("base")).unwrap();
        let info = layout
            .write_layer(
                &rootfs,
                &LayerOptions {
                    source: LayerSource::Tree,
                    source_date_epoch: Some(0),
                },
                &Gzip::default(),
            )
            .unwrap();
        let mut b = ImageBuilder::scratch(&Platform::linux_amd64());
        b.add_layer_info(
            &info,
            &Step {
                created_by: "busybox test image".into(),
                created: Some(0),
                comment: None,
            },
        );
        b.container_config_mut().env = vec!["PATH=/bin".into()];
        layout.put_image(&b.build(), Some("base")).unwrap();
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        Fixture { dir }
    }

    pub(crate) fn base(&self) -> String {
        format!("oci-layout:{}:base", self.dir.path().join("base").display())
    }

    pub(crate) fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn kiln(&self, p: &Project, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = kiln_cmd(p.path(), args);
        c.env("KILN_CACHE_DIR", self.cache())
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("REGISTRY_AUTH_FILE");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run kiln")
    }

    /// Nothing of the store's work left: no build directory, no mount of it.
    pub(crate) fn assert_no_leftovers(&self, all: &str) {
        let tmp = self.cache().join("oci/tmp");
        let left: Vec<_> = std::fs::read_dir(&tmp)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "work directories left: {left:?}\n{all}");
        let mounts =
            kiln_rootfs::testkit::host_mounts_mentioning(&self.cache().display().to_string());
        assert!(mounts.is_empty(), "mounts left: {mounts:?}\n{all}");
        let proc_mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        assert!(
            !proc_mounts.contains(&self.cache().display().to_string()),
            "/proc/mounts mentions the cache: {proc_mounts}"
        );
    }
}

/// The digest in "Image sha256:<hex>: N layers" (the builder's summary line).
fn image_digest(out: &str) -> String {
    let hex: String = out
        .split("Image sha256:")
        .nth(1)
        .unwrap_or_else(|| panic!("no image digest in the output:\n{out}"))
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    assert_eq!(hex.len(), 64, "{out}");
    format!("sha256:{hex}")
}

/// Pids of `sleep ARG` processes.
fn sleepers(arg: &str) -> Vec<u32> {
    let want = format!("sleep\0{arg}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want.as_bytes())
        })
        .collect()
}

/// A client of a plain-HTTP registry peer (listed as insecure).
pub(crate) fn plain_client(reg: &RegistryPeer) -> RegistryClient {
    RegistryClient::new(
        &reg.host,
        RegistryOptions {
            insecure: vec![reg.host.clone()],
            ..RegistryOptions::default()
        },
    )
    .unwrap()
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Applies every layer of `layout`'s image `tag` to a fresh tree (deletions done).
fn flatten(layout: &OciLayout, tag: &str, into: &Path) -> kiln_oci::LocalImage {
    let img = layout.read_image(tag, &Platform::linux_amd64()).unwrap();
    std::fs::create_dir_all(into).unwrap();
    for (d, diff_id) in img.manifest.layers.iter().zip(&img.config.rootfs.diff_ids) {
        let mut o = UnpackOptions::new(WhiteoutMode::Apply);
        o.expected_diff_id = Some(diff_id.clone());
        kiln_oci::unpack_layer(
            std::io::BufReader::new(layout.open_blob(d).unwrap()),
            into,
            &o,
        )
        .unwrap();
    }
    img
}

/// The entry names of a layer blob's tar.
fn layer_entries(layout: &OciLayout, d: &kiln_oci::Descriptor) -> Vec<String> {
    let blob = std::io::BufReader::new(layout.open_blob(d).unwrap());
    let (_, raw) = kiln_oci::compress::decompress(blob).unwrap();
    let mut t = tar::Archive::new(raw);
    t.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

const STEPS: &str = r#"
build("img", #{ sources: ["app"], steps: [
    shell(["echo hello > /etc/hello", "mkdir -p /srv/data", "echo x > /srv/data/x", "rm /etc/os-release"]),
    file("files/app.conf", "/etc/app.conf"),
    shell(["cat /etc/app.conf > /dev/null"]),
    shell(["rm /etc/hello"]),
    |m| { let f = m.facts(); m.write_file("/etc/facts", `${f.hostname} ${f.user}` + "\n", 0o644); },
]});
"#;

/// Layers per step (one with a deletion from the base, one deleting an earlier step's
/// file, one changing nothing), pushed to a plain-HTTP registry and pulled back by
/// digest: the pulled image is the built one and has what the steps made.
#[test]
fn layers_per_step_pushed_and_pulled_by_digest() {
    let fx = Fixture::new();
    let reg = RegistryPeer::plain().expect("docker-registry (tools/setup.d/registry.sh)");
    let p = Project::new();
    p.write("files/app.conf", "listen 8080\n");
    p.write(
        "build.rhai",
        &format!(
            r#"
source("app", oci(#{{
    image: "{base}",
    changes: #{{ env: #{{ APP_ENV: "prod" }}, entrypoint: ["/bin/sh", "-c"], cmd: ["cat /etc/app.conf"],
                exposed_ports: ["8080/tcp"], labels: #{{ team: "infra" }}, workdir: "/srv" }},
    output: ["oci-layout:output/img:v1"],
    push: #{{ repository: "{host}/kiln/app", tags: ["v1"] }},
    insecure: ["{host}"],
}}));
{STEPS}"#,
            base = fx.base(),
            host = reg.host
        ),
    );
    let out = fx.kiln(&p, &["build", "."], &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let digest = image_digest(&all);
    assert!(
        all.contains(&format!("Pushed {}/kiln/app@{digest}", reg.host)),
        "{all}"
    );
    assert!(all.contains("Step 3 changed no file: no layer"), "{all}");

    // The layout: base + 4 layers (step 3 changed nothing), a history entry per step.
    let layout = OciLayout::open(&p.path().join("output/img")).unwrap();
    let tree = tempfile::tempdir_in("/var/tmp/kiln-peers").unwrap();
    let img = flatten(&layout, "v1", tree.path());
    assert_eq!(img.manifest_descriptor.digest.to_string(), digest);
    assert_eq!(img.manifest.layers.len(), 5, "{all}");
    let h = &img.config.history;
    assert_eq!(h.len(), 6);
    assert_eq!(h[1].created_by.as_deref(), Some("shell (4 commands)"));
    assert_eq!(
        h[2].created_by.as_deref(),
        Some("file files/app.conf => /etc/app.conf")
    );
    assert!(h[3].empty_layer && !h[4].empty_layer);
    let c = img.config.config.as_ref().unwrap();
    assert!(c.env.contains(&"APP_ENV=prod".to_string()), "{:?}", c.env);
    assert_eq!(c.working_dir.as_deref(), Some("/srv"));
    assert!(c.exposed_ports.contains_key("8080/tcp"));
    assert_eq!(img.config.created.as_deref(), Some("1970-01-01T00:00:00Z"));
    // Deletions are whiteouts in their layers and gone after unpacking.
    let wh = layer_entries(&layout, &img.manifest.layers[1]);
    assert!(wh.iter().any(|e| e == "etc/.wh.os-release"), "{wh:?}");
    let wh = layer_entries(&layout, &img.manifest.layers[3]);
    assert!(wh.iter().any(|e| e == "etc/.wh.hello"), "{wh:?}");
    assert!(!tree.path().join("etc/os-release").exists());
    assert!(!tree.path().join("etc/hello").exists());
    assert_eq!(
        std::fs::read_to_string(tree.path().join("etc/app.conf")).unwrap(),
        "listen 8080\n"
    );
    assert_eq!(
        std::fs::read_to_string(tree.path().join("srv/data/x")).unwrap(),
        "x\n"
    );
    assert_eq!(
        std::fs::read_to_string(tree.path().join("etc/facts")).unwrap(),
        "kiln root\n"
    );
    // Nothing of the step machinery (the shell step's script) ended up in the image.
    assert!(
        std::fs::read_dir(tree.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );

    // Pulled back by digest into a fresh layout: the same image, every blob verified.
    let pulled_dir = tempfile::tempdir_in("/var/tmp/kiln-peers").unwrap();
    let pulled = OciLayout::create(pulled_dir.path()).unwrap();
    let client = plain_client(&reg);
    let report = rt()
        .block_on(client.pull(
            "kiln/app",
            &digest,
            &Platform::linux_amd64(),
            &pulled,
            Some("got"),
        ))
        .unwrap();
    assert_eq!(report.image.manifest_descriptor.digest.to_string(), digest);
    assert_eq!(report.image.config_json, img.config_json);
    let by_tag = rt()
        .block_on(client.get_manifest("kiln/app", "v1"))
        .unwrap();
    assert_eq!(by_tag.descriptor.digest.to_string(), digest);

    // Every pull and push is audited under `oci`.
    let audit = find_audit(p.path());
    assert!(
        audit.lines().any(|l| l.contains(r#""capability":"oci""#)
            && l.contains("push kiln/app:v1")
            && l.contains(r#""outcome":"ok"#)),
        "{audit}"
    );
    fx.assert_no_leftovers(&all);
}

/// Two builds of the same script and inputs give the same digest (the second with
/// `--no-cache`, so every layer is made again); a third reuses every layer; after a
/// change in an uploaded file, the steps before it come from the cache and it and
/// the later ones run again.
#[test]
fn reproducible_digests_and_the_layer_cache() {
    let fx = Fixture::new();
    let p = Project::new();
    p.write("files/app.conf", "listen 8080\n");
    p.write(
        "build.rhai",
        &format!(
            r#"
source("app", oci(#{{ image: "{base}", changes: #{{ cmd: [var("cmd", "/bin/true")] }},
    output: ["oci-layout:output/img:v1", "docker-archive:output/img.tar:localhost/app:v1"] }}));
{STEPS}"#,
            base = fx.base()
        ),
    );
    let first = fx.kiln(&p, &["build", "."], &[]);
    let a = text(&first);
    assert_eq!(first.status.code(), Some(0), "{a}");
    assert!(
        !a.contains("Using cached layer"),
        "a fresh cache has nothing: {a}"
    );
    let d1 = image_digest(&a);
    let archive = kiln_oci::DockerArchive::open(&p.path().join("output/img.tar")).unwrap();
    archive.verify().unwrap();

    let again = fx.kiln(&p, &["build", "--no-cache", "."], &[]);
    let b = text(&again);
    assert_eq!(again.status.code(), Some(0), "{b}");
    assert!(!b.contains("Using cached layer"), "{b}");
    assert_eq!(
        image_digest(&b),
        d1,
        "a rebuild must give the same digest\n{a}\n{b}"
    );

    let cached = fx.kiln(&p, &["build", "."], &[]);
    let c = text(&cached);
    assert_eq!(cached.status.code(), Some(0), "{c}");
    for n in 1..=5 {
        assert!(
            c.contains(&format!("Using cached layer for step {n}")),
            "{c}"
        );
    }
    assert!(
        !c.contains("Provisioning with shell"),
        "no step may run: {c}"
    );
    assert_eq!(image_digest(&c), d1);

    // A changed upload: step 1 from the cache, step 2 onwards run again.
    p.write("files/app.conf", "listen 9090\n");
    let changed = fx.kiln(&p, &["build", "."], &[]);
    let d = text(&changed);
    assert_eq!(changed.status.code(), Some(0), "{d}");
    assert!(d.contains("Using cached layer for step 1"), "{d}");
    for n in 2..=5 {
        assert!(
            !d.contains(&format!("Using cached layer for step {n}")),
            "{d}"
        );
    }
    assert_ne!(image_digest(&d), d1);
    // Changing only the image config (not a step, and not the script: closure steps
    // count the script's digest) keeps every layer cached but changes the image.
    let config_only = fx.kiln(&p, &["build", "--var", "cmd=/bin/sh", "."], &[]);
    let e = text(&config_only);
    assert_eq!(config_only.status.code(), Some(0), "{e}");
    for n in 1..=5 {
        assert!(
            e.contains(&format!("Using cached layer for step {n}")),
            "{e}"
        );
    }
    assert_ne!(image_digest(&e), image_digest(&d));
    fx.assert_no_leftovers(&e);
}

/// TLS with htpasswd: the password comes from a secret and never shows; wrong
/// credentials fail with a clear message and leave nothing the registry references.
#[test]
fn tls_registry_with_basic_auth_and_bad_credentials() {
    let fx = Fixture::new();
    let reg = RegistryPeer::tls_basic("kiln", "s3cret-registry-pw").expect("docker-registry");
    let ca = reg.ca_file.clone().unwrap();
    let p = Project::new();
    p.write("files/app.conf", "x\n");
    let script = |output: &str| {
        format!(
            r#"
source("app", oci(#{{
    image: "{base}",
    output: [{output}],
    push: #{{ repository: "{host}/team/app", tags: ["1.0", "latest"] }},
    credentials: #{{ "{host}": #{{ username: "kiln", password: secret("REG_PW") }} }},
    ca_file: "{ca}",
}}));
build("img", #{{ sources: ["app"], steps: [ shell(["echo one > /one"]), file("files/app.conf", "/etc/app.conf") ] }});
"#,
            base = fx.base(),
            host = reg.host,
            ca = ca.display()
        )
    };
    p.write("build.rhai", &script("\"oci-layout:output/bad:v1\""));
    let bad = fx.kiln(&p, &["build", "."], &[("REG_PW", "not-the-password")]);
    let all = text(&bad);
    assert_eq!(bad.status.code(), Some(1), "{all}");
    assert!(all.contains("refused the credentials"), "{all}");
    assert!(
        !all.contains("not-the-password"),
        "the password leaked: {all}"
    );
    assert!(!find_audit(p.path()).contains("not-the-password"));
    assert!(
        !p.path().join("output/bad").exists(),
        "a failed build leaves no layout\n{all}"
    );
    let good_client = || {
        RegistryClient::new(
            &reg.host,
            RegistryOptions {
                credentials: Credentials::Basic {
                    username: "kiln".into(),
                    password: Secret::new("s3cret-registry-pw"),
                },
                ca_file: Some(ca.clone()),
                ..RegistryOptions::default()
            },
        )
        .unwrap()
    };
    for tag in ["1.0", "latest"] {
        let r = rt().block_on(good_client().get_manifest("team/app", tag));
        assert!(
            matches!(r, Err(kiln_oci::RegistryError::NotFound { .. })),
            "tag {tag} exists after a refused push: {r:?}"
        );
    }
    fx.assert_no_leftovers(&all);

    p.write("build.rhai", &script(""));
    let good = fx.kiln(&p, &["build", "."], &[("REG_PW", "s3cret-registry-pw")]);
    let all = text(&good);
    assert_eq!(good.status.code(), Some(0), "{all}");
    assert!(!all.contains("s3cret-registry-pw"), "{all}");
    let digest = image_digest(&all);
    for tag in ["1.0", "latest"] {
        let m = rt()
            .block_on(good_client().get_manifest("team/app", tag))
            .unwrap();
        assert_eq!(m.descriptor.digest.to_string(), digest);
    }
}

/// A failing step: no image written or pushed, and the step's processes (a background
/// sleeper it started) are gone, as are its mounts and the build's work directory.
/// Then the same for Ctrl-C in the middle of a step.
#[test]
fn failed_and_interrupted_builds_leave_nothing() {
    let fx = Fixture::new();
    let reg = RegistryPeer::plain().expect("docker-registry");
    let p = Project::new();
    let marker = format!("31{}", std::process::id());
    p.write(
        "build.rhai",
        &format!(
            r#"
source("app", oci(#{{ image: "{base}", output: ["oci-layout:output/img:v1"],
    push: #{{ repository: "{host}/kiln/fail", tags: ["v1"] }}, insecure: ["{host}"] }}));
build("img", #{{ sources: ["app"], steps: [
    shell(["echo ok > /ok"]),
    shell(["sleep {marker} &", "echo about to fail", "exit 3"]),
]}});
"#,
            base = fx.base(),
            host = reg.host
        ),
    );
    let out = fx.kiln(&p, &["build", "."], &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("exited with status 3"), "{all}");
    assert!(
        sleepers(&marker).is_empty(),
        "the step's process outlived it\n{all}"
    );
    assert!(!p.path().join("output").join("img").exists(), "{all}");
    let r = rt().block_on(plain_client(&reg).get_manifest("kiln/fail", "v1"));
    assert!(
        matches!(r, Err(kiln_oci::RegistryError::NotFound { .. })),
        "{r:?}"
    );
    fx.assert_no_leftovers(&all);

    // Ctrl-C while a step runs.
    let marker2 = format!("32{}", std::process::id());
    p.write(
        "build.rhai",
        &format!(
            r#"
source("app", oci(#{{ image: "{base}", output: ["oci-layout:output/img:v1"] }}));
build("img", #{{ sources: ["app"], steps: [ shell(["sleep {marker2}0 &", "sleep {marker2}"]) ] }});
"#,
            base = fx.base()
        ),
    );
    let child = kiln_cmd(p.path(), &["build", "."])
        .env("KILN_CACHE_DIR", fx.cache())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while sleepers(&marker2).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the step never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("removed: container of step 1"), "{all}");
    let t1 = Instant::now();
    while !(sleepers(&marker2).is_empty() && sleepers(&format!("{marker2}0")).is_empty()) {
        assert!(
            t1.elapsed() < Duration::from_secs(30),
            "processes left after Ctrl-C\n{all}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!p.path().join("output/img").exists(), "{all}");
    fx.assert_no_leftovers(&all);
}

/// A step's timeout ends the step's processes; a step granted `net` sees the host's
/// network (the registry on 127.0.0.1), one without it does not.
#[test]
fn timeouts_and_network_per_step() {
    let fx = Fixture::new();
    let p = Project::new();
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    let marker = format!("33{}", std::process::id());
    p.write(
        "build.rhai",
        &format!(
            r#"
source("app", oci(#{{ image: "{base}", output: ["oci-layout:output/img:v1"] }}));
build("img", #{{ sources: ["app"], steps: [
    shell(["if nc -w 2 127.0.0.1 {port} </dev/null; then echo reachable > /net-none; else echo unreachable > /net-none; fi"]),
    shell(["if nc -w 5 127.0.0.1 {port} </dev/null; then echo reachable > /net-host; else echo unreachable > /net-host; fi"],
          #{{ allow: #{{ net: ["127.0.0.1:{port}"] }} }}),
]}});
"#,
            base = fx.base()
        ),
    );
    let accept = std::thread::spawn(move || {
        let _ = probe.accept();
    });
    let out = fx.kiln(&p, &["build", "."], &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let tree = tempfile::tempdir_in("/var/tmp/kiln-peers").unwrap();
    flatten(
        &OciLayout::open(&p.path().join("output/img")).unwrap(),
        "v1",
        tree.path(),
    );
    let read = |f: &str| std::fs::read_to_string(tree.path().join(f)).unwrap();
    assert_eq!(read("net-none"), "unreachable\n");
    assert_eq!(read("net-host"), "reachable\n");
    drop(accept);

    p.write(
        "build.rhai",
        &format!(
            r#"
source("app", oci(#{{ image: "{base}", output: ["oci-layout:output/t:v1"] }}));
build("img", #{{ sources: ["app"], steps: [ shell(["sleep {marker} &", "sleep {marker}1"], #{{ timeout: "3s" }}) ] }});
"#,
            base = fx.base()
        ),
    );
    let out = fx.kiln(&p, &["build", "."], &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("timed out after 3s"), "{all}");
    assert!(
        sleepers(&marker).is_empty() && sleepers(&format!("{marker}1")).is_empty(),
        "{all}"
    );
    fx.assert_no_leftovers(&all);
}

/// `kiln inspect` shows the grants the oci builder derives from its config.
#[test]
fn inspect_shows_the_oci_builders_grants() {
    let p = Project::new();
    p.write(
        "build.rhai",
        r#"
source("app", oci(#{ image: "registry.example.com/base/debian:12", output: "oci-layout:out/img:v1",
    push: #{ repository: "127.0.0.1:5001/team/app", tags: ["v1"] } }));
build("img", #{ sources: ["app"], steps: [ shell(["true"]) ] });
"#,
    );
    let out = p.kiln(&["inspect", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("registry.example.com"), "{all}");
    assert!(all.contains("127.0.0.1:5001"), "{all}");
}
