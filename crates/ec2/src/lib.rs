//! kiln-ec2: the EC2 Query API as kiln's `amazon_ebs` builder and `kiln cleanup` need it.
//!
//! [`Ec2Client`] signs every request with SigV4 (module `sign`), retries throttling, 5xx and
//! connection failures with capped, jittered backoff, reports each attempt to an optional
//! [`Observer`], and parses XML answers leniently. Operations are methods grouped by
//! resource in [`ops`]; waiters are in [`wait`]; credentials are found the AWS way in
//! [`credentials`]. Behind the `testkit` feature, [`testkit::MotoServer`] runs a moto_server
//! for tests.
//!
//! Invariants:
//! - Secrets (secret key, session token, generated private keys) live in [`Secret`] and in
//!   [`Credentials`], whose `Debug`/`Display` print `<redacted>`; no error, log line or
//!   [`CallRecord`] holds one. Credentials never leave the client.
//! - Every answer is read with a size bound; remote text in errors is cleaned and cut.
//! - A request whose fate is unknown (sent, no answer) is repeated only when repeating is
//!   harmless: reads, deletes, and creates that carry a ClientToken.
//! - Errors are [`Ec2Error`] variants; no type of a dependency appears in the public API.
//! - Nothing here panics on remote input.

mod client;
pub mod credentials;
mod error;
mod model;
mod observer;
pub mod ops;
mod params;
mod retry;
mod secret;
pub(crate) mod sign;
pub mod wait;
mod xml;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use client::{ClientConfig, Ec2Client};
pub use credentials::{
    CredentialSource, Credentials, CredentialsConfig, CredentialsError, Environment,
    FixedEnvironment, ProcessEnvironment,
};
pub use error::{ApiError, Ec2Error};
pub use model::{BlockDeviceMapping, EbsBlockDevice, Filter, StateReason, Tags};
pub use observer::{CallOutcome, CallRecord, CallStats, Observer, TransportFailure};
pub use ops::images::{
    CopyImageRequest, CreateImageRequest, DeregisteredImage, DescribeImagesRequest, Image,
    ImageState, LaunchPermissions, RegisterImageRequest, SourceImageFilter,
};
pub use ops::instances::{
    AttachedVolume, Instance, InstanceState, RunInstanceRequest, ShutdownBehavior, SpotOptions,
    StateChange,
};
pub use ops::key_pairs::{CreatedKeyPair, KeyPairInfo, KeyType};
pub use ops::network::{Subnet, Vpc};
pub use ops::security_groups::{IpPermission, SecurityGroup};
pub use ops::storage::{Snapshot, SnapshotState, Volume, VolumeAttachment};
pub use ops::sweep::{ResourceKind, TagQuery, TaggedResource};
pub use retry::RetryPolicy;
pub use secret::Secret;
pub use wait::WaitOptions;
