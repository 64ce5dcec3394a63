//! `import` resolution: kiln's embedded library (`import "kiln:builders/qemu"`) and
//! `.rhai` files inside the project, read through the project's cap-std `Dir`. Nothing
//! else on the host can be imported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rhai::module_resolvers::ModuleResolver;
use rhai::{Engine, EvalAltResult, Module, Position, Scope, Shared};

use super::error::Sources;
use super::stdlib;
use crate::caps::Project;

pub struct KilnResolver {
    project: Project,
    sources: Arc<Mutex<Sources>>,
    cache: Mutex<HashMap<String, Shared<Module>>>,
}

impl KilnResolver {
    pub fn new(project: Project, sources: Arc<Mutex<Sources>>) -> Self {
        KilnResolver {
            project,
            sources,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

/// Reads a script by import path: `kiln:...` from the embedded library, anything else
/// from the project (".rhai" appended when missing).
pub fn read_script(project: &Project, path: &str) -> Result<(String, String), String> {
    if let Some(rest) = path.strip_prefix("kiln:") {
        return stdlib::get(rest)
            .map(|s| (format!("kiln:{rest}"), s.to_string()))
            .ok_or_else(|| format!("no module {path:?} in kiln's library"));
    }
    let file = if path.ends_with(".rhai") {
        path.to_string()
    } else {
        format!("{path}.rhai")
    };
    project
        .dir()
        .read_to_string(&file)
        .map(|text| (file.clone(), text))
        .map_err(|e| format!("cannot import {file:?} from the project: {e}"))
}

/// Compiles one script, registering its text for error messages and naming it as
/// the AST's source so errors point into the right file.
pub fn compile_source(
    engine: &Engine,
    sources: &Mutex<Sources>,
    name: &str,
    text: &str,
    pos: Position,
) -> Result<rhai::AST, Box<EvalAltResult>> {
    sources
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .add(name, text);
    let mut ast = engine.compile(text).map_err(|e| {
        Box::new(EvalAltResult::ErrorInModule(
            name.to_string(),
            Box::new(e.into()),
            pos,
        ))
    })?;
    ast.set_source(name);
    Ok(ast)
}

impl ModuleResolver for KilnResolver {
    fn resolve(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<Shared<Module>, Box<EvalAltResult>> {
        if let Some(m) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
        {
            return Ok(m.clone());
        }
        let (name, text) = read_script(&self.project, path)
            .map_err(|msg| Box::new(EvalAltResult::ErrorRuntime(msg.into(), pos)))?;
        let ast = compile_source(engine, &self.sources, &name, &text, pos)?;
        let module = Module::eval_ast_as_new(Scope::new(), &ast, engine)
            .map_err(|e| Box::new(EvalAltResult::ErrorInModule(name.clone(), e, pos)))?;
        let module: Shared<Module> = module.into();
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_string(), module.clone());
        Ok(module)
    }
}
