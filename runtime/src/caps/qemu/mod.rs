//! `qemu`: starting and stopping VMs and running qemu-img (`allow: #{ qemu: true }`).
//! The QEMU builder declares it in its own `grants(cfg)`.
//!
//! [`run`] is the facade every VM and image primitive goes through: checked, timed and
//! audited as one `qemu` line naming the operation.

pub mod cache_rhai;
pub mod rhai;

use std::future::Future;

use super::broker::{Scope, ScopeError};
use super::grants::Use;
use super::spec::{CapSpec, Grammar};

pub static SPEC: CapSpec = CapSpec {
    key: "qemu",
    summary: "start VMs and run qemu-img",
    grammar: Grammar::Flag,
    wit: &[],
    example: "allow: #{ qemu: true }",
};

pub struct Cap;

impl super::Capability for Cap {
    fn spec(&self) -> &'static CapSpec {
        &SPEC
    }
    fn register_rhai(&self, engine: &mut ::rhai::Engine) {
        rhai::register(engine);
        cache_rhai::register(engine);
    }
}

/// Runs one VM or image operation (`what` names it in the audit log) for `scope`.
pub async fn run<T, E: std::fmt::Display>(
    scope: &Scope,
    what: &str,
    op: impl Future<Output = Result<T, E>>,
) -> Result<T, ScopeError<E>> {
    scope.run(&Use::flag(&SPEC), what, op).await
}
