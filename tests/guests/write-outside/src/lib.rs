//! Writes a file where it has no write grant (outside its write dir, or into a read grant).
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    path: String,
}

kiln_guest::provisioner!(
    fn provision(cfg: Config) -> kiln_guest::Result<String> {
        std::fs::write(&cfg.path, b"pwned by a provisioner\n")?;
        Ok(format!("ESCAPED: wrote {}", cfg.path))
    }
);
