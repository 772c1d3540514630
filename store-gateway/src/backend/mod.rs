//! Object storage under a binary cache: the [`Store`] trait and its backends.
//!
//! A backend only moves whole objects by [`Key`]; the Nix layout on top
//! (narinfo, NARs, closures, verification) lives in [`crate::cache`], so the
//! local directory, S3 and HTTP backends share every rule about content.

use std::path::Path;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Result, StoreError};
use crate::key::Key;

pub mod http;
pub mod local;
pub mod s3;

/// A stream of an object's bytes.
pub type ByteStream = Pin<Box<dyn AsyncRead + Send>>;

/// How many existence checks a backend runs at once by default.
pub const EXISTS_CONCURRENCY: usize = 64;

/// Object storage holding a binary cache.
///
/// Writes are atomic per key: a reader sees either nothing or the whole
/// object, never a prefix of it.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The store's URL, for messages.
    fn url(&self) -> String;

    /// Whether writes can succeed at all.
    fn writable(&self) -> bool {
        true
    }

    /// Opens an object for reading; `None` when it does not exist.
    async fn get(&self, key: &Key) -> Result<Option<ByteStream>>;

    /// Whether an object exists.
    async fn exists(&self, key: &Key) -> Result<bool>;

    /// Existence of many objects, answered in order.
    async fn exists_many(&self, keys: &[Key]) -> Result<Vec<bool>> {
        let checks: Vec<_> = keys.iter().map(|k| self.exists(k)).collect();
        stream::iter(checks)
            .buffered(EXISTS_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Stores the content of a local file under `key`, atomically.
    async fn put_file(&self, key: &Key, file: &Path) -> Result<()>;

    /// Stores a small object held in memory, atomically.
    async fn put_bytes(&self, key: &Key, data: Bytes) -> Result<()>;

    /// Removes an object; removing a missing object is not an error.
    async fn delete(&self, key: &Key) -> Result<()>;
}

/// Reads a whole small object, refusing one larger than `limit` bytes.
pub async fn get_small(store: &dyn Store, key: &Key, limit: u64) -> Result<Option<Vec<u8>>> {
    let Some(reader) = store.get(key).await? else {
        return Ok(None);
    };
    let mut buf = Vec::new();
    let ctx = || format!("reading '{key}' from '{}'", store.url());
    reader
        .take(limit + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| StoreError::stream(ctx(), e))?;
    if buf.len() as u64 > limit {
        return Err(StoreError::Malformed {
            store: store.url(),
            key: key.to_string(),
            message: format!("larger than {limit} bytes"),
        });
    }
    Ok(Some(buf))
}
