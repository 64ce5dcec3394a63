//! The vagrant post-processor's engine: a `.box` for the vagrant-libvirt provider
//! from a qcow2 disk. A box is a tar (gzip-compressed unless level 0) holding
//! `metadata.json`, a `Vagrantfile` with the provider's defaults, and `box.img`.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::compress::ParallelGzWriter;
use crate::cleanup::{CleanupId, CleanupStack};
use crate::host::image::{self, ImageError};

#[derive(Debug, thiserror::Error)]
pub enum VagrantError {
    #[error("the libvirt provider needs a qcow2 disk, but {path} is {format}: convert it first")]
    NotQcow2 { path: PathBuf, format: String },
    #[error(
        "{path} has a backing file ({backing}): a box must be self-contained; convert the \
         disk (image convert) to flatten it first"
    )]
    HasBacking { path: PathBuf, backing: String },
    #[error("compression level {0} is out of range: use 0 (plain tar) to 9")]
    BadLevel(u32),
    #[error("{path} already exists: remove it or choose another output name")]
    Exists { path: PathBuf },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(
        "no space left writing the box {path}: its file system is full. The partial box was \
         removed; free space there or write the box to a larger file system"
    )]
    NoSpace { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// The hypervisor vagrant-libvirt asks libvirt for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LibvirtDriver {
    #[default]
    Kvm,
    /// Plain QEMU (TCG), for hosts without working KVM.
    Qemu,
}

#[derive(Debug, Clone)]
pub struct BoxOptions {
    pub driver: LibvirtDriver,
    /// gzip level 1..=9 (default 6, Packer's); 0 writes an uncompressed tar.
    pub compression_level: u32,
    /// Worker threads for gzip; all cores when 0.
    pub threads: usize,
    /// A Vagrantfile to ship instead of kiln's default one.
    pub vagrantfile: Option<String>,
}

impl Default for BoxOptions {
    fn default() -> Self {
        BoxOptions {
            driver: LibvirtDriver::Kvm,
            compression_level: 6,
            threads: 0,
            vagrantfile: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct VagrantBox {
    pub path: PathBuf,
    pub size: u64,
    /// GiB, as written to metadata.json.
    pub virtual_size_gib: u64,
    /// Release once the box is registered as an artifact.
    pub cleanup: CleanupId,
}

/// `metadata.json` for vagrant-libvirt.
pub fn metadata_json(virtual_size_gib: u64) -> String {
    serde_json::json!({
        "provider": "libvirt",
        "format": "qcow2",
        "virtual_size": virtual_size_gib,
    })
    .to_string()
}

/// kiln's default Vagrantfile for a libvirt box.
pub fn default_vagrantfile(driver: LibvirtDriver) -> String {
    let driver = match driver {
        LibvirtDriver::Kvm => "kvm",
        LibvirtDriver::Qemu => "qemu",
    };
    format!(
        "# Made by kiln. Settings here are defaults; a project's Vagrantfile overrides them.\n\
         Vagrant.configure(\"2\") do |config|\n\
         \x20 config.vm.provider :libvirt do |libvirt|\n\
         \x20   libvirt.driver = \"{driver}\"\n\
         \x20   libvirt.disk_bus = \"virtio\"\n\
         \x20   libvirt.nic_model_type = \"virtio\"\n\
         \x20 end\n\
         end\n"
    )
}

/// Writes a libvirt `.box` at `output` from the flat qcow2 `disk`. `progress` gets
/// the number of disk bytes packed so far.
pub async fn libvirt_box(
    disk: &Path,
    output: &Path,
    options: &BoxOptions,
    cleanup: &CleanupStack,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<VagrantBox, VagrantError> {
    if options.compression_level > 9 {
        return Err(VagrantError::BadLevel(options.compression_level));
    }
    let info = image::info(disk).await?;
    if info.format != "qcow2" {
        return Err(VagrantError::NotQcow2 {
            path: disk.to_path_buf(),
            format: info.format,
        });
    }
    if let Some(backing) = info.backing_file {
        return Err(VagrantError::HasBacking {
            path: disk.to_path_buf(),
            backing,
        });
    }
    let gib = info.virtual_size.div_ceil(1 << 30);
    let vagrantfile = options
        .vagrantfile
        .clone()
        .unwrap_or_else(|| default_vagrantfile(options.driver));
    let (file, id) = super::create_output(output, "vagrant box", cleanup).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            VagrantError::Exists {
                path: output.to_path_buf(),
            }
        } else {
            VagrantError::Io {
                what: "cannot create",
                path: output.to_path_buf(),
                source,
            }
        }
    })?;
    let out_path = output.to_path_buf();
    let disk = disk.to_path_buf();
    let level = options.compression_level;
    let threads = super::threads(options.threads);
    let written = tokio::task::spawn_blocking(move || {
        write_box(file, &disk, gib, &vagrantfile, level, threads, &*progress)
    })
    .await
    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
    match written {
        Ok(size) => {
            tracing::info!(path = %out_path.display(), size, "vagrant box written");
            Ok(VagrantBox {
                path: out_path,
                size,
                virtual_size_gib: gib,
                cleanup: id,
            })
        }
        Err(source) => {
            cleanup.release(id);
            let _ = std::fs::remove_file(&out_path);
            if super::compress::is_no_space(&source) {
                return Err(VagrantError::NoSpace { path: out_path });
            }
            Err(VagrantError::Io {
                what: "cannot write the box",
                path: out_path,
                source,
            })
        }
    }
}

fn write_box(
    file: File,
    disk: &Path,
    gib: u64,
    vagrantfile: &str,
    level: u32,
    threads: usize,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> io::Result<u64> {
    let out = BufWriter::with_capacity(1 << 20, file);
    let out = if level == 0 {
        append_entries(out, disk, gib, vagrantfile, progress)?
    } else {
        let gz = ParallelGzWriter::new(out, level, threads);
        append_entries(gz, disk, gib, vagrantfile, progress)?.finish()?
    };
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

fn append_entries<W: Write>(
    out: W,
    disk: &Path,
    gib: u64,
    vagrantfile: &str,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> io::Result<W> {
    let mut tar = tar::Builder::new(out);
    // Small files first: `vagrant box add` finds metadata.json without reading the disk.
    for (name, data) in [
        ("metadata.json", metadata_json(gib)),
        ("Vagrantfile", vagrantfile.to_string()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        tar.append_data(&mut h, name, data.as_bytes())?;
    }
    let mut f = File::open(disk)?;
    let len = f.metadata()?.len();
    let mut h = tar::Header::new_gnu();
    h.set_size(len);
    h.set_mode(0o644);
    h.set_mtime(0);
    let mut reader = super::compress::CountingReader::new(&mut f, progress);
    tar.append_data(&mut h, "box.img", &mut reader)?;
    tar.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_fields() {
        let v: serde_json::Value = serde_json::from_str(&metadata_json(2)).unwrap();
        assert_eq!(v["provider"], "libvirt");
        assert_eq!(v["format"], "qcow2");
        assert_eq!(v["virtual_size"], 2);
    }

    #[test]
    fn vagrantfile_names_the_driver() {
        assert!(default_vagrantfile(LibvirtDriver::Qemu).contains("libvirt.driver = \"qemu\""));
        assert!(default_vagrantfile(LibvirtDriver::Kvm).contains("Vagrant.configure(\"2\")"));
    }
}
