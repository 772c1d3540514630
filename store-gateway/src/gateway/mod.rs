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
use axum::{Json, Router};
use kiln_nix::store_path::StorePath;
use tokio::net::TcpListener;
use tokio_util::io::ReaderStream;

use crate::backend::http::{ExistsRequest, ExistsResponse};
use crate::cache::BinaryCache;
use crate::error::StoreError;
use crate::key::{Key, STORE_HASH_LEN};

pub mod metrics;
mod upload;

pub use metrics::Metrics;

/// Most paths in one `POST /api/v1/exists`.
pub const MAX_EXISTS_BATCH: usize = 100_000;

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
        }
    }
}

/// The gateway's routes.
pub fn router(state: Arc<GatewayState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_handler))
        .route("/api/v1/exists", post(exists_handler))
        .route(
            "/{*key}",
            get(get_handler).head(head_handler).put(upload::put_handler),
        )
        .layer(DefaultBodyLimit::disable())
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

/// Reduces a store path, base name or hash part to its hash part.
fn hash_part_of(s: &str) -> Option<String> {
    let base = s
        .strip_prefix(kiln_nix::store_path::STORE_DIR)
        .map(|r| r.trim_start_matches('/'))
        .unwrap_or(s);
    if base.len() == STORE_HASH_LEN {
        return kiln_nix::nixbase32::is_valid_str(base.as_bytes()).then(|| base.to_string());
    }
    StorePath::from_base_name(base).ok().map(|p| p.hash_part())
}

async fn exists_handler(
    State(state): State<Arc<GatewayState>>,
    body: axum::body::Bytes,
) -> Response {
    Metrics::inc(&state.metrics.exists_requests);
    let req: ExistsRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            Metrics::inc(&state.metrics.refused);
            return answer(StatusCode::BAD_REQUEST, format!("bad exists request: {e}"));
        }
    };
    if req.paths.len() > MAX_EXISTS_BATCH {
        Metrics::inc(&state.metrics.refused);
        return answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_EXISTS_BATCH} paths per request"),
        );
    }
    let mut hashes = Vec::with_capacity(req.paths.len());
    for p in &req.paths {
        match hash_part_of(p) {
            Some(h) => hashes.push(h),
            None => {
                Metrics::inc(&state.metrics.refused);
                return answer(
                    StatusCode::BAD_REQUEST,
                    format!("'{p}' is not a store path or hash part"),
                );
            }
        }
    }
    state
        .metrics
        .exists_paths
        .fetch_add(hashes.len() as u64, std::sync::atomic::Ordering::Relaxed);
    match state.cache.has_paths(&hashes).await {
        Ok(present) => Json(ExistsResponse { present }).into_response(),
        Err(e) => failure(&state, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_parts_from_every_form() {
        let h = "1sy2203698px76lmf1hr7rfiijmdd40i";
        assert_eq!(hash_part_of(h).as_deref(), Some(h));
        assert_eq!(hash_part_of(&format!("{h}-x")).as_deref(), Some(h));
        assert_eq!(
            hash_part_of(&format!("/nix/store/{h}-x")).as_deref(),
            Some(h)
        );
        assert_eq!(hash_part_of("../../etc"), None);
        assert_eq!(hash_part_of(&"e".repeat(32)), None);
    }
}
