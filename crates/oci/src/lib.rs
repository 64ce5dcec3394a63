//! kiln-oci: daemonless OCI images.
//!
//! * [`write_layer`] turns an overlayfs upper directory (one build step's changes) or a
//!   plain tree into a reproducible layer tar, streamed through a [`Compressor`];
//!   [`upper_is_empty`] tells a step that changed nothing.
//! * [`unpack_layer`] extracts a layer blob into a directory in overlayfs `lowerdir`
//!   format (or applies it to a tree), treating the tar as hostile.
//! * [`ImageBuilder`], [`ImageConfig`], [`Manifest`], [`Index`], [`Changes`]: the image
//!   documents, serialized as canonical JSON; [`squash_layers`] merges layers into one.
//! * [`OciLayout`] (output, base image source, local blob store) and
//!   [`write_docker_archive`] / [`DockerArchive`] (`docker load` tars).
//! * [`registry`]: a distribution-spec client (pull, push, auth).
//!
//! Invariants:
//! * Identical inputs give byte-identical layers, configs and manifests: entry order,
//!   headers, gzip header and JSON key order are fixed; mtimes are clamped to the epoch
//!   the caller passes; nothing reads the clock or the host's user names.
//! * Big payloads stream: layers, blobs and archives are never held in memory; JSON
//!   documents are bounded ([`image::MAX_DOC`]).
//! * Every blob read (from disk or a registry) is checked against its digest and size;
//!   a mismatch is an error, never a warning.
//! * Unpacking never writes outside the target directory: the kernel resolves every
//!   path beneath it (`openat2`) without following symlinks.
//! * Secrets (registry passwords, tokens) never appear in `Debug`, `Display`, errors or
//!   logs.

pub mod archive;
pub mod compress;
pub mod digest;
pub mod image;
mod json;
pub mod layer;
pub mod layout;
pub mod media;
pub mod registry;
pub mod squash;
mod tarfmt;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod unpack;

pub use archive::{ArchiveError, DockerArchive, write_docker_archive};
pub use compress::{Compression, Compressor, FinishWrite, Gzip, Uncompressed, Zstd};
pub use digest::{BadDigest, Digest, DigestWriter};
pub use image::{
    BuiltImage, Changes, ChangesError, ContainerConfig, Descriptor, FormatError, History,
    ImageBuilder, ImageConfig, Index, Manifest, ManifestDoc, Platform, Step,
};
pub use json::{rfc3339, to_canonical_json};
pub use layer::{LayerError, LayerInfo, LayerOptions, LayerSource, upper_is_empty, write_layer};
pub use layout::{LayoutError, LocalImage, OciLayout};
pub use registry::{
    Credentials, ImageSource, Reference, RegistryClient, RegistryError, RegistryOptions, Secret,
};
pub use squash::{SquashError, squash_layers};
pub use unpack::{UnpackError, UnpackOptions, UnpackStats, WhiteoutMode, unpack_layer};
