//! JSON API handlers and the Terraform state endpoint.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::error::RegistryError;
use crate::limits;
use crate::model::{ArtifactQuery, Platform, RecordBuild, RevokeRequest, VersionRef};
use crate::server::AppState;
use crate::terraform;
use crate::token::SecretToken;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/buckets", get(buckets))
        .route("/api/v1/buckets/{bucket}/versions", get(versions))
        .route("/api/v1/buckets/{bucket}/versions/{version}", get(version))
        .route(
            "/api/v1/buckets/{bucket}/versions/{version}/ancestry",
            get(ancestry),
        )
        .route(
            "/api/v1/buckets/{bucket}/versions/{version}/revoke",
            post(revoke),
        )
        .route(
            "/api/v1/buckets/{bucket}/versions/{version}/restore",
            post(restore),
        )
        .route("/api/v1/buckets/{bucket}/channels", get(channels))
        .route(
            "/api/v1/buckets/{bucket}/channels/{channel}",
            get(channel).post(promote),
        )
        .route("/api/v1/buckets/{bucket}/revocations", get(revocations))
        .route("/api/v1/artifact", get(artifact))
        .route("/api/v1/schema/provenance.json", get(schema))
        .route("/api/v1/records", post(record))
        .route(
            "/terraform/{bucket}/{channel}",
            get(terraform_state).fallback(terraform_refused),
        )
}

pub(crate) fn error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "kind": kind, "message": message, "suggestions": [] } })),
    )
        .into_response()
}

pub(crate) fn registry_error(e: &RegistryError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::warn!(error = %e, "registry request failed");
    }
    (status, Json(e.to_json())).into_response()
}

fn reply<T: serde::Serialize>(r: Result<T, RegistryError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => registry_error(&e),
    }
}

pub(crate) async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see /api/v1/buckets, /terraform/<bucket>/<channel> or / for the page",
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

fn unauthorized(message: &str) -> Response {
    let mut r = error_response(StatusCode::UNAUTHORIZED, "unauthorized", message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"kiln-registry\""),
    );
    r
}

/// The actor name of a valid bearer token, or the response refusing the request.
async fn authorize(state: &AppState, headers: &HeaderMap) -> Result<String, Response> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "writes need `Authorization: Bearer <token>`; create a token with `kiln registry token create NAME`",
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not ASCII"))?;
    let token = match value.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
        _ => {
            return Err(unauthorized(
                "the Authorization header must be `Bearer <token>`",
            ));
        }
    };
    match state.store.verify_token(&SecretToken::new(token)).await {
        Ok(Some(name)) => Ok(format!("token:{name}")),
        Ok(None) => Err(unauthorized("the bearer token is not valid")),
        Err(e) => Err(registry_error(&e)),
    }
}

/// Reads a JSON body (after authorisation, so anonymous clients cannot make us buffer).
async fn json_body<T: serde::de::DeserializeOwned>(
    body: Body,
    allow_empty: bool,
    empty: &str,
) -> Result<T, Response> {
    let bytes = axum::body::to_bytes(body, limits::MAX_BODY)
        .await
        .map_err(|_| {
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("request bodies are limited to {} bytes", limits::MAX_BODY),
            )
        })?;
    let text: &[u8] = if bytes.is_empty() && allow_empty {
        empty.as_bytes()
    } else {
        &bytes
    };
    serde_json::from_slice(text)
        .map_err(|e| registry_error(&RegistryError::invalid("request body", e)))
}

async fn buckets(State(st): State<AppState>) -> Response {
    reply(st.store.buckets().await)
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<String>,
    before: Option<String>,
}

fn parse_number(field: &str, v: Option<&str>, default: usize) -> Result<usize, RegistryError> {
    match v {
        None => Ok(default),
        Some(s) => s.parse().map_err(|_| {
            RegistryError::invalid(field, format!("{} is not a number", limits::shown(s)))
        }),
    }
}

async fn versions(
    State(st): State<AppState>,
    Path(bucket): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let limit = match parse_number("limit", q.limit.as_deref(), 50) {
        Ok(l) => l,
        Err(e) => return registry_error(&e),
    };
    reply(st.store.versions(&bucket, limit, q.before.as_deref()).await)
}

async fn version(
    State(st): State<AppState>,
    Path((bucket, version)): Path<(String, String)>,
) -> Response {
    reply(
        st.store
            .version(&bucket, &VersionRef::parse(&version))
            .await,
    )
}

async fn ancestry(
    State(st): State<AppState>,
    Path((bucket, version)): Path<(String, String)>,
) -> Response {
    reply(
        st.store
            .ancestry(&bucket, &VersionRef::parse(&version))
            .await,
    )
}

#[derive(Deserialize)]
struct HistoryQuery {
    history: Option<String>,
}

async fn channels(
    State(st): State<AppState>,
    Path(bucket): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let history = match parse_number("history", q.history.as_deref(), 50) {
        Ok(h) => h,
        Err(e) => return registry_error(&e),
    };
    reply(st.store.channels(&bucket, history).await)
}

async fn channel(
    State(st): State<AppState>,
    Path((bucket, channel)): Path<(String, String)>,
) -> Response {
    reply(
        st.store
            .channel(&bucket, &channel)
            .await
            .map(|(version, channel)| json!({ "channel": channel, "version": version })),
    )
}

async fn revocations(State(st): State<AppState>, Path(bucket): Path<String>) -> Response {
    reply(st.store.revocations(&bucket).await)
}

#[derive(Deserialize)]
struct ArtifactParams {
    bucket: Option<String>,
    channel: Option<String>,
    platform: Option<String>,
    region: Option<String>,
    build: Option<String>,
}

async fn artifact(State(st): State<AppState>, Query(q): Query<ArtifactParams>) -> Response {
    let (Some(bucket), Some(platform), Some(region)) = (q.bucket, q.platform, q.region) else {
        return registry_error(&RegistryError::invalid(
            "query",
            "needs bucket, platform and region (channel defaults to latest)",
        ));
    };
    let platform: Platform = match platform.parse() {
        Ok(p) => p,
        Err(e) => return registry_error(&e),
    };
    let query = ArtifactQuery {
        bucket,
        channel: q.channel,
        platform,
        region,
        build: q.build,
    };
    reply(st.store.resolve_artifact(&query).await)
}

async fn schema() -> Response {
    (
        [(header::CONTENT_TYPE, "application/schema+json")],
        crate::provenance::JSON_SCHEMA,
    )
        .into_response()
}

async fn record(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if let Err(r) = authorize(&st, &headers).await {
        return r;
    }
    let input: RecordBuild = match json_body(body, false, "").await {
        Ok(i) => i,
        Err(r) => return r,
    };
    match st.store.record(input).await {
        Ok(r) => (StatusCode::CREATED, Json(r)).into_response(),
        Err(e) => registry_error(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    fingerprint: String,
}

async fn promote(
    State(st): State<AppState>,
    Path((bucket, channel)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let actor = match authorize(&st, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let b: PromoteBody = match json_body(body, false, "").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    reply(
        st.store
            .promote(
                &bucket,
                &VersionRef::parse(&b.fingerprint),
                &channel,
                &actor,
            )
            .await,
    )
}

async fn revoke(
    State(st): State<AppState>,
    Path((bucket, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let actor = match authorize(&st, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let req: RevokeRequest = match json_body(body, false, "").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    reply(
        st.store
            .revoke(&bucket, &VersionRef::parse(&version), &req, &actor)
            .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

async fn restore(
    State(st): State<AppState>,
    Path((bucket, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let actor = match authorize(&st, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Err(r) = json_body::<Empty>(body, true, "{}").await {
        return r;
    }
    reply(
        st.store
            .restore(&bucket, &VersionRef::parse(&version), &actor)
            .await,
    )
}

#[derive(Deserialize)]
struct TerraformQuery {
    fail_if_revoked: Option<String>,
}

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn terraform_state(
    State(st): State<AppState>,
    Path((bucket, channel)): Path<(String, String)>,
    Query(q): Query<TerraformQuery>,
) -> Response {
    let fail_if_revoked = q
        .fail_if_revoked
        .as_deref()
        .is_some_and(|v| matches!(v, "1" | "true" | "yes"));
    match st.store.channel(&bucket, &channel).await {
        Ok((version, info)) => {
            if fail_if_revoked && let Some(r) = version.revocation.as_ref().filter(|r| r.effective)
            {
                let from = r
                    .inherited_from
                    .as_ref()
                    .map(|k| format!(" (inherited from {k})"))
                    .unwrap_or_default();
                return plain(
                    StatusCode::CONFLICT,
                    format!(
                        "kiln registry: {bucket}/{channel} points at version {} which is revoked{from}: {}\n",
                        version.fingerprint, r.reason
                    ),
                );
            }
            Json(terraform::state_document(&version, &info)).into_response()
        }
        // Terraform treats 404 as "no state" and would carry on with empty outputs, so an
        // unknown bucket or channel answers 400 and the plan stops with the message.
        Err(e) => {
            let status = match e {
                RegistryError::UnknownBucket { .. } | RegistryError::UnknownChannel { .. } => {
                    StatusCode::BAD_REQUEST
                }
                ref other => StatusCode::from_u16(other.http_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            };
            plain(status, format!("kiln registry: {e}\n"))
        }
    }
}

async fn terraform_refused() -> Response {
    plain(
        StatusCode::METHOD_NOT_ALLOWED,
        "kiln registry: this Terraform state is read-only; read it with data \"terraform_remote_state\" (backend = \"http\"), do not use it as a backend for your own state\n"
            .into(),
    )
}
