//! The EC2 operations, one module per resource kind; each adds methods to `Ec2Client`.

pub mod images;
pub mod instances;
pub mod key_pairs;
pub mod network;
pub mod security_groups;
pub mod storage;
pub mod sweep;
pub mod tags;
