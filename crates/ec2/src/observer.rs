//! What the caller learns about each HTTP attempt: a [`CallRecord`] per attempt handed to an
//! optional [`Observer`], plus counters. Records carry no parameters, bodies or headers, so
//! no secret and no private key can reach an audit line through them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One attempt of one API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The API action, e.g. `RunInstances`.
    pub action: &'static str,
    pub region: String,
    /// 1 for the first try, 2 for the first retry, ...
    pub attempt: u32,
    pub duration: Duration,
    pub outcome: CallOutcome,
    /// The HTTP status, when an answer arrived.
    pub http_status: Option<u16>,
    /// EC2's request id, when the answer had one (quote it to AWS support).
    pub request_id: Option<String>,
    /// Whether the client is going to try again after this attempt.
    pub will_retry: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    Ok,
    /// EC2 answered with an error code (or `HTTP <status>` when the body had none).
    ApiError {
        code: String,
    },
    /// No answer: connect failure, timeout, reset, oversized or unreadable body.
    Transport {
        kind: TransportFailure,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    Connect,
    Timeout,
    /// The connection broke after the request was sent.
    Interrupted,
    TooLarge,
}

impl CallOutcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, CallOutcome::Ok)
    }

    /// A short label for audit lines: `ok`, the error code, or `transport:<kind>`.
    pub fn label(&self) -> String {
        match self {
            CallOutcome::Ok => "ok".into(),
            CallOutcome::ApiError { code } => code.clone(),
            CallOutcome::Transport { kind } => format!("transport:{kind:?}").to_lowercase(),
        }
    }
}

/// Called synchronously after every attempt; keep it cheap (push to a channel or a log).
pub type Observer = Arc<dyn Fn(&CallRecord) + Send + Sync>;

/// Counters shared by a client and every client derived from it (`for_region`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    attempts: AtomicU64,
    calls: AtomicU64,
}

impl Counters {
    pub fn attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }
    pub fn call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> CallStats {
        CallStats {
            calls: self.calls.load(Ordering::Relaxed),
            attempts: self.attempts.load(Ordering::Relaxed),
        }
    }
}

/// Totals since the client was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallStats {
    /// API calls the caller made (each may take several attempts).
    pub calls: u64,
    /// HTTP requests sent, retries included.
    pub attempts: u64,
}
