//! Verified uploads in the form Nix's HTTP binary cache store sends them:
//! `PUT nar/<filehash>.nar…` first, then `PUT <hash>.narinfo`. A NAR is
//! accepted only if its content hashes to its name; a narinfo only if its
//! NAR is stored and decompresses to the stated hash and size, and its
//! references are already in the cache. A NAR must also parse as a NAR
//! ([`super::nar_check`]), and a path whose narinfo exists is not written
//! again: `409 Conflict`, or `412 Precondition Failed` for a request with
//! `If-None-Match: *` (how [`crate::backend::http::HttpStore`] asks). A
//! narinfo without `FileHash`/`FileSize` gets them from the stored file;
//! ones it states must match it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use futures::TryStreamExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::StreamReader;

use super::nar_check::{check_structure, compression_of, NarRefused};
use super::{answer, failure, parse_key, GatewayState, Metrics};
use crate::cache::MAX_NARINFO_SIZE;
use crate::compression::Compression;
use crate::error::StoreError;
use crate::ingest::stage_nar;
use crate::key::{Key, KeyKind};
use kiln_nix::hash::{HashAlgo, Hasher};

/// Largest build log or listing accepted.
const MAX_SMALL_UPLOAD: u64 = 64 << 20;

/// Whether the request carries an upload token: `Bearer TOKEN`, or Basic
/// auth whose password is the token (what Nix sends from a netrc file).
pub(super) fn authorised(state: &GatewayState, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let offered = if let Some(t) = value.strip_prefix("Bearer ") {
        t.trim().to_string()
    } else if let Some(b) = value.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&decoded).into_owned();
        match text.split_once(':') {
            Some((_, pw)) => pw.to_string(),
            None => return false,
        }
    } else {
        return false;
    };
    state
        .upload_tokens
        .iter()
        .any(|t| constant_time_eq(t.as_bytes(), offered.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn body_reader(body: Body) -> impl AsyncRead + Unpin + Send {
    StreamReader::new(body.into_data_stream().map_err(std::io::Error::other))
}

async fn read_small(body: Body, limit: u64, key: &Key) -> Result<Bytes, Response> {
    let mut buf = Vec::new();
    body_reader(body)
        .take(limit + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| {
            answer(
                StatusCode::BAD_REQUEST,
                format!("reading upload of '{key}': {e}"),
            )
        })?;
    if buf.len() as u64 > limit {
        return Err(answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("'{key}' is larger than {limit} bytes"),
        ));
    }
    Ok(Bytes::from(buf))
}

/// `PUT /{key}`.
pub(super) async fn put_handler(
    State(state): State<Arc<GatewayState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let key = match parse_key(&state, &raw) {
        Ok(k) => k,
        Err(r) => return r,
    };
    if state.upload_tokens.is_empty() {
        Metrics::inc(&state.metrics.refused);
        return answer(StatusCode::METHOD_NOT_ALLOWED, "this gateway is read-only");
    }
    if !authorised(&state, &headers) {
        Metrics::inc(&state.metrics.refused);
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid upload token is required\n",
        )
            .into_response();
    }
    let if_absent = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == b"*");
    let result = match key.kind() {
        KeyKind::Nar => put_nar(&state, &key, body).await,
        KeyKind::NarInfo => put_narinfo(&state, &key, body, if_absent).await,
        KeyKind::Listing => put_listing(&state, &key, body).await,
        KeyKind::Log => match read_small(body, MAX_SMALL_UPLOAD, &key).await {
            Ok(b) => store_small(&state, &key, b).await,
            Err(r) => Err(r),
        },
        KeyKind::CacheInfo => Err(answer(
            StatusCode::FORBIDDEN,
            "nix-cache-info is managed by the gateway",
        )),
    };
    match result {
        Ok(size) => {
            Metrics::inc(&state.metrics.uploads_accepted);
            state
                .metrics
                .bytes_uploaded
                .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
            StatusCode::CREATED.into_response()
        }
        Err(r) => {
            Metrics::inc(&state.metrics.uploads_rejected);
            r
        }
    }
}

async fn store_small(state: &GatewayState, key: &Key, data: Bytes) -> Result<u64, Response> {
    let len = data.len() as u64;
    state
        .cache
        .store()
        .put_bytes(key, data)
        .await
        .map_err(|e| failure(state, &e))?;
    Ok(len)
}

async fn put_listing(state: &GatewayState, key: &Key, body: Body) -> Result<u64, Response> {
    let data = read_small(body, MAX_SMALL_UPLOAD, key).await?;
    if serde_json::from_slice::<serde_json::Value>(&data).is_err() {
        return Err(answer(
            StatusCode::BAD_REQUEST,
            format!("'{key}' is not a JSON listing"),
        ));
    }
    store_small(state, key, data).await
}

async fn put_nar(state: &GatewayState, key: &Key, body: Body) -> Result<u64, Response> {
    let expected = key
        .as_str()
        .trim_start_matches("nar/")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let limit = state.max_nar_size;
    let mut reader = body_reader(body).take(limit + 1);
    let temp_dir = state.cache.options().temp_dir.clone();
    let staged = stage_nar(
        &mut reader,
        Compression::None,
        &temp_dir,
        &format!("upload of '{key}'"),
    )
    .await
    .map_err(|e| answer(StatusCode::BAD_REQUEST, e.to_string()))?;
    if staged.nar_size > limit {
        return Err(answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("'{key}' is larger than {limit} bytes"),
        ));
    }
    let got = staged.file_hash.to_base32();
    if got != expected {
        let e = StoreError::Mismatch {
            what: "file hash",
            path: key.to_string(),
            expected,
            got,
        };
        return Err(answer(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
    }
    let Some(compression) = compression_of(key) else {
        return Err(answer(
            StatusCode::BAD_REQUEST,
            format!("'{key}': the gateway reads only .nar, .nar.xz and .nar.zst"),
        ));
    };
    check_structure(key, &staged.file, compression, limit)
        .await
        .map_err(|e| {
            let status = match e {
                NarRefused::Malformed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                NarRefused::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                NarRefused::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            };
            answer(status, e.to_string())
        })?;
    state
        .cache
        .store()
        .put_file(key, &staged.file)
        .await
        .map_err(|e| failure(state, &e))?;
    Ok(staged.file_size)
}

/// The answer to a narinfo upload for a path already in the cache.
fn taken(key: &Key, if_absent: bool) -> Response {
    let status = if if_absent {
        StatusCode::PRECONDITION_FAILED
    } else {
        StatusCode::CONFLICT
    };
    answer(
        status,
        format!("'{key}' is already in this cache; a path is written once"),
    )
}

async fn put_narinfo(
    state: &GatewayState,
    key: &Key,
    body: Body,
    if_absent: bool,
) -> Result<u64, Response> {
    if state
        .cache
        .store()
        .exists(key)
        .await
        .map_err(|e| failure(state, &e))?
    {
        return Err(taken(key, if_absent));
    }
    let data = read_small(body, MAX_NARINFO_SIZE, key).await?;
    let size = data.len() as u64;
    let text = String::from_utf8(data.to_vec())
        .map_err(|_| answer(StatusCode::BAD_REQUEST, format!("'{key}' is not UTF-8")))?;
    let cache = &state.cache;
    let reject = |e: StoreError| answer(super::status_of(&e), e.to_string());
    let mut info = cache.parse_narinfo(&text, key, None).map_err(reject)?;
    if format!("{}.narinfo", info.store_path.hash_part()) != key.as_str() {
        return Err(answer(
            StatusCode::BAD_REQUEST,
            format!(
                "'{key}' describes '{}', whose hash part differs",
                info.store_path
            ),
        ));
    }
    let nar_key = cache.nar_key(&info).map_err(reject)?;
    if let Some(fh) = &info.file_hash {
        if !nar_key.as_str().contains(&fh.to_base32()) {
            return Err(answer(
                StatusCode::BAD_REQUEST,
                format!("'{key}': FileHash does not match URL '{}'", info.url),
            ));
        }
    }
    let others: Vec<String> = info
        .references
        .iter()
        .filter(|r| **r != info.store_path)
        .map(|r| r.hash_part())
        .collect();
    let present = cache
        .has_paths(&others)
        .await
        .map_err(|e| failure(state, &e))?;
    if let Some((h, _)) = others.iter().zip(&present).find(|(_, p)| !**p) {
        return Err(answer(
            StatusCode::CONFLICT,
            format!("'{key}': reference with hash '{h}' must be uploaded first"),
        ));
    }
    // Decompress and hash what is stored: the NAR must be exactly what the
    // narinfo says before the narinfo becomes visible. The file itself is
    // measured on the way, for FileHash and FileSize.
    let file = Arc::new(std::sync::Mutex::new((Hasher::new(HashAlgo::Sha256), 0u64)));
    let measure = file.clone();
    let mut nar = cache
        .nar_inspected(&info, move |chunk| {
            let mut m = measure.lock().unwrap_or_else(|p| p.into_inner());
            m.0.update(chunk);
            m.1 += chunk.len() as u64;
        })
        .await
        .map_err(reject)?;
    tokio::io::copy(&mut nar, &mut tokio::io::sink())
        .await
        .map_err(|e| {
            answer(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("'{key}' refused: {e}"),
            )
        })?;
    drop(nar);
    let (file_hash, file_size) = {
        let m = std::mem::replace(
            &mut *file.lock().unwrap_or_else(|p| p.into_inner()),
            (Hasher::new(HashAlgo::Sha256), 0),
        );
        (m.0.finish(), m.1)
    };
    if info.file_size != 0 && info.file_size != file_size {
        return Err(answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "'{key}': FileSize is {} but '{}' has {file_size} bytes",
                info.file_size, info.url
            ),
        ));
    }
    info.file_size = file_size;
    info.file_hash = Some(file_hash);
    match cache.put_narinfo(&mut info).await {
        Ok(()) => Ok(size),
        Err(StoreError::Exists { .. }) => Err(taken(key, if_absent)),
        Err(e) => Err(failure(state, &e)),
    }
}
