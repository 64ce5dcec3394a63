//! OCI layout and docker-archive outputs, read back by kiln and by skopeo.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::process::Command;

use kiln_oci::{
    Changes, Digest, DockerArchive, Gzip, ImageBuilder, LayerOptions, LayerSource, OciLayout,
    Platform, Step, Zstd, write_docker_archive,
};

use crate::common::*;

const EPOCH: i64 = 1_700_000_000;

/// A small image: a rootfs tree imported as the base layer, one step layer, changes.
pub fn build_image(dir: &Path, layout: &OciLayout, tag: &str) -> kiln_oci::BuiltImage {
    build_image_with(dir, layout, tag, &Zstd::default())
}

/// As [`build_image`], with the second layer compressed by `second`.
pub fn build_image_with(
    dir: &Path,
    layout: &OciLayout,
    tag: &str,
    second: &dyn kiln_oci::Compressor,
) -> kiln_oci::BuiltImage {
    let rootfs = dir.join("rootfs");
    write(&rootfs.join("etc/os-release"), "ID=kiln-test\n");
    write(&rootfs.join("bin/hello"), "#!/bin/sh\necho hello\n");
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    let step = dir.join("step");
    write(&step.join("srv/app/index.html"), "<h1>kiln</h1>\n");
    let o = |source| LayerOptions {
        source,
        source_date_epoch: Some(EPOCH),
    };
    let base = layout
        .write_layer(&rootfs, &o(LayerSource::Tree), &Gzip::default())
        .unwrap();
    let app = layout
        .write_layer(&step, &o(LayerSource::Tree), second)
        .unwrap();
    let mut b = ImageBuilder::scratch(&Platform::linux_amd64());
    b.set_created(Some(EPOCH));
    let at = |s: &str| Step {
        created_by: s.into(),
        created: Some(EPOCH),
        comment: None,
    };
    b.add_layer_info(&base, &at("import rootfs"));
    b.add_layer_info(&app, &at("file: index.html"));
    b.add_empty_step(&at("shell: true"));
    Changes {
        env: vec![("APP".into(), "kiln".into())],
        entrypoint: Some(vec!["/bin/hello".into()]),
        exposed_ports: vec!["8080".into()],
        labels: vec![("org.example.test".into(), "yes".into())],
        workdir: Some("/srv/app".into()),
        ..Default::default()
    }
    .apply(b.container_config_mut())
    .unwrap();
    let img = b.build();
    layout.put_image(&img, Some(tag)).unwrap();
    img
}

fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    c.stdin(std::process::Stdio::null());
    c
}

#[test]
fn oci_layout_reads_back_in_kiln_and_skopeo() {
    let t = tempdir();
    let layout = OciLayout::create(&t.path().join("layout")).unwrap();
    let img = build_image(t.path(), &layout, "v1");
    let again = OciLayout::open(&t.path().join("layout")).unwrap();
    assert_eq!(again.tags().unwrap(), vec!["v1".to_string()]);
    let local = again.read_image("v1", &Platform::linux_amd64()).unwrap();
    assert_eq!(local.manifest_descriptor.digest, img.manifest.digest);
    assert_eq!(local.manifest.layers.len(), 2);
    assert_eq!(local.config.history.len(), 3);
    for l in &local.manifest.layers {
        again.verify_blob(l).unwrap();
    }
    let src = kiln_oci::ImageSource::parse(&format!(
        "oci-layout:{}:v1",
        t.path().join("layout").display()
    ))
    .unwrap();
    assert!(matches!(src, kiln_oci::ImageSource::Layout { .. }));

    let out = sh(skopeo()
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:v1", t.path().join("layout").display())));
    assert_eq!(
        out.as_bytes(),
        &img.manifest_json[..],
        "skopeo sees the manifest bytes kiln wrote"
    );
    let cfg = sh(skopeo()
        .args(["inspect", "--config"])
        .arg(format!("oci:{}:v1", t.path().join("layout").display())));
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(v["config"]["Entrypoint"][0], "/bin/hello");
    assert_eq!(v["config"]["WorkingDir"], "/srv/app");
    // skopeo copies it (verifying every blob digest) into another layout.
    sh(skopeo()
        .arg("copy")
        .arg(format!("oci:{}:v1", t.path().join("layout").display()))
        .arg(format!("oci:{}:copy", t.path().join("copy").display())));

    // Tagging again replaces, and an unknown tag names what is there.
    layout.tag("v1", &img.manifest).unwrap();
    assert_eq!(layout.tags().unwrap().len(), 1);
    let e = layout
        .read_image("nope", &Platform::linux_amd64())
        .unwrap_err();
    assert!(
        matches!(e, kiln_oci::LayoutError::TagNotFound { ref available, .. } if available == &vec!["v1".to_string()]),
        "{e}"
    );
}

#[test]
fn docker_archive_reads_back_in_kiln_and_skopeo() {
    let t = tempdir();
    let layout = OciLayout::create(&t.path().join("layout")).unwrap();
    build_image(t.path(), &layout, "v1");
    let local = layout.read_image("v1", &Platform::linux_amd64()).unwrap();
    let path = t.path().join("image.tar");
    let write_it = |p: &Path| {
        let mut f = BufWriter::new(File::create(p).unwrap());
        write_docker_archive(&layout, &local, &["localhost/kiln/test:v1".into()], &mut f).unwrap();
    };
    write_it(&path);
    write_it(&t.path().join("image2.tar"));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(t.path().join("image2.tar")).unwrap(),
        "reproducible archive"
    );

    let a = DockerArchive::open(&path).unwrap();
    assert_eq!(a.images.len(), 1);
    assert_eq!(
        a.images[0].repo_tags,
        vec!["localhost/kiln/test:v1".to_string()]
    );
    assert_eq!(a.images[0].config_json, local.config_json);
    assert_eq!(a.images[0].layers.len(), 2);
    a.verify().unwrap();
    let names = sh(Command::new("tar").arg("-tf").arg(&path));
    let diff0 = local.config.rootfs.diff_ids[0].hex().to_string();
    assert!(
        names.contains(&format!("{diff0}.tar")) && names.contains("manifest.json"),
        "{names}"
    );

    let cfg = sh(skopeo()
        .args(["inspect", "--config"])
        .arg(format!("docker-archive:{}", path.display())));
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(
        v["rootfs"]["diff_ids"][1],
        local.config.rootfs.diff_ids[1].to_string()
    );
    // Copying out of the archive makes skopeo check each layer against its diff_id.
    sh(skopeo()
        .arg("copy")
        .arg(format!("docker-archive:{}", path.display()))
        .arg(format!(
            "oci:{}:fromarchive",
            t.path().join("fromarchive").display()
        )));

    // podman loads it (into a private store): the image id is kiln's config digest.
    let store = tempdir();
    let podman = |args: &[&str]| {
        sh(Command::new("podman")
            .arg("--root")
            .arg(store.path().join("root"))
            .arg("--runroot")
            .arg(store.path().join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ])
            .args(args)
            .stdin(std::process::Stdio::null()))
    };
    let loaded = podman(&["load", "-i", path.to_str().unwrap()]);
    assert!(loaded.contains("localhost/kiln/test:v1"), "{loaded}");
    let id = podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        "localhost/kiln/test:v1",
    ]);
    assert_eq!(id.trim(), Digest::of(&local.config_json).hex());

    // A corrupted layer is caught by verify.
    let m = &a.images[0].layers[1];
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[usize::try_from(m.offset).unwrap() + 600] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let a = DockerArchive::open(&path).unwrap();
    assert!(matches!(
        a.verify(),
        Err(kiln_oci::ArchiveError::DiffIdMismatch { .. })
    ));
}
