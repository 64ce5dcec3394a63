//! Follows a symlink planted inside its read grant that points outside it.
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    path: String,
}

kiln_guest::provisioner!(
    fn provision(cfg: Config) -> kiln_guest::Result<String> {
        let stolen = std::fs::read_to_string(&cfg.path)?;
        Ok(format!("ESCAPED: {stolen}"))
    }
);
