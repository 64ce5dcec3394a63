//! Refused WASI file opens, audited. wasmtime-wasi does the work and the confinement
//! (a preopen is a cap-std `Dir`); this wrapper only observes `open-at` failures that
//! mean "outside the grant" (`..`, absolute paths, symlinks leading out, writes to a
//! read-only grant) and writes them to the audit log as denials.

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};

use super::HostState;
use crate::caps::{Use, fs};

/// The WASI filesystem `types` instance name our bindings register under.
const FS_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Replaces `descriptor.open-at` with a wrapper that reports refused opens (`..`,
/// absolute paths, symlinks leading out, writes to read-only grants) to the audit log.
/// wasmtime-wasi still does the work and the confinement; this only observes.
pub(super) fn audit_open_at(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::filesystem::WasiFilesystemView;
    use wasmtime_wasi::p2::bindings::filesystem::types::{
        Descriptor, DescriptorFlags, ErrorCode, Host as _, HostDescriptor, OpenFlags, PathFlags,
    };

    l.allow_shadowing(true);
    let mut inst = l.instance(FS_TYPES)?;
    inst.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, HostState>,
         (fd, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                let writing = flags.contains(DescriptorFlags::WRITE)
                    || open_flags.intersects(OpenFlags::CREATE | OpenFlags::TRUNCATE);
                let res = {
                    let mut view = store.data_mut().filesystem();
                    HostDescriptor::open_at(
                        &mut view,
                        fd,
                        path_flags,
                        path.clone(),
                        open_flags,
                        flags,
                    )
                    .await
                };
                let res = match res {
                    Ok(d) => Ok(d),
                    Err(e) => Err(store.data_mut().filesystem().convert_error_code(e)?),
                };
                if let Err(code) = &res
                    && matches!(
                        code,
                        ErrorCode::NotPermitted | ErrorCode::Access | ErrorCode::ReadOnly
                    )
                {
                    let cap = if writing { &fs::WRITE } else { &fs::READ };
                    store
                        .data()
                        .scope
                        .denied_by_sandbox(&Use::path(cap, path.clone()), &format!("{code:?}"));
                }
                Ok((res,))
            })
        },
    )?;
    l.allow_shadowing(false);
    Ok(())
}
