//! What a download shows while it runs: a bar with rate and ETA on a terminal, one
//! line per 10 % otherwise (CI logs), and a line for each wait, resume, restart and
//! mirror fail-over. URLs arrive redacted from kiln-fetch.

use std::sync::Mutex;
use std::time::Duration;

use kiln_fetch::{FetchError, Observer, Progress, Restart};

use crate::ui::{self, Ui, human_bytes};

/// Without a total (no Content-Length), a line per this many bytes.
const LINE_EVERY_UNKNOWN: u64 = 100 << 20;

/// Renders one fetch's events for one build.
pub struct UiObserver {
    ui: Ui,
    label: String,
    what: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    bar: Option<ui::Progress>,
    /// The last 10 % step (or byte step without a total) printed as a line.
    last_step: Option<u64>,
}

impl UiObserver {
    pub fn new(ui: Ui, label: &str, what: &str) -> UiObserver {
        UiObserver {
            ui,
            label: label.to_string(),
            what: what.to_string(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn rate(bps: f64) -> String {
    if bps <= 0.0 {
        return "-".into();
    }
    // Display only: a rate does not need every bit of an f64 in u64.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let whole = bps as u64;
    format!("{}/s", human_bytes(whole))
}

fn eta(d: Option<Duration>) -> String {
    match d {
        Some(d) => humantime::format_duration(Duration::from_secs(d.as_secs())).to_string(),
        None => "?".into(),
    }
}

/// The 10 % step a fraction is in (0..=10).
fn decile(f: f64) -> u64 {
    // `f` is in 0.0..=1.0, so this is 0..=10.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let d = (f * 10.0).floor() as u64;
    d.min(10)
}

impl Observer for UiObserver {
    fn waiting(&self, url: &str) {
        self.ui.say(
            &self.label,
            &format!("Waiting for another kiln to finish downloading {url}..."),
        );
    }

    fn progress(&self, p: &Progress) {
        let mut st = self.state();
        if st.bar.is_none() {
            let first = p.total.map_or_else(
                || format!("Downloading {} {}", self.what, p.url),
                |t| format!("Downloading {} {} ({})", self.what, p.url, human_bytes(t)),
            );
            self.ui.say(&self.label, &first);
            let bar = self.ui.progress(
                &self.label,
                &format!("{} {}", self.what, p.url),
                p.total.unwrap_or(0),
            );
            // A resumed download starts its lines where it stands.
            st.last_step = Some(match p.fraction() {
                Some(f) => decile(f),
                None => p.bytes / LINE_EVERY_UNKNOWN,
            });
            st.bar = Some(bar);
        }
        if let Some(bar) = &st.bar {
            bar.set(p.bytes);
            if bar.is_visible() {
                if p.done
                    && let Some(bar) = st.bar.take()
                {
                    bar.finish();
                }
                return;
            }
        }
        if p.done {
            st.bar = None;
            return;
        }
        let step = match p.fraction() {
            Some(f) => decile(f),
            None => p.bytes / LINE_EVERY_UNKNOWN,
        };
        if st.last_step.is_some_and(|s| step <= s) {
            return;
        }
        st.last_step = Some(step);
        let line = match p.total {
            Some(t) => format!(
                "{} {}%: {} of {} at {}, ETA {}",
                self.what,
                step * 10,
                human_bytes(p.bytes),
                human_bytes(t),
                rate(p.rate),
                eta(p.eta())
            ),
            None => format!(
                "{}: {} at {}",
                self.what,
                human_bytes(p.bytes),
                rate(p.rate)
            ),
        };
        self.ui.message(&self.label, &line);
    }

    fn resumed(&self, url: &str, offset: u64) {
        self.ui.say(
            &self.label,
            &format!(
                "Resuming the download of {url} at {} (HTTP Range)",
                human_bytes(offset)
            ),
        );
    }

    fn restarted(&self, url: &str, why: Restart) {
        self.ui.say(
            &self.label,
            &format!("Downloading {url} again from the start: {why}"),
        );
    }

    fn retrying(&self, url: &str, error: &FetchError, attempt: u32, max: u32) {
        self.ui.warn(
            &self.label,
            &format!("{url}: {error}; resuming (attempt {attempt} of {max})"),
        );
    }

    fn failed_over(&self, url: &str, error: &FetchError) {
        self.ui.warn(
            &self.label,
            &format!("{error}; trying the next URL ({url} failed)"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deciles_and_rates() {
        assert_eq!(decile(0.0), 0);
        assert_eq!(decile(0.199), 1);
        assert_eq!(decile(1.0), 10);
        assert_eq!(rate(0.0), "-");
        assert_eq!(rate(1.5 * 1024.0 * 1024.0), "1.5 MiB/s");
        assert_eq!(eta(Some(Duration::from_millis(61_500))), "1m 1s");
    }
}
