//! kiln's Rhai standard library (the `scripts/` directory), embedded in the binary.

/// (module path, source) for every embedded script.
const FILES: &[(&str, &str)] = &[
    (
        "builders/ssh_host",
        include_str!("../../../scripts/builders/ssh_host.rhai"),
    ),
    (
        "builders/qemu",
        include_str!("../../../scripts/builders/qemu.rhai"),
    ),
    (
        "builders/amazon_ebs",
        include_str!("../../../scripts/builders/amazon_ebs.rhai"),
    ),
    (
        "builders/oci",
        include_str!("../../../scripts/builders/oci.rhai"),
    ),
    (
        "post/compress",
        include_str!("../../../scripts/post/compress.rhai"),
    ),
    (
        "post/vagrant",
        include_str!("../../../scripts/post/vagrant.rhai"),
    ),
    (
        "post/checksum",
        include_str!("../../../scripts/post/checksum.rhai"),
    ),
    (
        "post/manifest",
        include_str!("../../../scripts/post/manifest.rhai"),
    ),
    (
        "post/openstack_image",
        include_str!("../../../scripts/post/openstack_image.rhai"),
    ),
    (
        "post/registry",
        include_str!("../../../scripts/post/registry.rhai"),
    ),
];

/// The source of an embedded script by module path (`builders/qemu`).
pub fn get(path: &str) -> Option<&'static str> {
    let path = path.strip_prefix("kiln:").unwrap_or(path);
    let path = path.strip_suffix(".rhai").unwrap_or(path);
    FILES.iter().find(|(p, _)| *p == path).map(|(_, s)| *s)
}

/// Names of embedded builders (`qemu`, `ssh_host`, ...).
pub fn builders() -> impl Iterator<Item = &'static str> {
    FILES
        .iter()
        .filter_map(|(p, _)| p.strip_prefix("builders/"))
}

/// Names of embedded post-processors.
pub fn post_processors() -> impl Iterator<Item = &'static str> {
    FILES.iter().filter_map(|(p, _)| p.strip_prefix("post/"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_embedded_script_compiles() {
        let engine = super::super::engine::hardened(super::super::engine::Limits::default());
        for (path, src) in super::FILES {
            if let Err(e) = engine.compile(src) {
                panic!("scripts/{path}.rhai: {e}");
            }
        }
    }
}
