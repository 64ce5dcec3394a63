//! `kiln init`: a starter project.

use std::path::Path;

use crate::ui::Ui;

const STARTER: &str = r#"// A kiln build script. `kiln inspect` shows the plan; `kiln build` runs it.
let host = var("host", "127.0.0.1");

source("box", ssh_host(#{
    host: host,
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
    ui.plain(&format!(
        "Wrote {}; edit it, then run `kiln validate {}`",
        path.display(),
        dir.display()
    ));
    super::EXIT_OK
}
