//! Host capabilities, one module each. Every call into them from a script or a guest
//! passes the broker in `caps` first.

pub mod httpd;
pub mod image;
pub mod machine;
pub mod oci;
pub mod qemu;
pub mod rootfs;
pub mod ssh;
pub mod vm_cache;
