//! EBS snapshots and volumes: describe and delete.

use std::fmt;

use roxmltree::Node;

use crate::Ec2Client;
use crate::client::{Idempotent, malformed, parse_doc};
use crate::error::Ec2Error;
use crate::model::{Filter, Tags};
use crate::params::Params;
use crate::xml::NodeExt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotState {
    Pending,
    Completed,
    Error,
    Recoverable,
    Recovering,
    Other(String),
}

impl SnapshotState {
    pub fn parse(s: &str) -> Self {
        match s {
            "pending" => SnapshotState::Pending,
            "completed" => SnapshotState::Completed,
            "error" => SnapshotState::Error,
            "recoverable" => SnapshotState::Recoverable,
            "recovering" => SnapshotState::Recovering,
            other => SnapshotState::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            SnapshotState::Pending => "pending",
            SnapshotState::Completed => "completed",
            SnapshotState::Error => "error",
            SnapshotState::Recoverable => "recoverable",
            SnapshotState::Recovering => "recovering",
            SnapshotState::Other(s) => s,
        }
    }
}

impl fmt::Display for SnapshotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub snapshot_id: String,
    pub volume_id: Option<String>,
    pub state: SnapshotState,
    pub state_message: Option<String>,
    /// e.g. `100%`.
    pub progress: Option<String>,
    pub owner_id: Option<String>,
    /// GiB.
    pub volume_size: Option<u64>,
    pub encrypted: Option<bool>,
    pub description: Option<String>,
    pub start_time: Option<String>,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub volume_id: String,
    /// `creating`, `available`, `in-use`, `deleting`, `deleted`, `error`.
    pub state: String,
    /// GiB.
    pub size: Option<u64>,
    pub snapshot_id: Option<String>,
    pub availability_zone: Option<String>,
    pub volume_type: Option<String>,
    pub encrypted: Option<bool>,
    pub attachments: Vec<VolumeAttachment>,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeAttachment {
    pub instance_id: String,
    pub device: Option<String>,
    pub state: Option<String>,
    pub delete_on_termination: Option<bool>,
}

impl Ec2Client {
    /// DescribeSnapshots by ids, owners (`self`, account ids) and filters, all pages.
    pub async fn describe_snapshots(
        &self,
        snapshot_ids: &[String],
        owners: &[String],
        filters: &[Filter],
    ) -> Result<Vec<Snapshot>, Ec2Error> {
        const ACTION: &str = "DescribeSnapshots";
        let mut p = Params::new();
        p.list("SnapshotId", snapshot_ids)
            .list("Owner", owners)
            .filters(filters);
        self.paginate(ACTION, p, snapshot_ids.is_empty(), |body| {
            let doc = parse_doc(ACTION, body)?;
            let root = doc.root_element();
            let snaps = root
                .items("snapshotSet")
                .into_iter()
                .map(parse_snapshot)
                .collect::<Result<Vec<_>, _>>()
                .map_err(malformed(ACTION))?;
            Ok((snaps, root.text_of("nextToken")))
        })
        .await
    }

    /// One snapshot, `None` if unknown.
    pub async fn describe_snapshot(&self, snapshot_id: &str) -> Result<Option<Snapshot>, Ec2Error> {
        match self
            .describe_snapshots(&[snapshot_id.to_string()], &[], &[])
            .await
        {
            Ok(v) => Ok(v.into_iter().find(|s| s.snapshot_id == snapshot_id)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// DeleteSnapshot. Gone → `is_not_found()`; still behind a registered AMI →
    /// `is_in_use()` (`InvalidSnapshot.InUse`).
    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), Ec2Error> {
        let mut p = Params::new();
        p.set("SnapshotId", snapshot_id);
        self.call("DeleteSnapshot", &p, Idempotent::Yes).await?;
        Ok(())
    }

    pub async fn describe_volumes(
        &self,
        volume_ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<Volume>, Ec2Error> {
        const ACTION: &str = "DescribeVolumes";
        let mut p = Params::new();
        p.list("VolumeId", volume_ids).filters(filters);
        self.paginate(ACTION, p, volume_ids.is_empty(), |body| {
            let doc = parse_doc(ACTION, body)?;
            let root = doc.root_element();
            let vols = root
                .items("volumeSet")
                .into_iter()
                .map(parse_volume)
                .collect::<Result<Vec<_>, _>>()
                .map_err(malformed(ACTION))?;
            Ok((vols, root.text_of("nextToken")))
        })
        .await
    }

    /// DeleteVolume (it must be `available`, i.e. detached).
    pub async fn delete_volume(&self, volume_id: &str) -> Result<(), Ec2Error> {
        let mut p = Params::new();
        p.set("VolumeId", volume_id);
        self.call("DeleteVolume", &p, Idempotent::Yes).await?;
        Ok(())
    }
}

fn parse_snapshot(n: Node<'_, '_>) -> Result<Snapshot, String> {
    Ok(Snapshot {
        snapshot_id: n.req("snapshotId")?,
        volume_id: n.text_of("volumeId"),
        state: SnapshotState::parse(&n.text_of("status").unwrap_or_default()),
        state_message: n
            .text_of("statusMessage")
            .or_else(|| n.text_of("stateMessage")),
        progress: n.text_of("progress"),
        owner_id: n.text_of("ownerId"),
        volume_size: n.u64_of("volumeSize"),
        encrypted: n.bool_of("encrypted"),
        description: n.text_of("description"),
        start_time: n.text_of("startTime"),
        tags: n.tags(),
    })
}

fn parse_volume(n: Node<'_, '_>) -> Result<Volume, String> {
    Ok(Volume {
        volume_id: n.req("volumeId")?,
        state: n.text_of("status").unwrap_or_default(),
        size: n.u64_of("size"),
        snapshot_id: n.text_of("snapshotId"),
        availability_zone: n.text_of("availabilityZone"),
        volume_type: n.text_of("volumeType"),
        encrypted: n.bool_of("encrypted"),
        attachments: n
            .items("attachmentSet")
            .into_iter()
            .filter_map(|a| {
                Some(VolumeAttachment {
                    instance_id: a.text_of("instanceId")?,
                    device: a.text_of("device"),
                    state: a.text_of("status"),
                    delete_on_termination: a.bool_of("deleteOnTermination"),
                })
            })
            .collect(),
        tags: n.tags(),
    })
}
