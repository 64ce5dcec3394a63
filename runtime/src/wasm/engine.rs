//! The process-wide engine, the compile cache, and running one provisioner step.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

use super::bindings;
use super::cache::{self, DiskCache};
use super::host::{self, GuestStdio, Handles, HostState, LogSink, MemLimiter, Setup, StepEnv};
use super::{LogLevel, WasmError, WasmLimits};
use crate::caps::{Capability, Scope, TABLE};

/// The capabilities whose WASM interfaces one run links, by key (sorted). Linkers and
/// pre-instantiations are cached per key set.
type LinkKey = Vec<&'static str>;
type LinkerCache = Mutex<HashMap<LinkKey, Arc<Linker<HostState>>>>;

/// How often the ticker advances the epoch; deadlines are checked at this granularity
/// and a running guest yields to tokio this often.
const TICK: Duration = Duration::from_millis(10);

/// One per process: compiles components, caches them, and drives epoch interruption.
pub struct WasmEngine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    disk: Option<DiskCache>,
    memory: Mutex<HashMap<String, Component>>,
    linkers: LinkerCache,
    stop: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl WasmEngine {
    /// Creates the engine. `cache_dir` holds compiled components; `None` uses
    /// `$KILN_CACHE_DIR/wasm` or the user cache dir (`~/.cache/kiln/wasm`). If the
    /// directory cannot be created, kiln compiles every time and says so once.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, WasmError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(|e| WasmError::Io {
            context: "could not create the WebAssembly engine".into(),
            source: std::io::Error::other(e.to_string()),
        })?;

        let disk = match cache_dir.or_else(cache::default_dir) {
            Some(dir) => match DiskCache::open(dir.clone(), cache::engine_key(&engine)) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot use the compiled-component cache; components will be compiled on every run");
                    None
                }
            },
            None => None,
        };

        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let ticker_stop = stop.clone();
        std::thread::Builder::new()
            .name("kiln-wasm-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|e| WasmError::Io {
                context: "could not start the WASM epoch ticker".into(),
                source: e,
            })?;

        Ok(WasmEngine {
            inner: Arc::new(Inner {
                engine,
                disk,
                memory: Mutex::new(HashMap::new()),
                linkers: Mutex::new(HashMap::new()),
                stop,
            }),
        })
    }

    /// Where compiled components are cached, if anywhere.
    pub fn cache_dir(&self) -> Option<&std::path::Path> {
        self.inner.disk.as_ref().map(|d| d.dir())
    }

    /// Compiles (or loads from the cache) a component. Nothing of the guest runs here.
    pub fn load(&self, wasm: &[u8]) -> Result<Provisioner, WasmError> {
        let digest = cache::sha256_hex(wasm);
        let component = self.component(&digest, wasm)?;
        let ty = component.component_type();
        let engine = &self.inner.engine;
        let imports = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
        Ok(Provisioner {
            engine: self.inner.clone(),
            component,
            digest,
            imports,
            pres: Mutex::new(HashMap::new()),
        })
    }

    fn component(&self, digest: &str, wasm: &[u8]) -> Result<Component, WasmError> {
        let inner = &self.inner;
        if let Some(c) = lock(&inner.memory).get(digest) {
            return Ok(c.clone());
        }
        if let Some(bytes) = inner.disk.as_ref().and_then(|d| d.get(digest)) {
            // SAFETY: the cache only returns files kiln wrote itself with a verified
            // digest over the payload, produced by `precompile_component` of an engine
            // with the same compatibility hash (it is part of the file name).
            match unsafe { Component::deserialize(&inner.engine, &bytes) } {
                Ok(c) => {
                    lock(&inner.memory).insert(digest.to_string(), c.clone());
                    return Ok(c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "discarding unusable compiled component from the cache")
                }
            }
        }
        if !wasm.starts_with(b"\0asm") {
            return Err(WasmError::Invalid(
                "the file does not start with the WebAssembly magic bytes".into(),
            ));
        }
        let started = Instant::now();
        let compiled = inner
            .engine
            .precompile_component(wasm)
            .map_err(|e| WasmError::Invalid(format!("{e:#}")))?;
        // SAFETY: the bytes were produced just now by this engine.
        let component = unsafe { Component::deserialize(&inner.engine, &compiled) }
            .map_err(|e| WasmError::Invalid(format!("{e:#}")))?;
        tracing::debug!(
            digest,
            ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "compiled WASM component"
        );
        if let Some(d) = &inner.disk
            && let Err(e) = d.put(digest, &compiled)
        {
            tracing::warn!(dir = %d.dir().display(), error = %e, "could not write the compiled component to the cache");
        }
        lock(&inner.memory).insert(digest.to_string(), component.clone());
        Ok(component)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A compiled provisioner component, ready to run any number of times.
pub struct Provisioner {
    engine: Arc<Inner>,
    component: Component,
    digest: String,
    imports: Vec<String>,
    pres: Mutex<HashMap<LinkKey, bindings::ProvisionerPre<HostState>>>,
}

impl std::fmt::Debug for Provisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioner")
            .field("sha256", &self.digest)
            .field("imports", &self.imports)
            .finish()
    }
}

impl Provisioner {
    /// The interfaces the component imports, e.g. `kiln:host/machine@0.1.0`.
    pub fn imports(&self) -> Vec<String> {
        self.imports.clone()
    }

    /// SHA-256 of the component's bytes (hex).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Runs `provision(config_json)` in a fresh store with `grants` and `limits`.
    ///
    /// Refuses before running anything if the component imports an interface the step
    /// was not granted. Returns the guest's summary (truncated to
    /// `limits.max_output_bytes`).
    /// Runs `provision(config_json)` in a fresh store. Each capability whose grant the
    /// step holds attaches itself (handles, preopens, socket checks); only those
    /// interfaces are linked, and a component importing anything else is refused
    /// before it runs. Every host call the guest makes goes through the capability's
    /// facade and so through `env.scope`.
    pub async fn run(
        &self,
        config_json: &str,
        env: StepEnv,
        limits: WasmLimits,
    ) -> Result<String, WasmError> {
        let scope = env.scope.clone();
        let log = LogSink::new(
            env.log.clone(),
            scope.clone(),
            env.redactor.clone(),
            limits.max_log_bytes,
        );
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(GuestStdio {
            level: LogLevel::Info,
            sink: log.clone(),
        });
        wasi.stderr(GuestStdio {
            level: LogLevel::Warn,
            sink: log.clone(),
        });
        let mut handles = Handles::default();
        let mut attached: Vec<&'static dyn Capability> = Vec::new();
        for cap in TABLE {
            let Some(adapter) = cap.wasm() else { continue };
            let mut setup = Setup {
                wasi: &mut wasi,
                handles: &mut handles,
            };
            if adapter.attach(&env, &mut setup).await? {
                attached.push(*cap);
            }
        }
        let mut key: LinkKey = attached.iter().map(|c| c.spec().key).collect();
        key.sort_unstable();
        if let Err(e) = self.check_imports(&key) {
            scope.event("wasm.link", &self.digest, "refused", 0.0);
            return Err(e);
        }
        let pre = self.pre(&key, &attached)?;

        let mem_limit = usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX);
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemLimiter {
                limit: mem_limit,
                used: 0,
                hit: false,
            },
            scope: scope.clone(),
            log: log.clone(),
            handles,
            deadline_hit: false,
        };
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limiter);
        let started = Instant::now();
        let deadline = started + limits.timeout;
        store.epoch_deadline_callback(move |mut ctx| {
            if Instant::now() >= deadline {
                ctx.data_mut().deadline_hit = true;
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);

        let call = async {
            let instance = pre.instantiate_async(&mut store).await?;
            instance.call_provision(&mut store, config_json).await
        };
        let outcome = tokio::time::timeout(limits.timeout, call).await;
        let secs = started.elapsed().as_secs_f64();
        let result = match outcome {
            Err(_elapsed) => {
                scope.event("wasm.deadline", &format!("{secs:.1}s"), "stopped", 0.0);
                return Err(WasmError::Deadline { secs });
            }
            Ok(r) => r,
        };
        let dropped = log.dropped();
        if dropped > 0 {
            (env.log)(
                LogLevel::Warn,
                &format!(
                    "{dropped} bytes of provisioner log output were dropped (limit {} bytes)",
                    limits.max_log_bytes
                ),
            );
        }
        let st = store.data();
        // Redacted before truncation, so a cut cannot leave part of a secret in clear.
        let cut =
            |s: String| truncate_summary(env.redactor.redact(&s), limits.max_output_bytes, &scope);
        match result {
            Ok(Ok(summary)) => Ok(cut(summary)),
            Ok(Err(msg)) => Err(WasmError::Guest(cut(msg))),
            Err(e) => {
                if st.deadline_hit || e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                    scope.event("wasm.deadline", &format!("{secs:.1}s"), "stopped", 0.0);
                    Err(WasmError::Deadline { secs })
                } else if st.limiter.hit {
                    let mib = limits.memory_bytes >> 20;
                    scope.event("wasm.memory", &format!("{mib} MiB"), "stopped", 0.0);
                    Err(WasmError::MemoryLimit { mib })
                } else {
                    Err(WasmError::Trap(format!("{e:#}")))
                }
            }
        }
    }

    /// Refuses a component that imports an interface this run does not link: one
    /// whose capability the step lacks (naming the grant to add), or one kiln does not
    /// provide at all (saying no grant would help).
    fn check_imports(&self, key: &LinkKey) -> Result<(), WasmError> {
        for import in &self.imports {
            if host::always_linked(import) {
                continue;
            }
            match crate::caps::gating(import) {
                Some(cap) if key.contains(&cap.spec().key) => {}
                Some(cap) => {
                    let spec = cap.spec();
                    return Err(WasmError::Link(format!(
                        "component imports {import}, which needs the `{}` capability ({}); this step is not granted it: add {}",
                        spec.key, spec.summary, spec.example
                    )));
                }
                None => {
                    let iface = import.split('@').next().unwrap_or(import);
                    let hint = if iface.starts_with("wasi:http/") {
                        "; make HTTP requests over wasi:sockets (with a `net` grant) instead"
                    } else {
                        ""
                    };
                    return Err(WasmError::Link(format!(
                        "component imports {import}, which kiln does not provide, so no grant can make it link{hint}"
                    )));
                }
            }
        }
        Ok(())
    }

    fn pre(
        &self,
        key: &LinkKey,
        attached: &[&'static dyn Capability],
    ) -> Result<bindings::ProvisionerPre<HostState>, WasmError> {
        if let Some(p) = lock(&self.pres).get(key) {
            return Ok(p.clone());
        }
        let linker = self.linker(key, attached)?;
        let instance_pre = linker.instantiate_pre(&self.component).map_err(|e| {
            WasmError::Link(format!(
                "component cannot be linked: {e:#} (kiln provides kiln:host@0.1.0 and WASI 0.2 cli, clocks, random, io, filesystem{})",
                if key.contains(&"net") { ", sockets" } else { "" }
            ))
        })?;
        let pre = bindings::ProvisionerPre::new(instance_pre).map_err(|e| {
            WasmError::Link(format!(
                "component does not export `provision: func(config-json: string) -> result<string, string>` ({e:#}); build it with kiln_guest::provisioner!"
            ))
        })?;
        lock(&self.pres).insert(key.clone(), pre.clone());
        Ok(pre)
    }

    fn linker(
        &self,
        key: &LinkKey,
        attached: &[&'static dyn Capability],
    ) -> Result<Arc<Linker<HostState>>, WasmError> {
        if let Some(l) = lock(&self.engine.linkers).get(key) {
            return Ok(l.clone());
        }
        let build = || -> wasmtime::Result<Linker<HostState>> {
            let mut l = host::base_linker(&self.engine.engine)?;
            for cap in attached {
                if let Some(a) = cap.wasm() {
                    a.link(&mut l)?;
                }
            }
            Ok(l)
        };
        let l = Arc::new(build().map_err(|e| WasmError::Io {
            context: "could not build the WASM linker".into(),
            source: std::io::Error::other(format!("{e:#}")),
        })?);
        lock(&self.engine.linkers).insert(key.clone(), l.clone());
        Ok(l)
    }
}

fn truncate_summary(mut s: String, max: usize, scope: &Scope) -> String {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while cut > 0 && !s.is_char_boundary(cut) {
        cut -= 1;
    }
    scope.event(
        "wasm.output",
        &format!("{} bytes", s.len()),
        "truncated",
        0.0,
    );
    s.truncate(cut);
    s.push_str(" … (truncated)");
    s
}
