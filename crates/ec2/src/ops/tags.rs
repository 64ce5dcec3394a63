//! CreateTags / DeleteTags on any resource ids (AMIs, snapshots, instances, ...).

use crate::Ec2Client;
use crate::client::Idempotent;
use crate::error::Ec2Error;
use crate::model::Tags;
use crate::params::Params;

impl Ec2Client {
    /// Adds (or overwrites) tags on every resource in `resource_ids`.
    pub async fn create_tags(&self, resource_ids: &[String], tags: &Tags) -> Result<(), Ec2Error> {
        if resource_ids.is_empty() || tags.is_empty() {
            return Ok(());
        }
        let mut p = Params::new();
        p.list("ResourceId", resource_ids).tags("Tag", tags);
        self.call("CreateTags", &p, Idempotent::Yes).await?;
        Ok(())
    }

    /// Removes the tag keys from every resource in `resource_ids`.
    pub async fn delete_tags(
        &self,
        resource_ids: &[String],
        keys: &[String],
    ) -> Result<(), Ec2Error> {
        if resource_ids.is_empty() || keys.is_empty() {
            return Ok(());
        }
        let mut p = Params::new();
        p.list("ResourceId", resource_ids);
        for (i, k) in keys.iter().enumerate() {
            p.set(format!("Tag.{}.Key", i + 1), k);
        }
        self.call("DeleteTags", &p, Idempotent::Yes).await?;
        Ok(())
    }
}
