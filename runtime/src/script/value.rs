//! Converting Rhai values into the typed pieces of a plan, with errors that name the
//! key and what was expected.

use std::time::Duration;

use rhai::{Array, Dynamic, Map};

use crate::plan::SecretHandle;

/// Refuses keys not in `allowed`, naming the key, the nearest allowed one, and all
/// the keys allowed.
pub fn check_keys(map: &Map, allowed: &[&str], what: &str) -> Result<(), String> {
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            let mut keys: Vec<&str> = allowed.to_vec();
            keys.sort_unstable();
            let hint = match crate::suggest::nearest(key, keys.iter().copied()) {
                Some(k) => format!(" (did you mean `{k}`?)"),
                None => String::new(),
            };
            return Err(format!(
                "unknown key `{key}` in {what}{hint}; allowed keys: {}",
                keys.join(", ")
            ));
        }
    }
    Ok(())
}

/// An env value as text: a `secret()` becomes its value (inside the host, at the last
/// moment), anything else its display form.
pub fn resolve_secret_text(v: &Dynamic) -> String {
    match v.clone().try_cast::<SecretHandle>() {
        Some(s) => s.value().to_string(),
        None => v.to_string(),
    }
}

/// An integer that must fit `T` (a port, a size in MiB), with a clear error instead of
/// a silent wrap (`70000 as u16` is 4464).
pub fn int_in<T: TryFrom<i64>>(v: &Dynamic, what: &str, range: &str) -> Result<T, String> {
    let n = int(v, what)?;
    T::try_from(n).map_err(|_| format!("{what} must be {range}, not {n}"))
}

pub fn string(v: &Dynamic, what: &str) -> Result<String, String> {
    if v.is_string() {
        return Ok(v.clone().into_string().unwrap_or_default());
    }
    Err(format!("{what} must be a string, not {}", v.type_name()))
}

pub fn string_list(v: &Dynamic, what: &str) -> Result<Vec<String>, String> {
    if v.is_string() {
        return Ok(vec![string(v, what)?]);
    }
    let arr = v
        .clone()
        .into_array()
        .map_err(|t| format!("{what} must be an array of strings, not {t}"))?;
    arr.iter().map(|x| string(x, what)).collect()
}

pub fn bool(v: &Dynamic, what: &str) -> Result<bool, String> {
    v.as_bool()
        .map_err(|t| format!("{what} must be true or false, not {t}"))
}

pub fn int(v: &Dynamic, what: &str) -> Result<i64, String> {
    v.as_int()
        .map_err(|t| format!("{what} must be an integer, not {t}"))
}

/// `"5m"`, `"90s"`, `"1h30m"` (humantime) or a number of seconds.
pub fn duration(v: &Dynamic, what: &str) -> Result<Duration, String> {
    if let Ok(secs) = v.as_int() {
        if secs < 0 {
            return Err(format!("{what} must not be negative"));
        }
        return Ok(Duration::from_secs(secs.unsigned_abs()));
    }
    let s = string(v, what)?;
    parse_duration(&s).map_err(|e| format!("{what}: {e}"))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like \"90s\" or \"5m\" ({e})"))
}

/// Sizes like `"4G"`, `"512M"`, `"1024K"` or a number of bytes.
pub fn size_bytes(v: &Dynamic, what: &str) -> Result<u64, String> {
    if let Ok(n) = v.as_int() {
        return u64::try_from(n).map_err(|_| format!("{what} must not be negative"));
    }
    let s = string(v, what)?;
    parse_size(&s).ok_or_else(|| format!("{what}: {s:?} is not a size like \"4G\" or \"512M\""))
}

pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A map value to JSON. Secret handles are refused: their values must never be
/// copied into data a guest or an artifact sees.
pub fn to_json(v: &Dynamic) -> Result<serde_json::Value, String> {
    if v.is::<SecretHandle>() {
        return Err("a secret() cannot be converted to data; grant it with \
                    allow: #{ secrets: [\"NAME\"] } and read it where it is needed"
            .into());
    }
    if let Some(r) = v.clone().try_cast::<crate::plan::RegistryRef>() {
        return Err(format!(
            "{r} is resolved only where a source's configuration names an image              (disk_image, source_ami, ...), when the build starts"
        ));
    }
    if v.is_map() {
        let map = v.clone().cast::<Map>();
        let mut obj = serde_json::Map::new();
        for (k, x) in map {
            obj.insert(k.to_string(), to_json(&x)?);
        }
        return Ok(serde_json::Value::Object(obj));
    }
    if v.is_array() {
        let arr = v.clone().cast::<Array>();
        return arr
            .iter()
            .map(to_json)
            .collect::<Result<Vec<_>, _>>()
            .map(serde_json::Value::Array);
    }
    rhai::serde::from_dynamic::<serde_json::Value>(v).map_err(|e| e.to_string())
}

/// JSON to a Rhai value.
pub fn from_json(v: &serde_json::Value) -> Dynamic {
    rhai::serde::to_dynamic(v).unwrap_or(Dynamic::UNIT)
}

/// An `ssh: #{...}` map as the communicator's config. Secret handles become their
/// values here, at the last moment, inside the host.
pub fn ssh_config(v: &Dynamic) -> Result<crate::host::ssh::SshConfig, String> {
    let resolved = resolve_secrets(v);
    rhai::serde::from_dynamic(&resolved).map_err(|e| format!("ssh: {e}"))
}

fn resolve_secrets(v: &Dynamic) -> Dynamic {
    if let Some(s) = v.clone().try_cast::<SecretHandle>() {
        return Dynamic::from(s.value().to_string());
    }
    if v.is_map() {
        let map = v.clone().cast::<Map>();
        let out: Map = map
            .into_iter()
            .map(|(k, x)| (k, resolve_secrets(&x)))
            .collect();
        return Dynamic::from_map(out);
    }
    v.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("10"), Some(10));
        assert_eq!(parse_size("4X"), None);
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn unknown_keys_name_the_allowed_ones() {
        let mut m = Map::new();
        m.insert("memroy".into(), Dynamic::from(1_i64));
        let e = check_keys(&m, &["memory", "cpus"], "qemu config").unwrap_err();
        assert_eq!(
            e,
            "unknown key `memroy` in qemu config (did you mean `memory`?); allowed keys: cpus, memory"
        );
    }
}
