//! The Glance Images API v2 client: create, upload (direct or the glance-direct import flow),
//! wait for `active`, show, find by name, patch, delete.
//!
//! The caller's flow (kiln's `openstack_image` post-processor):
//! [`Glance::create`] → record the id (cleanup stack, manifest) → [`Glance::upload`] (or
//! [`Glance::stage`] + [`Glance::import_staged`]) → [`Glance::wait_active`] →
//! [`Image::verify`](crate::Image::verify) against the [`UploadReport`]; on any failure
//! [`Glance::delete`].

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};

use crate::config::{Auth, CloudConfig};
use crate::error::Error;
use crate::http::{self, Caller};
use crate::image::{Image, ImagePatch, ImageStatus, NewImage, UploadReport};
use crate::keystone;
use crate::secret::Secret;
use crate::upload::{FileBody, ProgressFn};

const PATCH_TYPE: &str = "application/openstack-images-v2.1-json-patch";
/// find_by_name follows `next` links at most this often (100 images a page).
const MAX_PAGES: usize = 100;

/// An authenticated Glance client. Cheap to clone; the token is shared and refreshed once on
/// a 401 when the credentials allow it (password, application credential).
#[derive(Clone)]
pub struct Glance {
    http: reqwest::Client,
    endpoint: String,
    state: Arc<AuthState>,
}

struct AuthState {
    auth: Auth,
    token: RwLock<Option<Secret>>,
    project_id: Option<String>,
}

impl std::fmt::Debug for Glance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Glance")
            .field("endpoint", &self.endpoint)
            .field("auth", &self.state.auth.kind())
            .field("project_id", &self.state.project_id)
            .finish_non_exhaustive()
    }
}

/// The answer to `create`: the image, and the import methods the cloud advertised in the
/// `OpenStack-image-import-methods` header.
#[derive(Clone, Debug)]
pub struct Created {
    pub image: Image,
    pub import_methods: Vec<String>,
}

impl Created {
    pub fn offers(&self, method: &str) -> bool {
        self.import_methods.iter().any(|m| m == method)
    }
}

/// How long and how often `wait_active` polls.
#[derive(Clone, Copy, Debug)]
pub struct WaitOptions {
    pub timeout: Duration,
    pub interval: Duration,
}

impl Default for WaitOptions {
    fn default() -> WaitOptions {
        WaitOptions {
            timeout: Duration::from_secs(30 * 60),
            interval: Duration::from_secs(2),
        }
    }
}

/// What `delete` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    /// There was no such image (deleting is idempotent, for cleanup).
    AlreadyGone,
}

enum Payload {
    None,
    Json(Value),
    Patch(Value),
}

impl Glance {
    /// Authenticates as `cfg` says and finds the image endpoint (explicit, or from the catalog).
    pub async fn connect(cfg: &CloudConfig) -> Result<Glance, Error> {
        let client = http::client(cfg)?;
        let token = match (&cfg.auth, &cfg.endpoint) {
            // a pre-issued token with an explicit endpoint is used as is
            (Auth::Token { .. }, Some(_)) => None,
            _ => keystone::authenticate(&client, &cfg.auth).await?,
        };
        let (token_secret, project_id, endpoint) = match (token, &cfg.endpoint) {
            (Some(t), Some(e)) => {
                tracing::debug!(expires_at = ?t.expires_at, "got a Keystone token");
                (Some(t.token), t.project_id, e.clone())
            }
            (Some(t), None) => {
                tracing::debug!(expires_at = ?t.expires_at, "got a Keystone token");
                let e = keystone::select_endpoint(
                    &t.catalog,
                    "image",
                    cfg.interface,
                    cfg.region_name.as_deref(),
                )?;
                (Some(t.token), t.project_id, e)
            }
            (None, Some(e)) => {
                let tok = match &cfg.auth {
                    Auth::Token { token, .. } => Some(token.clone()),
                    _ => None,
                };
                (tok, None, e.clone())
            }
            (None, None) => {
                // config::build guarantees an endpoint for auth without Keystone
                return Err(Error::InvalidRequest(
                    "no image endpoint and no Keystone to ask for one".into(),
                ));
            }
        };
        let endpoint = strip_version(&endpoint);
        tracing::debug!(endpoint = %endpoint, auth = cfg.auth.kind(), "glance client ready");
        Ok(Glance {
            http: client,
            endpoint,
            state: Arc::new(AuthState {
                auth: cfg.auth.clone(),
                token: RwLock::new(token_secret),
                project_id,
            }),
        })
    }

    /// The image endpoint used (without `/v2`), for the manifest.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The project the token is scoped to (None without Keystone).
    pub fn project_id(&self) -> Option<&str> {
        self.state.project_id.as_deref()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.endpoint, path)
    }

    fn token(&self) -> Option<Secret> {
        match self.state.token.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn caller(&self) -> Caller {
        let (credential, sent_token) = match &self.state.auth {
            Auth::None => (
                "auth settings: this endpoint wants a token (set OS_TOKEN, or use Keystone auth)",
                false,
            ),
            Auth::Token { .. } => ("token", true),
            _ => ("credentials", true),
        };
        Caller {
            service: "Glance",
            credential,
            sent_token,
        }
    }

    fn can_reauth(&self) -> bool {
        matches!(
            self.state.auth,
            Auth::Password { .. }
                | Auth::ApplicationCredential { .. }
                | Auth::Token {
                    auth_url: Some(_),
                    ..
                }
        )
    }

    async fn reauth(&self) -> Result<(), Error> {
        if let Some(t) = keystone::authenticate(&self.http, &self.state.auth).await? {
            match self.state.token.write() {
                Ok(mut g) => *g = Some(t.token),
                Err(p) => *p.into_inner() = Some(t.token),
            }
        }
        Ok(())
    }

    fn builder(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let mut b = self
            .http
            .request(method, url)
            .header(ACCEPT, "application/json");
        if let Some(t) = self.token() {
            b = b.header("X-Auth-Token", t.expose());
        }
        b
    }

    /// A JSON request with the 401 → re-authenticate → retry-once rule; returns the response
    /// when its status is one of `ok`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        payload: Payload,
        what: &str,
    ) -> Result<reqwest::Response, Error> {
        let url = self.url(path);
        let mut retried = false;
        loop {
            let mut b = self
                .builder(method.clone(), &url)
                .timeout(http::REQUEST_TIMEOUT);
            b = match &payload {
                Payload::None => b,
                Payload::Json(v) => b
                    .header(CONTENT_TYPE, "application/json")
                    .body(serde_json::to_vec(v).unwrap_or_default()),
                Payload::Patch(v) => b
                    .header(CONTENT_TYPE, PATCH_TYPE)
                    .body(serde_json::to_vec(v).unwrap_or_default()),
            };
            let resp = b.send().await.map_err(|e| http::transport(&url, e))?;
            if resp.status().is_success() {
                return Ok(resp);
            }
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && !retried && self.can_reauth() {
                tracing::debug!(what, "Glance answered 401; getting a new token once");
                retried = true;
                self.reauth().await?;
                continue;
            }
            return Err(http::status_error(resp, what, &url, self.caller()).await);
        }
    }

    /// `POST /v2/images`.
    pub async fn create(&self, new: &NewImage) -> Result<Created, Error> {
        let body = new.to_json()?;
        let what = format!("creating image {:?}", new.name);
        let resp = self
            .call(Method::POST, "/v2/images", Payload::Json(body), &what)
            .await?;
        let import_methods = import_methods_header(resp.headers());
        let v: Value = http::read_json(resp, &what, &self.url("/v2/images")).await?;
        let image = Image::from_json(v)?;
        tracing::info!(id = %image.id, name = %new.name, "created Glance image");
        Ok(Created {
            image,
            import_methods,
        })
    }

    /// `GET /v2/images/{id}`.
    pub async fn show(&self, id: &str) -> Result<Image, Error> {
        let path = format!("/v2/images/{}", check_id(id)?);
        let what = format!("image {id}");
        let resp = self.call(Method::GET, &path, Payload::None, &what).await?;
        Image::from_json(http::read_json(resp, &what, &self.url(&path)).await?)
    }

    /// The import methods the cloud offers (`GET /v2/info/import`).
    pub async fn import_methods(&self) -> Result<Vec<String>, Error> {
        let what = "listing import methods";
        let resp = self
            .call(Method::GET, "/v2/info/import", Payload::None, what)
            .await?;
        let v: Value = http::read_json(resp, what, &self.url("/v2/info/import")).await?;
        Ok(v.pointer("/import-methods/value")
            .and_then(|m| m.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Uploads `file` as the image's data (`PUT /v2/images/{id}/file`), streamed with a
    /// `Content-Length`, hashed on the way. Glance then computes its own hash (`saving` → `active`).
    pub async fn upload(
        &self,
        id: &str,
        file: &Path,
        progress: Option<ProgressFn>,
    ) -> Result<UploadReport, Error> {
        let path = format!("/v2/images/{}/file", check_id(id)?);
        self.put_data(&path, file, progress, &format!("uploading image {id}"))
            .await
    }

    /// Stages `file` for an import (`PUT /v2/images/{id}/stage`); follow with
    /// [`import_staged`](Self::import_staged).
    pub async fn stage(
        &self,
        id: &str,
        file: &Path,
        progress: Option<ProgressFn>,
    ) -> Result<UploadReport, Error> {
        let path = format!("/v2/images/{}/stage", check_id(id)?);
        self.put_data(&path, file, progress, &format!("staging image {id}"))
            .await
    }

    /// Starts the `glance-direct` import of staged data (`POST /v2/images/{id}/import`).
    /// `offered` is what the cloud advertised ([`Created::import_methods`]).
    pub async fn import_staged(&self, id: &str, offered: &[String]) -> Result<(), Error> {
        let method = "glance-direct";
        if !offered.iter().any(|m| m == method) {
            return Err(Error::ImportNotOffered {
                method: method.into(),
                offered: if offered.is_empty() {
                    "none".into()
                } else {
                    offered.join(", ")
                },
            });
        }
        let path = format!("/v2/images/{}/import", check_id(id)?);
        let body = json!({ "method": { "name": method } });
        self.call(
            Method::POST,
            &path,
            Payload::Json(body),
            &format!("importing image {id}"),
        )
        .await?;
        Ok(())
    }

    async fn put_data(
        &self,
        path: &str,
        file: &Path,
        progress: Option<ProgressFn>,
        what: &str,
    ) -> Result<UploadReport, Error> {
        let url = self.url(path);
        let mut fb = FileBody::open(file, progress).await?;
        tracing::info!(what, bytes = fb.len, "streaming image data to Glance");
        let body = std::mem::replace(&mut fb.body, reqwest::Body::from(Vec::new()));
        // no overall timeout: a big image takes long; the client's read timeout catches a
        // connection that stalls
        let sent = self
            .builder(Method::PUT, &url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, fb.len)
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                // a broken local read shows up as a failed request: report the real cause.
                // The body is gone with the request, so the reader reports within moments.
                return Err(fb
                    .local_error(Duration::from_secs(10))
                    .await
                    .unwrap_or_else(|| http::transport(&url, e)));
            }
        };
        if !resp.status().is_success() {
            return Err(http::status_error(resp, what, &url, self.caller()).await);
        }
        let report = fb.finish().await?;
        tracing::info!(
            what,
            bytes = report.bytes,
            secs = report.elapsed.as_secs_f64(),
            "image data sent"
        );
        Ok(report)
    }

    /// Polls until the image is `active`; `killed` (or deleted, deactivated, a failed import)
    /// is an error at once, and so is the timeout, naming the last status seen. Transient poll
    /// failures (5xx, connection trouble) are retried until the timeout.
    pub async fn wait_active(&self, id: &str, opts: WaitOptions) -> Result<Image, Error> {
        let start = Instant::now();
        let mut last_status = "unknown (no answer yet)".to_string();
        loop {
            match self.show(id).await {
                Ok(img) => {
                    if img.status == ImageStatus::Active {
                        return Ok(img);
                    }
                    if img.status.is_failed() {
                        return Err(Error::ImageFailed {
                            id: id.to_string(),
                            status: img.status.to_string(),
                            detail: match img.status {
                                ImageStatus::Killed => {
                                    ": Glance could not store the data (see the Glance log); delete it and upload again".into()
                                }
                                _ => String::new(),
                            },
                        });
                    }
                    if let Some(stores) = img
                        .properties
                        .get("os_glance_failed_import")
                        .filter(|s| !s.is_empty())
                    {
                        return Err(Error::ImageFailed {
                            id: id.to_string(),
                            status: img.status.to_string(),
                            detail: format!(": the import failed for store(s) {stores}"),
                        });
                    }
                    last_status = img.status.to_string();
                }
                Err(e @ (Error::Api { .. } | Error::Transport { .. } | Error::Connect { .. })) => {
                    tracing::warn!(id, error = %e, "polling the image failed; retrying");
                    last_status = format!("{last_status} (last poll failed: {e})");
                }
                Err(e) => return Err(e),
            }
            let waited = start.elapsed();
            if waited >= opts.timeout {
                return Err(Error::Timeout {
                    id: id.to_string(),
                    waited_for: "active".into(),
                    last_status,
                    after: waited,
                });
            }
            tokio::time::sleep(opts.interval.min(opts.timeout - waited)).await;
        }
    }

    /// Images named exactly `name` (and owned by `owner`, when given), oldest first.
    pub async fn find_by_name(&self, name: &str, owner: Option<&str>) -> Result<Vec<Image>, Error> {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("name", name);
        if let Some(o) = owner {
            q.append_pair("owner", o);
        }
        q.append_pair("limit", "100");
        q.append_pair("sort", "created_at:asc");
        let mut path = format!("/v2/images?{}", q.finish());
        let what = format!("listing images named {name:?}");
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let resp = self.call(Method::GET, &path, Payload::None, &what).await?;
            let v: Value = http::read_json(resp, &what, &self.url(&path)).await?;
            let images = v.get("images").and_then(|i| i.as_array()).ok_or_else(|| {
                Error::InvalidResponse {
                    what: what.clone(),
                    detail: "no `images` list".into(),
                }
            })?;
            for i in images {
                let img = Image::from_json(i.clone())?;
                // the filter is Glance's; check anyway, a name match is what the caller relies on
                if img.name.as_deref() == Some(name) {
                    out.push(img);
                }
            }
            match v.get("next").and_then(|n| n.as_str()) {
                // `next` is a path (`/v2/images?marker=…`); refuse anything else
                Some(n) if n.starts_with("/v2/images?") => path = n.to_string(),
                _ => return Ok(out),
            }
        }
        Err(Error::ResponseTooLarge {
            what,
            limit: MAX_PAGES * 100,
        })
    }

    /// Applies `changes` as one JSON-patch (`PATCH /v2/images/{id}`).
    pub async fn update(&self, id: &str, changes: &[ImagePatch]) -> Result<Image, Error> {
        let path = format!("/v2/images/{}", check_id(id)?);
        let ops = changes
            .iter()
            .map(ImagePatch::to_json)
            .collect::<Result<Vec<_>, _>>()?;
        let what = format!("updating image {id}");
        let resp = self
            .call(
                Method::PATCH,
                &path,
                Payload::Patch(Value::Array(ops)),
                &what,
            )
            .await?;
        Image::from_json(http::read_json(resp, &what, &self.url(&path)).await?)
    }

    /// Deletes the image; with `unprotect`, a protected image is unprotected first (otherwise
    /// Glance refuses with 403). A missing image is [`Deleted::AlreadyGone`].
    pub async fn delete(&self, id: &str, unprotect: bool) -> Result<Deleted, Error> {
        let path = format!("/v2/images/{}", check_id(id)?);
        if unprotect {
            match self.show(id).await {
                Ok(img) if img.protected => {
                    tracing::info!(id, "unprotecting the image before deleting it");
                    self.update(id, &[ImagePatch::SetProtected(false)]).await?;
                }
                Ok(_) => {}
                Err(Error::NotFound { .. }) => return Ok(Deleted::AlreadyGone),
                Err(e) => return Err(e),
            }
        }
        // An image whose upload was just cut is still `saving` on Glance's side until the
        // upload request ends there; meanwhile a delete can answer 409 or 500. Cleanup
        // must not give up on that: try again for about half a minute.
        let mut pause = Duration::from_millis(500);
        let mut tries = 0;
        loop {
            tries += 1;
            match self
                .call(
                    Method::DELETE,
                    &path,
                    Payload::None,
                    &format!("deleting image {id}"),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(id, "deleted Glance image");
                    return Ok(Deleted::Deleted);
                }
                Err(Error::NotFound { .. }) => return Ok(Deleted::AlreadyGone),
                Err(e @ (Error::Conflict { .. } | Error::Api { .. })) if tries < 10 => {
                    if let Error::Api { status, .. } = &e
                        && *status < 500
                    {
                        return Err(e);
                    }
                    tracing::info!(id, error = %e, "Glance refused the delete for now; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Image ids go into URL paths: allow only what Glance ids (UUIDs) are made of.
fn check_id(id: &str) -> Result<&str, Error> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(id)
    } else {
        Err(Error::InvalidRequest(format!(
            "{id:?} is not an image id (expected a UUID)"
        )))
    }
}

fn import_methods_header(h: &HeaderMap) -> Vec<String> {
    h.get("openstack-image-import-methods")
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(',')
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Catalog image endpoints sometimes carry the API version (`…/v2`, `…/v2.1/`); this client
/// adds `/v2/…` itself.
fn strip_version(e: &str) -> String {
    let e = e.trim_end_matches('/');
    if let Some((base, last)) = e.rsplit_once('/')
        && last.len() >= 2
        && last.starts_with('v')
        && last[1..].chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return base.to_string();
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_stripped_from_endpoints() {
        assert_eq!(strip_version("http://h:9292"), "http://h:9292");
        assert_eq!(strip_version("http://h:9292/"), "http://h:9292");
        assert_eq!(strip_version("https://h/image/v2/"), "https://h/image");
        assert_eq!(strip_version("https://h/image/v2.1"), "https://h/image");
        assert_eq!(strip_version("https://h/images"), "https://h/images");
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("7eca3b96-872a-4bd4-a5ab-dc410788378b").is_ok());
        assert!(check_id("../../v3").is_err());
        assert!(check_id("").is_err());
        assert!(check_id("a?b").is_err());
    }

    #[test]
    fn import_methods_from_header() {
        let mut h = HeaderMap::new();
        h.insert(
            "OpenStack-image-import-methods",
            "glance-direct, web-download".parse().unwrap(),
        );
        assert_eq!(
            import_methods_header(&h),
            vec!["glance-direct", "web-download"]
        );
        assert!(import_methods_header(&HeaderMap::new()).is_empty());
    }
}
