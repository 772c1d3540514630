//! Any Nix binary cache over HTTP(S), read-only; writable with a bearer
//! token when the server is a Kiln gateway.

use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use reqwest::{Client, Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio_util::io::{ReaderStream, StreamReader};

use super::{ByteStream, Store};
use crate::error::{Result, StoreError};
use crate::key::{Key, KeyKind};

/// Body of `POST /api/v1/exists`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExistsRequest {
    /// Store paths, base names or hash parts.
    pub paths: Vec<String>,
}

/// Answer of `POST /api/v1/exists`, in request order.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExistsResponse {
    /// Whether each path's narinfo is in the cache.
    pub present: Vec<bool>,
}

/// Attempts of an idempotent request before its error is reported.
pub const HTTP_ATTEMPTS: u32 = 4;

/// Statuses worth another attempt: throttling and transient server errors.
fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// A remote binary cache.
#[derive(Debug, Clone)]
pub struct HttpStore {
    client: Client,
    base: String,
    token: Option<String>,
}

impl HttpStore {
    /// A cache at `base` (`http(s)://HOST[:PORT][/PATH]`); `token` enables
    /// writes to a Kiln gateway.
    pub fn new(base: &str, token: Option<String>) -> Result<HttpStore> {
        let client = Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(120))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| StoreError::BadUrl {
                url: base.to_string(),
                reason: e.to_string(),
            })?;
        Ok(HttpStore {
            client,
            base: base.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn url_of(&self, key: &Key) -> String {
        format!("{}/{}", self.base, key)
    }

    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.client.request(method, url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends an idempotent request (`GET`, `HEAD`, the read-only exists
    /// query), retrying with exponential backoff (100 ms, doubling) when the
    /// connection fails or the server answers 429 or a 5xx status that means
    /// "try again" (500, 502, 503, 504), at most [`HTTP_ATTEMPTS`] times.
    async fn send_idempotent(
        &self,
        method: &'static str,
        url: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let mut delay = std::time::Duration::from_millis(100);
        for attempt in 1..=HTTP_ATTEMPTS {
            let last = attempt == HTTP_ATTEMPTS;
            match build().send().await {
                Ok(resp) if !last && retryable(resp.status()) => {}
                Ok(resp) => return Ok(resp),
                Err(e) if !last && (e.is_connect() || e.is_timeout()) => {}
                Err(e) => return Err(Self::err(method, url, e)),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        unreachable!("the last attempt returns")
    }

    /// One `POST /api/v1/exists` for `keys` (narinfos); `None` when the
    /// server is not a Kiln gateway.
    async fn exists_batch(&self, keys: &[Key]) -> Result<Option<Vec<bool>>> {
        let url = format!("{}/api/v1/exists", self.base);
        let body = ExistsRequest {
            paths: keys
                .iter()
                .map(|k| k.as_str().trim_end_matches(".narinfo").to_string())
                .collect(),
        };
        // A read-only query: safe to repeat.
        let resp = self
            .send_idempotent("POST", &url, || {
                self.request(Method::POST, &url).json(&body)
            })
            .await?;
        if !resp.status().is_success() {
            return Ok(None);
        }
        let body: ExistsResponse = resp.json().await.map_err(|e| Self::err("POST", &url, e))?;
        if body.present.len() != keys.len() {
            return Err(Self::err(
                "POST",
                &url,
                "answer has the wrong number of entries",
            ));
        }
        Ok(Some(body.present))
    }

    fn err(method: &'static str, url: &str, message: impl ToString) -> StoreError {
        StoreError::Http {
            method,
            url: url.to_string(),
            message: message.to_string(),
        }
    }

    async fn put(&self, key: &Key, body: reqwest::Body, len: u64) -> Result<()> {
        // Unconditional: never answered "taken".
        self.put_with(key, body, len, false).await.map(|_| ())
    }

    /// `PUT`s `body` under `key`; with `if_absent`, as `If-None-Match: *`,
    /// which a Kiln gateway answers with 412 when the key is taken (then
    /// `false` is returned).
    async fn put_with(
        &self,
        key: &Key,
        body: reqwest::Body,
        len: u64,
        if_absent: bool,
    ) -> Result<bool> {
        if self.token.is_none() {
            return Err(StoreError::ReadOnly { store: self.url() });
        }
        let url = self.url_of(key);
        let mut req = self
            .request(Method::PUT, &url)
            .header(reqwest::header::CONTENT_TYPE, key.content_type())
            .header(reqwest::header::CONTENT_LENGTH, len);
        if if_absent {
            req = req.header(reqwest::header::IF_NONE_MATCH, "*");
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| Self::err("PUT", &url, e))?;
        let status = resp.status();
        if if_absent && status == StatusCode::PRECONDITION_FAILED {
            return Ok(false);
        }
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(Self::err("PUT", &url, format!("{status}: {}", text.trim())));
        }
        Ok(true)
    }
}

#[async_trait]
impl Store for HttpStore {
    fn url(&self) -> String {
        self.base.clone()
    }

    fn writable(&self) -> bool {
        self.token.is_some()
    }

    async fn get(&self, key: &Key) -> Result<Option<ByteStream>> {
        let chunks = self.get_chunks(key).await?;
        Ok(chunks.map(|c| Box::pin(StreamReader::new(c)) as ByteStream))
    }

    async fn get_chunks(&self, key: &Key) -> Result<Option<super::ChunkStream>> {
        let url = self.url_of(key);
        let resp = self
            .send_idempotent("GET", &url, || self.request(Method::GET, &url))
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => Ok(None),
            s if s.is_success() => Ok(Some(Box::pin(
                resp.bytes_stream().map_err(std::io::Error::other),
            ))),
            s => Err(Self::err("GET", &url, s)),
        }
    }

    async fn exists(&self, key: &Key) -> Result<bool> {
        let url = self.url_of(key);
        let resp = self
            .send_idempotent("HEAD", &url, || self.request(Method::HEAD, &url))
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => Ok(false),
            s if s.is_success() => Ok(true),
            s => Err(Self::err("HEAD", &url, s)),
        }
    }

    async fn exists_many(&self, keys: &[Key]) -> Result<Vec<bool>> {
        if keys.len() > 1 && keys.iter().all(|k| k.kind() == KeyKind::NarInfo) {
            // A Kiln gateway takes this many paths per request.
            let batch = match self.token {
                Some(_) => crate::gateway::MAX_EXISTS_BATCH,
                None => crate::gateway::MAX_ANONYMOUS_EXISTS_BATCH,
            };
            let mut present = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(batch) {
                match self.exists_batch(chunk).await? {
                    Some(p) => present.extend(p),
                    None => break,
                }
            }
            if present.len() == keys.len() {
                return Ok(present);
            }
            // Not a Kiln gateway: fall back to one HEAD per key.
        }
        let checks: Vec<_> = keys.iter().map(|k| self.exists(k)).collect();
        futures::stream::iter(checks)
            .buffered(super::EXISTS_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn put_file(&self, key: &Key, file: &Path) -> Result<()> {
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| StoreError::io("opening", file, e))?;
        let len = f
            .metadata()
            .await
            .map_err(|e| StoreError::io("reading", file, e))?
            .len();
        let body = reqwest::Body::wrap_stream(ReaderStream::with_capacity(f, 1 << 16));
        self.put(key, body, len).await
    }

    async fn put_bytes(&self, key: &Key, data: Bytes) -> Result<()> {
        let len = data.len() as u64;
        self.put(key, reqwest::Body::from(data), len).await
    }

    async fn put_bytes_if_absent(&self, key: &Key, data: Bytes) -> Result<bool> {
        let len = data.len() as u64;
        self.put_with(key, reqwest::Body::from(data), len, true)
            .await
    }

    async fn delete(&self, _key: &Key) -> Result<()> {
        Err(StoreError::ReadOnly { store: self.url() })
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP peer that answers `failures` requests with `status`, then
    /// `200 ok`; counts the requests it saw.
    async fn flaky(
        status: &'static str,
        failures: usize,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::Ordering;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match c.read(&mut b).await {
                        Ok(1) => head.push(b[0]),
                        _ => break,
                    }
                }
                let n = count.fetch_add(1, Ordering::SeqCst);
                let resp = if n < failures {
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                        .to_string()
                };
                let _ = c.write_all(resp.as_bytes()).await;
                let _ = c.shutdown().await;
            }
        });
        (base, seen)
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_bounded() {
        use std::sync::atomic::Ordering;
        let key = Key::cache_info();
        let (base, seen) = flaky("503 Service Unavailable", 2).await;
        let store = HttpStore::new(&base, None).unwrap();
        let t = std::time::Instant::now();
        let mut body = Vec::new();
        store
            .get(&key)
            .await
            .unwrap()
            .expect("found after retries")
            .read_to_end(&mut body)
            .await
            .unwrap();
        assert_eq!(body, b"ok");
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        assert!(
            t.elapsed() >= std::time::Duration::from_millis(300),
            "backoff"
        );

        // Always failing: HTTP_ATTEMPTS requests, then the error.
        let (base, seen) = flaky("502 Bad Gateway", usize::MAX).await;
        let store = HttpStore::new(&base, None).unwrap();
        let err = store.exists(&key).await.unwrap_err().to_string();
        assert!(err.contains("502"), "{err}");
        assert_eq!(seen.load(Ordering::SeqCst), HTTP_ATTEMPTS as usize);

        // A definite answer is not repeated.
        let (base, seen) = flaky("404 Not Found", usize::MAX).await;
        let store = HttpStore::new(&base, None).unwrap();
        assert!(!store.exists(&key).await.unwrap());
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }
}
