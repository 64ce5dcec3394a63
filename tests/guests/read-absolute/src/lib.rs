//! Reads a host file by absolute path: through std (wasi-libc matches it against the
//! preopens) and by calling `open-at` on a granted directory directly, as a hand-written
//! hostile component would.
use serde::Deserialize;
use wasi::filesystem::types::{DescriptorFlags, OpenFlags, PathFlags};

#[derive(Deserialize)]
struct Config {
    path: String,
}

kiln_guest::provisioner!(
    fn provision(cfg: Config) -> kiln_guest::Result<String> {
        let mut report = Vec::new();
        match std::fs::read_to_string(&cfg.path) {
            Ok(s) => return Ok(format!("ESCAPED via std: {s}")),
            Err(e) => report.push(format!("std: {e}")),
        }
        for (dir, name) in wasi::filesystem::preopens::get_directories() {
            match dir.open_at(
                PathFlags::empty(),
                &cfg.path,
                OpenFlags::empty(),
                DescriptorFlags::READ,
            ) {
                Ok(_) => return Ok(format!("ESCAPED via open-at on {name}")),
                Err(e) => report.push(format!("open-at on {name}: {e:?}")),
            }
        }
        kiln_guest::bail!("refused: {}", report.join("; "))
    }
);
