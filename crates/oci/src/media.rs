//! Media types of the OCI image spec and of Docker's v2 schema 2 (read when pulling).

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_NONDISTRIBUTABLE_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// The annotation that names a manifest in an OCI layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Is this a media type of an image manifest (OCI or Docker v2s2)?
pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// Is this a media type of an index / manifest list (OCI or Docker)?
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// The OCI media type for a layer blob of media type `media_type` (Docker layer types
/// name the same bytes: gzip tars), or `None` when it is not a layer type kiln knows.
pub fn oci_layer_type(media_type: &str) -> Option<&'static str> {
    Some(match media_type {
        OCI_LAYER => OCI_LAYER,
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD => OCI_LAYER_ZSTD,
        OCI_LAYER_NONDISTRIBUTABLE_GZIP | DOCKER_FOREIGN_LAYER_GZIP => {
            OCI_LAYER_NONDISTRIBUTABLE_GZIP
        }
        _ => return None,
    })
}
