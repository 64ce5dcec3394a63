//! `oci`: pulling from and pushing to OCI registries, per registry host
//! (`allow: #{ oci: ["registry.example.com", "127.0.0.1:5001"] }`). The oci builder
//! declares it in its `grants(cfg)` for the registries its config names.
//!
//! [`Registry`] is the checked facade over `kiln_oci`'s client: one is made per
//! registry host only if the scope holds `oci` for it, and each pull and push is one
//! [`Scope::run`] (checked, timed, audited with its outcome). Credentials come from
//! `secret(...)` handles in the config or from an auth file the scope may read
//! (`~/.docker/config.json`, `$REGISTRY_AUTH_FILE`); they stay inside the client and
//! never reach a script, an audit line or an error.

pub mod rhai;

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_oci::registry::{PullReport, PushOptions, PushReport};
use kiln_oci::{Credentials, LocalImage, OciLayout, Platform, RegistryClient, RegistryOptions};

use super::broker::{Denied, Scope, ScopeError};
use super::grants::Use;
use super::spec::{CapSpec, Grammar};

pub static SPEC: CapSpec = CapSpec {
    key: "oci",
    summary: "pull from and push to an OCI registry",
    grammar: Grammar::HostPorts,
    wit: &[],
    example: r#"allow: #{ oci: ["registry.example.com"] }"#,
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

/// A registry operation that was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Denied(Denied),
    #[error("{message}{hint}")]
    Registry {
        message: String,
        /// Why no credentials were sent, when that may be the cause.
        hint: String,
    },
}

/// How the build reaches registries: credentials per registry host, an auth file for
/// the others, extra CA certificates and the hosts allowed over plain HTTP.
#[derive(Clone, Default)]
pub struct Access {
    /// `host[:port]` → user name and password (from `secret(...)`).
    pub credentials: BTreeMap<String, (String, kiln_oci::Secret)>,
    /// An auth file the scope may read, for registries without `credentials`.
    pub auth_file: Option<PathBuf>,
    /// Why the default auth file was not used (shown with an authorization error).
    pub auth_note: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub insecure: Vec<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field(
                "credentials_for",
                &self.credentials.keys().collect::<Vec<_>>(),
            )
            .field("auth_file", &self.auth_file)
            .field("ca_file", &self.ca_file)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl Access {
    fn options(&self, registry: &str) -> RegistryOptions {
        let credentials = match self.credentials.get(registry) {
            Some((user, pw)) => Credentials::Basic {
                username: user.clone(),
                password: pw.clone(),
            },
            None => match &self.auth_file {
                Some(p) => Credentials::AuthFile(Some(p.clone())),
                None => Credentials::Anonymous,
            },
        };
        RegistryOptions {
            credentials,
            insecure: self.insecure.clone(),
            ca_file: self.ca_file.clone(),
            ..RegistryOptions::default()
        }
    }

    fn hint(&self, registry: &str, e: &kiln_oci::RegistryError) -> String {
        let auth = matches!(e, kiln_oci::RegistryError::Unauthorized { .. });
        match (
            &self.auth_note,
            auth,
            self.credentials.contains_key(registry),
        ) {
            (Some(note), true, false) => format!(" ({note})"),
            _ => String::new(),
        }
    }
}

/// `host[:port]` as a [`Use`]: the host and the port if one is given.
fn use_of(registry: &str) -> Use {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || registry.starts_with('[') => match p.parse() {
            Ok(port) => (h.trim_matches(['[', ']']).to_string(), Some(port)),
            Err(_) => (registry.to_string(), None),
        },
        _ => (registry.to_string(), None),
    };
    Use::host(&SPEC, host, port)
}

/// One registry, as one scope may use it.
pub struct Registry {
    scope: Scope,
    client: RegistryClient,
    access: Access,
}

impl Registry {
    /// A client for `registry` (`host[:port]`), if `scope` holds `oci` for it.
    pub fn open(scope: &Scope, access: &Access, registry: &str) -> Result<Registry, OciError> {
        scope.check(&use_of(registry)).map_err(OciError::Denied)?;
        let client = RegistryClient::new(registry, access.options(registry)).map_err(|e| {
            OciError::Registry {
                hint: access.hint(registry, &e),
                message: e.to_string(),
            }
        })?;
        Ok(Registry {
            scope: scope.clone(),
            client,
            access: access.clone(),
        })
    }

    pub fn host(&self) -> &str {
        self.client.registry()
    }

    fn fail(&self, e: ScopeError<kiln_oci::RegistryError>) -> OciError {
        match e {
            ScopeError::Denied(d) => OciError::Denied(d),
            ScopeError::Failed(e) => OciError::Registry {
                hint: self.access.hint(self.host(), &e),
                message: e.to_string(),
            },
        }
    }

    /// Pulls `repo:reference` for `platform` into `layout`, every blob verified.
    pub async fn pull(
        &self,
        repo: &str,
        reference: &str,
        platform: &Platform,
        layout: &OciLayout,
    ) -> Result<PullReport, OciError> {
        self.scope
            .run_with(
                &use_of(self.host()),
                &format!("pull {repo}:{reference} ({platform})"),
                self.client.pull(repo, reference, platform, layout, None),
                |r| {
                    format!(
                        "ok ({} digest {}, {} blobs fetched, {} present, {} bytes)",
                        repo,
                        r.image.manifest_descriptor.digest,
                        r.fetched,
                        r.present,
                        r.bytes_fetched
                    )
                },
            )
            .await
            .map_err(|e| self.fail(e))
    }

    /// Pushes `image` (blobs in `layout`) to `repo` by digest and under `tags`; blobs
    /// the registry has are skipped, ones in `mount_from` repositories mounted.
    pub async fn push(
        &self,
        layout: &OciLayout,
        image: &LocalImage,
        repo: &str,
        tags: &[String],
        mount_from: Vec<String>,
    ) -> Result<PushReport, OciError> {
        let what = if tags.is_empty() {
            format!("push {repo}@{}", image.manifest_descriptor.digest)
        } else {
            format!("push {repo}:{}", tags.join(","))
        };
        self.scope
            .run_with(
                &use_of(self.host()),
                &what,
                self.client
                    .push(layout, image, repo, tags, &PushOptions { mount_from }),
                |r| {
                    use kiln_oci::registry::BlobPush;
                    format!(
                        "ok ({}: {} uploaded, {} existed, {} mounted, {} bytes)",
                        r.reference,
                        r.count(BlobPush::Uploaded),
                        r.count(BlobPush::Existed),
                        r.count(BlobPush::Mounted),
                        r.bytes_uploaded
                    )
                },
            )
            .await
            .map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::grants::Target;

    #[test]
    fn registries_are_granted_by_host_and_port() {
        let u = use_of("127.0.0.1:5001");
        assert_eq!(
            u.target,
            Target::Host {
                host: "127.0.0.1".into(),
                port: Some(5001)
            }
        );
        let u = use_of("registry.example.com");
        assert_eq!(
            u.target,
            Target::Host {
                host: "registry.example.com".into(),
                port: None
            }
        );
        let u = use_of("[::1]:5000");
        assert_eq!(
            u.target,
            Target::Host {
                host: "::1".into(),
                port: Some(5000)
            }
        );
    }

    #[test]
    fn access_never_prints_passwords() {
        let mut a = Access::default();
        a.credentials.insert(
            "r.example.com".into(),
            ("kiln".into(), kiln_oci::Secret::new("hunter2-very-secret")),
        );
        let s = format!("{a:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("r.example.com"));
    }
}
