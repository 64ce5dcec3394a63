//! Pre-bakes a Consul service definition (and its health check) into an image.
//!
//! Writes `<consul_dir>/<service>.json` on the machine (mode 0640) and uploads any
//! extra files the step lists, which must live in a directory granted with `read`,
//! then reports the service as build metadata, so the build's registry record says
//! which Consul services the image registers.

use kiln_guest::{Context, bail, ensure, info, machine, metadata};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Consul service name: letters, digits and `-`, at most 63 characters.
    service: String,
    port: u32,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    check: Option<Check>,
    #[serde(default = "default_dir")]
    consul_dir: String,
    /// Extra files to copy, e.g. `{ from: "files/consul/acl.hcl", to: "/etc/consul.d/acl.hcl" }`.
    #[serde(default)]
    files: Vec<ExtraFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Check {
    /// URL Consul polls, e.g. `http://localhost:80/health`.
    #[serde(default)]
    http: Option<String>,
    /// `host:port` Consul connects to.
    #[serde(default)]
    tcp: Option<String>,
    #[serde(default = "default_interval")]
    interval: String,
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtraFile {
    from: String,
    to: String,
    #[serde(default)]
    mode: Option<u32>,
}

fn default_dir() -> String {
    "/etc/consul.d".into()
}

fn default_interval() -> String {
    "10s".into()
}

/// Accepts what Consul accepts for intervals in practice: a number followed by
/// `ms`, `s`, `m` or `h` (e.g. `500ms`, `10s`, `1m`).
fn parse_duration_ms(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn validate(cfg: &Config) -> kiln_guest::Result<()> {
    let name = &cfg.service;
    ensure!(
        !name.is_empty()
            && name.len() <= 63
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !name.starts_with('-'),
        "service `{name}` must be 1-63 letters, digits or `-`, not starting with `-`"
    );
    ensure!(
        (1..=65535).contains(&cfg.port),
        "port {} is out of range 1-65535",
        cfg.port
    );
    for t in &cfg.tags {
        ensure!(
            !t.is_empty() && !t.chars().any(char::is_control),
            "tag {t:?} must be non-empty printable text"
        );
    }
    ensure!(
        cfg.consul_dir.starts_with('/'),
        "consul_dir `{}` must be an absolute path",
        cfg.consul_dir
    );
    if let Some(c) = &cfg.check {
        match (&c.http, &c.tcp) {
            (Some(u), None) => ensure!(
                u.starts_with("http://") || u.starts_with("https://"),
                "check.http `{u}` must be an http:// or https:// URL"
            ),
            (None, Some(a)) => ensure!(
                a.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
                "check.tcp `{a}` must be host:port"
            ),
            _ => bail!("check needs exactly one of `http` or `tcp`"),
        }
        let ms = parse_duration_ms(&c.interval).with_context(|| {
            format!(
                "check.interval `{}` is not a duration like 10s, 1m, 500ms",
                c.interval
            )
        })?;
        ensure!(
            ms >= 1000,
            "check.interval `{}` is shorter than 1s",
            c.interval
        );
        if let Some(t) = &c.timeout {
            parse_duration_ms(t)
                .with_context(|| format!("check.timeout `{t}` is not a duration like 2s"))?;
        }
    }
    for f in &cfg.files {
        ensure!(
            f.to.starts_with('/'),
            "files: destination `{}` must be an absolute path",
            f.to
        );
    }
    Ok(())
}

fn definition(cfg: &Config) -> serde_json::Value {
    let mut service = json!({
        "name": cfg.service,
        "port": cfg.port,
        "tags": cfg.tags,
    });
    if let Some(c) = &cfg.check {
        let mut check = json!({
            "id": format!("{}-check", cfg.service),
            "name": format!("{} health", cfg.service),
            "interval": c.interval,
        });
        if let Some(u) = &c.http {
            check["http"] = json!(u);
        }
        if let Some(a) = &c.tcp {
            check["tcp"] = json!(a);
        }
        if let Some(t) = &c.timeout {
            check["timeout"] = json!(t);
        }
        service["check"] = check;
    }
    json!({ "service": service })
}

kiln_guest::provisioner!(
    fn provision(cfg: Config) -> kiln_guest::Result<String> {
        validate(&cfg).context("invalid consul-provisioner config")?;
        let dir = cfg.consul_dir.trim_end_matches('/');
        machine::run(&format!("mkdir -p '{dir}'"))
            .context("creating the Consul config directory")?;

        let path = format!("{dir}/{}.json", cfg.service);
        let body = serde_json::to_vec_pretty(&definition(&cfg))?;
        machine::write_file(&path, &body, Some(0o640))
            .with_context(|| format!("writing {path}"))?;
        info!("wrote {path} ({} bytes)", body.len());

        let mut uploaded = 0u64;
        for f in &cfg.files {
            uploaded += machine::upload(&f.from, &f.to, f.mode.or(Some(0o640)))
                .with_context(|| format!("uploading {} to {}", f.from, f.to))?;
            info!("uploaded {} -> {}", f.from, f.to);
        }

        // Validated above to be 1-65535.
        let port = u16::try_from(cfg.port).ok();
        metadata::consul_service(&metadata::ConsulService {
            name: cfg.service.clone(),
            port,
            tags: cfg.tags.clone(),
        })
        .context("reporting the service as build metadata")?;

        let check = match &cfg.check {
            Some(c) if c.http.is_some() => format!(", http check every {}", c.interval),
            Some(c) => format!(", tcp check every {}", c.interval),
            None => String::new(),
        };
        let files = if cfg.files.is_empty() {
            String::new()
        } else {
            format!(", {} extra file(s), {uploaded} bytes", cfg.files.len())
        };
        Ok(format!(
            "consul service {} on port {} -> {path}{check}{files}",
            cfg.service, cfg.port
        ))
    }
);
