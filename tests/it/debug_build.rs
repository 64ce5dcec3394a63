//! Issue 14, debuggable builds: `--on-error=ask`, `--debug` and `breakpoint()`, driven
//! through a real terminal (a tmux pane: `send-keys`, `capture-pane`) against a real
//! loopback sshd (the `ssh_host` builder), and the same options without a terminal.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::cli::{Project, kiln_cmd, text};
use crate::peers::sshd::Sshd;

/// How long a pane may take to show what the test waits for (a loaded 2-core machine).
const WAIT: Duration = Duration::from_secs(120);

/// A kiln build running in a detached tmux pane on a private tmux server, killed on
/// drop (even when the test panics).
struct Pane {
    socket: String,
    exit_file: PathBuf,
}

impl Pane {
    /// Starts `kiln <args>` in `dir` in a fresh 200x50 pane; its exit code is written to
    /// a file when it ends, and the pane stays so its output can still be read.
    fn start(dir: &Path, args: &[&str]) -> Pane {
        Pane::start_with_env(dir, args, &[])
    }

    /// [`Pane::start`] with `env` set for kiln.
    fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Pane {
        static N: AtomicU32 = AtomicU32::new(0);
        let socket = format!(
            "kiln-it-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let exit_file = dir.join(".pane-exit");
        // An earlier pane's exit code must not end this one's waits.
        let _ = std::fs::remove_file(&exit_file);
        let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let cmd = format!(
            "cd {} && env -u KILN_LOG NO_COLOR=1 {} {} {}; echo $? > {}; sleep 3600",
            q(&dir.display().to_string()),
            env.iter()
                .map(|(k, v)| q(&format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(" "),
            q(env!("CARGO_BIN_EXE_kiln")),
            args.iter().map(|a| q(a)).collect::<Vec<_>>().join(" "),
            q(&exit_file.display().to_string()),
        );
        let out = Command::new("tmux")
            .args(["-L", &socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", "200", "-y", "50", &cmd])
            .output()
            .unwrap_or_else(|e| {
                panic!("tmux: cannot run it ({e}): install it with tools/setup.d/tmux.sh")
            });
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pane = Pane { socket, exit_file };
        // Scrollback for everything the build prints.
        pane.tmux(&["set-option", "-g", "history-limit", "50000"]);
        pane
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Everything the pane shows, scrollback included.
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-", "-t", "0"])
    }

    /// Sends one key by its tmux name (`C-c`).
    fn key(&self, name: &str) {
        self.tmux(&["send-keys", "-t", "0", name]);
    }

    /// Types `keys` and Enter.
    fn type_line(&self, keys: &str) {
        self.tmux(&["send-keys", "-t", "0", "-l", keys]);
        self.tmux(&["send-keys", "-t", "0", "Enter"]);
    }

    /// Waits until the pane shows `what` `times` times in all.
    fn wait_for(&self, what: &str, times: usize) -> String {
        let started = Instant::now();
        loop {
            let s = self.screen();
            if s.matches(what).count() >= times {
                return s;
            }
            if started.elapsed() > WAIT || self.exit_code().is_some() {
                // One more look: the text may have come with the exit.
                let s = self.screen();
                if s.matches(what).count() >= times {
                    return s;
                }
                panic!("the pane never showed {what:?} ({times}x); it shows:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn exit_code(&self) -> Option<i32> {
        std::fs::read_to_string(&self.exit_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Waits for kiln to end; its exit code and the pane's text.
    fn wait_exit(&self) -> (i32, String) {
        let started = Instant::now();
        while started.elapsed() < WAIT {
            if let Some(c) = self.exit_code() {
                return (c, self.screen());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("kiln did not end; the pane shows:\n{}", self.screen());
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn ssh_host_script(p: &Project, sshd: &Sshd, steps: &str) {
    let script = format!(
        r#"source("box", ssh_host(#{{ host: "127.0.0.1", ssh: {{SSH}} }}));
build("web", #{{ sources: ["box"], steps: [
{steps}
]}});
"#
    )
    .replace("REMOTE", p.remote.path().to_str().expect("utf-8 temp dir"));
    p.script(sshd, &script);
}

#[test]
fn on_error_ask_shell_then_retry_after_fixing_the_script() {
    let sshd = Sshd::start();
    let p = Project::new();
    let remote = p.remote.path();
    ssh_host_script(
        &p,
        &sshd,
        r#"    shell(["echo one > REMOTE/one"]),
    shell(["test -f REMOTE/fixed-by-hand && echo two > REMOTE/two; test -f REMOTE/two"]),
    shell(["echo three > REMOTE/three"]),"#,
    );
    let pane = Pane::start(p.path(), &["build", ".", "--on-error=ask"]);
    let s = pane.wait_for("choose [r/s/c/a/k]", 1);
    assert!(s.contains("step 2/3"), "{s}");
    assert!(s.contains("failed"), "{s}");
    assert!(s.contains("[r] retry"), "{s}");
    // The menu also names the equivalent ssh command.
    assert!(s.contains(&format!("-p {}", sshd.port)), "{s}");
    assert!(std::fs::read_to_string(remote.join("one")).is_ok_and(|t| t == "one\n"));

    // [s]hell: a command typed in the shell runs on the machine.
    pane.type_line("s");
    pane.wait_for("Opening a shell", 1);
    let marker = remote.join("fixed-by-hand");
    pane.type_line(&format!("touch {} && exit", marker.display()));
    pane.wait_for("Shell closed", 1);
    assert!(marker.exists(), "{}", pane.screen());
    pane.wait_for("choose [r/s/c/a/k]", 2);

    // [r]etry after editing the script: the step is read again from it.
    ssh_host_script(
        &p,
        &sshd,
        r#"    shell(["echo one > REMOTE/one"]),
    shell(["test -f REMOTE/fixed-by-hand && echo retried > REMOTE/two"]),
    shell(["echo three > REMOTE/three"]),"#,
    );
    pane.type_line("r");
    let (code, s) = pane.wait_exit();
    assert_eq!(code, 0, "{s}");
    assert!(s.contains("Re-read the build script"), "{s}");
    assert_eq!(
        std::fs::read_to_string(remote.join("two")).ok().as_deref(),
        Some("retried\n"),
        "{s}"
    );
    assert_eq!(
        std::fs::read_to_string(remote.join("three"))
            .ok()
            .as_deref(),
        Some("three\n"),
        "{s}"
    );
}

/// `[s]hell` in an OCI build opens a shell inside the failed step's container (what the
/// step wrote is there), Ctrl-C in it interrupts the shell's command and not kiln, and
/// a retry after fixing the script builds the image and leaves nothing behind.
#[test]
fn on_error_ask_shell_in_the_failed_steps_container_then_retry() {
    let fx = crate::oci_build::Fixture::new();
    let p = Project::new();
    let script = |second: &str| {
        format!(
            r#"
source("app", oci(#{{ image: "{base}", output: ["oci-layout:output/img:v1"] }}));
build("img", #{{ sources: ["app"], steps: [
    shell(["echo def | tr d-f q-s > /one"]),
    shell(["echo abc | tr a-c x-z > /partial", "{second}"]),
]}});
"#,
            base = fx.base()
        )
    };
    p.write("build.rhai", &script("exit 4"));
    let cache = fx.cache().display().to_string();
    let pane = Pane::start_with_env(
        p.path(),
        &["build", ".", "--on-error=ask"],
        &[("KILN_CACHE_DIR", &cache)],
    );
    let s = pane.wait_for("choose [r/s/c/a/k]", 1);
    assert!(s.contains("step 2/2"), "{s}");
    // The menu names the command that enters the container from another terminal.
    assert!(s.contains("nsenter -t "), "{s}");

    pane.type_line("s");
    pane.wait_for("Opening a shell on container", 1);
    // Neither "xyz" nor "qrs" is in what is typed: they can only be the files' text.
    pane.type_line("cat /partial /one");
    pane.wait_for("xyz", 1);
    pane.wait_for("qrs", 1);
    pane.type_line("sleep 600");
    std::thread::sleep(Duration::from_millis(500));
    pane.key("C-c");
    pane.type_line("echo after-$((2+3))");
    pane.wait_for("after-5", 1);
    assert!(
        pane.exit_code().is_none(),
        "Ctrl-C ended kiln: {}",
        pane.screen()
    );
    pane.type_line("exit");
    pane.wait_for("Shell closed", 1);
    pane.wait_for("choose [r/s/c/a/k]", 2);

    p.write("build.rhai", &script("true"));
    pane.type_line("r");
    let (code, s) = pane.wait_exit();
    assert_eq!(code, 0, "{s}");
    assert!(s.contains("Re-read the build script"), "{s}");
    assert!(p.path().join("output/img").exists(), "{s}");
    fx.assert_no_leftovers(&s);
}

#[test]
fn on_error_ask_abort_keeps_and_k_cleans_up() {
    let sshd = Sshd::start();
    let p = Project::new();
    ssh_host_script(&p, &sshd, r#"    shell(["exit 7"]),"#);
    let pane = Pane::start(p.path(), &["build", ".", "--on-error=ask"]);
    pane.wait_for("choose [r/s/c/a/k]", 1);
    pane.type_line("x");
    pane.wait_for("is not one of", 1);
    pane.type_line("a");
    let (code, s) = pane.wait_exit();
    assert_eq!(code, 1, "{s}");
    assert!(s.contains("aborted at the user's request"), "{s}");
    assert!(s.contains("kiln cleanup --run"), "{s}");
    drop(pane);

    let pane = Pane::start(p.path(), &["build", ".", "--on-error=ask"]);
    pane.wait_for("choose [r/s/c/a/k]", 1);
    pane.type_line("k");
    let (code, s) = pane.wait_exit();
    assert_eq!(code, 1, "{s}");
    assert!(s.contains("stopped at the user's request"), "{s}");
    assert!(!s.contains("kiln cleanup --run"), "{s}");
}

#[test]
fn on_error_ask_continue_goes_past_the_failed_step() {
    let sshd = Sshd::start();
    let p = Project::new();
    ssh_host_script(
        &p,
        &sshd,
        r#"    shell(["exit 3"]),
    shell(["echo after > REMOTE/after"]),"#,
    );
    let pane = Pane::start(p.path(), &["build", ".", "--on-error=ask"]);
    pane.wait_for("choose [r/s/c/a/k]", 1);
    pane.type_line("c");
    let (code, s) = pane.wait_exit();
    assert_eq!(code, 0, "{s}");
    assert!(s.contains("Going on after the failed step 1/2"), "{s}");
    assert_eq!(
        std::fs::read_to_string(p.remote.path().join("after"))
            .ok()
            .as_deref(),
        Some("after\n")
    );
}

#[test]
fn debug_pauses_before_each_step_and_breakpoint_pauses_there() {
    let sshd = Sshd::start();
    let p = Project::new();
    let remote = p.remote.path();
    ssh_host_script(
        &p,
        &sshd,
        r#"    shell(["echo one > REMOTE/one"]),
    shell(["echo two > REMOTE/two"]),
    breakpoint("look around"),
    shell(["echo four > REMOTE/four"]),"#,
    );
    let pane = Pane::start(p.path(), &["build", ".", "--debug"]);
    let s = pane.wait_for("choose [n/r/s/c/a/k]", 1);
    assert!(s.contains("Paused before step 1/4"), "{s}");
    assert!(!remote.join("one").exists(), "{s}");
    pane.type_line("n");
    let s = pane.wait_for("choose [n/r/s/c/a/k]", 2);
    assert!(s.contains("Paused before step 2/4"), "{s}");
    assert!(remote.join("one").exists(), "{s}");
    // [c]ontinue: no more pauses before steps, but the breakpoint still stops.
    pane.type_line("c");
    let s = pane.wait_for("choose [n/s/c/a/k]", 1);
    assert!(
        s.contains("Breakpoint at step 3/4 (breakpoint (look around)): look around"),
        "{s}"
    );
    assert!(remote.join("two").exists(), "{s}");
    assert!(!remote.join("four").exists(), "{s}");
    pane.type_line("c");
    let (code, s) = pane.wait_exit();
    assert_eq!(code, 0, "{s}");
    assert!(!s.contains("Paused before step 4/4"), "{s}");
    assert!(remote.join("four").exists(), "{s}");
}

#[test]
fn without_a_terminal_ask_cleans_up_and_breakpoints_go_on() {
    let sshd = Sshd::start();
    let p = Project::new();
    ssh_host_script(
        &p,
        &sshd,
        r#"    breakpoint(),
    shell(["echo one > REMOTE/one"]),"#,
    );
    let out = kiln_cmd(p.path(), &["build", ".", "--on-error=ask"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run kiln");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("No terminal: builds will not pause"), "{all}");
    assert!(all.contains("no terminal to pause on; going on"), "{all}");
    assert!(p.remote.path().join("one").exists(), "{all}");

    ssh_host_script(&p, &sshd, r#"    shell(["exit 5"]),"#);
    let out = kiln_cmd(p.path(), &["build", ".", "--on-error=ask"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run kiln");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("--on-error=ask behaves as --on-error=cleanup"),
        "{all}"
    );
}
