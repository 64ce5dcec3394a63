//! The one place the Rhai engine is configured. This is a security control: a script
//! is hostile until proven otherwise, so every limit is set here, `eval` is off, and
//! only kiln's own resolver can load modules.

use std::sync::Arc;

use rhai::packages::{Package, StandardPackage};
use rhai::{Dynamic, Engine};

/// Resource limits for one engine.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Operations per evaluation (0 = unlimited; cancellation still applies).
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    pub max_modules: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 50_000_000,
            max_call_levels: 64,
            max_string_size: 16 << 20,
            max_array_size: 1 << 20,
            max_map_size: 1 << 16,
            max_modules: 64,
        }
    }
}

/// Returns true when the evaluation should stop (Ctrl-C, a step timeout).
pub type CancelCheck = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// A hardened engine with the standard package and nothing else registered.
pub fn hardened(limits: Limits) -> Engine {
    let mut engine = Engine::new_raw();
    engine.register_global_module(StandardPackage::new().as_shared_module());
    engine.disable_symbol("eval");
    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(limits.max_call_levels);
    engine.set_max_expr_depths(128, 64);
    engine.set_max_string_size(limits.max_string_size);
    engine.set_max_array_size(limits.max_array_size);
    engine.set_max_map_size(limits.max_map_size);
    engine.set_max_modules(limits.max_modules);
    engine.set_max_variables(10_000);
    engine.set_max_functions(10_000);
    engine.set_strict_variables(true);
    engine.set_fail_on_invalid_map_property(true);
    // No resolver until one is installed: `import` fails closed.
    engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    engine
}

/// Installs the cancellation hook: `check` runs every few hundred operations.
pub fn on_cancel(engine: &mut Engine, check: CancelCheck) {
    engine.on_progress(move |ops| {
        if ops % 256 != 0 {
            return None;
        }
        check().map(Dynamic::from)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_is_disabled() {
        let e = hardened(Limits::default());
        let err = e.eval::<i64>(r#"eval("1")"#).unwrap_err();
        assert!(err.to_string().contains("eval"), "{err}");
    }

    #[test]
    fn imports_fail_closed() {
        let e = hardened(Limits::default());
        assert!(e.eval::<()>(r#"import "/etc/passwd" as p;"#).is_err());
    }

    #[test]
    fn infinite_loops_hit_the_operation_limit() {
        let e = hardened(Limits {
            max_operations: 100_000,
            ..Limits::default()
        });
        let err = e.eval::<()>("loop {}").unwrap_err();
        assert!(err.to_string().contains("Too many operations"), "{err}");
    }

    #[test]
    fn cancellation_stops_a_running_script() {
        let mut e = hardened(Limits {
            max_operations: 0,
            ..Limits::default()
        });
        let start = std::time::Instant::now();
        on_cancel(
            &mut e,
            Arc::new(move || {
                (start.elapsed().as_millis() > 100).then(|| "interrupted".to_string())
            }),
        );
        let err = e.eval::<()>("loop {}").unwrap_err();
        assert!(
            matches!(*err, rhai::EvalAltResult::ErrorTerminated(..)),
            "{err}"
        );
    }

    #[test]
    fn huge_strings_are_refused() {
        let e = hardened(Limits {
            max_string_size: 1000,
            ..Limits::default()
        });
        assert!(
            e.eval::<String>(r#"let s = "x"; for i in 0..20 { s += s; } s"#)
                .is_err()
        );
    }
}
