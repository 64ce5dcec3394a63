//! The audit log: one JSON line per capability use, beside the build's output.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::ui::Redactor;

/// One line of the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord<'a> {
    /// RFC 3339 UTC.
    pub ts: String,
    pub run: &'a str,
    pub build: &'a str,
    pub step: &'a str,
    pub capability: &'a str,
    pub object: &'a str,
    /// "ok", "denied", or "error: <message>".
    pub outcome: &'a str,
    pub duration_ms: f64,
}

/// Appends records to a JSON-lines file. Shared by every build of a run.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Mutex<Option<BufWriter<File>>>>,
    path: Option<PathBuf>,
    redactor: Redactor,
}

impl AuditLog {
    /// Opens (creating parents) the log at `path`, appending.
    pub fn open(path: &Path, redactor: Redactor) -> std::io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(AuditLog {
            inner: Arc::new(Mutex::new(Some(BufWriter::new(file)))),
            path: Some(path.to_path_buf()),
            redactor,
        })
    }

    /// A log that records nothing (validate / inspect touch nothing).
    pub fn disabled(redactor: Redactor) -> Self {
        AuditLog {
            inner: Arc::new(Mutex::new(None)),
            path: None,
            redactor,
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Writes one line. Objects and outcomes may carry commands with secret values
    /// in them: they are redacted first and cut to [`MAX_OBJECT`] after, so a cut can
    /// never leave the prefix of a secret in clear.
    pub fn record(&self, rec: &AuditRecord<'_>) {
        if self.path.is_none() {
            return; // disabled: validate and inspect touch nothing
        }
        let object = truncate(&self.redactor.redact(rec.object), MAX_OBJECT);
        let outcome = truncate(&self.redactor.redact(rec.outcome), MAX_OBJECT);
        let rec = AuditRecord {
            object: &object,
            outcome: &outcome,
            ..rec.clone()
        };
        let Ok(line) = serde_json::to_string(&rec) else {
            return;
        };
        // The other fields (build and step names) come from the script too.
        let line = self.redactor.redact(&line);
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = guard.as_mut() {
            // Flush per line: the log must be complete even if kiln is killed.
            if writeln!(w, "{line}").and_then(|_| w.flush()).is_err() {
                tracing::warn!("could not write the audit log");
            }
        }
    }
}

/// Longest object or outcome kept in an audit line, in bytes.
pub const MAX_OBJECT: usize = 512;

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
