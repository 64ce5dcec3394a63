//! Looks names up through `wasi:sockets/ip-name-lookup` directly and through std, as
//! a guest exfiltrating data in DNS queries (`<data>.attacker.example`) would.
//! Returns `name=addr,addr` or `name=ERR(code)` for each name.
use serde::Deserialize;
use wasi::sockets::ip_name_lookup::resolve_addresses;
use wasi::sockets::network::IpAddress;

#[derive(Deserialize)]
struct Config {
    names: Vec<String>,
}

fn lookup(name: &str) -> String {
    let net = wasi::sockets::instance_network::instance_network();
    let stream = match resolve_addresses(&net, name) {
        Ok(s) => s,
        Err(e) => return format!("ERR({e:?})"),
    };
    let mut addrs = Vec::new();
    loop {
        match stream.resolve_next_address() {
            Ok(Some(IpAddress::Ipv4((a, b, c, d)))) => addrs.push(format!("{a}.{b}.{c}.{d}")),
            Ok(Some(IpAddress::Ipv6(_))) => addrs.push("v6".to_string()),
            Ok(None) => break,
            Err(wasi::sockets::network::ErrorCode::WouldBlock) => stream.subscribe().block(),
            Err(e) => return format!("ERR({e:?})"),
        }
    }
    addrs.join(",")
}

kiln_guest::provisioner!(
    fn provision(cfg: Config) -> kiln_guest::Result<String> {
        let mut out = Vec::new();
        for name in &cfg.names {
            out.push(format!("{name}={}", lookup(name)));
            // And the way a Rust program would, through wasi-libc's getaddrinfo.
            use std::net::ToSocketAddrs;
            let via_std = match (name.as_str(), 80).to_socket_addrs() {
                Ok(a) => format!("{}", a.count()),
                Err(_) => "ERR".into(),
            };
            out.push(format!("std:{name}={via_std}"));
        }
        Ok(out.join(";"))
    }
);
