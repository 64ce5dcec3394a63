//! Floods the log through the log interface and stdout/stderr, then returns normally.
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    /// Lines to write through each channel.
    lines: u32,
}

kiln_guest::provisioner!(
    fn provision(cfg: Config) -> kiln_guest::Result<String> {
        let line = "x".repeat(1000);
        for i in 0..cfg.lines {
            kiln_guest::info!("{i} {line}");
            println!("{i} {line}");
            eprint!("{line}"); // no newline: the host must not buffer it without bound
        }
        Ok(format!("flooded {} lines", cfg.lines))
    }
);
