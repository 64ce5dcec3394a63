//! Types shared by several resource kinds: tags, filters, block device mappings, state
//! reasons.

use std::collections::BTreeMap;

use roxmltree::Node;

use crate::xml::NodeExt;

/// Tags of a resource (EC2 keys are unique per resource).
pub type Tags = BTreeMap<String, String>;

/// A `Filter.N` of a Describe call: `name` is e.g. `name`, `state`, `tag:kiln:run`,
/// `tag-key`; any of `values` matches (wildcards `*` and `?` where EC2 allows them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

impl Filter {
    pub fn new<I, S>(name: impl Into<String>, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Filter {
            name: name.into(),
            values: values.into_iter().map(Into::into).collect(),
        }
    }

    /// `tag:<key>` = value.
    pub fn tag(key: &str, value: impl Into<String>) -> Self {
        Filter::new(format!("tag:{key}"), [value.into()])
    }

    /// Resources that carry the tag key, whatever its value.
    pub fn tag_key(key: impl Into<String>) -> Self {
        Filter::new("tag-key", [key.into()])
    }
}

/// One block device of an instance launch, image or AMI registration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockDeviceMapping {
    pub device_name: String,
    pub ebs: Option<EbsBlockDevice>,
    /// `ephemeral0` etc. for instance-store volumes.
    pub virtual_name: Option<String>,
    /// Suppress a device the AMI would otherwise attach.
    pub no_device: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EbsBlockDevice {
    pub snapshot_id: Option<String>,
    /// GiB.
    pub volume_size: Option<u64>,
    /// `gp3`, `gp2`, `io1`, `io2`, `st1`, `sc1`, `standard`.
    pub volume_type: Option<String>,
    pub iops: Option<u64>,
    pub throughput: Option<u64>,
    pub delete_on_termination: Option<bool>,
    pub encrypted: Option<bool>,
    pub kms_key_id: Option<String>,
}

/// Why a resource is in its state (`Client.UserInitiatedShutdown`, an AMI's failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateReason {
    pub code: Option<String>,
    pub message: Option<String>,
}

impl std::fmt::Display for StateReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.code, &self.message) {
            (Some(c), Some(m)) if c != m => write!(f, "{c}: {m}"),
            (Some(c), _) => f.write_str(c),
            (None, Some(m)) => f.write_str(m),
            (None, None) => f.write_str("no reason given"),
        }
    }
}

pub(crate) fn parse_state_reason(node: Node<'_, '_>, name: &str) -> Option<StateReason> {
    let r = node.child_named(name)?;
    let reason = StateReason {
        code: r.text_of("code"),
        message: r.text_of("message"),
    };
    (reason.code.is_some() || reason.message.is_some()).then_some(reason)
}

pub(crate) fn parse_block_devices(node: Node<'_, '_>) -> Vec<BlockDeviceMapping> {
    node.items("blockDeviceMapping")
        .into_iter()
        .filter_map(|item| {
            let device_name = item.text_of("deviceName")?;
            let ebs = item.child_named("ebs").map(|e| EbsBlockDevice {
                snapshot_id: e.text_of("snapshotId"),
                volume_size: e.u64_of("volumeSize"),
                volume_type: e.text_of("volumeType"),
                iops: e.u64_of("iops"),
                throughput: e.u64_of("throughput"),
                delete_on_termination: e.bool_of("deleteOnTermination"),
                encrypted: e.bool_of("encrypted"),
                kms_key_id: e.text_of("kmsKeyId"),
            });
            Some(BlockDeviceMapping {
                device_name,
                ebs,
                virtual_name: item.text_of("virtualName"),
                no_device: item.child_named("noDevice").is_some(),
            })
        })
        .collect()
}
