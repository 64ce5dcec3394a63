//! `ec2`: signed EC2 API calls in the regions granted (`allow: #{ ec2: ["us-east-1"] }`,
//! `*` for every region). The amazon_ebs builder holds it for the regions its config
//! names.
//!
//! [`Ec2Cap`] is the checked facade over `kiln-ec2`: every operation checks its region
//! against the caller's grant first, and every API call it makes is audited through the
//! broker as one line (`ec2`, `<region>: <Action>`, the outcome), reported by the
//! client's observer, so waiters and retries show as the calls they are. Credentials
//! stay inside the client: no script value, audit line, log line or ledger record holds
//! them (the ledger keeps the *names* of the variables the `secret()` handles came
//! from, so `kiln cleanup` can find the same account again).
//!
//! Everything the facade creates is crash-safe: an intent record goes to the run's
//! ledger before the create call, the undo goes on the build's cleanup stack before the
//! call too (so an interrupt that drops the call mid-flight still removes what it
//! made, found by name, client token or tags; see [`reap`]), and the id is recorded as
//! soon as it is known. Every resource carries `kiln:run` and `kiln:expires` tags; an
//! AMI that becomes an artifact loses `kiln:expires` ([`Ec2Cap::keep_image`]).

pub mod reap;
pub mod rhai;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_ec2::{
    CallOutcome, CallRecord, ClientConfig, CopyImageRequest, CreateImageRequest, CredentialsConfig,
    DeregisteredImage, Ec2Client, Ec2Error, Image, Instance, KeyType, LaunchPermissions, Observer,
    ProcessEnvironment, RunInstanceRequest, Secret, SourceImageFilter, Tags, WaitOptions,
};

use super::broker::{Denied, Scope};
use super::grants::Use;
use super::spec::{CapSpec, Grammar};
use crate::cleanup::{CleanupId, CleanupStack};
use crate::ledger::{Kind, LedgerError, NewRecord, RecordId, Resolution};

pub static SPEC: CapSpec = CapSpec {
    key: "ec2",
    summary: "call the EC2 API in a region",
    grammar: Grammar::Names { wildcard: true },
    wit: &[],
    example: r#"allow: #{ ec2: ["us-east-1"] }"#,
};

pub struct Cap;

impl super::Capability for Cap {
    fn spec(&self) -> &'static CapSpec {
        &SPEC
    }
    fn register_rhai(&self, engine: &mut ::rhai::Engine) {
        rhai::register(engine);
    }
}

/// How far ahead of a run's start its resources' `kiln:expires` lies: a resource still
/// there after that is garbage to `kiln cleanup --region`, whatever the ledger says.
pub const EXPIRES_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The test-only variable that makes the builder pause at a phase (see [`Ec2Cap::phase`]).
pub const PAUSE_VAR: &str = "KILN_TEST_PAUSE_AT";

/// Where a client goes and how it finds credentials, without the secrets: recorded with
/// every resource so `kiln cleanup` reaches the same endpoint and account.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientSpec {
    pub endpoint: Option<String>,
    pub profile: Option<String>,
    /// The environment variables the `secret()` handles were read from.
    pub access_key_env: Option<String>,
    pub secret_key_env: Option<String>,
    pub session_token_env: Option<String>,
    /// The endpoint ignores ClientToken (moto): kiln looks a token up before launching.
    pub emulate_client_tokens: bool,
}

impl ClientSpec {
    /// The credentials options for a client made outside a build (`kiln cleanup`):
    /// the same variables, read from this process's environment, else the AWS chain.
    pub fn credentials_from_env(&self) -> CredentialsConfig {
        let var = |name: &Option<String>| {
            name.as_ref()
                .and_then(|n| std::env::var(n).ok())
                .filter(|v| !v.is_empty())
        };
        CredentialsConfig {
            access_key: var(&self.access_key_env),
            secret_key: var(&self.secret_key_env).map(Secret::new),
            session_token: var(&self.session_token_env).map(Secret::new),
            profile: self.profile.clone(),
        }
    }

    /// A client for `region` (or the region the environment names).
    pub fn client(
        &self,
        region: Option<&str>,
        creds: &CredentialsConfig,
        observer: Option<Observer>,
    ) -> Result<Ec2Client, Ec2Error> {
        let config = ClientConfig {
            endpoint: self.endpoint.clone(),
            observer,
            emulate_client_tokens: self.emulate_client_tokens,
            ..ClientConfig::default()
        };
        Ec2Client::from_environment(region, creds, config, &ProcessEnvironment)
    }
}

/// An observer that writes one audit line per API call (its last attempt) through
/// `scope`. Records carry no parameters, so no secret can reach the line.
pub fn audit_observer(scope: Scope) -> Observer {
    Arc::new(move |r: &CallRecord| {
        if r.will_retry {
            return;
        }
        let mut outcome = match &r.outcome {
            CallOutcome::Ok => "ok".to_string(),
            other => format!("error: {}", other.label()),
        };
        if r.attempt > 1 {
            outcome.push_str(&format!(" (attempt {})", r.attempt));
        }
        scope.audit(
            &Use::name(&SPEC, r.region.clone()),
            r.action,
            &outcome,
            r.duration.as_secs_f64() * 1000.0,
        );
    })
}

#[derive(Debug, thiserror::Error)]
pub enum Ec2CapError {
    #[error(transparent)]
    Denied(Denied),
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error(
        "{0}; kiln does not create a cloud resource it could not find again after a crash \
         (fix the state directory, or set KILN_STATE_DIR)"
    )]
    Ledger(LedgerError),
    #[error("{0}")]
    NotFound(String),
}

/// A resource on the cleanup stack, by (region, id).
struct Tracked {
    cleanup: CleanupId,
    record: Option<RecordId>,
}

/// The checked EC2 facade of one build: one account, any granted region.
#[derive(Clone)]
pub struct Ec2Cap {
    inner: Arc<Inner>,
}

struct Inner {
    home: Ec2Client,
    scope: Scope,
    spec: ClientSpec,
    run: String,
    expires: String,
    cleanup: CleanupStack,
    tracked: Mutex<HashMap<(String, String), Tracked>>,
    pause_at: Option<String>,
}

/// Client tokens must be unique per run; a run's builds share one process.
static TOKENS: AtomicU64 = AtomicU64::new(0);

impl Ec2Cap {
    /// A client for `region` (or the environment's region) with credentials found the
    /// AWS way; every call it makes is audited through `scope`.
    pub fn new(
        scope: Scope,
        cleanup: CleanupStack,
        run: &str,
        region: Option<&str>,
        spec: ClientSpec,
        creds: &CredentialsConfig,
    ) -> Result<Ec2Cap, Ec2CapError> {
        if let Some(r) = region {
            scope
                .check(&Use::name(&SPEC, r))
                .map_err(Ec2CapError::Denied)?;
        }
        let home = spec.client(region, creds, Some(audit_observer(scope.clone())))?;
        scope
            .check(&Use::name(&SPEC, home.region()))
            .map_err(Ec2CapError::Denied)?;
        Ok(Ec2Cap {
            inner: Arc::new(Inner {
                home,
                scope,
                spec,
                run: run.to_string(),
                expires: reap::expires_at(EXPIRES_AFTER),
                cleanup,
                tracked: Mutex::new(HashMap::new()),
                pause_at: std::env::var(PAUSE_VAR).ok().filter(|v| !v.is_empty()),
            }),
        })
    }

    /// The region the client was made for.
    pub fn region(&self) -> &str {
        self.inner.home.region()
    }

    /// API calls made so far (all regions).
    pub fn calls(&self) -> u64 {
        self.inner.home.stats().calls
    }

    /// The client for `region`, if the scope may call EC2 there.
    fn client(&self, region: &str) -> Result<Ec2Client, Ec2CapError> {
        self.inner
            .scope
            .check(&Use::name(&SPEC, region))
            .map_err(Ec2CapError::Denied)?;
        if region == self.inner.home.region() {
            return Ok(self.inner.home.clone());
        }
        Ok(self.inner.home.for_region(region)?)
    }

    /// `tags` plus kiln's own: `kiln:run` and `kiln:expires`.
    pub fn tags_with_kiln(&self, tags: &Tags) -> Tags {
        let mut t = tags.clone();
        t.insert(reap::RUN_TAG.into(), self.inner.run.clone());
        t.insert(reap::EXPIRES_TAG.into(), self.inner.expires.clone());
        t
    }

    fn token(&self) -> String {
        let n = TOKENS.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}-{n}", self.inner.run)
    }

    /// Test hook: with `KILN_TEST_PAUSE_AT=<name>` in the environment, stops here (until
    /// the build is interrupted or killed) after saying so on stderr, so a test can hit
    /// a phase deterministically.
    pub async fn phase(&self, name: &str) {
        if self.inner.pause_at.as_deref() == Some(name) {
            eprintln!("kiln: {PAUSE_VAR}: paused at {name}");
            std::future::pending::<()>().await;
        }
    }

    /// Creates a resource the crash-safe way (see the module docs). `create` makes the
    /// call; `id_of` says what the ledger and the undo need to remove it.
    async fn create_tracked<T, F, Fut>(
        &self,
        region: &str,
        mut leftover: reap::Leftover,
        what: String,
        pause: Option<&str>,
        create: F,
        id_of: impl Fn(&T) -> String,
    ) -> Result<T, Ec2CapError>
    where
        F: FnOnce(Ec2Client) -> Fut,
        Fut: Future<Output = Result<T, Ec2Error>>,
    {
        let client = self.client(region)?;
        let ledger = self.inner.cleanup.ledger().cloned();
        let record = match &ledger {
            Some(l) => {
                let mut rec = NewRecord::new(leftover.kind, region);
                rec.name = leftover.name.clone();
                rec.token = leftover.token.clone();
                rec.tags = self.tags_with_kiln(&Tags::new());
                rec.detail = serde_json::json!({ "client": self.inner.spec });
                Some(l.intent(&rec).map_err(Ec2CapError::Ledger)?)
            }
            None => None,
        };
        let id_cell: Arc<Mutex<Option<String>>> = Arc::default();
        let undo_id = id_cell.clone();
        let undo_client = client.clone();
        let undo_ledger = ledger.clone();
        leftover.region = region.to_string();
        let cleanup_id = self
            .inner
            .cleanup
            .push_tracked(what, record, move || async move {
                leftover.id = undo_id.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let note = move |snaps: &[String]| {
                    if let (Some(l), Some(r)) = (&undo_ledger, record) {
                        let _ = l.add_detail(r, &serde_json::json!({ "snapshots": snaps }));
                    }
                };
                reap::reap(&undo_client, &leftover, &note).await?;
                Ok(())
            });
        match create(client).await {
            Ok(v) => {
                let id = id_of(&v);
                if let Some(p) = pause {
                    // The hardest moment to crash: created, id not yet on record.
                    self.phase(p).await;
                }
                *id_cell.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
                if let (Some(l), Some(r)) = (&ledger, record)
                    && let Err(e) = l.created(r, &id)
                {
                    tracing::warn!("cannot record {id} in the ledger: {e}");
                }
                self.inner
                    .tracked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        (region.to_string(), id),
                        Tracked {
                            cleanup: cleanup_id,
                            record,
                        },
                    );
                Ok(v)
            }
            // EC2 answered with an error: nothing was created.
            Err(e) if e.api().is_some() => {
                self.inner.cleanup.release(cleanup_id);
                if let (Some(l), Some(r)) = (&ledger, record) {
                    let _ = l.resolve(r, Resolution::NotCreated);
                }
                Err(e.into())
            }
            // No answer: it may exist. The undo stays and resolves it by name or token.
            Err(e) => Err(e.into()),
        }
    }

    fn leftover(&self, kind: Kind, name: Option<&str>, token: Option<&str>) -> reap::Leftover {
        reap::Leftover {
            kind,
            region: String::new(),
            id: None,
            name: name.map(str::to_string),
            token: token.map(str::to_string),
            run: self.inner.run.clone(),
            not_before: time::OffsetDateTime::now_utc().unix_timestamp(),
            snapshots: Vec::new(),
        }
    }

    /// The source AMI: by id, or Packer's `source_ami_filter`.
    pub async fn source_image(
        &self,
        region: &str,
        id: Option<&str>,
        filter: Option<&SourceImageFilter>,
    ) -> Result<Image, Ec2CapError> {
        let c = self.client(region)?;
        match (id, filter) {
            (Some(id), _) => match c.describe_image(id).await? {
                Some(img) => Ok(img),
                None => Err(Ec2CapError::NotFound(format!(
                    "source_ami {id} does not exist in {region} (or this account cannot see it)"
                ))),
            },
            (None, Some(f)) => Ok(c.find_source_image(f).await?),
            (None, None) => {
                Err(Ec2Error::InvalidInput("set source_ami or source_ami_filter".into()).into())
            }
        }
    }

    /// This account's AMIs named `name`.
    pub async fn images_named(&self, region: &str, name: &str) -> Result<Vec<Image>, Ec2CapError> {
        Ok(self.client(region)?.find_own_images_by_name(name).await?)
    }

    /// Packer's `force_deregister` (+ `force_delete_snapshot`).
    pub async fn force_deregister(
        &self,
        region: &str,
        name: &str,
        delete_snapshots: bool,
    ) -> Result<Vec<DeregisteredImage>, Ec2CapError> {
        Ok(self
            .client(region)?
            .force_deregister(name, delete_snapshots)
            .await?)
    }

    /// The VPC of a subnet.
    pub async fn vpc_of_subnet(
        &self,
        region: &str,
        subnet: &str,
    ) -> Result<Option<String>, Ec2CapError> {
        let subnets = self
            .client(region)?
            .describe_subnets(&[subnet.to_string()], &[])
            .await?;
        Ok(subnets.into_iter().find_map(|s| s.vpc_id))
    }

    /// A temporary key pair; its private key goes to the returned handle only.
    pub async fn create_key_pair(
        &self,
        region: &str,
        name: &str,
        key_type: KeyType,
    ) -> Result<super::ssh::PrivateKey, Ec2CapError> {
        let tags = self.tags_with_kiln(&Tags::new());
        let created = self
            .create_tracked(
                region,
                self.leftover(Kind::KeyPair, Some(name), None),
                format!("temporary key pair {name} in {region}"),
                None,
                |c| async move { c.create_key_pair(name, key_type, &tags).await },
                |k| k.key_name.clone(),
            )
            .await?;
        Ok(super::ssh::PrivateKey::new(
            created.key_name.clone(),
            created.private_key.expose().to_string(),
        ))
    }

    /// A temporary security group open on TCP `port` to `cidrs` only.
    pub async fn create_security_group(
        &self,
        region: &str,
        name: &str,
        description: &str,
        vpc_id: Option<&str>,
        port: u16,
        cidrs: &[String],
    ) -> Result<String, Ec2CapError> {
        let tags = self.tags_with_kiln(&Tags::new());
        let id = self
            .create_tracked(
                region,
                self.leftover(Kind::SecurityGroup, Some(name), None),
                format!("temporary security group {name} in {region}"),
                None,
                |c| async move {
                    c.create_security_group(name, description, vpc_id, &tags)
                        .await
                },
                String::clone,
            )
            .await?;
        self.client(region)?
            .authorize_ingress_tcp(&id, port, port, cidrs)
            .await?;
        Ok(id)
    }

    /// Launches the source instance with kiln's tags on it and its volumes and a fresh
    /// ClientToken. With `KILN_TEST_PAUSE_AT=launching` it pauses between EC2's answer
    /// and the ledger write.
    pub async fn run_instance(
        &self,
        region: &str,
        mut req: RunInstanceRequest,
    ) -> Result<Instance, Ec2CapError> {
        let token = self.token();
        req.tags = self.tags_with_kiln(&req.tags);
        req.volume_tags = self.tags_with_kiln(&req.volume_tags);
        req.client_token = Some(token.clone());
        self.create_tracked(
            region,
            self.leftover(Kind::Instance, None, Some(&token)),
            format!("source instance in {region} (client token {token})"),
            Some("launching"),
            |c| async move { c.run_instance(&req).await },
            |i| i.instance_id.clone(),
        )
        .await
    }

    pub async fn wait_running(
        &self,
        region: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<Instance, Ec2CapError> {
        Ok(self
            .client(region)?
            .wait_instance_running(id, &WaitOptions::with_timeout(timeout))
            .await?)
    }

    pub async fn stop_instance(&self, region: &str, id: &str) -> Result<(), Ec2CapError> {
        self.client(region)?
            .stop_instances(&[id.to_string()], false)
            .await?;
        Ok(())
    }

    pub async fn wait_stopped(
        &self,
        region: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<Instance, Ec2CapError> {
        Ok(self
            .client(region)?
            .wait_instance_stopped(id, &WaitOptions::with_timeout(timeout))
            .await?)
    }

    /// CreateImage, tracked by the AMI name until its id is known. With
    /// `KILN_TEST_PAUSE_AT=imaging` it pauses between EC2's answer and the ledger write.
    pub async fn create_image(
        &self,
        region: &str,
        mut req: CreateImageRequest,
    ) -> Result<String, Ec2CapError> {
        req.tags = self.tags_with_kiln(&req.tags);
        let name = req.name.clone();
        self.create_tracked(
            region,
            self.leftover(Kind::Image, Some(&name), None),
            format!("AMI {name} in {region} (and its snapshots)"),
            Some("imaging"),
            |c| async move { c.create_image(&req).await },
            String::clone,
        )
        .await
    }

    /// CopyImage into `region`, tracked by name and ClientToken until its id is known,
    /// then tagged with `tags` and kiln's own (CopyImage copies no tags).
    pub async fn copy_image(
        &self,
        region: &str,
        mut req: CopyImageRequest,
        tags: &Tags,
    ) -> Result<String, Ec2CapError> {
        let token = self.token();
        req.client_token = Some(token.clone());
        let name = req.name.clone();
        let id = self
            .create_tracked(
                region,
                self.leftover(Kind::Image, Some(&name), Some(&token)),
                format!("AMI copy {name} in {region} (and its snapshots)"),
                None,
                |c| async move { c.copy_image(&req).await },
                String::clone,
            )
            .await?;
        self.client(region)?
            .create_tags(std::slice::from_ref(&id), &self.tags_with_kiln(tags))
            .await?;
        Ok(id)
    }

    /// Waits for an AMI, then records its snapshots with its ledger record and gives
    /// them kiln's tags (and `snapshot_tags`): EC2 does not copy an AMI's tags to them.
    pub async fn wait_image(
        &self,
        region: &str,
        id: &str,
        timeout: Duration,
        snapshot_tags: &Tags,
    ) -> Result<Image, Ec2CapError> {
        let c = self.client(region)?;
        let image = c
            .wait_image_available(id, &WaitOptions::with_timeout(timeout))
            .await?;
        let snaps = image.snapshot_ids();
        if let (Some(l), Some(r)) = (self.inner.cleanup.ledger(), self.record_of(region, id))
            && let Err(e) = l.add_detail(r, &serde_json::json!({ "snapshots": snaps }))
        {
            tracing::warn!("cannot record the snapshots of {id} in the ledger: {e}");
        }
        c.create_tags(&snaps, &self.tags_with_kiln(snapshot_tags))
            .await?;
        Ok(image)
    }

    fn record_of(&self, region: &str, id: &str) -> Option<RecordId> {
        self.inner
            .tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(region.to_string(), id.to_string()))
            .and_then(|t| t.record)
    }

    pub async fn tag(&self, region: &str, ids: &[String], tags: &Tags) -> Result<(), Ec2CapError> {
        Ok(self.client(region)?.create_tags(ids, tags).await?)
    }

    pub async fn add_launch_permissions(
        &self,
        region: &str,
        id: &str,
        who: &LaunchPermissions,
    ) -> Result<(), Ec2CapError> {
        Ok(self.client(region)?.add_launch_permissions(id, who).await?)
    }

    /// The AMI becomes an artifact: it and its snapshots lose `kiln:expires` (so no
    /// sweep ever takes them), then its undo leaves the cleanup stack and its record is
    /// marked released. Returns its snapshots.
    pub async fn keep_image(&self, region: &str, id: &str) -> Result<Vec<String>, Ec2CapError> {
        let c = self.client(region)?;
        let snaps = c
            .describe_image(id)
            .await?
            .map(|i| i.snapshot_ids())
            .unwrap_or_default();
        let mut ids = vec![id.to_string()];
        ids.extend(snaps.iter().cloned());
        c.delete_tags(&ids, &[reap::EXPIRES_TAG.to_string()])
            .await?;
        let t = self
            .inner
            .tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(region.to_string(), id.to_string()));
        if let Some(t) = t {
            self.inner.cleanup.release(t.cleanup);
        }
        Ok(snaps)
    }

    /// Removes a resource this build created, now (an intermediate AMI).
    pub async fn remove_now(&self, region: &str, id: &str) -> Result<(), Ec2CapError> {
        self.client(region)?;
        let t = self
            .inner
            .tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(region.to_string(), id.to_string()));
        let Some(t) = t else {
            return Err(Ec2CapError::NotFound(format!(
                "{id} in {region} was not created by this build"
            )));
        };
        if let Some(r) = self.inner.cleanup.undo_now(t.cleanup).await
            && let Some(e) = r.error
        {
            return Err(Ec2CapError::NotFound(format!(
                "could not remove {}: {e}",
                r.what
            )));
        }
        Ok(())
    }
}
