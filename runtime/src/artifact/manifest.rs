//! The build manifest: a JSON file whose fields are a superset of Packer's
//! `packer-manifest.json` (`builds[].name`, `builder_type`, `build_time`,
//! `files[].name/size`, `artifact_id`, `custom_data`, `last_run_uuid`), plus what
//! makes an artifact traceable: the script's sha256, the grants, the audit log.

use std::io::{Read, Write};
use std::sync::Mutex;

use rhai::Dynamic;

use crate::caps::{Project, Scope};
use crate::script::value;

/// Parallel builds append to the same file; serialize read-modify-write in-process.
static LOCK: Mutex<()> = Mutex::new(());

/// Appends one build entry to the manifest at `path` (creating it), and sets
/// `last_run_uuid`. Existing entries from earlier runs are kept, as Packer does.
pub fn append(
    project: &Project,
    scope: &Scope,
    path: &str,
    entry: &Dynamic,
    run_uuid: &str,
) -> Result<(), String> {
    let entry = value::to_json(entry)?;
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut doc = match project.open_read(scope, path) {
        Ok(mut f) => {
            let mut text = String::new();
            f.read_to_string(&mut text)
                .map_err(|e| format!("{path}: {e}"))?;
            if text.trim().is_empty() {
                serde_json::json!({})
            } else {
                serde_json::from_str(&text).map_err(|e| format!("{path} exists but is not a manifest ({e}); remove it or choose another output"))?
            }
        }
        Err(_) => serde_json::json!({}),
    };
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| format!("{path} exists but is not a JSON object"))?;
    let builds = obj
        .entry("builds")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    builds
        .as_array_mut()
        .ok_or_else(|| format!("{path}: `builds` is not an array"))?
        .push(entry);
    obj.insert("last_run_uuid".into(), run_uuid.into());
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    // Write to a temp name and rename so a reader never sees half a manifest.
    let tmp = format!("{path}.kiln-tmp");
    let mut f = project.create(scope, &tmp).map_err(|e| e.to_string())?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .map_err(|e| format!("{path}: {e}"))?;
    drop(f);
    project
        .dir()
        .rename(&tmp, project.dir(), path)
        .map_err(|e| format!("{path}: {e}"))
}
