//! Layers from a real overlayfs upper directory, unpacked back into overlay lowerdir
//! format and applied to a tree; reproducibility.

use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use kiln_oci::{
    Compressor, Gzip, ImageBuilder, LayerOptions, LayerSource, OciLayout, Platform, Step,
    UnpackOptions, WhiteoutMode, Zstd, unpack_layer, upper_is_empty,
};

use crate::common::*;

const EPOCH: i64 = 1_700_000_000;

fn opts(source: LayerSource) -> LayerOptions {
    LayerOptions {
        source,
        source_date_epoch: Some(EPOCH),
    }
}

/// The base every overlay test starts from.
fn make_lower(dir: &Path) {
    write(&dir.join("etc/keep"), "keep\n");
    write(&dir.join("etc/modify"), "old\n");
    write(&dir.join("etc/delete"), "doomed\n");
    write(&dir.join("data/old/a"), "a\n");
    write(&dir.join("data/old/b"), "b\n");
    write(&dir.join("bin/tool"), "#!/bin/sh\necho tool\n");
}

/// One provisioning step, done in the merged view: change, add, delete a file, and
/// rmdir + recreate a directory (which overlayfs records as an opaque directory).
fn step(merged: &Path) {
    write(&merged.join("etc/modify"), "new\n");
    write(&merged.join("etc/new"), "added\n");
    std::fs::remove_file(merged.join("etc/delete")).unwrap();
    std::fs::remove_dir_all(merged.join("data/old")).unwrap();
    std::fs::create_dir(merged.join("data/old")).unwrap();
    write(&merged.join("data/old/c"), "c\n");
    std::os::unix::fs::symlink("../etc/new", merged.join("bin/link")).unwrap();
    std::fs::hard_link(merged.join("etc/new"), merged.join("etc/new-hardlink")).unwrap();
}

#[test]
fn overlay_upper_to_layer_and_back() {
    require_root();
    let t = tempdir();
    let lower = t.path().join("lower");
    make_lower(&lower);
    let mut ov = Overlay::mount(&t.path().join("ov"), &[&lower]);
    step(&ov.merged);
    let expected = snapshot(&ov.merged);
    ov.unmount();

    // The upper dir holds overlayfs' own records of the deletions.
    let upper = ov.upper.clone();
    assert!(
        std::fs::symlink_metadata(upper.join("etc/delete"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert_eq!(
        xattr(&upper.join("data/old"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!upper_is_empty(&upper).unwrap());

    let layout = OciLayout::create(&t.path().join("layout")).unwrap();
    let layer = layout
        .write_layer(&upper, &opts(LayerSource::OverlayUpper), &Gzip::default())
        .unwrap();
    let blob = layout.blob_path(&layer.digest);
    assert_eq!(std::fs::metadata(&blob).unwrap().len(), layer.size);
    let names = tar_names(&blob);
    for want in [
        "etc/.wh.delete",
        "data/old/.wh..wh..opq",
        "data/old/c",
        "etc/modify",
        "etc/new",
        "bin/link",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} not in layer: {names:?}"
        );
    }
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with("/a") || n.ends_with("etc/keep")),
        "unchanged files leaked into the layer: {names:?}"
    );
    // The opaque marker comes right after its directory, before the directory's content.
    let dir_at = names
        .iter()
        .position(|n| n.trim_end_matches('/') == "data/old")
        .unwrap();
    assert_eq!(names[dir_at + 1], "data/old/.wh..wh..opq");

    // Unpacked in overlay format, the layer stacks on the lower dir as it did when built.
    let unpacked = t.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let mut o = UnpackOptions::new(WhiteoutMode::Overlay);
    o.expected_diff_id = Some(layer.diff_id.clone());
    let stats = unpack_layer(BufReader::new(File::open(&blob).unwrap()), &unpacked, &o).unwrap();
    assert_eq!(stats.diff_id, layer.diff_id);
    let wh = std::fs::symlink_metadata(unpacked.join("etc/delete")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is a 0:0 char device"
    );
    assert_eq!(
        xattr(&unpacked.join("data/old"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    let nl = std::fs::metadata(unpacked.join("etc/new")).unwrap();
    assert_eq!(
        nl.ino(),
        std::fs::metadata(unpacked.join("etc/new-hardlink"))
            .unwrap()
            .ino(),
        "hard link kept"
    );

    let view = Overlay::mount_ro(&t.path().join("view"), &[&unpacked, &lower]);
    let got = snapshot(&view.merged);
    drop(view);
    assert_eq!(got, expected);
    assert!(!got.contains_key("etc/delete") && !got.contains_key("data/old/a"));

    // Applied to a copy of the lower tree, it gives the same tree.
    let applied = t.path().join("applied");
    sh(std::process::Command::new("cp")
        .arg("-a")
        .arg(&lower)
        .arg(&applied));
    unpack_layer(
        BufReader::new(File::open(&blob).unwrap()),
        &applied,
        &UnpackOptions::new(WhiteoutMode::Apply),
    )
    .unwrap();
    assert_eq!(snapshot(&applied), expected);
}

#[test]
fn a_step_that_changes_nothing_is_detected() {
    require_root();
    let t = tempdir();
    let lower = t.path().join("lower");
    make_lower(&lower);
    let mut ov = Overlay::mount(&t.path().join("ov"), &[&lower]);
    // Reading files and listing directories does not copy anything up.
    let _ = std::fs::read(ov.merged.join("etc/keep")).unwrap();
    let _ = std::fs::read_dir(ov.merged.join("data")).unwrap().count();
    ov.unmount();
    assert!(upper_is_empty(&ov.upper).unwrap());
    let mut out = Vec::new();
    let info = kiln_oci::write_layer(
        &ov.upper,
        &opts(LayerSource::OverlayUpper),
        &Gzip::default(),
        &mut out,
    )
    .unwrap();
    assert_eq!(info.entries, 0);
}

/// Runs the same step in a fresh overlay, then gives the upper dir's files the given
/// times (as a later or slower build would), and builds its layer.
fn build_once(
    dir: &Path,
    lower: &Path,
    atime: i64,
    mtime: i64,
    c: &dyn Compressor,
) -> (kiln_oci::LayerInfo, kiln_oci::BuiltImage, Vec<u8>) {
    let mut ov = Overlay::mount(&dir.join("ov"), &[lower]);
    step(&ov.merged);
    ov.unmount();
    for p in [
        "etc/modify",
        "etc/new",
        "data/old/c",
        "data/old",
        "etc",
        "bin/link",
    ] {
        set_times(&ov.upper.join(p), atime, mtime);
    }
    let mut blob = Vec::new();
    let layer =
        kiln_oci::write_layer(&ov.upper, &opts(LayerSource::OverlayUpper), c, &mut blob).unwrap();
    let mut b = ImageBuilder::scratch(&Platform::linux_amd64());
    b.set_created(Some(EPOCH));
    b.add_layer_info(
        &layer,
        &Step {
            created_by: "shell: provision".into(),
            created: Some(EPOCH),
            comment: None,
        },
    );
    (layer, b.build(), blob)
}

#[test]
fn same_inputs_give_byte_identical_layers_and_manifests() {
    require_root();
    let t = tempdir();
    let lower = t.path().join("lower");
    make_lower(&lower);
    let now = 1_800_000_000;
    for c in [&Gzip::default() as &dyn Compressor, &Zstd::default()] {
        let (l1, i1, b1) = build_once(
            &t.path().join(format!("a-{:?}", c.compression())),
            &lower,
            now,
            now,
            c,
        );
        let (l2, i2, b2) = build_once(
            &t.path().join(format!("b-{:?}", c.compression())),
            &lower,
            now + 12345,
            now + 777,
            c,
        );
        assert_eq!(b1, b2, "layer bytes differ");
        assert_eq!(l1, l2);
        assert_eq!(i1.manifest.digest, i2.manifest.digest);
        assert_eq!(i1.manifest_json, i2.manifest_json);
        assert_eq!(i1.config_json, i2.config_json);
    }
}

#[test]
fn tree_layer_carries_capabilities_devices_and_owners() {
    require_root();
    let t = tempdir();
    let tree = t.path().join("rootfs");
    write(&tree.join("usr/bin/ping"), "ELF");
    // VFS_CAP_REVISION_2 with CAP_NET_RAW (bit 13) permitted and effective.
    let cap: [u8; 20] = [
        1, 0, 0, 2, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    rustix::fs::lsetxattr(
        tree.join("usr/bin/ping"),
        "security.capability",
        &cap,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::fs::create_dir_all(tree.join("dev")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        tree.join("dev/null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        tree.join("dev/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    write(&tree.join("home/user/file"), "mine");
    std::os::unix::fs::chown(tree.join("home/user/file"), Some(1000), Some(1001)).unwrap();
    std::os::unix::net::UnixListener::bind(tree.join("sock")).unwrap();

    let mut blob = Vec::new();
    let info = kiln_oci::write_layer(&tree, &opts(LayerSource::Tree), &Gzip::default(), &mut blob)
        .unwrap();
    assert!(info.entries > 5);
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    unpack_layer(&blob[..], &out, &UnpackOptions::new(WhiteoutMode::Overlay)).unwrap();
    assert_eq!(
        xattr(&out.join("usr/bin/ping"), "security.capability").as_deref(),
        Some(&cap[..])
    );
    let n = std::fs::symlink_metadata(out.join("dev/null")).unwrap();
    assert!(n.file_type().is_char_device());
    assert_eq!(
        (rustix::fs::major(n.rdev()), rustix::fs::minor(n.rdev())),
        (1, 3)
    );
    assert!(
        std::fs::symlink_metadata(out.join("dev/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let f = std::fs::metadata(out.join("home/user/file")).unwrap();
    assert_eq!((f.uid(), f.gid()), (1000, 1001));
    assert!(!out.join("sock").exists(), "sockets are not archived");
    // GNU tar reads the layer too, and sees numeric owners only.
    let tgz = t.path().join("l.tgz");
    std::fs::write(&tgz, &blob).unwrap();
    let listing = sh(std::process::Command::new("tar")
        .arg("-tvz")
        .arg("-f")
        .arg(&tgz));
    assert!(listing.contains("1000/1001"), "{listing}");
}

#[test]
fn squash_merges_layers_with_their_deletions() {
    require_root();
    let t = tempdir();
    let lower = t.path().join("lower");
    make_lower(&lower);
    let mut ov = Overlay::mount(&t.path().join("ov"), &[&lower]);
    step(&ov.merged);
    let expected = snapshot(&ov.merged);
    ov.unmount();
    let layout = OciLayout::create(&t.path().join("layout")).unwrap();
    let base = layout
        .write_layer(&lower, &opts(LayerSource::Tree), &Gzip::default())
        .unwrap();
    let top = layout
        .write_layer(
            &ov.upper,
            &opts(LayerSource::OverlayUpper),
            &Gzip::default(),
        )
        .unwrap();
    let work = t.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let layers = [
        (base.descriptor(), base.diff_id.clone()),
        (top.descriptor(), top.diff_id.clone()),
    ];
    let squashed =
        kiln_oci::squash_layers(&layout, &layers, &work, Some(EPOCH), &Gzip::default()).unwrap();
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        0,
        "scratch tree removed"
    );
    let names = tar_names(&layout.blob_path(&squashed.digest));
    assert!(
        !names.iter().any(|n| n.contains(".wh.")),
        "a squashed layer has no whiteouts: {names:?}"
    );
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    unpack_layer(
        layout.open_blob(&squashed.descriptor()).unwrap(),
        &out,
        &UnpackOptions::new(WhiteoutMode::Overlay),
    )
    .unwrap();
    assert_eq!(snapshot(&out), expected);
    // Squashing the same layers again gives the same layer.
    let again =
        kiln_oci::squash_layers(&layout, &layers, &work, Some(EPOCH), &Gzip::default()).unwrap();
    assert_eq!(again, squashed);
}

/// A compressor from outside the crate, writing one gzip member per 64 KiB the way the
/// runtime's `ParallelGzWriter` does: the trait is all the runtime needs to plug in.
struct MultiMemberGzip;

struct Members<'a> {
    out: &'a mut dyn std::io::Write,
    buf: Vec<u8>,
}

impl Members<'_> {
    fn member(&mut self) -> std::io::Result<()> {
        let mut enc = flate2::GzBuilder::new()
            .mtime(0)
            .operating_system(255)
            .write(&mut *self.out, flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &self.buf)?;
        enc.finish()?;
        self.buf.clear();
        Ok(())
    }
}

impl std::io::Write for Members<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = b.len().min(65536 - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() == 65536 {
            self.member()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl kiln_oci::FinishWrite for Members<'_> {
    fn finish(mut self: Box<Self>) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.member()?;
        }
        self.out.flush()
    }
}

impl Compressor for MultiMemberGzip {
    fn compression(&self) -> kiln_oci::Compression {
        kiln_oci::Compression::Gzip
    }
    fn compress<'a>(
        &self,
        out: &'a mut dyn std::io::Write,
    ) -> std::io::Result<Box<dyn kiln_oci::FinishWrite + 'a>> {
        Ok(Box::new(Members {
            out,
            buf: Vec::new(),
        }))
    }
}

#[test]
fn a_pluggable_multi_member_gzip_makes_valid_layers() {
    let t = tempdir();
    let tree = t.path().join("tree");
    let big: String = (0..40_000).map(|i| format!("line {i}\n")).collect();
    write(&tree.join("big.txt"), &big);
    let layout = OciLayout::create(&t.path().join("layout")).unwrap();
    let a = layout
        .write_layer(&tree, &opts(LayerSource::Tree), &MultiMemberGzip)
        .unwrap();
    let b = layout
        .write_layer(&tree, &opts(LayerSource::Tree), &Gzip::default())
        .unwrap();
    assert_eq!(a.diff_id, b.diff_id, "same tar whatever the compressor");
    assert_ne!(a.digest, b.digest);
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut o = UnpackOptions::new(WhiteoutMode::Overlay);
    o.expected_diff_id = Some(a.diff_id.clone());
    unpack_layer(layout.open_blob(&a.descriptor()).unwrap(), &out, &o).unwrap();
    assert_eq!(std::fs::read_to_string(out.join("big.txt")).unwrap(), big);
}
