//! `secrets`: reading named secrets (`allow: #{ secrets: ["DB_PW"] }`). Build scripts
//! name secrets at declare time with `secret("NAME")` (an opaque handle); WASM guests
//! read the names their step was granted through `kiln:host/secrets`. A value read is
//! registered with the redactor before it is returned, so nothing kiln prints or logs
//! carries it.

pub mod wasm;

use super::broker::{Scope, ScopeError};
use super::grants::Use;
use super::spec::{CapSpec, Grammar};
use crate::ui::Redactor;

pub static SPEC: CapSpec = CapSpec {
    key: "secrets",
    summary: "read named secrets from kiln's environment",
    grammar: Grammar::Names { wildcard: false },
    wit: &["kiln:host/secrets"],
    example: r#"allow: #{ secrets: ["NAME"] }"#,
};

pub struct Cap;

impl super::Capability for Cap {
    fn spec(&self) -> &'static CapSpec {
        &SPEC
    }
    fn wasm(&self) -> Option<&'static dyn crate::wasm::host::Adapter> {
        Some(&wasm::Adapter)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("secret {0:?} is not set in kiln's environment: export {0}=... where kiln runs")]
pub struct NotSet(pub String);

/// Where secret values come from: kiln's environment in a build, a table in tests.
pub type SecretSource = std::sync::Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// kiln's own environment.
pub fn from_environment() -> SecretSource {
    std::sync::Arc::new(|name| std::env::var(name).ok())
}

/// Secrets as one caller may read them.
#[derive(Clone)]
pub struct SecretsCap {
    scope: Scope,
    redactor: Redactor,
    source: SecretSource,
}

impl SecretsCap {
    pub fn new(scope: Scope, redactor: Redactor, source: SecretSource) -> Self {
        SecretsCap {
            scope,
            redactor,
            source,
        }
    }

    /// The value of `name`, if the caller holds it and it is set.
    pub fn get(&self, name: &str) -> Result<String, ScopeError<NotSet>> {
        self.scope.run_sync(&Use::name(&SPEC, name), "get", || {
            let value = (self.source)(name).ok_or_else(|| NotSet(name.to_string()))?;
            self.redactor.add(name, &value);
            Ok(value)
        })
    }
}
