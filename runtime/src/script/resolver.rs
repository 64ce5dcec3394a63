//! `import` resolution: kiln's embedded library (`import "kiln:builders/qemu"`) and
//! `.rhai` files inside the project, read through the project's cap-std `Dir`. Nothing
//! else on the host can be imported.
//!
//! Imports form a chain per thread (a script imports a module, which imports another
//! while it is being evaluated). The resolver keeps that chain: a module that is
//! already on it is an import cycle, and a chain deeper than [`MAX_IMPORT_DEPTH`] is
//! refused, so any input ends in an error naming the chain, never in a stack overflow.

use std::collections::HashMap;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use rhai::module_resolvers::ModuleResolver;
use rhai::{Engine, EvalAltResult, Module, Position, Scope, Shared};

use super::error::Sources;
use super::stdlib;
use crate::caps::Project;

/// Deepest chain of nested imports (the build script not counted).
pub const MAX_IMPORT_DEPTH: usize = 16;

pub struct KilnResolver {
    project: Project,
    sources: Arc<Mutex<Sources>>,
    cache: Mutex<HashMap<String, Shared<Module>>>,
    /// The script being evaluated, which is the bottom of every chain.
    root: Option<String>,
    /// Modules being evaluated right now, per thread, outermost first.
    chains: Mutex<HashMap<ThreadId, Vec<String>>>,
}

impl KilnResolver {
    pub fn new(project: Project, sources: Arc<Mutex<Sources>>) -> Self {
        KilnResolver {
            project,
            sources,
            cache: Mutex::new(HashMap::new()),
            root: None,
            chains: Mutex::new(HashMap::new()),
        }
    }

    /// Names the project script being evaluated (`build.rhai`), so importing it from
    /// itself or from a module it imports is a cycle too.
    pub fn with_root(mut self, script: &str) -> Self {
        self.root = Some(module_key(script));
        self
    }

    /// Puts `key` on this thread's chain, or says why it cannot go there.
    fn enter(&self, key: &str) -> Result<ChainGuard<'_>, String> {
        let mut chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
        let chain = chains.entry(std::thread::current().id()).or_default();
        let shown = |chain: &[String]| {
            self.root
                .iter()
                .chain(chain.iter())
                .map(String::as_str)
                .chain(std::iter::once(key))
                .collect::<Vec<_>>()
                .join(" -> ")
        };
        if self.root.as_deref() == Some(key) || chain.iter().any(|k| k == key) {
            return Err(format!(
                "import cycle: {}; a module cannot import itself, directly or through others",
                shown(chain)
            ));
        }
        if chain.len() >= MAX_IMPORT_DEPTH {
            return Err(format!(
                "imports are nested more than {MAX_IMPORT_DEPTH} deep: {}",
                shown(chain)
            ));
        }
        chain.push(key.to_string());
        Ok(ChainGuard {
            resolver: self,
            thread: std::thread::current().id(),
        })
    }
}

/// Takes a module off its thread's chain when its evaluation ends, however it ends.
struct ChainGuard<'a> {
    resolver: &'a KilnResolver,
    thread: ThreadId,
}

impl Drop for ChainGuard<'_> {
    fn drop(&mut self) {
        let mut chains = self
            .resolver
            .chains
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(chain) = chains.get_mut(&self.thread) {
            chain.pop();
            if chain.is_empty() {
                chains.remove(&self.thread);
            }
        }
    }
}

/// One name per module, however the import spelt it: `kiln:x` as is, a project file
/// with `.rhai` and without `./` or empty components (`./lib//a` is `lib/a.rhai`).
fn module_key(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("kiln:") {
        let rest = rest.strip_suffix(".rhai").unwrap_or(rest);
        return format!("kiln:{rest}");
    }
    let file = if path.ends_with(".rhai") {
        path.to_string()
    } else {
        format!("{path}.rhai")
    };
    let parts: Vec<String> = Path::new(&file)
        .components()
        .filter_map(|c| match c {
            Component::CurDir => None,
            Component::RootDir => Some(String::new()),
            other => Some(other.as_os_str().to_string_lossy().into_owned()),
        })
        .collect();
    parts.join("/")
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
        let key = module_key(path);
        if let Some(m) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(m.clone());
        }
        let _on_chain = self
            .enter(&key)
            .map_err(|msg| Box::new(EvalAltResult::ErrorRuntime(msg.into(), pos)))?;
        let (name, text) = read_script(&self.project, path)
            .map_err(|msg| Box::new(EvalAltResult::ErrorRuntime(msg.into(), pos)))?;
        let ast = compile_source(engine, &self.sources, &name, &text, pos)?;
        let module = Module::eval_ast_as_new(Scope::new(), &ast, engine)
            .map_err(|e| Box::new(EvalAltResult::ErrorInModule(name.clone(), e, pos)))?;
        let module: Shared<Module> = module.into();
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, module.clone());
        Ok(module)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(files: &[(&str, &str)]) -> (tempfile::TempDir, Project) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let project = Project::open(dir.path()).unwrap();
        (dir, project)
    }

    fn eval(files: &[(&str, &str)], main: &str) -> Result<(), String> {
        let (_dir, project) = project(files);
        let mut engine = crate::script::engine::hardened(Default::default());
        engine.set_module_resolver(
            KilnResolver::new(project, Arc::default()).with_root("build.rhai"),
        );
        engine.run(main).map_err(|e| e.to_string())
    }

    #[test]
    fn module_keys_name_one_file_one_way() {
        assert_eq!(module_key("a"), "a.rhai");
        assert_eq!(module_key("./lib//a.rhai"), "lib/a.rhai");
        assert_eq!(module_key("kiln:builders/qemu.rhai"), "kiln:builders/qemu");
    }

    #[test]
    fn cycles_are_errors_that_name_the_chain() {
        let files = [
            ("a.rhai", r#"import "b" as b;"#),
            ("b.rhai", r#"import "./a.rhai" as a;"#),
        ];
        let e = eval(&files, r#"import "a" as a;"#).unwrap_err();
        assert!(
            e.contains("import cycle: build.rhai -> a.rhai -> b.rhai -> a.rhai"),
            "{e}"
        );
        // The build script importing itself.
        let e = eval(
            &[("build.rhai", r#"import "build" as me;"#)],
            r#"import "build" as me;"#,
        )
        .unwrap_err();
        assert!(e.contains("import cycle: build.rhai -> build.rhai"), "{e}");
        // A module importing itself.
        let e = eval(&[("s.rhai", r#"import "s" as s;"#)], r#"import "s" as s;"#).unwrap_err();
        assert!(e.contains("s.rhai -> s.rhai"), "{e}");
    }

    #[test]
    fn deep_chains_stop_at_the_limit_and_diamonds_are_fine() {
        let files: Vec<(String, String)> = (0..40)
            .map(|i| {
                (
                    format!("m{i}.rhai"),
                    format!("import \"m{}\" as next;", i + 1),
                )
            })
            .chain(std::iter::once(("m40.rhai".to_string(), "42".to_string())))
            .collect();
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let e = eval(&refs, r#"import "m0" as m;"#).unwrap_err();
        assert!(e.contains("nested more than 16 deep"), "{e}");
        // The same module imported twice, not nested, is not a cycle.
        let files = [
            ("a.rhai", r#"import "c" as c; export const A = c::C;"#),
            ("b.rhai", r#"import "c" as c; export const B = c::C;"#),
            ("c.rhai", "export const C = 1;"),
        ];
        eval(
            &files,
            r#"import "a" as a; import "b" as b; if a::A + b::B != 2 { throw "x" }"#,
        )
        .unwrap();
    }
}
