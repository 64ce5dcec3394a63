//! `kiln module inspect`: what a component imports and which grants it would need,
//! read from the binary without compiling or running it.

use std::fmt;

use wasmparser::{Parser, Payload};

use super::WasmError;
use super::cache::sha256_hex;
use crate::caps::{CapSpec, TABLE};

/// What a component declares, and the `allow` entries it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// SHA-256 of the bytes (hex).
    pub sha256: String,
    pub size: usize,
    /// Top-level imports, e.g. `kiln:host/machine@0.1.0`.
    pub imports: Vec<String>,
    /// Top-level exports, e.g. `provision`.
    pub exports: Vec<String>,
    /// The capabilities its imports need (from the capability table), in table order.
    pub needs: Vec<&'static CapSpec>,
    /// Can use WASI files; it sees only directories granted with `read` / `write`.
    pub files: bool,
    /// Imports kiln does not provide: it will not link, whatever it is granted.
    pub unsupported: Vec<String>,
}

impl ComponentInfo {
    /// Whether this is a kiln provisioner (exports `provision`).
    pub fn is_provisioner(&self) -> bool {
        self.exports.iter().any(|e| e == "provision")
    }

    /// The `allow` map that lets the component link, e.g. `#{ machine: true, secrets: ["NAME"] }`.
    pub fn allow_line(&self) -> String {
        let parts: Vec<&str> = self.needs.iter().map(|c| c.example_entry()).collect();
        if parts.is_empty() {
            "#{}".to_string()
        } else {
            format!("#{{ {} }}", parts.join(", "))
        }
    }
}

impl fmt::Display for ComponentInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "sha256:   {}", self.sha256)?;
        writeln!(f, "size:     {} bytes", self.size)?;
        writeln!(
            f,
            "exports:  {}",
            if self.exports.is_empty() {
                "(none)".into()
            } else {
                self.exports.join(", ")
            }
        )?;
        writeln!(f, "imports:")?;
        for i in &self.imports {
            writeln!(f, "  {i}")?;
        }
        writeln!(f, "needs:    allow: {}", self.allow_line())?;
        if self.files {
            writeln!(
                f,
                "files:    may read/write files; it sees only directories granted with read: [\"dir\"] / write: [\"dir\"]"
            )?;
        }
        for i in &self.unsupported {
            writeln!(
                f,
                "warning:  imports {i}, which kiln does not provide; it will not link, whatever it is granted"
            )?;
        }
        if !self.is_provisioner() {
            writeln!(
                f,
                "warning:  does not export `provision`; it is not a kiln provisioner"
            )?;
        }
        Ok(())
    }
}

/// Reads a component's imports and exports and derives the grants it needs.
pub fn inspect(wasm: &[u8]) -> Result<ComponentInfo, WasmError> {
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut depth = 0usize;
    let mut saw_component = false;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| WasmError::Invalid(e.to_string()))?;
        match payload {
            Payload::Version { encoding, .. } => {
                if depth == 0 {
                    if encoding != wasmparser::Encoding::Component {
                        return Err(WasmError::Invalid(
                            "this is a core WebAssembly module, not a component; build for wasm32-wasip2".into(),
                        ));
                    }
                    saw_component = true;
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(|e| WasmError::Invalid(e.to_string()))?;
                    imports.push(import.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|e| WasmError::Invalid(e.to_string()))?;
                    exports.push(export.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    if !saw_component {
        return Err(WasmError::Invalid("empty input".into()));
    }
    let needs = TABLE
        .iter()
        .map(|c| c.spec())
        .filter(|spec| imports.iter().any(|i| spec.gates_import(i)))
        .collect();
    let unsupported = imports
        .iter()
        .filter(|i| !super::host::always_linked(i) && crate::caps::gating(i).is_none())
        .cloned()
        .collect();
    Ok(ComponentInfo {
        sha256: sha256_hex(wasm),
        size: wasm.len(),
        files: imports.iter().any(|i| i.starts_with("wasi:filesystem/")),
        needs,
        unsupported,
        imports,
        exports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage_and_core_modules() {
        assert!(matches!(inspect(b"hello"), Err(WasmError::Invalid(_))));
        // The smallest core module: magic + version 1.
        let core = [0u8, b'a', b's', b'm', 1, 0, 0, 0];
        let err = inspect(&core).unwrap_err().to_string();
        assert!(err.contains("not a component"), "{err}");
    }

    #[test]
    fn allow_line_lists_needed_grants() {
        let info = ComponentInfo {
            sha256: String::new(),
            size: 0,
            imports: vec![],
            exports: vec!["provision".into()],
            needs: vec![&crate::caps::machine::SPEC, &crate::caps::secrets::SPEC],
            files: false,
            unsupported: vec![],
        };
        assert_eq!(info.allow_line(), "#{ machine: true, secrets: [\"NAME\"] }");
        assert!(info.is_provisioner());
    }
}
