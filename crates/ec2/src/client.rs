//! The client and its transport: one signed, form-encoded POST per attempt, bounded answer
//! reads, retries with backoff for throttling, 5xx and connection failures, one observer
//! record per attempt, and NextToken pagination.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Url;
use time::OffsetDateTime;

use crate::credentials::{Credentials, CredentialsConfig, Environment, resolve_region};
use crate::error::{ApiError, Ec2Error, is_auth_code, is_throttling_code, is_transient_code};
use crate::observer::{CallOutcome, CallRecord, CallStats, Counters, Observer, TransportFailure};
use crate::params::{EC2_API_VERSION, Params};
use crate::retry::RetryPolicy;
use crate::sign::{SignContext, SignRequest, amz_date, sign};
use crate::xml::{self, NodeExt};

/// Error answers are read up to this size; a larger one is cut (it is only a message).
const MAX_ERROR_BODY: usize = 256 * 1024;
/// A paginated listing stops with an error after this many pages (a server that never stops
/// handing out tokens).
const MAX_PAGES: usize = 10_000;

/// Settings of a client; `Default` is right for AWS.
#[derive(Clone)]
pub struct ClientConfig {
    /// A custom endpoint such as `http://127.0.0.1:5000` (moto, LocalStack, a VPC endpoint);
    /// used for every region. `None` = `https://ec2.<region>.amazonaws.com`.
    pub endpoint: Option<String>,
    pub retry: RetryPolicy,
    pub connect_timeout: Duration,
    /// Per attempt, answer included.
    pub request_timeout: Duration,
    /// Successful answers larger than this are refused ([`Ec2Error::TooLarge`]).
    pub max_response_bytes: usize,
    /// `MaxResults` for paginated Describe calls; `None` = the server's default page.
    pub page_size: Option<u32>,
    /// Called after every HTTP attempt.
    pub observer: Option<Observer>,
    /// The endpoint ignores `ClientToken` and has no `client-token` filter (moto does this):
    /// [`Ec2Client::find_instances_by_client_token`] then scans the instances and compares
    /// their `clientToken`, and [`Ec2Client::run_instance`] looks the token up before
    /// launching, so a repeated launch still returns the first instance. Off for AWS, where
    /// the server guarantees it.
    pub emulate_client_tokens: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoint: None,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_response_bytes: 64 * 1024 * 1024,
            page_size: None,
            observer: None,
            emulate_client_tokens: false,
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoint", &self.endpoint)
            .field("retry", &self.retry)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("page_size", &self.page_size)
            .field("observer", &self.observer.as_ref().map(|_| "<fn>"))
            .field("emulate_client_tokens", &self.emulate_client_tokens)
            .finish()
    }
}

struct Shared {
    http: reqwest::Client,
    credentials: Credentials,
    config: ClientConfig,
    counters: Counters,
}

/// An EC2 client for one region. Cheap to clone; clones and [`Ec2Client::for_region`]
/// share the connection pool, credentials, observer and counters.
#[derive(Clone)]
pub struct Ec2Client {
    shared: Arc<Shared>,
    region: String,
    url: Url,
    /// The `host[:port]` that is signed and sent.
    host: String,
}

impl std::fmt::Debug for Ec2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Client")
            .field("region", &self.region)
            .field("endpoint", &self.url.as_str())
            .field("credentials", &self.shared.credentials)
            .finish()
    }
}

/// Whether repeating a request whose fate is unknown (sent, no answer) is harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotent {
    Yes,
    No,
}

impl Ec2Client {
    pub fn new(
        region: &str,
        credentials: Credentials,
        config: ClientConfig,
    ) -> Result<Self, Ec2Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("kiln-ec2/", env!("CARGO_PKG_VERSION")))
            // EC2 never redirects; a redirect would re-send a signed body elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Ec2Error::InvalidInput(format!("cannot build the HTTP client: {e}")))?;
        let shared = Arc::new(Shared {
            http,
            credentials,
            config,
            counters: Counters::default(),
        });
        Self::with_shared(shared, region)
    }

    /// Resolves the credentials and the region (when `region` is `None`) the AWS way, from
    /// `env`, then builds the client.
    pub fn from_environment(
        region: Option<&str>,
        credentials: &CredentialsConfig,
        config: ClientConfig,
        env: &dyn Environment,
    ) -> Result<Self, Ec2Error> {
        let creds = Credentials::resolve(credentials, env)?;
        let region = resolve_region(region, credentials.profile.as_deref(), env)?;
        Self::new(&region, creds, config)
    }

    /// The same client for another region (AMI copies).
    pub fn for_region(&self, region: &str) -> Result<Ec2Client, Ec2Error> {
        Self::with_shared(self.shared.clone(), region)
    }

    fn with_shared(shared: Arc<Shared>, region: &str) -> Result<Self, Ec2Error> {
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Ec2Error::InvalidInput(format!(
                "region {region:?} is not a region name (like us-east-1)"
            )));
        }
        let raw = match &shared.config.endpoint {
            Some(e) => e.clone(),
            None if region.starts_with("cn-") => format!("https://ec2.{region}.amazonaws.com.cn/"),
            None => format!("https://ec2.{region}.amazonaws.com/"),
        };
        let url = Url::parse(&raw)
            .map_err(|e| Ec2Error::InvalidInput(format!("endpoint {raw:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
            return Err(Ec2Error::InvalidInput(format!(
                "endpoint {raw:?} must be an http(s) URL without a query, like http://127.0.0.1:5000"
            )));
        }
        let Some(host) = url.host_str() else {
            return Err(Ec2Error::InvalidInput(format!(
                "endpoint {raw:?} has no host"
            )));
        };
        let host = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        Ok(Ec2Client {
            shared,
            region: region.to_string(),
            url,
            host,
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn endpoint(&self) -> &str {
        self.url.as_str()
    }

    /// Where the credentials came from (for messages; never the keys).
    pub fn credentials_source(&self) -> String {
        self.shared.credentials.source().to_string()
    }

    /// Calls and attempts made so far by this client and all its clones.
    pub fn stats(&self) -> CallStats {
        self.shared.counters.snapshot()
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    /// One EC2 Query API call.
    pub(crate) async fn call(
        &self,
        action: &'static str,
        params: &Params,
        idempotent: Idempotent,
    ) -> Result<String, Ec2Error> {
        self.query("ec2", EC2_API_VERSION, action, params, idempotent)
            .await
    }

    /// One Query API call to any service on this endpoint (the testkit bootstraps IAM users
    /// through it).
    pub(crate) async fn query(
        &self,
        service: &str,
        version: &str,
        action: &'static str,
        params: &Params,
        idempotent: Idempotent,
    ) -> Result<String, Ec2Error> {
        let shared = &*self.shared;
        shared.counters.call();
        let policy = &shared.config.retry;
        let max_attempts = policy.max_attempts.max(1);
        let body = params.body(action, version);
        let mut attempt = 0;
        loop {
            attempt += 1;
            shared.counters.attempt();
            let started = Instant::now();
            let result = self.attempt(service, &body).await;
            let duration = started.elapsed();
            let can_retry = attempt < max_attempts;

            let (outcome, status, request_id, decision) = match result {
                Ok(Answer::Ok {
                    status,
                    body,
                    request_id,
                }) => {
                    let status = Some(status);
                    self.observe(
                        action,
                        attempt,
                        duration,
                        CallOutcome::Ok,
                        status,
                        request_id,
                        false,
                    );
                    return Ok(body);
                }
                Ok(Answer::Error {
                    status,
                    code,
                    message,
                    request_id,
                }) => {
                    let api = ApiError {
                        action,
                        region: self.region.clone(),
                        code: code.clone(),
                        message,
                        request_id: request_id.clone(),
                        status,
                        attempts: attempt,
                    };
                    let decision = if is_throttling_code(&code) || status == 429 {
                        Decision::Retry(Ec2Error::Throttled(Box::new(api)))
                    } else if is_auth_code(&code) {
                        Decision::Fail(Ec2Error::Auth {
                            error: Box::new(api),
                            credentials: shared.credentials.source().to_string(),
                        })
                    } else if status >= 500 || is_transient_code(&code) {
                        Decision::Retry(Ec2Error::Api(Box::new(api)))
                    } else {
                        Decision::Fail(Ec2Error::Api(Box::new(api)))
                    };
                    (
                        CallOutcome::ApiError { code },
                        Some(status),
                        request_id,
                        decision,
                    )
                }
                Err(failure) => {
                    let retryable = match failure.kind {
                        TransportFailure::Connect => true,
                        TransportFailure::TooLarge => false,
                        TransportFailure::Timeout | TransportFailure::Interrupted => {
                            idempotent == Idempotent::Yes
                        }
                    };
                    let err = match failure.kind {
                        TransportFailure::TooLarge => Ec2Error::TooLarge {
                            action,
                            limit: shared.config.max_response_bytes,
                        },
                        _ => Ec2Error::Transport {
                            action,
                            endpoint: self.url.to_string(),
                            attempts: attempt,
                            detail: failure.detail,
                        },
                    };
                    let decision = if retryable {
                        Decision::Retry(err)
                    } else {
                        Decision::Fail(err)
                    };
                    (
                        CallOutcome::Transport { kind: failure.kind },
                        failure.status,
                        None,
                        decision,
                    )
                }
            };

            match decision {
                Decision::Retry(err) if can_retry => {
                    self.observe(action, attempt, duration, outcome, status, request_id, true);
                    let pause = policy.backoff(attempt + 1);
                    tracing::debug!(
                        action,
                        region = %self.region,
                        attempt,
                        ?pause,
                        error = %err,
                        "EC2 call failed, retrying"
                    );
                    tokio::time::sleep(pause).await;
                }
                Decision::Retry(err) | Decision::Fail(err) => {
                    self.observe(
                        action, attempt, duration, outcome, status, request_id, false,
                    );
                    return Err(err);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn observe(
        &self,
        action: &'static str,
        attempt: u32,
        duration: Duration,
        outcome: CallOutcome,
        http_status: Option<u16>,
        request_id: Option<String>,
        will_retry: bool,
    ) {
        tracing::debug!(
            action,
            region = %self.region,
            attempt,
            ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            outcome = %outcome.label(),
            "EC2 call"
        );
        if let Some(observer) = &self.shared.config.observer {
            observer(&CallRecord {
                action,
                region: self.region.clone(),
                attempt,
                duration,
                outcome,
                http_status,
                request_id,
                will_retry,
            });
        }
    }

    /// One signed HTTP exchange.
    async fn attempt(&self, service: &str, body: &str) -> Result<Answer, Failure> {
        let shared = &*self.shared;
        let creds = &shared.credentials;
        let date = amz_date(OffsetDateTime::now_utc());
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let mut headers = vec![
            ("content-type".to_string(), content_type.to_string()),
            ("host".to_string(), self.host.clone()),
            ("x-amz-date".to_string(), date.clone()),
        ];
        if let Some(token) = creds.session_token() {
            headers.push(("x-amz-security-token".to_string(), token.to_string()));
        }
        let signed = sign(
            &SignRequest {
                method: "POST",
                path: self.url.path(),
                query: &[],
                headers: &headers,
                payload: body.as_bytes(),
            },
            &SignContext {
                access_key_id: creds.access_key_id(),
                secret_access_key: creds.secret_access_key(),
                region: &self.region,
                service,
                amz_date: &date,
            },
        );
        let mut req = shared.http.post(self.url.clone()).body(body.to_string());
        for (name, value) in &headers {
            req = req.header(name.as_str(), value.as_str());
        }
        req = req.header("authorization", signed.authorization);

        let resp = req.send().await.map_err(|e| Failure::from_reqwest(&e))?;
        let status = resp.status().as_u16();
        let success = resp.status().is_success();
        let limit = if success {
            shared.config.max_response_bytes
        } else {
            MAX_ERROR_BODY
        };
        let bytes = read_bounded(resp, limit, success).await.map_err(|mut f| {
            f.status = Some(status);
            f
        })?;

        if success {
            let body = String::from_utf8(bytes).map_err(|_| Failure {
                kind: TransportFailure::Interrupted,
                detail: "the answer is not UTF-8".into(),
                status: Some(status),
            })?;
            // A 200 whose body is an error document still is an error.
            if let Some(err) = error_in_success(&body) {
                return Ok(Answer::Error {
                    status,
                    code: err.code.unwrap_or_else(|| format!("HTTP {status}")),
                    message: err.message.unwrap_or_default(),
                    request_id: err.request_id,
                });
            }
            let request_id = xml::parse(&body)
                .ok()
                .and_then(|d| d.root_element().text_of("requestId"));
            return Ok(Answer::Ok {
                status,
                body,
                request_id,
            });
        }
        let text = String::from_utf8_lossy(&bytes);
        let parsed = xml::parse_error(&text);
        let message = match parsed.message {
            Some(m) => m,
            None if parsed.code.is_none() => describe_non_xml(&text),
            None => String::new(),
        };
        Ok(Answer::Error {
            status,
            code: parsed.code.unwrap_or_else(|| format!("HTTP {status}")),
            message,
            request_id: parsed.request_id,
        })
    }

    /// A Describe call followed through `NextToken`. `page_size_allowed` is false where EC2
    /// refuses `MaxResults` together with explicit ids.
    pub(crate) async fn paginate<T>(
        &self,
        action: &'static str,
        params: Params,
        page_size_allowed: bool,
        mut parse: impl FnMut(&str) -> Result<(Vec<T>, Option<String>), Ec2Error>,
    ) -> Result<Vec<T>, Ec2Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut p = params.clone();
            if page_size_allowed {
                p.opt("MaxResults", self.config().page_size);
            }
            p.opt("NextToken", token.as_ref());
            let body = self.call(action, &p, Idempotent::Yes).await?;
            let (items, next) = parse(&body)?;
            out.extend(items);
            match next {
                Some(n) if !n.is_empty() => {
                    if token.as_deref() == Some(n.as_str()) {
                        return Err(Ec2Error::Malformed {
                            action,
                            detail: "the server returned the same NextToken twice".into(),
                        });
                    }
                    token = Some(n);
                }
                _ => return Ok(out),
            }
        }
        Err(Ec2Error::Malformed {
            action,
            detail: format!("more than {MAX_PAGES} pages"),
        })
    }
}

enum Decision {
    Retry(Ec2Error),
    Fail(Ec2Error),
}

enum Answer {
    Ok {
        status: u16,
        body: String,
        request_id: Option<String>,
    },
    Error {
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
    },
}

struct Failure {
    kind: TransportFailure,
    detail: String,
    status: Option<u16>,
}

impl Failure {
    fn from_reqwest(e: &reqwest::Error) -> Self {
        let kind = if e.is_connect() {
            TransportFailure::Connect
        } else if e.is_timeout() {
            TransportFailure::Timeout
        } else {
            TransportFailure::Interrupted
        };
        // reqwest's own message is terse; the source chain says what actually happened.
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            let s_text = s.to_string();
            if !detail.contains(&s_text) {
                detail.push_str(": ");
                detail.push_str(&s_text);
            }
            source = s.source();
        }
        Failure {
            kind,
            detail: xml::clean(&detail),
            status: None,
        }
    }
}

/// Reads at most `limit` bytes. For error answers (`strict == false`) a longer body is cut
/// rather than refused: only its start matters.
async fn read_bounded(
    mut resp: reqwest::Response,
    limit: usize,
    strict: bool,
) -> Result<Vec<u8>, Failure> {
    let too_large = || Failure {
        kind: TransportFailure::TooLarge,
        detail: format!("answer larger than {limit} bytes"),
        status: None,
    };
    if strict && resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| Failure::from_reqwest(&e))? {
        if buf.len() + chunk.len() > limit {
            if strict {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk[..limit - buf.len()]);
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

fn error_in_success(body: &str) -> Option<xml::ErrorBody> {
    let head = body.get(..body.len().min(512))?;
    if head.contains("<Response") || head.contains("<ErrorResponse") {
        let e = xml::parse_error(body);
        if e.code.is_some() {
            return Some(e);
        }
    }
    None
}

/// A short, printable description of a non-XML error body (a proxy's HTML page).
fn describe_non_xml(text: &str) -> String {
    let t = text.trim();
    if t.is_empty() {
        return "empty answer".into();
    }
    let snippet: String = t.chars().take(200).collect();
    xml::clean(&snippet)
}

/// Parses an answer or reports it as malformed.
pub(crate) fn parse_doc<'a>(
    action: &'static str,
    body: &'a str,
) -> Result<roxmltree::Document<'a>, Ec2Error> {
    xml::parse(body).map_err(|detail| Ec2Error::Malformed { action, detail })
}

pub(crate) fn malformed(action: &'static str) -> impl Fn(String) -> Ec2Error {
    move |detail| Ec2Error::Malformed { action, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn creds() -> Credentials {
        Credentials::new("AKID", Secret::new("s"), None)
    }

    #[test]
    fn endpoints() {
        let c = Ec2Client::new("eu-west-1", creds(), ClientConfig::default()).unwrap();
        assert_eq!(c.endpoint(), "https://ec2.eu-west-1.amazonaws.com/");
        assert_eq!(c.host, "ec2.eu-west-1.amazonaws.com");
        let cn = c.for_region("cn-north-1").unwrap();
        assert_eq!(cn.endpoint(), "https://ec2.cn-north-1.amazonaws.com.cn/");
        let m = Ec2Client::new(
            "us-east-1",
            creds(),
            ClientConfig {
                endpoint: Some("http://127.0.0.1:5000".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(m.host, "127.0.0.1:5000");
        assert_eq!(m.url.path(), "/");
        for bad in ["us east", "", "x/../y", "a.evil.com#"] {
            assert!(c.for_region(bad).is_err(), "{bad}");
        }
        for bad in ["ftp://x", "http://x/?a=b", "not a url"] {
            let r = Ec2Client::new(
                "us-east-1",
                creds(),
                ClientConfig {
                    endpoint: Some(bad.into()),
                    ..Default::default()
                },
            );
            assert!(matches!(r, Err(Ec2Error::InvalidInput(_))), "{bad}");
        }
    }

    #[test]
    fn error_documents_in_200() {
        assert!(
            error_in_success("<Response><Errors><Error><Code>X</Code></Error></Errors></Response>")
                .is_some()
        );
        assert!(error_in_success("<DescribeInstancesResponse/>").is_none());
    }

    #[test]
    fn non_xml_bodies() {
        assert_eq!(describe_non_xml("  "), "empty answer");
        assert_eq!(
            describe_non_xml("<html>\n<b>busy</b>"),
            "<html> <b>busy</b>"
        );
    }
}
