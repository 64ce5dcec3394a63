//! Terraform state documents (format version 4) for the read-only HTTP state backend.
//!
//! `GET /terraform/<bucket>/<channel>` answers a state with no resources whose outputs describe
//! the channel's version, so a stock Terraform reads it with the built-in
//! `terraform_remote_state` data source (`backend = "http"`) and no provider:
//!
//! | output | type | value |
//! |---|---|---|
//! | `artifacts` | map(map(string)) | platform → region → external id (when two builds share a platform and region, the first build by name wins; see `builds`) |
//! | `builds` | map(map(map(string))) | build → platform → region → external id |
//! | `fingerprint`, `bucket`, `channel` | string | the version and where it was read from |
//! | `revoked` | bool | the version (or an ancestor, inherited) is revoked now |
//! | `revoked_reason`, `revoked_at` | string | empty when not revoked |
//! | `revocation_scheduled_at` | string | a future revocation's time, else empty |
//! | `created_at` | string | RFC 3339 |
//!
//! `serial` is the channel's move counter and `lineage` is derived from bucket and channel, so
//! Terraform sees one lineage whose serial grows as the channel moves.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::model::{ChannelInfo, VersionDetail};

/// The `terraform_version` written into state documents. Older than every Terraform that
/// reads them, so none refuses the state as "created by a newer Terraform".
pub const TERRAFORM_VERSION: &str = "1.0.3";

/// A stable UUID-shaped lineage for a bucket's channel.
pub fn lineage(bucket: &str, channel: &str) -> String {
    let d = Sha256::digest(format!("kiln-registry\0{bucket}\0{channel}").as_bytes());
    let h = hex::encode(&d[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn output(value: Value, ty: Value) -> Value {
    json!({ "value": value, "type": ty })
}

/// The state document for the version a channel points at.
pub fn state_document(version: &VersionDetail, channel: &ChannelInfo) -> Value {
    let mut artifacts: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut builds: BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>> = BTreeMap::new();
    // Builds come sorted by name: the first one to claim a platform/region keeps it.
    for b in &version.builds {
        for a in &b.artifacts {
            artifacts
                .entry(a.platform.to_string())
                .or_default()
                .entry(a.region.clone())
                .or_insert_with(|| a.external_id.clone());
            builds
                .entry(b.name.clone())
                .or_default()
                .entry(a.platform.to_string())
                .or_default()
                .entry(a.region.clone())
                .or_insert_with(|| a.external_id.clone());
        }
    }
    let (revoked, reason, revoked_at, scheduled) = match &version.revocation {
        Some(r) if r.effective => (
            true,
            match &r.inherited_from {
                Some(k) => format!("{} (inherited from {k})", r.reason),
                None => r.reason.clone(),
            },
            r.effective_at.to_rfc3339(),
            String::new(),
        ),
        Some(r) => (
            false,
            String::new(),
            String::new(),
            r.effective_at.to_rfc3339(),
        ),
        None => (false, String::new(), String::new(), String::new()),
    };
    let string = || json!("string");
    let outputs = json!({
        "artifacts": output(json!(artifacts), json!(["map", ["map", "string"]])),
        "builds": output(json!(builds), json!(["map", ["map", ["map", "string"]]])),
        "fingerprint": output(json!(version.fingerprint), string()),
        "bucket": output(json!(version.bucket), string()),
        "channel": output(json!(channel.name), string()),
        "revoked": output(json!(revoked), json!("bool")),
        "revoked_reason": output(json!(reason), string()),
        "revoked_at": output(json!(revoked_at), string()),
        "revocation_scheduled_at": output(json!(scheduled), string()),
        "created_at": output(json!(version.created_at.to_rfc3339()), string()),
    });
    json!({
        "version": 4,
        "terraform_version": TERRAFORM_VERSION,
        "serial": channel.serial,
        "lineage": lineage(&version.bucket, &channel.name),
        "outputs": outputs,
        "resources": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_is_stable_and_uuid_shaped() {
        let a = lineage("web", "prod");
        assert_eq!(a, lineage("web", "prod"));
        assert_ne!(a, lineage("web", "dev"));
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }
}
