//! Key pairs: create (the private key comes back as a [`Secret`]), import, describe, delete.

use base64::Engine;
use roxmltree::Node;

use crate::Ec2Client;
use crate::client::{Idempotent, malformed, parse_doc};
use crate::error::Ec2Error;
use crate::model::{Filter, Tags};
use crate::params::Params;
use crate::secret::Secret;
use crate::xml::NodeExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Ed25519,
    Rsa,
}

impl KeyType {
    fn as_str(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::Rsa => "rsa",
        }
    }
}

/// A key pair as DescribeKeyPairs / ImportKeyPair report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairInfo {
    pub key_name: String,
    pub key_pair_id: Option<String>,
    pub fingerprint: Option<String>,
    pub key_type: Option<String>,
    /// OpenSSH public key; only with `include_public_key`.
    pub public_key: Option<String>,
    pub create_time: Option<String>,
    pub tags: Tags,
}

/// A key pair EC2 generated. `private_key` is the only copy: EC2 keeps none.
#[derive(Debug, Clone)]
pub struct CreatedKeyPair {
    pub key_name: String,
    pub key_pair_id: Option<String>,
    pub fingerprint: Option<String>,
    /// PEM (RSA) or OpenSSH (ed25519) private key.
    pub private_key: Secret,
}

impl Ec2Client {
    /// CreateKeyPair. Not repeated after an unanswered attempt (a repeat cannot return the
    /// private key again); find it with [`Ec2Client::describe_key_pairs`] by name or tag and
    /// delete it instead.
    pub async fn create_key_pair(
        &self,
        name: &str,
        key_type: KeyType,
        tags: &Tags,
    ) -> Result<CreatedKeyPair, Ec2Error> {
        const ACTION: &str = "CreateKeyPair";
        let mut p = Params::new();
        p.set("KeyName", name)
            .set("KeyType", key_type.as_str())
            .set("KeyFormat", "pem")
            .tag_specs(&[("key-pair", tags)]);
        let body = self.call(ACTION, &p, Idempotent::No).await?;
        let doc = parse_doc(ACTION, &body)?;
        let root = doc.root_element();
        let material = root
            .child_named("keyMaterial")
            .map(|n| {
                n.children()
                    .filter_map(|c| c.text())
                    .collect::<String>()
                    .trim()
                    .to_string()
            })
            .filter(|m| !m.is_empty())
            .ok_or_else(|| Ec2Error::Malformed {
                action: ACTION,
                detail: "no keyMaterial in the answer".into(),
            })?;
        Ok(CreatedKeyPair {
            key_name: root.req("keyName").map_err(malformed(ACTION))?,
            key_pair_id: root.text_of("keyPairId"),
            fingerprint: root.text_of("keyFingerprint"),
            // OpenSSH keys must end with a newline or ssh refuses them.
            private_key: Secret::new(format!("{material}\n")),
        })
    }

    /// ImportKeyPair from an OpenSSH public key line (`ssh-ed25519 AAAA... comment`).
    pub async fn import_key_pair(
        &self,
        name: &str,
        public_key: &str,
        tags: &Tags,
    ) -> Result<KeyPairInfo, Ec2Error> {
        const ACTION: &str = "ImportKeyPair";
        let mut p = Params::new();
        p.set("KeyName", name)
            .set(
                "PublicKeyMaterial",
                base64::engine::general_purpose::STANDARD.encode(public_key.trim().as_bytes()),
            )
            .tag_specs(&[("key-pair", tags)]);
        let body = self.call(ACTION, &p, Idempotent::No).await?;
        let doc = parse_doc(ACTION, &body)?;
        parse_key_pair(doc.root_element()).map_err(malformed(ACTION))
    }

    /// DescribeKeyPairs by names and/or filters. Unknown names fail with
    /// `InvalidKeyPair.NotFound`.
    pub async fn describe_key_pairs(
        &self,
        names: &[String],
        filters: &[Filter],
        include_public_key: bool,
    ) -> Result<Vec<KeyPairInfo>, Ec2Error> {
        const ACTION: &str = "DescribeKeyPairs";
        let mut p = Params::new();
        p.list("KeyName", names).filters(filters);
        if include_public_key {
            p.flag("IncludePublicKey", true);
        }
        let body = self.call(ACTION, &p, Idempotent::Yes).await?;
        let doc = parse_doc(ACTION, &body)?;
        doc.root_element()
            .items("keySet")
            .into_iter()
            .map(parse_key_pair)
            .collect::<Result<Vec<_>, _>>()
            .map_err(malformed(ACTION))
    }

    /// DeleteKeyPair by name. EC2 answers success for a name it does not know, so a
    /// repeated delete is a no-op.
    pub async fn delete_key_pair(&self, name: &str) -> Result<(), Ec2Error> {
        let mut p = Params::new();
        p.set("KeyName", name);
        self.call("DeleteKeyPair", &p, Idempotent::Yes).await?;
        Ok(())
    }
}

fn parse_key_pair(n: Node<'_, '_>) -> Result<KeyPairInfo, String> {
    Ok(KeyPairInfo {
        key_name: n.req("keyName")?,
        key_pair_id: n.text_of("keyPairId"),
        fingerprint: n.text_of("keyFingerprint"),
        key_type: n.text_of("keyType"),
        public_key: n.text_of("publicKey"),
        create_time: n.text_of("createTime"),
        tags: n.tags(),
    })
}
