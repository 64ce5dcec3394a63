//! `ctx.fetch(#{ urls, checksum, ca_file, what })` for builders: a build input by URL
//! or path over [`super::fetch::fetch`], returned as a `Download` the image and VM
//! primitives accept in place of a project path (the cached file is outside every
//! `read` grant on purpose: only what was fetched and verified can be used from there).
//! The download lives until the build ends, keeping its cache entry's shared lock.

use std::sync::Arc;

use rhai::{Dynamic, Engine, EvalAltResult, Map, NativeCallContext};

use super::fetch::{self, Download, FetchInput};
use super::progress::UiObserver;
use crate::script::api::{Ctx, block};
use crate::script::error::runtime_err;
use crate::script::value;
use crate::ui::human_bytes;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// A fetched input as a script holds it.
#[derive(Clone)]
pub struct DownloadObj {
    pub dl: Arc<Download>,
}

fn opt_string(m: &Map, key: &str) -> Result<Option<String>, String> {
    match m.get(key) {
        None => Ok(None),
        Some(v) if v.is_unit() => Ok(None),
        Some(v) => value::string(v, key).map(Some),
    }
}

fn fetch_input(spec: &Map) -> Result<FetchInput, String> {
    value::check_keys(spec, &["what", "urls", "checksum", "ca_file"], "fetch")?;
    let urls = match spec.get("urls").filter(|v| !v.is_unit()) {
        Some(v) => value::string_list(v, "urls")?,
        None => Vec::new(),
    };
    Ok(FetchInput {
        what: opt_string(spec, "what")?.unwrap_or_else(|| "input".into()),
        urls,
        checksum: opt_string(spec, "checksum")?,
        ca_file: opt_string(spec, "ca_file")?,
    })
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<DownloadObj>("Download");
    engine.register_fn(
        "fetch",
        |ctx: NativeCallContext, c: &mut Ctx, spec: Map| -> RhaiResult<DownloadObj> {
            let err = |m: String| runtime_err(m, ctx.call_position());
            let input = fetch_input(&spec).map_err(err)?;
            let observer = UiObserver::new(c.rt.ui.clone(), &c.rt.label, &input.what);
            let project = c.rt.plan.project.clone();
            let started = std::time::Instant::now();
            let dl = block(
                &ctx,
                &c.rt,
                fetch::fetch(&c.scope, &project, &input, &observer),
            )?
            .map_err(|e| err(e.to_string()))?;
            let digest = dl.digest().unwrap_or_default();
            let msg = match dl.origin() {
                kiln_fetch::Origin::Cache => Some(format!(
                    "Using {} {} from the download cache ({}, {digest})",
                    dl.what,
                    dl.url(),
                    human_bytes(dl.size())
                )),
                kiln_fetch::Origin::Downloaded => Some(format!(
                    "Downloaded {} {} ({} in {:.1} s){}",
                    dl.what,
                    dl.url(),
                    human_bytes(dl.size()),
                    started.elapsed().as_secs_f64(),
                    if dl.verified() {
                        format!(", checksum {digest} verified")
                    } else {
                        String::new()
                    }
                )),
                kiln_fetch::Origin::Local if dl.verified() => {
                    Some(format!("Verified {} {} ({digest})", dl.what, dl.url()))
                }
                kiln_fetch::Origin::Local => None,
            };
            if let Some(m) = msg {
                c.rt.ui.say(&c.rt.label, &m);
            }
            let dl = Arc::new(dl);
            // The entry's shared lock lives as long as the build: the VM that uses it
            // as a backing file or CD-ROM is gone by then.
            c.rt.hold(Box::new(dl.clone()));
            Ok(DownloadObj { dl })
        },
    );
    engine.register_get("path", |d: &mut DownloadObj| {
        d.dl.path().display().to_string()
    });
    engine.register_get("url", |d: &mut DownloadObj| d.dl.url().to_string());
    engine.register_get("size", |d: &mut DownloadObj| {
        i64::try_from(d.dl.size()).unwrap_or(i64::MAX)
    });
    engine.register_get("digest", |d: &mut DownloadObj| {
        d.dl.digest().map_or(Dynamic::UNIT, Dynamic::from)
    });
    engine.register_get("verified", |d: &mut DownloadObj| d.dl.verified());
    engine.register_get("origin", |d: &mut DownloadObj| {
        match d.dl.origin() {
            kiln_fetch::Origin::Cache => "cache",
            kiln_fetch::Origin::Downloaded => "downloaded",
            kiln_fetch::Origin::Local => "local",
        }
        .to_string()
    });
    engine.register_fn("to_string", |d: &mut DownloadObj| {
        format!("download {}", d.dl.url())
    });
}

/// `fetch_hosts(urls, checksum)`: the `net` grant entries (`host:port`) fetching them
/// needs, for a builder's `fn grants(cfg)`. Pure: it parses, it contacts nothing.
pub fn register_pure(engine: &mut Engine) {
    engine.register_fn(
        "fetch_hosts",
        |ctx: NativeCallContext, urls: Dynamic, checksum: Dynamic| -> RhaiResult<rhai::Array> {
            let err = |m: String| runtime_err(m, ctx.call_position());
            let urls = if urls.is_unit() {
                Vec::new()
            } else {
                value::string_list(&urls, "urls").map_err(err)?
            };
            let checksum = if checksum.is_unit() {
                None
            } else {
                Some(value::string(&checksum, "iso_checksum").map_err(err)?)
            };
            let hosts = fetch::net_grants(&urls, checksum.as_deref()).map_err(err)?;
            Ok(hosts.into_iter().map(Dynamic::from).collect())
        },
    );
}
