//! `kiln inspect`: the plan as text (or JSON), grants included, touching nothing.

use std::fmt::Write;

use serde_json::json;

use rhai::{Array, Dynamic, Map};

use super::{Plan, RegistryRef, SecretHandle, StepKind, StepSpec};
use crate::caps::Grants;

/// Where a step's or source's path grants lead when that is not what they say
/// (`read(~/.ssh) -> /home/me/.ssh`), and which are refused; supplied by the caller,
/// which may look at the file system.
pub type GrantInfo<'a> = &'a dyn Fn(&Grants) -> Vec<String>;

/// Renders a value for `kiln inspect` (secrets shown by name only).
pub fn render_value(v: &Dynamic) -> String {
    if let Some(s) = v.clone().try_cast::<SecretHandle>() {
        return s.to_string();
    }
    if let Some(r) = v.clone().try_cast::<RegistryRef>() {
        return r.to_string();
    }
    if v.is_map() {
        let map = v.clone().cast::<Map>();
        let inner: Vec<String> = map
            .iter()
            .map(|(k, x)| format!("{k}: {}", render_value(x)))
            .collect();
        return format!("#{{ {} }}", inner.join(", "));
    }
    if v.is_array() {
        let arr = v.clone().cast::<Array>();
        let inner: Vec<String> = arr.iter().map(render_value).collect();
        return format!("[{}]", inner.join(", "));
    }
    if v.is_string() {
        return format!("{:?}", v.clone().into_string().unwrap_or_default());
    }
    v.to_string()
}

fn step_line(i: usize, s: &StepSpec, grant_info: GrantInfo<'_>) -> String {
    let mut extra = Vec::new();
    let o = &s.options;
    if let Some(t) = o.timeout {
        extra.push(format!("timeout {}", humantime::format_duration(t)));
    }
    if o.max_retries > 0 {
        extra.push(format!("max_retries {}", o.max_retries));
    }
    if let Some(p) = o.pause_before {
        extra.push(format!("pause_before {}", humantime::format_duration(p)));
    }
    if !o.only.is_empty() {
        extra.push(format!("only {}", o.only.join(",")));
    }
    if !o.except.is_empty() {
        extra.push(format!("except {}", o.except.join(",")));
    }
    if o.expect_disconnect {
        extra.push("expect_disconnect".into());
    }
    if !o.env.is_empty() {
        let names: Vec<&str> = o.env.iter().map(|(k, _)| k.as_str()).collect();
        extra.push(format!("env {}", names.join(",")));
    }
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(" [{}]", extra.join("; "))
    };
    let mut line = format!(
        "    {}. {}{extra}\n         grants: {}",
        i + 1,
        s.describe(),
        s.grants.summary()
    );
    let paths = grant_info(&s.grants);
    if !paths.is_empty() {
        line.push_str(&format!("\n         paths:  {}", paths.join("; ")));
    }
    line
}

/// Human-readable plan.
pub fn render_inspect(
    plan: &Plan,
    wasm_info: &dyn Fn(&str) -> Option<String>,
    grant_info: GrantInfo<'_>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Script: {} (sha256 {})",
        plan.script_name, plan.script_sha256
    );
    let _ = writeln!(out, "Project: {}", plan.project.path().display());
    let _ = writeln!(out, "\nVariables:");
    if plan.vars.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for (k, v) in &plan.vars {
        let _ = writeln!(out, "  {k} = {} ({})", v.value, v.from);
    }
    if !plan.secrets.is_empty() {
        let _ = writeln!(
            out,
            "\nSecrets (values redacted): {}",
            plan.secrets.join(", ")
        );
    }
    let _ = writeln!(out, "\nSources:");
    for s in &plan.sources {
        let _ = writeln!(out, "  {}: {} ({})", s.name, s.builder, s.script);
        let _ = writeln!(out, "      grants: {}", s.grants.summary());
        let paths = grant_info(&s.grants);
        if !paths.is_empty() {
            let _ = writeln!(out, "      paths:  {}", paths.join("; "));
        }
        let mut keys: Vec<_> = s.config.iter().filter(|(_, v)| !v.is_unit()).collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in keys {
            let _ = writeln!(out, "      {k}: {}", render_value(v));
        }
    }
    let _ = writeln!(out, "\nBuilds:");
    for b in &plan.builds {
        let _ = writeln!(out, "  {} (sources: {})", b.name, b.sources.join(", "));
        if b.steps.is_empty() {
            let _ = writeln!(out, "    (no steps)");
        }
        for (i, s) in b.steps.iter().enumerate() {
            let _ = writeln!(out, "{}", step_line(i, s, grant_info));
            let info = match &s.kind {
                StepKind::Wasm { path, .. } => wasm_info(path),
                _ => None,
            };
            for l in info.iter().flat_map(|i| i.lines()) {
                let _ = writeln!(out, "         {l}");
            }
        }
        if !b.post.is_empty() {
            let names: Vec<&str> = b.post.iter().map(|p| p.name.as_str()).collect();
            let _ = writeln!(out, "    post-processors: {}", names.join(" -> "));
            for p in b.post.iter().filter(|p| p.grants != Grants::default()) {
                let _ = writeln!(out, "      {} also holds: {}", p.name, p.grants.summary());
            }
        }
    }
    out
}

/// The plan as one JSON document (`kiln inspect --machine-readable`).
pub fn inspect_json(plan: &Plan, grant_info: GrantInfo<'_>) -> serde_json::Value {
    json!({
        "script": plan.script_name,
        "script_sha256": plan.script_sha256,
        "variables": plan.vars.iter().map(|(k, v)| (k.clone(), json!({ "value": v.value, "from": v.from }))).collect::<serde_json::Map<_, _>>(),
        "secrets": plan.secrets,
        "sources": plan.sources.iter().map(|s| json!({
            "name": s.name, "builder": s.builder, "script": s.script.to_string(), "grants": s.grants,
            "paths": grant_info(&s.grants),
        })).collect::<Vec<_>>(),
        "builds": plan.builds.iter().map(|b| json!({
            "name": b.name,
            "sources": b.sources,
            "steps": b.steps.iter().map(|s| json!({ "kind": s.kind_name(), "describe": s.describe(), "grants": s.grants, "paths": grant_info(&s.grants) })).collect::<Vec<_>>(),
            "post": b.post.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
