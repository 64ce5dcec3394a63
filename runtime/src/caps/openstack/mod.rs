//! `openstack`: Keystone and Glance calls to the clouds granted
//! (`allow: #{ openstack: ["mycloud"] }`, or `["keystone.example.com:5000"]`, or
//! `["127.0.0.1:9292"]`). The `openstack_image` post-processor holds it for the cloud its
//! config names.
//!
//! **The grant names a cloud the way the user names it**: a clouds.yaml cloud by its name;
//! a cloud configured without one (`auth_url`, `OS_AUTH_URL`) by its Keystone's host and
//! port; a standalone Glance (`auth_type: "none"`, or a pre-issued token with an explicit
//! `endpoint`) by that endpoint's host and port. Every use names that same identity
//! ([`identity`]), and the image endpoint a cloud's Keystone catalog lists belongs to
//! that cloud. Granting per catalog endpoint host instead would make users grant hosts
//! they never wrote (the catalog's), and a grant per cloud name alone could not cover a
//! Keystone-less Glance. The grammar is [`Grammar::HostPorts`]: a cloud name is written
//! like a host name (letters, digits, `-`, `_`, `.`), which clouds.yaml names are.
//!
//! [`Cloud`] is the facade: authenticating, creating, uploading, polling, listing,
//! patching and deleting each go through [`Scope::run`] (checked, timed, one audit line
//! naming the cloud and the operation). Credentials never leave kiln-openstack (its
//! `Secret` has no `Display` and is readable only inside that crate), so no audit line,
//! log, error or manifest can hold a password or token.
//!
//! Everything [`Cloud::create`] makes is on the build's cleanup stack before any data
//! moves, through the resource seam [`Tracked`] (where the resource ledger's records go).

pub mod publish;
pub mod rhai;

use std::path::Path;
use std::sync::Arc;

use kiln_openstack::{
    Auth, CloudConfig, Created, Deleted, Error, Glance, Image, ImagePatch, NewImage, ProgressFn,
    UploadReport, WaitOptions,
};

use super::broker::{Scope, ScopeError};
use super::grants::Use;
use super::spec::{CapSpec, Grammar};
use crate::cleanup::{CleanupId, CleanupStack};

pub static SPEC: CapSpec = CapSpec {
    key: "openstack",
    summary: "call Keystone and Glance of a cloud (by clouds.yaml name or endpoint)",
    grammar: Grammar::HostPorts,
    wit: &[],
    example: r#"allow: #{ openstack: ["mycloud"] }"#,
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

/// A failed cloud call: refused by the broker, or failed at the cloud.
pub type CallError = ScopeError<Error>;

/// The identity every use of the cloud `cfg` describes names (see the module doc): the
/// clouds.yaml cloud's name, else the host and port of the Keystone kiln authenticates
/// at, else of the image endpoint.
pub fn identity(cfg: &CloudConfig) -> Use {
    if let Some(c) = &cfg.cloud {
        return Use::host(&SPEC, c.clone(), None);
    }
    let url = match (&cfg.auth, &cfg.endpoint) {
        (Auth::Password { auth_url, .. } | Auth::ApplicationCredential { auth_url, .. }, _) => {
            Some(auth_url.as_str())
        }
        // a pre-issued token with an endpoint goes straight to Glance
        (Auth::Token { .. } | Auth::None, Some(e)) => Some(e.as_str()),
        (Auth::Token { auth_url, .. }, None) => auth_url.as_deref(),
        (Auth::None, None) => None,
    };
    match url.and_then(host_port) {
        Some((host, port)) => Use::host(&SPEC, host, Some(port)),
        // kiln-openstack refuses such a config before this is asked; name it anyway
        None => Use::host(&SPEC, "(no endpoint)", None),
    }
}

/// The host and port of an `http(s)://` URL (the port defaulted by the scheme).
fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, tail) = v6.split_once(']')?;
        (h, tail.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None | Some("") => default,
        Some(p) => p.parse().ok()?,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// One cloud, connected for one scope: the only way kiln code reaches Keystone or Glance.
/// Cheap to clone (the undo of a created image holds one).
#[derive(Clone)]
pub struct Cloud {
    scope: Scope,
    glance: Glance,
    target: Arc<Use>,
}

impl Cloud {
    /// Authenticates as `cfg` says (Keystone v3, a token, or none) and finds the image
    /// endpoint: one checked and audited use, whose object is the cloud's [`identity`].
    pub async fn connect(scope: &Scope, cfg: &CloudConfig) -> Result<Cloud, CallError> {
        let target = identity(cfg);
        let detail = format!("connect ({})", cfg.describe());
        let glance = scope
            .run_with(&target, &detail, Glance::connect(cfg), |g| {
                format!("ok (image endpoint {})", g.endpoint())
            })
            .await?;
        Ok(Cloud {
            scope: scope.clone(),
            glance,
            target: Arc::new(target),
        })
    }

    /// The image endpoint in use (without `/v2`).
    pub fn endpoint(&self) -> &str {
        self.glance.endpoint()
    }

    /// The project the token is scoped to (None without Keystone).
    pub fn project_id(&self) -> Option<&str> {
        self.glance.project_id()
    }

    /// The cloud as grants and audit lines name it (`mycloud`, `127.0.0.1:9292`).
    pub fn name(&self) -> String {
        self.target.object().unwrap_or_default()
    }

    async fn run<T, F>(&self, detail: String, op: F) -> Result<T, CallError>
    where
        F: std::future::Future<Output = Result<T, Error>>,
    {
        self.scope.run(&self.target, &detail, op).await
    }

    /// [`Cloud::run`] for a call that sends an image's data: the audit line's outcome
    /// says how many bytes went and their sha512.
    async fn send<F>(&self, detail: String, op: F) -> Result<UploadReport, CallError>
    where
        F: std::future::Future<Output = Result<UploadReport, Error>>,
    {
        self.scope
            .run_with(&self.target, &detail, op, |r: &UploadReport| {
                format!("ok ({} bytes, sha512 {})", r.bytes, r.sha512)
            })
            .await
    }

    /// The import methods the cloud offers (`GET /v2/info/import`).
    pub async fn import_methods(&self) -> Result<Vec<String>, CallError> {
        self.run("list import methods".into(), self.glance.import_methods())
            .await
    }

    /// Images named exactly `name` (owned by `owner`, when given), oldest first.
    pub async fn find_by_name(
        &self,
        name: &str,
        owner: Option<&str>,
    ) -> Result<Vec<Image>, CallError> {
        self.scope
            .run_with(
                &self.target,
                &format!("list images named {name:?}"),
                self.glance.find_by_name(name, owner),
                |v| format!("ok ({} found)", v.len()),
            )
            .await
    }

    /// Creates an image record (`POST /v2/images`). Its deletion is on `cleanup` before
    /// the request is sent: the request runs in its own task, so a build stopped while
    /// it is in flight still learns the id and the undo deletes that image.
    pub async fn create(
        &self,
        new: &NewImage,
        cleanup: &CleanupStack,
    ) -> Result<(Created, Tracked), CallError> {
        let (tx, rx) = tokio::sync::watch::channel::<Option<Option<String>>>(None);
        let pending = Resource {
            id: None,
            name: new.name.clone(),
            endpoint: self.endpoint().to_string(),
        };
        let undo_cloud = self.clone();
        let pending_id = cleanup.push(pending.describe(), move || async move {
            let mut rx = rx;
            // bounded: the create request has kiln-openstack's request timeout
            let id = match rx.wait_for(Option::is_some).await {
                Ok(v) => (*v).clone().flatten(),
                Err(_) => None,
            };
            if let Some(id) = id {
                undo_cloud.delete(&id, true).await?;
            }
            Ok(())
        });
        let me = self.clone();
        let body = new.clone();
        let task = tokio::spawn(async move {
            let r = me
                .scope
                .run_with(
                    &me.target,
                    &format!(
                        "create image {:?} ({}, {})",
                        body.name, body.disk_format, body.container_format
                    ),
                    me.glance.create(&body),
                    |c: &Created| format!("ok (id {})", c.image.id),
                )
                .await;
            let _ = tx.send(Some(r.as_ref().ok().map(|c| c.image.id.clone())));
            r
        });
        let created = match task.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(ScopeError::Failed(Error::InvalidRequest(
                "the create request was stopped before Glance answered".into(),
            ))),
        };
        // No await between here and the push below: the image always has an entry.
        cleanup.release(pending_id);
        let created = created?;
        let tracked = Tracked::created(
            self,
            Resource {
                id: Some(created.image.id.clone()),
                ..pending
            },
            cleanup,
        );
        Ok((created, tracked))
    }

    /// Uploads `file` as the image's data (`PUT /v2/images/{id}/file`), streamed with a
    /// `Content-Length` and hashed on the way.
    pub async fn upload(
        &self,
        id: &str,
        file: &Path,
        bytes: u64,
        progress: Option<ProgressFn>,
    ) -> Result<UploadReport, CallError> {
        let detail = format!("upload image {id} ({bytes} bytes)");
        self.send(detail, self.glance.upload(id, file, progress))
            .await
    }

    /// Stages `file` for a `glance-direct` import (`PUT /v2/images/{id}/stage`).
    pub async fn stage(
        &self,
        id: &str,
        file: &Path,
        bytes: u64,
        progress: Option<ProgressFn>,
    ) -> Result<UploadReport, CallError> {
        let detail = format!("stage image {id} ({bytes} bytes)");
        self.send(detail, self.glance.stage(id, file, progress))
            .await
    }

    /// Starts the `glance-direct` import of the staged data.
    pub async fn import_staged(&self, id: &str, offered: &[String]) -> Result<(), CallError> {
        self.run(
            format!("import image {id} (glance-direct)"),
            self.glance.import_staged(id, offered),
        )
        .await
    }

    /// Polls until the image is `active` (one audit line for the whole wait).
    pub async fn wait_active(&self, id: &str, opts: WaitOptions) -> Result<Image, CallError> {
        self.scope
            .run_with(
                &self.target,
                &format!(
                    "wait for image {id} to become active (timeout {})",
                    humantime::format_duration(opts.timeout)
                ),
                self.glance.wait_active(id, opts),
                |img: &Image| {
                    format!(
                        "ok ({}, {} {})",
                        img.status,
                        img.os_hash_algo.as_deref().unwrap_or("no hash"),
                        img.os_hash_value.as_deref().unwrap_or("")
                    )
                },
            )
            .await
    }

    /// Marks the image protected (Glance then refuses to delete it).
    pub async fn protect(&self, id: &str) -> Result<Image, CallError> {
        self.run(
            format!("protect image {id}"),
            self.glance.update(id, &[ImagePatch::SetProtected(true)]),
        )
        .await
    }

    /// Deletes an image (unprotecting it first with `unprotect`); a missing one is
    /// [`Deleted::AlreadyGone`].
    pub async fn delete(&self, id: &str, unprotect: bool) -> Result<Deleted, CallError> {
        self.scope
            .run_with(
                &self.target,
                &format!("delete image {id}"),
                self.glance.delete(id, unprotect),
                |d: &Deleted| match d {
                    Deleted::Deleted => "ok".into(),
                    Deleted::AlreadyGone => "ok (already gone)".into(),
                },
            )
            .await
    }
}

/// A cloud resource kiln created, as the cleanup stack describes it (and as the
/// resource ledger will record it).
#[derive(Debug, Clone)]
pub struct Resource {
    /// None while the create request is in flight.
    pub id: Option<String>,
    pub name: String,
    pub endpoint: String,
}

impl Resource {
    fn describe(&self) -> String {
        match &self.id {
            Some(id) => format!("Glance image {id} ({:?}) at {}", self.name, self.endpoint),
            None => format!(
                "Glance image {:?} at {} (if its creation went through)",
                self.name, self.endpoint
            ),
        }
    }
}

/// A Glance image this build created and has not handed over yet: its deletion is on the
/// cleanup stack until [`Tracked::keep`] (it became the artifact) or [`Tracked::discard`]
/// (deleted now). These three are the resource seam: the one place an OpenStack resource
/// starts and stops being kiln's to undo, and where a resource ledger writes its intent,
/// created and released records beside the cleanup entry.
#[must_use = "an image left tracked is deleted when the build ends"]
pub struct Tracked {
    pub resource: Resource,
    cleanup_id: CleanupId,
    cleanup: CleanupStack,
}

impl Tracked {
    fn created(cloud: &Cloud, resource: Resource, cleanup: &CleanupStack) -> Tracked {
        let id = resource.id.clone().unwrap_or_default();
        let undo_cloud = cloud.clone();
        let cleanup_id = cleanup.push(resource.describe(), move || async move {
            undo_cloud.delete(&id, true).await?;
            Ok(())
        });
        tracing::info!(what = %resource.describe(), "tracking a created cloud resource");
        Tracked {
            resource,
            cleanup_id,
            cleanup: cleanup.clone(),
        }
    }

    /// The image is the build's artifact: a later failure no longer deletes it.
    pub fn keep(self) {
        self.cleanup.release(self.cleanup_id);
        tracing::info!(what = %self.resource.describe(), "kept as the artifact");
    }

    /// Deletes the image now (a failed hash check); the error, if the delete failed.
    pub async fn discard(self) -> Option<String> {
        let report = self.cleanup.undo_now(self.cleanup_id).await?;
        tracing::info!(what = %report.what, error = ?report.error, "discarded");
        report.error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_openstack::{CloudOptions, Environment, Secret};

    fn resolve(o: CloudOptions) -> CloudConfig {
        CloudConfig::resolve(&o, &Environment::empty()).unwrap()
    }

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(
            host_port("http://127.0.0.1:9292"),
            Some(("127.0.0.1".into(), 9292))
        );
        assert_eq!(
            host_port("https://Keystone.Example.com/v3"),
            Some(("keystone.example.com".into(), 443))
        );
        assert_eq!(
            host_port("http://u@[::1]:5000/identity"),
            Some(("::1".into(), 5000))
        );
        assert_eq!(host_port("http://h"), Some(("h".into(), 80)));
        assert_eq!(host_port("ftp://h"), None);
        assert_eq!(host_port("http://:80"), None);
        assert_eq!(host_port("http://h:x"), None);
    }

    #[test]
    fn identity_is_the_cloud_name_else_keystone_else_the_endpoint() {
        let named = CloudConfig {
            cloud: Some("mycloud".into()),
            ..resolve(CloudOptions {
                auth_type: Some("none".into()),
                endpoint: Some("http://127.0.0.1:9292".into()),
                ..Default::default()
            })
        };
        assert_eq!(identity(&named).object().as_deref(), Some("mycloud"));

        let standalone = resolve(CloudOptions {
            auth_type: Some("none".into()),
            endpoint: Some("http://127.0.0.1:9292/".into()),
            ..Default::default()
        });
        assert_eq!(
            identity(&standalone).object().as_deref(),
            Some("127.0.0.1:9292")
        );

        let keystone = resolve(CloudOptions {
            auth_url: Some("https://id.example.com:5000/v3".into()),
            username: Some("u".into()),
            password: Some(Secret::new("pw")),
            project_name: Some("p".into()),
            endpoint: Some("http://127.0.0.1:9292".into()),
            ..Default::default()
        });
        assert_eq!(
            identity(&keystone).object().as_deref(),
            Some("id.example.com:5000")
        );

        let token = resolve(CloudOptions {
            token: Some(Secret::new("t")),
            endpoint: Some("http://glance.example.com:9292".into()),
            ..Default::default()
        });
        assert_eq!(
            identity(&token).object().as_deref(),
            Some("glance.example.com:9292")
        );
    }

    #[test]
    fn grants_name_clouds_and_endpoints() {
        let mut g = crate::caps::Grants::default();
        let allow = ::rhai::Engine::new_raw()
            .eval::<::rhai::Map>(
                r#"#{ openstack: ["MyCloud", "127.0.0.1:9292", "id.example.com"] }"#,
            )
            .unwrap();
        g.apply_allow(&allow).unwrap();
        assert!(g.allows(&Use::host(&SPEC, "mycloud", None)));
        assert!(g.allows(&Use::host(&SPEC, "127.0.0.1", Some(9292))));
        assert!(!g.allows(&Use::host(&SPEC, "127.0.0.1", Some(9293))));
        assert!(g.allows(&Use::host(&SPEC, "id.example.com", Some(5000))));
        assert!(!g.allows(&Use::host(&SPEC, "othercloud", None)));
        assert_eq!(
            Use::host(&SPEC, "127.0.0.1", Some(9292)).allow_line(),
            r#"allow: #{ openstack: ["127.0.0.1:9292"] }"#
        );
    }
}
