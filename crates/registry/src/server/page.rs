//! The web page: server-rendered HTML with inline CSS, no scripts, no external assets.
//! Every value from the registry goes through [`esc`]; tables turn into cards on narrow
//! screens.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::cli::freshness_text;
use crate::error::RegistryError;
use crate::model::{
    Ancestry, BucketSummary, ChannelsView, Freshness, LATEST, RevocationRecord, RevocationStatus,
    VersionDetail, VersionPage, VersionRef,
};
use crate::server::AppState;

/// Versions per bucket page.
const PAGE: usize = 20;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/b/{bucket}", get(bucket))
        .route("/b/{bucket}/v/{fingerprint}", get(version))
}

/// HTML-escapes text for element content and quoted attributes.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const CSS: &str = r#"
:root{--fg:#1d2430;--muted:#5b6575;--bg:#fff;--line:#e3e7ee;--head:#f6f8fb;--ok:#17733a;--bad:#b3261e;--warn:#8a5a00;--link:#1f5fb4}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
a{color:var(--link)}
header{background:#1d2430;color:#fff;padding:.75rem 1rem;display:flex;flex-wrap:wrap;gap:.25rem 1rem;align-items:baseline}
header a{color:#fff;text-decoration:none}
header .brand{font-weight:700;font-size:1.1rem}
header nav{color:#c9d1dd;word-break:break-all}
main{max-width:1200px;margin:0 auto;padding:1rem}
h1{font-size:1.45rem;margin:.25rem 0 .75rem;word-break:break-all}
h2{font-size:1.1rem;margin:1.75rem 0 .5rem;border-bottom:2px solid var(--line);padding-bottom:.25rem}
p.desc{color:var(--muted);margin-top:0;white-space:pre-wrap}
table{border-collapse:collapse;width:100%;margin-bottom:.5rem}
th,td{text-align:left;padding:.45rem .6rem;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:.75rem;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);background:var(--head)}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:.88em;word-break:break-all}
.badge{display:inline-block;padding:.05rem .5rem;border-radius:999px;font-size:.78rem;font-weight:600;background:#eef1f6;margin:0 .25rem .2rem 0;white-space:nowrap}
.ok{background:#e3f4e8;color:var(--ok)}.bad{background:#fde7e5;color:var(--bad)}.warn{background:#fff3d6;color:var(--warn)}
.banner{padding:.75rem 1rem;border-radius:.5rem;margin:.75rem 0;font-weight:600}
.empty{color:var(--muted);font-style:italic}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1.25rem;margin:0}
dl.kv dt{color:var(--muted)}dl.kv dd{margin:0;word-break:break-all}
ul.plain{margin:0;padding-left:1.1rem}
footer{max-width:1200px;margin:2rem auto 1rem;padding:0 1rem;color:var(--muted);font-size:.8rem}
@media (max-width:640px){
 body{font-size:16px}
 table,thead,tbody,tr,th,td{display:block}
 thead{display:none}
 tr{border:1px solid var(--line);border-radius:.6rem;margin:0 0 .75rem;padding:.35rem .6rem;background:#fff}
 td{border:none;padding:.2rem 0;display:flex;gap:.6rem}
 td>div{flex:1;min-width:0}
 td::before{content:attr(data-label);flex:0 0 6.5rem;color:var(--muted);font-size:.75rem;text-transform:uppercase;padding-top:.1rem}
 dl.kv{grid-template-columns:1fr;gap:0}dl.kv dt{margin-top:.5rem}
}
"#;

fn layout(title: &str, crumbs: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · kiln registry</title><style>{CSS}</style></head><body>\
         <header><a class=\"brand\" href=\"/\">kiln registry</a><nav>{crumbs}</nav></header>\
         <main>{body}</main>\
         <footer>JSON: <code>/api/v1/buckets</code> · Terraform: <code>/terraform/&lt;bucket&gt;/&lt;channel&gt;</code></footer>\
         </body></html>\n",
        esc(title)
    )
}

fn html(status: StatusCode, page: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

fn error_page(e: &RegistryError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = format!("<h1>{}</h1><p>{}</p>", status.as_u16(), esc(&e.to_string()));
    if !e.suggestions().is_empty() {
        body.push_str("<p>Did you mean:</p><ul class=\"plain\">");
        for s in e.suggestions() {
            let _ = write!(body, "<li><code>{}</code></li>", esc(s));
        }
        body.push_str("</ul>");
    }
    body.push_str("<p><a href=\"/\">All buckets</a></p>");
    html(status, layout("error", "", &body))
}

/// A table; cells are already HTML. Each cell carries its header for the phone layout.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table><thead><tr>");
    for h in headers {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for (i, c) in r.iter().enumerate() {
            let label = headers.get(i).copied().unwrap_or("");
            let _ = write!(out, "<td data-label=\"{}\"><div>{c}</div></td>", esc(label));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

fn badge(class: &str, text: &str) -> String {
    format!("<span class=\"badge {class}\">{}</span>", esc(text))
}

fn code(s: &str) -> String {
    format!("<code>{}</code>", esc(s))
}

fn version_link(bucket: &str, fp: &str) -> String {
    // Names follow the name rule ([A-Za-z0-9._-]), so they are URL-safe as they are.
    format!(
        "<a class=\"mono\" href=\"/b/{}/v/{}\">{}</a>",
        esc(bucket),
        esc(fp),
        esc(fp)
    )
}

/// A link showing `bucket/fingerprint`.
fn key_link(bucket: &str, fp: &str) -> String {
    format!(
        "<a class=\"mono\" href=\"/b/{}/v/{}\">{}/{}</a>",
        esc(bucket),
        esc(fp),
        esc(bucket),
        esc(fp)
    )
}

fn revocation_badge(r: &Option<RevocationStatus>) -> String {
    match r {
        None => "<span class=\"empty\">-</span>".into(),
        Some(r) => {
            let from = r
                .inherited_from
                .as_ref()
                .map(|k| format!(" (from {k})"))
                .unwrap_or_default();
            if r.effective {
                format!(
                    "{} {}",
                    badge("bad", &format!("revoked{from}")),
                    esc(&r.reason)
                )
            } else {
                format!(
                    "{} {}",
                    badge("warn", &format!("revokes {}{from}", r.effective_at.short())),
                    esc(&r.reason)
                )
            }
        }
    }
}

fn channel_badges(channels: &[String]) -> String {
    if channels.is_empty() {
        return "<span class=\"empty\">-</span>".into();
    }
    channels
        .iter()
        .map(|c| badge(if c == LATEST { "" } else { "ok" }, c))
        .collect::<Vec<_>>()
        .join("")
}

fn freshness_badge(f: &Freshness) -> String {
    let class = match f {
        Freshness::UpToDate => "ok",
        Freshness::OutOfDate { .. } => "warn",
        Freshness::Pinned => "",
    };
    badge(class, &freshness_text(f))
}

async fn index(State(st): State<AppState>) -> Response {
    match st.store.buckets().await {
        Ok(b) => html(StatusCode::OK, render_index(&b)),
        Err(e) => error_page(&e),
    }
}

fn render_index(buckets: &[BucketSummary]) -> String {
    let mut body = String::from("<h1>Buckets</h1>");
    if buckets.is_empty() {
        body.push_str("<p class=\"empty\">No builds recorded yet.</p>");
    } else {
        let rows: Vec<Vec<String>> = buckets
            .iter()
            .map(|b| {
                let latest = b
                    .channels
                    .iter()
                    .find(|c| c.name == LATEST)
                    .map(|c| version_link(&b.name, &c.fingerprint))
                    .unwrap_or_else(|| "<span class=\"empty\">-</span>".into());
                let channels: Vec<String> = b
                    .channels
                    .iter()
                    .filter(|c| c.name != LATEST)
                    .map(|c| {
                        format!(
                            "{} <a class=\"mono\" href=\"/b/{}/v/{}\">{}</a>",
                            badge("ok", &c.name),
                            esc(&b.name),
                            esc(&c.fingerprint),
                            esc(short_fp(&c.fingerprint))
                        )
                    })
                    .collect();
                vec![
                    format!(
                        "<a href=\"/b/{}\"><strong>{}</strong></a>",
                        esc(&b.name),
                        esc(&b.name)
                    ),
                    esc(&b.description),
                    b.version_count.to_string(),
                    latest,
                    if channels.is_empty() {
                        "<span class=\"empty\">-</span>".into()
                    } else {
                        channels.join("<br>")
                    },
                    esc(&b.updated_at.short()),
                ]
            })
            .collect();
        body.push_str(&table(
            &[
                "Bucket",
                "Description",
                "Versions",
                "Latest",
                "Channels",
                "Updated",
            ],
            &rows,
        ));
    }
    layout("Buckets", "", &body)
}

fn short_fp(fp: &str) -> &str {
    let end = fp
        .char_indices()
        .nth(10)
        .map(|(i, _)| i)
        .unwrap_or(fp.len());
    &fp[..end]
}

#[derive(Deserialize)]
struct BucketQuery {
    before: Option<String>,
}

async fn bucket(
    State(st): State<AppState>,
    Path(bucket): Path<String>,
    Query(q): Query<BucketQuery>,
) -> Response {
    let page = match st.store.versions(&bucket, PAGE, q.before.as_deref()).await {
        Ok(p) => p,
        Err(e) => return error_page(&e),
    };
    let mut details = Vec::with_capacity(page.versions.len());
    for v in &page.versions {
        match st
            .store
            .version(&bucket, &VersionRef::Fingerprint(v.fingerprint.clone()))
            .await
        {
            Ok(d) => details.push(d),
            Err(e) => return error_page(&e),
        }
    }
    let channels = match st.store.channels(&bucket, 20).await {
        Ok(c) => c,
        Err(e) => return error_page(&e),
    };
    let revocations = match st.store.revocations(&bucket).await {
        Ok(r) => r,
        Err(e) => return error_page(&e),
    };
    html(
        StatusCode::OK,
        render_bucket(&page, &details, &channels, &revocations),
    )
}

fn render_bucket(
    page: &VersionPage,
    details: &[VersionDetail],
    channels: &ChannelsView,
    revocations: &[RevocationRecord],
) -> String {
    let b = &page.bucket;
    let mut body = format!("<h1>{}</h1>", esc(b));
    if !page.description.is_empty() {
        let _ = write!(body, "<p class=\"desc\">{}</p>", esc(&page.description));
    }

    body.push_str("<h2>Channels</h2>");
    if channels.channels.is_empty() {
        body.push_str("<p class=\"empty\">No channels yet.</p>");
    } else {
        let rows: Vec<Vec<String>> = channels
            .channels
            .iter()
            .map(|c| {
                vec![
                    badge(if c.managed { "" } else { "ok" }, &c.name),
                    version_link(b, &c.fingerprint),
                    esc(&c.updated_at.short()),
                    revocation_badge(&c.revocation),
                    format!("<code>/terraform/{}/{}</code>", esc(b), esc(&c.name)),
                ]
            })
            .collect();
        body.push_str(&table(
            &["Channel", "Version", "Updated", "Revocation", "Terraform"],
            &rows,
        ));
    }

    let _ = write!(body, "<h2>Versions ({})</h2>", page.version_count);
    if details.is_empty() {
        body.push_str("<p class=\"empty\">No versions.</p>");
    } else {
        let rows: Vec<Vec<String>> = details
            .iter()
            .map(|v| {
                let builds: Vec<String> = v
                    .builds
                    .iter()
                    .map(|bd| {
                        let class = if bd.status == crate::model::BuildStatus::Succeeded {
                            "ok"
                        } else {
                            "bad"
                        };
                        format!("{} {}", esc(&bd.name), badge(class, bd.status.as_str()))
                    })
                    .collect();
                let artifacts: Vec<String> = v
                    .builds
                    .iter()
                    .flat_map(|bd| bd.artifacts.iter())
                    .map(|a| {
                        format!(
                            "{} {} {}",
                            badge("", a.platform.as_str()),
                            esc(&a.region),
                            code(&a.external_id)
                        )
                    })
                    .collect();
                vec![
                    version_link(b, &v.fingerprint),
                    esc(&v.created_at.short()),
                    if v.complete {
                        badge("ok", "complete")
                    } else {
                        badge("warn", "incomplete")
                    },
                    builds.join("<br>"),
                    if artifacts.is_empty() {
                        "<span class=\"empty\">-</span>".into()
                    } else {
                        artifacts.join("<br>")
                    },
                    channel_badges(&v.channels),
                    revocation_badge(&v.revocation),
                ]
            })
            .collect();
        body.push_str(&table(
            &[
                "Fingerprint",
                "Created",
                "Status",
                "Builds",
                "Artifacts",
                "Channels",
                "Revocation",
            ],
            &rows,
        ));
        if let Some(next) = &page.next_before {
            let _ = write!(
                body,
                "<p><a href=\"/b/{}?before={}\">Older versions →</a></p>",
                esc(b),
                esc(next)
            );
        }
    }

    body.push_str("<h2>Revocations</h2>");
    if revocations.is_empty() {
        body.push_str("<p class=\"empty\">None.</p>");
    } else {
        let rows: Vec<Vec<String>> = revocations
            .iter()
            .map(|r| {
                vec![
                    version_link(b, &r.fingerprint),
                    esc(&r.reason),
                    esc(&r.effective_at.short()),
                    if r.inherit {
                        badge("warn", "descendants too")
                    } else {
                        "this version".into()
                    },
                    esc(&r.revoked_by),
                    match (&r.lifted_at, &r.lifted_by) {
                        (Some(t), Some(by)) => {
                            format!(
                                "{} {}",
                                badge("ok", "restored"),
                                esc(&format!("{} by {by}", t.short()))
                            )
                        }
                        _ => badge("bad", "active"),
                    },
                ]
            })
            .collect();
        body.push_str(&table(
            &["Version", "Reason", "Effective", "Scope", "By", "State"],
            &rows,
        ));
    }

    if !channels.history.is_empty() {
        body.push_str("<h2>Channel history</h2>");
        let rows: Vec<Vec<String>> = channels
            .history
            .iter()
            .map(|m| {
                vec![
                    esc(&m.at.short()),
                    badge("", &m.channel),
                    version_link(b, &m.fingerprint),
                    m.previous
                        .as_ref()
                        .map(|p| version_link(b, p))
                        .unwrap_or_else(|| "<span class=\"empty\">-</span>".into()),
                    esc(&m.actor),
                ]
            })
            .collect();
        body.push_str(&table(
            &["When", "Channel", "Version", "Previous", "By"],
            &rows,
        ));
    }
    layout(
        b,
        &format!("/ <a href=\"/b/{}\">{}</a>", esc(b), esc(b)),
        &body,
    )
}

async fn version(
    State(st): State<AppState>,
    Path((bucket, fingerprint)): Path<(String, String)>,
) -> Response {
    let r = VersionRef::parse(&fingerprint);
    let detail = match st.store.version(&bucket, &r).await {
        Ok(d) => d,
        Err(e) => return error_page(&e),
    };
    let ancestry = match st.store.ancestry(&bucket, &r).await {
        Ok(a) => a,
        Err(e) => return error_page(&e),
    };
    html(StatusCode::OK, render_version(&detail, &ancestry))
}

fn render_version(v: &VersionDetail, a: &Ancestry) -> String {
    let b = &v.bucket;
    let mut body = format!(
        "<h1>{} <span class=\"mono\">{}</span></h1>",
        esc(b),
        esc(&v.fingerprint)
    );
    if let Some(r) = &v.revocation {
        let from = r
            .inherited_from
            .as_ref()
            .map(|k| format!(" (inherited from {k})"))
            .unwrap_or_default();
        let (class, what) = if r.effective {
            ("bad", format!("Revoked since {}{from}", r.effective_at))
        } else {
            (
                "warn",
                format!("Revocation scheduled for {}{from}", r.effective_at),
            )
        };
        let _ = write!(
            body,
            "<div class=\"banner {class}\">{}: {}</div>",
            esc(&what),
            esc(&r.reason)
        );
    }
    body.push_str("<dl class=\"kv\">");
    let mut kv = |k: &str, v: String| {
        let _ = write!(body, "<dt>{}</dt><dd>{v}</dd>", esc(k));
    };
    kv("Created", esc(&v.created_at.to_rfc3339()));
    kv(
        "Status",
        match v.completed_at {
            Some(t) => format!("{} since {}", badge("ok", "complete"), esc(&t.to_rfc3339())),
            None => format!(
                "{} waiting for {}",
                badge("warn", "incomplete"),
                esc(&v.missing_builds.join(", "))
            ),
        },
    );
    kv("Channels", channel_badges(&v.channels));
    kv("Builds", esc(&v.expected_builds.join(", ")));
    body.push_str("</dl>");

    body.push_str("<h2>Builds and artifacts</h2>");
    let mut rows = Vec::new();
    for bd in &v.builds {
        let status = badge(
            if bd.status == crate::model::BuildStatus::Succeeded {
                "ok"
            } else {
                "bad"
            },
            bd.status.as_str(),
        );
        let labels: Vec<String> = bd
            .labels
            .iter()
            .map(|(k, val)| format!("{}={}", esc(k), esc(val)))
            .collect();
        let labels = if labels.is_empty() {
            "<span class=\"empty\">-</span>".to_string()
        } else {
            labels.join("<br>")
        };
        if bd.artifacts.is_empty() {
            rows.push(vec![
                esc(&bd.name),
                status.clone(),
                "<span class=\"empty\">no artifacts</span>".into(),
                String::new(),
                String::new(),
                labels.clone(),
            ]);
        }
        for art in &bd.artifacts {
            rows.push(vec![
                esc(&bd.name),
                status.clone(),
                badge("", art.platform.as_str()),
                esc(&art.region),
                format!(
                    "{}{}",
                    code(&art.external_id),
                    art.sha256
                        .as_ref()
                        .map(|d| format!("<br><small>sha256 {}</small>", code(d)))
                        .unwrap_or_default()
                ),
                labels.clone(),
            ]);
        }
    }
    body.push_str(&table(
        &[
            "Build",
            "Status",
            "Platform",
            "Region",
            "External id",
            "Labels",
        ],
        &rows,
    ));

    body.push_str("<h2>Ancestry</h2>");
    if a.ancestors.is_empty() {
        body.push_str("<p class=\"empty\">Not built from a registry artifact.</p>");
    } else {
        let rows: Vec<Vec<String>> = a
            .ancestors
            .iter()
            .map(|l| {
                vec![
                    l.depth.to_string(),
                    key_link(&l.link.parent.bucket, &l.link.parent.fingerprint),
                    l.link
                        .channel
                        .as_ref()
                        .map(|c| badge("", &format!("@{c}")))
                        .unwrap_or_else(|| "<span class=\"empty\">pinned</span>".into()),
                    format!(
                        "{} {}",
                        badge("", l.link.platform.as_str()),
                        code(&l.link.external_id)
                    ),
                    freshness_badge(&l.link.freshness),
                    revocation_badge(&l.link.revocation),
                ]
            })
            .collect();
        body.push_str("<p>Built from:</p>");
        body.push_str(&table(
            &[
                "Depth",
                "Parent",
                "Via",
                "Artifact",
                "Freshness",
                "Revocation",
            ],
            &rows,
        ));
    }
    if a.children.is_empty() {
        body.push_str("<p class=\"empty\">No version was built from this one.</p>");
    } else {
        let rows: Vec<Vec<String>> = a
            .children
            .iter()
            .map(|c| {
                vec![
                    key_link(&c.child.bucket, &c.child.fingerprint),
                    esc(&c.build),
                    c.channel
                        .as_ref()
                        .map(|ch| badge("", &format!("@{ch}")))
                        .unwrap_or_else(|| "<span class=\"empty\">pinned</span>".into()),
                    freshness_badge(&c.freshness),
                    revocation_badge(&c.revocation),
                ]
            })
            .collect();
        body.push_str("<p>Built from this version:</p>");
        body.push_str(&table(
            &["Child", "Build", "Via", "Freshness", "Revocation"],
            &rows,
        ));
    }

    body.push_str("<h2>Provenance</h2>");
    for p in &v.provenance {
        let d = &p.document;
        let _ = write!(
            body,
            "<p>Document {} for builds {}</p><dl class=\"kv\">",
            code(&p.digest),
            esc(&p.builds.join(", "))
        );
        let mut kv = |k: &str, val: String| {
            let _ = write!(body, "<dt>{}</dt><dd>{val}</dd>", esc(k));
        };
        kv(
            "Script",
            format!("{} sha256 {}", code(&d.script.path), code(&d.script.sha256)),
        );
        kv("kiln", esc(&d.kiln_version));
        if let Some(g) = &d.git {
            kv(
                "Git commit",
                format!(
                    "{}{}",
                    code(&g.commit),
                    if g.dirty { " (dirty)" } else { "" }
                ),
            );
        }
        if !d.variables.is_empty() {
            let vars: Vec<String> = d
                .variables
                .iter()
                .map(|var| match &var.value {
                    Some(val) if !var.secret => format!("{} = {}", code(&var.name), code(val)),
                    _ => format!("{} = <em>secret</em>", code(&var.name)),
                })
                .collect();
            kv("Variables", vars.join("<br>"));
        }
        if !d.wasm_modules.is_empty() {
            let mods: Vec<String> = d
                .wasm_modules
                .iter()
                .map(|m| format!("{} sha256 {}", code(&m.path), code(&m.sha256)))
                .collect();
            kv("WASM modules", mods.join("<br>"));
        }
        if let Some(al) = &d.audit_log {
            kv(
                "Audit log",
                format!("sha256 {}, {} records", code(&al.sha256), al.records),
            );
        }
        if !d.grants.is_empty() {
            let grants: Vec<String> = d
                .grants
                .iter()
                .map(|g| {
                    let caps: Vec<String> = g
                        .capabilities
                        .iter()
                        .map(|c| match &c.object {
                            Some(o) => format!("{}({})", esc(&c.capability), esc(o)),
                            None => esc(&c.capability),
                        })
                        .collect();
                    format!("{}/{}: {}", esc(&g.build), esc(&g.step), caps.join(", "))
                })
                .collect();
            kv("Grants", grants.join("<br>"));
        }
        if !d.consul_services.is_empty() {
            let svcs: Vec<String> = d
                .consul_services
                .iter()
                .map(|s| {
                    let port = s.port.map(|p| format!(":{p}")).unwrap_or_default();
                    format!("{}{} {}", esc(&s.name), port, esc(&s.tags.join(", ")))
                })
                .collect();
            kv("Consul services", svcs.join("<br>"));
        }
        body.push_str("</dl>");
    }
    layout(
        &format!("{b} {}", v.fingerprint),
        &format!(
            "/ <a href=\"/b/{}\">{}</a> / <span class=\"mono\">{}</span>",
            esc(b),
            esc(b),
            esc(&v.fingerprint)
        ),
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_matters() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }

    #[test]
    fn tables_label_cells_for_phones() {
        let t = table(&["A"], &[vec!["<b>x</b>".into()]]);
        assert!(
            t.contains("<td data-label=\"A\"><div><b>x</b></div></td>"),
            "{t}"
        );
    }
}
