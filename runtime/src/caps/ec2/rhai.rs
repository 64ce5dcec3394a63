//! `ctx.ec2(#{...})` for builders: an `Ec2` object whose methods are a few lines each
//! over [`super::Ec2Cap`]. Scripts pass credentials as `secret()` handles and get ids,
//! names and states back; never a credential, never a private key (a temporary key pair
//! is a [`crate::caps::ssh::PrivateKey`] handle for `ctx.connect`).

use std::sync::Arc;
use std::time::Duration;

use kiln_ec2::{
    BlockDeviceMapping, CopyImageRequest, CreateImageRequest, CredentialsConfig, EbsBlockDevice,
    Filter, Image, Instance, KeyType, LaunchPermissions, RunInstanceRequest, Secret,
    ShutdownBehavior, SourceImageFilter, SpotOptions, Tags,
};
use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, NativeCallContext};

use super::{ClientSpec, Ec2Cap};
use crate::context::BuildRt;
use crate::plan::SecretHandle;
use crate::script::api::{Ctx, block};
use crate::script::error::runtime_err;
use crate::script::value;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// What `ctx.ec2(...)` returns.
#[derive(Clone)]
pub struct Ec2Obj {
    cap: Ec2Cap,
    rt: Arc<BuildRt>,
    scope: crate::caps::Scope,
}

fn err(ctx: &NativeCallContext, msg: impl std::fmt::Display) -> Box<EvalAltResult> {
    runtime_err(msg.to_string(), ctx.call_position())
}

fn opt_str(m: &Map, key: &str) -> Result<Option<String>, String> {
    match m.get(key) {
        None => Ok(None),
        Some(v) if v.is_unit() => Ok(None),
        Some(v) => value::string(v, key).map(Some),
    }
}

fn opt_bool(m: &Map, key: &str) -> Result<Option<bool>, String> {
    match m.get(key) {
        None => Ok(None),
        Some(v) if v.is_unit() => Ok(None),
        Some(v) => value::bool(v, key).map(Some),
    }
}

fn opt_u64(m: &Map, key: &str) -> Result<Option<u64>, String> {
    match m.get(key) {
        None => Ok(None),
        Some(v) if v.is_unit() => Ok(None),
        Some(v) => value::int_in::<u64>(v, key, "a positive number").map(Some),
    }
}

fn list(m: &Map, key: &str) -> Result<Vec<String>, String> {
    match m.get(key) {
        None => Ok(vec![]),
        Some(v) if v.is_unit() => Ok(vec![]),
        Some(v) => value::string_list(v, key),
    }
}

/// A `#{ key: "value" }` map of tags (numbers and booleans become text).
fn tags(v: Option<&Dynamic>, what: &str) -> Result<Tags, String> {
    let Some(v) = v.filter(|v| !v.is_unit()) else {
        return Ok(Tags::new());
    };
    let m = v
        .clone()
        .try_cast::<Map>()
        .ok_or_else(|| format!("{what} must be a map like #{{ Name: \"web\" }}"))?;
    let mut out = Tags::new();
    for (k, v) in m {
        if v.is::<SecretHandle>() {
            return Err(format!("{what}.{k}: a secret() cannot be a tag"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// A credential option: a `secret()` handle (its variable name goes to the ledger, its
/// value to the client only) or, for `access_key` only, plain text.
fn credential(
    m: &Map,
    key: &str,
    plain_ok: bool,
) -> Result<(Option<String>, Option<String>), String> {
    match m.get(key) {
        None => Ok((None, None)),
        Some(v) if v.is_unit() => Ok((None, None)),
        Some(v) => {
            if let Some(s) = v.clone().try_cast::<SecretHandle>() {
                return Ok((Some(s.value().to_string()), Some(s.name.clone())));
            }
            if plain_ok && v.is_string() {
                return Ok((Some(v.to_string()), None));
            }
            Err(format!(
                "{key} must be a secret(\"NAME\") (its value is read from the environment \
                 variable NAME), not text in the build script"
            ))
        }
    }
}

const CLIENT_KEYS: &[&str] = &[
    "region",
    "endpoint",
    "profile",
    "access_key",
    "secret_key",
    "session_token",
    "endpoint_ignores_client_tokens",
];

fn new_client(ctx: &NativeCallContext, c: &Ctx, cfg: &Map) -> RhaiResult<Ec2Obj> {
    let e = |m: String| err(ctx, m);
    value::check_keys(cfg, CLIENT_KEYS, "ec2 client").map_err(e)?;
    let (access_key, access_key_env) = credential(cfg, "access_key", true).map_err(e)?;
    let (secret_key, secret_key_env) = credential(cfg, "secret_key", false).map_err(e)?;
    let (session_token, session_token_env) = credential(cfg, "session_token", false).map_err(e)?;
    let spec = ClientSpec {
        endpoint: opt_str(cfg, "endpoint").map_err(e)?,
        profile: opt_str(cfg, "profile").map_err(e)?,
        access_key_env,
        secret_key_env,
        session_token_env,
        emulate_client_tokens: opt_bool(cfg, "endpoint_ignores_client_tokens")
            .map_err(e)?
            .unwrap_or(false),
    };
    let creds = CredentialsConfig {
        access_key,
        secret_key: secret_key.map(Secret::new),
        session_token: session_token.map(Secret::new),
        profile: spec.profile.clone(),
    };
    let region = opt_str(cfg, "region").map_err(e)?;
    let cap = Ec2Cap::new(
        c.scope.clone(),
        c.rt.cleanup.clone(),
        c.rt.broker.run_id(),
        region.as_deref(),
        spec,
        &creds,
    )
    .map_err(|x| err(ctx, x))?;
    Ok(Ec2Obj {
        cap,
        rt: c.rt.clone(),
        scope: c.scope.clone(),
    })
}

fn image_map(i: &Image) -> Map {
    let mut m = Map::new();
    let s = |v: &Option<String>| v.clone().map(Dynamic::from).unwrap_or(Dynamic::UNIT);
    m.insert("id".into(), i.image_id.clone().into());
    m.insert("name".into(), s(&i.name));
    m.insert("state".into(), i.state.to_string().into());
    m.insert("owner_id".into(), s(&i.owner_id));
    m.insert("creation_date".into(), s(&i.creation_date));
    m.insert("architecture".into(), s(&i.architecture));
    m.insert("root_device_name".into(), s(&i.root_device_name));
    m.insert(
        "snapshots".into(),
        i.snapshot_ids()
            .into_iter()
            .map(Dynamic::from)
            .collect::<Array>()
            .into(),
    );
    m
}

fn instance_map(i: &Instance) -> Map {
    let mut m = Map::new();
    let s = |v: &Option<String>| v.clone().map(Dynamic::from).unwrap_or(Dynamic::UNIT);
    m.insert("id".into(), i.instance_id.clone().into());
    m.insert("state".into(), i.state.to_string().into());
    m.insert("image_id".into(), s(&i.image_id));
    m.insert("key_name".into(), s(&i.key_name));
    m.insert("public_ip".into(), s(&i.public_ip));
    m.insert("private_ip".into(), s(&i.private_ip));
    m.insert("public_dns".into(), s(&i.public_dns));
    m.insert("private_dns".into(), s(&i.private_dns));
    m.insert("subnet_id".into(), s(&i.subnet_id));
    m.insert("vpc_id".into(), s(&i.vpc_id));
    m.insert("availability_zone".into(), s(&i.availability_zone));
    m
}

fn source_filter(v: &Dynamic) -> Result<SourceImageFilter, String> {
    let m = v.clone().try_cast::<Map>().ok_or(
        "source_ami_filter must be a map like #{ filters: #{ name: \"debian-12-*\" }, owners: [\"136693071363\"], most_recent: true }",
    )?;
    value::check_keys(
        &m,
        &["filters", "owners", "most_recent"],
        "source_ami_filter",
    )?;
    let mut filters = Vec::new();
    if let Some(f) = m.get("filters").filter(|v| !v.is_unit()) {
        let f = f
            .clone()
            .try_cast::<Map>()
            .ok_or("source_ami_filter.filters must be a map of filter name to value(s)")?;
        for (k, v) in f {
            filters.push(Filter::new(
                k.to_string(),
                value::string_list(&v, &format!("source_ami_filter.filters.{k}"))?,
            ));
        }
    }
    Ok(SourceImageFilter {
        filters,
        owners: list(&m, "owners")?,
        most_recent: opt_bool(&m, "most_recent")?.unwrap_or(false),
    })
}

const BDM_KEYS: &[&str] = &[
    "device_name",
    "volume_size",
    "volume_type",
    "iops",
    "throughput",
    "delete_on_termination",
    "encrypted",
    "kms_key_id",
    "snapshot_id",
    "virtual_name",
    "no_device",
];

/// Packer's `launch_block_device_mappings` / `ami_block_device_mappings` entries.
fn block_devices(v: Option<&Dynamic>, what: &str) -> Result<Vec<BlockDeviceMapping>, String> {
    let Some(v) = v.filter(|v| !v.is_unit()) else {
        return Ok(vec![]);
    };
    let arr = v
        .clone()
        .into_array()
        .map_err(|t| format!("{what} must be an array of maps, not {t}"))?;
    let mut out = Vec::new();
    for (i, item) in arr.into_iter().enumerate() {
        let w = format!("{what}[{i}]");
        let m = item
            .try_cast::<Map>()
            .ok_or_else(|| format!("{w} must be a map with device_name, volume_size, ..."))?;
        value::check_keys(&m, BDM_KEYS, &w)?;
        let device_name =
            opt_str(&m, "device_name")?.ok_or_else(|| format!("{w}: device_name is required"))?;
        let virtual_name = opt_str(&m, "virtual_name")?;
        let no_device = opt_bool(&m, "no_device")?.unwrap_or(false);
        let ebs = EbsBlockDevice {
            snapshot_id: opt_str(&m, "snapshot_id")?,
            volume_size: opt_u64(&m, "volume_size")?,
            volume_type: opt_str(&m, "volume_type")?,
            iops: opt_u64(&m, "iops")?,
            throughput: opt_u64(&m, "throughput")?,
            delete_on_termination: opt_bool(&m, "delete_on_termination")?,
            encrypted: opt_bool(&m, "encrypted")?,
            kms_key_id: opt_str(&m, "kms_key_id")?,
        };
        let has_ebs = ebs != EbsBlockDevice::default();
        out.push(BlockDeviceMapping {
            device_name,
            ebs: (has_ebs && virtual_name.is_none() && !no_device).then_some(ebs),
            virtual_name,
            no_device,
        });
    }
    Ok(out)
}

const LAUNCH_KEYS: &[&str] = &[
    "image_id",
    "instance_type",
    "key_name",
    "security_group_ids",
    "subnet_id",
    "availability_zone",
    "associate_public_ip_address",
    "user_data",
    "user_data_file",
    "block_device_mappings",
    "tags",
    "volume_tags",
    "shutdown_behavior",
    "iam_instance_profile",
    "ebs_optimized",
    "spot_price",
];

fn launch_request(m: &Map) -> Result<RunInstanceRequest, String> {
    value::check_keys(m, LAUNCH_KEYS, "run_instance")?;
    let shutdown_behavior = match opt_str(m, "shutdown_behavior")?.as_deref() {
        None => None,
        Some("stop") => Some(ShutdownBehavior::Stop),
        Some("terminate") => Some(ShutdownBehavior::Terminate),
        Some(other) => {
            return Err(format!(
                "shutdown_behavior {other:?}: use \"stop\" or \"terminate\""
            ));
        }
    };
    let spot = match opt_str(m, "spot_price")?.as_deref() {
        None | Some("") => None,
        Some("auto") => Some(SpotOptions { max_price: None }),
        Some(p) => {
            if p.parse::<f64>().map_or(true, |v| v <= 0.0) {
                return Err(format!(
                    "spot_price {p:?}: give a price in USD per hour (\"0.05\") or \"auto\""
                ));
            }
            Some(SpotOptions {
                max_price: Some(p.to_string()),
            })
        }
    };
    Ok(RunInstanceRequest {
        image_id: opt_str(m, "image_id")?.unwrap_or_default(),
        instance_type: opt_str(m, "instance_type")?.unwrap_or_default(),
        key_name: opt_str(m, "key_name")?,
        security_group_ids: list(m, "security_group_ids")?,
        subnet_id: opt_str(m, "subnet_id")?,
        availability_zone: opt_str(m, "availability_zone")?,
        associate_public_ip: opt_bool(m, "associate_public_ip_address")?,
        user_data: opt_str(m, "user_data")?.map(String::into_bytes),
        block_device_mappings: block_devices(
            m.get("block_device_mappings"),
            "block_device_mappings",
        )?,
        tags: tags(m.get("tags"), "tags")?,
        volume_tags: tags(m.get("volume_tags"), "volume_tags")?,
        client_token: None,
        shutdown_behavior,
        iam_instance_profile: opt_str(m, "iam_instance_profile")?,
        ebs_optimized: opt_bool(m, "ebs_optimized")?,
        spot,
    })
}

fn duration(ctx: &NativeCallContext, d: &Dynamic, what: &str) -> RhaiResult<Duration> {
    value::duration(d, what).map_err(|m| err(ctx, m))
}

fn key_type(ctx: &NativeCallContext, t: &str) -> RhaiResult<KeyType> {
    match t {
        "ed25519" => Ok(KeyType::Ed25519),
        "rsa" => Ok(KeyType::Rsa),
        other => Err(err(
            ctx,
            format!("temporary_key_pair_type {other:?}: use \"ed25519\" or \"rsa\""),
        )),
    }
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<Ec2Obj>("Ec2");
    engine.register_fn(
        "ec2",
        |ctx: NativeCallContext, c: &mut Ctx, cfg: Map| -> RhaiResult<Ec2Obj> {
            new_client(&ctx, c, &cfg)
        },
    );
    engine.register_get("region", |a: &mut Ec2Obj| a.cap.region().to_string());
    engine.register_fn("api_calls", |a: &mut Ec2Obj| {
        i64::try_from(a.cap.calls()).unwrap_or(i64::MAX)
    });
    engine.register_fn(
        "phase",
        |ctx: NativeCallContext, a: &mut Ec2Obj, name: &str| -> RhaiResult<()> {
            block(&ctx, &a.rt, a.cap.phase(name))
        },
    );
    engine.register_fn(
        "source_image",
        |ctx: NativeCallContext,
         a: &mut Ec2Obj,
         region: &str,
         id: Dynamic,
         filter: Dynamic|
         -> RhaiResult<Map> {
            let id = if id.is_unit() {
                None
            } else {
                Some(value::string(&id, "source_ami").map_err(|m| err(&ctx, m))?)
            };
            let filter = if filter.is_unit() {
                None
            } else {
                Some(source_filter(&filter).map_err(|m| err(&ctx, m))?)
            };
            let img = block(
                &ctx,
                &a.rt,
                a.cap.source_image(region, id.as_deref(), filter.as_ref()),
            )?
            .map_err(|e| err(&ctx, e))?;
            Ok(image_map(&img))
        },
    );
    engine.register_fn(
        "images_named",
        |ctx: NativeCallContext, a: &mut Ec2Obj, region: &str, name: &str| -> RhaiResult<Array> {
            let imgs =
                block(&ctx, &a.rt, a.cap.images_named(region, name))?.map_err(|e| err(&ctx, e))?;
            Ok(imgs
                .into_iter()
                .map(|i| Dynamic::from(i.image_id))
                .collect())
        },
    );
    engine.register_fn(
        "force_deregister",
        |ctx: NativeCallContext,
         a: &mut Ec2Obj,
         region: &str,
         name: &str,
         snapshots: bool|
         -> RhaiResult<Array> {
            let done = block(&ctx, &a.rt, a.cap.force_deregister(region, name, snapshots))?
                .map_err(|e| err(&ctx, e))?;
            Ok(done
                .into_iter()
                .map(|d| {
                    let mut m = Map::new();
                    m.insert("id".into(), d.image_id.into());
                    m.insert(
                        "snapshots".into(),
                        d.deleted_snapshots
                            .into_iter()
                            .map(Dynamic::from)
                            .collect::<Array>()
                            .into(),
                    );
                    Dynamic::from_map(m)
                })
                .collect())
        },
    );
    engine.register_fn(
        "vpc_of_subnet",
        |ctx: NativeCallContext,
         a: &mut Ec2Obj,
         region: &str,
         subnet: &str|
         -> RhaiResult<Dynamic> {
            let vpc = block(&ctx, &a.rt, a.cap.vpc_of_subnet(region, subnet))?
                .map_err(|e| err(&ctx, e))?;
            Ok(vpc.map(Dynamic::from).unwrap_or(Dynamic::UNIT))
        },
    );
    engine.register_fn(
        "create_key_pair",
        |ctx: NativeCallContext,
         a: &mut Ec2Obj,
         region: &str,
         name: &str,
         kind: &str|
         -> RhaiResult<crate::caps::ssh::PrivateKey> {
            let kind = key_type(&ctx, kind)?;
            block(&ctx, &a.rt, a.cap.create_key_pair(region, name, kind))?.map_err(|e| err(&ctx, e))
        },
    );
    engine.register_fn(
        "create_security_group",
        |ctx: NativeCallContext, a: &mut Ec2Obj, region: &str, spec: Map| -> RhaiResult<String> {
            let e = |m: String| err(&ctx, m);
            value::check_keys(
                &spec,
                &["name", "description", "vpc_id", "port", "cidrs"],
                "create_security_group",
            )
            .map_err(e)?;
            let name = opt_str(&spec, "name")
                .map_err(e)?
                .ok_or_else(|| err(&ctx, "create_security_group: name is required"))?;
            let description = opt_str(&spec, "description")
                .map_err(e)?
                .unwrap_or_else(|| "temporary group for a kiln build".into());
            let vpc = opt_str(&spec, "vpc_id").map_err(e)?;
            let port = match spec.get("port") {
                Some(p) => value::int_in::<u16>(p, "port", "1-65535").map_err(e)?,
                None => 22,
            };
            let cidrs = list(&spec, "cidrs").map_err(e)?;
            block(
                &ctx,
                &a.rt,
                a.cap.create_security_group(
                    region,
                    &name,
                    &description,
                    vpc.as_deref(),
                    port,
                    &cidrs,
                ),
            )?
            .map_err(|x| err(&ctx, x))
        },
    );
    engine.register_fn(
        "run_instance",
        |ctx: NativeCallContext, a: &mut Ec2Obj, region: &str, spec: Map| -> RhaiResult<Map> {
            let mut req = launch_request(&spec).map_err(|m| err(&ctx, m))?;
            if let Some(f) = opt_str(&spec, "user_data_file").map_err(|m| err(&ctx, m))? {
                if req.user_data.is_some() {
                    return Err(err(&ctx, "set only one of user_data and user_data_file"));
                }
                // Read through the source's grants; EC2 takes at most 16 KiB.
                let bytes =
                    a.rt.plan
                        .project
                        .read_to_vec(&a.scope, &f, 16 * 1024)
                        .map_err(|e| err(&ctx, format!("user_data_file: {e}")))?;
                req.user_data = Some(bytes);
            }
            let i =
                block(&ctx, &a.rt, a.cap.run_instance(region, req))?.map_err(|e| err(&ctx, e))?;
            Ok(instance_map(&i))
        },
    );
    engine.register_fn(
        "wait_running",
        |ctx: NativeCallContext,
         a: &mut Ec2Obj,
         region: &str,
         id: &str,
         t: Dynamic|
         -> RhaiResult<Map> {
            let t = duration(&ctx, &t, "wait_timeout")?;
            let i =
                block(&ctx, &a.rt, a.cap.wait_running(region, id, t))?.map_err(|e| err(&ctx, e))?;
            Ok(instance_map(&i))
        },
    );
    engine.register_fn(
        "stop_instance",
        |ctx: NativeCallContext, a: &mut Ec2Obj, region: &str, id: &str| -> RhaiResult<()> {
            block(&ctx, &a.rt, a.cap.stop_instance(region, id))?.map_err(|e| err(&ctx, e))
        },
    );
    engine.register_fn(
        "wait_stopped",
        |ctx: NativeCallContext,
         a: &mut Ec2Obj,
         region: &str,
         id: &str,
         t: Dynamic|
         -> RhaiResult<Map> {
            let t = duration(&ctx, &t, "wait_timeout")?;
            let i =
                block(&ctx, &a.rt, a.cap.wait_stopped(region, id, t))?.map_err(|e| err(&ctx, e))?;
            Ok(instance_map(&i))
        },
    );
    engine.register_fn(
        "create_image",
        |ctx: NativeCallContext, a: &mut Ec2Obj, region: &str, spec: Map| -> RhaiResult<String> {
            let e = |m: String| err(&ctx, m);
            value::check_keys(
                &spec,
                &[
                    "instance_id",
                    "name",
                    "description",
                    "block_device_mappings",
                    "tags",
                    "no_reboot",
                ],
                "create_image",
            )
            .map_err(e)?;
            let req = CreateImageRequest {
                instance_id: opt_str(&spec, "instance_id")
                    .map_err(e)?
                    .unwrap_or_default(),
                name: opt_str(&spec, "name").map_err(e)?.unwrap_or_default(),
                description: opt_str(&spec, "description").map_err(e)?,
                no_reboot: opt_bool(&spec, "no_reboot").map_err(e)?.unwrap_or(false),
                block_device_mappings: block_devices(
                    spec.get("block_device_mappings"),
                    "ami_block_device_mappings",
                )
                .map_err(e)?,
                tags: tags(spec.get("tags"), "tags").map_err(e)?,
                // Tagged once available (EC2 cannot tag a copy's snapshots at creation,
                // and moto refuses snapshot tags on CreateImage): see wait_image.
                snapshot_tags: Tags::new(),
            };
            block(&ctx, &a.rt, a.cap.create_image(region, req))?.map_err(|x| err(&ctx, x))
        },
    );
    engine.register_fn(
        "wait_image",
        |ctx: NativeCallContext,
         a: &mut Ec2Obj,
         region: &str,
         id: &str,
         t: Dynamic,
         snapshot_tags: Dynamic|
         -> RhaiResult<Map> {
            let t = duration(&ctx, &t, "wait_timeout")?;
            let st = tags(Some(&snapshot_tags), "snapshot_tags").map_err(|m| err(&ctx, m))?;
            let img = block(&ctx, &a.rt, a.cap.wait_image(region, id, t, &st))?
                .map_err(|e| err(&ctx, e))?;
            Ok(image_map(&img))
        },
    );
    engine.register_fn(
        "copy_image",
        |ctx: NativeCallContext,
         a: &mut Ec2Obj,
         region: &str,
         spec: Map,
         t: Dynamic|
         -> RhaiResult<String> {
            let e = |m: String| err(&ctx, m);
            let t = tags(Some(&t), "tags").map_err(e)?;
            value::check_keys(
                &spec,
                &[
                    "source_region",
                    "source_image_id",
                    "name",
                    "description",
                    "encrypted",
                    "kms_key_id",
                ],
                "copy_image",
            )
            .map_err(e)?;
            let req = CopyImageRequest {
                source_region: opt_str(&spec, "source_region")
                    .map_err(e)?
                    .unwrap_or_default(),
                source_image_id: opt_str(&spec, "source_image_id")
                    .map_err(e)?
                    .unwrap_or_default(),
                name: opt_str(&spec, "name").map_err(e)?.unwrap_or_default(),
                description: opt_str(&spec, "description").map_err(e)?,
                encrypted: opt_bool(&spec, "encrypted").map_err(e)?,
                kms_key_id: opt_str(&spec, "kms_key_id").map_err(e)?,
                client_token: None,
            };
            block(&ctx, &a.rt, a.cap.copy_image(region, req, &t))?.map_err(|x| err(&ctx, x))
        },
    );
    engine.register_fn(
        "tag",
        |ctx: NativeCallContext,
         a: &mut Ec2Obj,
         region: &str,
         ids: Array,
         t: Dynamic|
         -> RhaiResult<()> {
            let ids: Vec<String> = ids.into_iter().map(|v| v.to_string()).collect();
            let t = tags(Some(&t), "tags").map_err(|m| err(&ctx, m))?;
            block(&ctx, &a.rt, a.cap.tag(region, &ids, &t))?.map_err(|e| err(&ctx, e))
        },
    );
    engine.register_fn(
        "launch_permissions",
        |ctx: NativeCallContext,
         a: &mut Ec2Obj,
         region: &str,
         id: &str,
         users: Dynamic,
         groups: Dynamic|
         -> RhaiResult<()> {
            let e = |m: String| err(&ctx, m);
            let strings = |v: &Dynamic, w: &str| {
                if v.is_unit() {
                    Ok(vec![])
                } else {
                    value::string_list(v, w)
                }
            };
            let who = LaunchPermissions {
                user_ids: strings(&users, "ami_users").map_err(e)?,
                groups: strings(&groups, "ami_groups").map_err(e)?,
                ..Default::default()
            };
            block(&ctx, &a.rt, a.cap.add_launch_permissions(region, id, &who))?
                .map_err(|x| err(&ctx, x))
        },
    );
    engine.register_fn(
        "keep_image",
        |ctx: NativeCallContext, a: &mut Ec2Obj, region: &str, id: &str| -> RhaiResult<Array> {
            let snaps =
                block(&ctx, &a.rt, a.cap.keep_image(region, id))?.map_err(|e| err(&ctx, e))?;
            Ok(snaps.into_iter().map(Dynamic::from).collect())
        },
    );
    engine.register_fn(
        "remove_image",
        |ctx: NativeCallContext, a: &mut Ec2Obj, region: &str, id: &str| -> RhaiResult<()> {
            block(&ctx, &a.rt, a.cap.remove_now(region, id))?.map_err(|e| err(&ctx, e))
        },
    );
}
