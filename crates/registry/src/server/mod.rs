//! `kiln registry serve`: the JSON API, the read-only Terraform state backend and the web page.
//!
//! Reads are open; writes (`record`, `promote`, `revoke`, `restore`) need
//! `Authorization: Bearer <token>` (tokens from [`crate::Store::create_token`]). A token is
//! never accepted in a query string: a request carrying one is refused before routing. Bodies
//! are capped at [`crate::limits::MAX_BODY`] and requests at [`REQUEST_TIMEOUT`]. Binds
//! 127.0.0.1 by default.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/api/v1/buckets` | buckets |
//! | GET | `/api/v1/buckets/{b}/versions?limit=&before=` | a page of versions |
//! | GET | `/api/v1/buckets/{b}/versions/{fp or @channel}` | a version |
//! | GET | `/api/v1/buckets/{b}/versions/{v}/ancestry` | ancestry |
//! | GET | `/api/v1/buckets/{b}/channels?history=` | channels and moves |
//! | GET | `/api/v1/buckets/{b}/channels/{c}` | channel lookup: `{channel, version}` |
//! | GET | `/api/v1/buckets/{b}/revocations` | revocations |
//! | GET | `/api/v1/artifact?bucket=&channel=&platform=&region=&build=` | resolve an artifact |
//! | GET | `/api/v1/schema/provenance.json` | the provenance JSON Schema |
//! | POST | `/api/v1/records` | record a build (body: [`crate::RecordBuild`]) |
//! | POST | `/api/v1/buckets/{b}/channels/{c}` | promote (body `{"fingerprint": …}`) |
//! | POST | `/api/v1/buckets/{b}/versions/{v}/revoke` | revoke (body: [`crate::RevokeRequest`]) |
//! | POST | `/api/v1/buckets/{b}/versions/{v}/restore` | restore |
//! | GET | `/terraform/{b}/{c}[?fail_if_revoked=1]` | Terraform state (other methods: 405) |
//! | GET | `/`, `/b/{b}`, `/b/{b}/v/{fp}` | the web page |

mod api;
mod page;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use crate::limits;
use crate::store::Store;

/// The address `kiln registry serve` binds without `--listen`.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8700";
/// The longest a request may take before the server answers 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {addr}: {message}; is another server using the port? pick one with --listen"
    )]
    Bind { addr: SocketAddr, message: String },
    #[error("the registry server stopped: {message}")]
    Serve { message: String },
}

/// A bound server, ready to run.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    addr: SocketAddr,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Server({})", self.addr)
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: Store,
}

impl Server {
    /// Binds `addr` (port 0 picks a free one). Warns when the address is not loopback: reads
    /// are then open to the network.
    pub async fn bind(store: Store, addr: SocketAddr) -> Result<Server, ServeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ServeError::Bind {
                addr,
                message: e.to_string(),
            })?;
        let addr = listener.local_addr().map_err(|e| ServeError::Bind {
            addr,
            message: e.to_string(),
        })?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "registry server listens beyond loopback: reads are open to the network");
        }
        Ok(Server {
            listener,
            router: router(store),
            addr,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until an I/O error.
    pub async fn run(self) -> Result<(), ServeError> {
        self.run_until(std::future::pending()).await
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        tracing::info!(addr = %self.addr, "registry server listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| ServeError::Serve {
                message: e.to_string(),
            })
    }
}

fn router(store: Store) -> Router {
    let state = AppState { store };
    Router::new()
        .merge(api::routes())
        .merge(page::routes())
        .fallback(api::not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::max(limits::MAX_BODY))
        .layer(middleware::from_fn(guard))
}

/// Names of query parameters that smell like credentials.
const CREDENTIAL_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "auth",
    "authorization",
    "bearer",
    "api_key",
    "apikey",
    "key",
    "password",
];

/// Refuses credentials in the query string (they end up in logs and browser history), and
/// bounds each request's time.
async fn guard(req: Request, next: Next) -> Response {
    if let Some(q) = req.uri().query() {
        let smells = q.split('&').any(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            CREDENTIAL_PARAMS.iter().any(|c| k.eq_ignore_ascii_case(c))
                || crate::token::SecretToken::new(v).parts().is_some()
                || crate::token::SecretToken::new(k).parts().is_some()
        });
        if smells {
            return api::error_response(
                StatusCode::BAD_REQUEST,
                "credentials_in_query",
                "tokens are never accepted in a query string (they leak into logs); send the header `Authorization: Bearer <token>`",
            );
        }
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => api::error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long; try again",
        )
        .into_response(),
    }
}
