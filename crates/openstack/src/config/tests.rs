use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// An environment with a fake home, cwd and /etc, nothing from the real process.
fn sandbox() -> (tempfile::TempDir, Environment) {
    let t = tempfile::tempdir().unwrap();
    let env = Environment::empty()
        .home(t.path().join("home"))
        .cwd(t.path().join("cwd"))
        .system_dir(t.path().join("etc"));
    std::fs::create_dir_all(t.path().join("cwd")).unwrap();
    (t, env)
}

const CLOUDS: &str = r#"
clouds:
  prod:
    auth:
      auth_url: https://keystone.example:5000/v3
      username: builder
      project_name: images
      user_domain_name: Corp
      project-domain-name: CorpProjects
    region_name: RegionTwo
    interface: internal
    cacert: /etc/ssl/corp-ca.pem
  appcred:
    auth_type: v3applicationcredential
    auth:
      auth_url: https://keystone.example:5000
      application_credential_id: 4b2e
      application_credential_secret: clouds-yaml-secret
    regions: [Lon, Par]
  lab:
    auth_type: none
    auth:
      endpoint: http://127.0.0.1:9292
    verify: false
"#;

const SECURE: &str = r#"
clouds:
  prod:
    auth:
      password: from-secure-yaml
"#;

#[test]
fn clouds_yaml_merged_with_secure_yaml() {
    let (t, env) = sandbox();
    write(
        &t.path().join("home/.config/openstack"),
        "clouds.yaml",
        CLOUDS,
    );
    write(
        &t.path().join("home/.config/openstack"),
        "secure.yaml",
        SECURE,
    );
    let opts = CloudOptions {
        cloud: Some("prod".into()),
        ..Default::default()
    };
    let c = CloudConfig::resolve(&opts, &env).unwrap();
    assert_eq!(c.cloud.as_deref(), Some("prod"));
    assert_eq!(c.region_name.as_deref(), Some("RegionTwo"));
    assert_eq!(c.interface, Interface::Internal);
    assert_eq!(c.cacert, Some(PathBuf::from("/etc/ssl/corp-ca.pem")));
    assert_eq!(c.files.len(), 2);
    match &c.auth {
        Auth::Password {
            auth_url,
            user,
            password,
            scope,
        } => {
            assert_eq!(auth_url, "https://keystone.example:5000/v3");
            assert_eq!(
                user,
                &UserRef::Name {
                    name: "builder".into(),
                    domain: DomainRef::Name("Corp".into())
                }
            );
            assert_eq!(password.expose(), "from-secure-yaml");
            assert_eq!(
                scope,
                &Scope::ProjectName {
                    name: "images".into(),
                    domain: DomainRef::Name("CorpProjects".into())
                }
            );
        }
        other => panic!("{other:?}"),
    }
    // nothing secret in Debug or describe()
    let shown = format!("{c:?} {}", c.describe());
    assert!(!shown.contains("from-secure-yaml"), "{shown}");
}

#[test]
fn env_overrides_clouds_yaml_and_options_override_env() {
    let (t, env) = sandbox();
    write(&t.path().join("cwd"), "clouds.yaml", CLOUDS);
    write(&t.path().join("cwd"), "secure.yaml", SECURE);
    let env = env
        .var("OS_CLOUD", "prod")
        .var("OS_REGION_NAME", "RegionEnv")
        .var("OS_PASSWORD", "from-env")
        .var("OS_INTERFACE", "publicURL")
        .var("OS_PROJECT_ID", ""); // empty counts as unset
    let c = CloudConfig::resolve(&CloudOptions::default(), &env).unwrap();
    assert_eq!(c.region_name.as_deref(), Some("RegionEnv"));
    assert_eq!(c.interface, Interface::Public);
    match &c.auth {
        Auth::Password {
            password, scope, ..
        } => {
            assert_eq!(password.expose(), "from-env");
            assert!(matches!(scope, Scope::ProjectName { .. }));
        }
        other => panic!("{other:?}"),
    }
    let opts = CloudOptions {
        region_name: Some("RegionOpt".into()),
        password: Some(Secret::new("from-options")),
        interface: Some("admin".into()),
        ..Default::default()
    };
    let c = CloudConfig::resolve(&opts, &env).unwrap();
    assert_eq!(c.region_name.as_deref(), Some("RegionOpt"));
    assert_eq!(c.interface, Interface::Admin);
    match &c.auth {
        Auth::Password { password, .. } => assert_eq!(password.expose(), "from-options"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn option_cloud_wins_over_os_cloud() {
    let (t, env) = sandbox();
    write(&t.path().join("etc"), "clouds.yaml", CLOUDS);
    let env = env.var("OS_CLOUD", "prod");
    let opts = CloudOptions {
        cloud: Some("lab".into()),
        ..Default::default()
    };
    let c = CloudConfig::resolve(&opts, &env).unwrap();
    assert!(matches!(c.auth, Auth::None));
    assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9292"));
    assert!(c.insecure, "verify: false means insecure");
}

#[test]
fn search_order_cwd_then_home_then_etc() {
    let (t, env) = sandbox();
    let one = "clouds: {x: {auth_type: none, auth: {endpoint: 'http://one:1'}}}";
    let two = "clouds: {x: {auth_type: none, auth: {endpoint: 'http://two:2'}}}";
    let three = "clouds: {x: {auth_type: none, auth: {endpoint: 'http://three:3'}}}";
    let opts = CloudOptions {
        cloud: Some("x".into()),
        ..Default::default()
    };
    write(&t.path().join("etc"), "clouds.yaml", three);
    let ep = |env: &Environment| CloudConfig::resolve(&opts, env).unwrap().endpoint.unwrap();
    assert_eq!(ep(&env), "http://three:3");
    write(&t.path().join("home/.config/openstack"), "clouds.yml", two);
    assert_eq!(ep(&env), "http://two:2");
    write(&t.path().join("cwd"), "clouds.yaml", one);
    assert_eq!(ep(&env), "http://one:1");
    // OS_CLIENT_CONFIG_FILE beats them all
    let f = write(t.path(), "elsewhere.yaml", three);
    let env2 = env
        .clone()
        .var("OS_CLIENT_CONFIG_FILE", f.display().to_string());
    assert_eq!(ep(&env2), "http://three:3");
}

#[test]
fn application_credential_from_yaml_with_first_region() {
    let (t, env) = sandbox();
    write(&t.path().join("cwd"), "clouds.yaml", CLOUDS);
    let env = env.var("OS_CLOUD", "appcred");
    let c = CloudConfig::resolve(&CloudOptions::default(), &env).unwrap();
    assert_eq!(c.region_name.as_deref(), Some("Lon"));
    match &c.auth {
        Auth::ApplicationCredential {
            auth_url,
            credential,
            secret,
        } => {
            assert_eq!(auth_url, "https://keystone.example:5000");
            assert_eq!(credential, &AppCredential::Id("4b2e".into()));
            assert_eq!(secret.expose(), "clouds-yaml-secret");
        }
        other => panic!("{other:?}"),
    }
    assert!(!format!("{c:?}").contains("clouds-yaml-secret"));
}

#[test]
fn env_only_password_with_default_domain() {
    let (_t, env) = sandbox();
    let env = env
        .var("OS_AUTH_URL", "http://127.0.0.1:5000/v3/")
        .var("OS_USERNAME", "demo")
        .var("OS_PASSWORD", "pw")
        .var("OS_PROJECT_NAME", "demo");
    let c = CloudConfig::resolve(&CloudOptions::default(), &env).unwrap();
    match &c.auth {
        Auth::Password {
            auth_url,
            user,
            scope,
            ..
        } => {
            assert_eq!(auth_url, "http://127.0.0.1:5000/v3");
            assert_eq!(
                user,
                &UserRef::Name {
                    name: "demo".into(),
                    domain: DomainRef::Id("default".into())
                }
            );
            assert_eq!(
                scope,
                &Scope::ProjectName {
                    name: "demo".into(),
                    domain: DomainRef::Id("default".into())
                }
            );
        }
        other => panic!("{other:?}"),
    }
    // OS_DOMAIN_NAME applies to both when their own is unset
    let c = CloudConfig::resolve(
        &CloudOptions::default(),
        &env.clone().var("OS_DOMAIN_NAME", "D"),
    )
    .unwrap();
    match &c.auth {
        Auth::Password { user, .. } => assert_eq!(
            user,
            &UserRef::Name {
                name: "demo".into(),
                domain: DomainRef::Name("D".into())
            }
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn token_and_none_inference() {
    let (_t, env) = sandbox();
    let env_tok = env
        .clone()
        .var("OS_TOKEN", "tok-secret")
        .var("OS_ENDPOINT", "http://127.0.0.1:9292");
    let c = CloudConfig::resolve(&CloudOptions::default(), &env_tok).unwrap();
    assert!(matches!(c.auth, Auth::Token { auth_url: None, .. }));
    assert!(!format!("{c:?}").contains("tok-secret"));
    let env_none = env.clone().var("OS_IMAGE_URL", "http://127.0.0.1:9292/");
    let c = CloudConfig::resolve(&CloudOptions::default(), &env_none).unwrap();
    assert!(matches!(c.auth, Auth::None));
    assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9292"));
    assert!(!c.insecure, "insecure only when set");
}

#[test]
fn helpful_errors() {
    let (t, env) = sandbox();
    // no clouds.yaml at all
    let e = CloudConfig::resolve(
        &CloudOptions::default(),
        &env.clone().var("OS_CLOUD", "prod"),
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::NoCloudsFile { .. }), "{e}");
    write(&t.path().join("cwd"), "clouds.yaml", CLOUDS);
    let e = CloudConfig::resolve(
        &CloudOptions::default(),
        &env.clone().var("OS_CLOUD", "nope"),
    )
    .unwrap_err();
    match &e {
        ConfigError::UnknownCloud { available, .. } => {
            assert_eq!(available, "prod, appcred, lab")
        }
        other => panic!("{other:?}"),
    }
    // a password cloud without a password
    let e = CloudConfig::resolve(
        &CloudOptions::default(),
        &env.clone().var("OS_CLOUD", "prod"),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Missing {
                missing: "a password",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("OS_PASSWORD"));
    let e = CloudConfig::resolve(
        &CloudOptions {
            auth_type: Some("kerberos".into()),
            ..Default::default()
        },
        &env,
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::UnsupportedAuthType { .. }));
    let e = CloudConfig::resolve(
        &CloudOptions {
            auth_type: Some("none".into()),
            ..Default::default()
        },
        &env,
    )
    .unwrap_err();
    assert!(e.to_string().contains("OS_ENDPOINT"), "{e}");
    let e = CloudConfig::resolve(
        &CloudOptions {
            auth_type: Some("none".into()),
            endpoint: Some("ftp://x".into()),
            ..Default::default()
        },
        &env,
    )
    .unwrap_err();
    assert!(matches!(
        e,
        ConfigError::Invalid {
            what: "endpoint",
            ..
        }
    ));
}

#[test]
fn yaml_syntax_errors_do_not_quote_the_file() {
    let (t, env) = sandbox();
    write(
        &t.path().join("cwd"),
        "clouds.yaml",
        "clouds:\n  x:\n    auth: {password: \"s3cr3t-in-yaml\n",
    );
    let e = CloudConfig::resolve(&CloudOptions::default(), &env.var("OS_CLOUD", "x")).unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { .. }));
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(shown.contains("line"), "{shown}");
}

#[test]
fn options_debug_redacts_secrets() {
    let o = CloudOptions {
        password: Some(Secret::new("opt-pw-1")),
        token: Some(Secret::new("opt-tok-2")),
        application_credential_secret: Some(Secret::new("opt-ac-3")),
        ..Default::default()
    };
    let shown = format!(
        "{o:?} {:?}",
        Environment::empty().var("OS_PASSWORD", "env-pw-4")
    );
    for s in ["opt-pw-1", "opt-tok-2", "opt-ac-3", "env-pw-4"] {
        assert!(!shown.contains(s), "{s} leaked: {shown}");
    }
    assert!(shown.contains("<redacted>"));
}
