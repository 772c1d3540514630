//! Taking a NAR in: compress and hash it in one streaming pass, so the
//! narinfo can be written from what was actually stored and no NAR is ever
//! held whole in memory.
//!
//! [`write_nar`] streams the compressed bytes into a [`Store`] upload while
//! the NAR is still being read (reading, compressing and sending overlap);
//! the object becomes visible only at [`PendingNar::commit`], after the
//! caller has checked the hashes. [`stage_nar`] compresses into a local
//! file instead, for callers that must see the whole NAR before storing.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use kiln_nix::hash::{Hash, HashAlgo, Hasher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::backend::{Store, Upload};
use crate::compression::{Compression, HashingAsyncWriter};
use crate::error::{Result, StoreError};
use crate::key::{Key, KeyKind};

/// Bytes read from the NAR at a time when compressing.
const READ_CHUNK: usize = 1 << 20;
/// Chunks read ahead of the compressor.
const READ_AHEAD: usize = 4;
/// Compressed chunks waiting to be handed to the upload.
const OUT_AHEAD: usize = 2;
/// Whole upload chunks read ahead of the upload when storing uncompressed
/// (each is a multipart part on S3, so memory stays a few parts).
const PLAIN_AHEAD: usize = 1;
/// Most compressed bytes gathered before they are handed to the upload.
const MAX_FLUSH: usize = 64 << 20;
/// Bytes at the start of a NAR that decide whether compressing it pays.
pub const PROBE_SIZE: usize = 4 << 20;
/// A NAR is stored uncompressed when zstd (level 1) cannot shrink its
/// first [`PROBE_SIZE`] bytes by at least this fraction (1/32, about 3%).
const MIN_SAVING_DIVISOR: usize = 32;

fn nar_key(file_hash: &Hash, compression: Compression) -> Result<Key> {
    Ok(Key::parse(&format!(
        "nar/{}{}",
        file_hash.to_base32(),
        compression.extension()
    ))?)
}

/// Both hashes and sizes of a NAR taken in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarDigests {
    /// How the stored file is compressed.
    pub compression: Compression,
    /// sha256 of the uncompressed NAR.
    pub nar_hash: Hash,
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
    /// sha256 of the stored (compressed) file.
    pub file_hash: Hash,
    /// Size of the stored file.
    pub file_size: u64,
}

impl NarDigests {
    /// The key the file is stored under: `nar/<filehash><ext>`.
    pub fn key(&self) -> Result<Key> {
        nar_key(&self.file_hash, self.compression)
    }
}

/// A compressed NAR fully sent to a store but not yet visible there.
/// Dropping it without [`PendingNar::commit`] leaves nothing visible.
pub struct PendingNar<'a> {
    upload: Box<dyn Upload + 'a>,
    /// What was sent.
    pub digests: NarDigests,
}

impl PendingNar<'_> {
    /// Makes the NAR visible under [`NarDigests::key`], which it returns.
    pub async fn commit(self) -> Result<Key> {
        let key = self.digests.key()?;
        self.upload.commit(&key).await?;
        Ok(key)
    }

    /// Discards the NAR.
    pub async fn abort(self) {
        self.upload.abort().await;
    }
}

/// Reads a NAR from `nar` to its end, compressing it with `compression`
/// into an upload to `store` as it goes (`temp_dir` serves backends that
/// stage uploads in files). With `skip_incompressible`, a NAR whose first
/// [`PROBE_SIZE`] bytes do not compress is stored uncompressed instead
/// (see [`worth_compressing`]); [`NarDigests::compression`] says which.
/// `what` names the source in errors. On error the upload is aborted.
pub async fn write_nar<'a, R: AsyncRead + Unpin + Send>(
    store: &'a dyn Store,
    nar: R,
    compression: Compression,
    skip_incompressible: bool,
    temp_dir: &Path,
    what: &str,
) -> Result<PendingNar<'a>> {
    let mut upload = store.begin_upload(KeyKind::Nar, temp_dir).await?;
    match compress_into(upload.as_mut(), nar, compression, skip_incompressible, what).await {
        Ok(digests) => Ok(PendingNar { upload, digests }),
        Err(e) => {
            upload.abort().await;
            Err(e)
        }
    }
}

/// Whether compressing data that starts with `sample` is worth its cost:
/// zstd at its fastest level must save at least 1/32 of the sample. Data
/// that fails (already compressed archives, media, random bytes) is stored
/// as is, sparing the compressor and a second hash on the way in and the
/// decompressor on the way out.
pub fn worth_compressing(sample: &[u8]) -> bool {
    match zstd::bulk::compress(sample, 1) {
        Ok(out) => out.len() <= sample.len() - sample.len() / MIN_SAVING_DIVISOR,
        Err(_) => true,
    }
}

/// Reads from `nar` until `buf` holds `size` bytes or the NAR ends.
async fn read_full<R: AsyncRead + Unpin>(nar: &mut R, size: usize, what: &str) -> Result<Bytes> {
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        let n = nar
            .read_buf(&mut buf)
            .await
            .map_err(|e| StoreError::stream(format!("reading {what}"), e))?;
        if n == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

/// Cuts a byte stream into the chunks an upload prefers (whole parts, for
/// multipart uploads). Input already in such chunks passes without a copy;
/// only bytes that straddle a boundary are copied.
struct Chunker {
    carry: BytesMut,
    want: usize,
}

impl Chunker {
    fn new(upload: &(dyn Upload + '_)) -> Chunker {
        Chunker {
            carry: BytesMut::new(),
            want: upload.preferred_chunk().clamp(1, MAX_FLUSH),
        }
    }

    async fn send(&mut self, upload: &mut (dyn Upload + '_), part: Bytes) -> Result<()> {
        upload.write(part).await?;
        self.want = upload.preferred_chunk().clamp(1, MAX_FLUSH);
        Ok(())
    }

    async fn push(&mut self, upload: &mut (dyn Upload + '_), mut data: Bytes) -> Result<()> {
        if !self.carry.is_empty() {
            let need = self.want.saturating_sub(self.carry.len());
            if data.len() < need {
                self.carry.extend_from_slice(&data);
                return Ok(());
            }
            self.carry.extend_from_slice(&data.split_to(need));
            let part = self.carry.split().freeze();
            self.send(upload, part).await?;
        }
        while data.len() >= self.want {
            let part = data.split_to(self.want);
            self.send(upload, part).await?;
        }
        self.carry.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(mut self, upload: &mut (dyn Upload + '_)) -> Result<()> {
        if !self.carry.is_empty() {
            let rest = self.carry.split().freeze();
            upload.write(rest).await?;
        }
        Ok(())
    }
}

/// A task hashing (sha256) and counting the chunks sent to it.
fn spawn_hasher(
    depth: usize,
) -> (
    tokio::sync::mpsc::Sender<Bytes>,
    tokio::task::JoinHandle<(Hash, u64)>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(depth);
    let task = tokio::spawn(async move {
        let mut hasher = Hasher::new(HashAlgo::Sha256);
        let mut size = 0u64;
        while let Some(chunk) = rx.recv().await {
            hasher.update(&chunk);
            size += chunk.len() as u64;
        }
        (hasher.finish(), size)
    });
    (tx, task)
}

fn task_failed(doing: &str, what: &str, e: tokio::task::JoinError) -> StoreError {
    StoreError::stream(format!("{doing} {what}"), std::io::Error::other(e))
}

/// The pipeline of [`write_nar`]. The first [`PROBE_SIZE`] bytes (rounded
/// up to whole upload chunks) are read first to choose the compression;
/// then the NAR streams through [`store_plain`] or [`store_compressed`].
async fn compress_into<R: AsyncRead + Unpin + Send>(
    upload: &mut (dyn Upload + '_),
    mut nar: R,
    compression: Compression,
    skip_incompressible: bool,
    what: &str,
) -> Result<NarDigests> {
    let want = upload.preferred_chunk().clamp(1, MAX_FLUSH);
    let asked = PROBE_SIZE.div_ceil(want) * want;
    let first = read_full(&mut nar, asked, what).await?;
    // A short first read means the NAR has ended: nothing more is read.
    let more = first.len() == asked;
    let compression = if compression != Compression::None
        && skip_incompressible
        && first.len() >= PROBE_SIZE
        && !worth_compressing(&first[..PROBE_SIZE])
    {
        Compression::None
    } else {
        compression
    };
    match compression {
        Compression::None => store_plain(upload, first, more, nar, what).await,
        c => store_compressed(upload, first, more, nar, c, what).await,
    }
}

/// Stores a NAR as is. It is read in whole upload chunks, which go to the
/// upload without a copy, while a task of its own hashes them once: the
/// file hash is the NAR hash.
async fn store_plain<R: AsyncRead + Unpin + Send>(
    upload: &mut (dyn Upload + '_),
    first: Bytes,
    more: bool,
    mut nar: R,
    what: &str,
) -> Result<NarDigests> {
    let mut chunker = Chunker::new(upload);
    let read_size = chunker.want;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(PLAIN_AHEAD);
    let (hash_tx, hasher) = spawn_hasher(PLAIN_AHEAD);
    let feed = async move {
        if !more {
            return Ok::<_, StoreError>(());
        }
        loop {
            let chunk = read_full(&mut nar, read_size, what).await?;
            if chunk.is_empty() {
                return Ok(());
            }
            // A closed channel means the consumer failed; its error wins.
            if tx.send(chunk).await.is_err() {
                return Ok(());
            }
        }
    };
    // Moved in, so that a failure drops the receiver and ends the reader.
    let consume = async move {
        let mut next = Some(first).filter(|b| !b.is_empty());
        while let Some(chunk) = match next.take() {
            Some(c) => Some(c),
            None => rx.recv().await,
        } {
            if hash_tx.send(chunk.clone()).await.is_err() {
                break;
            }
            chunker.push(upload, chunk).await?;
        }
        drop(hash_tx);
        chunker.finish(upload).await
    };
    let (fed, consumed) = tokio::join!(feed, consume);
    // A read error ends the channel early, which the consumer cannot tell
    // from the NAR's end: the reader's verdict comes first.
    fed?;
    consumed?;
    let (nar_hash, nar_size) = hasher.await.map_err(|e| task_failed("hashing", what, e))?;
    Ok(NarDigests {
        compression: Compression::None,
        file_hash: nar_hash.clone(),
        file_size: nar_size,
        nar_hash,
        nar_size,
    })
}

/// Stores a NAR compressed. Three stages overlap: this task reads the NAR
/// and hands compressed chunks to the upload; one task hashes the NAR; one
/// compresses it, hashes the compressed stream and cuts it into whole
/// upload chunks, so that a multipart upload sends them without a copy.
async fn store_compressed<R: AsyncRead + Unpin + Send>(
    upload: &mut (dyn Upload + '_),
    first: Bytes,
    more: bool,
    mut nar: R,
    compression: Compression,
    what: &str,
) -> Result<NarDigests> {
    let mut chunker = Chunker::new(upload);
    let want = chunker.want;
    let (hash_tx, hasher) = spawn_hasher(READ_AHEAD);
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Bytes>(READ_AHEAD);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Bytes>(OUT_AHEAD);
    let ctx = format!("compressing {what}");
    let compressor = tokio::spawn(async move {
        let werr = |e| StoreError::stream(ctx.clone(), e);
        let mut enc = compression.encoder(HashingAsyncWriter::new(Vec::with_capacity(
            want + READ_CHUNK,
        )));
        while let Some(chunk) = in_rx.recv().await {
            enc.write_all(&chunk).await.map_err(werr)?;
            let out = enc.get_mut().get_mut();
            while out.len() >= want {
                let rest = out.split_off(want);
                let full = std::mem::replace(out, rest);
                out.reserve(want + READ_CHUNK);
                if out_tx.send(Bytes::from(full)).await.is_err() {
                    // The upload failed; its error is reported.
                    return Ok(None);
                }
            }
        }
        enc.shutdown().await.map_err(werr)?;
        let (rest, file_hash, file_size) = enc.into_inner().finish();
        if !rest.is_empty() && out_tx.send(Bytes::from(rest)).await.is_err() {
            return Ok(None);
        }
        Ok::<_, StoreError>(Some((file_hash, file_size)))
    });
    let feed = async move {
        let mut next = Some(first);
        loop {
            let chunk = match next.take() {
                Some(c) => c,
                None if more => read_full(&mut nar, READ_CHUNK, what).await?,
                None => Bytes::new(),
            };
            if chunk.is_empty() {
                return Ok::<_, StoreError>(());
            }
            // A closed channel means a consumer failed; its error wins.
            if hash_tx.send(chunk.clone()).await.is_err() || in_tx.send(chunk).await.is_err() {
                return Ok(());
            }
        }
    };
    // Moved in, so that a failure drops the receiver and ends the
    // compressor, and through it the reader.
    let forward = async move {
        while let Some(chunk) = out_rx.recv().await {
            chunker.push(upload, chunk).await?;
        }
        chunker.finish(upload).await
    };
    let (fed, forwarded) = tokio::join!(feed, forward);
    // A read error ends the input early, which the compressor cannot tell
    // from the NAR's end: the reader's verdict comes first, then the
    // upload's, then the compressor's.
    fed?;
    forwarded?;
    let compressed = compressor
        .await
        .map_err(|e| task_failed("compressing", what, e))??;
    let (file_hash, file_size) = compressed.ok_or_else(|| {
        StoreError::stream(
            format!("compressing {what}"),
            std::io::Error::other("the compressed stream ended early"),
        )
    })?;
    let (nar_hash, nar_size) = hasher.await.map_err(|e| task_failed("hashing", what, e))?;
    Ok(NarDigests {
        compression,
        nar_hash,
        nar_size,
        file_hash,
        file_size,
    })
}

/// A compressed NAR in a temporary file, with both hashes and sizes.
#[derive(Debug)]
pub struct StagedNar {
    /// The compressed file; removed when dropped.
    pub file: tempfile::TempPath,
    /// How `file` is compressed.
    pub compression: Compression,
    /// sha256 of the uncompressed NAR.
    pub nar_hash: Hash,
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
    /// sha256 of `file`.
    pub file_hash: Hash,
    /// Size of `file`.
    pub file_size: u64,
}

impl StagedNar {
    /// The key the file is stored under: `nar/<filehash><ext>`.
    pub fn key(&self) -> Result<Key> {
        nar_key(&self.file_hash, self.compression)
    }
}

/// Reads a NAR from `nar` to its end, compressing it with `compression`
/// into a fresh file in `temp_dir`. `what` names the source in errors.
pub async fn stage_nar<R: AsyncRead + Unpin>(
    mut nar: R,
    compression: Compression,
    temp_dir: &Path,
    what: &str,
) -> Result<StagedNar> {
    let dir = temp_dir.to_path_buf();
    let tmp = tokio::task::spawn_blocking(move || {
        tempfile::Builder::new()
            .prefix("kiln-nar-")
            .tempfile_in(&dir)
            .map_err(|e| (dir, e))
    })
    .await
    .map_err(|e| StoreError::stream(format!("staging {what}"), std::io::Error::other(e)))?
    .map_err(|(dir, e)| StoreError::io("creating temporary file in", dir, e))?
    .into_temp_path();
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(&tmp)
        .await
        .map_err(|e| StoreError::io("opening", tmp.to_path_buf(), e))?;
    let sink = HashingAsyncWriter::new(tokio::io::BufWriter::with_capacity(1 << 20, file));
    let mut enc = compression.encoder(sink);
    let mut hasher = Hasher::new(HashAlgo::Sha256);
    let mut nar_size = 0u64;
    let mut buf = vec![0u8; 1 << 18];
    let werr = |e| StoreError::io("writing", tmp.to_path_buf(), e);
    loop {
        let n = nar
            .read(&mut buf)
            .await
            .map_err(|e| StoreError::stream(format!("reading {what}"), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        nar_size += n as u64;
        enc.write_all(&buf[..n]).await.map_err(werr)?;
    }
    enc.shutdown().await.map_err(werr)?;
    let (buffered, file_hash, file_size) = enc.into_inner().finish();
    let file = buffered.into_inner();
    file.sync_all().await.map_err(werr)?;
    Ok(StagedNar {
        file: tmp,
        compression,
        nar_hash: hasher.finish(),
        nar_size,
        file_hash,
        file_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn staging_hashes_both_sides() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 13) as u8).collect();
        for c in [Compression::None, Compression::Xz, Compression::Zstd] {
            let staged = stage_nar(&data[..], c, dir.path(), "test").await.unwrap();
            assert_eq!(staged.nar_size, data.len() as u64);
            assert_eq!(staged.nar_hash, Hash::of(HashAlgo::Sha256, &data));
            let stored = std::fs::read(&staged.file).unwrap();
            assert_eq!(staged.file_size, stored.len() as u64);
            assert_eq!(staged.file_hash, Hash::of(HashAlgo::Sha256, &stored));
            assert!(staged.key().unwrap().as_str().ends_with(c.extension()));
            if c == Compression::None {
                assert_eq!(stored, data);
            } else {
                assert!(stored.len() < data.len() / 4);
            }
        }
    }

    /// Records what an upload receives.
    #[derive(Default)]
    struct Recorder {
        chunks: Vec<Bytes>,
        preferred: usize,
    }

    #[async_trait::async_trait]
    impl Upload for Recorder {
        fn preferred_chunk(&self) -> usize {
            self.preferred
        }
        async fn write(&mut self, data: Bytes) -> Result<()> {
            self.chunks.push(data);
            Ok(())
        }
        async fn commit(self: Box<Self>, _key: &Key) -> Result<()> {
            Ok(())
        }
        async fn abort(self: Box<Self>) {}
    }

    /// Yields `data`, then fails.
    struct Failing(std::io::Cursor<Vec<u8>>);

    impl AsyncRead for Failing {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.0.position() == self.0.get_ref().len() as u64 {
                return std::task::Poll::Ready(Err(std::io::Error::other("disk on fire")));
            }
            std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn pipeline_sends_preferred_chunks_and_hashes_both_sides() {
        let data = noise(3 * READ_CHUNK + 12_345);
        for c in [Compression::None, Compression::Zstd, Compression::Xz] {
            let mut rec = Recorder {
                preferred: 100_000,
                ..Recorder::default()
            };
            let d = compress_into(&mut rec, &data[..], c, true, "test")
                .await
                .unwrap();
            assert_eq!(d.compression, c, "below the probe size nothing changes");
            assert_eq!(d.nar_size, data.len() as u64);
            assert_eq!(d.nar_hash, Hash::of(HashAlgo::Sha256, &data));
            let (last, whole) = rec.chunks.split_last().unwrap();
            assert!(whole.iter().all(|b| b.len() == 100_000), "{c:?}");
            assert!(!last.is_empty() && last.len() <= 100_000, "{c:?}");
            let stored: Vec<u8> = rec.chunks.concat();
            assert_eq!(d.file_size, stored.len() as u64);
            assert_eq!(d.file_hash, Hash::of(HashAlgo::Sha256, &stored));
            let mut back = Vec::new();
            c.decoder(Box::pin(std::io::Cursor::new(stored)))
                .read_to_end(&mut back)
                .await
                .unwrap();
            assert_eq!(back, data, "{c:?}");
        }
    }

    #[tokio::test]
    async fn written_nar_is_visible_only_after_commit() {
        let root = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::backend::local::LocalStore::open(root.path())
            .await
            .unwrap();
        let data = noise(200_000);
        let pending = write_nar(&store, &data[..], Compression::Zstd, true, tmp.path(), "t")
            .await
            .unwrap();
        let key = pending.digests.key().unwrap();
        assert!(!store.exists(&key).await.unwrap());
        assert_eq!(pending.commit().await.unwrap(), key);
        let stored = std::fs::read(store.object_path(&key)).unwrap();
        let named = Hash::of(HashAlgo::Sha256, &stored).to_base32();
        assert_eq!(key.as_str(), format!("nar/{named}.nar.zst"));

        let pending = write_nar(
            &store,
            &b"other"[..],
            Compression::Zstd,
            true,
            tmp.path(),
            "t",
        )
        .await
        .unwrap();
        let other = pending.digests.key().unwrap();
        pending.abort().await;
        assert!(!store.exists(&other).await.unwrap());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn read_error_fails_and_stores_nothing() {
        let root = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::backend::local::LocalStore::open(root.path())
            .await
            .unwrap();
        let src = Failing(std::io::Cursor::new(noise(3 * READ_CHUNK)));
        let e = write_nar(
            &store,
            src,
            Compression::Zstd,
            true,
            tmp.path(),
            "NAR of 'x'",
        )
        .await
        .err()
        .unwrap();
        assert!(e.to_string().contains("reading NAR of 'x'"), "{e}");
        assert!(!root.path().join("nar").exists());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    /// Stores what it receives; fails on the write after `fail_after`.
    struct Flaky {
        rec: Recorder,
        fail_after: usize,
    }

    #[async_trait::async_trait]
    impl Upload for Flaky {
        fn preferred_chunk(&self) -> usize {
            self.rec.preferred
        }
        async fn write(&mut self, data: Bytes) -> Result<()> {
            if self.rec.chunks.len() == self.fail_after {
                return Err(StoreError::stream(
                    "sending",
                    std::io::Error::other("bucket gone"),
                ));
            }
            self.rec.write(data).await
        }
        async fn commit(self: Box<Self>, _key: &Key) -> Result<()> {
            Ok(())
        }
        async fn abort(self: Box<Self>) {}
    }

    /// Text-like bytes that compress well.
    fn text(len: usize) -> Vec<u8> {
        let words = ["store ", "path ", "narinfo ", "hash ", "zstd ", "kiln\n"];
        let mut out = Vec::with_capacity(len + 16);
        let mut i = 0usize;
        while out.len() < len {
            out.extend_from_slice(words[(i * 7 + i / 5) % words.len()].as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    #[test]
    fn compressibility_is_judged_on_the_sample() {
        assert!(!worth_compressing(&noise(1 << 20)));
        assert!(worth_compressing(&text(1 << 20)));
        // Half noise, half zeros still saves far more than 1/32.
        let mut half = noise(1 << 19);
        half.resize(1 << 20, 0);
        assert!(worth_compressing(&half));
    }

    #[tokio::test]
    async fn incompressible_nar_is_stored_plain_and_hashed_once() {
        let data = noise(PROBE_SIZE + 3 * 100_000 + 777);
        let mut rec = Recorder {
            preferred: 100_000,
            ..Recorder::default()
        };
        let d = compress_into(&mut rec, &data[..], Compression::Zstd, true, "test")
            .await
            .unwrap();
        assert_eq!(d.compression, Compression::None);
        assert_eq!(d.nar_size, data.len() as u64);
        assert_eq!(d.nar_hash, Hash::of(HashAlgo::Sha256, &data));
        assert_eq!((&d.file_hash, d.file_size), (&d.nar_hash, d.nar_size));
        assert!(d.key().unwrap().as_str().ends_with(".nar"));
        let (last, whole) = rec.chunks.split_last().unwrap();
        assert!(whole.iter().all(|b| b.len() == 100_000));
        assert_eq!(last.len(), data.len() % 100_000);
        assert_eq!(rec.chunks.concat(), data);

        // Asked not to, or given compressible data, it compresses.
        for (input, skip) in [(data.clone(), false), (text(PROBE_SIZE + 5), true)] {
            let mut rec = Recorder {
                preferred: 1 << 20,
                ..Recorder::default()
            };
            let d = compress_into(&mut rec, &input[..], Compression::Zstd, skip, "test")
                .await
                .unwrap();
            assert_eq!(d.compression, Compression::Zstd);
            assert_eq!(d.nar_hash, Hash::of(HashAlgo::Sha256, &input));
            let stored = rec.chunks.concat();
            assert_eq!(d.file_hash, Hash::of(HashAlgo::Sha256, &stored));
            let mut back = Vec::new();
            Compression::Zstd
                .decoder(Box::pin(std::io::Cursor::new(stored)))
                .read_to_end(&mut back)
                .await
                .unwrap();
            assert_eq!(back, input);
        }
    }

    #[tokio::test]
    async fn failing_upload_stops_the_pipeline_with_its_error() {
        // Large enough that the reader would block on full channels if
        // nothing stopped it; both the plain and the compressed path.
        let plain = noise(PROBE_SIZE + (8 << 20));
        let packed = text(PROBE_SIZE + (8 << 20));
        // (The text compresses about 10,000 to 1: small chunks make many.)
        for (data, preferred) in [(plain, 1 << 16), (packed, 256)] {
            let mut up = Flaky {
                rec: Recorder {
                    preferred,
                    ..Recorder::default()
                },
                fail_after: 2,
            };
            let run = compress_into(&mut up, &data[..], Compression::Zstd, true, "NAR of 'y'");
            let e = tokio::time::timeout(std::time::Duration::from_secs(60), run)
                .await
                .expect("the pipeline hangs after an upload failure")
                .unwrap_err();
            assert!(e.to_string().contains("bucket gone"), "{e}");
        }
    }
}
