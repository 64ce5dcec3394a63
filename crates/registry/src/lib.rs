//! kiln's artifact registry.
//!
//! **Model.** A *bucket* (an image lineage) has *versions*, each identified by a fingerprint (a
//! ULID per `kiln build` run, or `KILN_BUILD_FINGERPRINT` so several machines contribute to one
//! version). A version has one *build* per source (name, labels, status) with its *artifacts*
//! (platform, region, external id, optional sha256/size/path) and the *provenance* of the run
//! that recorded it ([`provenance`]). *Channels* point at versions; `latest` is moved by kiln to
//! every version that becomes complete, other channels (dev, prod, …) by `promote`, and every
//! move is kept. *Revocations* (a reason, effective now or at a time, optionally inherited by
//! every descendant through parent links) can be lifted by `restore`. *Ancestry* shows a
//! version's parents and its children, each up to date or out of date with its parent channel.
//!
//! **Invariants.**
//! - A version is complete exactly when every expected build has a succeeded record; a
//!   succeeded build is immutable and a complete version accepts no new build.
//! - Only complete, unrevoked versions can be promoted; `latest` is never promoted by hand.
//! - Every name is checked against [`limits`] before storage, every value goes through a
//!   query parameter, and free text is stored inertly (and HTML-escaped on the page).
//! - SQLite and PostgreSQL run the same logic and pass the same test suite; SQLite is safe
//!   with concurrent writer processes (WAL, `BEGIN IMMEDIATE`, busy timeout, retries).
//! - Token secrets are stored as sha256 only, compared in constant time, never printed
//!   ([`SecretToken`]); a PostgreSQL URL's password is redacted from every message.
//! - No error or type of a dependency leaks from this crate's API.
//!
//! **Use.** The runtime opens a [`Store`] ([`Location::from_env`]), calls [`Store::record`]
//! with a [`RecordBuild`] at the end of each build and [`Store::resolve_artifact`] for
//! `registry_artifact(...)`. `kiln artifacts …` maps its arguments onto [`cli::Command`], runs
//! [`cli::execute`] and prints [`cli::Output::render`]; `kiln registry serve` calls
//! [`server::Server::bind`] and [`server::Server::run`].

pub mod cli;
mod error;
mod fingerprint;
pub mod limits;
mod model;
pub mod provenance;
pub mod server;
mod store;
mod suggest;
pub mod terraform;
mod timestamp;
mod token;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use error::RegistryError;
pub use fingerprint::{FINGERPRINT_ENV, Fingerprint};
pub use model::*;
pub use provenance::Provenance;
pub use store::{Location, REGISTRY_ENV, Store};
pub use timestamp::Timestamp;
pub use token::SecretToken;
