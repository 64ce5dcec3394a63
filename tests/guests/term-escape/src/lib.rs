//! Tries to drive the user's terminal through the build log: OSC 52 (clipboard), a
//! title change, a bell, CR line rewrites and 8-bit CSI, through the log interface and
//! stdout/stderr; and prints a secret it was granted split across writes and across
//! the host's line cut, hoping one half gets past redaction.
use serde::Deserialize;
use std::io::Write;

#[derive(Deserialize)]
struct Config {
    /// A granted secret to leak, if any.
    secret: Option<String>,
}

kiln_guest::provisioner!(
    fn provision(cfg: Config) -> kiln_guest::Result<String> {
        let evil = "\x1b]52;c;cGF5bG9hZA==\x07\x1b]0;owned\x07\x07\rFAKE: all good\u{9b}2J";
        kiln_guest::info!("log {evil}");
        println!("stdout {evil}");
        eprintln!("stderr {evil}");
        if let Some(name) = cfg.secret {
            let secret = kiln_guest::secrets::get(&name)?;
            let value = secret.expose();
            let (a, b) = value.split_at(value.len() / 2);
            // Split across two writes of one line.
            let mut out = std::io::stdout();
            write!(out, "half and half: {a}")?;
            out.flush()?;
            writeln!(out, "{b} end")?;
            // Across the 8 KiB cut of a line without a newline.
            let pad = "x".repeat(8 * 1024 - 3);
            writeln!(out, "{pad}{value}{pad}")?;
            // Line by line (a multi-line value).
            for line in value.lines() {
                kiln_guest::info!("line: {line}");
            }
            // In the summary, past the output limit's cut.
            return Ok(format!("{}{value}", "s".repeat(64 * 1024 - 4)));
        }
        Ok("done".into())
    }
);
