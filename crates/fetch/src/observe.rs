//! What a fetch tells its caller while it runs: progress, waiting for another process,
//! resumes, restarts and mirror fail-over. The runtime renders these (a bar with rate and
//! ETA on a terminal, a line per 10 % otherwise); this crate never prints.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::FetchError;

/// A progress report for one transfer. URLs are redacted.
#[derive(Debug, Clone)]
pub struct Progress {
    pub url: String,
    /// Bytes of the file on disk so far, including a resumed prefix.
    pub bytes: u64,
    /// The whole file's size, when the server said.
    pub total: Option<u64>,
    /// Recent transfer rate in bytes per second (over the last few seconds).
    pub rate: f64,
    /// Where this transfer started (non-zero when it resumed a partial download).
    pub resumed_from: u64,
    /// The transfer is complete (the last report of a transfer).
    pub done: bool,
}

impl Progress {
    /// Fraction done in `0.0..=1.0`, when the total is known.
    pub fn fraction(&self) -> Option<f64> {
        self.total
            .filter(|t| *t > 0)
            .map(|t| (self.bytes as f64 / t as f64).min(1.0))
    }

    /// Time left at the current rate, when the total is known.
    pub fn eta(&self) -> Option<Duration> {
        let total = self.total?;
        if self.rate <= 0.0 {
            return None;
        }
        let left = total.saturating_sub(self.bytes) as f64;
        Some(Duration::from_secs_f64(left / self.rate))
    }
}

/// Why a download started over from byte zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// The server answered a `Range` request with the whole file (200, not 206).
    RangeIgnored,
    /// The file changed on the server since the partial download (ETag/Last-Modified).
    ValidatorChanged,
    /// The server rejected the range (416) or answered a different one.
    RangeRejected,
    /// The partial download had no validator to resume against and no checksum to check it.
    NoValidator,
    /// The partial download is from before a reboot (a power loss may have cut its tail)
    /// and there is no checksum to check a resumed result.
    PartialFromEarlierBoot,
    /// The checksum did not match after a resumed download; one full download is tried.
    MismatchAfterResume,
}

impl std::fmt::Display for Restart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Restart::RangeIgnored => "the server does not support resuming (Range ignored)",
            Restart::ValidatorChanged => {
                "the file changed on the server since the partial download"
            }
            Restart::RangeRejected => "the server rejected the resume range",
            Restart::NoValidator => "the partial download cannot be checked for resuming",
            Restart::PartialFromEarlierBoot => {
                "the partial download is from before a reboot and there is no checksum to check it"
            }
            Restart::MismatchAfterResume => {
                "the checksum did not match after resuming; downloading the whole file again"
            }
        })
    }
}

/// Callbacks of a fetch. Every method has a no-op default; implement what you render.
/// Called from the fetching task, so keep them quick.
pub trait Observer: Send + Sync {
    /// Another kiln (process or thread) holds the download lock for this URL; this fetch
    /// waits for it. Called once per wait. Suggested message: "waiting for another kiln to
    /// finish downloading {url}".
    fn waiting(&self, url: &str) {
        let _ = url;
    }

    /// Transfer progress, at most about ten times a second, and once with `done` at the end.
    fn progress(&self, progress: &Progress) {
        let _ = progress;
    }

    /// A partial download is being resumed at `offset` (an HTTP `Range` request).
    fn resumed(&self, url: &str, offset: u64) {
        let _ = (url, offset);
    }

    /// A download starts over from zero.
    fn restarted(&self, url: &str, why: Restart) {
        let _ = (url, why);
    }

    /// The connection broke mid-transfer; the download resumes (attempt `n` of `max`).
    fn retrying(&self, url: &str, error: &FetchError, attempt: u32, max: u32) {
        let _ = (url, error, attempt, max);
    }

    /// This URL of a mirror list failed; the next one is tried.
    fn failed_over(&self, url: &str, error: &FetchError) {
        let _ = (url, error);
    }
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Observer for Silent {}

/// Turns byte counts into throttled progress reports with a windowed rate.
pub(crate) struct Meter {
    url: String,
    total: Option<u64>,
    resumed_from: u64,
    start: Instant,
    last_report: Option<Instant>,
    /// (time, bytes) samples of the last few seconds for the rate.
    window: VecDeque<(Instant, u64)>,
}

const REPORT_EVERY: Duration = Duration::from_millis(100);
const RATE_WINDOW: Duration = Duration::from_secs(3);

impl Meter {
    pub(crate) fn new(url: String, total: Option<u64>, resumed_from: u64) -> Meter {
        let start = Instant::now();
        let mut window = VecDeque::new();
        window.push_back((start, resumed_from));
        Meter {
            url,
            total,
            resumed_from,
            start,
            last_report: None,
            window,
        }
    }

    /// Reports `bytes` (total on disk) if enough time passed since the last report.
    pub(crate) fn update(&mut self, bytes: u64, observer: &dyn Observer) {
        let now = Instant::now();
        if self
            .last_report
            .is_some_and(|t| now.duration_since(t) < REPORT_EVERY)
        {
            return;
        }
        self.last_report = Some(now);
        self.window.push_back((now, bytes));
        while self.window.len() > 2
            && self
                .window
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.window.pop_front();
        }
        observer.progress(&self.report(now, bytes, false));
    }

    pub(crate) fn finish(&mut self, bytes: u64, observer: &dyn Observer) {
        let now = Instant::now();
        observer.progress(&self.report(now, bytes, true));
    }

    fn report(&self, now: Instant, bytes: u64, done: bool) -> Progress {
        let rate = if done {
            // The final report carries the average of the whole transfer.
            rate(
                bytes - self.resumed_from.min(bytes),
                now.duration_since(self.start),
            )
        } else {
            match self.window.front() {
                Some((t, b)) => rate(bytes.saturating_sub(*b), now.duration_since(*t)),
                None => 0.0,
            }
        };
        Progress {
            url: self.url.clone(),
            bytes,
            total: self.total,
            rate,
            resumed_from: self.resumed_from,
            done,
        }
    }
}

fn rate(bytes: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        bytes as f64 / secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Record(Mutex<Vec<Progress>>);
    impl Observer for Record {
        fn progress(&self, p: &Progress) {
            self.0.lock().unwrap().push(p.clone());
        }
    }

    #[test]
    fn meter_throttles_and_finishes() {
        let rec = Record::default();
        let mut m = Meter::new("u".into(), Some(1000), 100);
        for b in (100..=1000).step_by(10) {
            m.update(b, &rec);
        }
        m.finish(1000, &rec);
        let got = rec.0.lock().unwrap();
        // The loop runs in far less than 100 ms: one throttled report plus the final one.
        assert!(got.len() >= 2 && got.len() < 10, "{}", got.len());
        let last = got.last().unwrap();
        assert!(last.done);
        assert_eq!(last.bytes, 1000);
        assert_eq!(last.resumed_from, 100);
        assert_eq!(last.fraction(), Some(1.0));
    }

    #[test]
    fn eta_and_fraction() {
        let p = Progress {
            url: "u".into(),
            bytes: 50,
            total: Some(100),
            rate: 10.0,
            resumed_from: 0,
            done: false,
        };
        assert_eq!(p.fraction(), Some(0.5));
        assert_eq!(p.eta(), Some(Duration::from_secs(5)));
        let unknown = Progress { total: None, ..p };
        assert_eq!(unknown.eta(), None);
    }
}
