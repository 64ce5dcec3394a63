//! Instances: launch (with ClientToken idempotency), describe, stop, terminate.

use std::fmt;

use base64::Engine;
use roxmltree::Node;

use crate::Ec2Client;
use crate::client::{Idempotent, malformed, parse_doc};
use crate::error::Ec2Error;
use crate::model::{BlockDeviceMapping, Filter, StateReason, Tags, parse_state_reason};
use crate::params::Params;
use crate::xml::NodeExt;

/// An instance's lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
    Other(String),
}

impl InstanceState {
    pub fn parse(s: &str) -> Self {
        match s {
            "pending" => InstanceState::Pending,
            "running" => InstanceState::Running,
            "shutting-down" => InstanceState::ShuttingDown,
            "terminated" => InstanceState::Terminated,
            "stopping" => InstanceState::Stopping,
            "stopped" => InstanceState::Stopped,
            other => InstanceState::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::Other(s) => s,
        }
    }

    /// Terminated or on its way there: nothing left to clean up but the wait.
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kiln needs to know about an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub instance_id: String,
    pub image_id: Option<String>,
    pub instance_type: Option<String>,
    pub state: InstanceState,
    pub state_reason: Option<StateReason>,
    pub key_name: Option<String>,
    pub launch_time: Option<String>,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub public_dns: Option<String>,
    pub private_dns: Option<String>,
    pub subnet_id: Option<String>,
    pub vpc_id: Option<String>,
    pub availability_zone: Option<String>,
    pub security_group_ids: Vec<String>,
    pub client_token: Option<String>,
    /// `spot` for spot instances.
    pub lifecycle: Option<String>,
    pub spot_request_id: Option<String>,
    pub root_device_name: Option<String>,
    pub volumes: Vec<AttachedVolume>,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedVolume {
    pub device_name: String,
    pub volume_id: String,
    pub delete_on_termination: Option<bool>,
}

/// `InstanceInitiatedShutdownBehavior`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownBehavior {
    Stop,
    Terminate,
}

/// Launch as a one-time spot instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpotOptions {
    /// USD per hour; `None` caps at the on-demand price.
    pub max_price: Option<String>,
}

/// One instance to launch.
#[derive(Debug, Clone, Default)]
pub struct RunInstanceRequest {
    pub image_id: String,
    pub instance_type: String,
    pub key_name: Option<String>,
    pub security_group_ids: Vec<String>,
    pub subnet_id: Option<String>,
    pub availability_zone: Option<String>,
    /// `Some(_)` sends the launch through a network interface, where
    /// `AssociatePublicIpAddress` lives (subnet and groups move there too).
    pub associate_public_ip: Option<bool>,
    /// Raw bytes; base64-encoded here.
    pub user_data: Option<Vec<u8>>,
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    /// Tags of the instance, applied atomically at launch.
    pub tags: Tags,
    /// Tags of its volumes, applied at launch.
    pub volume_tags: Tags,
    /// Idempotency token (up to 64 ASCII characters): the same token returns the same
    /// instance instead of launching another. Write it to the ledger before calling.
    pub client_token: Option<String>,
    pub shutdown_behavior: Option<ShutdownBehavior>,
    pub iam_instance_profile: Option<String>,
    pub ebs_optimized: Option<bool>,
    pub spot: Option<SpotOptions>,
}

/// One instance's state transition, as Stop/TerminateInstances report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub instance_id: String,
    pub previous: InstanceState,
    pub current: InstanceState,
}

impl Ec2Client {
    /// Launches one instance (MinCount = MaxCount = 1) and returns it as RunInstances
    /// describes it (usually `pending`).
    pub async fn run_instance(&self, req: &RunInstanceRequest) -> Result<Instance, Ec2Error> {
        if req.image_id.is_empty() || req.instance_type.is_empty() {
            return Err(Ec2Error::InvalidInput(
                "RunInstances needs an image id and an instance type".into(),
            ));
        }
        if let Some(t) = &req.client_token {
            if t.is_empty() || t.len() > 64 || !t.is_ascii() {
                return Err(Ec2Error::InvalidInput(format!(
                    "client token {t:?} must be 1 to 64 ASCII characters"
                )));
            }
            if self.config().emulate_client_tokens
                && let Some(existing) = self.find_instances_by_client_token(t).await?.pop()
            {
                tracing::debug!(token = %t, id = %existing.instance_id, "client token already used");
                return Ok(existing);
            }
        }

        let mut p = Params::new();
        p.set("ImageId", &req.image_id)
            .set("InstanceType", &req.instance_type)
            .set("MinCount", "1")
            .set("MaxCount", "1")
            .opt("KeyName", req.key_name.as_ref())
            .opt("ClientToken", req.client_token.as_ref())
            .opt("IamInstanceProfile.Name", req.iam_instance_profile.as_ref())
            .opt("Placement.AvailabilityZone", req.availability_zone.as_ref())
            .opt("EbsOptimized", req.ebs_optimized);
        match req.associate_public_ip {
            Some(public) => {
                let n = "NetworkInterface.1";
                p.set(format!("{n}.DeviceIndex"), "0")
                    .flag(&format!("{n}.AssociatePublicIpAddress"), public)
                    .flag(&format!("{n}.DeleteOnTermination"), true)
                    .opt(&format!("{n}.SubnetId"), req.subnet_id.as_ref())
                    .list(&format!("{n}.SecurityGroupId"), &req.security_group_ids);
            }
            None => {
                p.opt("SubnetId", req.subnet_id.as_ref())
                    .list("SecurityGroupId", &req.security_group_ids);
            }
        }
        if let Some(data) = &req.user_data {
            p.set(
                "UserData",
                base64::engine::general_purpose::STANDARD.encode(data),
            );
        }
        if let Some(b) = req.shutdown_behavior {
            p.set(
                "InstanceInitiatedShutdownBehavior",
                match b {
                    ShutdownBehavior::Stop => "stop",
                    ShutdownBehavior::Terminate => "terminate",
                },
            );
        }
        if let Some(spot) = &req.spot {
            p.set("InstanceMarketOptions.MarketType", "spot")
                .set(
                    "InstanceMarketOptions.SpotOptions.SpotInstanceType",
                    "one-time",
                )
                .set(
                    "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior",
                    "terminate",
                )
                .opt(
                    "InstanceMarketOptions.SpotOptions.MaxPrice",
                    spot.max_price.as_ref(),
                );
        }
        p.block_devices(&req.block_device_mappings);
        p.tag_specs(&[("instance", &req.tags), ("volume", &req.volume_tags)]);

        // With a token a repeat is harmless (EC2 answers with the first launch); without
        // one an unanswered request must not be re-sent blindly.
        let idem = if req.client_token.is_some() {
            Idempotent::Yes
        } else {
            Idempotent::No
        };
        const ACTION: &str = "RunInstances";
        let body = self.call(ACTION, &p, idem).await?;
        let doc = parse_doc(ACTION, &body)?;
        let root = doc.root_element();
        let mut instances = root
            .items("instancesSet")
            .into_iter()
            .map(parse_instance)
            .collect::<Result<Vec<_>, _>>()
            .map_err(malformed(ACTION))?;
        instances.pop().ok_or_else(|| Ec2Error::Malformed {
            action: ACTION,
            detail: "no instance in the answer".into(),
        })
    }

    /// Instances by id and/or filters (all pages). Unknown ids fail with
    /// `InvalidInstanceID.NotFound`; use [`Ec2Client::describe_instance`] for "maybe".
    pub async fn describe_instances(
        &self,
        instance_ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<Instance>, Ec2Error> {
        const ACTION: &str = "DescribeInstances";
        let mut p = Params::new();
        p.list("InstanceId", instance_ids).filters(filters);
        self.paginate(ACTION, p, instance_ids.is_empty(), |body| {
            let doc = parse_doc(ACTION, body)?;
            let root = doc.root_element();
            let mut out = Vec::new();
            for reservation in root.items("reservationSet") {
                for item in reservation.items("instancesSet") {
                    out.push(parse_instance(item).map_err(malformed(ACTION))?);
                }
            }
            Ok((out, root.text_of("nextToken")))
        })
        .await
    }

    /// One instance, `None` if EC2 does not know it (never launched, or long gone).
    pub async fn describe_instance(&self, instance_id: &str) -> Result<Option<Instance>, Ec2Error> {
        match self
            .describe_instances(&[instance_id.to_string()], &[])
            .await
        {
            Ok(mut v) => Ok(v.pop()),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The instances launched with this ClientToken: how a launch whose answer was lost
    /// (crash, SIGKILL, network) is found again. Results are checked against the token.
    pub async fn find_instances_by_client_token(
        &self,
        token: &str,
    ) -> Result<Vec<Instance>, Ec2Error> {
        let filters = if self.config().emulate_client_tokens {
            Vec::new()
        } else {
            vec![Filter::new("client-token", [token])]
        };
        let all = self.describe_instances(&[], &filters).await?;
        Ok(all
            .into_iter()
            .filter(|i| i.client_token.as_deref() == Some(token))
            .collect())
    }

    /// StopInstances; `force` skips the OS shutdown.
    pub async fn stop_instances(
        &self,
        instance_ids: &[String],
        force: bool,
    ) -> Result<Vec<StateChange>, Ec2Error> {
        let mut p = Params::new();
        p.list("InstanceId", instance_ids);
        if force {
            p.flag("Force", true);
        }
        self.state_change("StopInstances", "instancesSet", &p).await
    }

    /// TerminateInstances. Terminating an already terminated instance succeeds; an
    /// instance EC2 has forgotten gives an error for which `is_not_found()` holds.
    pub async fn terminate_instances(
        &self,
        instance_ids: &[String],
    ) -> Result<Vec<StateChange>, Ec2Error> {
        let mut p = Params::new();
        p.list("InstanceId", instance_ids);
        self.state_change("TerminateInstances", "instancesSet", &p)
            .await
    }

    async fn state_change(
        &self,
        action: &'static str,
        set: &str,
        p: &Params,
    ) -> Result<Vec<StateChange>, Ec2Error> {
        let body = self.call(action, p, Idempotent::Yes).await?;
        let doc = parse_doc(action, &body)?;
        doc.root_element()
            .items(set)
            .into_iter()
            .map(|item| {
                let state = |name: &str| {
                    item.child_named(name)
                        .and_then(|s| s.text_of("name"))
                        .map(|s| InstanceState::parse(&s))
                        .unwrap_or(InstanceState::Other(String::new()))
                };
                Ok(StateChange {
                    instance_id: item.req("instanceId").map_err(malformed(action))?,
                    previous: state("previousState"),
                    current: state("currentState"),
                })
            })
            .collect()
    }
}

pub(crate) fn parse_instance(n: Node<'_, '_>) -> Result<Instance, String> {
    let state = n
        .child_named("instanceState")
        .and_then(|s| s.text_of("name"))
        .map(|s| InstanceState::parse(&s))
        .ok_or("an instance without instanceState")?;
    // The primary network interface is the source of truth for subnet, groups and
    // addresses; the instance-level copies are absent in some answers (moto leaves them out
    // when the launch went through NetworkInterface.1).
    let nics = n.items("networkInterfaceSet");
    let primary = nics
        .iter()
        .find(|i| {
            i.child_named("attachment")
                .and_then(|a| a.text_of("deviceIndex"))
                .as_deref()
                == Some("0")
        })
        .or(nics.first())
        .copied();
    let from_nic = |name: &str| primary.and_then(|p| p.text_of(name));
    let mut security_group_ids: Vec<String> = n
        .items("groupSet")
        .into_iter()
        .filter_map(|g| g.text_of("groupId"))
        .collect();
    if security_group_ids.is_empty()
        && let Some(p) = primary
    {
        security_group_ids = p
            .items("groupSet")
            .into_iter()
            .filter_map(|g| g.text_of("groupId"))
            .collect();
    }
    Ok(Instance {
        instance_id: n.req("instanceId")?,
        image_id: n.text_of("imageId"),
        instance_type: n.text_of("instanceType"),
        state,
        state_reason: parse_state_reason(n, "stateReason"),
        key_name: n.text_of("keyName"),
        launch_time: n.text_of("launchTime"),
        public_ip: n.text_of("ipAddress").or_else(|| {
            primary
                .and_then(|p| p.child_named("association"))
                .and_then(|a| a.text_of("publicIp"))
        }),
        private_ip: n
            .text_of("privateIpAddress")
            .or_else(|| from_nic("privateIpAddress")),
        public_dns: n.text_of("dnsName").or_else(|| {
            primary
                .and_then(|p| p.child_named("association"))
                .and_then(|a| a.text_of("publicDnsName"))
        }),
        private_dns: n
            .text_of("privateDnsName")
            .or_else(|| from_nic("privateDnsName")),
        subnet_id: n.text_of("subnetId").or_else(|| from_nic("subnetId")),
        vpc_id: n.text_of("vpcId").or_else(|| from_nic("vpcId")),
        availability_zone: n
            .child_named("placement")
            .and_then(|p| p.text_of("availabilityZone")),
        security_group_ids,
        client_token: n.text_of("clientToken"),
        lifecycle: n.text_of("instanceLifecycle"),
        spot_request_id: n.text_of("spotInstanceRequestId"),
        root_device_name: n.text_of("rootDeviceName"),
        volumes: n
            .items("blockDeviceMapping")
            .into_iter()
            .filter_map(|b| {
                let ebs = b.child_named("ebs")?;
                Some(AttachedVolume {
                    device_name: b.text_of("deviceName")?,
                    volume_id: ebs.text_of("volumeId")?,
                    delete_on_termination: ebs.bool_of("deleteOnTermination"),
                })
            })
            .collect(),
        tags: n.tags(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml;

    #[test]
    fn parses_an_ec2_instance() {
        let body = r#"<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
<requestId>r</requestId><reservationSet><item><reservationId>r-1</reservationId><instancesSet><item>
<instanceId>i-0abc</instanceId><imageId>ami-1</imageId><instanceState><code>16</code><name>running</name></instanceState>
<privateDnsName>ip-10-0-0-1.ec2.internal</privateDnsName><dnsName>ec2-1-2-3-4.compute-1.amazonaws.com</dnsName>
<keyName>k</keyName><instanceType>t3.micro</instanceType><placement><availabilityZone>us-east-1a</availabilityZone></placement>
<subnetId>subnet-1</subnetId><vpcId>vpc-1</vpcId><privateIpAddress>10.0.0.1</privateIpAddress><ipAddress>1.2.3.4</ipAddress>
<groupSet><item><groupId>sg-1</groupId><groupName>g</groupName></item></groupSet>
<blockDeviceMapping><item><deviceName>/dev/xvda</deviceName><ebs><volumeId>vol-1</volumeId><status>attached</status><deleteOnTermination>true</deleteOnTermination></ebs></item></blockDeviceMapping>
<clientToken>tok</clientToken><tagSet><item><key>kiln:run</key><value>u</value></item></tagSet><newField><x/></newField>
</item></instancesSet></item></reservationSet></DescribeInstancesResponse>"#;
        let doc = xml::parse(body).unwrap();
        let nic_only = r#"<R><instanceId>i-2</instanceId><instanceState><name>pending</name></instanceState>
<networkInterfaceSet><item><subnetId>subnet-9</subnetId><vpcId>vpc-9</vpcId><privateIpAddress>10.1.1.1</privateIpAddress>
<attachment><deviceIndex>0</deviceIndex></attachment><association><publicIp>5.6.7.8</publicIp></association>
<groupSet><item><groupId>sg-9</groupId></item></groupSet></item></networkInterfaceSet></R>"#;
        let nd = xml::parse(nic_only).unwrap();
        let i = parse_instance(nd.root_element()).unwrap();
        assert_eq!(i.subnet_id.as_deref(), Some("subnet-9"));
        assert_eq!(i.security_group_ids, vec!["sg-9"]);
        assert_eq!(i.public_ip.as_deref(), Some("5.6.7.8"));
        assert_eq!(i.private_ip.as_deref(), Some("10.1.1.1"));
        let item = doc.root_element().items("reservationSet")[0].items("instancesSet")[0];
        let i = parse_instance(item).unwrap();
        assert_eq!(i.instance_id, "i-0abc");
        assert_eq!(i.state, InstanceState::Running);
        assert_eq!(i.public_ip.as_deref(), Some("1.2.3.4"));
        assert_eq!(i.private_dns.as_deref(), Some("ip-10-0-0-1.ec2.internal"));
        assert_eq!(i.security_group_ids, vec!["sg-1"]);
        assert_eq!(i.volumes[0].volume_id, "vol-1");
        assert_eq!(i.availability_zone.as_deref(), Some("us-east-1a"));
        assert_eq!(i.client_token.as_deref(), Some("tok"));
        assert_eq!(i.tags["kiln:run"], "u");
    }
}
