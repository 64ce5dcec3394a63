//! VPCs and subnets: enough to find the default VPC and a subnet to launch into.

use roxmltree::Node;

use crate::Ec2Client;
use crate::client::{malformed, parse_doc};
use crate::error::Ec2Error;
use crate::model::{Filter, Tags};
use crate::params::Params;
use crate::xml::NodeExt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vpc {
    pub vpc_id: String,
    pub cidr_block: Option<String>,
    pub is_default: bool,
    pub state: Option<String>,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub subnet_id: String,
    pub vpc_id: Option<String>,
    pub availability_zone: Option<String>,
    pub cidr_block: Option<String>,
    pub default_for_az: bool,
    pub map_public_ip_on_launch: bool,
    pub available_ip_address_count: Option<u64>,
    pub state: Option<String>,
    pub tags: Tags,
}

impl Ec2Client {
    pub async fn describe_vpcs(
        &self,
        vpc_ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<Vpc>, Ec2Error> {
        const ACTION: &str = "DescribeVpcs";
        let mut p = Params::new();
        p.list("VpcId", vpc_ids).filters(filters);
        self.paginate(ACTION, p, vpc_ids.is_empty(), |body| {
            let doc = parse_doc(ACTION, body)?;
            let root = doc.root_element();
            let vpcs = root
                .items("vpcSet")
                .into_iter()
                .map(parse_vpc)
                .collect::<Result<Vec<_>, _>>()
                .map_err(malformed(ACTION))?;
            Ok((vpcs, root.text_of("nextToken")))
        })
        .await
    }

    /// The region's default VPC, `None` if the account has none there.
    pub async fn default_vpc(&self) -> Result<Option<Vpc>, Ec2Error> {
        let mut v = self
            .describe_vpcs(&[], &[Filter::new("is-default", ["true"])])
            .await?;
        Ok(v.pop())
    }

    pub async fn describe_subnets(
        &self,
        subnet_ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<Subnet>, Ec2Error> {
        const ACTION: &str = "DescribeSubnets";
        let mut p = Params::new();
        p.list("SubnetId", subnet_ids).filters(filters);
        self.paginate(ACTION, p, subnet_ids.is_empty(), |body| {
            let doc = parse_doc(ACTION, body)?;
            let root = doc.root_element();
            let subnets = root
                .items("subnetSet")
                .into_iter()
                .map(parse_subnet)
                .collect::<Result<Vec<_>, _>>()
                .map_err(malformed(ACTION))?;
            Ok((subnets, root.text_of("nextToken")))
        })
        .await
    }
}

fn parse_vpc(n: Node<'_, '_>) -> Result<Vpc, String> {
    Ok(Vpc {
        vpc_id: n.req("vpcId")?,
        cidr_block: n.text_of("cidrBlock"),
        is_default: n.bool_of("isDefault").unwrap_or(false),
        state: n.text_of("state"),
        tags: n.tags(),
    })
}

fn parse_subnet(n: Node<'_, '_>) -> Result<Subnet, String> {
    Ok(Subnet {
        subnet_id: n.req("subnetId")?,
        vpc_id: n.text_of("vpcId"),
        availability_zone: n.text_of("availabilityZone"),
        cidr_block: n.text_of("cidrBlock"),
        default_for_az: n.bool_of("defaultForAz").unwrap_or(false),
        map_public_ip_on_launch: n.bool_of("mapPublicIpOnLaunch").unwrap_or(false),
        available_ip_address_count: n.u64_of("availableIpAddressCount"),
        state: n.text_of("state"),
        tags: n.tags(),
    })
}
