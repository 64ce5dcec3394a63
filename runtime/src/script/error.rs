//! Script errors with file, line, column and the offending line, like a compiler.

use std::collections::HashMap;
use std::fmt;

use rhai::{EvalAltResult, Position};

use crate::context::StepError;

/// A failure in a script, located.
#[derive(Debug, Clone)]
pub struct ScriptError {
    pub message: String,
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub source_line: Option<String>,
}

impl std::error::Error for ScriptError {}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message)?,
            (Some(l), None) => write!(f, "{}:{l}: {}", self.file, self.message)?,
            _ => write!(f, "{}: {}", self.file, self.message)?,
        }
        if let (Some(l), Some(src)) = (self.line, &self.source_line) {
            let num = l.to_string();
            let pad = " ".repeat(num.len());
            write!(f, "\n{pad} |\n{num} | {src}")?;
            if let Some(c) = self.column {
                write!(f, "\n{pad} | {}^", " ".repeat(c.saturating_sub(1)))?;
            }
        }
        Ok(())
    }
}

/// Source texts by file name, so errors can quote the offending line, and the names of
/// the functions scripts can call, so an unknown one gets a "did you mean".
#[derive(Debug, Clone, Default)]
pub struct Sources {
    files: HashMap<String, String>,
    functions: Vec<String>,
}

/// The names of every function registered on `engine` (for suggestions).
pub fn function_names(engine: &rhai::Engine) -> Vec<String> {
    let mut names: Vec<String> = engine
        .gen_fn_signatures(false)
        .into_iter()
        .filter_map(|sig| {
            let name = sig.split(['(', ' ']).next()?.trim();
            (!name.is_empty() && !name.starts_with("get$") && !name.starts_with("set$"))
                .then(|| name.to_string())
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

impl Sources {
    pub fn add(&mut self, name: &str, text: &str) {
        self.files.insert(name.to_string(), text.to_string());
    }

    /// Adds names a misspelt call may be compared with.
    pub fn add_functions(&mut self, names: impl IntoIterator<Item = String>) {
        self.functions.extend(names);
        self.functions.sort_unstable();
        self.functions.dedup();
    }

    /// Locates `err` in the innermost script it came from. `default_file` is the file
    /// being evaluated when the error carries no source of its own.
    pub fn locate(&self, err: &EvalAltResult, default_file: &str) -> ScriptError {
        let (inner, file, pos) = innermost(err, default_file);
        let mut message = message_of(inner);
        if let EvalAltResult::ErrorFunctionNotFound(sig, _) = inner {
            let name = sig.split(['(', ' ']).next().unwrap_or(sig).trim();
            if let Some(near) =
                crate::suggest::nearest(name, self.functions.iter().map(String::as_str))
            {
                message.push_str(&format!(" (did you mean `{near}`?)"));
            }
        }
        let source_line = pos.line().and_then(|l| {
            self.files
                .get(&file)
                .and_then(|t| t.lines().nth(l - 1))
                .map(|s| s.to_string())
        });
        ScriptError {
            message,
            file,
            line: pos.line(),
            column: pos.position(),
            source_line,
        }
    }
}

/// Walks into function-call and module wrappers to the error that actually happened,
/// tracking which file it is in.
fn innermost<'a>(
    err: &'a EvalAltResult,
    default_file: &str,
) -> (&'a EvalAltResult, String, Position) {
    let mut file = default_file.to_string();
    let mut cur = err;
    let mut pos = err.position();
    loop {
        match cur {
            EvalAltResult::ErrorInFunctionCall(_, src, inner, p) => {
                if !p.is_none() {
                    pos = *p;
                }
                if !src.is_empty() {
                    file = src.clone();
                }
                cur = inner;
            }
            EvalAltResult::ErrorInModule(path, inner, p) => {
                if !p.is_none() {
                    pos = *p;
                }
                file = path.clone();
                cur = inner;
            }
            other => {
                if !other.position().is_none() {
                    pos = other.position();
                }
                return (other, file, pos);
            }
        }
    }
}

/// The message without Rhai's " (line x, position y)" suffix (we print our own).
fn message_of(err: &EvalAltResult) -> String {
    match err {
        EvalAltResult::ErrorRuntime(v, _) => {
            if let Some(s) = v.clone().try_cast::<StepFailed>() {
                s.0
            } else if let Some(e) = v.clone().try_cast::<StepError>() {
                e.to_string()
            } else {
                v.to_string()
            }
        }
        EvalAltResult::ErrorTerminated(v, _) => {
            if let Some(hit) = v.clone().try_cast::<crate::script::engine::LimitHit>() {
                return hit.0;
            }
            let s = v.to_string();
            if s.is_empty() { "cancelled".into() } else { s }
        }
        other => strip_position(&other.to_string()),
    }
}

/// Drops Rhai's trailing " (line x, position y)" from a message.
fn strip_position(s: &str) -> String {
    match s.rfind(" (line ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s.to_string(),
    }
}

/// A provisioning step failed. Carried through Rhai as the error value so the
/// orchestrator reports the step's own message (which already names the step and,
/// for closures, the script position) instead of the builder line that called
/// `ctx.provision`.
#[derive(Debug, Clone)]
pub struct StepFailed(pub String);

/// The error for a failed step.
pub fn step_failed(msg: String, pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        rhai::Dynamic::from(StepFailed(msg)),
        pos,
    ))
}

/// If `err` is (inside call wrappers) a step failure, its message.
pub fn as_step_failure(err: &EvalAltResult) -> Option<String> {
    let mut cur = err;
    loop {
        match cur {
            EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
            | EvalAltResult::ErrorInModule(_, inner, _) => cur = inner,
            EvalAltResult::ErrorRuntime(v, _) => {
                return v.clone().try_cast::<StepFailed>().map(|s| s.0);
            }
            _ => return None,
        }
    }
}

/// A machine call failed inside a script: the error keeps its kind (a lost
/// connection, a denial, a non-zero exit) through Rhai, so the runner can match on it.
pub fn step_error(e: StepError, pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(rhai::Dynamic::from(e), pos))
}

/// The typed failure inside `err` (through call wrappers), if a host call raised one.
pub fn step_error_of(err: &EvalAltResult) -> Option<StepError> {
    let mut cur = err;
    loop {
        match cur {
            EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
            | EvalAltResult::ErrorInModule(_, inner, _) => cur = inner,
            EvalAltResult::ErrorRuntime(v, _) => return v.clone().try_cast::<StepError>(),
            _ => return None,
        }
    }
}

/// A runtime error at `pos` (for host functions).
pub fn runtime_err(msg: impl Into<String>, pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(msg.into().into(), pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_error_has_file_line_col_and_line() {
        let engine = crate::script::engine::hardened(Default::default());
        let src = "let a = 1;\nlet b = ;\n";
        let err = engine.compile(src).unwrap_err();
        let mut sources = Sources::default();
        sources.add("build.rhai", src);
        let e = sources.locate(&EvalAltResult::from(err), "build.rhai");
        assert_eq!(e.line, Some(2));
        let text = e.to_string();
        assert!(text.starts_with("build.rhai:2:"), "{text}");
        assert!(text.contains("2 | let b = ;"), "{text}");
    }
}
