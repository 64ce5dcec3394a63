//! What `kiln artifacts …` runs: typed commands, typed results, and their renderings as
//! human tables or JSON, so the CLI only parses arguments and prints.
//!
//! ```text
//! kiln artifacts list [BUCKET] [--limit N] [--before FP]   → Command::List
//! kiln artifacts show BUCKET [FP|@CHANNEL]                 → Command::Show (default @latest)
//! kiln artifacts channels BUCKET [--history N]             → Command::Channels
//! kiln artifacts promote BUCKET FP --channel prod          → Command::Promote
//! kiln artifacts revoke BUCKET FP --reason R [--at T] [--inherit] → Command::Revoke
//! kiln artifacts restore BUCKET FP                         → Command::Restore
//! kiln artifacts ancestry BUCKET [FP|@CHANNEL]             → Command::Ancestry
//! ```
//!
//! On error print [`render_error`] and exit with [`RegistryError::exit_code`].

use std::fmt::Write as _;

use serde::Serialize;

use crate::error::RegistryError;
use crate::model::{
    Ancestry, BucketSummary, ChannelsView, Freshness, Promotion, Restored, RevocationStatus,
    RevokeRequest, Revoked, VersionDetail, VersionPage, VersionRef,
};
use crate::store::Store;
use crate::timestamp::Timestamp;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

/// One `kiln artifacts` subcommand with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Buckets (no bucket) or a page of a bucket's versions.
    List {
        bucket: Option<String>,
        limit: usize,
        before: Option<String>,
    },
    Show {
        bucket: String,
        version: VersionRef,
    },
    Channels {
        bucket: String,
        /// How many channel moves to show.
        history: usize,
    },
    Promote {
        bucket: String,
        version: VersionRef,
        channel: String,
    },
    Revoke {
        bucket: String,
        version: VersionRef,
        reason: String,
        /// `--at`: RFC 3339, `now`, or a duration such as `2h` ([`Timestamp::parse_at`]).
        at: Option<String>,
        inherit: bool,
    },
    Restore {
        bucket: String,
        version: VersionRef,
    },
    Ancestry {
        bucket: String,
        version: VersionRef,
    },
}

/// What a command returned.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Output {
    Buckets(Vec<BucketSummary>),
    Versions(VersionPage),
    Version(Box<VersionDetail>),
    Channels(ChannelsView),
    Promoted(Promotion),
    Revoked(Revoked),
    Restored(Restored),
    Ancestry(Ancestry),
}

/// Who a CLI user is in promotion and revocation history: `$USER`, else `cli`.
pub fn default_actor() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .map(|u| format!("cli:{u}"))
        .unwrap_or_else(|| "cli".to_string())
}

/// Runs a command against the store.
pub async fn execute(store: &Store, cmd: Command, actor: &str) -> Result<Output, RegistryError> {
    Ok(match cmd {
        Command::List { bucket: None, .. } => Output::Buckets(store.buckets().await?),
        Command::List {
            bucket: Some(b),
            limit,
            before,
        } => Output::Versions(store.versions(&b, limit, before.as_deref()).await?),
        Command::Show { bucket, version } => {
            Output::Version(Box::new(store.version(&bucket, &version).await?))
        }
        Command::Channels { bucket, history } => {
            Output::Channels(store.channels(&bucket, history).await?)
        }
        Command::Promote {
            bucket,
            version,
            channel,
        } => Output::Promoted(store.promote(&bucket, &version, &channel, actor).await?),
        Command::Revoke {
            bucket,
            version,
            reason,
            at,
            inherit,
        } => {
            let at = match at {
                Some(s) => Some(Timestamp::parse_at(&s, Timestamp::now())?),
                None => None,
            };
            let req = RevokeRequest {
                reason,
                at,
                inherit,
            };
            Output::Revoked(store.revoke(&bucket, &version, &req, actor).await?)
        }
        Command::Restore { bucket, version } => {
            Output::Restored(store.restore(&bucket, &version, actor).await?)
        }
        Command::Ancestry { bucket, version } => {
            Output::Ancestry(store.ancestry(&bucket, &version).await?)
        }
    })
}

impl Output {
    /// The text to print (ends with a newline).
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => {
                let mut s = serde_json::to_string_pretty(self)
                    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
                s.push('\n');
                s
            }
            Format::Human => match self {
                Output::Buckets(b) => human_buckets(b),
                Output::Versions(p) => human_versions(p),
                Output::Version(v) => human_version(v),
                Output::Channels(c) => human_channels(c),
                Output::Promoted(p) => human_promotion(p),
                Output::Revoked(r) => human_revoked(r),
                Output::Restored(r) => format!(
                    "restored {}/{}: the revocation \"{}\" (by {} at {}) is lifted\n",
                    r.revocation.bucket,
                    r.revocation.fingerprint,
                    r.revocation.reason,
                    r.revocation.revoked_by,
                    r.revocation.revoked_at
                ),
                Output::Ancestry(a) => human_ancestry(a),
            },
        }
    }
}

/// An error as the CLI prints it (`error: …` or the JSON error body).
pub fn render_error(e: &RegistryError, format: Format) -> String {
    match format {
        Format::Human => format!("error: {e}\n"),
        Format::Json => format!("{}\n", e.to_json()),
    }
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l.push_str(c);
            if i < last {
                let pad = widths[i] - c.chars().count() + 2;
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// `revoked: reason` / `revokes at T: reason` / `-`.
pub(crate) fn revocation_cell(r: &Option<RevocationStatus>) -> String {
    match r {
        None => "-".into(),
        Some(r) => {
            let from = r
                .inherited_from
                .as_ref()
                .map(|k| format!(" (from {k})"))
                .unwrap_or_default();
            if r.effective {
                format!("revoked{from}: {}", r.reason)
            } else {
                format!("revokes {}{from}: {}", r.effective_at.short(), r.reason)
            }
        }
    }
}

pub(crate) fn freshness_text(f: &Freshness) -> String {
    match f {
        Freshness::UpToDate => "up to date".into(),
        Freshness::OutOfDate { current: Some(c) } => format!("out of date (channel now {c})"),
        Freshness::OutOfDate { current: None } => "out of date (channel removed)".into(),
        Freshness::Pinned => "pinned".into(),
    }
}

fn human_buckets(buckets: &[BucketSummary]) -> String {
    if buckets.is_empty() {
        return "no buckets yet: `kiln build` records one when a build script has registry(...)\n"
            .into();
    }
    let rows: Vec<Vec<String>> = buckets
        .iter()
        .map(|b| {
            let latest = b
                .channels
                .iter()
                .find(|c| c.name == crate::model::LATEST)
                .map(|c| c.fingerprint.clone())
                .unwrap_or_default();
            let channels: Vec<String> = b
                .channels
                .iter()
                .filter(|c| c.name != crate::model::LATEST)
                .map(|c| format!("{}={}", c.name, c.fingerprint))
                .collect();
            vec![
                b.name.clone(),
                b.version_count.to_string(),
                dash(&latest),
                dash(&channels.join(", ")),
                b.updated_at.short(),
            ]
        })
        .collect();
    table(
        &["BUCKET", "VERSIONS", "LATEST", "CHANNELS", "UPDATED"],
        &rows,
    )
}

fn human_versions(p: &VersionPage) -> String {
    let mut out = format!("bucket {} ({} versions)", p.bucket, p.version_count);
    if !p.description.is_empty() {
        let _ = write!(out, ": {}", p.description.lines().next().unwrap_or(""));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = p
        .versions
        .iter()
        .map(|v| {
            let builds: Vec<String> = v
                .builds
                .iter()
                .map(|b| format!("{}:{}", b.name, b.status))
                .collect();
            vec![
                v.fingerprint.clone(),
                v.created_at.short(),
                if v.complete { "complete" } else { "incomplete" }.into(),
                dash(&builds.join(",")),
                v.artifact_count.to_string(),
                dash(&v.channels.join(",")),
                revocation_cell(&v.revocation),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "FINGERPRINT",
            "CREATED",
            "STATUS",
            "BUILDS",
            "ARTIFACTS",
            "CHANNELS",
            "REVOKED",
        ],
        &rows,
    ));
    if let Some(next) = &p.next_before {
        let _ = writeln!(out, "more: --before {next}");
    }
    out
}

fn human_version(v: &VersionDetail) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "bucket:       {}", v.bucket);
    let _ = writeln!(out, "fingerprint:  {}", v.fingerprint);
    let _ = writeln!(out, "created:      {}", v.created_at);
    match v.completed_at {
        Some(t) => {
            let _ = writeln!(out, "status:       complete since {t}");
        }
        None => {
            let _ = writeln!(
                out,
                "status:       incomplete, waiting for {}",
                v.missing_builds.join(", ")
            );
        }
    }
    let _ = writeln!(out, "channels:     {}", dash(&v.channels.join(", ")));
    let _ = writeln!(out, "revocation:   {}", revocation_cell(&v.revocation));
    for p in &v.parents {
        let via = p
            .channel
            .as_ref()
            .map(|c| format!(" via @{c}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "parent:       {} {}{via} ({}/{} {}), {}",
            p.build,
            p.parent,
            p.platform,
            p.region,
            p.external_id,
            freshness_text(&p.freshness)
        );
    }
    out.push('\n');
    let mut rows = Vec::new();
    for b in &v.builds {
        if b.artifacts.is_empty() {
            rows.push(vec![
                b.name.clone(),
                b.status.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for a in &b.artifacts {
            rows.push(vec![
                b.name.clone(),
                b.status.to_string(),
                a.platform.to_string(),
                a.region.clone(),
                a.external_id.clone(),
                a.sha256.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    out.push_str(&table(
        &[
            "BUILD",
            "STATUS",
            "PLATFORM",
            "REGION",
            "EXTERNAL ID",
            "SHA256",
        ],
        &rows,
    ));
    for b in &v.builds {
        if !b.labels.is_empty() {
            let labels: Vec<String> = b.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "labels of {}: {}", b.name, labels.join(", "));
        }
        if let Some(e) = &b.error {
            let _ = writeln!(
                out,
                "error of {}: {}",
                b.name,
                e.lines().next().unwrap_or("")
            );
        }
    }
    for p in &v.provenance {
        let d = &p.document;
        let _ = writeln!(
            out,
            "\nprovenance {} (builds {}):",
            &p.digest[..p.digest.len().min(12)],
            p.builds.join(", ")
        );
        let _ = writeln!(
            out,
            "  script:     {} sha256 {}",
            d.script.path, d.script.sha256
        );
        let _ = writeln!(out, "  kiln:       {}", d.kiln_version);
        if let Some(g) = &d.git {
            let _ = writeln!(
                out,
                "  git:        {}{}",
                g.commit,
                if g.dirty { " (dirty)" } else { "" }
            );
        }
        if !d.variables.is_empty() {
            let vars: Vec<String> = d
                .variables
                .iter()
                .map(|v| match &v.value {
                    Some(val) if !v.secret => format!("{}={val}", v.name),
                    _ => format!("{}=<secret>", v.name),
                })
                .collect();
            let _ = writeln!(out, "  variables:  {}", vars.join(", "));
        }
        for m in &d.wasm_modules {
            let _ = writeln!(out, "  wasm:       {} sha256 {}", m.path, m.sha256);
        }
        if let Some(a) = &d.audit_log {
            let _ = writeln!(
                out,
                "  audit log:  sha256 {}, {} records",
                a.sha256, a.records
            );
        }
        for g in &d.grants {
            let caps: Vec<String> = g
                .capabilities
                .iter()
                .map(|c| match &c.object {
                    Some(o) => format!("{}({o:?})", c.capability),
                    None => c.capability.clone(),
                })
                .collect();
            let _ = writeln!(
                out,
                "  grants:     {}/{}: {}",
                g.build,
                g.step,
                caps.join(", ")
            );
        }
        for s in &d.consul_services {
            let port = s.port.map(|p| format!(":{p}")).unwrap_or_default();
            let tags = if s.tags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", s.tags.join(", "))
            };
            let _ = writeln!(out, "  consul:     {}{port}{tags}", s.name);
        }
    }
    out
}

fn human_channels(c: &ChannelsView) -> String {
    if c.channels.is_empty() {
        return format!("bucket {} has no channels yet\n", c.bucket);
    }
    let rows: Vec<Vec<String>> = c
        .channels
        .iter()
        .map(|ch| {
            vec![
                if ch.managed {
                    format!("{} (kiln)", ch.name)
                } else {
                    ch.name.clone()
                },
                ch.fingerprint.clone(),
                ch.updated_at.short(),
                ch.serial.to_string(),
                revocation_cell(&ch.revocation),
            ]
        })
        .collect();
    let mut out = table(
        &["CHANNEL", "FINGERPRINT", "UPDATED", "MOVES", "REVOKED"],
        &rows,
    );
    if !c.history.is_empty() {
        out.push_str("\nhistory (newest first):\n");
        let rows: Vec<Vec<String>> = c
            .history
            .iter()
            .map(|m| {
                vec![
                    m.at.short(),
                    m.channel.clone(),
                    m.fingerprint.clone(),
                    m.previous.clone().unwrap_or_else(|| "-".into()),
                    m.actor.clone(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["AT", "CHANNEL", "FINGERPRINT", "PREVIOUS", "BY"],
            &rows,
        ));
    }
    out
}

fn human_promotion(p: &Promotion) -> String {
    let mut out = if p.changed {
        match &p.previous {
            Some(prev) => format!(
                "promoted {}/{} to {} (was {prev})\n",
                p.bucket, p.fingerprint, p.channel
            ),
            None => format!(
                "promoted {}/{} to {} (new channel)\n",
                p.bucket, p.fingerprint, p.channel
            ),
        }
    } else {
        format!(
            "{} of {} already points at {}; nothing changed\n",
            p.channel, p.bucket, p.fingerprint
        )
    };
    if let Some(r) = &p.scheduled_revocation {
        let _ = writeln!(
            out,
            "warning: this version is scheduled to be revoked at {}: {}",
            r.effective_at, r.reason
        );
    }
    out
}

fn human_revoked(r: &Revoked) -> String {
    let rev = &r.revocation;
    let when = if rev.effective_at <= rev.revoked_at {
        "now".to_string()
    } else {
        format!("from {}", rev.effective_at)
    };
    let mut out = format!(
        "revoked {}/{} {when}: {}\n",
        rev.bucket, rev.fingerprint, rev.reason
    );
    if rev.inherit {
        if r.descendants.is_empty() {
            out.push_str("inherited by every descendant (none yet)\n");
        } else {
            let list: Vec<String> = r.descendants.iter().map(|k| k.to_string()).collect();
            let _ = writeln!(
                out,
                "inherited by {} descendant(s): {}",
                list.len(),
                list.join(", ")
            );
        }
    }
    out
}

fn human_ancestry(a: &Ancestry) -> String {
    let mut out = format!("{}", a.version);
    if a.revocation.is_some() {
        let _ = write!(out, "  [{}]", revocation_cell(&a.revocation));
    }
    out.push('\n');
    if a.ancestors.is_empty() {
        out.push_str("parents: none (not built from a registry artifact)\n");
    } else {
        out.push_str("parents:\n");
        let rows: Vec<Vec<String>> = a
            .ancestors
            .iter()
            .map(|l| {
                vec![
                    l.depth.to_string(),
                    l.child.to_string(),
                    l.link.parent.to_string(),
                    l.link
                        .channel
                        .as_ref()
                        .map(|c| format!("@{c}"))
                        .unwrap_or_else(|| "-".into()),
                    format!("{}/{}", l.link.platform, l.link.region),
                    freshness_text(&l.link.freshness),
                    revocation_cell(&l.link.revocation),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "DEPTH",
                "CHILD",
                "PARENT",
                "VIA",
                "ARTIFACT",
                "FRESHNESS",
                "REVOKED",
            ],
            &rows,
        ));
    }
    if a.children.is_empty() {
        out.push_str("children: none\n");
    } else {
        out.push_str("children:\n");
        let rows: Vec<Vec<String>> = a
            .children
            .iter()
            .map(|c| {
                vec![
                    c.child.to_string(),
                    c.build.clone(),
                    c.channel
                        .as_ref()
                        .map(|ch| format!("@{ch}"))
                        .unwrap_or_else(|| "-".into()),
                    format!("{}/{}", c.platform, c.region),
                    freshness_text(&c.freshness),
                    revocation_cell(&c.revocation),
                ]
            })
            .collect();
        out.push_str(&table(
            &["CHILD", "BUILD", "VIA", "ARTIFACT", "FRESHNESS", "REVOKED"],
            &rows,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns() {
        let t = table(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "".into()]],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz\n");
    }

    #[test]
    fn errors_render() {
        let e = RegistryError::UnknownChannel {
            bucket: "web".into(),
            channel: "prdo".into(),
            suggestions: vec!["prod".into()],
        };
        assert!(
            render_error(&e, Format::Human).starts_with("error: bucket \"web\" has no channel")
        );
        let j: serde_json::Value =
            serde_json::from_str(&render_error(&e, Format::Json)).expect("json");
        assert_eq!(j["error"]["suggestions"][0], "prod");
    }
}
