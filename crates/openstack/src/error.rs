//! The error types of this crate. Messages say what went wrong and what the user can do;
//! no reqwest, rustls, serde or YAML type leaks out, and no secret is ever part of a message
//! (remote error bodies are cleaned and cut to a few hundred characters).

use std::path::PathBuf;
use std::time::Duration;

/// Resolving where and how to authenticate (clouds.yaml, secure.yaml, `OS_*`, options).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not valid clouds.yaml syntax: {detail}")]
    Syntax { path: PathBuf, detail: String },

    #[error(
        "cloud {cloud:?} is not defined in {searched}; defined clouds: {available} \
         (select one with the `cloud` option or OS_CLOUD)"
    )]
    UnknownCloud {
        cloud: String,
        searched: String,
        available: String,
    },

    #[error(
        "cloud {cloud:?} was asked for (the `cloud` option or OS_CLOUD) but no clouds.yaml exists; \
         looked at {searched}"
    )]
    NoCloudsFile { cloud: String, searched: String },

    #[error(
        "auth type {given:?} is not supported; use one of password, v3applicationcredential, token, none"
    )]
    UnsupportedAuthType { given: String },

    #[error("auth type {auth_type} needs {missing}: set {how}")]
    Missing {
        auth_type: &'static str,
        missing: &'static str,
        how: &'static str,
    },

    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
}

/// Everything that can go wrong talking to Keystone or Glance.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error(
        "{service} at {url} rejected the credentials (HTTP 401): {message}; check the {credential} \
         (clouds.yaml / OS_* variables){expiry_hint}"
    )]
    AuthRejected {
        service: &'static str,
        url: String,
        credential: &'static str,
        message: String,
        /// ", or the token may have expired" when a token was sent; empty otherwise.
        expiry_hint: &'static str,
    },

    #[error(
        "{what}: forbidden (HTTP 403): {message}; the project or role lacks the permission \
         (or the image is protected)"
    )]
    Forbidden { what: String, message: String },

    #[error("{what}: not found (HTTP 404){message}")]
    NotFound { what: String, message: String },

    #[error("{what}: conflict (HTTP 409): {message}")]
    Conflict { what: String, message: String },

    #[error("{what}: Glance refused the request (HTTP {status}): {message}")]
    BadRequest {
        what: String,
        status: u16,
        message: String,
    },

    #[error("{what}: HTTP {status} from {service}: {message}")]
    Api {
        what: String,
        service: &'static str,
        status: u16,
        message: String,
    },

    #[error(
        "no {service} endpoint with interface {interface}{region} in the service catalog; the catalog \
         has {available}; set region_name / interface (OS_REGION_NAME / OS_INTERFACE) or an explicit \
         endpoint (OS_ENDPOINT)"
    )]
    NoEndpoint {
        service: &'static str,
        interface: String,
        /// " in region X" or "".
        region: String,
        available: String,
    },

    #[error(
        "the {service} endpoint is ambiguous: regions {regions} all offer interface {interface}; \
         set region_name (OS_REGION_NAME)"
    )]
    AmbiguousEndpoint {
        service: &'static str,
        interface: String,
        regions: String,
    },

    #[error(
        "timed out after {after:?} waiting for image {id} to become {waited_for}; its last status was \
         {last_status} (raise the wait timeout if the cloud is slow)"
    )]
    Timeout {
        id: String,
        waited_for: String,
        last_status: String,
        after: Duration,
    },

    #[error("image {id} went to status {status} instead of active{detail}")]
    ImageFailed {
        id: String,
        status: String,
        detail: String,
    },

    #[error(
        "image {id}: Glance's {algo} of the stored data is {remote} but the {bytes} bytes kiln sent \
         hash to {local}; the upload was corrupted on the way"
    )]
    HashMismatch {
        id: String,
        algo: String,
        local: String,
        remote: String,
        bytes: u64,
    },

    #[error("image {id} has no checksum or hash to verify the upload against (status {status})")]
    HashUnavailable { id: String, status: String },

    #[error(
        "the cloud does not offer the {method} import method (offered: {offered}); upload directly instead"
    )]
    ImportNotOffered { method: String, offered: String },

    #[error(
        "TLS with {url} failed: {detail}; if the cloud uses a private CA set cacert (OS_CACERT) to its \
         PEM bundle"
    )]
    Tls { url: String, detail: String },

    #[error("cannot connect to {url}: {detail}; is the endpoint right and the service up?")]
    Connect { url: String, detail: String },

    #[error("request to {url} failed: {detail}")]
    Transport { url: String, detail: String },

    #[error("{what}: the response is larger than the allowed {limit} bytes")]
    ResponseTooLarge { what: String, limit: usize },

    #[error("{what}: unexpected response: {detail}")]
    InvalidResponse { what: String, detail: String },

    #[error("{what} {path}: {source}")]
    LocalFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl Error {
    /// True for the variants that mean "the credentials or token are wrong".
    pub fn is_auth_rejected(&self) -> bool {
        matches!(self, Error::AuthRejected { .. })
    }

    /// True when the image (or other object) does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}
