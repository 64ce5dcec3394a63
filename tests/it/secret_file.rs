//! `secret_file(path)`: a secret read from a granted file (a mounted CI secret) into
//! the same opaque handle as `secret(NAME)`, redacted everywhere, read through the
//! project and the script's read grant, and audited.

use crate::cli::{Project, find_audit, kiln_cmd, text};
use crate::peers::sshd::Sshd;

#[test]
fn secret_file_is_read_through_the_grant_and_redacted() {
    let sshd = Sshd::start();
    let p = Project::new();
    let mounted = tempfile::Builder::new()
        .prefix("kiln-ci-secrets-")
        .tempdir()
        .unwrap();
    let token = "tok-9f8e7d6c5b4a with spaces & $dollar";
    // A CI secret as `echo` writes it: one trailing newline, which is not part of it.
    std::fs::write(mounted.path().join("api_token"), format!("{token}\n")).unwrap();
    p.write("secrets/db_pw", "db-Pa55w0rd");
    let dir = mounted.path().display().to_string();
    let script = format!(
        r#"
let db = secret_file("secrets/db_pw");
let api = secret_file("{dir}/api_token", #{{ allow: #{{ read: ["{dir}"] }} }});
source("box", ssh_host(#{{ host: "127.0.0.1", ssh: {{SSH}} }}));
build("web", #{{ sources: ["box"], steps: [
    shell(["echo db=$DB api=$API", "printf %s \"$API\" | base64", "test \"$API\" = {quoted}"], #{{ env: #{{ DB: db, API: api }} }}),
    |m| {{ print(`handles: ${{db}} ${{api}}`); }},
]}});
"#,
        quoted = shell_escape::unix::escape(token.into()),
    );
    p.script(&sshd, &script);
    let out = kiln_cmd(p.path(), &["build", "."]).output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains("tok-9f8e7d6c5b4a"), "secret leaked:\n{all}");
    assert!(!all.contains("db-Pa55w0rd"), "secret leaked:\n{all}");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(token);
    assert!(!all.contains(&b64), "base64 secret leaked:\n{all}");
    assert!(
        all.contains("db=<secret:secrets/db_pw>")
            && all.contains(&format!("api=<secret:{dir}/api_token>")),
        "{all}"
    );
    assert!(
        all.contains(r#"handles: secret_file("secrets/db_pw")"#),
        "{all}"
    );
    let audit = find_audit(p.path());
    assert!(
        audit.contains(&format!("{dir}/api_token: secret_file")),
        "{audit}"
    );
    assert!(!audit.contains("tok-9f8e7d6c5b4a"), "{audit}");

    // inspect names the file, never its content.
    let out = p.kiln(&["inspect", "."]);
    let s = text(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");
    assert!(s.contains("file:secrets/db_pw"), "{s}");
    assert!(!s.contains("db-Pa55w0rd"), "{s}");
}

#[test]
fn secret_file_outside_the_grant_or_missing_is_a_script_error() {
    let p = Project::new();
    let outside = tempfile::Builder::new()
        .prefix("kiln-ci-secrets-")
        .tempdir()
        .unwrap();
    std::fs::write(outside.path().join("pw"), "x").unwrap();
    let path = outside.path().join("pw").display().to_string();
    p.write(
        "build.rhai",
        &format!(
            "let pw = secret_file(\"{path}\");\nsource(\"b\", ssh_host(#{{ host: \"h\", ssh: #{{ user: \"u\", password: pw, host_key: \"SHA256:x\" }} }}));\nbuild(\"x\", #{{ sources: [\"b\"], steps: [] }});\n"
        ),
    );
    let out = p.kiln(&["validate", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("build.rhai:1:"), "{all}");
    let dir = outside.path().display().to_string();
    assert!(
        all.contains(&format!(
            r#"secret_file("{path}", #{{ allow: #{{ read: ["{dir}"] }} }})"#
        )),
        "{all}"
    );

    p.write(
        "build.rhai",
        "let pw = secret_file(\"secrets/none\");\nsource(\"b\", ssh_host(#{ host: \"h\", ssh: #{ user: \"u\", password: pw, host_key: \"SHA256:x\" } }));\nbuild(\"x\", #{ sources: [\"b\"], steps: [] });\n",
    );
    let out = p.kiln(&["validate", "."]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("secrets/none"), "{all}");
}
