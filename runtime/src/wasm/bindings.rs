//! The host side of `guest-sdk/wit`: one `bindgen!` for the provisioner world. Each
//! interface's `Host` trait is implemented by the capability that gates it
//! (`caps::<x>::wasm`), or by [`super::host::log`] for the always-present log.

wasmtime::component::bindgen!({
    path: "../guest-sdk/wit",
    world: "provisioner",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::kiln::host::types::{Error as WitError, ExecOutput as WitExecOutput};
pub use self::kiln::host::{log, machine, metadata, secrets, types};
