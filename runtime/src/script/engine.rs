//! The one place the Rhai engine is configured. This is a security control: a script
//! is hostile until proven otherwise, so every limit is set here, `eval` is off, and
//! only kiln's own resolver can load modules.
//!
//! Rhai bounds each value (one string, one array) and the number of operations. What
//! a whole evaluation may take is bounded here too: [`begin`] starts a budget on the
//! evaluating thread (heap bytes, counted by [`crate::heap`], and optionally wall
//! time), and every engine checks it on each operation, so a script holding many
//! large values, or an operation that copies a large value each step, ends with a
//! clear error instead of taking the machine's memory or running for hours.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Heap an evaluation may hold at once, all its values together.
    pub max_memory: usize,
    /// Wall time of one evaluation (`None`: steps and builders have their own
    /// timeouts and cancellation).
    pub max_time: Option<Duration>,
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
            max_memory: 512 << 20,
            max_time: None,
        }
    }
}

impl Limits {
    /// Evaluating a build script's declarations (`validate`, `inspect`, the start of
    /// `build`): it only declares, so it gets a wall-time bound too.
    pub fn declaration() -> Self {
        let time = std::env::var("KILN_DECLARE_TIMEOUT")
            .ok()
            .and_then(|t| humantime::parse_duration(t.trim()).ok())
            .unwrap_or(DECLARATION_TIME);
        Limits {
            max_time: Some(time),
            ..Limits::default()
        }
    }
}

/// How long declaring a build may take unless `KILN_DECLARE_TIMEOUT` says otherwise
/// (`30s`, `5m`); a real script takes milliseconds.
pub const DECLARATION_TIME: Duration = Duration::from_secs(60);

/// Why an evaluation was stopped by its budget; carried as the termination token so
/// callers tell it from a cancellation.
#[derive(Debug, Clone)]
pub struct LimitHit(pub String);

impl std::fmt::Display for LimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy)]
struct Budget {
    heap_at_start: isize,
    max_memory: usize,
    started: Instant,
    max_time: Option<Duration>,
}

thread_local! {
    static BUDGET: Cell<Option<Budget>> = const { Cell::new(None) };
}

/// The budget of the evaluation running on this thread; ends when dropped.
pub struct EvalGuard {
    owner: bool,
}

impl Drop for EvalGuard {
    fn drop(&mut self) {
        if self.owner {
            BUDGET.with(|b| b.set(None));
        }
    }
}

/// Starts the budget of an evaluation on this thread (a builder's `run`, a closure
/// step, a script's top level). Inside one that is already running (a closure step
/// called from its builder's `run`), the outer budget stays in force.
pub fn begin(limits: &Limits) -> EvalGuard {
    BUDGET.with(|b| {
        if b.get().is_some() {
            return EvalGuard { owner: false };
        }
        b.set(Some(Budget {
            heap_at_start: crate::heap::thread_net_bytes(),
            max_memory: limits.max_memory,
            started: Instant::now(),
            max_time: limits.max_time,
        }));
        EvalGuard { owner: true }
    })
}

/// Why the running evaluation must stop, if its budget is spent. The clock is read
/// every 64 operations; memory on every one (one operation allocates at most one
/// value's limit, so the overshoot is bounded by that).
fn over_budget(ops: u64) -> Option<LimitHit> {
    let b = BUDGET.with(Cell::get)?;
    let used = crate::heap::thread_net_bytes().saturating_sub(b.heap_at_start);
    if usize::try_from(used).is_ok_and(|u| u > b.max_memory) {
        return Some(LimitHit(format!(
            "the script holds more than {} MiB of values (kiln's limit for one evaluation); keep large data in files and pass their paths",
            b.max_memory >> 20
        )));
    }
    if ops.is_multiple_of(64)
        && let Some(max) = b.max_time
        && b.started.elapsed() > max
    {
        return Some(LimitHit(format!(
            "the script ran for more than {} (kiln's limit for declaring a build, KILN_DECLARE_TIMEOUT); a build script only declares sources and builds, the work happens in steps",
            humantime::format_duration(max)
        )));
    }
    None
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
    engine.on_progress(|ops| over_budget(ops).map(Dynamic::from));
    engine
}

/// Installs the cancellation hook: `check` runs every few hundred operations (the
/// evaluation budget is still checked on every one).
pub fn on_cancel(engine: &mut Engine, check: CancelCheck) {
    engine.on_progress(move |ops| {
        if let Some(hit) = over_budget(ops) {
            return Some(Dynamic::from(hit));
        }
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
    fn many_large_values_hit_the_memory_budget() {
        let limits = Limits {
            max_memory: 64 << 20,
            ..Limits::default()
        };
        let e = hardened(limits.clone());
        let _g = begin(&limits);
        // Each string is within the per-value limit (and Rhai sums the strings inside
        // one array or map); as separate variables together they are not.
        let mut script = String::from(r#"let s = "x"; for i in 0..23 { s += s; }"#);
        for i in 0..40 {
            script.push_str(&format!(" let v{i} = s + {i};"));
        }
        let err = e.eval::<()>(&script).unwrap_err();
        match *err {
            rhai::EvalAltResult::ErrorTerminated(ref v, _) => {
                let hit = v.clone().try_cast::<LimitHit>().expect("a budget error");
                assert!(hit.0.contains("more than 64 MiB"), "{hit}");
            }
            ref other => panic!("{other}"),
        }
    }

    #[test]
    fn slow_operations_hit_the_time_budget() {
        let limits = Limits {
            max_time: Some(Duration::from_millis(300)),
            max_operations: 0,
            ..Limits::default()
        };
        let e = hardened(limits.clone());
        let _g = begin(&limits);
        let err = e
            .eval::<()>(r#"let s = "x"; for i in 0..20 { s += s; } loop { let t = s + "y"; }"#)
            .unwrap_err();
        match *err {
            rhai::EvalAltResult::ErrorTerminated(ref v, _) => {
                let hit = v.clone().try_cast::<LimitHit>().expect("a budget error");
                assert!(hit.0.contains("ran for more than 300ms"), "{hit}");
            }
            ref other => panic!("{other}"),
        }
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
