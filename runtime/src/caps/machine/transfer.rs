//! A project file or directory tree to the machine, with a progress bar and a rate
//! line: what `file(src, dest)` steps and `m.upload(src, dest)` both do. The source is
//! opened through the caller's `read` grant; the upload goes through the facade.

use std::sync::Arc;
use std::time::Instant;

use super::MachineCap;
use crate::context::{BuildRt, StepError};
use crate::host::machine::UploadPath;

pub fn upload(rt: &Arc<BuildRt>, cap: &MachineCap, src: &str, dest: &str) -> Result<(), StepError> {
    let project = &rt.plan.project;
    let scope = cap.scope();
    let fs_err = |e: crate::caps::FsError| match e {
        crate::caps::FsError::Denied(d) => StepError::Denied(d),
        other => StepError::Failed(other.to_string()),
    };
    let is_dir = project.is_dir(scope, src).map_err(fs_err)?;
    rt.ui.say(&rt.label, &format!("Uploading {src} => {dest}"));
    let start = Instant::now();
    let (bytes, via, retried) = if is_dir {
        let dir = project.open_dir_read(scope, src).map_err(fs_err)?;
        let bar = rt.ui.progress(&rt.label, src, 0);
        let n = rt
            .block_on(cap.upload_tree(src, &dir, dest, &|n| bar.set(n)))
            .map_err(StepError::Cancelled)??;
        bar.finish();
        (n, UploadPath::Normal, false)
    } else {
        let file = project.open_read(scope, src).map_err(fs_err)?;
        let meta = file.metadata().ok();
        let size = meta.as_ref().map_or(0, |m| m.len());
        let mode = {
            use cap_std::fs::PermissionsExt;
            meta.map(|m| m.permissions().mode() & 0o7777)
        };
        let bar = rt.ui.progress(&rt.label, src, size);
        let up = rt
            .block_on(cap.upload(src, &file, dest, mode, &|n| bar.set(n)))
            .map_err(StepError::Cancelled)??;
        bar.finish();
        (up.bytes, up.via, up.retried)
    };
    let secs = start.elapsed().as_secs_f64();
    let via = match via {
        UploadPath::Normal => "",
        UploadPath::VirtioDisk => " via a virtio disk",
    };
    let retried = if retried {
        " (the connection dropped; uploaded again from the start)"
    } else {
        ""
    };
    #[allow(clippy::cast_precision_loss)] // a rate for humans
    let rate = if secs > 0.0 {
        bytes as f64 / secs / 1e6
    } else {
        0.0
    };
    rt.ui.message(
        &rt.label,
        &format!(
            "Uploaded {} in {secs:.1}s ({rate:.1} MB/s){via}{retried}",
            crate::ui::human_bytes(bytes)
        ),
    );
    Ok(())
}
