//! EC2 Query parameters: the flattened `Name.N.Field` form of lists and structures, and the
//! form-encoded body they become.

use crate::model::{BlockDeviceMapping, Filter, Tags};
use crate::sign::uri_encode;

/// `application/x-www-form-urlencoded`: RFC 3986 unreserved characters kept, space as `+`,
/// everything else `%XX`.
fn form_encode(s: &str) -> String {
    uri_encode(s).replace("%20", "+")
}

pub(crate) const EC2_API_VERSION: &str = "2016-11-15";

/// Parameters of one call, in insertion order (the signer sorts nothing in the body).
#[derive(Debug, Default, Clone)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub fn new() -> Self {
        Params::default()
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.push((key.into(), value.into()));
        self
    }

    pub fn opt<V: ToString>(&mut self, key: &str, value: Option<V>) -> &mut Self {
        if let Some(v) = value {
            self.set(key, v.to_string());
        }
        self
    }

    pub fn flag(&mut self, key: &str, value: bool) -> &mut Self {
        self.set(key, if value { "true" } else { "false" })
    }

    /// `Prefix.1=a&Prefix.2=b`.
    pub fn list<S: AsRef<str>>(&mut self, prefix: &str, values: &[S]) -> &mut Self {
        for (i, v) in values.iter().enumerate() {
            self.set(format!("{prefix}.{}", i + 1), v.as_ref());
        }
        self
    }

    /// `Filter.N.Name` / `Filter.N.Value.M`.
    pub fn filters(&mut self, filters: &[Filter]) -> &mut Self {
        for (i, f) in filters.iter().enumerate() {
            let n = i + 1;
            self.set(format!("Filter.{n}.Name"), &f.name);
            for (j, v) in f.values.iter().enumerate() {
                self.set(format!("Filter.{n}.Value.{}", j + 1), v);
            }
        }
        self
    }

    /// `Prefix.N.Key` / `Prefix.N.Value` (CreateTags uses `Tag`).
    pub fn tags(&mut self, prefix: &str, tags: &Tags) -> &mut Self {
        for (i, (k, v)) in tags.iter().enumerate() {
            self.set(format!("{prefix}.{}.Key", i + 1), k);
            self.set(format!("{prefix}.{}.Value", i + 1), v);
        }
        self
    }

    /// `TagSpecification.N.ResourceType` + `TagSpecification.N.Tag.M.*`, skipping empty sets
    /// (EC2 rejects a specification without tags).
    pub fn tag_specs(&mut self, specs: &[(&str, &Tags)]) -> &mut Self {
        let mut n = 0;
        for (resource_type, tags) in specs {
            if tags.is_empty() {
                continue;
            }
            n += 1;
            self.set(format!("TagSpecification.{n}.ResourceType"), *resource_type);
            self.tags(&format!("TagSpecification.{n}.Tag"), tags);
        }
        self
    }

    /// `BlockDeviceMapping.N.*`.
    pub fn block_devices(&mut self, mappings: &[BlockDeviceMapping]) -> &mut Self {
        for (i, m) in mappings.iter().enumerate() {
            let p = format!("BlockDeviceMapping.{}", i + 1);
            self.set(format!("{p}.DeviceName"), &m.device_name);
            self.opt(&format!("{p}.VirtualName"), m.virtual_name.as_ref());
            if m.no_device {
                self.set(format!("{p}.NoDevice"), "");
            }
            if let Some(ebs) = &m.ebs {
                let e = format!("{p}.Ebs");
                self.opt(&format!("{e}.SnapshotId"), ebs.snapshot_id.as_ref());
                self.opt(&format!("{e}.VolumeSize"), ebs.volume_size);
                self.opt(&format!("{e}.VolumeType"), ebs.volume_type.as_ref());
                self.opt(&format!("{e}.Iops"), ebs.iops);
                self.opt(&format!("{e}.Throughput"), ebs.throughput);
                self.opt(
                    &format!("{e}.DeleteOnTermination"),
                    ebs.delete_on_termination,
                );
                self.opt(&format!("{e}.Encrypted"), ebs.encrypted);
                self.opt(&format!("{e}.KmsKeyId"), ebs.kms_key_id.as_ref());
            }
        }
        self
    }

    /// The POST body: `Action`, `Version`, then the parameters, form-encoded the way the
    /// AWS SDKs do it (space as `+`). The bytes are signed as they are, so any valid
    /// encoding satisfies AWS; this one also satisfies verifiers that re-encode the parsed
    /// form before checking (moto does).
    pub fn body(&self, action: &str, version: &str) -> String {
        let mut out = format!(
            "Action={}&Version={}",
            form_encode(action),
            form_encode(version)
        );
        for (k, v) in &self.0 {
            out.push('&');
            out.push_str(&form_encode(k));
            out.push('=');
            out.push_str(&form_encode(v));
        }
        out
    }

    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EbsBlockDevice;

    #[test]
    fn flattening() {
        let mut tags = Tags::new();
        tags.insert("kiln:run".into(), "u-1".into());
        tags.insert("Name".into(), "a b".into());
        let mut p = Params::new();
        p.list("InstanceId", &["i-1", "i-2"])
            .filters(&[Filter::new("tag:kiln:run", ["u-1", "u-2"])])
            .tag_specs(&[("instance", &tags), ("volume", &Tags::new())])
            .block_devices(&[BlockDeviceMapping {
                device_name: "/dev/sda1".into(),
                ebs: Some(EbsBlockDevice {
                    volume_size: Some(20),
                    delete_on_termination: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            }]);
        assert_eq!(p.get("InstanceId.2"), Some("i-2"));
        assert_eq!(p.get("Filter.1.Name"), Some("tag:kiln:run"));
        assert_eq!(p.get("Filter.1.Value.2"), Some("u-2"));
        assert_eq!(p.get("TagSpecification.1.ResourceType"), Some("instance"));
        // BTreeMap order: "Name" < "kiln:run"
        assert_eq!(p.get("TagSpecification.1.Tag.1.Key"), Some("Name"));
        assert_eq!(p.get("TagSpecification.1.Tag.2.Value"), Some("u-1"));
        assert_eq!(p.get("TagSpecification.2.ResourceType"), None);
        assert_eq!(p.get("BlockDeviceMapping.1.Ebs.VolumeSize"), Some("20"));
        assert_eq!(
            p.get("BlockDeviceMapping.1.Ebs.DeleteOnTermination"),
            Some("true")
        );
        let body = p.body("DescribeInstances", EC2_API_VERSION);
        assert!(body.starts_with("Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-1"));
        assert!(body.contains("Filter.1.Name=tag%3Akiln%3Arun"));
        assert!(body.contains("Value=a+b"));
        assert_eq!(form_encode("a b+c&d=é~"), "a+b%2Bc%26d%3D%C3%A9~");
    }
}
