//! Opens a TCP connection and sends a request line.
use serde::Deserialize;
use std::io::Write;

#[derive(Deserialize)]
struct Config {
    addr: String,
}

kiln_guest::provisioner!(
    fn provision(cfg: Config) -> kiln_guest::Result<String> {
        let mut s = std::net::TcpStream::connect(&cfg.addr)?;
        s.write_all(b"GET /exfiltrate HTTP/1.0\r\n\r\n")?;
        Ok(format!("CONNECTED to {}", cfg.addr))
    }
);
