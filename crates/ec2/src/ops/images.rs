//! AMIs: describe (and Packer's `source_ami_filter`), create, register, copy, deregister
//! (and `force_deregister`), launch permissions.

use std::fmt;

use roxmltree::Node;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Ec2Client;
use crate::client::{Idempotent, malformed, parse_doc};
use crate::error::Ec2Error;
use crate::model::{
    BlockDeviceMapping, Filter, StateReason, Tags, parse_block_devices, parse_state_reason,
};
use crate::params::Params;
use crate::xml::NodeExt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageState {
    Pending,
    Available,
    Invalid,
    Deregistered,
    Transient,
    Failed,
    Error,
    Disabled,
    Other(String),
}

impl ImageState {
    pub fn parse(s: &str) -> Self {
        match s {
            "pending" => ImageState::Pending,
            "available" => ImageState::Available,
            "invalid" => ImageState::Invalid,
            "deregistered" => ImageState::Deregistered,
            "transient" => ImageState::Transient,
            "failed" => ImageState::Failed,
            "error" => ImageState::Error,
            "disabled" => ImageState::Disabled,
            other => ImageState::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ImageState::Pending => "pending",
            ImageState::Available => "available",
            ImageState::Invalid => "invalid",
            ImageState::Deregistered => "deregistered",
            ImageState::Transient => "transient",
            ImageState::Failed => "failed",
            ImageState::Error => "error",
            ImageState::Disabled => "disabled",
            ImageState::Other(s) => s,
        }
    }
}

impl fmt::Display for ImageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub image_id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub state: ImageState,
    pub state_reason: Option<StateReason>,
    pub owner_id: Option<String>,
    /// ISO 8601, e.g. `2024-05-01T12:00:00.000Z`.
    pub creation_date: Option<String>,
    pub architecture: Option<String>,
    pub root_device_name: Option<String>,
    pub root_device_type: Option<String>,
    pub virtualization_type: Option<String>,
    pub ena_support: Option<bool>,
    pub public: Option<bool>,
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    pub tags: Tags,
}

impl Image {
    /// The EBS snapshots behind the image.
    pub fn snapshot_ids(&self) -> Vec<String> {
        self.block_device_mappings
            .iter()
            .filter_map(|m| m.ebs.as_ref()?.snapshot_id.clone())
            .collect()
    }

    fn created_at(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(self.creation_date.as_deref()?, &Rfc3339).ok()
    }
}

#[derive(Debug, Clone, Default)]
pub struct DescribeImagesRequest {
    pub image_ids: Vec<String>,
    /// Account ids, `self`, `amazon`, `aws-marketplace`.
    pub owners: Vec<String>,
    pub filters: Vec<Filter>,
    pub executable_users: Vec<String>,
    pub include_deprecated: bool,
}

/// Packer's `source_ami_filter`.
#[derive(Debug, Clone, Default)]
pub struct SourceImageFilter {
    pub filters: Vec<Filter>,
    pub owners: Vec<String>,
    /// Take the newest by CreationDate when several match (else that is an error).
    pub most_recent: bool,
}

impl fmt::Display for SourceImageFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let filters: Vec<String> = self
            .filters
            .iter()
            .map(|x| format!("{}={}", x.name, x.values.join("|")))
            .collect();
        write!(f, "{{{}}}", filters.join(", "))?;
        if !self.owners.is_empty() {
            write!(f, " owners [{}]", self.owners.join(", "))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
pub struct CreateImageRequest {
    pub instance_id: String,
    pub name: String,
    pub description: Option<String>,
    /// Image a running instance without rebooting it (filesystem consistency is then the
    /// caller's problem).
    pub no_reboot: bool,
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    /// Tags of the AMI, applied atomically.
    pub tags: Tags,
    /// Tags of the snapshots it creates, applied atomically.
    pub snapshot_tags: Tags,
}

#[derive(Debug, Clone, Default)]
pub struct RegisterImageRequest {
    pub name: String,
    pub description: Option<String>,
    /// `x86_64`, `arm64`, ...
    pub architecture: Option<String>,
    pub root_device_name: String,
    /// `hvm` (default) or `paravirtual`.
    pub virtualization_type: Option<String>,
    pub ena_support: Option<bool>,
    /// `uefi`, `legacy-bios`, `uefi-preferred`.
    pub boot_mode: Option<String>,
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    pub tags: Tags,
}

/// Sent to the destination region's client.
#[derive(Debug, Clone, Default)]
pub struct CopyImageRequest {
    pub source_region: String,
    pub source_image_id: String,
    pub name: String,
    pub description: Option<String>,
    pub encrypted: Option<bool>,
    pub kms_key_id: Option<String>,
    /// Idempotency token: a repeated copy with it returns the first copy.
    pub client_token: Option<String>,
}

/// Who may launch an AMI besides its owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchPermissions {
    pub user_ids: Vec<String>,
    /// `all` makes the AMI public.
    pub groups: Vec<String>,
    pub organization_arns: Vec<String>,
    pub organizational_unit_arns: Vec<String>,
}

impl LaunchPermissions {
    pub fn is_empty(&self) -> bool {
        self.user_ids.is_empty()
            && self.groups.is_empty()
            && self.organization_arns.is_empty()
            && self.organizational_unit_arns.is_empty()
    }
}

/// What `force_deregister` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeregisteredImage {
    pub image_id: String,
    pub deleted_snapshots: Vec<String>,
}

impl Ec2Client {
    /// DescribeImages, all pages.
    pub async fn describe_images(
        &self,
        req: &DescribeImagesRequest,
    ) -> Result<Vec<Image>, Ec2Error> {
        const ACTION: &str = "DescribeImages";
        let mut p = Params::new();
        p.list("ImageId", &req.image_ids)
            .list("Owner", &req.owners)
            .list("ExecutableBy", &req.executable_users)
            .filters(&req.filters);
        if req.include_deprecated {
            p.flag("IncludeDeprecated", true);
        }
        self.paginate(ACTION, p, req.image_ids.is_empty(), |body| {
            let doc = parse_doc(ACTION, body)?;
            let root = doc.root_element();
            let images = root
                .items("imagesSet")
                .into_iter()
                .map(parse_image)
                .collect::<Result<Vec<_>, _>>()
                .map_err(malformed(ACTION))?;
            Ok((images, root.text_of("nextToken")))
        })
        .await
    }

    /// One image, `None` when unknown or deregistered.
    pub async fn describe_image(&self, image_id: &str) -> Result<Option<Image>, Ec2Error> {
        let req = DescribeImagesRequest {
            image_ids: vec![image_id.to_string()],
            ..Default::default()
        };
        match self.describe_images(&req).await {
            Ok(v) => Ok(v.into_iter().find(|i| i.image_id == image_id)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Packer's `source_ami_filter`: the one image matching filters + owners, or with
    /// `most_recent` the newest by CreationDate (ties broken by name, then id, highest
    /// wins, so the choice is deterministic). No match and several matches without
    /// `most_recent` are errors.
    pub async fn find_source_image(&self, filter: &SourceImageFilter) -> Result<Image, Ec2Error> {
        let req = DescribeImagesRequest {
            owners: filter.owners.clone(),
            filters: filter.filters.clone(),
            ..Default::default()
        };
        let mut images = self.describe_images(&req).await?;
        match images.len() {
            0 => Err(Ec2Error::NoSourceImage {
                filter: filter.to_string(),
                region: self.region().to_string(),
            }),
            1 => Ok(images.remove(0)),
            n if !filter.most_recent => Err(Ec2Error::AmbiguousSourceImage {
                filter: filter.to_string(),
                region: self.region().to_string(),
                count: n,
                ids: images.iter().take(10).map(|i| i.image_id.clone()).collect(),
            }),
            _ => {
                images.sort_by(|a, b| {
                    (a.created_at(), &a.name, &a.image_id).cmp(&(
                        b.created_at(),
                        &b.name,
                        &b.image_id,
                    ))
                });
                Ok(images.pop().expect("more than one image"))
            }
        }
    }

    /// Images owned by this account with exactly this name.
    pub async fn find_own_images_by_name(&self, name: &str) -> Result<Vec<Image>, Ec2Error> {
        self.describe_images(&DescribeImagesRequest {
            owners: vec!["self".into()],
            filters: vec![Filter::new("name", [name])],
            ..Default::default()
        })
        .await
        .map(|v| {
            v.into_iter()
                .filter(|i| i.name.as_deref() == Some(name))
                .collect()
        })
    }

    /// CreateImage from an instance; returns the new AMI id (state `pending`).
    pub async fn create_image(&self, req: &CreateImageRequest) -> Result<String, Ec2Error> {
        const ACTION: &str = "CreateImage";
        let mut p = Params::new();
        p.set("InstanceId", &req.instance_id)
            .set("Name", &req.name)
            .opt("Description", req.description.as_ref());
        if req.no_reboot {
            p.flag("NoReboot", true);
        }
        p.block_devices(&req.block_device_mappings)
            .tag_specs(&[("image", &req.tags), ("snapshot", &req.snapshot_tags)]);
        // Not re-sent after an unanswered attempt: the repeat would fail with
        // InvalidAMIName.Duplicate and hide the id; the caller resolves it by name instead.
        let body = self.call(ACTION, &p, Idempotent::No).await?;
        image_id_of(ACTION, &body)
    }

    /// RegisterImage from snapshots; returns the AMI id.
    pub async fn register_image(&self, req: &RegisterImageRequest) -> Result<String, Ec2Error> {
        const ACTION: &str = "RegisterImage";
        let mut p = Params::new();
        p.set("Name", &req.name)
            .opt("Description", req.description.as_ref())
            .opt("Architecture", req.architecture.as_ref())
            .set("RootDeviceName", &req.root_device_name)
            .opt("VirtualizationType", req.virtualization_type.as_ref())
            .opt("EnaSupport", req.ena_support)
            .opt("BootMode", req.boot_mode.as_ref())
            .block_devices(&req.block_device_mappings)
            .tag_specs(&[("image", &req.tags)]);
        let body = self.call(ACTION, &p, Idempotent::No).await?;
        image_id_of(ACTION, &body)
    }

    /// CopyImage into this client's region; returns the new AMI id there.
    pub async fn copy_image(&self, req: &CopyImageRequest) -> Result<String, Ec2Error> {
        const ACTION: &str = "CopyImage";
        let mut p = Params::new();
        p.set("SourceRegion", &req.source_region)
            .set("SourceImageId", &req.source_image_id)
            .set("Name", &req.name)
            .opt("Description", req.description.as_ref())
            .opt("Encrypted", req.encrypted)
            .opt("KmsKeyId", req.kms_key_id.as_ref())
            .opt("ClientToken", req.client_token.as_ref());
        let idem = if req.client_token.is_some() {
            Idempotent::Yes
        } else {
            Idempotent::No
        };
        let body = self.call(ACTION, &p, idem).await?;
        image_id_of(ACTION, &body)
    }

    /// DeregisterImage. The snapshots stay (see [`Ec2Client::force_deregister`]).
    pub async fn deregister_image(&self, image_id: &str) -> Result<(), Ec2Error> {
        let mut p = Params::new();
        p.set("ImageId", image_id);
        self.call("DeregisterImage", &p, Idempotent::Yes).await?;
        Ok(())
    }

    /// Packer's `force_deregister` (+ `force_delete_snapshot`): deregisters every AMI of
    /// this account named `name`, then, if asked, deletes their snapshots. Already-gone
    /// images and snapshots count as done.
    pub async fn force_deregister(
        &self,
        name: &str,
        delete_snapshots: bool,
    ) -> Result<Vec<DeregisteredImage>, Ec2Error> {
        let mut out = Vec::new();
        for image in self.find_own_images_by_name(name).await? {
            match self.deregister_image(&image.image_id).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
            let mut deleted = Vec::new();
            if delete_snapshots {
                for snap in image.snapshot_ids() {
                    match self.delete_snapshot(&snap).await {
                        Ok(()) => deleted.push(snap),
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            out.push(DeregisteredImage {
                image_id: image.image_id,
                deleted_snapshots: deleted,
            });
        }
        Ok(out)
    }

    pub async fn add_launch_permissions(
        &self,
        image_id: &str,
        who: &LaunchPermissions,
    ) -> Result<(), Ec2Error> {
        self.modify_launch_permissions(image_id, who, "Add").await
    }

    pub async fn remove_launch_permissions(
        &self,
        image_id: &str,
        who: &LaunchPermissions,
    ) -> Result<(), Ec2Error> {
        self.modify_launch_permissions(image_id, who, "Remove")
            .await
    }

    async fn modify_launch_permissions(
        &self,
        image_id: &str,
        who: &LaunchPermissions,
        op: &str,
    ) -> Result<(), Ec2Error> {
        if who.is_empty() {
            return Ok(());
        }
        let mut p = Params::new();
        p.set("ImageId", image_id);
        let entries = who
            .user_ids
            .iter()
            .map(|v| ("UserId", v))
            .chain(who.groups.iter().map(|v| ("Group", v)))
            .chain(who.organization_arns.iter().map(|v| ("OrganizationArn", v)))
            .chain(
                who.organizational_unit_arns
                    .iter()
                    .map(|v| ("OrganizationalUnitArn", v)),
            );
        for (i, (field, value)) in entries.enumerate() {
            p.set(format!("LaunchPermission.{op}.{}.{field}", i + 1), value);
        }
        self.call("ModifyImageAttribute", &p, Idempotent::Yes)
            .await?;
        Ok(())
    }

    /// Who may launch the image (DescribeImageAttribute launchPermission).
    pub async fn describe_launch_permissions(
        &self,
        image_id: &str,
    ) -> Result<LaunchPermissions, Ec2Error> {
        const ACTION: &str = "DescribeImageAttribute";
        let mut p = Params::new();
        p.set("ImageId", image_id)
            .set("Attribute", "launchPermission");
        let body = self.call(ACTION, &p, Idempotent::Yes).await?;
        let doc = parse_doc(ACTION, &body)?;
        let mut out = LaunchPermissions::default();
        for item in doc.root_element().items("launchPermission") {
            if let Some(u) = item.text_of("userId") {
                out.user_ids.push(u);
            }
            if let Some(g) = item.text_of("group") {
                out.groups.push(g);
            }
            if let Some(o) = item.text_of("organizationArn") {
                out.organization_arns.push(o);
            }
            if let Some(o) = item.text_of("organizationalUnitArn") {
                out.organizational_unit_arns.push(o);
            }
        }
        Ok(out)
    }
}

fn image_id_of(action: &'static str, body: &str) -> Result<String, Ec2Error> {
    let doc = parse_doc(action, body)?;
    doc.root_element().req("imageId").map_err(malformed(action))
}

pub(crate) fn parse_image(n: Node<'_, '_>) -> Result<Image, String> {
    Ok(Image {
        image_id: n.req("imageId")?,
        name: n.text_of("name"),
        description: n.text_of("description"),
        state: ImageState::parse(&n.text_of("imageState").unwrap_or_default()),
        state_reason: parse_state_reason(n, "stateReason"),
        owner_id: n.text_of("imageOwnerId"),
        creation_date: n.text_of("creationDate"),
        architecture: n.text_of("architecture"),
        root_device_name: n.text_of("rootDeviceName"),
        root_device_type: n.text_of("rootDeviceType"),
        virtualization_type: n.text_of("virtualizationType"),
        ena_support: n.bool_of("enaSupport"),
        public: n.bool_of("isPublic"),
        block_device_mappings: parse_block_devices(n),
        tags: n.tags(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, name: &str, date: Option<&str>) -> Image {
        Image {
            image_id: id.into(),
            name: Some(name.into()),
            description: None,
            state: ImageState::Available,
            state_reason: None,
            owner_id: None,
            creation_date: date.map(Into::into),
            architecture: None,
            root_device_name: None,
            root_device_type: None,
            virtualization_type: None,
            ena_support: None,
            public: None,
            block_device_mappings: vec![],
            tags: Tags::new(),
        }
    }

    #[test]
    fn newest_ordering() {
        let mut v = [
            img("ami-3", "b", Some("2024-01-02T00:00:00.000Z")),
            img("ami-1", "z", Some("2023-12-31T23:59:59.999Z")),
            img("ami-2", "a", Some("2024-01-02T00:00:00Z")),
            img("ami-4", "zz", None),
        ];
        v.sort_by(|a, b| {
            (a.created_at(), &a.name, &a.image_id).cmp(&(b.created_at(), &b.name, &b.image_id))
        });
        assert_eq!(
            v.last().unwrap().image_id,
            "ami-3",
            "same date: name 'b' > 'a'"
        );
        assert_eq!(v.first().unwrap().image_id, "ami-4", "undated sorts first");
    }

    #[test]
    fn filter_display() {
        let f = SourceImageFilter {
            filters: vec![
                Filter::new("name", ["ubuntu/*"]),
                Filter::new("root-device-type", ["ebs"]),
            ],
            owners: vec!["099720109477".into()],
            most_recent: true,
        };
        assert_eq!(
            f.to_string(),
            "{name=ubuntu/*, root-device-type=ebs} owners [099720109477]"
        );
    }
}
