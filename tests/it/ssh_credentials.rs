//! Credentials the way users keep them, against a real loopback sshd: keys in a real
//! `ssh-agent` (one the server refuses, then one it accepts), OpenSSH user certificates
//! from a CA made with `ssh-keygen -s` (sshd's `TrustedUserCAKeys`), and PAM password
//! prompts over keyboard-interactive (`PasswordAuthentication no`).

use std::path::Path;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use kiln::host::ssh::{ConnectOptions, KeyFiles, Session, SshConfig, SshError};

use crate::cli::{Project, kiln_cmd, text};
use crate::peers::agent::SshAgent;
use crate::peers::sshd::{PASSWORD, PASSWORD_USER, Sshd, SshdOptions};

fn cfg(sshd: &Sshd) -> SshConfig {
    SshConfig {
        host: Some("127.0.0.1".into()),
        port: Some(sshd.port),
        user: sshd.user.clone(),
        host_key: Some(sshd.host_key_fingerprint.clone()),
        timeout: Some("30s".into()),
        ..Default::default()
    }
}

async fn connect_with(
    sshd: &Sshd,
    c: &SshConfig,
    agent: Option<&SshAgent>,
) -> Result<Session, SshError> {
    let dir = Dir::open_ambient_dir(sshd.dir.path(), ambient_authority()).expect("peer dir");
    let files = KeyFiles::read_beneath(c, &dir)?;
    let opts = ConnectOptions {
        agent_socket: agent.map(|a| a.socket.clone()),
        ..Default::default()
    };
    Session::connect(c, &files, &opts).await
}

async fn whoami(s: &Session) -> String {
    let out = s.exec("id -un", &[], &mut |_, _| {}).await.expect("exec");
    assert_eq!(out.exit_code, 0);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `SHA256:...` of a public key file.
fn fingerprint(pub_key: &Path) -> String {
    let out = std::process::Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(pub_key)
        .output()
        .expect("ssh-keygen -l");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_offers_a_refused_key_then_the_accepted_one() {
    let sshd = Sshd::start();
    let stranger = sshd.unauthorized_key("stranger");
    let agent = SshAgent::start();
    agent.add(&stranger);
    agent.add(&sshd.key_path);
    let held = agent.list();
    let stranger_fp = fingerprint(&stranger.with_extension("pub"));
    let good_fp = fingerprint(&sshd.dir.path().join("id_ed25519.pub"));
    let (a, b) = (held.find(&stranger_fp), held.find(&good_fp));
    assert!(
        matches!((a, b), (Some(a), Some(b)) if a < b),
        "agent order: {held}"
    );

    let c = SshConfig {
        agent: true,
        ..cfg(&sshd)
    };
    let s = connect_with(&sshd, &c, Some(&agent))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
    assert_eq!(whoami(&s).await, "root");
    s.close().await;
    let log = sshd.log();
    assert!(
        log.contains("Accepted publickey for root from 127.0.0.1") && log.contains(&good_fp),
        "{log}"
    );

    // Only the refused key: a rejection that names the agent's key, capped by
    // handshake_attempts.
    let lonely = SshAgent::start();
    lonely.add(&stranger);
    let capped = SshConfig {
        handshake_attempts: Some(2),
        timeout: Some("5m".into()),
        ..c.clone()
    };
    let err = connect_with(&sshd, &capped, Some(&lonely))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SshError::AuthRejectedRepeatedly { times: 2, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("ssh-agent key {stranger_fp}")),
        "{msg}"
    );

    // No agent where the socket should be: a clear, immediate error.
    let gone = {
        let a = SshAgent::start();
        a.socket.clone()
    };
    let opts = ConnectOptions {
        agent_socket: Some(gone),
        ..Default::default()
    };
    let err = Session::connect(&c, &KeyFiles::default(), &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::Agent(_)), "{err:?}");
    assert!(err.to_string().contains("SSH_AUTH_SOCK"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_a_ca_logs_in_where_the_bare_key_does_not() {
    let sshd = Sshd::start_with(SshdOptions {
        trusted_user_ca: true,
        ..Default::default()
    });
    let key = sshd.unauthorized_key("certkey");
    sshd.sign_user_key(&key, "root", "-5m:+1h");
    let c = SshConfig {
        private_key_file: Some("certkey".into()),
        certificate_file: Some("certkey-cert.pub".into()),
        ..cfg(&sshd)
    };
    let s = connect_with(&sshd, &c, None)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
    assert_eq!(whoami(&s).await, "root");
    s.close().await;
    let log = sshd.log();
    assert!(
        log.contains("Accepted publickey for root") && log.contains("ED25519-CERT"),
        "{log}"
    );

    // The same key without its certificate is not authorized.
    let bare = SshConfig {
        certificate_file: None,
        handshake_attempts: Some(1),
        ..c.clone()
    };
    let err = connect_with(&sshd, &bare, None).await.unwrap_err();
    assert!(
        matches!(err, SshError::AuthRejectedRepeatedly { .. }),
        "{err:?}"
    );

    // A certificate for another principal is refused, and the message names it.
    let other = sshd.unauthorized_key("otherkey");
    sshd.sign_user_key(&other, "deploy", "-5m:+1h");
    let wrong = SshConfig {
        private_key_file: Some("otherkey".into()),
        certificate_file: Some("otherkey-cert.pub".into()),
        handshake_attempts: Some(1),
        ..c.clone()
    };
    let msg = connect_with(&sshd, &wrong, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("certificate \"otherkey-cert.pub\"") && msg.contains("principals deploy"),
        "{msg}"
    );

    // An expired certificate fails before connecting, saying so.
    let old = sshd.unauthorized_key("oldkey");
    sshd.sign_user_key(&old, "root", "20200101:20200102");
    let expired = SshConfig {
        private_key_file: Some("oldkey".into()),
        certificate_file: Some("oldkey-cert.pub".into()),
        ..c.clone()
    };
    let err = connect_with(&sshd, &expired, None).await.unwrap_err();
    assert!(matches!(err, SshError::BadCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("expired at 2020-01-02"), "{err}");

    // The agent offers a certificate added next to its key.
    let agent = SshAgent::start();
    agent.add(&key);
    let via_agent = SshConfig {
        agent: true,
        ..cfg(&sshd)
    };
    let s = connect_with(&sshd, &via_agent, Some(&agent))
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent holds: {}\n{}", agent.list(), sshd.log()));
    assert_eq!(whoami(&s).await, "root");
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyboard_interactive_answers_pam_password_prompts() {
    let sshd = Sshd::start_with(SshdOptions {
        kbd_interactive_pam: true,
        ..Default::default()
    });
    let c = SshConfig {
        user: PASSWORD_USER.into(),
        password: Some(PASSWORD.into()),
        ..cfg(&sshd)
    };
    let s = connect_with(&sshd, &c, None)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
    assert_eq!(whoami(&s).await, PASSWORD_USER);
    s.close().await;
    assert!(
        sshd.log()
            .contains("Accepted keyboard-interactive/pam for kilntest"),
        "{}",
        sshd.log()
    );

    // A wrong password counts as a rejection for handshake_attempts, like a rejected
    // `password` method, and never appears in the error.
    let failed_before = sshd.log().matches("Failed keyboard-interactive").count();
    let wrong = SshConfig {
        password: Some("not-the-pw".into()),
        handshake_attempts: Some(2),
        timeout: Some("5m".into()),
        ..c
    };
    let err = connect_with(&sshd, &wrong, None).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, SshError::AuthRejectedRepeatedly { times: 2, .. }),
        "{err:?}"
    );
    assert!(msg.contains("keyboard-interactive"), "{msg}");
    assert!(!msg.contains("not-the-pw"), "the password leaked: {msg}");
    let failed = sshd.log_count("Failed keyboard-interactive", failed_before + 2) - failed_before;
    assert_eq!(failed, 2, "{}", sshd.log());
}

/// The whole path through `kiln build`: `agent: true` finds the agent through
/// SSH_AUTH_SOCK, and a certificate is read through the source's read grants.
#[test]
fn kiln_build_logs_in_with_the_agent_and_with_a_certificate() {
    let sshd = Sshd::start_with(SshdOptions {
        trusted_user_ca: true,
        ..Default::default()
    });
    let agent = SshAgent::start();
    agent.add(&sshd.key_path);
    let key = sshd.unauthorized_key("certkey");
    let cert = sshd.sign_user_key(&key, "root", "-5m:+1h");
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("keys")).unwrap();
    std::fs::copy(&key, p.path().join("keys/certkey")).unwrap();
    std::fs::copy(&cert, p.path().join("keys/certkey-cert.pub")).unwrap();
    let script = format!(
        r#"
source("via_agent", ssh_host(#{{ host: "127.0.0.1", ssh: #{{ port: {port}, user: "root", agent: true, host_key: "{fp}" }} }}));
source("via_cert", ssh_host(#{{ host: "127.0.0.1", ssh: #{{ port: {port}, user: "root", private_key_file: "keys/certkey",
    ssh_certificate_file: "keys/certkey-cert.pub", host_key: "{fp}" }} }}));
build("login", #{{ sources: ["via_agent", "via_cert"], steps: [ shell(["echo logged-in-as-$(id -un)"]) ] }});
"#,
        port = sshd.port,
        fp = sshd.host_key_fingerprint,
    );
    p.write("build.rhai", &script);
    let out = kiln_cmd(p.path(), &["build", "."])
        .env("SSH_AUTH_SOCK", &agent.socket)
        .output()
        .expect("run kiln");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}\n{}", sshd.log());
    for src in ["via_agent", "via_cert"] {
        assert!(
            all.contains(&format!("login.{src}: logged-in-as-root")),
            "{src}: {all}"
        );
    }
    let log = sshd.log();
    assert!(log.contains("ED25519-CERT"), "{log}");
    assert_eq!(
        log.matches("Accepted publickey for root").count(),
        2,
        "{log}"
    );

    // Without the agent in the environment, `agent: true` says what to do.
    let out = kiln_cmd(p.path(), &["build", "--only", "login.via_agent", "."])
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .expect("run kiln");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("SSH_AUTH_SOCK is not set"), "{all}");
}
