//! Artifacts and what post-processors make of them: the manifest, checksums,
//! compressed files, Vagrant boxes.

pub mod compress;
pub mod manifest;
pub mod vagrant;

use std::io;
use std::path::Path;

use crate::cleanup::{CleanupId, CleanupStack};

/// Creates `output` for a post-processor, refusing to overwrite an existing file,
/// and pushes its removal onto the cleanup stack (released once it is an artifact).
/// `what` names it in the cleanup report ("vagrant box").
pub(crate) fn create_output(
    output: &Path,
    what: &str,
    cleanup: &CleanupStack,
) -> io::Result<(std::fs::File, CleanupId)> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(output)?;
    let undo_path = output.to_path_buf();
    let id = cleanup.push(format!("{what} {}", output.display()), move || async move {
        match tokio::fs::remove_file(&undo_path).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(anyhow::anyhow!("removing {}: {e}", undo_path.display()))
            }
            _ => Ok(()),
        }
    });
    Ok((file, id))
}

/// Worker threads for a compressor: all cores when `requested` is 0.
pub(crate) fn threads(requested: usize) -> usize {
    if requested == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        requested
    }
}
