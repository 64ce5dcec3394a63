//! Asks for a secret by name.
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    name: String,
}

kiln_guest::provisioner!(
    fn provision(cfg: Config) -> kiln_guest::Result<String> {
        let s = kiln_guest::secrets::get(&cfg.name)?;
        Ok(format!("STOLE {} ({} bytes)", cfg.name, s.expose().len()))
    }
);
