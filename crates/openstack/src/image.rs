//! Glance image types: what to create, what Glance reports, how to patch it, and the check of
//! Glance's stored hash against the bytes kiln sent.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::{Value, json};

use crate::error::Error;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $what:literal, { $($var:ident => $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($var),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),*];
            /// The value Glance uses.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<$name, Error> {
                $(if s.eq_ignore_ascii_case($s) { return Ok($name::$var); })*
                let all: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                Err(Error::InvalidRequest(format!(
                    concat!("unknown ", $what, " {:?}; use one of {}"), s, all.join(", "))))
            }
        }
    };
}

string_enum!(
    /// Glance's `disk_format` (the Images API's list; a cloud may allow fewer).
    DiskFormat, "disk_format", {
        Qcow2 => "qcow2", Raw => "raw", Vmdk => "vmdk", Vdi => "vdi", Vhdx => "vhdx",
        Vhd => "vhd", Iso => "iso", Ploop => "ploop", Ami => "ami", Ari => "ari", Aki => "aki",
    }
);

impl DiskFormat {
    /// The `qemu-img -O` format that produces this disk format, if qemu-img writes it.
    pub fn qemu_img_format(self) -> Option<&'static str> {
        match self {
            DiskFormat::Qcow2 => Some("qcow2"),
            DiskFormat::Raw => Some("raw"),
            DiskFormat::Vmdk => Some("vmdk"),
            DiskFormat::Vdi => Some("vdi"),
            DiskFormat::Vhdx => Some("vhdx"),
            DiskFormat::Vhd => Some("vpc"),
            _ => None,
        }
    }

    /// The disk format of a `qemu-img info` format name (`vpc` is Glance's `vhd`).
    pub fn from_qemu_img_format(f: &str) -> Option<DiskFormat> {
        DiskFormat::ALL
            .iter()
            .copied()
            .find(|d| d.qemu_img_format() == Some(f))
    }
}

string_enum!(
    /// Glance's `container_format`; `bare` for disk images.
    ContainerFormat, "container_format", {
        Bare => "bare", Ovf => "ovf", Ova => "ova", Ami => "ami", Ari => "ari", Aki => "aki",
        Docker => "docker", Compressed => "compressed",
    }
);

string_enum!(
    /// Who can see the image.
    Visibility, "visibility", {
        Private => "private", Shared => "shared", Community => "community", Public => "public",
    }
);

/// An image's lifecycle state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageStatus {
    Queued,
    Saving,
    /// Data staged for an import (`/stage` done).
    Uploading,
    Importing,
    Active,
    Killed,
    Deleted,
    PendingDelete,
    Deactivated,
    Other(String),
}

impl ImageStatus {
    pub fn parse(s: &str) -> ImageStatus {
        match s {
            "queued" => ImageStatus::Queued,
            "saving" => ImageStatus::Saving,
            "uploading" => ImageStatus::Uploading,
            "importing" => ImageStatus::Importing,
            "active" => ImageStatus::Active,
            "killed" => ImageStatus::Killed,
            "deleted" => ImageStatus::Deleted,
            "pending_delete" => ImageStatus::PendingDelete,
            "deactivated" => ImageStatus::Deactivated,
            other => ImageStatus::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ImageStatus::Queued => "queued",
            ImageStatus::Saving => "saving",
            ImageStatus::Uploading => "uploading",
            ImageStatus::Importing => "importing",
            ImageStatus::Active => "active",
            ImageStatus::Killed => "killed",
            ImageStatus::Deleted => "deleted",
            ImageStatus::PendingDelete => "pending_delete",
            ImageStatus::Deactivated => "deactivated",
            ImageStatus::Other(s) => s,
        }
    }

    /// States an image does not come back from on its own.
    pub fn is_failed(&self) -> bool {
        matches!(
            self,
            ImageStatus::Killed
                | ImageStatus::Deleted
                | ImageStatus::PendingDelete
                | ImageStatus::Deactivated
        )
    }
}

impl fmt::Display for ImageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Attributes Glance manages itself: they cannot be set as extra properties.
const RESERVED: &[&str] = &[
    "id",
    "name",
    "status",
    "disk_format",
    "container_format",
    "visibility",
    "min_disk",
    "min_ram",
    "protected",
    "tags",
    "owner",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "created_at",
    "updated_at",
    "locations",
    "direct_url",
    "self",
    "file",
    "schema",
    "os_hidden",
    "stores",
];

/// What `create` sends (`POST /v2/images`).
#[derive(Clone, Debug)]
pub struct NewImage {
    pub name: String,
    pub disk_format: DiskFormat,
    pub container_format: ContainerFormat,
    /// None: the cloud's default (usually `shared`).
    pub visibility: Option<Visibility>,
    /// GiB.
    pub min_disk: Option<u64>,
    /// MiB.
    pub min_ram: Option<u64>,
    pub protected: bool,
    pub tags: Vec<String>,
    /// Extra properties (`os_distro`, `os_version`, `hw_disk_bus`, `hw_qemu_guest_agent`, …);
    /// Glance stores them as strings.
    pub properties: BTreeMap<String, String>,
}

impl NewImage {
    pub fn new(name: impl Into<String>, disk_format: DiskFormat) -> NewImage {
        NewImage {
            name: name.into(),
            disk_format,
            container_format: ContainerFormat::Bare,
            visibility: None,
            min_disk: None,
            min_ram: None,
            protected: false,
            tags: Vec::new(),
            properties: BTreeMap::new(),
        }
    }

    pub(crate) fn to_json(&self) -> Result<Value, Error> {
        if self.name.is_empty() || self.name.len() > 255 {
            return Err(Error::InvalidRequest(
                "an image name must be 1 to 255 characters".into(),
            ));
        }
        let mut m = serde_json::Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("disk_format".into(), json!(self.disk_format.as_str()));
        m.insert(
            "container_format".into(),
            json!(self.container_format.as_str()),
        );
        if let Some(v) = self.visibility {
            m.insert("visibility".into(), json!(v.as_str()));
        }
        if let Some(d) = self.min_disk {
            m.insert("min_disk".into(), json!(d));
        }
        if let Some(r) = self.min_ram {
            m.insert("min_ram".into(), json!(r));
        }
        m.insert("protected".into(), json!(self.protected));
        for t in &self.tags {
            if t.is_empty() || t.len() > 255 {
                return Err(Error::InvalidRequest(format!(
                    "tag {t:?}: tags must be 1 to 255 characters"
                )));
            }
        }
        if !self.tags.is_empty() {
            m.insert("tags".into(), json!(self.tags));
        }
        for (k, v) in &self.properties {
            check_property_key(k)?;
            m.insert(k.clone(), json!(v));
        }
        Ok(Value::Object(m))
    }
}

fn check_property_key(k: &str) -> Result<(), Error> {
    if RESERVED.contains(&k) {
        return Err(Error::InvalidRequest(format!(
            "property {k:?} is an image attribute Glance manages, not an extra property"
        )));
    }
    if k.is_empty() || k.len() > 255 || k.starts_with("os_glance") {
        return Err(Error::InvalidRequest(format!(
            "property name {k:?} is not allowed (1-255 characters, not os_glance*)"
        )));
    }
    Ok(())
}

/// An image as Glance reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub id: String,
    pub name: Option<String>,
    pub status: ImageStatus,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub visibility: Option<String>,
    pub owner: Option<String>,
    pub protected: bool,
    /// Bytes stored.
    pub size: Option<u64>,
    /// Bytes of the virtual disk (from the qcow2/vmdk header), when Glance computed it.
    pub virtual_size: Option<u64>,
    /// MD5 of the stored data (legacy).
    pub checksum: Option<String>,
    /// `sha512` by default.
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
    pub min_disk: u64,
    pub min_ram: u64,
    pub tags: Vec<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    /// Every other attribute (extra properties), as strings; JSON values that are not strings
    /// are kept in their JSON text.
    pub properties: BTreeMap<String, String>,
}

impl Image {
    pub(crate) fn from_json(v: Value) -> Result<Image, Error> {
        let Value::Object(mut m) = v else {
            return Err(Error::InvalidResponse {
                what: "image".into(),
                detail: "not a JSON object".into(),
            });
        };
        let mut take_str = |k: &str| match m.remove(k) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let id = take_str("id").ok_or_else(|| Error::InvalidResponse {
            what: "image".into(),
            detail: "no id".into(),
        })?;
        let name = take_str("name");
        let status = ImageStatus::parse(&take_str("status").unwrap_or_default());
        let disk_format = take_str("disk_format");
        let container_format = take_str("container_format");
        let visibility = take_str("visibility");
        let owner = take_str("owner");
        let checksum = take_str("checksum");
        let os_hash_algo = take_str("os_hash_algo");
        let os_hash_value = take_str("os_hash_value");
        let created_at = take_str("created_at");
        let updated_at = take_str("updated_at");
        let num = |v: Option<Value>| v.and_then(|v| v.as_u64());
        let size = num(m.remove("size"));
        let virtual_size = num(m.remove("virtual_size"));
        let min_disk = num(m.remove("min_disk")).unwrap_or(0);
        let min_ram = num(m.remove("min_ram")).unwrap_or(0);
        let protected = m
            .remove("protected")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let tags = match m.remove("tags") {
            Some(Value::Array(a)) => a
                .into_iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        for k in ["self", "file", "schema", "locations", "direct_url"] {
            m.remove(k);
        }
        let properties = m
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect();
        Ok(Image {
            id,
            name,
            status,
            disk_format,
            container_format,
            visibility,
            owner,
            protected,
            size,
            virtual_size,
            checksum,
            os_hash_algo,
            os_hash_value,
            min_disk,
            min_ram,
            tags,
            created_at,
            updated_at,
            properties,
        })
    }

    /// Checks Glance's record of the stored data against what kiln sent: the size, then the
    /// `os_hash_value` when its algorithm is sha512 (Glance's default), else the MD5 `checksum`.
    pub fn verify(&self, sent: &UploadReport) -> Result<Verified, Error> {
        if let Some(size) = self.size
            && size != sent.bytes
        {
            return Err(Error::HashMismatch {
                id: self.id.clone(),
                algo: "size".into(),
                local: sent.bytes.to_string(),
                remote: size.to_string(),
                bytes: sent.bytes,
            });
        }
        let check = |algo: &str, remote: &str, local: &str| {
            if remote.eq_ignore_ascii_case(local) {
                Ok(Verified {
                    algo: algo.to_string(),
                    value: local.to_string(),
                })
            } else {
                Err(Error::HashMismatch {
                    id: self.id.clone(),
                    algo: algo.to_string(),
                    local: local.to_string(),
                    remote: remote.to_string(),
                    bytes: sent.bytes,
                })
            }
        };
        match (&self.os_hash_algo, &self.os_hash_value, &self.checksum) {
            (Some(algo), Some(v), _) if algo.eq_ignore_ascii_case("sha512") => {
                check("sha512", v, &sent.sha512)
            }
            (_, _, Some(md5)) => check("md5", md5, &sent.md5),
            _ => Err(Error::HashUnavailable {
                id: self.id.clone(),
                status: self.status.to_string(),
            }),
        }
    }
}

/// Which hash matched in [`Image::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// `sha512` or `md5`.
    pub algo: String,
    /// Lowercase hex.
    pub value: String,
}

/// What an upload (or stage) sent, hashed while streaming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadReport {
    pub bytes: u64,
    /// Lowercase hex.
    pub sha512: String,
    /// Lowercase hex.
    pub md5: String,
    pub elapsed: std::time::Duration,
}

/// One change in `update` (sent as a JSON-patch, `application/openstack-images-v2.1-json-patch`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImagePatch {
    SetName(String),
    SetVisibility(Visibility),
    SetProtected(bool),
    SetMinDisk(u64),
    SetMinRam(u64),
    SetTags(Vec<String>),
    /// Adds or replaces an extra property.
    SetProperty(String, String),
    RemoveProperty(String),
}

impl ImagePatch {
    pub(crate) fn to_json(&self) -> Result<Value, Error> {
        Ok(match self {
            ImagePatch::SetName(n) => json!({"op": "replace", "path": "/name", "value": n}),
            ImagePatch::SetVisibility(v) => {
                json!({"op": "replace", "path": "/visibility", "value": v.as_str()})
            }
            ImagePatch::SetProtected(p) => {
                json!({"op": "replace", "path": "/protected", "value": p})
            }
            ImagePatch::SetMinDisk(d) => json!({"op": "replace", "path": "/min_disk", "value": d}),
            ImagePatch::SetMinRam(r) => json!({"op": "replace", "path": "/min_ram", "value": r}),
            ImagePatch::SetTags(t) => json!({"op": "replace", "path": "/tags", "value": t}),
            ImagePatch::SetProperty(k, v) => {
                check_property_key(k)?;
                // JSON-pointer escaping of the key (RFC 6901)
                json!({"op": "add", "path": format!("/{}", pointer_escape(k)), "value": v})
            }
            ImagePatch::RemoveProperty(k) => {
                check_property_key(k)?;
                json!({"op": "remove", "path": format!("/{}", pointer_escape(k))})
            }
        })
    }
}

fn pointer_escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_glance_image() {
        let v: Value = serde_json::from_str(r#"{"os_distro": "debian", "name": "t1", "disk_format": "qcow2", "container_format": "bare", "visibility": "shared", "size": 4521984, "virtual_size": 67108864, "status": "active", "checksum": "2b22e47a1241758b66841255ee675057", "protected": false, "min_ram": 0, "min_disk": 1, "owner": "kiln-project", "os_hidden": false, "os_hash_algo": "sha512", "os_hash_value": "ab", "id": "7eca3b96", "created_at": "2026-12-01T21:40:35Z", "updated_at": "2026-12-01T21:40:35Z", "tags": ["a"], "self": "/v2/images/7eca3b96", "file": "/v2/images/7eca3b96/file", "schema": "/v2/schemas/image", "stores": "file", "os_glance_failed_import": ""}"#).unwrap();
        let i = Image::from_json(v).unwrap();
        assert_eq!(i.status, ImageStatus::Active);
        assert_eq!(i.size, Some(4521984));
        assert_eq!(i.min_disk, 1);
        assert_eq!(i.tags, vec!["a"]);
        assert_eq!(i.properties.get("os_distro").unwrap(), "debian");
        assert_eq!(i.properties.get("os_hidden").unwrap(), "false");
        assert!(!i.properties.contains_key("self"));
    }

    #[test]
    fn verify_prefers_sha512_and_detects_mismatch() {
        let mut i = Image::from_json(json!({"id": "x", "status": "active", "size": 3,
            "os_hash_algo": "sha512", "os_hash_value": "AA", "checksum": "bb"}))
        .unwrap();
        let sent = UploadReport {
            bytes: 3,
            sha512: "aa".into(),
            md5: "cc".into(),
            elapsed: Default::default(),
        };
        assert_eq!(i.verify(&sent).unwrap().algo, "sha512");
        i.os_hash_value = Some("ff".into());
        assert!(matches!(
            i.verify(&sent),
            Err(Error::HashMismatch { ref algo, .. }) if algo == "sha512"
        ));
        i.os_hash_algo = Some("sha256".into());
        assert!(matches!(
            i.verify(&sent),
            Err(Error::HashMismatch { ref algo, .. }) if algo == "md5"
        ));
        i.size = Some(4);
        assert!(matches!(
            i.verify(&sent),
            Err(Error::HashMismatch { ref algo, .. }) if algo == "size"
        ));
    }

    #[test]
    fn new_image_json_and_reserved_properties() {
        let mut n = NewImage::new("img", DiskFormat::Qcow2);
        n.visibility = Some(Visibility::Private);
        n.tags = vec!["kiln".into()];
        n.properties.insert("os_distro".into(), "debian".into());
        let j = n.to_json().unwrap();
        assert_eq!(j["container_format"], "bare");
        assert_eq!(j["visibility"], "private");
        assert_eq!(j["os_distro"], "debian");
        n.properties.insert("status".into(), "active".into());
        assert!(matches!(n.to_json(), Err(Error::InvalidRequest(_))));
    }

    #[test]
    fn formats_parse_with_helpful_errors() {
        assert_eq!("QCOW2".parse::<DiskFormat>().unwrap(), DiskFormat::Qcow2);
        let e = "qcow3".parse::<DiskFormat>().unwrap_err().to_string();
        assert!(e.contains("qcow2, raw, vmdk"), "{e}");
        assert_eq!(DiskFormat::Vhd.qemu_img_format(), Some("vpc"));
        assert_eq!(
            DiskFormat::from_qemu_img_format("vpc"),
            Some(DiskFormat::Vhd)
        );
        assert_eq!(
            DiskFormat::from_qemu_img_format("qcow2"),
            Some(DiskFormat::Qcow2)
        );
        assert_eq!(DiskFormat::from_qemu_img_format("qed"), None);
        assert_eq!("public".parse::<Visibility>().unwrap(), Visibility::Public);
    }

    #[test]
    fn patch_ops() {
        assert_eq!(
            ImagePatch::SetProperty("a/b".into(), "v".into())
                .to_json()
                .unwrap(),
            json!({"op": "add", "path": "/a~1b", "value": "v"})
        );
        assert_eq!(
            ImagePatch::SetProtected(false).to_json().unwrap(),
            json!({"op": "replace", "path": "/protected", "value": false})
        );
    }
}
