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
use crate::key::{Key, KeyKind};

pub mod http;
pub mod local;
pub mod s3;
mod staged;

pub use staged::FileUpload;

/// A stream of an object's bytes.
pub type ByteStream = Pin<Box<dyn AsyncRead + Send>>;

/// An object's bytes as the chunks a backend receives them in.
pub type ChunkStream = Pin<Box<dyn futures::Stream<Item = std::io::Result<Bytes>> + Send>>;

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

    /// Opens an object as a stream of chunks; `None` when it does not
    /// exist. A backend that receives chunks (S3, HTTP) hands them on as
    /// they are, without copying; by default, [`Store::get`] read in
    /// [`READ_AHEAD_CHUNK`]s.
    async fn get_chunks(&self, key: &Key) -> Result<Option<ChunkStream>> {
        Ok(self.get(key).await?.map(|r| {
            Box::pin(tokio_util::io::ReaderStream::with_capacity(
                r,
                READ_AHEAD_CHUNK,
            )) as ChunkStream
        }))
    }

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

    /// Stores a small object unless one is already under `key`: returns
    /// `true` when `data` was written, `false` when an object was there
    /// (which is left as it is). Of concurrent callers on one key, exactly
    /// one writes; this is what makes a narinfo written once (see
    /// [`crate::cache::BinaryCache::add_path`]).
    async fn put_bytes_if_absent(&self, key: &Key, data: Bytes) -> Result<bool>;

    /// Starts an object of `kind` whose content is streamed before its key
    /// is known (a NAR is named after the hash of its compressed bytes).
    /// Memory held is bounded whatever the object's size. Nothing is
    /// visible under any cache key until [`Upload::commit`]. By default the
    /// bytes are staged in a file in `temp_dir` and stored with
    /// [`Store::put_file`]; backends that can stream do better.
    async fn begin_upload<'a>(
        &'a self,
        kind: KeyKind,
        temp_dir: &Path,
    ) -> Result<Box<dyn Upload + 'a>> {
        let _ = kind;
        Ok(Box::new(FileUpload::create(self, temp_dir).await?))
    }

    /// Removes an object; removing a missing object is not an error.
    async fn delete(&self, key: &Key) -> Result<()>;
}

/// An object being written by [`Store::begin_upload`].
#[async_trait]
pub trait Upload: Send {
    /// The size of the chunks [`Upload::write`] handles best (a whole
    /// part, for multipart uploads); writers may send any size.
    fn preferred_chunk(&self) -> usize {
        1 << 20
    }

    /// Appends `data`; may wait while earlier bytes are still in flight,
    /// which bounds the memory an upload holds.
    async fn write(&mut self, data: Bytes) -> Result<()>;

    /// Makes everything written visible under `key`, atomically. An object
    /// already under `key` holds the same bytes (keys name content), so it
    /// may be kept or replaced.
    async fn commit(self: Box<Self>, key: &Key) -> Result<()>;

    /// Discards everything written; nothing becomes visible.
    async fn abort(self: Box<Self>);
}

/// Bytes a backend without chunks of its own is read in at a time.
pub const READ_AHEAD_CHUNK: usize = 256 << 10;

/// Receives `input` in a task of its own, up to `depth` chunks ahead of
/// the consumer, so that receiving (network, disk) overlaps with whatever
/// the consumer does with the bytes (decompressing, hashing). Chunks are
/// passed on, not copied. Memory is bounded by `depth` chunks; the task
/// ends when the returned stream is dropped. Must be called within a Tokio
/// runtime.
pub fn read_ahead(input: ChunkStream, depth: usize) -> ByteStream {
    read_ahead_checked(input, depth, None)
}

/// [`read_ahead`] that also runs `check` over the chunks as they arrive, in
/// the receiving task (so that hashing overlaps with the consumer's work
/// and costs no copy); its verdict ends the stream: a mismatch arrives as
/// an error instead of the end, and nothing after an excess is passed on.
pub fn read_ahead_checked(
    mut input: ChunkStream,
    depth: usize,
    mut check: Option<crate::compression::NarCheck>,
) -> ByteStream {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(depth.max(1));
    tokio::spawn(async move {
        while let Some(mut item) = input.next().await {
            if let (Ok(chunk), Some(c)) = (&item, check.as_mut()) {
                if let Err(e) = c.update(chunk) {
                    item = Err(e);
                }
            }
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
        if let Some(Err(e)) = check.map(|c| c.finish()) {
            let _ = tx.send(Err(e)).await;
        }
    });
    Box::pin(tokio_util::io::StreamReader::new(stream::poll_fn(
        move |cx| rx.poll_recv(cx),
    )))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::NarCheck;
    use kiln_nix::hash::{Hash, HashAlgo};

    fn chunks(parts: &[&'static [u8]]) -> ChunkStream {
        let items: Vec<std::io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(stream::iter(items))
    }

    async fn read_checked(
        parts: &[&'static [u8]],
        hash_of: &[u8],
        size: u64,
    ) -> std::io::Result<Vec<u8>> {
        let check = NarCheck::new(Hash::of(HashAlgo::Sha256, hash_of), size, "NAR of 'x'");
        let mut out = Vec::new();
        read_ahead_checked(chunks(parts), 2, Some(check))
            .read_to_end(&mut out)
            .await
            .map(|_| out)
    }

    #[tokio::test]
    async fn checked_read_ahead_passes_good_data_and_refuses_bad() {
        let got = read_checked(&[b"hello ", b"world"], b"hello world", 11).await;
        assert_eq!(got.unwrap(), b"hello world");

        let err = read_checked(&[b"hello ", b"worle"], b"hello world", 11)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("NAR hash mismatch"), "{err}");

        let err = read_checked(&[b"hello"], b"hello world", 11)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("NAR size mismatch"), "{err}");

        let err = read_checked(&[b"hello ", b"world", b"!!"], b"hello world", 11)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("larger than the expected 11"),
            "{err}"
        );
    }
}
