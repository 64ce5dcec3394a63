//! What the user sees: Packer-style lines per build, progress bars on a tty, or one
//! JSON event per line with `--machine-readable`. Every string passes the redactor,
//! and then has its control characters made visible ([`escape_controls`]) before
//! kiln adds its own colours, so text from a guest or a remote command cannot drive
//! the terminal. Logs (`KILN_LOG=debug`) are separate: they go through `tracing` to
//! stderr, through the same redactor and escaping.

mod escape;
mod redact;
pub mod terminal;

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

pub use escape::{escape_controls, escape_controls_but_colours, escape_json_line};
pub use redact::{LineStream, RedactStream, Redactor};

/// How output is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Human,
    MachineReadable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

#[derive(Clone)]
pub struct Ui {
    inner: Arc<Inner>,
}

struct Inner {
    mode: Mode,
    verbosity: Verbosity,
    color: bool,
    timestamps: bool,
    redactor: Redactor,
    out: Mutex<()>,
    progress: Option<MultiProgress>,
}

/// Colors per build, so parallel builds are told apart (Packer does the same).
const COLORS: [&str; 5] = ["\x1b[32m", "\x1b[36m", "\x1b[35m", "\x1b[33m", "\x1b[34m"];

impl Ui {
    pub fn new(mode: Mode, verbosity: Verbosity, timestamps: bool, redactor: Redactor) -> Self {
        let tty = std::io::stdout().is_terminal();
        let progress = (tty && mode == Mode::Human && verbosity != Verbosity::Quiet)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Ui {
            inner: Arc::new(Inner {
                mode,
                verbosity,
                color: tty && mode == Mode::Human && std::env::var_os("NO_COLOR").is_none(),
                timestamps,
                redactor,
                out: Mutex::new(()),
                progress,
            }),
        }
    }

    pub fn redactor(&self) -> &Redactor {
        &self.inner.redactor
    }

    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    /// A major step: `==> web.qemu: Waiting for SSH...`
    pub fn say(&self, build: &str, msg: &str) {
        self.line("say", build, msg, "==> ");
    }

    /// A detail or remote output line: `    web.qemu: hello`
    pub fn message(&self, build: &str, msg: &str) {
        self.line("message", build, msg, "    ");
    }

    /// Remote command output, one line.
    pub fn output(&self, build: &str, stream: &str, line: &str) {
        if self.inner.mode == Mode::MachineReadable {
            self.emit(json!({ "type": "output", "build": build, "stream": stream, "line": line }));
        } else {
            self.line("message", build, line, "    ");
        }
    }

    pub fn warn(&self, build: &str, msg: &str) {
        self.line("warn", build, &format!("Warning: {msg}"), "==> ");
    }

    pub fn error(&self, build: &str, msg: &str) {
        self.line("error", build, msg, "==> ");
    }

    /// A plain line not tied to a build (summaries, kiln validate).
    pub fn plain(&self, msg: &str) {
        if self.inner.verbosity == Verbosity::Quiet {
            return;
        }
        if self.inner.mode == Mode::MachineReadable {
            self.emit(json!({ "type": "ui", "message": msg }));
        } else {
            let msg = self.inner.redactor.redact(msg);
            self.print_stdout(&escape_controls(&msg));
        }
    }

    /// Emits a structured event (only shown with --machine-readable).
    pub fn event(&self, kind: &str, mut data: serde_json::Value) {
        if self.inner.mode != Mode::MachineReadable {
            return;
        }
        if let Some(obj) = data.as_object_mut() {
            obj.insert("type".into(), kind.into());
        }
        self.emit(data);
    }

    /// A byte-count progress bar for a transfer; hidden when not on a tty.
    pub fn progress(&self, build: &str, label: &str, total: u64) -> Progress {
        let bar = match &self.inner.progress {
            Some(mp) => {
                let bar = mp.add(ProgressBar::new(total));
                bar.set_style(
                    ProgressStyle::with_template(
                        "    {prefix}: {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(escape_controls(build).into_owned());
                bar.set_message(escape_controls(&self.inner.redactor.redact(label)).into_owned());
                bar.enable_steady_tick(Duration::from_millis(200));
                Some(bar)
            }
            None => None,
        };
        Progress { bar }
    }

    fn line(&self, kind: &str, build: &str, msg: &str, prefix: &str) {
        let quiet = self.inner.verbosity == Verbosity::Quiet;
        if quiet && kind != "error" {
            return;
        }
        if self.inner.mode == Mode::MachineReadable {
            self.emit(json!({ "type": kind, "build": build, "message": msg }));
            return;
        }
        let ts = if self.inner.timestamps {
            format!("{}: ", crate::caps::now_rfc3339_pub())
        } else {
            String::new()
        };
        let text = self.render(kind, build, msg, prefix, &ts);
        if kind == "error" {
            self.print_stderr(&text);
        } else {
            self.print_stdout(&text);
        }
    }

    /// One message as human lines: redacted, control characters made visible, then
    /// kiln's prefix and colours.
    fn render(&self, kind: &str, build: &str, msg: &str, prefix: &str, ts: &str) -> String {
        let msg = self.inner.redactor.redact(msg);
        let msg = escape_controls(&msg);
        let build = escape_controls(build);
        let mut text = String::new();
        for (i, l) in msg.lines().enumerate() {
            if i > 0 {
                text.push('\n');
            }
            let p = if i == 0 { prefix } else { "    " };
            if self.inner.color {
                let c = if kind == "error" {
                    "\x1b[31m"
                } else if kind == "warn" {
                    "\x1b[33m"
                } else {
                    COLORS[color_index(&build)]
                };
                let bold = if prefix.starts_with("==>") {
                    "\x1b[1m"
                } else {
                    ""
                };
                text.push_str(&format!("{ts}{c}{bold}{p}{build}: {l}\x1b[0m"));
            } else {
                text.push_str(&format!("{ts}{p}{build}: {l}"));
            }
        }
        if msg.is_empty() {
            text = format!("{ts}{prefix}{build}:");
        }
        text
    }

    fn emit(&self, mut value: serde_json::Value) {
        if let Some(obj) = value.as_object_mut() {
            obj.insert("ts".into(), crate::caps::now_rfc3339_pub().into());
        }
        let line = self.inner.redactor.redact(&value.to_string());
        let line = escape_json_line(&line);
        let _g = self.inner.out.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    fn print_stdout(&self, text: &str) {
        let text = self.inner.redactor.redact(text);
        let _g = self.inner.out.lock().unwrap_or_else(|p| p.into_inner());
        match &self.inner.progress {
            Some(mp) => {
                let _ = mp.println(&text);
            }
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
        }
    }

    fn print_stderr(&self, text: &str) {
        let text = self.inner.redactor.redact(text);
        let _g = self.inner.out.lock().unwrap_or_else(|p| p.into_inner());
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{text}");
    }
}

fn color_index(build: &str) -> usize {
    build
        .bytes()
        .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize))
        % COLORS.len()
}

/// A transfer's progress bar (no-op when hidden).
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn set(&self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }

    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }

    /// Whether a bar is drawn (a terminal); callers print milestone lines otherwise.
    pub fn is_visible(&self) -> bool {
        self.bar.is_some()
    }
}

/// `1.5 MiB`, `312 B`: a byte count for humans.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)] // for display only
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ui(color: bool) -> Ui {
        Ui {
            inner: Arc::new(Inner {
                mode: Mode::Human,
                verbosity: Verbosity::Normal,
                color,
                timestamps: false,
                redactor: Redactor::default(),
                out: Mutex::new(()),
                progress: None,
            }),
        }
    }

    /// A hostile line keeps none of its control bytes; kiln's own colours stay.
    #[test]
    fn hostile_output_is_escaped_and_kilns_colours_stay() {
        let hostile = "\x1b]52;c;cGF5bG9hZA==\x07\x1b]0;owned\x07\rfake ok\x1b[2K";
        for color in [false, true] {
            let text = ui(color).render("message", "web", hostile, "    ", "");
            let without_kiln: String = if color {
                let c = COLORS[color_index("web")];
                assert!(text.starts_with(c), "{text:?}");
                assert!(text.ends_with("\x1b[0m"), "{text:?}");
                text.trim_start_matches(c)
                    .trim_end_matches("\x1b[0m")
                    .to_string()
            } else {
                text.clone()
            };
            assert!(
                !without_kiln.chars().any(|c| c.is_control()),
                "{without_kiln:?}"
            );
            assert!(without_kiln.contains("\\x1b]52;c;"), "{without_kiln:?}");
            assert!(without_kiln.contains("\\rfake ok"), "{without_kiln:?}");
        }
    }
}
