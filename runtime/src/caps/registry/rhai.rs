//! The registry from Rhai: `ctx.registry_record(#{ ... })` (the `registry(...)`
//! post-processor stages its build's record), and [`resolve_source`], which the runner
//! calls before a builder runs to replace each `registry_artifact(...)` in the source's
//! configuration with the artifact it names.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use kiln_registry::{
    Artifact, BuildRecord, BuildStatus, Platform, Provenance, RecordBuild, Timestamp,
};
use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, NativeCallContext};
use sha2::Digest;

use super::{RegistryCap, SPEC, Staged};
use crate::caps::Use;
use crate::context::BuildRt;
use crate::plan::{registry_refs, replace_registry_refs};
use crate::script::api::Ctx;
use crate::script::error::runtime_err;
use crate::script::value;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

pub fn register(engine: &mut Engine) {
    engine.register_fn(
        "registry_record",
        |ctx: NativeCallContext, c: &mut Ctx, spec: Map| -> RhaiResult<Map> {
            stage_record(c, &spec).map_err(|m| runtime_err(m, ctx.call_position()))
        },
    );
}

/// The source's configuration with its registry references resolved through the
/// `registry` capability (the builder's scope: checked and audited), each replaced by
/// the artifact's external id (a qcow2 path, an AMI id). The first one becomes the
/// build's parent. A revoked version, or one that lacks the artifact, fails the build
/// before the builder starts.
pub fn resolve_source(rt: &Arc<BuildRt>) -> Result<Map, String> {
    let config = &rt.source.config;
    if registry_refs(config).is_empty() {
        return Ok(config.clone());
    }
    let cap = RegistryCap::new(rt.builder_scope.clone(), rt.plan.project.path());
    replace_registry_refs(config, &mut |at, r| {
        let fail = |e: String| {
            format!(
                "source {:?}: {at} = {r} ({}): {e}",
                rt.source.name, r.declared_at
            )
        };
        let got = rt
            .block_on(cap.resolve(&r.query))?
            .map_err(|e| fail(e.to_string()))?;
        if let Some(s) = &got.scheduled_revocation {
            rt.ui.warn(
                &rt.label,
                &format!(
                    "{}/{} is scheduled to be revoked at {}: {}",
                    got.parent.bucket, got.parent.fingerprint, s.effective_at, s.reason
                ),
            );
        }
        rt.ui.say(
            &rt.label,
            &format!(
                "Using {}/{} (@{}, build {}) from the registry for {at}: {}",
                got.parent.bucket,
                got.parent.fingerprint,
                r.channel(),
                got.build,
                got.artifact.external_id
            ),
        );
        Ok(Dynamic::from(local_path(rt, &got.artifact)))
    })
}

/// A local file artifact inside this project is handed over project-relative, so the
/// source's `read: ["."]` covers it; anything else (an AMI id, a file elsewhere, which
/// needs its directory granted) as recorded.
fn local_path(rt: &BuildRt, a: &kiln_registry::Artifact) -> String {
    if matches!(a.platform, Platform::Qemu | Platform::Vagrant)
        && let Ok(rel) = std::path::Path::new(&a.external_id).strip_prefix(rt.plan.project.path())
        && !rel.as_os_str().is_empty()
    {
        return rel.to_string_lossy().into_owned();
    }
    a.external_id.clone()
}

fn opt_string(m: &Map, key: &str) -> Result<Option<String>, String> {
    match m.get(key) {
        None => Ok(None),
        Some(v) if v.is_unit() => Ok(None),
        Some(v) => value::string(v, key).map(Some),
    }
}

/// Scalars become label text; anything else is refused.
fn label_value(k: &str, v: &Dynamic) -> Result<String, String> {
    if v.is_string() || v.is_int() || v.is_bool() || v.is_float() {
        Ok(v.to_string())
    } else {
        Err(format!(
            "label {k:?} must be a string, number or bool, not {}",
            v.type_name()
        ))
    }
}

/// `ctx.registry_record(#{ bucket, labels, description, artifacts })`: validates the
/// record now (so a bad label fails this post-processor, not the end of the run),
/// hashes file artifacts through the caller's `read` grant, and stages the record;
/// it is written when the run ends, with the run's provenance.
fn stage_record(c: &Ctx, spec: &Map) -> Result<Map, String> {
    value::check_keys(
        spec,
        &["bucket", "labels", "description", "artifacts"],
        "registry_record",
    )?;
    let rt = &c.rt;
    let bucket = opt_string(spec, "bucket")?.unwrap_or_else(|| rt.build.name.clone());
    c.scope
        .check(&Use::name(&SPEC, &bucket))
        .map_err(|d| d.to_string())?;
    let mut labels = BTreeMap::new();
    if let Some(v) = spec.get("labels").filter(|v| !v.is_unit()) {
        let m = v
            .clone()
            .try_cast::<Map>()
            .ok_or("labels must be a map like #{ os: \"debian\" }")?;
        for (k, v) in m {
            labels.insert(k.to_string(), label_value(&k, &v)?);
        }
    }
    let description = opt_string(spec, "description")?;
    let mut artifacts = Vec::new();
    if let Some(v) = spec.get("artifacts").filter(|v| !v.is_unit()) {
        let list: Array = v
            .clone()
            .into_array()
            .map_err(|t| format!("artifacts must be an array of maps, not {t}"))?;
        for (i, a) in list.into_iter().enumerate() {
            let m = a
                .try_cast::<Map>()
                .ok_or_else(|| format!("artifacts[{i}] must be a map"))?;
            artifacts.push(artifact(c, &m).map_err(|e| format!("artifacts[{i}]: {e}"))?);
        }
    }
    let cap = RegistryCap::new(c.scope.clone(), rt.plan.project.path());
    let fingerprint = cap.fingerprint().map_err(|e| e.to_string())?;
    let name = super::targets(&rt.plan)
        .into_iter()
        .find(|t| t.label == rt.label && t.bucket == bucket)
        .map(|t| t.name)
        .unwrap_or_else(|| rt.source.name.clone());
    // Everything the store would refuse is refused here, where the user sees it.
    RecordBuild {
        bucket: bucket.clone(),
        description: description.clone(),
        fingerprint: fingerprint.clone(),
        expected_builds: vec![],
        build: BuildRecord {
            name: name.clone(),
            labels: labels.clone(),
            status: BuildStatus::Succeeded,
            error: None,
            started_at: None,
            finished_at: None,
            artifacts: artifacts.clone(),
        },
        provenance: Provenance::new(
            &rt.plan.script_name,
            &rt.plan.script_sha256,
            env!("CARGO_PKG_VERSION"),
        ),
    }
    .validate()
    .map_err(|e| e.to_string())?;
    let count = artifacts.len();
    super::stage(Staged {
        scope: c.scope.clone(),
        bucket: bucket.clone(),
        name: name.clone(),
        description,
        labels,
        artifacts,
        started_at: Some(Timestamp::from_millis(
            i64::try_from(rt.started.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
        )),
        finished_at: Timestamp::now(),
    });
    rt.ui.message(
        &rt.label,
        &format!(
            "registry: {bucket}/{fingerprint} build {name} ({count} artifact(s)) is recorded when the run ends"
        ),
    );
    let mut out = Map::new();
    out.insert("bucket".into(), bucket.into());
    out.insert("fingerprint".into(), fingerprint.to_string().into());
    out.insert("build".into(), name.into());
    Ok(out)
}

/// One `#{ platform, region, external_id }` or `#{ platform, region, file }`; a file is
/// opened through the caller's `read` grant and hashed (streamed), and recorded by its
/// absolute path.
fn artifact(c: &Ctx, m: &Map) -> Result<Artifact, String> {
    value::check_keys(
        m,
        &["platform", "region", "external_id", "file"],
        "registry artifact",
    )?;
    let platform: Platform = opt_string(m, "platform")?
        .ok_or("`platform` is required: qemu, vagrant, aws, oci or openstack")?
        .parse()
        .map_err(|e: kiln_registry::RegistryError| e.to_string())?;
    let region = opt_string(m, "region")?.unwrap_or_else(|| "local".into());
    match (opt_string(m, "external_id")?, opt_string(m, "file")?) {
        (Some(id), None) => Ok(Artifact::new(platform, &region, &id)),
        (None, Some(file)) => {
            let project = &c.rt.plan.project;
            let mut f = project
                .open_read(&c.scope, &file)
                .map_err(|e| e.to_string())?;
            let size = f.metadata().map_err(|e| format!("{file}: {e}"))?.len();
            let mut h = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(|e| format!("{file}: {e}"))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            let abs = if std::path::Path::new(&file).is_absolute() {
                std::path::PathBuf::from(&file)
            } else {
                project.path().join(&file)
            };
            let mut a = Artifact::new(platform, &region, &abs.to_string_lossy());
            a.sha256 = Some(hex::encode(h.finalize()));
            a.size = Some(size);
            a.path = Some(file);
            Ok(a)
        }
        _ => {
            Err("give exactly one of `external_id` (an AMI id, a digest) or `file` (a path)".into())
        }
    }
}
