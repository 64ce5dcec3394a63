//! `wasi:sockets/ip-name-lookup`, answered by kiln: the guest's `resolve-addresses`
//! goes to [`NetCap::lookup`] (checked per name against the `net` grant, audited),
//! never to wasmtime-wasi's resolver, which would look up any name it is given.
//!
//! The interface is defined here in full (its resource and three functions) in place
//! of wasmtime-wasi's, the way `wasm::host::fs_audit` wraps `open-at`; the network
//! resource and the error and address types are wasmtime-wasi's own.

use std::net::IpAddr;
use std::sync::Arc;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime_wasi::p2::Network;
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress};
use wasmtime_wasi_io::poll::{DynPollable, Pollable, subscribe};

use super::{LookupError, NetCap};
use crate::wasm::host::HostState;

/// The instance kiln defines (the version wasmtime-wasi 48 implements; guests built
/// against any 0.2.x link to it).
const IP_NAME_LOOKUP: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// The step's network handle, in the store when the step holds `net`.
pub(crate) struct NetHandle(pub Arc<NetCap>);

/// One lookup's answer: already complete when the guest gets it.
pub struct AddressStream {
    addrs: std::vec::IntoIter<IpAddr>,
}

#[async_trait::async_trait]
impl Pollable for AddressStream {
    async fn ready(&mut self) {}
}

fn error_code(e: &LookupError) -> ErrorCode {
    match e {
        LookupError::Denied(_) => ErrorCode::AccessDenied,
        LookupError::Invalid(_) => ErrorCode::InvalidArgument,
        LookupError::Unresolvable { .. } => ErrorCode::NameUnresolvable,
    }
}

type Out<T> = wasmtime::Result<(T,)>;

/// Defines `wasi:sockets/ip-name-lookup` on `l` over the store's [`NetHandle`].
pub(crate) fn add_to_linker(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let mut inst = l.instance(IP_NAME_LOOKUP)?;
    inst.resource(
        "resolve-address-stream",
        ResourceType::host::<AddressStream>(),
        |mut store, rep| {
            store
                .data_mut()
                .table
                .delete(Resource::<AddressStream>::new_own(rep))?;
            Ok(())
        },
    )?;
    inst.func_wrap_async(
        "resolve-addresses",
        |mut store: StoreContextMut<'_, HostState>,
         (network, name): (Resource<Network>, String)| {
            Box::new(async move {
                // The network handle is the capability to call this; it must be real.
                store.data().table.get(&network)?;
                let Some(net) = store.data().handles.get::<NetHandle>().map(|h| h.0.clone()) else {
                    return Ok((Err(ErrorCode::AccessDenied),)) as Out<_>;
                };
                let res = match net.lookup(&name).await {
                    Ok(addrs) => Ok(store.data_mut().table.push(AddressStream {
                        addrs: addrs.into_iter(),
                    })?),
                    Err(e) => Err(error_code(&e)),
                };
                Ok((res,))
            })
        },
    )?;
    inst.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        |mut store: StoreContextMut<'_, HostState>,
         (this,): (Resource<AddressStream>,)|
         -> Out<Result<Option<IpAddress>, ErrorCode>> {
            let stream = store.data_mut().table.get_mut(&this)?;
            Ok((Ok(stream.addrs.next().map(IpAddress::from)),))
        },
    )?;
    inst.func_wrap(
        "[method]resolve-address-stream.subscribe",
        |mut store: StoreContextMut<'_, HostState>,
         (this,): (Resource<AddressStream>,)|
         -> Out<Resource<DynPollable>> {
            Ok((subscribe(&mut store.data_mut().table, this)?,))
        },
    )?;
    Ok(())
}
