//! Reads a host file next to its read grant by climbing out with `..`.
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    /// A path inside the granted directory followed by `..` components.
    path: String,
}

kiln_guest::provisioner!(
    fn provision(cfg: Config) -> kiln_guest::Result<String> {
        let stolen = std::fs::read_to_string(&cfg.path)?;
        Ok(format!("ESCAPED: {stolen}"))
    }
);
