//! kiln-ec2: the EC2 Query API as kiln's `amazon_ebs` builder and `kiln cleanup` need it.
//!
//! [`Ec2Client`] signs every request with SigV4 (module `sign`), retries throttling, 5xx and
//! connection failures with capped, jittered backoff, reports each attempt to an optional
//! [`Observer`], and parses XML answers leniently. Operations are methods grouped by
//! resource in [`ops`]; waiters are in [`wait`]; credentials are found the AWS way in
//! [`credentials`]. Behind the `testkit` feature, [`testkit::MotoServer`] runs a moto_server
//! for tests.
//!
//! How the runtime uses it (the `amazon_ebs` builder, the ledger, `kiln cleanup`):
//!
//! ```no_run
//! # async fn demo() -> Result<(), kiln_ec2::Ec2Error> {
//! use std::sync::Arc;
//! use kiln_ec2::*;
//!
//! let config = ClientConfig {
//!     endpoint: None, // or Some("http://127.0.0.1:5000".into()) for moto
//!     observer: Some(Arc::new(|r: &CallRecord| {
//!         // audit through the broker: action, region, attempt, duration, outcome
//!         eprintln!("{} {} #{} {:?} {}", r.action, r.region, r.attempt, r.duration, r.outcome.label());
//!     })),
//!     ..Default::default()
//! };
//! let creds = CredentialsConfig { profile: Some("ci".into()), ..Default::default() };
//! let ec2 = Ec2Client::from_environment(Some("us-east-1"), &creds, config, &ProcessEnvironment)?;
//!
//! let mut tags = Tags::new();
//! tags.insert("kiln:run".into(), "0b6c…".into());
//! let source = ec2
//!     .find_source_image(&SourceImageFilter {
//!         filters: vec![Filter::new("name", ["debian-12-amd64-*"])],
//!         owners: vec!["136693071363".into()],
//!         most_recent: true,
//!     })
//!     .await?;
//! // The ledger records the intent (kind, region, token, tags) before this call.
//! let launched = ec2
//!     .run_instance(&RunInstanceRequest {
//!         image_id: source.image_id,
//!         instance_type: "t3.micro".into(),
//!         tags: tags.clone(),
//!         volume_tags: tags.clone(),
//!         client_token: Some("run-0b6c-launch".into()),
//!         ..Default::default()
//!     })
//!     .await?;
//! let running = ec2.wait_instance_running(&launched.instance_id, &WaitOptions::default()).await?;
//! # let _ = running;
//!
//! // Cleanup without a ledger: everything the run left in this region.
//! for r in ec2.find_tagged(&TagQuery::equals("kiln:run", "0b6c…")).await? {
//!     if r.is_live() {
//!         println!("{} {} is left over", r.kind, r.id);
//!     }
//! }
//! # Ok(()) }
//! ```
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
    FixedEnvironment, ProcessEnvironment, resolve_region,
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
