//! `kiln:host/secrets` for WASM guests, over [`SecretsCap`]. Linked only when the step
//! holds at least one secret; each name is still checked on every call.

use wasmtime::component::{HasData, Linker};

use super::SecretsCap;
use crate::caps::ScopeError;
use crate::wasm::WasmError;
use crate::wasm::bindings::{WitError, secrets};
use crate::wasm::host::{Adapter as WasmAdapter, HostState, Setup, StepEnv};

pub struct Adapter;

#[async_trait::async_trait]
impl WasmAdapter for Adapter {
    async fn attach(&self, env: &StepEnv, setup: &mut Setup<'_>) -> Result<bool, WasmError> {
        if !env.scope.grants().holds(&super::SPEC) {
            return Ok(false);
        }
        setup.handles.insert(SecretsCap::new(
            env.scope.clone(),
            env.redactor.clone(),
            env.secret_source.clone(),
        ));
        Ok(true)
    }

    fn link(&self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        secrets::add_to_linker::<HostState, View>(linker, |s: &mut HostState| {
            SecretsView(s.handles.get_mut::<SecretsCap>())
        })
    }
}

struct View;
impl HasData for View {
    type Data<'a> = SecretsView<'a>;
}

pub struct SecretsView<'a>(Option<&'a mut SecretsCap>);

impl secrets::Host for SecretsView<'_> {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, WitError>> {
        let Some(cap) = self.0.as_deref() else {
            return Ok(Err(WitError::Denied(format!(
                "this step holds no secrets; add allow: #{{ secrets: [{name:?}] }}"
            ))));
        };
        Ok(cap.get(&name).map_err(|e| match e {
            ScopeError::Denied(d) => WitError::Denied(d.to_string()),
            ScopeError::Failed(n) => WitError::NotFound(n.to_string()),
        }))
    }
}
