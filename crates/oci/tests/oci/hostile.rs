//! Hostile layers: every escape attempt is refused with a typed error and nothing is
//! written outside the target.

use std::path::Path;

use kiln_oci::{UnpackError, UnpackOptions, WhiteoutMode, unpack_layer};

use crate::common::*;

enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

/// A tar with exactly these names, written byte by byte (no path sanitizing).
fn raw_tar(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let (name, kind, link, data): (&str, tar::EntryType, &str, &[u8]) = match e {
            E::File(n, d) => (n, tar::EntryType::Regular, "", d),
            E::Dir(n) => (n, tar::EntryType::Directory, "", b""),
            E::Symlink(n, l) => (n, tar::EntryType::Symlink, l, b""),
            E::HardLink(n, l) => (n, tar::EntryType::Link, l, b""),
        };
        {
            let u = h.as_ustar_mut().unwrap();
            u.name = [0; 100];
            u.name[..name.len()].copy_from_slice(name.as_bytes());
            u.linkname = [0; 100];
            u.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn unpack(target: &Path, tar: &[u8]) -> Result<kiln_oci::UnpackStats, UnpackError> {
    unpack_layer(tar, target, &UnpackOptions::new(WhiteoutMode::Overlay))
}

struct Case {
    target: tempfile::TempDir,
    outside: tempfile::TempDir,
}

fn case() -> Case {
    let c = Case {
        target: tempdir(),
        outside: tempdir(),
    };
    write(&c.outside.path().join("secret"), "secret\n");
    c
}

fn outside_untouched(c: &Case) {
    let snap = snapshot(c.outside.path());
    assert_eq!(
        snap.len(),
        1,
        "something was written outside the target: {snap:?}"
    );
    assert_eq!(
        std::fs::read_to_string(c.outside.path().join("secret")).unwrap(),
        "secret\n"
    );
}

#[test]
fn dot_dot_is_refused() {
    let c = case();
    // target/../<outside>/x resolves into the other temp dir if anything followed it.
    let rel = format!(
        "../{}/x",
        c.outside.path().file_name().unwrap().to_str().unwrap()
    );
    for name in ["../x", "a/../../x", rel.as_str()] {
        let r = unpack(c.target.path(), &raw_tar(&[E::File(name, b"pwned")]));
        assert!(
            matches!(r, Err(UnpackError::UnsafePath { .. })),
            "{name}: {r:?}"
        );
    }
    outside_untouched(&c);
    assert!(!c.target.path().parent().unwrap().join("x").exists());
}

#[test]
fn absolute_names_are_refused() {
    let c = case();
    let abs = c.outside.path().join("x");
    let r = unpack(
        c.target.path(),
        &raw_tar(&[E::File(abs.to_str().unwrap(), b"pwned")]),
    );
    assert!(matches!(r, Err(UnpackError::UnsafePath { .. })), "{r:?}");
    let r = unpack(
        c.target.path(),
        &raw_tar(&[E::File("/etc/kiln-oci-test-x", b"pwned")]),
    );
    assert!(matches!(r, Err(UnpackError::UnsafePath { .. })), "{r:?}");
    assert!(!Path::new("/etc/kiln-oci-test-x").exists());
    outside_untouched(&c);
}

#[test]
fn no_path_goes_through_a_symlink() {
    let c = case();
    let out = c.outside.path().to_str().unwrap();
    // A symlink to outside, then a file "through" it.
    let r = unpack(
        c.target.path(),
        &raw_tar(&[E::Symlink("link", out), E::File("link/x", b"pwned")]),
    );
    assert!(
        matches!(r, Err(UnpackError::ThroughSymlink { .. })),
        "{r:?}"
    );
    // A relative symlink that climbs out, then a directory and a file below it.
    let c2 = case();
    let up = format!(
        "../{}",
        c2.outside.path().file_name().unwrap().to_str().unwrap()
    );
    let r = unpack(
        c2.target.path(),
        &raw_tar(&[
            E::Symlink("up", &up),
            E::Dir("up/d/"),
            E::File("up/d/x", b"pwned"),
        ]),
    );
    assert!(
        matches!(r, Err(UnpackError::ThroughSymlink { .. })),
        "{r:?}"
    );
    // A symlink to a directory inside the target is not followed either.
    let c3 = case();
    let r = unpack(
        c3.target.path(),
        &raw_tar(&[
            E::Dir("real/"),
            E::Symlink("alias", "real"),
            E::File("alias/x", b"x"),
        ]),
    );
    assert!(
        matches!(r, Err(UnpackError::ThroughSymlink { .. })),
        "{r:?}"
    );
    assert!(!c3.target.path().join("real/x").exists());
    for c in [&c, &c2, &c3] {
        outside_untouched(c);
    }
}

#[test]
fn a_file_replaces_a_symlink_instead_of_writing_through_it() {
    let c = case();
    let secret = c.outside.path().join("secret");
    unpack(
        c.target.path(),
        &raw_tar(&[
            E::Symlink("s", secret.to_str().unwrap()),
            E::File("s", b"pwned"),
        ]),
    )
    .unwrap();
    outside_untouched(&c);
    assert_eq!(std::fs::read(c.target.path().join("s")).unwrap(), b"pwned");
    assert!(
        !std::fs::symlink_metadata(c.target.path().join("s"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn hard_links_cannot_reach_outside() {
    let c = case();
    let secret = c.outside.path().join("secret");
    let up = format!(
        "../{}/secret",
        c.outside.path().file_name().unwrap().to_str().unwrap()
    );
    let r = unpack(
        c.target.path(),
        &raw_tar(&[E::HardLink("h", secret.to_str().unwrap())]),
    );
    assert!(
        matches!(r, Err(UnpackError::UnsafePath { .. })),
        "absolute: {r:?}"
    );
    let r = unpack(c.target.path(), &raw_tar(&[E::HardLink("h", &up)]));
    assert!(
        matches!(r, Err(UnpackError::UnsafePath { .. })),
        "dot-dot: {r:?}"
    );
    // Through a symlink to the outside dir.
    let r = unpack(
        c.target.path(),
        &raw_tar(&[
            E::Symlink("s", c.outside.path().to_str().unwrap()),
            E::HardLink("h", "s/secret"),
        ]),
    );
    assert!(
        matches!(r, Err(UnpackError::ThroughSymlink { .. })),
        "through a symlink: {r:?}"
    );
    // To a symlink that points outside: the link is to the symlink itself, never its target.
    let c2 = case();
    unpack(
        c2.target.path(),
        &raw_tar(&[
            E::Symlink("s", secret.to_str().unwrap()),
            E::HardLink("h", "s"),
        ]),
    )
    .unwrap();
    assert!(
        std::fs::symlink_metadata(c2.target.path().join("h"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // To a file not in the layer.
    let r = unpack(c2.target.path(), &raw_tar(&[E::HardLink("h2", "missing")]));
    assert!(
        matches!(r, Err(UnpackError::HardLinkTarget { .. })),
        "{r:?}"
    );
    assert_eq!(std::fs::metadata(&secret).unwrap().len(), 7);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&secret).unwrap().nlink(),
        1,
        "nothing linked to the outside file"
    );
    outside_untouched(&c);
    outside_untouched(&c2);
}

#[test]
fn huge_headers_and_garbage_are_refused() {
    let c = case();
    // A PAX header claiming 100 MiB: refused before anything is buffered.
    let mut h = tar::Header::new_ustar();
    h.as_ustar_mut().unwrap().name[..3].copy_from_slice(b"pax");
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(100 << 20);
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend(std::iter::repeat_n(0u8, 4096));
    let r = unpack(c.target.path(), &bytes);
    assert!(matches!(r, Err(UnpackError::Tar(_))), "{r:?}");
    let r = unpack(c.target.path(), &[0x42u8; 2048]);
    assert!(matches!(r, Err(UnpackError::Tar(_))), "{r:?}");
    // A decompression bomb beyond the caller's limit.
    let mut big = raw_tar(&[E::File("big", &vec![0u8; 1 << 20])]);
    big.extend_from_slice(&[0u8; 1024]);
    let mut o = UnpackOptions::new(WhiteoutMode::Overlay);
    o.max_uncompressed = 64 * 1024;
    let r = unpack_layer(&big[..], c.target.path(), &o);
    assert!(matches!(r, Err(UnpackError::TooLarge { .. })), "{r:?}");
    // A wrong diff_id.
    let t2 = tempdir();
    let mut o = UnpackOptions::new(WhiteoutMode::Overlay);
    o.expected_diff_id = Some(kiln_oci::Digest::of(b"something else"));
    let r = unpack_layer(&raw_tar(&[E::File("f", b"x")])[..], t2.path(), &o);
    assert!(
        matches!(r, Err(UnpackError::DiffIdMismatch { .. })),
        "{r:?}"
    );
    outside_untouched(&c);
}
