//! Waiters: poll until a resource reaches a state, with one overall deadline. A timeout
//! says what was awaited, for how long and the last state seen; a state from which the
//! wanted one cannot be reached fails at once with the reason EC2 gives. (Packer's
//! "ResourceNotReady: exceeded wait attempts" is what this replaces.)

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::Ec2Client;
use crate::error::Ec2Error;
use crate::ops::images::{Image, ImageState};
use crate::ops::instances::{Instance, InstanceState};
use crate::ops::storage::{Snapshot, SnapshotState};

/// How long and how often to poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitOptions {
    /// Overall deadline, probes included.
    pub timeout: Duration,
    /// The first pause between probes; it grows by half each time up to `max_interval`.
    pub interval: Duration,
    pub max_interval: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            timeout: Duration::from_secs(600),
            interval: Duration::from_secs(2),
            max_interval: Duration::from_secs(15),
        }
    }
}

impl WaitOptions {
    pub fn with_timeout(timeout: Duration) -> Self {
        WaitOptions {
            timeout,
            ..Default::default()
        }
    }
}

/// What one probe saw.
pub(crate) enum Poll<T> {
    Done(T),
    Pending(String),
    /// The wanted state cannot be reached from here.
    Failed {
        state: String,
        reason: Option<String>,
    },
}

/// Probes at once, then after growing pauses, until done, failed or out of time. A probe
/// still running at the deadline is abandoned (probes only read).
pub(crate) async fn wait_for<T, F, Fut>(
    what: String,
    opts: &WaitOptions,
    mut probe: F,
) -> Result<T, Ec2Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>, Ec2Error>>,
{
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let mut pause = opts.interval;
    let mut last = "none seen yet".to_string();
    loop {
        match tokio::time::timeout_at(deadline, probe()).await {
            Err(_) => break,
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Poll::Done(t))) => return Ok(t),
            Ok(Ok(Poll::Failed { state, reason })) => {
                return Err(Ec2Error::WaitFailed {
                    what,
                    state,
                    reason,
                });
            }
            Ok(Ok(Poll::Pending(state))) => {
                tracing::debug!(%what, %state, "still waiting");
                last = state;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause + pause / 2).min(opts.max_interval.max(opts.interval));
    }
    Err(Ec2Error::WaitTimeout {
        what,
        waited: started.elapsed(),
        last_state: last,
    })
}

/// `10m`, `1m30s`, `45s`, `1.5s`, `250ms`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    if secs < 60 {
        let tenths = (ms % 1000) / 100;
        return if tenths == 0 {
            format!("{secs}s")
        } else {
            format!("{secs}.{tenths}s")
        };
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

impl Ec2Client {
    /// Until the instance is `running`. Fails at once if it terminates or stops instead
    /// (with EC2's state reason, e.g. a spot interruption or an EBS limit).
    pub async fn wait_instance_running(
        &self,
        instance_id: &str,
        opts: &WaitOptions,
    ) -> Result<Instance, Ec2Error> {
        let what = format!("instance {instance_id} to be running");
        wait_for(what, opts, || async {
            Ok(match self.describe_instance(instance_id).await? {
                None => Poll::Pending("not visible yet".into()),
                Some(i) => match i.state {
                    InstanceState::Running => Poll::Done(i),
                    InstanceState::Pending => Poll::Pending(i.state.to_string()),
                    _ => Poll::Failed {
                        state: i.state.to_string(),
                        reason: i.state_reason.map(|r| r.to_string()),
                    },
                },
            })
        })
        .await
    }

    /// Until the instance is `stopped`.
    pub async fn wait_instance_stopped(
        &self,
        instance_id: &str,
        opts: &WaitOptions,
    ) -> Result<Instance, Ec2Error> {
        let what = format!("instance {instance_id} to be stopped");
        wait_for(what, opts, || async {
            Ok(match self.describe_instance(instance_id).await? {
                None => Poll::Failed {
                    state: "gone".into(),
                    reason: Some("EC2 no longer knows the instance".into()),
                },
                Some(i) => match i.state {
                    InstanceState::Stopped => Poll::Done(i),
                    InstanceState::ShuttingDown | InstanceState::Terminated => Poll::Failed {
                        state: i.state.to_string(),
                        reason: i.state_reason.map(|r| r.to_string()),
                    },
                    _ => Poll::Pending(i.state.to_string()),
                },
            })
        })
        .await
    }

    /// Until the instance is `terminated` (or EC2 has forgotten it).
    pub async fn wait_instance_terminated(
        &self,
        instance_id: &str,
        opts: &WaitOptions,
    ) -> Result<(), Ec2Error> {
        let what = format!("instance {instance_id} to be terminated");
        wait_for(what, opts, || async {
            Ok(match self.describe_instance(instance_id).await? {
                None => Poll::Done(()),
                Some(i) if i.state == InstanceState::Terminated => Poll::Done(()),
                Some(i) => Poll::Pending(i.state.to_string()),
            })
        })
        .await
    }

    /// Until the AMI is `available`. A `failed`, `error`, `invalid` or `deregistered` image
    /// fails at once with its state reason.
    pub async fn wait_image_available(
        &self,
        image_id: &str,
        opts: &WaitOptions,
    ) -> Result<Image, Ec2Error> {
        let what = format!("AMI {image_id} in {} to be available", self.region());
        wait_for(what, opts, || async {
            Ok(match self.describe_image(image_id).await? {
                None => Poll::Pending("not visible yet".into()),
                Some(img) => match img.state {
                    ImageState::Available => Poll::Done(img),
                    ImageState::Pending => Poll::Pending(img.state.to_string()),
                    _ => Poll::Failed {
                        state: img.state.to_string(),
                        reason: img.state_reason.map(|r| r.to_string()),
                    },
                },
            })
        })
        .await
    }

    /// Until the snapshot is `completed`; `error` fails with EC2's state message.
    pub async fn wait_snapshot_completed(
        &self,
        snapshot_id: &str,
        opts: &WaitOptions,
    ) -> Result<Snapshot, Ec2Error> {
        let what = format!("snapshot {snapshot_id} to be completed");
        wait_for(what, opts, || async {
            Ok(match self.describe_snapshot(snapshot_id).await? {
                None => Poll::Pending("not visible yet".into()),
                Some(s) => match s.state {
                    SnapshotState::Completed => Poll::Done(s),
                    SnapshotState::Error => Poll::Failed {
                        state: s.state.to_string(),
                        reason: s.state_message,
                    },
                    _ => Poll::Pending(match &s.progress {
                        Some(p) => format!("{} ({p})", s.state),
                        None => s.state.to_string(),
                    }),
                },
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_secs(45)), "45s");
        assert_eq!(fmt_duration(Duration::from_secs(600)), "10m");
        assert_eq!(fmt_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(fmt_duration(Duration::from_secs(3720)), "1h2m");
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_with_last_state() {
        let opts = WaitOptions {
            timeout: Duration::from_secs(60),
            interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(5),
        };
        let mut probes = 0;
        let r: Result<(), _> = wait_for("thing t-1 to be ready".into(), &opts, || {
            probes += 1;
            let n = probes;
            async move { Ok(Poll::Pending(format!("pending #{n}"))) }
        })
        .await;
        let e = r.unwrap_err();
        let Ec2Error::WaitTimeout { last_state, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(last_state, &format!("pending #{probes}"));
        assert!(probes > 5 && probes < 30, "{probes} probes");
        assert!(
            e.to_string().starts_with(
                "timed out after 1m waiting for thing t-1 to be ready (last state: pending #"
            ),
            "{e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failure_and_success_end_at_once() {
        let opts = WaitOptions::default();
        let r: Result<(), _> = wait_for("image to be available".into(), &opts, || async {
            Ok(Poll::Failed {
                state: "failed".into(),
                reason: Some("Client.InvalidSnapshot".into()),
            })
        })
        .await;
        assert_eq!(
            r.unwrap_err().to_string(),
            "gave up waiting for image to be available: it is failed (Client.InvalidSnapshot)"
        );
        let mut n = 0;
        let r = wait_for("x".into(), &opts, || {
            n += 1;
            let done = n == 3;
            async move {
                Ok(if done {
                    Poll::Done(7)
                } else {
                    Poll::Pending("p".into())
                })
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
    }
}
