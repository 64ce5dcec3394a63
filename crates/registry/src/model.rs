//! The data model: bucket → version → build → artifacts, with channels, revocations and
//! ancestry. Input types (what a recorder fills) and the read views the store returns; all
//! serialize to the JSON the HTTP API and `--json` print.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::RegistryError;
use crate::fingerprint::Fingerprint;
use crate::limits;
use crate::provenance::{ParentRef, Provenance};
use crate::timestamp::Timestamp;

/// The channel kiln moves to every version that becomes complete.
pub const LATEST: &str = "latest";

/// Where an artifact lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Qemu,
    Vagrant,
    Aws,
    Oci,
    Openstack,
}

impl Platform {
    pub const ALL: [Platform; 5] = [
        Platform::Qemu,
        Platform::Vagrant,
        Platform::Aws,
        Platform::Oci,
        Platform::Openstack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Qemu => "qemu",
            Platform::Vagrant => "vagrant",
            Platform::Aws => "aws",
            Platform::Oci => "oci",
            Platform::Openstack => "openstack",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Platform {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                RegistryError::invalid(
                    "platform",
                    format!(
                        "{} is not one of qemu, vagrant, aws, oci, openstack",
                        limits::shown(s)
                    ),
                )
            })
    }
}

/// How a build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    Succeeded,
    Failed,
    Cancelled,
}

impl BuildStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Succeeded => "succeeded",
            BuildStatus::Failed => "failed",
            BuildStatus::Cancelled => "cancelled",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "succeeded" => Some(BuildStatus::Succeeded),
            "failed" => Some(BuildStatus::Failed),
            "cancelled" => Some(BuildStatus::Cancelled),
            _ => None,
        }
    }
}

impl fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing a build produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub platform: Platform,
    /// A cloud region, a registry host, or `local` for files on the build machine.
    pub region: String,
    /// An AMI id, an OCI digest, an image id, or a file path.
    pub external_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Artifact {
    /// An artifact with only the required fields.
    pub fn new(platform: Platform, region: &str, external_id: &str) -> Self {
        Artifact {
            platform,
            region: region.to_string(),
            external_id: external_id.to_string(),
            sha256: None,
            size: None,
            path: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), RegistryError> {
        limits::check_region(&self.region)?;
        if self.external_id.is_empty() {
            return Err(RegistryError::invalid("external_id", "must not be empty"));
        }
        limits::check_text(
            "external_id",
            &self.external_id,
            limits::MAX_EXTERNAL_ID,
            false,
        )?;
        if let Some(d) = &self.sha256 {
            limits::check_sha256("artifact sha256", d)?;
        }
        if let Some(p) = &self.path {
            limits::check_text("artifact path", p, limits::MAX_PATH, false)?;
        }
        if let Some(size) = self.size
            && i64::try_from(size).is_err()
        {
            return Err(RegistryError::invalid("artifact size", "larger than 2^63"));
        }
        Ok(())
    }
}

/// One build of a version, as the recorder reports it at the end of the build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildRecord {
    /// The source's build name (`web`, `web.aws`).
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub status: BuildStatus,
    /// Why the build failed (cut to [`limits::MAX_ERROR_TEXT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
}

/// What the runtime records at the end of each build: `Store::record` input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordBuild {
    /// The image lineage; default the build name.
    pub bucket: String,
    /// Replaces the bucket's description when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// One per run ([`Fingerprint::from_env_or_generate`]); shared by every build of the run.
    pub fingerprint: Fingerprint,
    /// Every build this version is made of (for `kiln build --only a`, still all builds of the
    /// bucket in the plan), so the version is complete only when each one has succeeded, even
    /// when they are recorded by different processes. `build.name` is added if missing.
    #[serde(default)]
    pub expected_builds: Vec<String>,
    pub build: BuildRecord,
    pub provenance: Provenance,
}

impl RecordBuild {
    /// Checks every name rule and limit; `Store::record` calls it before touching storage.
    pub fn validate(&self) -> Result<(), RegistryError> {
        limits::check_name("bucket", &self.bucket)?;
        if let Some(d) = &self.description {
            limits::check_text("description", d, limits::MAX_DESCRIPTION, true)?;
        }
        limits::check_name("build name", &self.build.name)?;
        if self.expected_builds.len() > limits::MAX_BUILDS {
            return Err(RegistryError::invalid(
                "expected_builds",
                format!("more than {} builds", limits::MAX_BUILDS),
            ));
        }
        for b in &self.expected_builds {
            limits::check_name("expected build name", b)?;
        }
        if self.build.labels.len() > limits::MAX_LABELS {
            return Err(RegistryError::invalid(
                "labels",
                format!(
                    "{} labels, more than {}",
                    self.build.labels.len(),
                    limits::MAX_LABELS
                ),
            ));
        }
        for (k, v) in &self.build.labels {
            limits::check_label_key(k)?;
            limits::check_text(&format!("label {k:?}"), v, limits::MAX_LABEL_VALUE, false)?;
        }
        if self.build.artifacts.len() > limits::MAX_ARTIFACTS {
            return Err(RegistryError::invalid(
                "artifacts",
                format!("more than {} artifacts", limits::MAX_ARTIFACTS),
            ));
        }
        for a in &self.build.artifacts {
            a.validate()?;
        }
        self.provenance.validate()?;
        Ok(())
    }

    /// The expected builds with `build.name` added, sorted and deduplicated.
    pub(crate) fn all_expected(&self) -> Vec<String> {
        let mut all: Vec<String> = self.expected_builds.clone();
        all.push(self.build.name.clone());
        all.sort();
        all.dedup();
        all
    }
}

/// What `Store::record` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub bucket: String,
    pub fingerprint: String,
    pub build: String,
    pub status: BuildStatus,
    /// Every expected build of the version has succeeded.
    pub version_complete: bool,
    /// Expected builds without a successful record yet.
    pub missing_builds: Vec<String>,
    /// The `latest` channel now points at this version (it just became complete).
    pub latest_moved: bool,
}

impl Recorded {
    /// The line `kiln build` prints after recording.
    pub fn summary(&self) -> String {
        if self.version_complete {
            format!(
                "registry: recorded {}/{} build {}; version complete{}. Promote it with: kiln artifacts promote {} {} --channel prod",
                self.bucket,
                self.fingerprint,
                self.build,
                if self.latest_moved {
                    ", now `latest`"
                } else {
                    ""
                },
                self.bucket,
                self.fingerprint
            )
        } else {
            format!(
                "registry: recorded {}/{} build {} ({}); version incomplete, waiting for: {}",
                self.bucket,
                self.fingerprint,
                self.build,
                self.status,
                self.missing_builds.join(", ")
            )
        }
    }
}

/// Selects a version of a bucket: a fingerprint (or a unique prefix of at least 4
/// characters) or the version a channel points at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VersionRef {
    Fingerprint(String),
    Channel(String),
}

impl VersionRef {
    /// `@prod` is a channel, anything else a fingerprint (prefix).
    pub fn parse(s: &str) -> Self {
        match s.strip_prefix('@') {
            Some(c) => VersionRef::Channel(c.to_string()),
            None => VersionRef::Fingerprint(s.to_string()),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), RegistryError> {
        match self {
            VersionRef::Fingerprint(f) => limits::check_name("fingerprint", f),
            VersionRef::Channel(c) => limits::check_name("channel", c),
        }
    }
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionRef::Fingerprint(s) => f.write_str(s),
            VersionRef::Channel(c) => write!(f, "@{c}"),
        }
    }
}

/// A version named by bucket and fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VersionKey {
    pub bucket: String,
    pub fingerprint: String,
}

impl fmt::Display for VersionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.bucket, self.fingerprint)
    }
}

/// A channel and the version it points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelPointer {
    pub name: String,
    pub fingerprint: String,
}

/// One bucket in `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSummary {
    pub name: String,
    pub description: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub version_count: i64,
    pub channels: Vec<ChannelPointer>,
}

/// Whether a version is revoked, and by what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationStatus {
    pub reason: String,
    pub effective_at: Timestamp,
    /// `effective_at` has passed: the version must not be used. When false the revocation is
    /// scheduled.
    pub effective: bool,
    /// The ancestor whose inheritable revocation applies; `None` for the version's own.
    pub inherited_from: Option<VersionKey>,
    pub revoked_at: Timestamp,
    pub revoked_by: String,
}

/// A build's name and outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSummary {
    pub name: String,
    pub status: BuildStatus,
}

/// One version in a `list` page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionSummary {
    pub fingerprint: String,
    pub created_at: Timestamp,
    pub completed_at: Option<Timestamp>,
    pub complete: bool,
    pub builds: Vec<BuildSummary>,
    pub artifact_count: i64,
    pub channels: Vec<String>,
    pub revocation: Option<RevocationStatus>,
}

/// A page of versions, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionPage {
    pub bucket: String,
    pub description: String,
    pub version_count: i64,
    pub versions: Vec<VersionSummary>,
    /// Pass as `before` to get the next (older) page.
    pub next_before: Option<String>,
}

/// A recorded build with its artifacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    pub name: String,
    pub status: BuildStatus,
    pub labels: BTreeMap<String, String>,
    pub error: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub recorded_at: Timestamp,
    pub artifacts: Vec<Artifact>,
    /// The sha256 of the provenance document this build was recorded with.
    pub provenance_digest: Option<String>,
}

/// A provenance document of a version and the builds recorded with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvenanceRecord {
    pub digest: String,
    pub builds: Vec<String>,
    pub document: Provenance,
}

/// Everything about one version (`show`, channel lookup).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionDetail {
    pub bucket: String,
    pub fingerprint: String,
    pub created_at: Timestamp,
    pub completed_at: Option<Timestamp>,
    pub complete: bool,
    pub expected_builds: Vec<String>,
    pub missing_builds: Vec<String>,
    pub builds: Vec<Build>,
    pub channels: Vec<String>,
    pub revocation: Option<RevocationStatus>,
    pub parents: Vec<ParentLink>,
    pub provenance: Vec<ProvenanceRecord>,
}

impl VersionDetail {
    pub fn key(&self) -> VersionKey {
        VersionKey {
            bucket: self.bucket.clone(),
            fingerprint: self.fingerprint.clone(),
        }
    }

    /// Is the version revoked now (own or inherited)?
    pub fn is_revoked(&self) -> bool {
        self.revocation.as_ref().is_some_and(|r| r.effective)
    }
}

/// A channel of a bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    pub name: String,
    pub fingerprint: String,
    pub updated_at: Timestamp,
    /// Increases each time the channel moves (the Terraform state serial).
    pub serial: i64,
    /// `latest`, moved by kiln.
    pub managed: bool,
    pub revocation: Option<RevocationStatus>,
}

/// One move of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelMove {
    pub channel: String,
    pub fingerprint: String,
    pub previous: Option<String>,
    pub at: Timestamp,
    pub actor: String,
}

/// A bucket's channels and their promotion history (newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelsView {
    pub bucket: String,
    pub channels: Vec<ChannelInfo>,
    pub history: Vec<ChannelMove>,
}

/// What `promote` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub bucket: String,
    pub channel: String,
    pub fingerprint: String,
    pub previous: Option<String>,
    /// False when the channel already pointed at the version.
    pub changed: bool,
    pub at: Timestamp,
    /// A revocation of the version that takes effect later.
    pub scheduled_revocation: Option<RevocationStatus>,
}

/// A revocation as stored (own revocations only; lifted ones are kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    pub bucket: String,
    pub fingerprint: String,
    pub reason: String,
    pub effective_at: Timestamp,
    pub inherit: bool,
    pub revoked_at: Timestamp,
    pub revoked_by: String,
    pub lifted_at: Option<Timestamp>,
    pub lifted_by: Option<String>,
}

/// A revocation request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub reason: String,
    /// When it takes effect; now when absent.
    #[serde(default)]
    pub at: Option<Timestamp>,
    /// Every descendant (through parent links) is revoked too.
    #[serde(default)]
    pub inherit: bool,
}

/// What `revoke` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub revocation: RevocationRecord,
    /// Versions that inherit the revocation (empty unless `inherit`).
    pub descendants: Vec<VersionKey>,
}

/// What `restore` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    pub revocation: RevocationRecord,
}

/// Is a child still built from what its parent channel points at?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Freshness {
    /// The parent channel still points at the parent version.
    UpToDate,
    /// The parent channel moved (`current`), or was removed (`None`).
    OutOfDate { current: Option<String> },
    /// The child named the parent by fingerprint, not through a channel.
    Pinned,
}

/// A parent of a version (the source image a build started from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    /// The child's build that used the parent.
    pub build: String,
    pub parent: VersionKey,
    pub channel: Option<String>,
    pub platform: Platform,
    pub region: String,
    pub external_id: String,
    pub freshness: Freshness,
    pub revocation: Option<RevocationStatus>,
}

/// A child of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildLink {
    pub child: VersionKey,
    pub build: String,
    pub channel: Option<String>,
    pub platform: Platform,
    pub region: String,
    pub external_id: String,
    pub freshness: Freshness,
    pub complete: bool,
    pub revocation: Option<RevocationStatus>,
}

/// Where a version comes from and what was built from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestry {
    pub version: VersionKey,
    pub revocation: Option<RevocationStatus>,
    /// Parents, grandparents, … (depth 1 = direct parent).
    pub ancestors: Vec<AncestorLink>,
    pub children: Vec<ChildLink>,
}

/// An ancestor at some depth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AncestorLink {
    pub depth: u32,
    pub child: VersionKey,
    #[serde(flatten)]
    pub link: ParentLink,
}

/// What `registry_artifact(#{ bucket, channel, platform, region })` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactQuery {
    pub bucket: String,
    /// Default `latest`.
    #[serde(default)]
    pub channel: Option<String>,
    pub platform: Platform,
    pub region: String,
    /// Disambiguates when several builds of the version have an artifact there.
    #[serde(default)]
    pub build: Option<String>,
}

/// The artifact a child build starts from, and the parent reference to record with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedArtifact {
    pub artifact: Artifact,
    pub build: String,
    /// Put this in the child's `Provenance::parent`.
    pub parent: ParentRef,
    /// A revocation scheduled for later (an effective one fails the lookup).
    pub scheduled_revocation: Option<RevocationStatus>,
}

/// A bearer token's public record (the secret is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub created_at: Timestamp,
}
