//! `squash`: several layers merged into one, as Packer's docker builder does. The layers
//! are applied in order to a scratch tree (deletions performed, opaque directories
//! cleared) and the tree becomes a single layer; nothing is buffered in memory.
//!
//! While a build's overlay is still mounted, the merged directory is the same tree, and
//! [`crate::write_layer`] with [`crate::LayerSource::Tree`] on it gives the same layer
//! without unpacking anything.

use std::io::BufReader;
use std::path::Path;

use crate::compress::Compressor;
use crate::digest::Digest;
use crate::image::Descriptor;
use crate::layer::{LayerError, LayerInfo, LayerOptions, LayerSource};
use crate::layout::{LayoutError, OciLayout};
use crate::unpack::{UnpackError, UnpackOptions, WhiteoutMode, unpack_layer};

/// Why a squash failed.
#[derive(Debug, thiserror::Error)]
pub enum SquashError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("applying layer {digest}: {source}")]
    Unpack {
        digest: Digest,
        #[source]
        source: UnpackError,
    },
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("cannot make a scratch directory in {path}: {source}")]
    Scratch {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Merges `layers` (bottom first, each with its diff_id, blobs in `layout`) into one
/// layer stored in `layout`. The scratch tree lives under `workdir` and is removed.
/// Run as root so owners and device nodes survive.
pub fn squash_layers(
    layout: &OciLayout,
    layers: &[(Descriptor, Digest)],
    workdir: &Path,
    source_date_epoch: Option<i64>,
    compressor: &dyn Compressor,
) -> Result<LayerInfo, SquashError> {
    let scratch = tempfile::Builder::new()
        .prefix("kiln-squash-")
        .tempdir_in(workdir)
        .map_err(|source| SquashError::Scratch {
            path: workdir.to_path_buf(),
            source,
        })?;
    for (d, diff_id) in layers {
        let blob = layout.open_blob(d)?;
        let mut o = UnpackOptions::new(WhiteoutMode::Apply);
        o.expected_diff_id = Some(diff_id.clone());
        unpack_layer(
            BufReader::with_capacity(256 * 1024, blob),
            scratch.path(),
            &o,
        )
        .map_err(|source| SquashError::Unpack {
            digest: d.digest.clone(),
            source,
        })?;
    }
    let info = layout.write_layer(
        scratch.path(),
        &LayerOptions {
            source: LayerSource::Tree,
            source_date_epoch,
        },
        compressor,
    )?;
    Ok(info)
}
