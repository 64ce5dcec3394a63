//! Host code of the OCI builder, below the capability layer (no grants here): kiln's
//! local store of cached step layers and unpacked base layers ([`store`]), whether a
//! step changed anything ([`diff`]), and assembling and writing the image ([`image`]).
//! The container each step runs in is [`crate::host::rootfs`]; registry transfers go
//! through `caps::oci`.

pub mod diff;
pub mod image;
pub mod store;

pub use image::{BaseImage, CommitOptions, Committed, ImageError, StepRecord};
pub use store::{BuildDir, Store, StoreError};

/// Where kiln keeps OCI layers: `<kiln cache dir>/oci`.
pub fn store_dir() -> Option<std::path::PathBuf> {
    crate::cache_dir().map(|d| d.join("oci"))
}
