//! Publishing one disk image to Glance: the host primitive under the `openstack_image`
//! post-processor (`ctx.openstack_publish`).
//!
//! resolve the cloud (options > `OS_*` > clouds.yaml) → connect → create (on the
//! cleanup stack before the request leaves) → [list the old images of that name] →
//! upload, or stage + `glance-direct` import → wait for `active` → check Glance's hash
//! against kiln's own of the bytes sent (a mismatch deletes the image at once) →
//! [protect] → [delete the old images] → keep the new one as the artifact.
//!
//! Until the last step any failure, timeout or Ctrl-C leaves the new image on the
//! cleanup stack, which deletes it; old images are deleted only once the new one is
//! active and verified, so a failed build never changes what the name points at.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_openstack::{
    CloudConfig, CloudOptions, ConfigError, Environment, Error, Image, NewImage, ProgressFn,
    WaitOptions,
};

use super::{CallError, Cloud};
use crate::caps::{Denied, Scope, ScopeError};
use crate::context::BuildRt;
use crate::ui::human_bytes;

/// How the data gets to Glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMethod {
    /// `PUT /v2/images/{id}/file` (what `openstack image create --file` does).
    Upload,
    /// The interoperable import: `PUT /stage` + `POST /import` with `glance-direct`;
    /// refused before anything is created when the cloud does not offer it.
    GlanceDirect,
    /// `glance-direct` where the cloud advertises it, else a direct upload.
    Auto,
}

impl std::str::FromStr for ImportMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "upload" => Ok(ImportMethod::Upload),
            "glance-direct" => Ok(ImportMethod::GlanceDirect),
            "auto" => Ok(ImportMethod::Auto),
            other => Err(format!(
                "import_method {other:?}: use \"upload\", \"glance-direct\" or \"auto\""
            )),
        }
    }
}

/// What to publish, and where.
pub struct Request {
    /// The file on the host, already opened once through the caller's `read` grant.
    pub file: PathBuf,
    /// The file as the script named it, for messages.
    pub file_label: String,
    /// What `POST /v2/images` sends (`protected` is applied only once the image is
    /// verified, so a failed upload is never protected against its own cleanup).
    pub image: NewImage,
    pub protected: bool,
    pub replace_existing: bool,
    pub wait: WaitOptions,
    pub import: ImportMethod,
    pub cloud: CloudOptions,
}

/// The published image, for the artifact and the manifest (no secret in here).
#[derive(Debug, Clone)]
pub struct Published {
    /// The cloud as grants name it.
    pub cloud: String,
    pub endpoint: String,
    pub image: Image,
    /// `upload` or `glance-direct`.
    pub import_method: &'static str,
    /// The algorithm kiln compared (`sha512`, or `md5` where Glance hashes otherwise).
    pub verified_with: String,
    /// kiln's own sha512 of the bytes it sent.
    pub sha512: String,
    pub bytes: u64,
    /// Ids of the images of the same name that were deleted (`replace_existing`).
    pub replaced: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Denied(Denied),
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Cloud(Error),
    #[error("{source}; kiln deleted image {id}")]
    Discarded { id: String, source: Error },
    #[error(
        "{source}; deleting image {id} failed too ({delete}): delete it with `openstack image delete {id}`"
    )]
    DiscardFailed {
        id: String,
        source: Error,
        delete: String,
    },
    #[error(
        "image {new} is active, but the old image {old} named {name:?} could not be deleted: {source}"
    )]
    Replace {
        new: String,
        old: String,
        name: String,
        source: Error,
    },
    #[error("cannot read {path}: {source}")]
    Local {
        path: String,
        source: std::io::Error,
    },
}

impl From<CallError> for PublishError {
    fn from(e: CallError) -> Self {
        match e {
            ScopeError::Denied(d) => PublishError::Denied(d),
            ScopeError::Failed(e) => PublishError::Cloud(e),
        }
    }
}

/// Publishes `req.file` for the build `rt` through `scope`'s `openstack` grant.
pub async fn publish(rt: &BuildRt, scope: &Scope, req: Request) -> Result<Published, PublishError> {
    // ./clouds.yaml is looked up in the project, the other places as the CLI does
    let env = Environment::from_process().cwd(rt.plan.project.path());
    let cfg = CloudConfig::resolve(&req.cloud, &env)?;
    let cloud = Cloud::connect(scope, &cfg).await?;
    let say = |m: &str| rt.ui.message(&rt.label, m);
    say(&format!(
        "Glance at {} ({})",
        cloud.endpoint(),
        cfg.describe()
    ));

    let mut offered = Vec::new();
    if req.import == ImportMethod::GlanceDirect {
        offered = cloud.import_methods().await?;
        if !offered.iter().any(|m| m == "glance-direct") {
            return Err(PublishError::Cloud(Error::ImportNotOffered {
                method: "glance-direct".into(),
                offered: if offered.is_empty() {
                    "none".into()
                } else {
                    offered.join(", ")
                },
            }));
        }
    }

    let name = req.image.name.clone();
    let (created, tracked) = cloud.create(&req.image, &rt.cleanup).await?;
    let id = created.image.id.clone();
    say(&format!(
        "Created image {id} ({name:?}, {})",
        req.image.disk_format
    ));

    // The old images of this name in the same project: the new image's owner, which
    // Glance sets, also without Keystone.
    let old: Vec<Image> = if req.replace_existing {
        let owner = created
            .image
            .owner
            .clone()
            .or_else(|| cloud.project_id().map(str::to_string));
        cloud
            .find_by_name(&name, owner.as_deref())
            .await?
            .into_iter()
            .filter(|i| i.id != id)
            .collect()
    } else {
        Vec::new()
    };

    let method = match req.import {
        ImportMethod::Upload => ImportMethod::Upload,
        ImportMethod::GlanceDirect => ImportMethod::GlanceDirect,
        ImportMethod::Auto if created.offers("glance-direct") => ImportMethod::GlanceDirect,
        ImportMethod::Auto => ImportMethod::Upload,
    };
    if method == ImportMethod::GlanceDirect && offered.is_empty() {
        offered = created.import_methods.clone();
    }
    let bytes = std::fs::metadata(&req.file)
        .map_err(|source| PublishError::Local {
            path: req.file_label.clone(),
            source,
        })?
        .len();
    let verb = if method == ImportMethod::Upload {
        "Uploading"
    } else {
        "Staging"
    };
    say(&format!(
        "{verb} {} ({})...",
        req.file_label,
        human_bytes(bytes)
    ));
    let bar = Arc::new(rt.ui.progress(
        &rt.label,
        &format!("{verb} {} to Glance", req.file_label),
        bytes,
    ));
    let b = bar.clone();
    let progress: ProgressFn = Arc::new(move |p| b.set(p.sent));
    let report = match method {
        ImportMethod::GlanceDirect => {
            let r = cloud.stage(&id, &req.file, bytes, Some(progress)).await?;
            cloud.import_staged(&id, &offered).await?;
            r
        }
        _ => cloud.upload(&id, &req.file, bytes, Some(progress)).await?,
    };
    if let Ok(bar) = Arc::try_unwrap(bar) {
        bar.finish();
    }
    let secs = report.elapsed.as_secs_f64().max(0.001);
    #[allow(clippy::cast_precision_loss)] // a rate for display
    let rate = report.bytes as f64 / secs / f64::from(1u32 << 20);
    say(&format!(
        "Sent {} in {secs:.1}s ({rate:.1} MiB/s); waiting for image {id} to become active...",
        human_bytes(report.bytes)
    ));

    let img = cloud.wait_active(&id, req.wait).await?;
    let verified = match img.verify(&report) {
        Ok(v) => v,
        Err(source) => {
            // a corrupted image must not stay published, whatever --on-error says
            return Err(match tracked.discard().await {
                None => PublishError::Discarded { id, source },
                Some(delete) => PublishError::DiscardFailed { id, source, delete },
            });
        }
    };
    say(&format!(
        "Image {id} is active; Glance's {} matches kiln's of the {} bytes sent",
        verified.algo, report.bytes
    ));
    let img = if req.protected {
        cloud.protect(&id).await?
    } else {
        img
    };

    let mut replaced = Vec::new();
    for o in &old {
        cloud.delete(&o.id, true).await.map_err(|e| match e {
            ScopeError::Denied(d) => PublishError::Denied(d),
            ScopeError::Failed(source) => PublishError::Replace {
                new: id.clone(),
                old: o.id.clone(),
                name: name.clone(),
                source,
            },
        })?;
        say(&format!("Deleted the old image {} named {name:?}", o.id));
        replaced.push(o.id.clone());
    }
    tracked.keep();
    Ok(Published {
        cloud: cloud.name(),
        endpoint: cloud.endpoint().to_string(),
        image: img,
        import_method: if method == ImportMethod::GlanceDirect {
            "glance-direct"
        } else {
            "upload"
        },
        verified_with: verified.algo,
        sha512: report.sha512,
        bytes: report.bytes,
        replaced,
    })
}
