//! `ctx.openstack_publish(file, opts)` for post-processor scripts: the options map
//! parsed into a [`Request`], then [`publish`] (every cloud call through the facade).
//! Secret options (`password`, `token`, `application_credential_secret`) must be
//! `secret("NAME")` handles: a plain string would show in `kiln inspect` and in logs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_openstack::{CloudOptions, NewImage, Secret, WaitOptions};
use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, NativeCallContext};

use super::publish::{ImportMethod, Published, Request, publish};
use crate::caps::fs::expand_home;
use crate::plan::SecretHandle;
use crate::script::api::{Ctx, block};
use crate::script::error::runtime_err;
use crate::script::value;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// The image keys; the others are the cloud's ([`AUTH_KEYS`]).
const IMAGE_KEYS: &[&str] = &[
    "name",
    "disk_format",
    "container_format",
    "visibility",
    "min_disk",
    "min_ram",
    "properties",
    "tags",
    "protected",
    "replace_existing",
    "wait_timeout",
    "import_method",
];

/// clouds.yaml's names (and the `OS_*` variables' without the prefix).
const AUTH_KEYS: &[&str] = &[
    "cloud",
    "auth_type",
    "auth_url",
    "username",
    "user_id",
    "password",
    "project_name",
    "project_id",
    "user_domain_name",
    "user_domain_id",
    "project_domain_name",
    "project_domain_id",
    "domain_name",
    "domain_id",
    "default_domain",
    "token",
    "application_credential_id",
    "application_credential_name",
    "application_credential_secret",
    "region_name",
    "interface",
    "endpoint",
    "cacert",
    "insecure",
];

pub fn register(engine: &mut Engine) {
    engine.register_fn(
        "openstack_publish",
        |ctx: NativeCallContext, c: &mut Ctx, file: &str, opts: Map| -> RhaiResult<Map> {
            let err = |m: String| runtime_err(m, ctx.call_position());
            let mut keys: Vec<&str> = IMAGE_KEYS.to_vec();
            keys.extend_from_slice(AUTH_KEYS);
            value::check_keys(&opts, &keys, "openstack_publish options").map_err(err)?;
            let abs =
                c.rt.plan
                    .project
                    .host_path_read(&c.scope, file)
                    .map_err(|e| err(e.to_string()))?;
            let mut req = request(&opts, abs, file).map_err(err)?;
            // a CA bundle the script names is read through the caller's grants, like an
            // SSH key; OS_CACERT and clouds.yaml's cacert are the user's own config
            if let Some(ca) = opt_str(&opts, "cacert").map_err(err)? {
                let path = expand_home(&ca);
                req.cloud.cacert = Some(
                    c.rt.plan
                        .project
                        .host_path_read(&c.scope, &path)
                        .map_err(|e| err(format!("cacert: {e}")))?,
                );
            }
            let published = block(&ctx, &c.rt, publish(&c.rt, &c.scope, req))?
                .map_err(|e| err(e.to_string()))?;
            Ok(to_map(&published))
        },
    );
}

fn opt(m: &Map, key: &str) -> Option<Dynamic> {
    m.get(key).filter(|v| !v.is_unit()).cloned()
}

fn opt_str(m: &Map, key: &str) -> Result<Option<String>, String> {
    opt(m, key).map(|v| value::string(&v, key)).transpose()
}

fn opt_secret(m: &Map, key: &str) -> Result<Option<Secret>, String> {
    let Some(v) = opt(m, key) else {
        return Ok(None);
    };
    match v.try_cast::<SecretHandle>() {
        Some(s) => Ok(Some(Secret::new(s.value()))),
        None => Err(format!(
            "{key} must be a secret(\"NAME\") handle (the value read from kiln's environment), \
             not a plain value: a plain value would show in `kiln inspect` and in logs"
        )),
    }
}

/// Glance stores extra properties as strings; numbers and booleans are written out.
fn property(key: &str, v: &Dynamic) -> Result<String, String> {
    if v.is_string() {
        return Ok(v.clone().into_string().unwrap_or_default());
    }
    if let Ok(b) = v.as_bool() {
        return Ok(b.to_string());
    }
    if let Ok(i) = v.as_int() {
        return Ok(i.to_string());
    }
    Err(format!(
        "properties.{key} must be a string, a number or true/false, not {}",
        v.type_name()
    ))
}

fn request(opts: &Map, file: PathBuf, label: &str) -> Result<Request, String> {
    let name = opt_str(opts, "name")?.ok_or("`name` is required")?;
    let disk_format = opt_str(opts, "disk_format")?
        .ok_or("`disk_format` is required")?
        .parse()
        .map_err(|e: kiln_openstack::Error| e.to_string())?;
    let mut image = NewImage::new(name, disk_format);
    if let Some(f) = opt_str(opts, "container_format")? {
        image.container_format = f
            .parse()
            .map_err(|e: kiln_openstack::Error| e.to_string())?;
    }
    if let Some(v) = opt_str(opts, "visibility")? {
        image.visibility = Some(
            v.parse()
                .map_err(|e: kiln_openstack::Error| e.to_string())?,
        );
    }
    if let Some(d) = opt(opts, "min_disk") {
        image.min_disk = Some(value::int_in::<u64>(
            &d,
            "min_disk",
            "a size in GiB (0 or more)",
        )?);
    }
    if let Some(r) = opt(opts, "min_ram") {
        image.min_ram = Some(value::int_in::<u64>(
            &r,
            "min_ram",
            "a size in MiB (0 or more)",
        )?);
    }
    if let Some(t) = opt(opts, "tags") {
        image.tags = value::string_list(&t, "tags")?;
    }
    if let Some(p) = opt(opts, "properties") {
        let m = p
            .try_cast::<Map>()
            .ok_or("properties must be a map like #{ os_distro: \"debian\" }")?;
        let mut props = BTreeMap::new();
        for (k, v) in &m {
            props.insert(k.to_string(), property(k, v)?);
        }
        image.properties = props;
    }
    let flag = |k: &str| -> Result<bool, String> {
        opt(opts, k).map_or(Ok(false), |v| value::bool(&v, k))
    };
    let wait = match opt(opts, "wait_timeout") {
        Some(d) => value::duration(&d, "wait_timeout")?,
        None => WaitOptions::default().timeout,
    };
    let import = match opt_str(opts, "import_method")? {
        Some(m) => m.parse()?,
        None => ImportMethod::Upload,
    };
    let s = |k: &str| opt_str(opts, k);
    let cloud = CloudOptions {
        cloud: s("cloud")?,
        auth_type: s("auth_type")?,
        auth_url: s("auth_url")?,
        username: s("username")?,
        user_id: s("user_id")?,
        password: opt_secret(opts, "password")?,
        project_name: s("project_name")?,
        project_id: s("project_id")?,
        user_domain_name: s("user_domain_name")?,
        user_domain_id: s("user_domain_id")?,
        project_domain_name: s("project_domain_name")?,
        project_domain_id: s("project_domain_id")?,
        domain_name: s("domain_name")?,
        domain_id: s("domain_id")?,
        default_domain: s("default_domain")?,
        token: opt_secret(opts, "token")?,
        application_credential_id: s("application_credential_id")?,
        application_credential_name: s("application_credential_name")?,
        application_credential_secret: opt_secret(opts, "application_credential_secret")?,
        region_name: s("region_name")?,
        interface: s("interface")?,
        endpoint: s("endpoint")?,
        // set by the caller, through the read grants
        cacert: None,
        insecure: opt(opts, "insecure")
            .map(|v| value::bool(&v, "insecure"))
            .transpose()?,
    };
    Ok(Request {
        file,
        file_label: label.to_string(),
        image,
        protected: flag("protected")?,
        replace_existing: flag("replace_existing")?,
        wait: WaitOptions {
            timeout: wait,
            ..WaitOptions::default()
        },
        import,
        cloud,
    })
}

fn int(n: u64) -> Dynamic {
    Dynamic::from(i64::try_from(n).unwrap_or(i64::MAX))
}

fn opt_string(s: &Option<String>) -> Dynamic {
    s.clone().map(Dynamic::from).unwrap_or(Dynamic::UNIT)
}

/// What the script (and so the artifact and the manifest) gets back.
fn to_map(p: &Published) -> Map {
    let img = &p.image;
    let mut m = Map::new();
    m.insert("cloud".into(), p.cloud.clone().into());
    m.insert("endpoint".into(), p.endpoint.clone().into());
    m.insert("id".into(), img.id.clone().into());
    m.insert("name".into(), opt_string(&img.name));
    m.insert("status".into(), img.status.to_string().into());
    m.insert("disk_format".into(), opt_string(&img.disk_format));
    m.insert("container_format".into(), opt_string(&img.container_format));
    m.insert("visibility".into(), opt_string(&img.visibility));
    m.insert("protected".into(), img.protected.into());
    m.insert("size".into(), int(img.size.unwrap_or(p.bytes)));
    m.insert(
        "virtual_size".into(),
        img.virtual_size.map(int).unwrap_or(Dynamic::UNIT),
    );
    m.insert("checksum".into(), opt_string(&img.checksum));
    m.insert("os_hash_algo".into(), opt_string(&img.os_hash_algo));
    m.insert("os_hash_value".into(), opt_string(&img.os_hash_value));
    m.insert("verified_with".into(), p.verified_with.clone().into());
    m.insert("sha512".into(), p.sha512.clone().into());
    m.insert("import_method".into(), p.import_method.into());
    m.insert("owner".into(), opt_string(&img.owner));
    m.insert(
        "tags".into(),
        Dynamic::from_array(img.tags.iter().cloned().map(Dynamic::from).collect()),
    );
    m.insert(
        "replaced".into(),
        Dynamic::from_array(
            p.replaced
                .iter()
                .cloned()
                .map(Dynamic::from)
                .collect::<Array>(),
        ),
    );
    m
}
