//! The cloud-side view of a run: every kind of resource kiln creates, found by tag, so a
//! cleanup can reap a run whose local ledger is lost.

use std::fmt;

use crate::Ec2Client;
use crate::error::Ec2Error;
use crate::model::{Filter, Tags};
use crate::ops::images::{DescribeImagesRequest, ImageState};

/// Which tag to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagQuery {
    /// `tag:<key>` = `<value>`, e.g. `kiln:run` = a run's uuid.
    Equals { key: String, value: String },
    /// Any resource carrying the key (`tag-key`), e.g. every kiln run.
    HasKey(String),
}

impl TagQuery {
    pub fn equals(key: impl Into<String>, value: impl Into<String>) -> Self {
        TagQuery::Equals {
            key: key.into(),
            value: value.into(),
        }
    }

    fn filter(&self) -> Filter {
        match self {
            TagQuery::Equals { key, value } => Filter::tag(key, value.clone()),
            TagQuery::HasKey(key) => Filter::tag_key(key.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    Instance,
    Volume,
    Image,
    Snapshot,
    SecurityGroup,
    KeyPair,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Instance => "instance",
            ResourceKind::Volume => "volume",
            ResourceKind::Image => "image",
            ResourceKind::Snapshot => "snapshot",
            ResourceKind::SecurityGroup => "security group",
            ResourceKind::KeyPair => "key pair",
        })
    }
}

/// One tagged resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedResource {
    pub kind: ResourceKind,
    /// What the delete call takes: the instance, volume, image, snapshot or group id, or
    /// the key pair's *name*.
    pub id: String,
    /// The AMI or security group name, or the key pair id.
    pub name: Option<String>,
    /// EC2's state, where the kind has one (`running`, `available`, `completed`, ...).
    pub state: Option<String>,
    pub tags: Tags,
}

impl TaggedResource {
    /// Still costs money or blocks a name: not a terminated instance, a deregistered AMI
    /// or a deleted volume.
    pub fn is_live(&self) -> bool {
        let state = self.state.as_deref().unwrap_or("");
        match self.kind {
            ResourceKind::Instance => !matches!(state, "terminated"),
            ResourceKind::Image => state != "deregistered",
            ResourceKind::Volume => !matches!(state, "deleted" | "deleting"),
            _ => true,
        }
    }
}

impl Ec2Client {
    /// Every instance, volume, AMI (owned by this account), snapshot (same), security group
    /// and key pair in this region that matches `query`, in the order a cleanup deletes
    /// them. Terminated instances are included (marked by their state) so a ledger can
    /// close their records. The six listings run concurrently.
    pub async fn find_tagged(&self, query: &TagQuery) -> Result<Vec<TaggedResource>, Ec2Error> {
        let f = vec![query.filter()];
        let self_owner = vec!["self".to_string()];
        let image_req = DescribeImagesRequest {
            owners: self_owner.clone(),
            filters: f.clone(),
            ..Default::default()
        };
        let (instances, volumes, images, snapshots, groups, keys) = tokio::join!(
            self.describe_instances(&[], &f),
            self.describe_volumes(&[], &f),
            self.describe_images(&image_req),
            self.describe_snapshots(&[], &self_owner, &f),
            self.describe_security_groups(&[], &f),
            self.describe_key_pairs(&[], &f, false),
        );
        let mut out = Vec::new();
        out.extend(instances?.into_iter().map(|i| TaggedResource {
            kind: ResourceKind::Instance,
            id: i.instance_id,
            name: None,
            state: Some(i.state.to_string()),
            tags: i.tags,
        }));
        out.extend(volumes?.into_iter().map(|v| TaggedResource {
            kind: ResourceKind::Volume,
            id: v.volume_id,
            name: None,
            state: Some(v.state),
            tags: v.tags,
        }));
        out.extend(
            images?
                .into_iter()
                .filter(|i| i.state != ImageState::Deregistered)
                .map(|i| TaggedResource {
                    kind: ResourceKind::Image,
                    id: i.image_id,
                    name: i.name,
                    state: Some(i.state.to_string()),
                    tags: i.tags,
                }),
        );
        out.extend(snapshots?.into_iter().map(|s| TaggedResource {
            kind: ResourceKind::Snapshot,
            id: s.snapshot_id,
            name: None,
            state: Some(s.state.to_string()),
            tags: s.tags,
        }));
        out.extend(groups?.into_iter().map(|g| TaggedResource {
            kind: ResourceKind::SecurityGroup,
            id: g.group_id,
            name: Some(g.group_name),
            state: None,
            tags: g.tags,
        }));
        out.extend(keys?.into_iter().map(|k| TaggedResource {
            kind: ResourceKind::KeyPair,
            id: k.key_name,
            name: k.key_pair_id,
            state: None,
            tags: k.tags,
        }));
        Ok(out)
    }
}
