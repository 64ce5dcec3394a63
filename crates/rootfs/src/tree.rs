//! A local directory tree as a tar stream, for `upload_tree`. The walk goes through one
//! `cap_std` directory handle, so no path or symlink can lead it out of the tree.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use cap_std::fs::{Dir, MetadataExt, PermissionsExt};
use tokio::sync::mpsc;

use crate::protocol::CHUNK;

type Tx = mpsc::Sender<std::io::Result<Vec<u8>>>;

/// Collects tar output into chunks for the async side.
struct ChunkWriter {
    tx: Tx,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn flush_buf(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(full))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.flush_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes the tree under `root` as a tar stream into `tx` (blocking; run it on a blocking
/// thread). Errors are also sent down the channel so the upload stops at once.
pub(crate) fn write_tar(root: &Dir, tx: Tx) -> std::io::Result<()> {
    let writer = ChunkWriter {
        tx: tx.clone(),
        buf: Vec::with_capacity(CHUNK),
    };
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(false);
    let r = append_dir(&mut builder, root, Path::new("")).and_then(|()| {
        let mut w = builder.into_inner()?;
        w.flush_buf()
    });
    if let Err(e) = &r {
        let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
    }
    r
}

fn header_for(meta: &cap_std::fs::Metadata, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(meta.permissions().mode() & 0o7777);
    h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Dir,
    rel: &Path,
) -> std::io::Result<()> {
    let entries = if rel.as_os_str().is_empty() {
        root.entries()?
    } else {
        root.read_dir(rel)?
    };
    let mut names: Vec<_> = entries
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    // Sorted, so two uploads of the same tree send the same stream.
    names.sort();
    for name in names {
        let path: PathBuf = rel.join(&name);
        let meta = root.symlink_metadata(&path)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            let mut h = header_for(&meta, tar::EntryType::Directory, 0);
            builder.append_data(&mut h, &path, std::io::empty())?;
            append_dir(builder, root, &path)?;
        } else if ft.is_file() {
            let file = root.open(&path)?;
            let mut h = header_for(&meta, tar::EntryType::Regular, meta.len());
            builder.append_data(&mut h, &path, file.into_std().take(meta.len()))?;
        } else if ft.is_symlink() {
            // cap-std resolves the link inside `root` and fails if it escapes or dangles.
            match root.metadata(&path) {
                Ok(_) => {
                    let target = root.read_link(&path)?;
                    let mut h = header_for(&meta, tar::EntryType::Symlink, 0);
                    builder.append_link(&mut h, &path, &target)?;
                }
                Err(e) => tracing::warn!(path = %path.display(),
                    "not uploading symlink: it points outside the uploaded directory or nowhere ({e})"),
            }
        } else {
            tracing::warn!(path = %path.display(), "not uploading special file (fifo, socket or device)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_becomes_a_sorted_tar_without_escaping_links() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/b.txt"), b"bee").unwrap();
        std::fs::write(t.path().join("a.txt"), b"ay").unwrap();
        std::os::unix::fs::symlink("a.txt", t.path().join("in-link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("out-link")).unwrap();
        let dir = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        write_tar(&dir, tx).unwrap();
        let mut bytes = Vec::new();
        while let Ok(c) = rx.try_recv() {
            bytes.extend(c.unwrap());
        }
        let mut ar = tar::Archive::new(&bytes[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a.txt", "d", "d/b.txt", "in-link"]);
    }
}
