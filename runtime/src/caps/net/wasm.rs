//! `wasi:sockets` for WASM guests: linked only with a `net` grant, and every address
//! a guest connects to is checked through [`NetCap::connect`]. Only outgoing TCP is
//! allowed; listening and UDP are refused and audited. Name lookups are answered by
//! kiln, per granted name (`super::lookup`); wasmtime-wasi's resolver is never linked
//! and its lookups are switched off.

use std::sync::Arc;

use wasmtime::component::Linker;

use super::NetCap;
use crate::wasm::WasmError;
use crate::wasm::host::{Adapter as WasmAdapter, HostState, Setup, StepEnv};

pub struct Adapter;

#[async_trait::async_trait]
impl WasmAdapter for Adapter {
    async fn attach(&self, env: &StepEnv, setup: &mut Setup<'_>) -> Result<bool, WasmError> {
        if !env.scope.grants().holds(&super::SPEC) {
            return Ok(false);
        }
        let net = Arc::new(NetCap::resolve(env.scope.clone()).await);
        setup.handles.insert(super::lookup::NetHandle(net.clone()));
        let wasi = &mut *setup.wasi;
        wasi.allow_tcp(true);
        wasi.allow_udp(false);
        // Lookups go through `super::lookup` only.
        wasi.allow_ip_name_lookup(false);
        wasi.socket_addr_check(move |addr, use_| {
            use wasmtime_wasi::sockets::SocketAddrUse;
            let ok = match use_ {
                SocketAddrUse::TcpConnect => net.connect(addr).is_ok(),
                // Binding an ephemeral port is how a connect starts.
                SocketAddrUse::TcpBind if addr.ip().is_unspecified() && addr.port() == 0 => true,
                _ => {
                    net.refuse(addr, "only outgoing TCP connections are allowed");
                    false
                }
            };
            Box::pin(async move { ok })
        });
        Ok(true)
    }

    fn link(&self, l: &mut Linker<HostState>) -> wasmtime::Result<()> {
        use wasmtime_wasi::p2::bindings::sockets;
        use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView as _};
        let opts = sockets::network::LinkOptions::default();
        sockets::tcp_create_socket::add_to_linker::<HostState, WasiSockets>(l, |t| t.sockets())?;
        sockets::instance_network::add_to_linker::<HostState, WasiSockets>(l, |t| t.sockets())?;
        sockets::network::add_to_linker::<HostState, WasiSockets>(l, &opts, |t| t.sockets())?;
        super::lookup::add_to_linker(l)?;
        sockets::tcp::add_to_linker::<HostState, WasiSockets>(l, |t| t.sockets())?;
        sockets::udp::add_to_linker::<HostState, WasiSockets>(l, |t| t.sockets())?;
        sockets::udp_create_socket::add_to_linker::<HostState, WasiSockets>(l, |t| t.sockets())?;
        Ok(())
    }
}
