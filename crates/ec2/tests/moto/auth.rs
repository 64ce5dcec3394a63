//! moto with signature checking on: kiln's SigV4 signatures validate (including awkward
//! characters in the body), a wrong secret or unknown key gives the typed auth error and
//! creates nothing, a user without permission is told so, and credentials found in
//! profile files work. No secret appears in errors or observer records.

use kiln_ec2::testkit::MotoOptions;
use kiln_ec2::{
    CallOutcome, ClientConfig, CredentialSource, Credentials, CredentialsConfig,
    DescribeImagesRequest, Ec2Client, Ec2Error, FixedEnvironment, KeyType, Secret, Tags,
};

use crate::common::{Recorder, moto, run_id};

const WRONG_SECRET: &str = "Wr0ngSecretKeyWr0ngSecretKeyWr0ngSecret12";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_checked() {
    let moto = moto(MotoOptions {
        signature_checking: true,
        load_default_amis: false,
    })
    .await;
    let good = moto.client("us-east-1").expect("client");

    // Valid signatures, for a read and for a write whose body has every kind of character.
    good.describe_images(&DescribeImagesRequest {
        owners: vec!["self".into()],
        ..Default::default()
    })
    .await
    .expect("a correctly signed call passes moto's signature check");
    let mut odd = Tags::new();
    odd.insert("kiln:run".into(), run_id("auth"));
    odd.insert("note".into(), "a b=c&d+e/f?g%h*i~j é ✓".into());
    let kp = good
        .create_key_pair("kiln-auth-ok", KeyType::Ed25519, &odd)
        .await
        .expect("signed write with odd characters");
    let listed = good
        .describe_key_pairs(std::slice::from_ref(&kp.key_name), &[], false)
        .await
        .expect("describe");
    assert_eq!(listed[0].tags.get("note"), odd.get("note"));
    good.delete_key_pair("kiln-auth-ok").await.expect("delete");

    // The right access key with a wrong secret.
    let rec = Recorder::default();
    let access_key = moto.access_key_id().to_string();
    let bad = Ec2Client::new(
        "us-east-1",
        Credentials::new(access_key.clone(), Secret::new(WRONG_SECRET), None),
        ClientConfig {
            observer: Some(rec.observer()),
            ..moto.client_config()
        },
    )
    .expect("client");
    let e = bad
        .create_key_pair("kiln-auth-bad", KeyType::Rsa, &Tags::new())
        .await
        .unwrap_err();
    assert!(e.is_auth(), "{e:?}");
    let api = e.api().expect("an API error");
    assert!(
        matches!(api.code.as_str(), "AuthFailure" | "SignatureDoesNotMatch"),
        "{api:?}"
    );
    assert_eq!(api.attempts, 1, "auth failures are not retried");
    let msg = e.to_string();
    assert!(msg.contains("check your credentials"), "{msg}");
    assert!(msg.contains("the access_key/secret_key options"), "{msg}");
    for text in [
        msg,
        format!("{e:?}"),
        format!("{:?}", rec.records()),
        format!("{bad:?}"),
    ] {
        assert!(!text.contains(WRONG_SECRET), "secret leaked: {text}");
    }
    let records = rec.records();
    assert_eq!(records.len(), 1);
    assert!(matches!(&records[0].outcome, CallOutcome::ApiError { code } if code == &api.code));
    assert!(records[0].http_status.is_some_and(|s| s >= 400));
    // Nothing was created.
    let e = good
        .describe_key_pairs(&["kiln-auth-bad".into()], &[], false)
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    assert!(
        good.describe_key_pairs(&[], &[], false)
            .await
            .expect("list")
            .is_empty()
    );

    // An access key moto has never seen.
    let unknown = Ec2Client::new(
        "us-east-1",
        Credentials::new("AKIAUNKNOWNUNKNOWN00", Secret::new(WRONG_SECRET), None),
        moto.client_config(),
    )
    .unwrap();
    let e = unknown
        .describe_key_pairs(&[], &[], false)
        .await
        .unwrap_err();
    assert!(e.is_auth(), "{e:?}");

    // A user allowed only ec2:Describe* may list but not create.
    let reader = moto
        .create_user(
            "kiln-reader",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:Describe*","Resource":"*"}]}"#,
        )
        .await
        .expect("limited user");
    let reader = Ec2Client::new("us-east-1", reader, moto.client_config()).unwrap();
    reader
        .describe_key_pairs(&[], &[], false)
        .await
        .expect("Describe is allowed");
    let e = reader
        .create_key_pair("kiln-auth-denied", KeyType::Ed25519, &Tags::new())
        .await
        .unwrap_err();
    assert!(e.is_auth(), "{e:?}");
    assert!(
        matches!(e.code(), Some("AccessDenied" | "UnauthorizedOperation")),
        "{e:?}"
    );
    assert!(e.to_string().contains("ec2:CreateKeyPair"), "{e}");

    // Credentials from a profile file in an injected home directory, region from config.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        format!(
            "[ci]\naws_access_key_id = {access_key}\naws_secret_access_key = {}\n",
            moto.secret_access_key()
        ),
    )
    .unwrap();
    std::fs::write(
        home.path().join(".aws/config"),
        "[profile ci]\nregion = eu-central-1\n",
    )
    .unwrap();
    let env = FixedEnvironment::new()
        .home(home.path())
        .var("AWS_PROFILE", "ci");
    let from_profile = Ec2Client::from_environment(
        None,
        &CredentialsConfig::default(),
        moto.client_config(),
        &env,
    )
    .expect("client from profile");
    assert_eq!(from_profile.region(), "eu-central-1");
    assert!(from_profile.credentials_source().contains("profile \"ci\""));
    from_profile
        .describe_key_pairs(&[], &[], false)
        .await
        .expect("profile credentials are accepted");

    // The same with the secret replaced: the error names the profile to fix.
    std::fs::write(
        home.path().join(".aws/credentials"),
        format!("[ci]\naws_access_key_id = {access_key}\naws_secret_access_key = {WRONG_SECRET}\n"),
    )
    .unwrap();
    let stale = Ec2Client::from_environment(
        Some("us-east-1"),
        &CredentialsConfig::default(),
        moto.client_config(),
        &env,
    )
    .unwrap();
    let e = stale.describe_key_pairs(&[], &[], false).await.unwrap_err();
    let Ec2Error::Auth { credentials, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(credentials.contains("profile \"ci\""), "{credentials}");
    assert!(!e.to_string().contains(WRONG_SECRET));
}

#[test]
fn credential_source_is_displayed() {
    assert_eq!(
        CredentialSource::Explicit.to_string(),
        "the access_key/secret_key options"
    );
}
