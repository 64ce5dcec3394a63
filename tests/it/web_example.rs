//! examples/web-oci-and-vm through `kiln build` (issue 11): one script whose steps are
//! built into a QEMU image (over SSH, under the real qemu-system-x86_64) and an OCI
//! image (a container per step on the Debian base `tools/oci-base-image.sh` imports),
//! the two builds in parallel, the OCI image pushed to Debian's docker-registry on
//! 127.0.0.1 and read back by digest.

use std::path::{Path, PathBuf};

use kiln_oci::testkit::RegistryPeer;
use kiln_oci::{OciLayout, Platform, UnpackOptions, WhiteoutMode};

use crate::cli::{Project, kiln_cmd, text};
use crate::qemu::{VM_LOCK, base_image};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/web-oci-and-vm")
}

/// Copies the example's script and files (not its run.sh, keys or output).
fn copy_example(into: &Path) {
    let src = example_dir();
    std::fs::copy(src.join("build.rhai"), into.join("build.rhai")).unwrap();
    let mut dirs = vec![PathBuf::from("files")];
    while let Some(rel) = dirs.pop() {
        std::fs::create_dir_all(into.join(&rel)).unwrap();
        for e in std::fs::read_dir(src.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                dirs.push(r);
            } else {
                std::fs::copy(e.path(), into.join(&r)).unwrap();
            }
        }
    }
}

#[test]
fn one_script_builds_the_vm_image_and_the_oci_image_in_parallel() {
    let _vm = VM_LOCK.blocking_lock();
    let (image, key) = base_image();
    let oci_base = image.with_file_name("oci");
    assert!(
        oci_base.join("index.json").is_file(),
        "the OCI base {} is missing: run `sudo tools/oci-base-image.sh`",
        oci_base.display()
    );
    let reg = RegistryPeer::plain().expect("docker-registry (tools/setup.d/registry.sh)");
    let p = Project::new();
    copy_example(p.path());
    std::fs::create_dir_all(p.path().join("keys")).unwrap();
    std::fs::copy(&key, p.path().join("keys/id_ed25519")).unwrap();
    // The oci builder's store must be on a file system overlayfs takes as upper.
    std::fs::create_dir_all("/var/tmp/kiln-peers").unwrap();
    let cache = tempfile::Builder::new()
        .prefix("kiln-web-it-")
        .tempdir_in("/var/tmp/kiln-peers")
        .unwrap();
    let vars = [
        format!("base_image={}", image.display()),
        format!("base_oci=oci-layout:{}:bookworm", oci_base.display()),
        format!("registry={}", reg.host),
    ];
    let mut args = vec!["build", "--no-cache"];
    for v in &vars {
        args.extend(["--var", v.as_str()]);
    }
    args.push(".");
    let out = kiln_cmd(p.path(), &args)
        .env("KILN_CACHE_DIR", cache.path())
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("run kiln");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");

    // In parallel: the container build (seconds) is done while the VM (a TCG boot of
    // half a minute or more) still builds; one after the other, the VM would end first.
    let done = |b: &str| {
        all.find(&format!("==> {b}: Build finished"))
            .unwrap_or_else(|| panic!("no end of build {b}:\n{all}"))
    };
    assert!(done("web.oci") < done("web.vm"), "{all}");

    // The VM image and the manifest naming both artifacts.
    assert!(p.path().join("output/vm/web.qcow2").is_file(), "{all}");
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.path().join("output/manifest.json")).unwrap(),
    )
    .unwrap();
    let builds = m["builds"].as_array().unwrap();
    let artifact = |t: &str| {
        builds
            .iter()
            .find(|b| b["builder_type"] == t)
            .and_then(|b| b["artifact_id"].as_str())
            .unwrap_or_else(|| panic!("no {t} build in the manifest: {m}"))
            .to_string()
    };
    assert_eq!(artifact("qemu"), "output/vm/web.qcow2");
    let pushed = artifact("oci");
    let digest = pushed
        .strip_prefix(&format!("{}/kiln/web@", reg.host))
        .unwrap_or_else(|| panic!("the oci artifact is not the pushed image: {pushed}"));

    // The OCI image: the layout's image is the one the registry has.
    let layout = OciLayout::open(&p.path().join("output/oci")).unwrap();
    let img = layout.read_image("web", &Platform::linux_amd64()).unwrap();
    assert_eq!(img.manifest_descriptor.digest.to_string(), digest);
    crate::oci_build::rt()
        .block_on(crate::oci_build::plain_client(&reg).get_manifest("kiln/web", digest))
        .unwrap_or_else(|e| panic!("the registry does not have {pushed}: {e}"));
    let cfg = img.config.config.as_ref().expect("an image config");
    assert_eq!(cfg.user.as_deref(), Some("deploy"));
    assert_eq!(cfg.working_dir.as_deref(), Some("/srv/www"));
    assert!(cfg.env.iter().any(|e| e == "APP_ENV=production"), "{cfg:?}");
    assert!(
        p.path().join("output/web-oci.tar").is_file(),
        "no docker-archive\n{all}"
    );

    // What the steps made, from the layers above the base (one per changing step).
    let steps = tempfile::tempdir().unwrap();
    let layers: Vec<_> = img
        .manifest
        .layers
        .iter()
        .zip(&img.config.rootfs.diff_ids)
        .skip(1)
        .collect();
    assert_eq!(
        layers.len(),
        5,
        "one layer per step of the oci build\n{all}"
    );
    for (d, diff_id) in layers {
        let mut o = UnpackOptions::new(WhiteoutMode::Apply);
        o.expected_diff_id = Some(diff_id.clone());
        kiln_oci::unpack_layer(
            std::io::BufReader::new(layout.open_blob(d).unwrap()),
            steps.path(),
            &o,
        )
        .unwrap();
    }
    let read = |rel: &str| std::fs::read_to_string(steps.path().join(rel)).unwrap_or_default();
    let example = |rel: &str| std::fs::read_to_string(example_dir().join(rel)).unwrap();
    assert_eq!(read("etc/motd"), "Welcome to a kiln-built image\n");
    assert_eq!(read("etc/app.conf"), example("files/app.conf"));
    assert_eq!(read("srv/www/index.html"), example("files/www/index.html"));
    assert_eq!(read("usr/local/bin/kiln-web"), example("files/kiln-web"));
    assert!(
        read("etc/passwd").contains("\ndeploy:"),
        "{}",
        read("etc/passwd")
    );
    assert!(
        read("etc/kiln-build-info").contains("os=debian 12"),
        "{}",
        read("etc/kiln-build-info")
    );
    // The deletion of a base file is a whiteout in the first step's layer.
    assert!(!steps.path().join("etc/issue.net").exists());
    let first = &img.manifest.layers[1];
    let (_, raw) =
        kiln_oci::compress::decompress(std::io::BufReader::new(layout.open_blob(first).unwrap()))
            .unwrap();
    let mut tar = tar::Archive::new(raw);
    let names: Vec<String> = tar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.trim_start_matches("./") == "etc/.wh.issue.net"),
        "no whiteout for /etc/issue.net in {names:?}"
    );
}
