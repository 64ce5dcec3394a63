//! `net`: network use, per host (`allow: #{ net: ["api.example.com:443", "10.0.0.5"] }`;
//! no port means any port): raw TCP connections from a WASM guest, and builders'
//! downloads of their inputs ([`fetch`]; the qemu builder's `grants(cfg)` holds the
//! hosts its `iso_url`/`iso_urls`/`disk_image` and checksum URLs name). Each grant is
//! parsed once into a host rule; the socket check compares the address a guest dials
//! with the addresses the granted names resolved to, and the broker then checks the
//! rule's host and port, so what `kiln validate` accepts is what runs.

pub mod fetch;
pub mod progress;
pub mod rhai;
pub mod wasm;

use std::net::{IpAddr, SocketAddr};

use super::broker::{Denied, Scope};
use super::grants::Use;
use super::spec::{CapSpec, Grammar};

pub static SPEC: CapSpec = CapSpec {
    key: "net",
    summary: "open TCP connections to granted hosts (WASM guests) and download builder inputs from them",
    grammar: Grammar::HostPorts,
    wit: &["wasi:sockets/"],
    example: r#"allow: #{ net: ["host:port"] }"#,
};

pub struct Cap;

impl super::Capability for Cap {
    fn spec(&self) -> &'static CapSpec {
        &SPEC
    }
    fn register_rhai(&self, engine: &mut ::rhai::Engine) {
        rhai::register(engine);
    }
    fn register_pure(&self, engine: &mut ::rhai::Engine) {
        rhai::register_pure(engine);
    }
    fn wasm(&self) -> Option<&'static dyn crate::wasm::host::Adapter> {
        Some(&wasm::Adapter)
    }
}

/// One granted host, resolved: the addresses it had when the step started.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The host as granted (a name or an IP literal).
    pub host: String,
    pub addrs: Vec<IpAddr>,
}

/// The network as one step may use it.
#[derive(Clone)]
pub struct NetCap {
    scope: Scope,
    resolved: Vec<Resolved>,
}

impl NetCap {
    /// Resolves every host the step's `net` grant names. A name that does not resolve
    /// is logged and reaches nothing.
    pub async fn resolve(scope: Scope) -> NetCap {
        let mut resolved = Vec::new();
        for rule in scope.grants().hosts(&SPEC) {
            let Some(host) = rule.host.exact() else {
                continue;
            };
            if let Ok(ip) = host.parse::<IpAddr>() {
                resolved.push(Resolved {
                    host: host.to_string(),
                    addrs: vec![ip],
                });
                continue;
            }
            match tokio::net::lookup_host((host, rule.port.unwrap_or(443))).await {
                Ok(addrs) => resolved.push(Resolved {
                    host: host.to_string(),
                    addrs: addrs.map(|a| a.ip()).collect(),
                }),
                Err(e) => {
                    tracing::warn!(%host, error = %e, "granted net host does not resolve; connections to it will be refused")
                }
            }
        }
        NetCap { scope, resolved }
    }

    /// Whether any granted host is a name (so the guest needs name lookups).
    pub fn has_names(&self) -> bool {
        self.resolved
            .iter()
            .any(|r| r.host.parse::<IpAddr>().is_err())
    }

    /// The last word on a TCP connection to `addr`: allowed only if a granted host
    /// resolved to that address and the broker allows that host on that port.
    pub fn connect(&self, addr: SocketAddr) -> Result<(), Denied> {
        let port = Some(addr.port());
        let granted = self
            .resolved
            .iter()
            .filter(|r| r.addrs.contains(&addr.ip()))
            .map(|r| Use::host(&SPEC, r.host.clone(), port))
            .find(|u| self.scope.grants().allows(u));
        match granted {
            Some(u) => {
                self.scope.check(&u)?;
                self.scope.event(
                    SPEC.key,
                    &format!("{}: connect {addr}", u.object().unwrap_or_default()),
                    "ok",
                    0.0,
                );
                Ok(())
            }
            None => self
                .scope
                .check(&Use::host(&SPEC, addr.ip().to_string(), port)),
        }
    }

    /// Audits a socket use kiln never allows (listening, UDP).
    pub fn refuse(&self, addr: SocketAddr, why: &str) {
        self.scope.denied_by_sandbox(
            &Use::host(&SPEC, addr.ip().to_string(), Some(addr.port())),
            why,
        );
    }
}
