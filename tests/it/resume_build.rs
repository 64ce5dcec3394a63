//! Issue 14, incremental builds on a machine that keeps its own state (the `ssh_host`
//! builder against a real loopback sshd): `kiln build --resume` after a failed run
//! skips the steps that run finished, `--dry-run` says what would run and touches
//! nothing, `--post-only` re-runs the post-processors on the last success's artifact.

use crate::cli::{Project, text};
use crate::peers::sshd::Sshd;

fn script(p: &Project, sshd: &Sshd, steps: &str, post: &str) {
    let s = format!(
        r#"source("box", ssh_host(#{{ host: "127.0.0.1", ssh: {{SSH}} }}));
build("web", #{{ sources: ["box"], steps: [
{steps}
], post: [{post}] }});
"#
    )
    .replace("REMOTE", p.remote.path().to_str().expect("utf-8 temp dir"));
    p.script(sshd, &s);
}

#[test]
fn resume_continues_a_failed_run_from_its_last_good_step() {
    let sshd = Sshd::start();
    let p = Project::new();
    let runs = p.remote.path().join("step1-runs");
    let steps = |second: &str| {
        format!(
            r#"    shell(["echo ran >> REMOTE/step1-runs"]),
    shell(["{second}"]),
    shell(["echo three > REMOTE/three"]),"#
        )
    };
    script(&p, &sshd, &steps("exit 4"), "");
    let out = p.kiln(&["build", "."]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&runs).ok().as_deref(),
        Some("ran\n")
    );

    // The dry run of the fixed script touches nothing.
    script(&p, &sshd, &steps("echo two > REMOTE/two"), "");
    let dry = p.kiln(&["build", "--dry-run", "."]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let d = String::from_utf8_lossy(&dry.stdout);
    assert!(
        d.contains("web.box (ssh_host builder): dry run, nothing is touched"),
        "{d}"
    );
    assert!(d.contains("an SSH session to 127.0.0.1 as root"), "{d}");
    assert!(d.contains("2/3 shell (1 commands): would run"), "{d}");
    assert!(d.contains("grants: machine"), "{d}");
    assert!(!p.remote.path().join("two").exists(), "{d}");

    let out = p.kiln(&["build", "--resume", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("(--resume)"), "{all}");
    assert!(all.contains("Resuming at step 2/3"), "{all}");
    // Step 1 did not run again; 2 and 3 did.
    assert_eq!(
        std::fs::read_to_string(&runs).ok().as_deref(),
        Some("ran\n"),
        "{all}"
    );
    assert!(p.remote.path().join("two").exists(), "{all}");
    assert!(p.remote.path().join("three").exists(), "{all}");

    // Nothing is left to resume once the run succeeded.
    let out = p.kiln(&["build", "--resume", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("Nothing to resume"), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&runs).ok().as_deref(),
        Some("ran\n")
    );
}

#[test]
fn post_only_reruns_the_post_processors_without_building() {
    let sshd = Sshd::start();
    let p = Project::new();
    let runs = p.remote.path().join("runs");
    let steps = r#"    shell(["echo ran >> REMOTE/runs"]),"#;
    script(&p, &sshd, steps, r#"manifest("out/manifest.json")"#);
    let out = p.kiln(&["build", "--post-only", "."]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("has no successful run"),
        "{}",
        text(&out)
    );

    let out = p.kiln(&["build", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let manifest = p.path().join("out/manifest.json");
    assert!(manifest.is_file(), "{}", text(&out));
    std::fs::remove_file(&manifest).expect("remove the manifest");

    let out = p.kiln(&["build", "--post-only", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(manifest.is_file(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&runs).ok().as_deref(),
        Some("ran\n"),
        "the build ran again: {}",
        text(&out)
    );
}
