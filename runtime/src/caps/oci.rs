//! `oci`: pulling from and pushing to an OCI registry, per registry host
//! (`allow: #{ oci: ["registry.example.com", "127.0.0.1:5001"] }`).

use super::spec::{CapSpec, Grammar};

pub static SPEC: CapSpec = CapSpec {
    key: "oci",
    summary: "pull from and push to an OCI registry",
    grammar: Grammar::HostPorts,
    wit: &[],
    example: r#"allow: #{ oci: ["registry.example.com"] }"#,
};

pub struct Cap;

impl super::Capability for Cap {
    fn spec(&self) -> &'static CapSpec {
        &SPEC
    }
}
