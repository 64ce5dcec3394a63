//! Against real CNCF distribution registries started per test: plain HTTP, TLS with
//! htpasswd basic auth, and bearer tokens from a token service the registry trusts.

use std::path::Path;

use kiln_oci::registry::{BlobPush, PushOptions};
use kiln_oci::testkit::{RegistryPeer, TokenServer};
use kiln_oci::{
    Credentials, Gzip, ImageBuilder, LayerOptions, LayerSource, OciLayout, Platform,
    RegistryClient, RegistryError, RegistryOptions, Secret, Step, UnpackOptions, WhiteoutMode,
    unpack_layer,
};

use crate::common::*;
use crate::outputs::build_image;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn plain_client(peer: &RegistryPeer) -> RegistryClient {
    RegistryClient::new(
        &peer.host,
        RegistryOptions {
            insecure: vec![peer.host.clone()],
            ..Default::default()
        },
    )
    .unwrap()
}

fn uploads(peer: &RegistryPeer) -> usize {
    peer.access_log()
        .iter()
        .filter(|(m, p, _)| (m == "PUT" || m == "PATCH") && p.contains("/blobs/uploads/"))
        .count()
}

#[test]
fn base_push_pull_by_digest_derive_mount_and_skip() {
    let peer = RegistryPeer::plain().unwrap();
    let t = tempdir();
    let layout = OciLayout::create(&t.path().join("layout")).unwrap();
    let img = build_image(t.path(), &layout, "base");
    let local = layout.read_image("base", &Platform::linux_amd64()).unwrap();
    let rt = rt();
    let c = plain_client(&peer);
    rt.block_on(c.check()).unwrap();

    let r = rt
        .block_on(c.push(
            &layout,
            &local,
            "kiln/base",
            &["1".into()],
            &PushOptions::default(),
        ))
        .unwrap();
    assert_eq!(r.manifest_digest, img.manifest.digest);
    assert_eq!(
        r.reference,
        format!("{}/kiln/base@{}", peer.host, img.manifest.digest)
    );
    assert_eq!(r.count(BlobPush::Uploaded), 3, "two layers and the config");

    // Pull by digest into a fresh layout: same manifest bytes, verified blobs.
    let pulled_dir = t.path().join("pulled");
    let pulled = OciLayout::create(&pulled_dir).unwrap();
    let p = rt
        .block_on(c.pull(
            "kiln/base",
            &img.manifest.digest.to_string(),
            &Platform::linux_amd64(),
            &pulled,
            Some("base"),
        ))
        .unwrap();
    assert_eq!(p.fetched, 3);
    assert_eq!(p.image.manifest_json, img.manifest_json);
    assert_eq!(
        pulled
            .read_image("base", &Platform::linux_amd64())
            .unwrap()
            .manifest_descriptor
            .digest,
        img.manifest.digest
    );
    let unpacked = t.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    for (l, d) in p
        .image
        .manifest
        .layers
        .iter()
        .zip(&p.image.config.rootfs.diff_ids)
    {
        let mut o = UnpackOptions::new(WhiteoutMode::Apply);
        o.expected_diff_id = Some(d.clone());
        unpack_layer(pulled.open_blob(l).unwrap(), &unpacked, &o).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(unpacked.join("srv/app/index.html")).unwrap(),
        "<h1>kiln</h1>\n"
    );
    // A second pull finds everything present.
    let p2 = rt
        .block_on(c.pull("kiln/base", "1", &Platform::linux_amd64(), &pulled, None))
        .unwrap();
    assert_eq!((p2.fetched, p2.present), (0, 3));

    // Derive an image from the pulled base, push it to another repository: the base's
    // layers are mounted, only the new layer and config are uploaded.
    let step = t.path().join("derive-step");
    write(&step.join("etc/motd"), "derived\n");
    let layer = pulled
        .write_layer(
            &step,
            &LayerOptions {
                source: LayerSource::Tree,
                source_date_epoch: Some(0),
            },
            &Gzip::default(),
        )
        .unwrap();
    let mut b = ImageBuilder::from_base(p.image.config.clone(), &p.image.manifest).unwrap();
    b.add_layer_info(
        &layer,
        &Step {
            created_by: "file: motd".into(),
            created: Some(0),
            comment: None,
        },
    );
    let derived = b.build();
    pulled.put_image(&derived, Some("app")).unwrap();
    let app = pulled.read_image("app", &Platform::linux_amd64()).unwrap();
    let before = uploads(&peer);
    let r = rt
        .block_on(c.push(
            &pulled,
            &app,
            "kiln/app",
            &["latest".into(), "v2".into()],
            &PushOptions {
                mount_from: vec!["kiln/base".into()],
            },
        ))
        .unwrap();
    assert_eq!(r.count(BlobPush::Mounted), 2, "{:?}", r.blobs);
    assert_eq!(r.count(BlobPush::Uploaded), 2);
    assert_eq!(uploads(&peer) - before, 2);

    // Pushing again sends no blob: HEAD finds each one.
    let before = uploads(&peer);
    let r = rt
        .block_on(c.push(
            &pulled,
            &app,
            "kiln/app",
            &["latest".into()],
            &PushOptions::default(),
        ))
        .unwrap();
    assert_eq!(r.count(BlobPush::Existed), 4);
    assert_eq!(r.bytes_uploaded, 0);
    assert_eq!(
        uploads(&peer),
        before,
        "the registry log shows no upload on the second push"
    );

    // skopeo agrees with what is in the registry.
    let out = sh(std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{}/kiln/app:v2", peer.host)));
    assert_eq!(out.as_bytes(), &derived.manifest_json[..]);

    // An index over the image, pushed by tag, resolves to the platform's manifest.
    let mut d = derived.manifest.clone();
    d.platform = Some(Platform::linux_amd64());
    let index = kiln_oci::Index::new(vec![d]);
    let idx_digest = rt
        .block_on(c.push_index("kiln/app", &index, &["multi".into()]))
        .unwrap();
    let f = rt.block_on(c.get_manifest("kiln/app", "multi")).unwrap();
    assert_eq!(f.descriptor.digest, idx_digest);
    let again = OciLayout::create(&t.path().join("again")).unwrap();
    let p3 = rt
        .block_on(c.pull(
            "kiln/app",
            "multi",
            &Platform::linux_amd64(),
            &again,
            Some("x"),
        ))
        .unwrap();
    assert_eq!(p3.image.manifest_descriptor.digest, derived.manifest.digest);
    let e = rt
        .block_on(c.pull(
            "kiln/app",
            "multi",
            &Platform::parse("linux/arm64").unwrap(),
            &again,
            None,
        ))
        .unwrap_err();
    assert!(matches!(e, RegistryError::NoPlatform { .. }), "{e}");
    let e = rt.block_on(c.get_manifest("kiln/app", "nope")).unwrap_err();
    match &e {
        RegistryError::NotFound { details, .. } => {
            assert!(details.has_code("MANIFEST_UNKNOWN"), "{e}")
        }
        other => panic!("expected NotFound, got {other}"),
    }
}

#[test]
fn pulls_docker_v2s2_images_and_builds_oci_on_them() {
    let peer = RegistryPeer::plain().unwrap();
    let t = tempdir();
    let layout = OciLayout::create(&t.path().join("layout")).unwrap();
    crate::outputs::build_image_with(t.path(), &layout, "v1", &Gzip::default());
    // skopeo converts it to Docker's v2 schema 2 (which has no zstd layers).
    sh(std::process::Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--format",
            "v2s2",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:v1", layout.root().display()))
        .arg(format!("docker://{}/docker/img:1", peer.host)));
    let rt = rt();
    let c = plain_client(&peer);
    let pulled = OciLayout::create(&t.path().join("pulled")).unwrap();
    let p = rt
        .block_on(c.pull(
            "docker/img",
            "1",
            &Platform::linux_amd64(),
            &pulled,
            Some("base"),
        ))
        .unwrap();
    assert_eq!(
        p.image.manifest.media_type.as_deref(),
        Some(kiln_oci::media::DOCKER_MANIFEST)
    );
    assert_eq!(
        p.image.manifest_descriptor.media_type,
        kiln_oci::media::DOCKER_MANIFEST
    );
    assert_eq!(
        p.image
            .config
            .config
            .as_ref()
            .unwrap()
            .entrypoint
            .as_deref(),
        Some(&["/bin/hello".to_string()][..])
    );
    // Read back from the layout, and derived as a pure OCI image.
    let base = pulled.read_image("base", &Platform::linux_amd64()).unwrap();
    let mut b = ImageBuilder::from_base(base.config.clone(), &base.manifest).unwrap();
    b.add_empty_step(&Step {
        created_by: "shell: true".into(),
        created: Some(0),
        comment: None,
    });
    let img = b.build();
    assert!(
        img.layers
            .iter()
            .all(|l| l.media_type == kiln_oci::media::OCI_LAYER_GZIP)
    );
    pulled.put_image(&img, Some("derived")).unwrap();
    let derived = pulled
        .read_image("derived", &Platform::linux_amd64())
        .unwrap();
    let r = rt
        .block_on(c.push(
            &pulled,
            &derived,
            "docker/derived",
            &["1".into()],
            &PushOptions {
                mount_from: vec!["docker/img".into()],
            },
        ))
        .unwrap();
    assert_eq!(r.count(BlobPush::Mounted), 2);
    sh(std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{}/docker/derived:1", peer.host)));
}

#[test]
fn chunked_uploads_and_corrupt_blobs() {
    let peer = RegistryPeer::plain().unwrap();
    let t = tempdir();
    let layout = OciLayout::create(&t.path().join("layout")).unwrap();
    // ~3 MiB of incompressible data, pushed in 1 MiB PATCH chunks.
    let tree = t.path().join("tree");
    let data: Vec<u8> = (0..3_200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("blob.bin"), &data).unwrap();
    let layer = layout
        .write_layer(
            &tree,
            &LayerOptions {
                source: LayerSource::Tree,
                source_date_epoch: Some(0),
            },
            &kiln_oci::Uncompressed,
        )
        .unwrap();
    let mut b = ImageBuilder::scratch(&Platform::linux_amd64());
    b.add_layer_info(
        &layer,
        &Step {
            created_by: "big".into(),
            created: Some(0),
            comment: None,
        },
    );
    let img = b.build();
    layout.put_image(&img, Some("big")).unwrap();
    let local = layout.read_image("big", &Platform::linux_amd64()).unwrap();
    let rt = rt();
    let c = RegistryClient::new(
        &peer.host,
        RegistryOptions {
            insecure: vec![peer.host.clone()],
            chunked_threshold: 1 << 20,
            chunk_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    rt.block_on(c.push(
        &layout,
        &local,
        "kiln/big",
        &["1".into()],
        &PushOptions::default(),
    ))
    .unwrap();
    let patches = peer
        .access_log()
        .iter()
        .filter(|(m, _, s)| m == "PATCH" && *s == 202)
        .count();
    assert_eq!(patches, 4, "3.2 MB in 1 MiB chunks");
    let back = OciLayout::create(&t.path().join("back")).unwrap();
    rt.block_on(c.pull("kiln/big", "1", &Platform::linux_amd64(), &back, None))
        .unwrap();
    assert_eq!(
        std::fs::read(back.blob_path(&layer.digest)).unwrap(),
        std::fs::read(layout.blob_path(&layer.digest)).unwrap()
    );

    // Corrupt the blob in the registry's storage (same size): the pull refuses it and
    // keeps nothing.
    let stored = find_blob_data(&peer.data_dir(), layer.digest.hex())
        .expect("blob data in the registry storage");
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[1000] ^= 0x55;
    std::fs::write(&stored, &bytes).unwrap();
    let fresh = OciLayout::create(&t.path().join("fresh")).unwrap();
    let e = rt
        .block_on(c.pull("kiln/big", "1", &Platform::linux_amd64(), &fresh, None))
        .unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
    assert!(!fresh.has_blob(&layer.descriptor()));
    let leftovers: Vec<_> = std::fs::read_dir(fresh.root().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn find_blob_data(root: &Path, hex: &str) -> Option<std::path::PathBuf> {
    let p = root.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    p.exists().then_some(p)
}

#[test]
fn plain_http_only_when_listed_insecure() {
    let peer = RegistryPeer::plain().unwrap();
    let rt = rt();
    let c = RegistryClient::new(&peer.host, RegistryOptions::default()).unwrap();
    let e = rt.block_on(c.check()).unwrap_err();
    assert!(
        matches!(e, RegistryError::Tls { .. }),
        "https to a plain-HTTP registry: {e}"
    );
    assert!(e.to_string().contains("insecure"), "{e}");
}

#[test]
fn tls_with_basic_auth_and_bad_credentials() {
    let peer = RegistryPeer::tls_basic("kiln", "s3cret-pw").unwrap();
    let t = tempdir();
    let layout = OciLayout::create(&t.path().join("layout")).unwrap();
    build_image(t.path(), &layout, "v1");
    let local = layout.read_image("v1", &Platform::linux_amd64()).unwrap();
    let rt = rt();

    // Without the CA: a TLS error that says what to do.
    let no_ca = RegistryClient::new(&peer.host, RegistryOptions::default()).unwrap();
    let e = rt.block_on(no_ca.check()).unwrap_err();
    assert!(matches!(e, RegistryError::Tls { .. }), "{e}");
    assert!(e.to_string().contains("ca_file"), "{e}");

    // Bad credentials: unauthorized, and nothing of the image is in the registry after.
    let bad = RegistryClient::new(
        &peer.host,
        RegistryOptions {
            ca_file: peer.ca_file.clone(),
            credentials: Credentials::Basic {
                username: "kiln".into(),
                password: Secret::new("wrong-pw"),
            },
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!format!("{bad:?}").contains("wrong-pw"));
    let e = rt
        .block_on(bad.push(
            &layout,
            &local,
            "kiln/secure",
            &["v1".into()],
            &PushOptions::default(),
        ))
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains("check the user name"), "{e}");
    assert!(!e.to_string().contains("wrong-pw") && !format!("{e:?}").contains("wrong-pw"));

    // Good credentials from an auth file (docker config format).
    let auth_file = t.path().join("auth.json");
    let auth = base64_encode("kiln:s3cret-pw");
    std::fs::write(
        &auth_file,
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, peer.host),
    )
    .unwrap();
    let good = RegistryClient::new(
        &peer.host,
        RegistryOptions {
            ca_file: peer.ca_file.clone(),
            credentials: Credentials::AuthFile(Some(auth_file)),
            ..Default::default()
        },
    )
    .unwrap();
    let e = rt
        .block_on(good.get_manifest("kiln/secure", "v1"))
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::NotFound { .. }),
        "no manifest after the failed push: {e}"
    );
    for l in &local.manifest.layers {
        assert_eq!(
            rt.block_on(good.blob_exists("kiln/secure", &l.digest))
                .unwrap(),
            None,
            "no blob after the failed push"
        );
    }
    let r = rt
        .block_on(good.push(
            &layout,
            &local,
            "kiln/secure",
            &["v1".into()],
            &PushOptions::default(),
        ))
        .unwrap();
    assert_eq!(r.count(BlobPush::Uploaded), 3);
    let f = rt.block_on(good.get_manifest("kiln/secure", "v1")).unwrap();
    assert_eq!(f.descriptor.digest, local.manifest_descriptor.digest);
    // Anonymous reads are refused too.
    let anon = RegistryClient::new(
        &peer.host,
        RegistryOptions {
            ca_file: peer.ca_file.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let e = rt
        .block_on(anon.get_manifest("kiln/secure", "v1"))
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn bearer_tokens_from_a_real_token_service() {
    let tokens = TokenServer::start("robot", "tok-pw").unwrap();
    let peer = RegistryPeer::start(false, tokens.registry_auth()).unwrap();
    let t = tempdir();
    let layout = OciLayout::create(&t.path().join("layout")).unwrap();
    build_image(t.path(), &layout, "v1");
    let local = layout.read_image("v1", &Platform::linux_amd64()).unwrap();
    let rt = rt();
    let opts = |creds| RegistryOptions {
        insecure: vec![peer.host.clone(), tokens.host.clone()],
        credentials: creds,
        ..Default::default()
    };

    let bad = RegistryClient::new(
        &peer.host,
        opts(Credentials::Basic {
            username: "robot".into(),
            password: Secret::new("nope"),
        }),
    )
    .unwrap();
    let e = rt
        .block_on(bad.push(
            &layout,
            &local,
            "team/app",
            &["v1".into()],
            &PushOptions::default(),
        ))
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    assert!(tokens.refused() >= 1);

    let good = RegistryClient::new(
        &peer.host,
        opts(Credentials::Basic {
            username: "robot".into(),
            password: Secret::new("tok-pw"),
        }),
    )
    .unwrap();
    let r = rt
        .block_on(good.push(
            &layout,
            &local,
            "team/app",
            &["v1".into()],
            &PushOptions::default(),
        ))
        .unwrap_or_else(|e| panic!("{e}\n{}", peer.log()));
    assert_eq!(r.count(BlobPush::Uploaded), 3);
    assert!(tokens.issued() >= 1, "the registry asked for a token");
    let pulled = OciLayout::create(&t.path().join("pulled")).unwrap();
    let p = rt
        .block_on(good.pull(
            "team/app",
            &r.manifest_digest.to_string(),
            &Platform::linux_amd64(),
            &pulled,
            None,
        ))
        .unwrap_or_else(|e| panic!("{e}\n{}", peer.log()));
    assert_eq!(p.image.manifest_descriptor.digest, r.manifest_digest);
    // Tokens are cached per scope: far fewer token requests than registry requests.
    assert!(
        tokens.issued() < usize::try_from(good.requests_sent()).unwrap() / 2,
        "{} tokens for {} requests",
        tokens.issued(),
        good.requests_sent()
    );
    // A token service on plain HTTP that is not listed as insecure gets no credentials.
    let strict = RegistryClient::new(
        &peer.host,
        RegistryOptions {
            insecure: vec![peer.host.clone()],
            credentials: Credentials::Basic {
                username: "robot".into(),
                password: Secret::new("tok-pw"),
            },
            ..Default::default()
        },
    )
    .unwrap();
    let e = rt
        .block_on(strict.get_manifest("team/app", "v1"))
        .unwrap_err();
    assert!(matches!(e, RegistryError::Insecure(_)), "{e}");
}
