//! The functions a build script calls at its top level: `var`, `secret`, `source`,
//! `build`, the step constructors (`shell`, `file`, `wasm`, `step`), builder
//! constructors (`qemu`, `ssh_host`, `builder`), post-processors (`checksum`,
//! `manifest`, ...) and `registry_artifact`. They only record declarations; nothing
//! touches the outside.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rhai::{Array, Dynamic, Engine, EvalAltResult, FnPtr, Map, NativeCallContext, Scope};

use super::error::runtime_err;
use super::library::Library;
use super::stdlib;
use super::value;
use crate::caps::Grants;
use crate::plan::{
    BuildSpec, EnvValue, PostSpec, RegistryRef, ScriptRef, SecretHandle, SourceSpec, StepKind,
    StepOptions, StepSpec, VarInfo,
};
use crate::ui::Redactor;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// What the script has declared so far.
pub struct DeclState {
    /// Set once the top level has run: declarations are not allowed while building.
    pub sealed: bool,
    pub inputs: BTreeMap<String, (String, &'static str)>,
    pub vars: BTreeMap<String, VarInfo>,
    pub secrets: Vec<String>,
    pub sources: Vec<SourceSpec>,
    pub builds: Vec<BuildSpec>,
    pub redactor: Redactor,
    pub library: Arc<Library>,
}

pub type Decl = Arc<Mutex<DeclState>>;

/// A builder with its configuration, before `source()` names it.
#[derive(Debug, Clone)]
pub struct SourceDraft {
    pub builder: String,
    pub script: ScriptRef,
    pub config: Map,
}

fn lock(decl: &Decl) -> std::sync::MutexGuard<'_, DeclState> {
    decl.lock().unwrap_or_else(|p| p.into_inner())
}

fn err_at<T>(ctx: &NativeCallContext, msg: impl Into<String>) -> RhaiResult<T> {
    Err(runtime_err(msg, ctx.call_position()))
}

fn check_open(ctx: &NativeCallContext, decl: &Decl, what: &str) -> RhaiResult<()> {
    if lock(decl).sealed {
        return err_at(
            ctx,
            format!(
                "{what}() declares the plan and may only be called at the top level of the build script"
            ),
        );
    }
    Ok(())
}

/// Registers every declaration function on `engine`.
pub fn register(engine: &mut Engine, decl: Decl) {
    engine.register_type_with_name::<SecretHandle>("Secret");
    engine.register_fn("to_string", |s: &mut SecretHandle| s.to_string());
    engine.register_fn("to_debug", |s: &mut SecretHandle| s.to_string());
    engine.register_type_with_name::<StepSpec>("Step");
    engine.register_fn("to_string", |s: &mut StepSpec| s.describe());
    engine.register_type_with_name::<PostSpec>("PostProcessor");
    engine.register_fn("to_string", |s: &mut PostSpec| {
        format!("post-processor {}", s.name)
    });
    engine.register_type_with_name::<SourceDraft>("Source");
    engine.register_fn("to_string", |s: &mut SourceDraft| {
        format!("{} source", s.builder)
    });
    engine.register_type_with_name::<RegistryRef>("RegistryArtifact");
    engine.register_fn("to_string", |r: &mut RegistryRef| r.to_string());
    engine.register_fn("to_debug", |r: &mut RegistryRef| r.to_string());

    register_vars(engine, decl.clone());
    register_sources(engine, decl.clone());
    register_steps(engine);
    register_post(engine, decl.clone());

    let d = decl.clone();
    engine.register_fn(
        "registry_artifact",
        move |ctx: NativeCallContext, q: Map| -> RhaiResult<RegistryRef> {
            check_open(&ctx, &d, "registry_artifact")?;
            registry_artifact(&q)
                .map(|query| RegistryRef {
                    query,
                    declared_at: position(&ctx),
                })
                .map_err(|m| runtime_err(format!("registry_artifact: {m}"), ctx.call_position()))
        },
    );

    let d = decl;
    engine.register_fn(
        "build",
        move |ctx: NativeCallContext, name: &str, cfg: Map| declare_build(&ctx, &d, name, cfg),
    );
}

fn register_vars(engine: &mut Engine, decl: Decl) {
    // `var` is a reserved word in Rhai. Registering it as custom syntax un-reserves
    // it; the raw form below then accepts both `var(name)` and `var(name, default)`.
    if let Err(e) =
        engine.register_custom_syntax(["var", "(", "$expr$", ")"], false, |_, _| Ok(Dynamic::UNIT))
    {
        tracing::error!("cannot register var(): {e}");
    }
    let d = decl.clone();
    engine.register_custom_syntax_with_state_raw(
        "var",
        |symbols, look_ahead, _| {
            Ok(match symbols.len() {
                1 => Some("(".into()),
                2 => Some("$expr$".into()),
                3 if look_ahead == "," => Some(",".into()),
                3 => Some(")".into()),
                4 if symbols[3].as_str() == "," => Some("$expr$".into()),
                5 => Some(")".into()),
                _ => None,
            })
        },
        false,
        move |ctx, inputs, _| {
            let pos = inputs[0].position();
            let name = ctx.eval_expression_tree(&inputs[0])?;
            let name = name.into_string().map_err(|t| {
                runtime_err(
                    format!("var(name, default): the name must be a string, not {t}"),
                    pos,
                )
            })?;
            let default = match inputs.get(1) {
                Some(e) => Some(ctx.eval_expression_tree(e)?),
                None => None,
            };
            var(pos, &d, &name, default)
        },
    );
    let d = decl.clone();
    engine.register_fn(
        "secret_file",
        move |ctx: NativeCallContext, path: &str| -> RhaiResult<SecretHandle> {
            secret_file(&ctx, &d, path, &Map::new())
        },
    );
    let d = decl.clone();
    engine.register_fn(
        "secret_file",
        move |ctx: NativeCallContext, path: &str, opts: Map| -> RhaiResult<SecretHandle> {
            secret_file(&ctx, &d, path, &opts)
        },
    );
    let d = decl;
    engine.register_fn("secret", move |ctx: NativeCallContext, name: &str| -> RhaiResult<SecretHandle> {
        check_open(&ctx, &d, "secret")?;
        let value = std::env::var(name).map_err(|_| {
            runtime_err(
                format!("secret {name:?} is not set: export {name}=... in the environment that runs kiln"),
                ctx.call_position(),
            )
        })?;
        let mut st = lock(&d);
        st.redactor.add(name, &value);
        if !st.secrets.iter().any(|s| s == name) {
            st.secrets.push(name.to_string());
        }
        Ok(SecretHandle {
            name: name.to_string(),
            value: value.into(),
            from_file: false,
        })
    });
}

/// Largest secret file read: secrets are passwords and tokens, not payloads.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// `secret_file(path[, #{ allow: #{ read: [...] } }])`: the content of a file (a mounted
/// CI secret) as a secret handle, read now through the project and the script's own
/// read grant: the project by default, or the directories the `allow` names. One
/// trailing newline is dropped (`echo pw > file` writes one). The value is registered
/// with the redactor before the handle exists; the read is audited when the run starts.
fn secret_file(
    ctx: &NativeCallContext,
    decl: &Decl,
    path: &str,
    opts: &Map,
) -> RhaiResult<SecretHandle> {
    check_open(ctx, decl, "secret_file")?;
    let fail = |m: String| runtime_err(m, ctx.call_position());
    value::check_keys(opts, &["allow"], "secret_file options").map_err(fail)?;
    let mut grants = Grants::read_only(".");
    if let Some(allow) = opts.get("allow") {
        let allow = allow
            .clone()
            .try_cast::<Map>()
            .ok_or_else(|| fail("allow must be a map like #{ read: [\"/run/secrets\"] }".into()))?;
        grants
            .apply_allow(&allow)
            .map_err(|e| fail(e.to_string()))?;
    }
    let project = lock(decl).library.project().clone();
    let broker =
        crate::caps::Broker::new("load", crate::caps::AuditLog::disabled(Redactor::default()));
    let scope = broker.scope(
        "script",
        "the build script",
        crate::caps::Holder::Step,
        grants,
    );
    let full = crate::caps::fs::expand_home(path);
    let bytes = project
        .read_to_vec(&scope, &full, MAX_SECRET_FILE)
        .map_err(|e| match e {
            crate::caps::FsError::Denied(d) => fail(format!(
                "secret_file({path:?}): the file is outside the directories the build script may \
                 read; grant its directory next to the call: secret_file({path:?}, #{{ {} }})",
                d.allow
            )),
            other => fail(format!("secret_file({path:?}): {other}")),
        })?;
    let mut value = String::from_utf8(bytes)
        .map_err(|_| fail(format!("secret_file({path:?}): the file is not UTF-8 text")))?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err(fail(format!("secret_file({path:?}): the file is empty")));
    }
    let mut st = lock(decl);
    st.redactor.add(path, &value);
    let listed = format!("file:{path}");
    if !st.secrets.contains(&listed) {
        st.secrets.push(listed);
    }
    Ok(SecretHandle {
        name: path.to_string(),
        value: value.into(),
        from_file: true,
    })
}

/// `var(name, default)`: the value from `--var`/`--var-file` converted to the
/// default's type, else the default. `var(name)` requires a value.
fn var(
    pos: rhai::Position,
    decl: &Decl,
    name: &str,
    default: Option<Dynamic>,
) -> RhaiResult<Dynamic> {
    if lock(decl).sealed {
        return Err(runtime_err(
            "var() may only be called at the top level of the build script",
            pos,
        ));
    }
    let mut st = lock(decl);
    let given = st.inputs.get(name).cloned();
    let (value, from) = match (given, default) {
        (Some((text, from)), default) => {
            let v = match default {
                Some(d) if d.is_int() => {
                    Dynamic::from(text.trim().parse::<i64>().map_err(|_| {
                        runtime_err(format!("variable {name}: {text:?} is not an integer"), pos)
                    })?)
                }
                Some(d) if d.is_bool() => Dynamic::from(match text.trim() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(runtime_err(
                            format!("variable {name}: {text:?} is not true or false"),
                            pos,
                        ));
                    }
                }),
                Some(d) if d.is_float() => {
                    Dynamic::from(text.trim().parse::<f64>().map_err(|_| {
                        runtime_err(format!("variable {name}: {text:?} is not a number"), pos)
                    })?)
                }
                _ => Dynamic::from(text),
            };
            (v, from)
        }
        (None, Some(d)) => (d, "default"),
        (None, None) => {
            return Err(runtime_err(
                format!(
                    "variable {name:?} has no default and was not set: pass --var {name}=VALUE"
                ),
                pos,
            ));
        }
    };
    st.vars.insert(
        name.to_string(),
        VarInfo {
            value: crate::plan::render_value(&value),
            from,
        },
    );
    Ok(value)
}

fn register_sources(engine: &mut Engine, decl: Decl) {
    for builder in stdlib::builders() {
        let d = decl.clone();
        engine.register_fn(
            builder,
            move |ctx: NativeCallContext, cfg: Map| -> RhaiResult<SourceDraft> {
                draft(
                    &ctx,
                    &d,
                    builder,
                    ScriptRef::Embedded(format!("builders/{builder}")),
                    cfg,
                )
            },
        );
    }
    let d = decl.clone();
    engine.register_fn(
        "builder",
        move |ctx: NativeCallContext, path: &str, cfg: Map| -> RhaiResult<SourceDraft> {
            let name = std::path::Path::new(path)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.to_string());
            draft(&ctx, &d, &name, ScriptRef::Project(path.to_string()), cfg)
        },
    );
    let d = decl.clone();
    engine.register_fn(
        "source",
        move |ctx: NativeCallContext, name: &str, s: SourceDraft| {
            declare_source(&ctx, &d, name, s, Map::new())
        },
    );
    let d = decl;
    engine.register_fn(
        "source",
        move |ctx: NativeCallContext, name: &str, s: SourceDraft, opts: Map| {
            declare_source(&ctx, &d, name, s, opts)
        },
    );
}

/// Validates `cfg` against the component's `options()` (key -> default) and
/// `required()`, and fills in defaults.
fn validate_config(
    ctx: &NativeCallContext,
    decl: &Decl,
    what: &str,
    script: &ScriptRef,
    cfg: Map,
) -> RhaiResult<Map> {
    let library = lock(decl).library.clone();
    let ast = library.ast(ctx.engine(), script)?;
    let defaults: Map = ctx
        .engine()
        .call_fn(&mut Scope::new(), &ast, "options", ())
        .map_err(|e| {
            runtime_err(
                format!("{script}: options() failed: {e}"),
                ctx.call_position(),
            )
        })?;
    let allowed: Vec<&str> = defaults.keys().map(|k| k.as_str()).collect();
    value::check_keys(&cfg, &allowed, &format!("{what} config"))
        .map_err(|m| runtime_err(m, ctx.call_position()))?;
    let has_required = ast.iter_functions().any(|f| f.name == "required");
    let required: Array = if has_required {
        ctx.engine()
            .call_fn(&mut Scope::new(), &ast, "required", ())
            .map_err(|e| {
                runtime_err(
                    format!("{script}: required() failed: {e}"),
                    ctx.call_position(),
                )
            })?
    } else {
        Array::new()
    };
    for (k, v) in &cfg {
        validate_nested(k, v)
            .map_err(|m| runtime_err(format!("{what} config: {m}"), ctx.call_position()))?;
    }
    let mut merged = defaults.clone();
    for (k, v) in cfg {
        merged.insert(k, v);
    }
    for r in required {
        let key = r.into_string().unwrap_or_default();
        if merged.get(key.as_str()).is_none_or(|v| v.is_unit()) {
            return err_at(ctx, format!("{what} config: `{key}` is required"));
        }
    }
    Ok(merged)
}

/// Nested maps with a fixed schema are checked here too, so a typo in `ssh` fails at
/// validate time rather than minutes into a build.
fn validate_nested(key: &str, v: &Dynamic) -> Result<(), String> {
    if key == "ssh" && !v.is_unit() {
        value::ssh_config(v).map(|_| ())?;
    }
    Ok(())
}

fn draft(
    ctx: &NativeCallContext,
    decl: &Decl,
    builder: &str,
    script: ScriptRef,
    cfg: Map,
) -> RhaiResult<SourceDraft> {
    let config = validate_config(ctx, decl, builder, &script, cfg)?;
    Ok(SourceDraft {
        builder: builder.to_string(),
        script,
        config,
    })
}

fn declare_source(
    ctx: &NativeCallContext,
    decl: &Decl,
    name: &str,
    s: SourceDraft,
    opts: Map,
) -> RhaiResult<()> {
    check_open(ctx, decl, "source")?;
    valid_name(ctx, name, "source")?;
    value::check_keys(&opts, &["allow"], "source options")
        .map_err(|m| runtime_err(m, ctx.call_position()))?;
    // Builders that write output get their output directory, whose default is
    // Packer's `output-<name>`.
    let output = match s.config.get("output_directory") {
        Some(v) if v.is_string() => Some(v.to_string()),
        Some(_) => Some(format!("output-{name}")),
        None => None,
    };
    let mut grants = Grants::builder_base(output.as_deref());
    // The builder's own defaults: `fn grants(cfg)` in its script returns an allow map
    // (the qemu builder's holds `qemu`; ssh_host's holds `ssh` to its host). A custom
    // builder in the project declares its grants the same way.
    let library = lock(decl).library.clone();
    let ast = library.ast(ctx.engine(), &s.script)?;
    if ast.iter_functions().any(|f| f.name == "grants") {
        let allow: Map = ctx
            .engine()
            .call_fn(
                &mut Scope::new(),
                &ast,
                "grants",
                (Dynamic::from_map(s.config.clone()),),
            )
            .map_err(|e| {
                runtime_err(
                    format!("{}: grants(cfg) failed: {e}", s.script),
                    ctx.call_position(),
                )
            })?;
        grants.apply_allow(&allow).map_err(|e| {
            runtime_err(
                format!("{}: grants(cfg) returned {e}", s.script),
                ctx.call_position(),
            )
        })?;
    }
    // A config that names registry artifacts reads those buckets when the build starts.
    let mut buckets: Vec<Dynamic> = Vec::new();
    for (_, r) in crate::plan::registry_refs(&s.config) {
        let b = Dynamic::from(r.query.bucket.clone());
        if !buckets.iter().any(|x| x.to_string() == b.to_string()) {
            buckets.push(b);
        }
    }
    if !buckets.is_empty() {
        let mut allow = Map::new();
        allow.insert("registry".into(), Dynamic::from_array(buckets));
        grants
            .apply_allow(&allow)
            .map_err(|e| runtime_err(e.to_string(), ctx.call_position()))?;
    }
    // Config keys the builder's steps do not depend on (`fn step_cache_ignore(cfg)`).
    let mut step_cache_ignore = Vec::new();
    if ast.iter_functions().any(|f| f.name == "step_cache_ignore") {
        let keys: Array = ctx
            .engine()
            .call_fn(
                &mut Scope::new(),
                &ast,
                "step_cache_ignore",
                (Dynamic::from_map(s.config.clone()),),
            )
            .map_err(|e| {
                runtime_err(
                    format!("{}: step_cache_ignore(cfg) failed: {e}", s.script),
                    ctx.call_position(),
                )
            })?;
        for k in keys {
            step_cache_ignore.push(
                value::string(&k, "step_cache_ignore")
                    .map_err(|m| runtime_err(format!("{}: {m}", s.script), ctx.call_position()))?,
            );
        }
    }
    if let Some(allow) = opts.get("allow") {
        let allow = allow.clone().try_cast::<Map>().ok_or_else(|| {
            runtime_err(
                "allow must be a map like #{ read: [\"files\"] }",
                ctx.call_position(),
            )
        })?;
        grants
            .apply_allow(&allow)
            .map_err(|e| runtime_err(e.to_string(), ctx.call_position()))?;
    }
    let declared_at = position(ctx);
    let mut st = lock(decl);
    if st.sources.iter().any(|x| x.name == name) {
        return err_at(ctx, format!("source {name:?} is declared twice"));
    }
    st.sources.push(SourceSpec {
        name: name.to_string(),
        builder: s.builder,
        script: s.script,
        config: s.config,
        grants,
        declared_at,
        step_cache_ignore,
    });
    Ok(())
}

/// `registry_artifact(#{ bucket, channel, platform, region, build })` as a query,
/// checked now so a typo fails `kiln validate` (the lookup itself waits for the build).
fn registry_artifact(q: &Map) -> Result<kiln_registry::ArtifactQuery, String> {
    use kiln_registry::limits;
    value::check_keys(
        q,
        &["bucket", "channel", "platform", "region", "build"],
        "registry_artifact",
    )?;
    let opt = |key: &str| -> Result<Option<String>, String> {
        match q.get(key) {
            None => Ok(None),
            Some(v) if v.is_unit() => Ok(None),
            Some(v) => value::string(v, key).map(Some),
        }
    };
    let bucket = opt("bucket")?.ok_or("`bucket` is required (the image lineage to read)")?;
    limits::check_name("bucket", &bucket).map_err(|e| e.to_string())?;
    let channel = opt("channel")?;
    if let Some(c) = &channel {
        limits::check_name("channel", c).map_err(|e| e.to_string())?;
    }
    let platform = opt("platform")?
        .ok_or("`platform` is required: qemu, vagrant, aws, oci or openstack")?
        .parse::<kiln_registry::Platform>()
        .map_err(|e| e.to_string())?;
    let region = opt("region")?.unwrap_or_else(|| "local".into());
    limits::check_region(&region).map_err(|e| e.to_string())?;
    let build = opt("build")?;
    if let Some(b) = &build {
        limits::check_name("build", b).map_err(|e| e.to_string())?;
    }
    Ok(kiln_registry::ArtifactQuery {
        bucket,
        channel,
        platform,
        region,
        build,
    })
}

/// The `registry(...)` post-processor's bucket and labels, checked now so a name the
/// registry would refuse (SQL text, `../`, a 1 MiB label) fails `kiln validate` at its
/// line instead of the build.
fn registry_post(cfg: &Map) -> Result<(), String> {
    use kiln_registry::limits;
    let text = |v: &Dynamic| -> Option<String> { v.is_string().then(|| v.to_string()) };
    if let Some(b) = cfg.get("bucket").filter(|v| !v.is_unit()) {
        let b = text(b).ok_or("registry: `bucket` must be a string")?;
        limits::check_name("bucket", &b).map_err(|e| format!("registry: {e}"))?;
    }
    if let Some(d) = cfg.get("description").filter(|v| !v.is_unit()) {
        let d = text(d).ok_or("registry: `description` must be a string")?;
        limits::check_text("description", &d, limits::MAX_DESCRIPTION, true)
            .map_err(|e| format!("registry: {e}"))?;
    }
    if let Some(l) = cfg.get("labels").filter(|v| !v.is_unit()) {
        let labels = l
            .clone()
            .try_cast::<Map>()
            .ok_or("registry: `labels` must be a map like #{ os: \"debian\" }")?;
        if labels.len() > limits::MAX_LABELS {
            return Err(format!(
                "registry: {} labels, more than the limit of {}",
                labels.len(),
                limits::MAX_LABELS
            ));
        }
        for (k, v) in &labels {
            limits::check_label_key(k).map_err(|e| format!("registry: {e}"))?;
            limits::check_text(
                &format!("label {k:?}"),
                &v.to_string(),
                limits::MAX_LABEL_VALUE,
                false,
            )
            .map_err(|e| format!("registry: {e}"))?;
        }
    }
    Ok(())
}

fn valid_name(ctx: &NativeCallContext, name: &str, what: &str) -> RhaiResult<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return err_at(
            ctx,
            format!("{what} name {name:?} must be letters, digits, '-' or '_'"),
        );
    }
    Ok(())
}

const BUILD_KEYS: &[&str] = &["sources", "steps", "post", "description"];

fn declare_build(ctx: &NativeCallContext, decl: &Decl, name: &str, cfg: Map) -> RhaiResult<()> {
    check_open(ctx, decl, "build")?;
    valid_name(ctx, name, "build")?;
    let fail = |m: String| runtime_err(format!("build {name:?}: {m}"), ctx.call_position());
    value::check_keys(&cfg, BUILD_KEYS, "build").map_err(fail)?;
    let sources = match cfg.get("sources") {
        Some(v) => value::string_list(v, "sources").map_err(fail)?,
        None => {
            return Err(fail(
                "`sources` is required (the names given to source())".into(),
            ));
        }
    };
    if sources.is_empty() {
        return Err(fail("`sources` must name at least one source".into()));
    }
    let mut steps = Vec::new();
    if let Some(v) = cfg.get("steps") {
        let arr = v
            .clone()
            .into_array()
            .map_err(|t| fail(format!("steps must be an array, not {t}")))?;
        for (i, item) in arr.into_iter().enumerate() {
            let mut step = as_step(item).map_err(|m| fail(format!("steps[{i}]: {m}")))?;
            if step.declared_at.is_empty() {
                step.declared_at = position(ctx);
            }
            steps.push(step);
        }
    }
    let mut post = Vec::new();
    if let Some(v) = cfg.get("post") {
        let arr = v
            .clone()
            .into_array()
            .map_err(|t| fail(format!("post must be an array, not {t}")))?;
        for (i, item) in arr.into_iter().enumerate() {
            let p = item.try_cast::<PostSpec>().ok_or_else(|| {
                fail(format!(
                    "post[{i}] is not a post-processor (use checksum(), manifest(), ...)"
                ))
            })?;
            post.push(p);
        }
    }
    let mut st = lock(decl);
    if st.builds.iter().any(|b| b.name == name) {
        return Err(fail("declared twice".into()));
    }
    st.builds.push(BuildSpec {
        name: name.to_string(),
        sources,
        steps,
        post,
    });
    Ok(())
}

/// A step value: a step constructor's result, or a bare closure.
fn as_step(item: Dynamic) -> Result<StepSpec, String> {
    if item.is::<FnPtr>() {
        let func = item.cast::<FnPtr>();
        return Ok(StepSpec {
            kind: StepKind::Closure { func },
            options: StepOptions::default(),
            grants: Grants::provisioner_default(),
            // Filled in from the build() call: a bare closure has no call of its own.
            declared_at: String::new(),
        });
    }
    let type_name = item.type_name();
    item.try_cast::<StepSpec>().ok_or_else(|| {
        format!("{type_name} is not a step (use shell(), file(), wasm(), step() or a closure |m| {{ ... }})")
    })
}

const STEP_KEYS: &[&str] = &[
    "timeout",
    "max_retries",
    "pause_before",
    "only",
    "except",
    "env",
    "expect_disconnect",
    "valid_exit_codes",
    "allow",
];

/// Parses a step's options map; `extra` lists kind-specific keys.
fn step_options(
    opts: &Map,
    extra: &[&str],
    mut grants: Grants,
) -> Result<(StepOptions, Grants), String> {
    let mut allowed = STEP_KEYS.to_vec();
    allowed.extend_from_slice(extra);
    value::check_keys(opts, &allowed, "step options")?;
    let mut o = StepOptions {
        valid_exit_codes: vec![0],
        ..StepOptions::default()
    };
    for (k, v) in opts {
        match k.as_str() {
            "timeout" => o.timeout = Some(value::duration(v, "timeout")?),
            "pause_before" => o.pause_before = Some(value::duration(v, "pause_before")?),
            "max_retries" => {
                let n = value::int(v, "max_retries")?;
                o.max_retries =
                    u32::try_from(n).map_err(|_| "max_retries must be 0 or more".to_string())?;
            }
            "only" => o.only = value::string_list(v, "only")?,
            "except" => o.except = value::string_list(v, "except")?,
            "expect_disconnect" => o.expect_disconnect = value::bool(v, "expect_disconnect")?,
            "valid_exit_codes" => {
                let arr = v
                    .clone()
                    .into_array()
                    .map_err(|_| "valid_exit_codes must be an array of integers".to_string())?;
                o.valid_exit_codes = arr
                    .iter()
                    .map(|x| value::int_in::<i32>(x, "valid_exit_codes", "an exit status"))
                    .collect::<Result<_, _>>()?;
            }
            "env" => {
                let map = v
                    .clone()
                    .try_cast::<Map>()
                    .ok_or_else(|| "env must be a map like #{ NAME: \"value\" }".to_string())?;
                for (name, val) in map {
                    let ev = if let Some(s) = val.clone().try_cast::<SecretHandle>() {
                        EnvValue::Secret(s)
                    } else if val.is_string() || val.is_int() || val.is_bool() || val.is_float() {
                        EnvValue::Plain(val.to_string())
                    } else {
                        return Err(format!(
                            "env.{name} must be a string, number, bool or secret()"
                        ));
                    };
                    o.env.push((name.to_string(), ev));
                }
            }
            "memory" => o.memory = Some(value::size_bytes(v, "memory")?),
            "allow" => {
                let allow = v
                    .clone()
                    .try_cast::<Map>()
                    .ok_or_else(|| "allow must be a map like #{ read: [\"files\"] }".to_string())?;
                grants.apply_allow(&allow).map_err(|e| e.to_string())?;
            }
            _ => {}
        }
    }
    Ok((o, grants))
}

fn make_step(
    ctx: &NativeCallContext,
    kind: StepKind,
    opts: Option<Map>,
    extra: &[&str],
    grants: Grants,
) -> RhaiResult<StepSpec> {
    let (options, grants) = step_options(&opts.unwrap_or_default(), extra, grants)
        .map_err(|m| runtime_err(m, ctx.call_position()))?;
    Ok(StepSpec {
        kind,
        options,
        grants,
        declared_at: position(ctx),
    })
}

/// `file:line:col` of the call being made, for messages that point at the script.
pub fn position(ctx: &NativeCallContext) -> String {
    let pos = ctx.call_position();
    format!(
        "{}:{}:{}",
        ctx.call_source().unwrap_or("build.rhai"),
        pos.line().unwrap_or(0),
        pos.position().unwrap_or(0)
    )
}

fn shell_kind(ctx: &NativeCallContext, v: Dynamic) -> RhaiResult<StepKind> {
    if v.is_string() {
        return Ok(StepKind::ShellScript {
            path: v.into_string().unwrap_or_default(),
        });
    }
    let inline = value::string_list(&v, "shell commands")
        .map_err(|m| runtime_err(m, ctx.call_position()))?;
    if inline.is_empty() {
        return err_at(ctx, "shell([...]) needs at least one command");
    }
    Ok(StepKind::Shell { inline })
}

fn register_steps(engine: &mut Engine) {
    engine.register_fn(
        "shell",
        |ctx: NativeCallContext, v: Dynamic| -> RhaiResult<StepSpec> {
            let kind = shell_kind(&ctx, v)?;
            make_step(&ctx, kind, None, &[], Grants::provisioner_default())
        },
    );
    engine.register_fn(
        "shell",
        |ctx: NativeCallContext, v: Dynamic, opts: Map| -> RhaiResult<StepSpec> {
            let kind = shell_kind(&ctx, v)?;
            make_step(&ctx, kind, Some(opts), &[], Grants::provisioner_default())
        },
    );
    let file = |ctx: &NativeCallContext, src: &str, dest: &str, opts: Option<Map>| {
        if src.is_empty() || dest.is_empty() {
            return err_at(ctx, "file(src, dest): both paths are required");
        }
        let kind = StepKind::File {
            src: src.to_string(),
            dest: dest.to_string(),
        };
        make_step(ctx, kind, opts, &[], Grants::provisioner_default())
    };
    engine.register_fn(
        "file",
        move |ctx: NativeCallContext, src: &str, dest: &str| file(&ctx, src, dest, None),
    );
    engine.register_fn(
        "file",
        move |ctx: NativeCallContext, src: &str, dest: &str, opts: Map| {
            file(&ctx, src, dest, Some(opts))
        },
    );
    let wasm = |ctx: &NativeCallContext, path: &str, config: Map, opts: Option<Map>| {
        let json = value::to_json(&Dynamic::from_map(config))
            .map_err(|m| runtime_err(m, ctx.call_position()))?;
        let kind = StepKind::Wasm {
            path: path.to_string(),
            config_json: json.to_string(),
        };
        make_step(ctx, kind, opts, &["memory"], Grants::wasm_default())
    };
    engine.register_fn("wasm", move |ctx: NativeCallContext, path: &str| {
        wasm(&ctx, path, Map::new(), None)
    });
    engine.register_fn(
        "wasm",
        move |ctx: NativeCallContext, path: &str, config: Map| wasm(&ctx, path, config, None),
    );
    engine.register_fn(
        "wasm",
        move |ctx: NativeCallContext, path: &str, config: Map, opts: Map| {
            wasm(&ctx, path, config, Some(opts))
        },
    );
    // A pause with the menu of --on-error=ask (Packer's breakpoint provisioner).
    let breakpoint = |ctx: &NativeCallContext, note: &str| {
        make_step(
            ctx,
            StepKind::Breakpoint {
                note: note.to_string(),
            },
            None,
            &[],
            Grants::provisioner_default(),
        )
    };
    engine.register_fn("breakpoint", move |ctx: NativeCallContext| {
        breakpoint(&ctx, "")
    });
    engine.register_fn("breakpoint", move |ctx: NativeCallContext, note: &str| {
        breakpoint(&ctx, note)
    });
    engine.register_fn(
        "step",
        |ctx: NativeCallContext, func: FnPtr, opts: Map| -> RhaiResult<StepSpec> {
            make_step(
                &ctx,
                StepKind::Closure { func },
                Some(opts),
                &[],
                Grants::provisioner_default(),
            )
        },
    );
}

fn register_post(engine: &mut Engine, decl: Decl) {
    for name in stdlib::post_processors() {
        let d = decl.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext| -> RhaiResult<PostSpec> {
                post(
                    &ctx,
                    &d,
                    name,
                    ScriptRef::Embedded(format!("post/{name}")),
                    Map::new(),
                )
            },
        );
        let d = decl.clone();
        engine.register_fn(
            name,
            move |ctx: NativeCallContext, v: Dynamic| -> RhaiResult<PostSpec> {
                let cfg = shorthand(name, v).map_err(|m| runtime_err(m, ctx.call_position()))?;
                post(
                    &ctx,
                    &d,
                    name,
                    ScriptRef::Embedded(format!("post/{name}")),
                    cfg,
                )
            },
        );
    }
    let d = decl;
    engine.register_fn(
        "post_processor",
        move |ctx: NativeCallContext, path: &str, cfg: Map| -> RhaiResult<PostSpec> {
            let name = std::path::Path::new(path)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.to_string());
            post(&ctx, &d, &name, ScriptRef::Project(path.to_string()), cfg)
        },
    );
}

/// `checksum("sha256")`, `manifest("out/manifest.json")`, `compress("out/x.tar.gz")`,
/// `registry("web")`:
/// a single non-map argument is the post-processor's main option.
fn shorthand(name: &str, v: Dynamic) -> Result<Map, String> {
    if v.is_map() {
        return Ok(v.cast::<Map>());
    }
    let key = match name {
        "checksum" => "types",
        "openstack_image" => "name",
        "registry" => "bucket",
        _ => "output",
    };
    let mut m = Map::new();
    m.insert(key.into(), v);
    Ok(m)
}

fn post(
    ctx: &NativeCallContext,
    decl: &Decl,
    name: &str,
    script: ScriptRef,
    mut cfg: Map,
) -> RhaiResult<PostSpec> {
    // `allow` is the user's grant, not an option of the post-processor.
    let allow = cfg.remove("allow");
    let config = validate_config(ctx, decl, name, &script, cfg)?;
    if script == ScriptRef::Embedded(crate::caps::registry::POST_PROCESSOR.into()) {
        registry_post(&config).map_err(|m| runtime_err(m, ctx.call_position()))?;
    }
    let grants = post_grants(ctx, decl, &script, &config, allow)?;
    Ok(PostSpec {
        name: name.to_string(),
        script,
        config,
        grants,
    })
}

/// What a post-processor holds beyond its defaults: its script's `fn grants(cfg)` (the
/// `openstack_image` post-processor's holds `qemu` and the cloud its config names),
/// then the user's `allow` in its options, as for sources.
fn post_grants(
    ctx: &NativeCallContext,
    decl: &Decl,
    script: &ScriptRef,
    config: &Map,
    allow: Option<Dynamic>,
) -> RhaiResult<Grants> {
    let mut grants = Grants::default();
    let library = lock(decl).library.clone();
    let ast = library.ast(ctx.engine(), script)?;
    if ast
        .iter_functions()
        .any(|f| f.name == "grants" && f.params.len() == 1)
    {
        let own: Map = ctx
            .engine()
            .call_fn(
                &mut Scope::new(),
                &ast,
                "grants",
                (Dynamic::from_map(config.clone()),),
            )
            .map_err(|e| {
                runtime_err(
                    format!("{script}: grants(cfg) failed: {e}"),
                    ctx.call_position(),
                )
            })?;
        grants.apply_allow(&own).map_err(|e| {
            runtime_err(
                format!("{script}: grants(cfg) returned {e}"),
                ctx.call_position(),
            )
        })?;
    }
    if let Some(allow) = allow {
        let allow = allow.try_cast::<Map>().ok_or_else(|| {
            runtime_err(
                "allow must be a map like #{ openstack: [\"mycloud\"] }",
                ctx.call_position(),
            )
        })?;
        grants
            .apply_allow(&allow)
            .map_err(|e| runtime_err(e.to_string(), ctx.call_position()))?;
    }
    Ok(grants)
}
