//! Capabilities as modules (issue 13), from the user's side: grants parsed at declare
//! time, files checked by `kiln validate` with positions in the user's script, SSH keys
//! read through read grants (with `~`), builder failures that name the `source(...)`
//! line, variables from the environment, and suggestions for misspelt names.

use std::path::Path;

use crate::cli::{Project, kiln_cmd, text};
use crate::peers::sshd::Sshd;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn validate_points_at_a_missing_private_key_file() {
    let p = Project::new();
    p.write(
        "build.rhai",
        r#"
source("box", ssh_host(#{ host: "127.0.0.1",
    ssh: #{ user: "root", private_key_file: "keys/nope", host_key: "SHA256:x" } }));
build("web", #{ sources: ["box"], steps: [shell(["true"])] });
"#,
    );
    let out = p.kiln(&["validate", "."]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("build.rhai:2:1"), "{err}");
    assert!(
        err.contains("ssh private key") && err.contains("\"keys/nope\" does not exist"),
        "{err}"
    );
}

#[test]
fn validate_points_at_an_unparseable_grant() {
    for (grant, expect) in [
        (
            r#"net: ["*.example.com"]"#,
            "wildcard hosts are not supported",
        ),
        (r#"net: ["db.internal:postgres"]"#, "is not a port"),
        (r#"read: ["../secrets"]"#, "must not contain .."),
        (r#"reed: ["files"]"#, "did you mean `read`"),
    ] {
        let p = Project::new();
        p.write(
            "build.rhai",
            &format!(
                r#"source("box", ssh_host(#{{ host: "h", ssh: #{{ user: "u", agent: true, host_key: "SHA256:x" }} }}));
build("web", #{{ sources: ["box"], steps: [
    shell(["true"], #{{ allow: #{{ {grant} }} }}),
] }});
"#
            ),
        );
        let out = p.kiln(&["validate", "."]);
        assert_eq!(out.status.code(), Some(2), "{grant}: {}", text(&out));
        let err = stderr(&out);
        assert!(err.contains("build.rhai:3:5"), "{grant}: {err}");
        assert!(err.contains(expect), "{grant}: {err}");
    }
}

#[test]
fn validate_checks_a_builders_files_and_a_components_imports() {
    let p = Project::new();
    p.write(
        "build.rhai",
        r#"
source("vm", qemu(#{ disk_image: "images/missing.qcow2",
    ssh: #{ user: "root", agent: true } }));
build("web", #{ sources: ["vm"], steps: [shell(["true"])] });
"#,
    );
    let out = p.kiln(&["validate", "."]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("build.rhai:2:1")
            && err.contains("disk_image: \"images/missing.qcow2\" does not exist"),
        "{err}"
    );
}

/// A key kept outside the project (as users keep ~/.ssh) is read through the source's
/// read grant; without the grant validate says which `allow` to add.
#[test]
fn a_key_outside_the_project_is_read_through_a_read_grant() {
    let sshd = Sshd::start();
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    let key = home.path().join(".ssh/id_test");
    // The peer's ssh map names a key inside the project; move it out.
    let p = Project::new();
    let map = sshd.ssh_config_rhai_in(p.path());
    let rel = format!("keys/sshd-peer-{}", sshd.port);
    std::fs::rename(p.path().join(&rel), &key).unwrap();
    let map = map.replace(&rel, "~/.ssh/id_test");
    let script = |allow: &str| {
        format!(
            r#"source("box", ssh_host(#{{ host: "127.0.0.1", ssh: {map} }}){allow});
build("web", #{{ sources: ["box"], steps: [shell(["true"])] }});
"#
        )
    };
    let run = |args: &[&str]| {
        kiln_cmd(p.path(), args)
            .env("HOME", home.path())
            .output()
            .expect("kiln")
    };
    p.write("build.rhai", &script(""));
    let out = run(&["validate", "."]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    let dir = home.path().join(".ssh").display().to_string();
    assert!(
        err.contains("outside the directories this source may read")
            && err.contains(&format!("allow: #{{ read: [{dir:?}] }}")),
        "{err}"
    );
    p.write(
        "build.rhai",
        &script(r#", #{ allow: #{ read: [".", "~/.ssh"] } }"#),
    );
    let out = run(&["validate", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run(&["build", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The key's bytes never reach the output or the audit log.
    let key_text = std::fs::read_to_string(&key).unwrap();
    let secret_line = key_text.lines().nth(1).unwrap();
    assert!(!text(&out).contains(secret_line));
    assert!(!crate::cli::find_audit(p.path()).contains(secret_line));
}

#[test]
fn a_builder_failure_names_the_users_source_line() {
    let p = Project::new();
    p.write(
        "builders/broken.rhai",
        "fn options() { #{ size: 1 } }\nfn run(cfg, ctx) {\n    throw `cannot make a box of size ${cfg.size}`;\n}\n",
    );
    p.write(
        "build.rhai",
        r#"
source("box", builder("builders/broken.rhai", #{ size: 3 }));
build("web", #{ sources: ["box"] });
"#,
    );
    let out = p.kiln(&["build", "."]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains(r#"source "box" (build.rhai:2:1) failed in its builder builders/broken.rhai"#),
        "{all}"
    );
    assert!(
        all.contains("builders/broken.rhai:3:5") && all.contains("cannot make a box of size 3"),
        "{all}"
    );
}

#[test]
fn variables_come_from_the_environment_below_var_files_and_flags() {
    let p = Project::new();
    p.write(
        "build.rhai",
        r#"let img = var("image", "debian");
source("box", ssh_host(#{ host: img, ssh: #{ user: "u", agent: true, host_key: "SHA256:x" } }));
build("web", #{ sources: ["box"] });
"#,
    );
    p.write("vars.json", r#"{ "image": "from-file" }"#);
    let inspect = |args: &[&str]| {
        let mut a = vec!["inspect", "."];
        a.extend_from_slice(args);
        let out = kiln_cmd(p.path(), &a)
            .env("KILN_VAR_image", "from-env")
            .output()
            .expect("kiln");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(inspect(&[]).contains(r#"image = "from-env" (env)"#));
    assert!(inspect(&["--var-file", "vars.json"]).contains(r#"image = "from-file" (var-file)"#));
    assert!(
        inspect(&["--var-file", "vars.json", "--var", "image=from-flag"])
            .contains(r#"image = "from-flag" (--var)"#)
    );
}

#[test]
fn a_misspelt_function_suggests_the_nearest() {
    let p = Project::new();
    p.write(
        "build.rhai",
        r#"source("box", ssh_host(#{ host: "h", ssh: #{ user: "u", agent: true, host_key: "SHA256:x" } }));
build("web", #{ sources: ["box"], steps: [shel(["true"])] });
"#,
    );
    let out = p.kiln(&["validate", "."]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("build.rhai:2:") && err.contains("did you mean `shell`"),
        "{err}"
    );
}

#[test]
fn init_keeps_keys_out_of_version_control() {
    let dir = tempfile::tempdir().unwrap();
    let out = kiln_cmd(dir.path(), &["init", "proj"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ignore = std::fs::read_to_string(Path::new(dir.path()).join("proj/.gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "keys/"), "{ignore}");
}
