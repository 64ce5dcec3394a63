//! Capabilities: what a step may do, the broker every host call passes, and the audit log.
//!
//! Default deny. A grant is written in the build script next to the step that needs it
//! (`#{ allow: #{ read: ["files"], secrets: ["DB_PW"] } }`); builders declare their own
//! defaults (`fn grants(cfg)` in the builder script) and post-processors get what
//! their inputs and outputs need.
//!
//! The framework is [`spec`] (what a capability is, as data), [`grants`] (parsed
//! grants and the one comparison of a use with them), [`broker`] (the one checkpoint:
//! check, time, audit) and [`audit`]. Each capability is one module below with a
//! checked facade (the only way kiln code reaches it) and thin Rhai and WASM adapters
//! over that facade. [`TABLE`] is the only list that names them all: adding a
//! capability is its module, one line here, and its WIT interface (see ARCHITECTURE.md).

mod audit;
mod broker;
pub mod grants;
pub mod limits;
pub mod rule;
pub mod spec;

pub mod ec2;
pub mod fs;
pub mod machine;
pub mod net;
pub mod oci;
pub mod openstack;
pub mod qemu;
pub mod registry;
pub mod secrets;
pub mod ssh;

pub use audit::{AuditLog, AuditRecord, now_rfc3339 as now_rfc3339_pub};
pub use broker::{Broker, Denied, Holder, Scope, ScopeError, StopReason};
pub use fs::{FsError, Project};
pub use grants::{GrantError, Grants, Target, Use};
pub use spec::{CapSpec, Grammar};

/// One capability: its spec, and its adapters for Rhai and WASM.
pub trait Capability: Sync {
    fn spec(&self) -> &'static CapSpec;

    /// Registers the capability's Rhai functions on a build's runtime engine. Each of
    /// them checks the caller's scope through the facade.
    fn register_rhai(&self, _engine: &mut rhai::Engine) {}

    /// Registers helpers that only compute (parse, never touch anything) on every
    /// engine, the declaring one too: a builder's `fn grants(cfg)` uses them.
    fn register_pure(&self, _engine: &mut rhai::Engine) {}

    /// The capability's WASM side, if guests can reach it.
    fn wasm(&self) -> Option<&'static dyn crate::wasm::host::Adapter> {
        None
    }
}

/// Every capability kiln has, in the order `inspect` shows them.
pub static TABLE: &[&dyn Capability] = &[
    &machine::Cap,
    &fs::Read,
    &fs::Write,
    &secrets::Cap,
    &net::Cap,
    &ssh::Cap,
    &qemu::Cap,
    &ec2::Cap,
    &oci::Cap,
    &openstack::Cap,
    &registry::Cap,
    &registry::Metadata,
];

/// The capability whose `allow` key is `key`.
pub fn spec_for(key: &str) -> Option<&'static CapSpec> {
    TABLE.iter().map(|c| c.spec()).find(|s| s.key == key)
}

/// The capability that gates the WIT import `import`, if any does.
pub fn gating(import: &str) -> Option<&'static dyn Capability> {
    TABLE
        .iter()
        .copied()
        .find(|c| c.spec().gates_import(import))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_every_wit_capability_has_a_wasm_adapter() {
        let mut keys: Vec<&str> = TABLE.iter().map(|c| c.spec().key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), TABLE.len(), "two capabilities share a key");
        for c in TABLE {
            if !c.spec().wit.is_empty() {
                assert!(
                    c.wasm().is_some(),
                    "{} has WIT but no WASM adapter",
                    c.spec().key
                );
            }
        }
    }
}
