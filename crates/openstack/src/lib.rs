//! kiln-openstack: publish images to OpenStack Glance, authenticating the way the `openstack`
//! CLI does.
//!
//! - [`CloudConfig::resolve`] finds the cloud: explicit [`CloudOptions`] > `OS_*` variables >
//!   `clouds.yaml` (+ `secure.yaml`), with the [`Environment`] injectable for tests.
//! - [`Glance::connect`] gets a Keystone v3 token (password, application credential, token) or
//!   uses none, and picks the image endpoint from the catalog (region, interface) unless one is
//!   given.
//! - [`Glance`] creates, uploads, imports, polls, finds, patches and deletes images.
//!
//! Invariants:
//! - Secrets (passwords, tokens, application-credential secrets) live in [`Secret`], whose
//!   `Debug` is `<redacted>`; they are only read to build a request inside this crate and never
//!   reach an error, a log line or a returned value.
//! - Image data is streamed from disk with an explicit `Content-Length` (never chunked, never
//!   read whole); at most a few MiB are buffered whatever the image size. The sha512 and md5 of
//!   exactly the bytes sent are computed on the way ([`UploadReport`]).
//! - Every response body is read with a size limit; remote error messages are cleaned and cut
//!   before they reach an [`Error`].
//! - Errors are typed ([`Error`], [`ConfigError`]); no dependency's type is part of the API.
//! - An image exists from `create` on: a caller that fails or is cancelled later must
//!   [`Glance::delete`] it (the id is in [`Created::image`] before any data moves).

mod config;
mod error;
mod glance;
mod http;
mod image;
mod keystone;
mod secret;
mod upload;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{
    AppCredential, Auth, CloudConfig, CloudOptions, DomainRef, Environment, Interface, Scope,
    UserRef,
};
pub use error::{ConfigError, Error};
pub use glance::{Created, Deleted, Glance, WaitOptions};
pub use image::{
    ContainerFormat, DiskFormat, Image, ImagePatch, ImageStatus, NewImage, UploadReport, Verified,
    Visibility,
};
pub use secret::Secret;
pub use upload::{Progress, ProgressFn};
