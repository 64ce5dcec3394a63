//! Image documents: config, manifest, index, and the `changes` applied to a config.

mod changes;
mod config;
mod manifest;

pub use changes::{Changes, ChangesError};
pub use config::{
    BuiltImage, ContainerConfig, Empty, History, ImageBuilder, ImageConfig, RootFs, Step,
};
pub use manifest::{Descriptor, Index, MAX_DOC, Manifest, ManifestDoc, Platform, parse_manifest};

/// A document that is malformed, inconsistent or of a kind kiln does not handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the {what} is not valid JSON of its kind: {message}")]
    Json { what: &'static str, message: String },
    #[error("the document is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("inconsistent image: {0}")]
    Inconsistent(String),
    #[error("platform {0:?} is not OS/ARCH[/VARIANT] (for example linux/amd64)")]
    BadPlatform(String),
}
