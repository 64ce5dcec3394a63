//! `registry_artifact(#{ bucket, channel, platform, region })`: a source's dependency on
//! an artifact in kiln's registry. Declaring it records the query only; the runner
//! resolves it through the `registry` capability when the build starts, so a revoked
//! parent fails that build, and the child's record names the parent it was built from.

use std::fmt;

use rhai::{Array, Dynamic, Map};

pub use kiln_registry::ArtifactQuery;

/// One `registry_artifact(...)` value, as it sits in a source's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryRef {
    pub query: ArtifactQuery,
    /// `build.rhai:4:17`: where the script asked for it.
    pub declared_at: String,
}

impl RegistryRef {
    /// The channel it follows (`latest` unless the script named one).
    pub fn channel(&self) -> &str {
        self.query
            .channel
            .as_deref()
            .unwrap_or(kiln_registry::LATEST)
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "registry_artifact({}@{}, {}/{}",
            self.query.bucket,
            self.channel(),
            self.query.platform,
            self.query.region
        )?;
        if let Some(b) = &self.query.build {
            write!(f, ", build {b}")?;
        }
        f.write_str(")")
    }
}

/// Every registry reference in a configuration, with the key path it sits at
/// (`disk_image`, `sources[1].image`), in key order.
pub fn registry_refs(config: &Map) -> Vec<(String, RegistryRef)> {
    fn walk(v: &Dynamic, at: String, out: &mut Vec<(String, RegistryRef)>) {
        if let Some(r) = v.clone().try_cast::<RegistryRef>() {
            out.push((at, r));
        } else if v.is_map() {
            for (k, x) in v.clone().cast::<Map>() {
                let at = if at.is_empty() {
                    k.to_string()
                } else {
                    format!("{at}.{k}")
                };
                walk(&x, at, out);
            }
        } else if v.is_array() {
            for (i, x) in v.clone().cast::<Array>().iter().enumerate() {
                walk(x, format!("{at}[{i}]"), out);
            }
        }
    }
    let mut out = Vec::new();
    for (k, v) in config {
        walk(v, k.to_string(), &mut out);
    }
    out
}

/// `config` with every registry reference replaced by what `resolve` returns for it
/// (its key path and the reference); the first error stops the walk.
pub fn replace_registry_refs<E>(
    config: &Map,
    resolve: &mut dyn FnMut(&str, &RegistryRef) -> Result<Dynamic, E>,
) -> Result<Map, E> {
    fn walk<E>(
        v: &Dynamic,
        at: &str,
        resolve: &mut dyn FnMut(&str, &RegistryRef) -> Result<Dynamic, E>,
    ) -> Result<Dynamic, E> {
        if let Some(r) = v.clone().try_cast::<RegistryRef>() {
            return resolve(at, &r);
        }
        if v.is_map() {
            let mut m = Map::new();
            for (k, x) in v.clone().cast::<Map>() {
                let sub = if at.is_empty() {
                    k.to_string()
                } else {
                    format!("{at}.{k}")
                };
                m.insert(k, walk(&x, &sub, resolve)?);
            }
            return Ok(Dynamic::from_map(m));
        }
        if v.is_array() {
            let mut a = Array::new();
            for (i, x) in v.clone().cast::<Array>().iter().enumerate() {
                a.push(walk(x, &format!("{at}[{i}]"), resolve)?);
            }
            return Ok(Dynamic::from_array(a));
        }
        Ok(v.clone())
    }
    let mut out = Map::new();
    for (k, v) in config {
        out.insert(k.clone(), walk(v, k.as_str(), resolve)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_registry::Platform;

    fn r(bucket: &str) -> RegistryRef {
        RegistryRef {
            query: ArtifactQuery {
                bucket: bucket.into(),
                channel: Some("prod".into()),
                platform: Platform::Qemu,
                region: "local".into(),
                build: None,
            },
            declared_at: "build.rhai:1:1".into(),
        }
    }

    #[test]
    fn finds_and_replaces_nested_refs() {
        let mut inner = Map::new();
        inner.insert("image".into(), Dynamic::from(r("b")));
        let mut cfg = Map::new();
        cfg.insert("disk_image".into(), Dynamic::from(r("a")));
        cfg.insert("memory".into(), Dynamic::from(1024_i64));
        cfg.insert(
            "extra".into(),
            Dynamic::from_array(vec![Dynamic::from_map(inner)]),
        );
        let found: Vec<String> = registry_refs(&cfg)
            .into_iter()
            .map(|(at, x)| format!("{at}={x}"))
            .collect();
        assert_eq!(
            found,
            vec![
                "disk_image=registry_artifact(a@prod, qemu/local)",
                "extra[0].image=registry_artifact(b@prod, qemu/local)",
            ]
        );
        let out = replace_registry_refs::<String>(&cfg, &mut |at, x| {
            Ok(Dynamic::from(format!("/img/{}-{at}", x.query.bucket)))
        })
        .unwrap();
        assert_eq!(out["disk_image"].to_string(), "/img/a-disk_image");
        assert_eq!(out["memory"].as_int().unwrap(), 1024);
        assert!(registry_refs(&out).is_empty());
        let e = replace_registry_refs::<String>(&cfg, &mut |_, _| Err("revoked".into()));
        assert_eq!(e.unwrap_err(), "revoked");
    }
}
