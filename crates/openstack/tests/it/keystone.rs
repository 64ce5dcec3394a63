//! Against a real Keystone 30 and a Glance 33 that validates tokens with keystonemiddleware,
//! both started by the test on 127.0.0.1: password, application-credential and token auth,
//! the image endpoint from the catalog by region and interface, and the auth errors.

use std::time::Duration;

use kiln_openstack::testkit::{GlancePeer, KeystonePeer};
use kiln_openstack::{
    CloudConfig, CloudOptions, Deleted, DiskFormat, Environment, Error, Glance, NewImage, Secret,
    WaitOptions,
};

fn write(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

/// A project-scoped token for `user`, straight from Keystone.
async fn user_token(ks: &KeystonePeer, user: &kiln_openstack::testkit::TestUser) -> String {
    let body = serde_json::json!({"auth": {"identity": {"methods": ["password"], "password":
        {"user": {"id": user.id, "password": user.password}}},
        "scope": {"project": {"id": user.project_id}}}});
    let r = reqwest::Client::new()
        .post(format!("{}/v3/auth/tokens", ks.url()))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    r.headers()["x-subject-token"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystone_password_application_credential_and_token_auth() {
    let ks =
        KeystonePeer::start().unwrap_or_else(|e| panic!("the Keystone peer did not start: {e}"));
    let g = GlancePeer::start_with(ks.glance_options())
        .unwrap_or_else(|e| panic!("the Glance peer did not start: {e}"));
    // public in RegionOne is the real Glance; the others must not be picked
    ks.register_image_endpoints(&[
        ("public", "RegionOne", g.url()),
        (
            "internal",
            "RegionOne",
            "http://127.0.0.1:9/internal-not-used",
        ),
        (
            "public",
            "RegionTwo",
            "http://127.0.0.1:9/region-two-not-used/v2",
        ),
    ])
    .await
    .expect("catalog");
    let user = ks
        .create_user("kiln-builder", "builder-pw-31415")
        .await
        .expect("user");

    // --- password auth from clouds.yaml + secure.yaml, the region from OS_REGION_NAME
    let home = tempfile::tempdir().unwrap();
    let cfgdir = home.path().join(".config/openstack");
    write(
        &cfgdir,
        "clouds.yaml",
        &format!(
            "clouds:\n  test:\n    auth:\n      auth_url: {}\n      username: kiln-builder\n      \
             project_name: {}\n      user_domain_name: Default\n      project_domain_id: default\n    \
             interface: public\n",
            ks.url(),
            user.project_name
        ),
    );
    write(
        &cfgdir,
        "secure.yaml",
        "clouds:\n  test:\n    auth:\n      password: builder-pw-31415\n",
    );
    let env = Environment::empty()
        .home(home.path())
        .cwd(home.path().join("nowhere"))
        .system_dir(home.path().join("etc"))
        .var("OS_CLOUD", "test")
        .var("OS_REGION_NAME", "RegionOne");
    let cfg = CloudConfig::resolve(&CloudOptions::default(), &env).expect("config");
    let glance = Glance::connect(&cfg).await.expect("password auth");
    assert_eq!(glance.endpoint(), g.url(), "catalog lookup");
    assert_eq!(glance.project_id(), Some(user.project_id.as_str()));
    assert!(!format!("{glance:?} {cfg:?}").contains("builder-pw"));

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("disk.qcow2");
    kiln_openstack::testkit::make_qcow2(&file, 16, 1).unwrap();
    let c = glance
        .create(&NewImage::new("kiln-keystone", DiskFormat::Qcow2))
        .await
        .expect("create with a Keystone token");
    assert_eq!(c.image.owner.as_deref(), Some(user.project_id.as_str()));
    let report = glance.upload(&c.image.id, &file, None).await.unwrap();
    let img = glance
        .wait_active(
            &c.image.id,
            WaitOptions {
                timeout: Duration::from_secs(180),
                interval: Duration::from_millis(300),
            },
        )
        .await
        .unwrap();
    img.verify(&report).unwrap();
    let mine = glance
        .find_by_name("kiln-keystone", glance.project_id())
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);

    // --- Keystone revokes the user's tokens: a client holding an old token is refused, the
    // password client gets a 401, re-authenticates once and goes on
    let old_token = user_token(&ks, &user).await;
    let stale = Glance::connect(
        &CloudConfig::resolve(
            &CloudOptions {
                token: Some(Secret::new(old_token)),
                endpoint: Some(g.url().into()),
                ..Default::default()
            },
            &Environment::empty(),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(stale.show(&img.id).await.unwrap().id, img.id);
    ks.revoke_user_tokens(&user).await.expect("revoke");
    assert!(stale.show(&img.id).await.unwrap_err().is_auth_rejected());
    assert_eq!(
        glance.show(&img.id).await.expect("re-authenticated").id,
        img.id
    );

    // --- the interface picks another catalog entry
    let internal = CloudConfig::resolve(
        &CloudOptions {
            interface: Some("internal".into()),
            ..Default::default()
        },
        &env,
    )
    .unwrap();
    let gi = Glance::connect(&internal).await.expect("auth");
    assert_eq!(gi.endpoint(), "http://127.0.0.1:9/internal-not-used");

    // --- no region: two regions offer `public`, so the lookup is ambiguous
    let env_no_region = Environment::empty()
        .home(home.path())
        .cwd(home.path().join("nowhere"))
        .system_dir(home.path().join("etc"))
        .var("OS_CLOUD", "test");
    let cfg2 = CloudConfig::resolve(&CloudOptions::default(), &env_no_region).unwrap();
    let e = Glance::connect(&cfg2).await.unwrap_err();
    assert!(matches!(e, Error::AmbiguousEndpoint { .. }), "{e:?}");
    let cfg3 = CloudConfig::resolve(
        &CloudOptions {
            region_name: Some("RegionTwo".into()),
            ..Default::default()
        },
        &env_no_region,
    )
    .unwrap();
    assert_eq!(
        Glance::connect(&cfg3).await.unwrap().endpoint(),
        "http://127.0.0.1:9/region-two-not-used",
        "the /v2 suffix is stripped"
    );

    // --- a wrong password: Keystone's 401 as the typed auth error, no secret in it
    let bad = CloudConfig::resolve(
        &CloudOptions {
            password: Some(Secret::new("not-the-password-27")),
            ..Default::default()
        },
        &env,
    )
    .unwrap();
    let e = Glance::connect(&bad).await.unwrap_err();
    match &e {
        Error::AuthRejected { service, .. } => assert_eq!(*service, "Keystone"),
        other => panic!("{other:?}"),
    }
    assert!(!format!("{e} {e:?}").contains("not-the-password"));

    // --- an application credential, from OS_* variables only
    let (ac_id, ac_secret) = ks
        .create_application_credential(&user, "kiln-ci")
        .await
        .expect("application credential");
    let env_ac = Environment::empty()
        .var("OS_AUTH_TYPE", "v3applicationcredential")
        .var("OS_AUTH_URL", format!("{}/v3", ks.url()))
        .var("OS_APPLICATION_CREDENTIAL_ID", &ac_id)
        .var("OS_APPLICATION_CREDENTIAL_SECRET", &ac_secret)
        .var("OS_REGION_NAME", "RegionOne");
    let cfg_ac = CloudConfig::resolve(&CloudOptions::default(), &env_ac).unwrap();
    assert!(!format!("{cfg_ac:?}").contains(&ac_secret));
    let ga = Glance::connect(&cfg_ac)
        .await
        .expect("application credential auth");
    assert_eq!(ga.project_id(), Some(user.project_id.as_str()));
    assert_eq!(ga.show(&img.id).await.unwrap().id, img.id);
    let wrong_ac = CloudConfig::resolve(
        &CloudOptions {
            application_credential_secret: Some(Secret::new("wrong-ac-secret")),
            ..Default::default()
        },
        &env_ac,
    )
    .unwrap();
    assert!(
        Glance::connect(&wrong_ac)
            .await
            .unwrap_err()
            .is_auth_rejected()
    );

    // --- token auth: a token exchanged at Keystone for the catalog, and a token used as is
    // with an explicit endpoint; a bogus token is refused by Glance's keystonemiddleware
    let token = user_token(&ks, &user).await;
    let via_keystone = CloudConfig::resolve(
        &CloudOptions {
            auth_type: Some("token".into()),
            auth_url: Some(ks.url().into()),
            token: Some(Secret::new(token.clone())),
            project_id: Some(user.project_id.clone()),
            region_name: Some("RegionOne".into()),
            ..Default::default()
        },
        &Environment::empty(),
    )
    .unwrap();
    let gt = Glance::connect(&via_keystone).await.expect("token auth");
    assert_eq!(gt.endpoint(), g.url());
    assert_eq!(gt.show(&img.id).await.unwrap().id, img.id);
    let direct = CloudConfig::resolve(
        &CloudOptions {
            token: Some(Secret::new(token)),
            endpoint: Some(g.url().into()),
            ..Default::default()
        },
        &Environment::empty(),
    )
    .unwrap();
    let gd = Glance::connect(&direct).await.unwrap();
    assert_eq!(gd.show(&img.id).await.unwrap().id, img.id);
    let bogus = CloudConfig::resolve(
        &CloudOptions {
            token: Some(Secret::new("gAAAA-not-a-real-token")),
            endpoint: Some(g.url().into()),
            ..Default::default()
        },
        &Environment::empty(),
    )
    .unwrap();
    let e = Glance::connect(&bogus)
        .await
        .unwrap()
        .create(&NewImage::new("kiln-never", DiskFormat::Raw))
        .await
        .unwrap_err();
    assert!(e.is_auth_rejected(), "{e:?}");
    assert!(
        glance
            .find_by_name("kiln-never", None)
            .await
            .unwrap()
            .is_empty(),
        "nothing created with a bad token"
    );

    assert_eq!(
        glance.delete(&img.id, false).await.unwrap(),
        Deleted::Deleted
    );
}
