//! `net`: network use, per host (`allow: #{ net: ["api.example.com:443", "10.0.0.5"] }`;
//! no port means any port): raw TCP connections from a WASM guest, and builders'
//! downloads of their inputs ([`fetch`]; the qemu builder's `grants(cfg)` holds the
//! hosts its `iso_url`/`iso_urls`/`disk_image` and checksum URLs name). Each grant is
//! parsed once into a host rule; the socket check compares the address a guest dials
//! with the addresses the granted names resolved to, and the broker then checks the
//! rule's host and port, so what `kiln validate` accepts is what runs.
//!
//! Name resolution is per name too. A guest never reaches a resolver: kiln answers
//! `wasi:sockets/ip-name-lookup` itself ([`NetCap::lookup`]), for names the grant
//! names only, and audits every lookup. A lookup of `<data>.attacker.example` is
//! refused before any DNS query is sent, so lookups are not a way out either.

pub mod fetch;
pub mod lookup;
pub mod progress;
pub mod rhai;
pub mod wasm;

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

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
pub struct NetCap {
    scope: Scope,
    /// Granted hosts and their addresses: resolved when the step starts, and again
    /// when the guest looks a name up (the addresses it is told are the ones it may
    /// connect to).
    resolved: Mutex<Vec<Resolved>>,
}

/// Why a guest's lookup failed, in the terms of `wasi:sockets`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// No `net` grant names this host; nothing was sent to a resolver.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// Not a host name kiln would look up (empty, too long, bad characters).
    #[error("{0:?} is not a host name")]
    Invalid(String),
    /// The granted name does not resolve.
    #[error("{host} does not resolve: {reason}")]
    Unresolvable { host: String, reason: String },
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
        NetCap {
            scope,
            resolved: Mutex::new(resolved),
        }
    }

    fn resolved(&self) -> std::sync::MutexGuard<'_, Vec<Resolved>> {
        self.resolved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves `name` on the guest's behalf, if a `net` grant names it: refused and
    /// audited otherwise, before any query leaves the host. An IP literal is its own
    /// answer (and still checked: a grant must name it).
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        if name.len() > 253 {
            self.scope.event(
                SPEC.key,
                &format!("({} bytes): resolve", name.len()),
                "error: not a host name",
                0.0,
            );
            return Err(LookupError::Invalid(format!("({} bytes)", name.len())));
        }
        let literal = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        let host = literal.trim_end_matches('.').to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        let valid = ip.is_some()
            || (!host.is_empty()
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                }));
        let u = Use::host(&SPEC, host.clone(), None);
        if !valid {
            self.scope.denied_by_sandbox(&u, "not a host name");
            return Err(LookupError::Invalid(name.to_string()));
        }
        self.scope.check(&u)?;
        let started = std::time::Instant::now();
        let addrs = match ip {
            Some(ip) => Ok(vec![ip]),
            None => {
                let known = self
                    .resolved()
                    .iter()
                    .find(|r| r.host == host)
                    .map(|r| r.addrs.clone())
                    .filter(|a| !a.is_empty());
                match known {
                    Some(a) => Ok(a),
                    None => match tokio::net::lookup_host((host.as_str(), 0)).await {
                        Ok(found) => {
                            let a: Vec<IpAddr> = found.map(|s| s.ip().to_canonical()).collect();
                            self.resolved().push(Resolved {
                                host: host.clone(),
                                addrs: a.clone(),
                            });
                            Ok(a)
                        }
                        Err(e) => Err(LookupError::Unresolvable {
                            host: host.clone(),
                            reason: e.to_string(),
                        }),
                    },
                }
            }
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let outcome = match &addrs {
            Ok(a) => format!("ok ({} addresses)", a.len()),
            Err(e) => format!("error: {e}"),
        };
        self.scope
            .event(SPEC.key, &format!("{host}: resolve"), &outcome, ms);
        addrs
    }

    /// The last word on a TCP connection to `addr`: allowed only if a granted host
    /// resolved to that address and the broker allows that host on that port.
    pub fn connect(&self, addr: SocketAddr) -> Result<(), Denied> {
        let port = Some(addr.port());
        let granted = self
            .resolved()
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
