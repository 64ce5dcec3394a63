//! `ec2`: signed EC2 API calls in the regions granted (`allow: #{ ec2: ["us-east-1"] }`,
//! `*` for every region). The AMI builder holds it for the regions its config names.

use super::spec::{CapSpec, Grammar};

pub static SPEC: CapSpec = CapSpec {
    key: "ec2",
    summary: "call the EC2 API in a region",
    grammar: Grammar::Names { wildcard: true },
    wit: &[],
    example: r#"allow: #{ ec2: ["us-east-1"] }"#,
};

pub struct Cap;

impl super::Capability for Cap {
    fn spec(&self) -> &'static CapSpec {
        &SPEC
    }
}
