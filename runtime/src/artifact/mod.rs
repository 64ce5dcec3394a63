//! Artifacts and what post-processors make of them: the manifest, checksums,
//! compressed files, Vagrant boxes.

pub mod compress;
pub mod manifest;
pub mod vagrant;
