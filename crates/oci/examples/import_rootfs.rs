//! Imports a root filesystem directory (a debootstrap result, say) as a one-layer OCI
//! image in an image layout, reproducibly: the same tree and epoch give the same digest.
//! Run as root so owners, device nodes and capabilities are read as they are.
//!
//!     cargo run --release -p kiln-oci --example import_rootfs -- ROOTFS LAYOUT TAG [EPOCH]
//!
//! EPOCH (Unix seconds, default `$SOURCE_DATE_EPOCH`, else 0) clamps every mtime and is
//! the image's `created`. Prints the manifest digest.

use std::path::Path;

use kiln_oci::{Gzip, ImageBuilder, LayerOptions, LayerSource, OciLayout, Platform, Step};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (rootfs, layout, tag) = match &args[..] {
        [r, l, t] | [r, l, t, _] => (Path::new(r), Path::new(l), t.as_str()),
        _ => return Err("usage: import_rootfs ROOTFS LAYOUT TAG [EPOCH]".into()),
    };
    let epoch: i64 = match args.get(3) {
        Some(e) => e.parse()?,
        None => std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
    };
    let out = OciLayout::create(layout)?;
    let info = out.write_layer(
        rootfs,
        &LayerOptions {
            source: LayerSource::Tree,
            source_date_epoch: Some(epoch),
        },
        &Gzip::default(),
    )?;
    let platform = Platform::linux_amd64();
    let mut b = ImageBuilder::scratch(&platform);
    let name = rootfs.file_name().map_or_else(
        || rootfs.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    b.add_layer_info(
        &info,
        &Step {
            created_by: format!("kiln-oci import_rootfs {name}"),
            created: Some(epoch),
            comment: None,
        },
    );
    let cfg = b.container_config_mut();
    cfg.env = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()];
    cfg.cmd = Some(vec!["/bin/sh".into()]);
    b.set_created(Some(epoch));
    let built = b.build();
    out.put_image(&built, Some(tag))?;
    eprintln!(
        "{}:{tag}: 1 layer, {} bytes compressed ({} entries, {} bytes as tar)",
        layout.display(),
        info.size,
        info.entries,
        info.uncompressed_size
    );
    println!("{}", built.manifest.digest);
    Ok(())
}
