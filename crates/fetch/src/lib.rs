//! kiln-fetch: build inputs (installer ISOs, base disk images) by URL, the way Packer's
//! `iso_url` / `iso_urls` / `iso_checksum` take them, through a shared download cache.
//!
//! Invariants:
//!
//! * **Nothing unverified is used or kept as an entry.** Content is hashed while it is
//!   written (never a second read) into a temporary `.part` file and renamed to its final
//!   name only after the digest matched; a mismatch deletes the partial and fails naming
//!   both digests. `none` skips the comparison (the caller warns) but still records the
//!   computed SHA-256.
//! * **One download per key.** Entries are keyed by URL and checksum. An exclusive
//!   `flock` per key serialises writers across threads and processes; others wait (and
//!   are told, so the UI can say so) and then use the finished entry. A returned
//!   [`Fetched`] holds a shared lock so `prune` never deletes a file in use.
//! * **Crash safety.** Any crash leaves a complete verified entry, a resumable partial
//!   (resumed with `Range` + `If-Range`, restarted from zero when the server cannot
//!   resume), or leftovers that are never used and are cleaned up. Entries record the
//!   boot they were written in instead of being fsynced; an entry from an earlier boot
//!   (the only case where a power loss could have lost its blocks) is rehashed before
//!   its first use.
//! * **Private cache.** The directory is created 0700 and files 0600; a directory owned
//!   by someone else or writable by group/others is refused.
//! * **Hostile servers.** Sizes, redirects, sums files and metadata are bounded; errors
//!   are typed ([`FetchError`]) and no URL credential or signed-query value appears in
//!   an error, a log line or a progress event.
//!
//! The crate never prints: progress and waiting are reported through [`Observer`].

mod cache;
mod checksum;
mod client;
mod download;
mod error;
mod fetcher;
mod lock;
mod observe;
mod redact;
mod source;
mod sums;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use cache::{Cache, CacheEntry, EntryState, Prune, PruneReport};
pub use checksum::{Algorithm, ChecksumError, ChecksumSpec, Digest};
pub use client::{ProxySettings, RedirectGuard};
pub use error::FetchError;
pub use fetcher::{FetchConfig, FetchRequest, Fetched, Fetcher, LocalMode, Origin};
pub use observe::{Observer, Progress, Restart, Silent};
pub use source::Target;

/// `input` (a URL or a path) as it may be shown: a password in the URL and credential-like
/// query values (`X-Amz-Signature`, `token`, ...) replaced by `<redacted>`. For callers
/// that name an input before fetching it.
pub fn redact_url(input: &str) -> String {
    redact::location(input)
}
