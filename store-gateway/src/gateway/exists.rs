//! `POST /api/v1/exists`: which of many paths the cache has, in one
//! request. The request is bounded three ways so that an anonymous client
//! cannot make the gateway buffer or check without limit: its body
//! ([`MAX_EXISTS_BODY`], refused before it is read when its length is
//! declared, and at the limit while it arrives otherwise), its number of
//! paths ([`MAX_EXISTS_BATCH`], [`MAX_ANONYMOUS_EXISTS_BATCH`] without an
//! upload token), and the checks running at once ([`EXISTS_IN_FLIGHT`]
//! requests; others wait before their body is read).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_nix::store_path::StorePath;

use super::{answer, failure, GatewayState, Metrics};
use crate::backend::http::{ExistsRequest, ExistsResponse};
use crate::key::STORE_HASH_LEN;

/// Most paths in one `POST /api/v1/exists` from a client with an upload
/// token (builders and coordinators).
pub const MAX_EXISTS_BATCH: usize = 100_000;
/// Most paths in one `POST /api/v1/exists` from a client without one.
pub const MAX_ANONYMOUS_EXISTS_BATCH: usize = 10_000;
/// Largest body of `POST /api/v1/exists`, in bytes: a full batch of hash
/// parts (35 bytes each in JSON) fits.
pub const MAX_EXISTS_BODY: usize = 4 << 20;
/// Exists requests checked at once; more wait their turn, unread.
pub const EXISTS_IN_FLIGHT: usize = 8;

/// Reduces a store path, base name or hash part to its hash part.
pub(super) fn hash_part_of(s: &str) -> Option<String> {
    let base = s
        .strip_prefix(kiln_nix::store_path::STORE_DIR)
        .map(|r| r.trim_start_matches('/'))
        .unwrap_or(s);
    if base.len() == STORE_HASH_LEN {
        return kiln_nix::nixbase32::is_valid_str(base.as_bytes()).then(|| base.to_string());
    }
    StorePath::from_base_name(base).ok().map(|p| p.hash_part())
}

fn refuse(state: &GatewayState, status: StatusCode, msg: String) -> Response {
    Metrics::inc(&state.metrics.refused);
    answer(status, msg)
}

fn too_large() -> String {
    format!("an exists request body is at most {MAX_EXISTS_BODY} bytes")
}

pub(super) async fn exists_handler(
    State(state): State<Arc<GatewayState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    Metrics::inc(&state.metrics.exists_requests);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_EXISTS_BODY as u64) {
        return refuse(&state, StatusCode::PAYLOAD_TOO_LARGE, too_large());
    }
    let max_paths = if super::upload::authorised(&state, &headers) {
        MAX_EXISTS_BATCH
    } else {
        MAX_ANONYMOUS_EXISTS_BATCH
    };
    let Ok(_slot) = state.exists_slots.acquire().await else {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "the gateway is stopping");
    };
    let body = match axum::body::to_bytes(body, MAX_EXISTS_BODY).await {
        Ok(b) => b,
        Err(e) => {
            let limited = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit exceeded");
            return if limited {
                refuse(&state, StatusCode::PAYLOAD_TOO_LARGE, too_large())
            } else {
                refuse(
                    &state,
                    StatusCode::BAD_REQUEST,
                    format!("reading exists request: {e}"),
                )
            };
        }
    };
    let req: ExistsRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                &state,
                StatusCode::BAD_REQUEST,
                format!("bad exists request: {e}"),
            )
        }
    };
    drop(body);
    if req.paths.len() > max_paths {
        return refuse(
            &state,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {max_paths} paths per exists request"),
        );
    }
    let mut hashes = Vec::with_capacity(req.paths.len());
    for p in &req.paths {
        match hash_part_of(p) {
            Some(h) => hashes.push(h),
            None => {
                return refuse(
                    &state,
                    StatusCode::BAD_REQUEST,
                    format!("'{p}' is not a store path or hash part"),
                )
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

    #[test]
    fn a_full_batch_of_hash_parts_fits_the_body_limit() {
        let one = serde_json::to_vec(&ExistsRequest {
            paths: vec!["1sy2203698px76lmf1hr7rfiijmdd40i".into(); 2],
        })
        .unwrap()
        .len()
            / 2;
        assert!(one * MAX_EXISTS_BATCH < MAX_EXISTS_BODY, "{one}");
    }
}
