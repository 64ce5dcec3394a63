//! Descriptors, manifests and indexes (OCI image spec; Docker v2 schema 2 manifests and
//! manifest lists have the same shape and are read with the same types).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::json::to_canonical_json;
use crate::media;

use super::FormatError;

/// A reference to a blob: its media type, digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
        }
    }
}

/// An image platform (`linux/amd64`, `linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux_amd64() -> Self {
        Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            os_version: None,
            os_features: Vec::new(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, FormatError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        match parts[..] {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                variant: None,
                ..Platform::with(os, arch)
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform {
                variant: Some(variant.into()),
                ..Platform::with(os, arch)
            }),
            _ => Err(FormatError::BadPlatform(s.to_string())),
        }
    }

    fn with(os: &str, arch: &str) -> Self {
        Platform {
            architecture: arch.into(),
            os: os.into(),
            os_version: None,
            os_features: Vec::new(),
            variant: None,
        }
    }

    /// Does an index entry for `other` satisfy a request for `self`? A requested
    /// variant must match; none requested accepts any (arm64 entries usually say `v8`).
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image manifest: config + layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// An OCI manifest.
    pub fn new(config: Descriptor, layers: Vec<Descriptor>) -> Self {
        Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            artifact_type: None,
            config,
            layers,
            subject: None,
            annotations: BTreeMap::new(),
        }
    }

    /// Canonical JSON bytes (what is stored and pushed; its sha256 is the digest).
    pub fn to_json(&self) -> Vec<u8> {
        to_canonical_json(self).expect("a manifest always serializes")
    }
}

/// An image index (or Docker manifest list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    pub fn new(manifests: Vec<Descriptor>) -> Self {
        Index {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.into()),
            manifests,
            annotations: BTreeMap::new(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        to_canonical_json(self).expect("an index always serializes")
    }

    /// The entry for `platform`, if any (the first match, as registries order them).
    pub fn find_platform(&self, platform: &Platform) -> Option<&Descriptor> {
        self.manifests.iter().find(|d| {
            (media::is_manifest(&d.media_type))
                && d.platform.as_ref().is_some_and(|p| platform.matches(p))
        })
    }
}

/// A parsed manifest document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestDoc {
    Image(Box<Manifest>),
    Index(Index),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    config: Option<serde_json::Value>,
}

/// Largest manifest, index or config document accepted (the distribution spec suggests
/// registries accept at least 4 MiB manifests).
pub const MAX_DOC: usize = 4 << 20;

/// Parses a manifest or index by its `mediaType` field, else the `content_type` the
/// registry sent, else its shape. Schema 1 manifests are refused.
pub fn parse_manifest(
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<ManifestDoc, FormatError> {
    if bytes.len() > MAX_DOC {
        return Err(FormatError::TooLarge { limit: MAX_DOC });
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| FormatError::Json {
        what: "manifest",
        message: e.to_string(),
    })?;
    if probe.schema_version != Some(2) {
        return Err(FormatError::Unsupported(format!(
            "manifest schemaVersion {:?}: only schema 2 (OCI, Docker v2s2) is supported",
            probe.schema_version
        )));
    }
    let mt = probe
        .media_type
        .clone()
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_string()))
        .filter(|m| !m.is_empty());
    let is_index = match mt.as_deref() {
        Some(m) if media::is_index(m) => true,
        Some(m) if media::is_manifest(m) => false,
        _ => probe.manifests.is_some() && probe.config.is_none(),
    };
    let json_err = |e: serde_json::Error| FormatError::Json {
        what: if is_index { "index" } else { "manifest" },
        message: e.to_string(),
    };
    if is_index {
        Ok(ManifestDoc::Index(
            serde_json::from_slice(bytes).map_err(json_err)?,
        ))
    } else {
        if let Some(m) = mt.as_deref()
            && !media::is_manifest(m)
        {
            return Err(FormatError::Unsupported(format!("manifest media type {m}")));
        }
        Ok(ManifestDoc::Image(Box::new(
            serde_json::from_slice(bytes).map_err(json_err)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_V2S2: &str = r#"{
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
   "config": {
      "mediaType": "application/vnd.docker.container.image.v1+json",
      "size": 1469,
      "digest": "sha256:9c7a54a9a43cca047013b82af109fe963fde787f63f9e016fdc3384500c2823d"
   },
   "layers": [
      {
         "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
         "size": 2818413,
         "digest": "sha256:31e352740f534f9ad170f75378a84fe453d6156e40700b882d737a8f4a6988a3"
      }
   ]
}"#;

    const DOCKER_LIST: &str = r#"{"manifests":[
      {"digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","mediaType":"application/vnd.docker.distribution.manifest.v2+json","platform":{"architecture":"arm","os":"linux","variant":"v7"},"size":528},
      {"digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","mediaType":"application/vnd.docker.distribution.manifest.v2+json","platform":{"architecture":"amd64","os":"linux"},"size":528}],
      "mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","schemaVersion":2}"#;

    #[test]
    fn reads_docker_documents() {
        let ManifestDoc::Image(m) = parse_manifest(DOCKER_V2S2.as_bytes(), None).unwrap() else {
            panic!("not a manifest")
        };
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.config.media_type, media::DOCKER_CONFIG);
        let ManifestDoc::Index(i) = parse_manifest(DOCKER_LIST.as_bytes(), None).unwrap() else {
            panic!("not an index")
        };
        let d = i.find_platform(&Platform::linux_amd64()).unwrap();
        assert!(d.digest.hex().starts_with("2222"));
        assert!(
            i.find_platform(&Platform::parse("linux/arm64").unwrap())
                .is_none()
        );
    }

    #[test]
    fn media_type_from_content_type_and_shape() {
        let oci = r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":2},"layers":[]}"#;
        assert!(matches!(
            parse_manifest(oci.as_bytes(), None).unwrap(),
            ManifestDoc::Image(_)
        ));
        let idx = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_manifest(
                idx.as_bytes(),
                Some("application/vnd.oci.image.index.v1+json; charset=utf-8")
            )
            .unwrap(),
            ManifestDoc::Index(_)
        ));
        assert!(parse_manifest(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).is_err());
        assert!(parse_manifest(b"not json", None).is_err());
    }

    #[test]
    fn canonical_and_stable() {
        let d = Descriptor::new(media::OCI_CONFIG, Digest::of(b"{}"), 2);
        let m = Manifest::new(d, vec![]);
        let a = m.to_json();
        assert_eq!(a, m.clone().to_json());
        let s = String::from_utf8(a).unwrap();
        assert!(s.starts_with("{\"config\":{\"digest\":"), "{s}");
        assert!(s.ends_with("\"schemaVersion\":2}"));
    }

    #[test]
    fn platform_parse() {
        assert_eq!(
            Platform::parse("linux/amd64").unwrap(),
            Platform::linux_amd64()
        );
        assert_eq!(
            Platform::parse("linux/arm64/v8")
                .unwrap()
                .variant
                .as_deref(),
            Some("v8")
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/amd64/v1/x").is_err());
    }
}
