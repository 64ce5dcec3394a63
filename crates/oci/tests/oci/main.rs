//! kiln-oci integration tests (one binary: link time matters on 2 cores). They run as
//! root (overlayfs mounts, device nodes) and start their own registries; install the
//! peers with tools/setup.d/registry.sh.

mod common;
mod hostile;
mod layers;
mod outputs;
mod registry;
