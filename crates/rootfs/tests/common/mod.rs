//! Helpers shared by the integration tests (each test binary uses a subset).
#![allow(dead_code)]

use kiln_rootfs::testkit::Layers;
use kiln_rootfs::{Container, ContainerConfig, ExecOutput, ExecRequest, InitProgram};

pub fn init() -> InitProgram {
    InitProgram::new(env!("CARGO_BIN_EXE_kiln-rootfs-init"))
}

/// A busybox image in one lower layer, ready to configure.
pub fn busybox() -> Layers {
    Layers::busybox().expect("building the busybox test rootfs (run tools/setup.d/rootfs.sh)")
}

pub async fn start(cfg: ContainerConfig) -> Container {
    Container::start(cfg)
        .await
        .expect("the container should start (tests run as root on a kernel with overlayfs)")
}

pub async fn sh(c: &Container, cmd: &str) -> ExecOutput {
    c.exec(&ExecRequest::new(cmd), &mut |_, _| {})
        .await
        .unwrap_or_else(|e| panic!("exec {cmd:?}: {e}"))
}

/// stdout of a command that must succeed.
pub async fn run(c: &Container, cmd: &str) -> String {
    let out = sh(c, cmd).await;
    assert!(
        out.success(),
        "{cmd:?} failed with {} {:?}: {}",
        out.exit_code,
        out.signal,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
