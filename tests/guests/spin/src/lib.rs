//! Never returns.
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {}

kiln_guest::provisioner!(
    fn provision(_cfg: Config) -> kiln_guest::Result<String> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
);
