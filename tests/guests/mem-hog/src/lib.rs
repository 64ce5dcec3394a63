//! Allocates (and touches) memory until something stops it.
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {}

kiln_guest::provisioner!(
    fn provision(_cfg: Config) -> kiln_guest::Result<String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let chunk = vec![0xA5u8; 16 << 20];
            hoard.push(std::hint::black_box(chunk));
            if hoard.len() > 1024 {
                return Ok("ALLOCATED 16 GiB".into());
            }
        }
    }
);
