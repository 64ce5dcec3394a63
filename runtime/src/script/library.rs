//! Compiled builder and post-processor scripts, shared by declaration (their
//! `options()`) and execution (their `run()`), each compiled once per run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rhai::{AST, Engine, EvalAltResult};

use super::error::{Sources, runtime_err};
use super::resolver::{compile_source, read_script};
use crate::caps::Project;
use crate::plan::ScriptRef;

/// Compiled builder and post-processor scripts, shared by declaration and execution.
pub struct Library {
    project: Project,
    sources: Arc<Mutex<Sources>>,
    cache: Mutex<HashMap<String, Arc<AST>>>,
}

impl Library {
    pub fn new(project: Project, sources: Arc<Mutex<Sources>>) -> Self {
        Library {
            project,
            sources,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn sources(&self) -> &Arc<Mutex<Sources>> {
        &self.sources
    }

    /// The project the scripts are read from.
    pub fn project(&self) -> &Project {
        &self.project
    }

    /// Compiles (once) the script behind `r`.
    pub fn ast(&self, engine: &Engine, r: &ScriptRef) -> Result<Arc<AST>, Box<EvalAltResult>> {
        let key = r.to_string();
        if let Some(ast) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(ast.clone());
        }
        let import_path = match r {
            ScriptRef::Embedded(n) => format!("kiln:{n}"),
            ScriptRef::Project(p) => p.clone(),
        };
        let (name, text) = read_script(&self.project, &import_path)
            .map_err(|m| runtime_err(m, rhai::Position::NONE))?;
        let ast = compile_source(engine, &self.sources, &name, &text, rhai::Position::NONE)?;
        let ast = Arc::new(ast);
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, ast.clone());
        Ok(ast)
    }
}
