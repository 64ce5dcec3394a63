//! Uses the machine; run without the machine grant it must not even link.
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {}

kiln_guest::provisioner!(
    fn provision(_cfg: Config) -> kiln_guest::Result<String> {
        let out = kiln_guest::machine::exec("id")?;
        Ok(format!("RAN: {}", out.stdout_str()))
    }
);
