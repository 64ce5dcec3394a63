//! `kiln:host/metadata` for WASM guests, over [`MetadataCap`]: what a provisioner baked
//! (a Consul service, a label) for its build's registry record. Linked when the step
//! holds `metadata`; every report is still checked and audited.

use kiln_registry::RegistryError;
use kiln_registry::provenance::ConsulService;
use wasmtime::component::{HasData, Linker};

use super::MetadataCap;
use crate::caps::ScopeError;
use crate::wasm::WasmError;
use crate::wasm::bindings::{WitError, metadata};
use crate::wasm::host::{Adapter as WasmAdapter, HostState, Setup, StepEnv};

pub struct Adapter;

#[async_trait::async_trait]
impl WasmAdapter for Adapter {
    async fn attach(&self, env: &StepEnv, setup: &mut Setup<'_>) -> Result<bool, WasmError> {
        if !env.scope.grants().flag(&super::METADATA) {
            return Ok(false);
        }
        setup.handles.insert(MetadataCap::new(env.scope.clone()));
        Ok(true)
    }

    fn link(&self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        metadata::add_to_linker::<HostState, View>(linker, |s: &mut HostState| {
            MetadataView(s.handles.get_mut::<MetadataCap>())
        })
    }
}

struct View;
impl HasData for View {
    type Data<'a> = MetadataView<'a>;
}

pub struct MetadataView<'a>(Option<&'a mut MetadataCap>);

impl MetadataView<'_> {
    fn cap(&self) -> Result<&MetadataCap, WitError> {
        self.0.as_deref().ok_or_else(|| {
            WitError::Denied(
                "this step does not hold metadata; add allow: #{ metadata: true }".into(),
            )
        })
    }
}

fn to_wit(e: ScopeError<RegistryError>) -> WitError {
    match e {
        ScopeError::Denied(d) => WitError::Denied(d.to_string()),
        ScopeError::Failed(e) => WitError::Failed(e.to_string()),
    }
}

impl metadata::Host for MetadataView<'_> {
    async fn add_consul_service(
        &mut self,
        service: metadata::ConsulService,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let cap = match self.cap() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        Ok(cap
            .consul_service(ConsulService {
                name: service.name,
                port: service.port,
                tags: service.tags,
            })
            .map_err(to_wit))
    }

    async fn set_label(
        &mut self,
        key: String,
        value: String,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let cap = match self.cap() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        Ok(cap.label(&key, &value).map_err(to_wit))
    }
}
