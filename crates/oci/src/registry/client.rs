//! The HTTP side of the distribution spec: one client per registry host, with the auth
//! flows (anonymous, Basic, Bearer tokens from the registry's token service), bounded
//! JSON reads and streamed blob bodies.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::Deserialize;

use crate::digest::Digest;
use crate::media;

use super::auth::{Challenge, Credentials, Secret, basic_header, parse_challenge, resolve};
use super::error::{Details, RegistryError};

/// Largest error or token body read.
const MAX_SMALL_BODY: usize = 64 * 1024;

/// How to reach and authenticate to a registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    pub credentials: Credentials,
    /// Hosts (`host:port` as in references) that may be spoken to over plain HTTP:
    /// the registry itself and, for the bearer flow, its token service.
    pub insecure: Vec<String>,
    /// A PEM file of CA certificates trusted in addition to the system's.
    pub ca_file: Option<PathBuf>,
    /// Blobs larger than this are uploaded in `chunk_size` PATCH requests; smaller ones
    /// in one PUT. `u64::MAX` uploads everything monolithically.
    pub chunked_threshold: u64,
    pub chunk_size: u64,
    /// Blobs transferred at once by pulls and pushes.
    pub concurrency: usize,
    pub user_agent: String,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            credentials: Credentials::Anonymous,
            insecure: Vec::new(),
            ca_file: None,
            chunked_threshold: 1 << 30,
            chunk_size: 64 << 20,
            concurrency: 3,
            user_agent: concat!("kiln-oci/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

#[derive(Debug, Clone)]
enum Scheme {
    Basic,
    Bearer { realm: Url, service: Option<String> },
}

/// What authorization a request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Nothing,
    Basic,
    CachedToken,
    FreshToken,
}

#[derive(Default)]
struct AuthState {
    scheme: Option<Scheme>,
    /// Bearer tokens by scope set, with their expiry.
    tokens: HashMap<String, (Secret, Instant)>,
}

/// A client for one registry host.
pub struct RegistryClient {
    registry: String,
    base: Url,
    http: reqwest::Client,
    creds: Option<(String, Secret)>,
    insecure: Vec<String>,
    auth: Mutex<AuthState>,
    requests: AtomicU64,
    pub(crate) options: RegistryOptions,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("registry", &self.registry)
            .field("base", &self.base.as_str())
            .field(
                "credentials",
                &self.creds.as_ref().map(|(u, _)| (u, "<redacted>")),
            )
            .finish()
    }
}

/// A scope for the token service: `repository:<name>:<actions>`.
pub(crate) fn repo_scope(repo: &str, actions: &str) -> String {
    format!("repository:{repo}:{actions}")
}

/// The next error in a chain, looking inside `io::Error`s (whose `source()` skips the
/// error they wrap, which is where TLS failures hide).
fn next_cause<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a (dyn std::error::Error + 'static)> {
    if let Some(io) = e.downcast_ref::<std::io::Error>()
        && let Some(inner) = io.get_ref()
    {
        return Some(inner);
    }
    e.source()
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let t = err.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = next_cause(err);
    }
    parts.join(": ")
}

fn tls_message(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        cur = next_cause(err);
    }
    None
}

fn host_port(u: &Url) -> String {
    match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

impl RegistryClient {
    /// A client for `registry` (`host[:port]`; `docker.io` means Docker Hub).
    pub fn new(registry: &str, options: RegistryOptions) -> Result<Self, RegistryError> {
        let insecure = options.insecure.clone();
        let scheme = if insecure.iter().any(|h| h == registry) {
            "http"
        } else {
            "https"
        };
        let endpoint = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        let base = Url::parse(&format!("{scheme}://{endpoint}/")).map_err(|_| {
            RegistryError::Reference(super::reference::BadReference {
                reference: registry.to_string(),
                reason: "the registry host is not host[:port]",
            })
        })?;
        let creds = resolve(&options.credentials, registry)?;
        let redirect_insecure = insecure.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("more than 5 redirects")
            } else if attempt.url().scheme() != "https"
                && !redirect_insecure
                    .iter()
                    .any(|h| *h == host_port(attempt.url()))
            {
                attempt.error("refusing a redirect to plain HTTP")
            } else {
                attempt.follow()
            }
        });
        let mut b = reqwest::Client::builder()
            .user_agent(options.user_agent.clone())
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(300))
            .redirect(policy);
        if let Some(p) = &options.ca_file {
            let ca_err = |reason: String| RegistryError::CaFile {
                path: p.clone(),
                reason,
            };
            let pem = std::fs::read(p).map_err(|e| ca_err(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(error_chain(&e)))?;
            if certs.is_empty() {
                return Err(ca_err("no PEM certificate in it".into()));
            }
            b = b.tls_certs_merge(certs);
        }
        let http = b.build().map_err(|e| RegistryError::Transport {
            registry: registry.to_string(),
            message: error_chain(&e),
        })?;
        Ok(RegistryClient {
            registry: registry.to_string(),
            base,
            http,
            creds,
            insecure,
            auth: Mutex::new(AuthState::default()),
            requests: AtomicU64::new(0),
            options,
        })
    }

    /// The registry host this client talks to.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// HTTP requests sent so far (token requests included).
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn url(&self, path: &str) -> Result<Url, RegistryError> {
        self.base
            .join(path)
            .map_err(|e| self.protocol("building a URL", e.to_string()))
    }

    pub(crate) fn protocol(&self, op: &'static str, message: String) -> RegistryError {
        RegistryError::Protocol {
            registry: self.registry.clone(),
            op,
            message,
        }
    }

    pub(crate) fn transport(&self, e: reqwest::Error) -> RegistryError {
        let e = e.without_url();
        if let Some(m) = tls_message(&e) {
            return RegistryError::Tls {
                registry: self.registry.clone(),
                message: m,
            };
        }
        RegistryError::Transport {
            registry: self.registry.clone(),
            message: error_chain(&e),
        }
    }

    /// Resolves a `Location` header against the registry's URL.
    pub(crate) fn location(
        &self,
        op: &'static str,
        headers: &HeaderMap,
    ) -> Result<Url, RegistryError> {
        let loc = headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.protocol(op, "no Location header".into()))?;
        let u = self
            .base
            .join(loc)
            .map_err(|e| self.protocol(op, format!("bad Location: {e}")))?;
        if u.scheme() != "https" && !self.insecure.iter().any(|h| *h == host_port(&u)) {
            return Err(RegistryError::Insecure(format!(
                "{} sent an upload location on plain HTTP ({}): refusing it; list that host as insecure if this is intended",
                self.registry,
                host_port(&u)
            )));
        }
        Ok(u)
    }

    /// Reads at most `limit` bytes of a body; more is an error.
    pub(crate) async fn read_bounded(
        &self,
        op: &'static str,
        mut resp: Response,
        limit: usize,
    ) -> Result<Vec<u8>, RegistryError> {
        if let Some(len) = resp.content_length()
            && len > limit as u64
        {
            return Err(self.protocol(
                op,
                format!("the response is {len} bytes, more than the {limit} accepted"),
            ));
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(e))? {
            if out.len() + chunk.len() > limit {
                return Err(self.protocol(
                    op,
                    format!("the response is more than the {limit} bytes accepted"),
                ));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    async fn details(&self, resp: Response) -> Details {
        match self
            .read_bounded("reading an error", resp, MAX_SMALL_BODY)
            .await
        {
            Ok(b) => Details::parse(&b),
            Err(_) => Details::default(),
        }
    }

    /// Turns a failed response into the right error.
    pub(crate) async fn fail(
        &self,
        op: &'static str,
        resp: Response,
        repository: &str,
        what: &'static str,
        reference: &str,
        scopes: &[String],
    ) -> RegistryError {
        let status = resp.status();
        let details = self.details(resp).await;
        match status {
            StatusCode::UNAUTHORIZED => RegistryError::Unauthorized {
                registry: self.registry.clone(),
                scope: if scopes.is_empty() {
                    "the registry".into()
                } else {
                    scopes.join(" ")
                },
                details,
            },
            StatusCode::FORBIDDEN => RegistryError::Denied {
                registry: self.registry.clone(),
                repository: repository.into(),
                details,
            },
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                registry: self.registry.clone(),
                repository: repository.into(),
                what,
                reference: reference.into(),
                details,
            },
            s => RegistryError::Status {
                registry: self.registry.clone(),
                op,
                status: s.as_u16(),
                details,
            },
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AuthState> {
        // A panic while holding the lock cannot leave the state inconsistent (it is a
        // cache), so a poisoned lock is used as is.
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `Authorization` value for a request needing `scopes`, fetching a token if the
    /// registry uses bearer tokens and none is cached.
    async fn authorization(
        &self,
        scopes: &[String],
    ) -> Result<(Option<String>, Sent), RegistryError> {
        let key = scopes.join(" ");
        let scheme = {
            let st = self.state();
            if let Some((tok, exp)) = st.tokens.get(&key)
                && *exp > Instant::now()
            {
                return Ok((Some(format!("Bearer {}", tok.expose())), Sent::CachedToken));
            }
            st.scheme.clone()
        };
        match scheme {
            None => Ok((None, Sent::Nothing)),
            Some(Scheme::Basic) => Ok(match &self.creds {
                Some((u, p)) => (Some(basic_header(u, p)), Sent::Basic),
                None => (None, Sent::Nothing),
            }),
            Some(Scheme::Bearer { realm, service }) => {
                let (tok, ttl) = self.fetch_token(&realm, service.as_deref(), scopes).await?;
                let header = format!("Bearer {}", tok.expose());
                // Renew a little early so a token never expires mid-request.
                let exp = Instant::now()
                    + ttl
                        .saturating_sub(Duration::from_secs(10))
                        .max(Duration::from_secs(1));
                self.state().tokens.insert(key, (tok, exp));
                Ok((Some(header), Sent::FreshToken))
            }
        }
    }

    /// The token service's answer for `scopes` (the distribution token spec).
    async fn fetch_token(
        &self,
        realm: &Url,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<(Secret, Duration), RegistryError> {
        let mut url = realm.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        let mut rb = self.http.get(url);
        if let Some((u, p)) = &self.creds {
            rb = rb.header(AUTHORIZATION, basic_header(u, p));
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let resp = rb.send().await.map_err(|e| self.transport(e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let details = self.details(resp).await;
            return Err(
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    RegistryError::Unauthorized {
                        registry: self.registry.clone(),
                        scope: if scopes.is_empty() {
                            "the registry".into()
                        } else {
                            scopes.join(" ")
                        },
                        details,
                    }
                } else {
                    RegistryError::Status {
                        registry: self.registry.clone(),
                        op: "requesting a token",
                        status: status.as_u16(),
                        details,
                    }
                },
            );
        }
        #[derive(Deserialize)]
        struct TokenBody {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let body = self
            .read_bounded("requesting a token", resp, MAX_SMALL_BODY)
            .await?;
        let t: TokenBody = serde_json::from_slice(&body).map_err(|e| {
            self.protocol(
                "requesting a token",
                format!("the token response is not JSON: {e}"),
            )
        })?;
        let tok = t
            .token
            .filter(|s| !s.is_empty())
            .or(t.access_token.filter(|s| !s.is_empty()))
            .ok_or_else(|| {
                self.protocol(
                    "requesting a token",
                    "the token response has no token".into(),
                )
            })?;
        // The spec's default lifetime is 60 s.
        let ttl = Duration::from_secs(t.expires_in.unwrap_or(60).clamp(1, 86_400));
        Ok((Secret::new(tok), ttl))
    }

    /// Learns the auth scheme from a 401 to a request that carried `sent`; returns
    /// whether a retry can succeed (several requests may race here: each one that went
    /// out without credentials, or with a cached token, gets its retry).
    fn learn(
        &self,
        headers: &HeaderMap,
        scopes: &[String],
        sent: Sent,
    ) -> Result<bool, RegistryError> {
        let Some(ch) = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
        else {
            return Ok(false);
        };
        let mut st = self.state();
        match ch {
            Challenge::Basic => {
                if self.creds.is_none() || sent == Sent::Basic {
                    return Ok(false);
                }
                st.scheme = Some(Scheme::Basic);
                Ok(true)
            }
            Challenge::Bearer { realm, service, .. } => {
                let realm = Url::parse(&realm).map_err(|e| {
                    self.protocol(
                        "authenticating",
                        format!("the token realm is not a URL: {e}"),
                    )
                })?;
                if realm.scheme() != "https"
                    && !self.insecure.iter().any(|h| *h == host_port(&realm))
                {
                    return Err(RegistryError::Insecure(format!(
                        "{} sends clients to a token service on plain HTTP ({}): refusing to send credentials there; list that host as insecure if this is intended",
                        self.registry,
                        host_port(&realm)
                    )));
                }
                if sent == Sent::CachedToken {
                    st.tokens.remove(&scopes.join(" "));
                }
                st.scheme = Some(Scheme::Bearer { realm, service });
                // A token just issued for these scopes and refused means the
                // credentials lack the access: asking again would not help.
                Ok(sent != Sent::FreshToken)
            }
        }
    }

    /// Sends a request built by `build`, with authorization for `scopes`, retrying once
    /// after learning the auth scheme from a 401. `build` is called per attempt so a
    /// streamed body can be made again.
    pub(crate) async fn send(
        &self,
        scopes: &[String],
        build: &(dyn Fn(&reqwest::Client) -> Result<RequestBuilder, RegistryError> + Sync),
    ) -> Result<Response, RegistryError> {
        let mut attempt = 0;
        loop {
            let mut rb = build(&self.http)?;
            let (auth, sent) = self.authorization(scopes).await?;
            if let Some(h) = auth {
                rb = rb.header(AUTHORIZATION, h);
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let resp = rb.send().await.map_err(|e| self.transport(e))?;
            if resp.status() != StatusCode::UNAUTHORIZED || attempt > 0 {
                return Ok(resp);
            }
            attempt += 1;
            if !self.learn(resp.headers(), scopes, sent)? {
                return Ok(resp);
            }
        }
    }

    /// Checks that the registry answers and accepts the credentials (`GET /v2/`).
    pub async fn check(&self) -> Result<(), RegistryError> {
        let url = self.url("v2/")?;
        let resp = self.send(&[], &|c| Ok(c.get(url.clone()))).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(self
            .fail("checking the registry", resp, "", "endpoint", "/v2/", &[])
            .await)
    }

    /// Fetches a manifest or index by tag or digest; the digest is always verified (by
    /// digest reference, or against `Docker-Content-Digest` for a tag).
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let scopes = [repo_scope(repo, "pull")];
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let accept = [
            media::OCI_MANIFEST,
            media::OCI_INDEX,
            media::DOCKER_MANIFEST,
            media::DOCKER_MANIFEST_LIST,
        ]
        .join(", ");
        let resp = self
            .send(&scopes, &|c| {
                Ok(c.get(url.clone()).header(ACCEPT, accept.clone()))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self
                .fail(
                    "fetching a manifest",
                    resp,
                    repo,
                    "manifest",
                    reference,
                    &scopes,
                )
                .await);
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok());
        let bytes = self
            .read_bounded("fetching a manifest", resp, crate::image::MAX_DOC)
            .await?;
        let digest = Digest::of(&bytes);
        let expected = reference.parse::<Digest>().ok().or(header_digest);
        if let Some(exp) = expected
            && exp != digest
        {
            return Err(RegistryError::DigestMismatch {
                registry: self.registry.clone(),
                what: format!("manifest {repo}:{reference}"),
                expected: exp,
                actual: digest,
            });
        }
        let doc = crate::image::parse_manifest(&bytes, content_type.as_deref())?;
        let media_type = match &doc {
            crate::image::ManifestDoc::Image(m) => m.media_type.clone(),
            crate::image::ManifestDoc::Index(i) => i.media_type.clone(),
        }
        .or(content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| match &doc {
            crate::image::ManifestDoc::Image(_) => media::OCI_MANIFEST.into(),
            crate::image::ManifestDoc::Index(_) => media::OCI_INDEX.into(),
        });
        Ok(FetchedManifest {
            descriptor: crate::image::Descriptor::new(&media_type, digest, bytes.len() as u64),
            bytes,
            doc,
        })
    }

    /// Does the blob exist in `repo`? Its size if so.
    pub async fn blob_exists(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let scopes = [repo_scope(repo, "pull")];
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let resp = self
            .send(&scopes, &|c| Ok(c.request(Method::HEAD, url.clone())))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(Some(
                resp.headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self
                .fail(
                    "checking a blob",
                    resp,
                    repo,
                    "blob",
                    &digest.to_string(),
                    &scopes,
                )
                .await),
        }
    }

    /// Uploads a manifest or index under `reference` (a tag or its digest); returns the
    /// digest the registry reports, which must be the digest of `bytes`.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let scopes = [repo_scope(repo, "pull,push")];
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let body = bytes.to_vec();
        let mt = media_type.to_string();
        let resp = self
            .send(&scopes, &|c| {
                Ok(c.put(url.clone())
                    .header(CONTENT_TYPE, mt.clone())
                    .body(body.clone()))
            })
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(self
                .fail(
                    "pushing a manifest",
                    resp,
                    repo,
                    "manifest",
                    reference,
                    &scopes,
                )
                .await);
        }
        let ours = Digest::of(bytes);
        if let Some(theirs) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok())
            && theirs != ours
        {
            return Err(RegistryError::DigestMismatch {
                registry: self.registry.clone(),
                what: format!("the manifest stored as {repo}:{reference}"),
                expected: ours,
                actual: theirs,
            });
        }
        Ok(ours)
    }

    pub(crate) fn path_io(path: &Path, source: std::io::Error) -> RegistryError {
        RegistryError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A manifest or index as fetched: the exact bytes (their digest is the manifest's
/// identity), its descriptor and the parsed document.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub descriptor: crate::image::Descriptor,
    pub bytes: Vec<u8>,
    pub doc: crate::image::ManifestDoc,
}
