//! The smallest useful provisioner: logs a greeting, runs one command on the machine
//! and reports what it printed. kiln's tests and benchmark use it.

use kiln_guest::{Context, info, machine};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Who to greet in the log.
    #[serde(default = "default_name")]
    name: String,
    /// The command to run on the machine.
    #[serde(default = "default_command")]
    command: String,
    /// How many times to run it (the benchmark uses this to time host calls).
    #[serde(default = "one")]
    repeat: u32,
}

fn default_name() -> String {
    "world".into()
}

fn default_command() -> String {
    "uname -a".into()
}

fn one() -> u32 {
    1
}

kiln_guest::provisioner!(
    fn provision(cfg: Config) -> kiln_guest::Result<String> {
        info!("hello, {}", cfg.name);
        let mut last = String::new();
        for _ in 0..cfg.repeat {
            let out = machine::run(&cfg.command).context("hello could not run its command")?;
            last = out.stdout_str();
        }
        Ok(format!("hello {}: {}", cfg.name, last.trim()))
    }
);
