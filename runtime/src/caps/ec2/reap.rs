//! Finding and removing what a run created in EC2: one [`Leftover`] (a ledger record,
//! with or without the id), or everything tagged with a run (the sweep). The same code
//! runs when a build unwinds its cleanup stack and when `kiln cleanup` works on a dead
//! run, so both remove the same way: instances terminated and awaited, security groups
//! deleted once released, AMIs deregistered with their snapshots, key pairs deleted.
//! Already gone counts as done, so every step is safe to repeat.

use std::collections::BTreeSet;
use std::time::Duration;

use kiln_ec2::{Ec2Client, Ec2Error, Filter, ResourceKind, TagQuery, TaggedResource, WaitOptions};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ledger::Kind;

/// The tag every resource kiln creates carries: the run's uuid.
pub const RUN_TAG: &str = "kiln:run";
/// The tag every resource carries until it becomes an artifact: after this time, a
/// resource still there is garbage, even if no ledger remembers it.
pub const EXPIRES_TAG: &str = "kiln:expires";

/// How long removals wait for EC2 (an instance to terminate, a group to be released).
const REMOVE_WAIT: Duration = Duration::from_secs(600);

/// One resource removed, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub kind: Kind,
    pub id: String,
    pub region: String,
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.kind {
            Kind::Instance => " (terminated)",
            Kind::Image => " (deregistered)",
            _ => "",
        };
        write!(
            f,
            "{} {} in {}{how}",
            self.kind.describe(),
            self.id,
            self.region
        )
    }
}

/// One thing a run created (or may have: an intent whose answer was lost).
#[derive(Debug, Clone)]
pub struct Leftover {
    pub kind: Kind,
    pub region: String,
    /// Known once the create call answered.
    pub id: Option<String>,
    /// AMI, key pair or security group name.
    pub name: Option<String>,
    /// The launch's or copy's ClientToken.
    pub token: Option<String>,
    pub run: String,
    /// Unix seconds of the intent: an AMI of that name created earlier is not ours.
    pub not_before: i64,
    /// Snapshots known to be behind an AMI (recorded before it is deregistered).
    pub snapshots: Vec<String>,
}

fn wait() -> WaitOptions {
    WaitOptions {
        timeout: REMOVE_WAIT,
        interval: Duration::from_millis(500),
        max_interval: Duration::from_secs(10),
    }
}

fn gone<T>(r: Result<T, Ec2Error>) -> Result<(), Ec2Error> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// The ids a leftover stands for: its id, or what its name, client token or tags find.
pub async fn resolve(ec2: &Ec2Client, l: &Leftover) -> Result<Vec<String>, Ec2Error> {
    if let Some(id) = &l.id {
        return Ok(vec![id.clone()]);
    }
    let by_run = Filter::tag(RUN_TAG, l.run.clone());
    Ok(match l.kind {
        Kind::Instance => {
            let Some(token) = &l.token else {
                return Ok(vec![]);
            };
            // The run tag is applied atomically at launch, so this finds the instance
            // whether or not the endpoint knows the `client-token` filter.
            ec2.describe_instances(&[], &[by_run])
                .await?
                .into_iter()
                .filter(|i| i.client_token.as_deref() == Some(token.as_str()))
                .filter(|i| !i.state.is_gone())
                .map(|i| i.instance_id)
                .collect()
        }
        // A key pair is deleted by name: EC2 answers success for a name it does not know.
        Kind::KeyPair => l.name.iter().cloned().collect(),
        Kind::SecurityGroup => {
            let Some(name) = &l.name else {
                return Ok(vec![]);
            };
            ec2.describe_security_groups(&[], &[Filter::new("group-name", [name.as_str()]), by_run])
                .await?
                .into_iter()
                .map(|g| g.group_id)
                .collect()
        }
        Kind::Image => {
            let Some(name) = &l.name else {
                return Ok(vec![]);
            };
            // A copy carries its tags only once kiln tagged it, so an untagged image of
            // the name counts if it is not older than the intent (AMI names are unique per
            // region and account, and the run checked the name was free).
            let skew = 300;
            ec2.find_own_images_by_name(name)
                .await?
                .into_iter()
                .filter(|i| match i.tags.get(RUN_TAG) {
                    Some(run) => run == &l.run,
                    None => i
                        .creation_date
                        .as_deref()
                        .and_then(|d| OffsetDateTime::parse(d, &Rfc3339).ok())
                        .is_none_or(|t| t.unix_timestamp() + skew >= l.not_before),
                })
                .map(|i| i.image_id)
                .collect()
        }
        Kind::Snapshot | Kind::Volume => vec![],
        _ => vec![],
    })
}

/// Removes one resource. `on_snapshots` is told an AMI's snapshots before it is
/// deregistered (so a crash between the two still leaves them on record). Returns
/// what was removed, for the user.
pub async fn remove(
    ec2: &Ec2Client,
    kind: Kind,
    id: &str,
    known_snapshots: &[String],
    on_snapshots: &(dyn Fn(&[String]) + Send + Sync),
) -> Result<Vec<Removed>, Ec2Error> {
    let region = ec2.region().to_string();
    let mut done = Vec::new();
    let removed = |kind: Kind, id: &str| Removed {
        kind,
        id: id.to_string(),
        region: region.clone(),
    };
    match kind {
        Kind::Instance => {
            match ec2.terminate_instances(&[id.to_string()]).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(done),
                Err(e) => return Err(e),
            }
            ec2.wait_instance_terminated(id, &wait()).await?;
            done.push(removed(kind, id));
        }
        Kind::KeyPair => {
            ec2.delete_key_pair(id).await?;
            done.push(removed(kind, id));
        }
        Kind::SecurityGroup => {
            ec2.delete_security_group_when_released(id, &wait()).await?;
            done.push(removed(kind, id));
        }
        Kind::Image => {
            let mut snaps: BTreeSet<String> = known_snapshots.iter().cloned().collect();
            if let Some(image) = ec2.describe_image(id).await? {
                snaps.extend(image.snapshot_ids());
                let list: Vec<String> = snaps.iter().cloned().collect();
                on_snapshots(&list);
                gone(ec2.deregister_image(id).await)?;
                done.push(removed(kind, id));
            }
            for s in snaps {
                if delete_snapshot(ec2, &s).await? {
                    done.push(removed(Kind::Snapshot, &s));
                }
            }
        }
        Kind::Snapshot => {
            let deleted = delete_snapshot(ec2, id).await?;
            if deleted {
                done.push(removed(kind, id));
            }
        }
        Kind::Volume => {
            delete_volume(ec2, id).await?;
            done.push(removed(kind, id));
        }
        _ => {}
    }
    Ok(done)
}

/// Deletes a snapshot, waiting while EC2 still says it is in use (the AMI it backs is
/// being deregistered). False if it was gone already.
async fn delete_snapshot(ec2: &Ec2Client, id: &str) -> Result<bool, Ec2Error> {
    retry_in_use(|| async {
        match ec2.delete_snapshot(id).await {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    })
    .await
}

async fn delete_volume(ec2: &Ec2Client, id: &str) -> Result<(), Ec2Error> {
    retry_in_use(|| async { gone(ec2.delete_volume(id).await) }).await
}

/// Repeats `op` while it fails with "in use", up to [`REMOVE_WAIT`].
async fn retry_in_use<T, F, Fut>(mut op: F) -> Result<T, Ec2Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Ec2Error>>,
{
    let deadline = tokio::time::Instant::now() + REMOVE_WAIT;
    let mut pause = Duration::from_millis(500);
    loop {
        match op().await {
            Err(e) if e.is_in_use() && tokio::time::Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
}

/// Finds and removes one leftover. Returns what was removed (empty: nothing was there).
pub async fn reap(
    ec2: &Ec2Client,
    l: &Leftover,
    on_snapshots: &(dyn Fn(&[String]) + Send + Sync),
) -> Result<Vec<Removed>, Ec2Error> {
    let mut done = Vec::new();
    let ids = resolve(ec2, l).await?;
    if ids.is_empty() && l.kind == Kind::Image {
        // The AMI is gone but its snapshots may not be.
        for s in &l.snapshots {
            if delete_snapshot(ec2, s).await? {
                done.push(Removed {
                    kind: Kind::Snapshot,
                    id: s.clone(),
                    region: ec2.region().to_string(),
                });
            }
        }
    }
    for id in ids {
        done.extend(remove(ec2, l.kind, &id, &l.snapshots, on_snapshots).await?);
    }
    Ok(done)
}

/// What a sweep looks for.
#[derive(Debug, Clone)]
pub enum SweepFilter {
    /// Everything tagged with this run that is not an artifact (still carries
    /// `kiln:expires`).
    Run(String),
    /// Everything whose `kiln:expires` is before this time (any run), except the runs
    /// named (live ones).
    ExpiredBefore {
        cutoff: OffsetDateTime,
        except_runs: BTreeSet<String>,
    },
}

fn kind_of(k: ResourceKind) -> Kind {
    match k {
        ResourceKind::Instance => Kind::Instance,
        ResourceKind::Volume => Kind::Volume,
        ResourceKind::Image => Kind::Image,
        ResourceKind::Snapshot => Kind::Snapshot,
        ResourceKind::SecurityGroup => Kind::SecurityGroup,
        ResourceKind::KeyPair => Kind::KeyPair,
    }
}

/// Removal order: what holds something goes first.
fn order(k: Kind) -> u8 {
    match k {
        Kind::Instance => 0,
        Kind::Image => 1,
        Kind::Snapshot => 2,
        Kind::Volume => 3,
        Kind::SecurityGroup => 4,
        _ => 5,
    }
}

/// The live, non-artifact resources in `ec2`'s region that `filter` selects, in
/// removal order, with their kinds.
pub async fn find_for_sweep(
    ec2: &Ec2Client,
    filter: &SweepFilter,
    skip_ids: &BTreeSet<String>,
) -> Result<Vec<(Kind, TaggedResource)>, Ec2Error> {
    let query = match filter {
        SweepFilter::Run(run) => TagQuery::equals(RUN_TAG, run.clone()),
        SweepFilter::ExpiredBefore { .. } => TagQuery::HasKey(EXPIRES_TAG.into()),
    };
    let mut found: Vec<(Kind, TaggedResource)> = ec2
        .find_tagged(&query)
        .await?
        .into_iter()
        .filter(|r| r.is_live() && !skip_ids.contains(&r.id))
        .filter(|r| {
            let Some(expires) = r.tags.get(EXPIRES_TAG) else {
                return false; // an artifact: kiln removed its expiry when it kept it
            };
            match filter {
                SweepFilter::Run(_) => true,
                SweepFilter::ExpiredBefore {
                    cutoff,
                    except_runs,
                } => {
                    let live = r
                        .tags
                        .get(RUN_TAG)
                        .is_some_and(|run| except_runs.contains(run));
                    let expired =
                        OffsetDateTime::parse(expires, &Rfc3339).is_ok_and(|t| t < *cutoff);
                    expired && !live
                }
            }
        })
        .map(|r| (kind_of(r.kind), r))
        .collect();
    found.sort_by_key(|(k, _)| order(*k));
    Ok(found)
}

/// Removes what [`find_for_sweep`] found; returns (removed, failures).
pub async fn sweep(
    ec2: &Ec2Client,
    found: &[(Kind, TaggedResource)],
) -> (Vec<Removed>, Vec<String>) {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (kind, r) in found {
        match remove(ec2, *kind, &r.id, &[], &|_| {}).await {
            Ok(d) => done.extend(d),
            Err(e) => failed.push(format!("{} {}: {e}", kind.describe(), r.id)),
        }
    }
    (done, failed)
}

/// The tag value of `kiln:expires` for a run that starts now and may last `ttl`.
pub fn expires_at(ttl: Duration) -> String {
    let t = OffsetDateTime::now_utc() + ttl;
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}
