//! A client for registries speaking the OCI distribution spec (CNCF distribution, Docker
//! Hub, GHCR, Harbor, ...), on reqwest directly.
//!
//! * [`RegistryClient::new`] per registry host with [`RegistryOptions`] (credentials,
//!   `insecure` hosts for plain HTTP, `ca_file`).
//! * [`RegistryClient::pull`] into an [`crate::OciLayout`]; [`RegistryClient::push`] from one.
//! * Auth: anonymous, Basic, and bearer tokens from the registry's token service (the
//!   `WWW-Authenticate: Bearer realm=…` flow), learned from the first 401 and cached per
//!   scope. Credentials only travel over TLS or to hosts the caller listed as insecure.

mod auth;
mod client;
mod error;
mod reference;
mod transfer;

pub use auth::{AuthFileError, Credentials, Secret, default_auth_files, lookup_auth_file};
pub use client::{FetchedManifest, RegistryClient, RegistryOptions};
pub use error::{Details, ErrorItem, RegistryError};
pub use reference::{BadReference, ImageSource, Reference};
pub use transfer::{BlobPush, PullReport, PushOptions, PushReport};
