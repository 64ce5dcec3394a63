//! The image configuration (`application/vnd.oci.image.config.v1+json`, which Docker's
//! `container.image.v1+json` also reads as) and a builder that grows an image step by
//! step: one layer (and one history entry) per step that changed something, an
//! `empty_layer` history entry for a step that did not.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::digest::Digest;
use crate::json::{rfc3339, to_canonical_json};
use crate::layer::LayerInfo;
use crate::media;

use super::FormatError;
use super::manifest::{Descriptor, Manifest, Platform};

/// An empty JSON object, the value type of `ExposedPorts` and `Volumes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The runtime configuration of containers made from the image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, Empty>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub volumes: BTreeMap<String, Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Fields kiln does not model (Docker's `Healthcheck`, `Shell`, `OnBuild`, ...),
    /// carried over from a base image unchanged.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `rootfs`: the layers' diff_ids, bottom first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<Digest>,
}

/// One build step in the image's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// The image configuration document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub history: Vec<History>,
}

impl ImageConfig {
    /// An empty image for `platform` (`scratch`).
    pub fn scratch(platform: &Platform) -> Self {
        ImageConfig {
            created: None,
            author: None,
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            os_version: platform.os_version.clone(),
            variant: platform.variant.clone(),
            config: None,
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: Vec::new(),
            },
            history: Vec::new(),
        }
    }

    /// Parses a config blob (bounded by [`super::manifest::MAX_DOC`]).
    pub fn from_json(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() > super::manifest::MAX_DOC {
            return Err(FormatError::TooLarge {
                limit: super::manifest::MAX_DOC,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| FormatError::Json {
            what: "image config",
            message: e.to_string(),
        })
    }

    /// Canonical JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        to_canonical_json(self).expect("an image config always serializes")
    }

    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            os_version: self.os_version.clone(),
            os_features: Vec::new(),
            variant: self.variant.clone(),
        }
    }
}

/// A build step's history entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// The step as `kiln inspect` shows it.
    pub created_by: String,
    /// Unix seconds; with `SOURCE_DATE_EPOCH`, pass the epoch for reproducible configs.
    pub created: Option<i64>,
    pub comment: Option<String>,
}

/// The documents of a finished image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub config_json: Vec<u8>,
    pub config: Descriptor,
    pub manifest_json: Vec<u8>,
    /// The manifest's descriptor (with the platform, for an index).
    pub manifest: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// Grows an image from a base (or scratch) by steps.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    config: ImageConfig,
    layers: Vec<Descriptor>,
    annotations: BTreeMap<String, String>,
}

impl ImageBuilder {
    pub fn scratch(platform: &Platform) -> Self {
        ImageBuilder {
            config: ImageConfig::scratch(platform),
            layers: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }

    /// Starts from a base image's config and manifest. Docker layer media types become
    /// their OCI names (same bytes), so the result is a pure OCI manifest.
    pub fn from_base(config: ImageConfig, manifest: &Manifest) -> Result<Self, FormatError> {
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(FormatError::Inconsistent(format!(
                "the base image has {} layers but its config lists {} diff_ids",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for l in &manifest.layers {
            let oci = media::oci_layer_type(&l.media_type).ok_or_else(|| {
                FormatError::Unsupported(format!("base image layer media type {}", l.media_type))
            })?;
            let mut d = l.clone();
            d.media_type = oci.to_string();
            layers.push(d);
        }
        Ok(ImageBuilder {
            config,
            layers,
            annotations: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// The container config, created empty on first use.
    pub fn container_config_mut(&mut self) -> &mut ContainerConfig {
        self.config
            .config
            .get_or_insert_with(ContainerConfig::default)
    }

    pub fn layers(&self) -> &[Descriptor] {
        &self.layers
    }

    /// Adds a step's layer (`descriptor` as stored, `diff_id` of its tar).
    pub fn add_layer(&mut self, descriptor: Descriptor, diff_id: Digest, step: &Step) {
        self.layers.push(descriptor);
        self.config.rootfs.diff_ids.push(diff_id);
        self.config.history.push(history(step, false));
    }

    /// Adds a layer written by [`crate::write_layer`].
    pub fn add_layer_info(&mut self, layer: &LayerInfo, step: &Step) {
        self.add_layer(layer.descriptor(), layer.diff_id.clone(), step);
    }

    /// Records a step that changed no file (`empty_layer: true`).
    pub fn add_empty_step(&mut self, step: &Step) {
        self.config.history.push(history(step, true));
    }

    /// Replaces every layer by one (squash): `layer` must hold the merged content.
    pub fn squash_into(&mut self, descriptor: Descriptor, diff_id: Digest, step: &Step) {
        self.layers = vec![descriptor];
        self.config.rootfs.diff_ids = vec![diff_id];
        self.config.history = vec![history(step, false)];
    }

    /// The image's `created` time (Unix seconds).
    pub fn set_created(&mut self, t: Option<i64>) {
        self.config.created = t.map(rfc3339);
    }

    pub fn set_author(&mut self, author: Option<String>) {
        self.config.author = author;
    }

    /// Adds a manifest annotation.
    pub fn annotate(&mut self, key: &str, value: &str) {
        self.annotations.insert(key.into(), value.into());
    }

    /// The canonical config and manifest documents.
    pub fn build(&self) -> BuiltImage {
        let config_json = self.config.to_json();
        let config = Descriptor::new(
            media::OCI_CONFIG,
            Digest::of(&config_json),
            config_json.len() as u64,
        );
        let mut m = Manifest::new(config.clone(), self.layers.clone());
        m.annotations = self.annotations.clone();
        let manifest_json = m.to_json();
        let mut manifest = Descriptor::new(
            media::OCI_MANIFEST,
            Digest::of(&manifest_json),
            manifest_json.len() as u64,
        );
        manifest.platform = Some(self.config.platform());
        BuiltImage {
            config_json,
            config,
            manifest_json,
            manifest,
            layers: self.layers.clone(),
        }
    }
}

fn history(step: &Step, empty: bool) -> History {
    History {
        created: step.created.map(rfc3339),
        created_by: Some(step.created_by.clone()),
        author: None,
        comment: step.comment.clone(),
        empty_layer: empty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_CONFIG: &str = r#"{"architecture":"amd64","config":{"Hostname":"","Env":["PATH=/usr/bin"],"Cmd":["sh"],"Image":"sha256:aa","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null,"ExposedPorts":null},"container":"abc","created":"2023-01-01T00:00:00.1Z","docker_version":"20.10","history":[{"created":"2023-01-01T00:00:00Z","created_by":"/bin/sh -c #(nop) ADD file:x in / "},{"created":"2023-01-01T00:00:00Z","created_by":"/bin/sh -c #(nop)  CMD [\"sh\"]","empty_layer":true}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111"]}}"#;

    #[test]
    fn reads_docker_config_with_nulls_and_keeps_unknown_fields() {
        let c = ImageConfig::from_json(DOCKER_CONFIG.as_bytes()).unwrap();
        let cc = c.config.as_ref().unwrap();
        assert_eq!(cc.cmd.as_deref(), Some(&["sh".to_string()][..]));
        assert!(cc.labels.is_empty());
        assert!(cc.extra.contains_key("Hostname"));
        assert!(c.history[1].empty_layer);
        let again = ImageConfig::from_json(&c.to_json()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn builder_is_deterministic_and_tracks_history() {
        let mk = || {
            let mut b = ImageBuilder::scratch(&Platform::linux_amd64());
            b.set_created(Some(0));
            b.add_layer(
                Descriptor::new(media::OCI_LAYER_GZIP, Digest::of(b"l1"), 2),
                Digest::of(b"t1"),
                &Step {
                    created_by: "shell: echo hi".into(),
                    created: Some(0),
                    comment: None,
                },
            );
            b.add_empty_step(&Step {
                created_by: "shell: true".into(),
                created: Some(0),
                comment: None,
            });
            b.build()
        };
        let a = mk();
        let b = mk();
        assert_eq!(a, b);
        let c = ImageConfig::from_json(&a.config_json).unwrap();
        assert_eq!(c.rootfs.diff_ids.len(), 1);
        assert_eq!(c.history.len(), 2);
        assert!(c.history[1].empty_layer);
        assert_eq!(c.created.as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(a.manifest.digest, Digest::of(&a.manifest_json));
    }

    #[test]
    fn base_layers_become_oci_and_must_match_diff_ids() {
        let c = ImageConfig::from_json(DOCKER_CONFIG.as_bytes()).unwrap();
        let m = Manifest::new(
            Descriptor::new(media::DOCKER_CONFIG, Digest::of(b"c"), 1),
            vec![Descriptor::new(
                media::DOCKER_LAYER_GZIP,
                Digest::of(b"l"),
                1,
            )],
        );
        let b = ImageBuilder::from_base(c.clone(), &m).unwrap();
        assert_eq!(b.layers()[0].media_type, media::OCI_LAYER_GZIP);
        let empty = Manifest::new(m.config.clone(), vec![]);
        assert!(matches!(
            ImageBuilder::from_base(c, &empty),
            Err(FormatError::Inconsistent(_))
        ));
    }
}
