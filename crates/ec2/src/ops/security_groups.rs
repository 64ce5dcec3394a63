//! Security groups: create, open a TCP port to CIDRs, describe, delete (also "once the
//! instances using it are gone").

use roxmltree::Node;

use crate::Ec2Client;
use crate::client::{Idempotent, malformed, parse_doc};
use crate::error::Ec2Error;
use crate::model::{Filter, Tags};
use crate::params::Params;
use crate::wait::{Poll, WaitOptions, wait_for};
use crate::xml::NodeExt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroup {
    pub group_id: String,
    pub group_name: String,
    pub description: Option<String>,
    pub vpc_id: Option<String>,
    pub owner_id: Option<String>,
    pub ingress: Vec<IpPermission>,
    pub tags: Tags,
}

/// One ingress rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpPermission {
    /// `tcp`, `udp`, `icmp`, `-1` (all).
    pub protocol: String,
    pub from_port: Option<i64>,
    pub to_port: Option<i64>,
    pub cidrs: Vec<String>,
    pub ipv6_cidrs: Vec<String>,
    pub source_group_ids: Vec<String>,
}

impl Ec2Client {
    /// CreateSecurityGroup (in `vpc_id`, or the default VPC); returns the group id. Not
    /// repeated after an unanswered attempt (the repeat fails `InvalidGroup.Duplicate`);
    /// resolve by name or tag instead.
    pub async fn create_security_group(
        &self,
        name: &str,
        description: &str,
        vpc_id: Option<&str>,
        tags: &Tags,
    ) -> Result<String, Ec2Error> {
        const ACTION: &str = "CreateSecurityGroup";
        let mut p = Params::new();
        p.set("GroupName", name)
            .set("GroupDescription", description)
            .opt("VpcId", vpc_id)
            .tag_specs(&[("security-group", tags)]);
        let body = self.call(ACTION, &p, Idempotent::No).await?;
        let doc = parse_doc(ACTION, &body)?;
        doc.root_element().req("groupId").map_err(malformed(ACTION))
    }

    /// Opens TCP `from_port..=to_port` to the given CIDRs (IPv4 or IPv6). A rule that
    /// already exists counts as done.
    pub async fn authorize_ingress_tcp(
        &self,
        group_id: &str,
        from_port: u16,
        to_port: u16,
        cidrs: &[String],
    ) -> Result<(), Ec2Error> {
        if cidrs.is_empty() {
            return Err(Ec2Error::InvalidInput(format!(
                "opening port {from_port} of {group_id} needs at least one source CIDR"
            )));
        }
        let mut p = Params::new();
        let r = "IpPermissions.1";
        p.set("GroupId", group_id)
            .set(format!("{r}.IpProtocol"), "tcp")
            .set(format!("{r}.FromPort"), from_port.to_string())
            .set(format!("{r}.ToPort"), to_port.to_string());
        let (v6, v4): (Vec<&String>, Vec<&String>) = cidrs.iter().partition(|c| c.contains(':'));
        for (i, c) in v4.iter().enumerate() {
            p.set(format!("{r}.IpRanges.{}.CidrIp", i + 1), c.as_str());
        }
        for (i, c) in v6.iter().enumerate() {
            p.set(format!("{r}.Ipv6Ranges.{}.CidrIpv6", i + 1), c.as_str());
        }
        match self
            .call("AuthorizeSecurityGroupIngress", &p, Idempotent::Yes)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("InvalidPermission.Duplicate") => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn describe_security_groups(
        &self,
        group_ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<SecurityGroup>, Ec2Error> {
        const ACTION: &str = "DescribeSecurityGroups";
        let mut p = Params::new();
        p.list("GroupId", group_ids).filters(filters);
        self.paginate(ACTION, p, group_ids.is_empty(), |body| {
            let doc = parse_doc(ACTION, body)?;
            let root = doc.root_element();
            let groups = root
                .items("securityGroupInfo")
                .into_iter()
                .map(parse_group)
                .collect::<Result<Vec<_>, _>>()
                .map_err(malformed(ACTION))?;
            Ok((groups, root.text_of("nextToken")))
        })
        .await
    }

    /// DeleteSecurityGroup. A group that is gone gives an error for which
    /// `is_not_found()` holds; one still used by an instance, `is_in_use()`.
    pub async fn delete_security_group(&self, group_id: &str) -> Result<(), Ec2Error> {
        let mut p = Params::new();
        p.set("GroupId", group_id);
        self.call("DeleteSecurityGroup", &p, Idempotent::Yes)
            .await?;
        Ok(())
    }

    /// Deletes the group, retrying while EC2 says it is still in use (an instance that is
    /// still shutting down holds it for a while). Already gone counts as done.
    pub async fn delete_security_group_when_released(
        &self,
        group_id: &str,
        opts: &WaitOptions,
    ) -> Result<(), Ec2Error> {
        let what = format!("security group {group_id} to be released and deleted");
        wait_for(what, opts, || async {
            match self.delete_security_group(group_id).await {
                Ok(()) => Ok(Poll::Done(())),
                Err(e) if e.is_not_found() => Ok(Poll::Done(())),
                Err(e) if e.is_in_use() => Ok(Poll::Pending(format!(
                    "in use ({})",
                    e.api().map(|a| a.message.as_str()).unwrap_or_default()
                ))),
                Err(e) => Err(e),
            }
        })
        .await
    }
}

fn parse_group(n: Node<'_, '_>) -> Result<SecurityGroup, String> {
    Ok(SecurityGroup {
        group_id: n.req("groupId")?,
        group_name: n.text_of("groupName").unwrap_or_default(),
        description: n.text_of("groupDescription"),
        vpc_id: n.text_of("vpcId"),
        owner_id: n.text_of("ownerId"),
        ingress: n
            .items("ipPermissions")
            .into_iter()
            .map(|r| IpPermission {
                protocol: r.text_of("ipProtocol").unwrap_or_default(),
                from_port: r.i64_of("fromPort"),
                to_port: r.i64_of("toPort"),
                cidrs: r
                    .items("ipRanges")
                    .into_iter()
                    .filter_map(|i| i.text_of("cidrIp"))
                    .collect(),
                ipv6_cidrs: r
                    .items("ipv6Ranges")
                    .into_iter()
                    .filter_map(|i| i.text_of("cidrIpv6"))
                    .collect(),
                source_group_ids: r
                    .items("groups")
                    .into_iter()
                    .filter_map(|i| i.text_of("groupId"))
                    .collect(),
            })
            .collect(),
        tags: n.tags(),
    })
}
