//! The store gateway: Nix's HTTP binary cache protocol over any [`Store`],
//! with verified token-authenticated uploads, batch existence checks,
//! Prometheus metrics and graceful shutdown.
//!
//! Routes: `GET`/`HEAD` on `/nix-cache-info`, `/<hash>.narinfo`,
//! `/<hash>.ls`, `/nar/*` and `/log/*`; `PUT` on the same names with a
//! token; `POST /api/v1/exists`; `GET /metrics`; `GET /healthz`.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::io::ReaderStream;

use crate::cache::BinaryCache;
use crate::error::StoreError;
use crate::key::Key;

mod exists;
pub mod metrics;
mod nar_check;
mod upload;

pub use exists::{EXISTS_IN_FLIGHT, MAX_ANONYMOUS_EXISTS_BATCH, MAX_EXISTS_BATCH, MAX_EXISTS_BODY};
pub use metrics::Metrics;

/// Largest body of any request but an upload, which streams under limits
/// of its own (see [`upload`]).
pub const MAX_REQUEST_BODY: usize = exists::MAX_EXISTS_BODY;

/// What the gateway serves and who may write.
#[derive(Debug)]
pub struct GatewayState {
    /// The cache served (its secret keys sign accepted uploads).
    pub cache: Arc<BinaryCache>,
    /// Bearer tokens allowed to upload; none means read-only.
    pub upload_tokens: Vec<String>,
    /// Largest NAR accepted, in bytes.
    pub max_nar_size: u64,
    /// Request counters.
    pub metrics: Metrics,
    /// Exists requests allowed to run at once.
    pub exists_slots: tokio::sync::Semaphore,
}

impl GatewayState {
    /// A gateway over `cache`, writable with `upload_tokens`.
    pub fn new(cache: Arc<BinaryCache>, upload_tokens: Vec<String>) -> GatewayState {
        GatewayState {
            cache,
            upload_tokens: upload_tokens
                .into_iter()
                .filter(|t| !t.is_empty())
                .collect(),
            max_nar_size: 64 << 30,
            metrics: Metrics::default(),
            exists_slots: tokio::sync::Semaphore::new(EXISTS_IN_FLIGHT),
        }
    }
}

/// The gateway's routes.
pub fn router(state: Arc<GatewayState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_handler))
        .route("/api/v1/exists", post(exists::exists_handler))
        .route(
            "/{*key}",
            get(get_handler).head(head_handler).put(upload::put_handler),
        )
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .with_state(state)
}

/// Serves until `shutdown` completes, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: Arc<GatewayState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if state.cache.store().writable() {
        if let Err(e) = state.cache.ensure_cache_info().await {
            tracing::warn!("cannot write nix-cache-info: {e}");
        }
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// An error answer with a one-line message.
pub(crate) fn answer(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut m = msg.into();
    m.push('\n');
    (status, m).into_response()
}

/// Maps a store error to the HTTP status a client should see.
pub(crate) fn status_of(e: &StoreError) -> StatusCode {
    match e {
        StoreError::Key(_) | StoreError::Malformed { .. } | StoreError::Format { .. } => {
            StatusCode::BAD_REQUEST
        }
        StoreError::Exists { .. } => StatusCode::CONFLICT,
        StoreError::Mismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        StoreError::Untrusted { .. } => StatusCode::FORBIDDEN,
        StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
        StoreError::ReadOnly { .. } => StatusCode::METHOD_NOT_ALLOWED,
        StoreError::BadUrl { .. } | StoreError::Io { .. } | StoreError::Stream { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        StoreError::S3 { .. } | StoreError::Http { .. } => StatusCode::BAD_GATEWAY,
    }
}

// The error is the handler's final answer, returned once per request.
#[allow(clippy::result_large_err)]
fn parse_key(state: &GatewayState, raw: &str) -> Result<Key, Response> {
    Key::parse(raw).map_err(|e| {
        Metrics::inc(&state.metrics.refused);
        answer(StatusCode::BAD_REQUEST, e.to_string())
    })
}

fn failure(state: &GatewayState, e: &StoreError) -> Response {
    Metrics::inc(&state.metrics.errors);
    tracing::warn!("{e}");
    answer(status_of(e), e.to_string())
}

async fn get_handler(State(state): State<Arc<GatewayState>>, Path(raw): Path<String>) -> Response {
    let key = match parse_key(&state, &raw) {
        Ok(k) => k,
        Err(r) => return r,
    };
    match state.cache.store().get(&key).await {
        Ok(Some(reader)) => {
            Metrics::inc(&state.metrics.gets);
            let body = Body::from_stream(ReaderStream::with_capacity(reader, 1 << 16));
            ([(header::CONTENT_TYPE, key.content_type())], body).into_response()
        }
        Ok(None) => {
            Metrics::inc(&state.metrics.not_found);
            answer(
                StatusCode::NOT_FOUND,
                format!("'{key}' is not in this cache"),
            )
        }
        Err(e) => failure(&state, &e),
    }
}

async fn head_handler(State(state): State<Arc<GatewayState>>, Path(raw): Path<String>) -> Response {
    let key = match parse_key(&state, &raw) {
        Ok(k) => k,
        Err(r) => return r,
    };
    Metrics::inc(&state.metrics.heads);
    match state.cache.store().exists(&key).await {
        Ok(true) => ([(header::CONTENT_TYPE, key.content_type())], Body::empty()).into_response(),
        Ok(false) => {
            Metrics::inc(&state.metrics.not_found);
            StatusCode::NOT_FOUND.into_response()
        }
        Err(e) => failure(&state, &e),
    }
}

async fn metrics_handler(State(state): State<Arc<GatewayState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
