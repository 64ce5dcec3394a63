//! `kiln init`: a starter project.

use std::path::Path;

use crate::ui::Ui;

const STARTER: &str = r#"// A kiln build script. `kiln inspect` shows the plan; `kiln build` runs it.
let host = var("host", "127.0.0.1");

source("box", ssh_host(#{
    host: host,
    // Keys may live anywhere you grant: a key in ~/.ssh needs
    // `#{ allow: #{ read: [".", "~/.ssh"] } }` as source()'s third argument.
    ssh: #{ user: "root", private_key_file: "keys/id_ed25519", known_hosts: "keys/known_hosts", port: 22 },
}));

build("hello", #{
    sources: ["box"],
    steps: [
        shell(["echo hello from kiln > /tmp/kiln-hello"]),
        |m| { print(`building on ${m.facts().os_id}`); },
    ],
    post: [manifest("output/manifest.json")],
});
"#;

/// Keys and kiln's run state never belong in version control.
const GITIGNORE: &str = "# kiln: private keys, run state and build outputs stay out of version control\nkeys/\n.kiln/\noutput/\noutput-*/\n";

pub fn run(ui: &Ui, dir: &Path) -> u8 {
    let path = dir.join("build.rhai");
    if path.exists() {
        eprintln!("Error: {} already exists", path.display());
        return super::EXIT_USAGE;
    }
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, STARTER)) {
        eprintln!("Error: {}: {e}", path.display());
        return super::EXIT_USAGE;
    }
    let ignore = dir.join(".gitignore");
    let existing = std::fs::read_to_string(&ignore).unwrap_or_default();
    if !existing.lines().any(|l| l.trim() == "keys/") {
        let text = if existing.is_empty() || existing.ends_with('\n') {
            format!("{existing}{GITIGNORE}")
        } else {
            format!("{existing}\n{GITIGNORE}")
        };
        if let Err(e) = std::fs::write(&ignore, text) {
            eprintln!("Error: {}: {e}", ignore.display());
            return super::EXIT_USAGE;
        }
    }
    ui.plain(&format!(
        "Wrote {}; edit it, then run `kiln validate {}`",
        path.display(),
        dir.display()
    ));
    super::EXIT_OK
}
