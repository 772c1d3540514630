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

/// Bytes read from the NAR at a time.
const READ_CHUNK: usize = 1 << 20;
/// Chunks read ahead of the compressor.
const READ_AHEAD: usize = 4;
/// Most compressed bytes gathered before they are handed to the upload.
const MAX_FLUSH: usize = 64 << 20;

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
/// stage uploads in files). `what` names the source in errors. On error
/// the upload is aborted.
pub async fn write_nar<'a, R: AsyncRead + Unpin + Send>(
    store: &'a dyn Store,
    nar: R,
    compression: Compression,
    temp_dir: &Path,
    what: &str,
) -> Result<PendingNar<'a>> {
    let mut upload = store.begin_upload(KeyKind::Nar, temp_dir).await?;
    match compress_into(upload.as_mut(), nar, compression, what).await {
        Ok(digests) => Ok(PendingNar { upload, digests }),
        Err(e) => {
            upload.abort().await;
            Err(e)
        }
    }
}

/// Hands every whole chunk of `want` bytes at the start of `out` to
/// `upload`, keeping the rest in `out`.
async fn send_full(
    upload: &mut (dyn Upload + '_),
    out: &mut Vec<u8>,
    want: &mut usize,
) -> Result<()> {
    while out.len() >= *want {
        let rest = out.split_off(*want);
        let full = std::mem::replace(out, rest);
        upload.write(Bytes::from(full)).await?;
        *want = upload.preferred_chunk().clamp(1, MAX_FLUSH);
    }
    Ok(())
}

/// The pipeline of [`write_nar`]: one future reads ahead into a bounded
/// channel while the other hashes, compresses and sends.
async fn compress_into<R: AsyncRead + Unpin + Send>(
    upload: &mut (dyn Upload + '_),
    mut nar: R,
    compression: Compression,
    what: &str,
) -> Result<NarDigests> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(READ_AHEAD);
    // The NAR's own hash is computed by a task of its own, on another
    // thread when the runtime has one, beside compression and file hashing.
    let (hash_tx, mut hash_rx) = tokio::sync::mpsc::channel::<Bytes>(READ_AHEAD);
    let nar_hasher = tokio::spawn(async move {
        let mut hasher = Hasher::new(HashAlgo::Sha256);
        let mut size = 0u64;
        while let Some(chunk) = hash_rx.recv().await {
            hasher.update(&chunk);
            size += chunk.len() as u64;
        }
        (hasher.finish(), size)
    });
    let feed = async move {
        loop {
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            let n = nar
                .read_buf(&mut buf)
                .await
                .map_err(|e| StoreError::stream(format!("reading {what}"), e))?;
            if n == 0 {
                return Ok::<_, StoreError>(());
            }
            let chunk = buf.freeze();
            // A closed channel means the consumer failed; its error wins.
            if hash_tx.send(chunk.clone()).await.is_err() || tx.send(chunk).await.is_err() {
                return Ok(());
            }
        }
    };
    let consume = async {
        let werr = |e| StoreError::stream(format!("compressing {what}"), e);
        // Compressed bytes go to the upload in the chunks it prefers, so
        // that a multipart upload can send them as parts without copying.
        let mut want = upload.preferred_chunk().clamp(1, MAX_FLUSH);
        let mut enc = compression.encoder(HashingAsyncWriter::new(Vec::with_capacity(
            want + READ_CHUNK,
        )));
        while let Some(chunk) = rx.recv().await {
            enc.write_all(&chunk).await.map_err(werr)?;
            let out = enc.get_mut().get_mut();
            send_full(upload, out, &mut want).await?;
            out.reserve((want + READ_CHUNK).saturating_sub(out.len()));
        }
        enc.shutdown().await.map_err(werr)?;
        let (mut rest, file_hash, file_size) = enc.into_inner().finish();
        send_full(upload, &mut rest, &mut want).await?;
        if !rest.is_empty() {
            upload.write(Bytes::from(rest)).await?;
        }
        Ok::<_, StoreError>((file_hash, file_size))
    };
    let (fed, consumed) = tokio::join!(feed, consume);
    // A read error ends the channel early, which the consumer cannot tell
    // from the NAR's end: the reader's verdict comes first.
    fed?;
    let (file_hash, file_size) = consumed?;
    let (nar_hash, nar_size) = nar_hasher
        .await
        .map_err(|e| StoreError::stream(format!("hashing {what}"), std::io::Error::other(e)))?;
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
            let d = compress_into(&mut rec, &data[..], c, "test").await.unwrap();
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
        let pending = write_nar(&store, &data[..], Compression::Zstd, tmp.path(), "t")
            .await
            .unwrap();
        let key = pending.digests.key().unwrap();
        assert!(!store.exists(&key).await.unwrap());
        assert_eq!(pending.commit().await.unwrap(), key);
        let stored = std::fs::read(store.object_path(&key)).unwrap();
        let named = Hash::of(HashAlgo::Sha256, &stored).to_base32();
        assert_eq!(key.as_str(), format!("nar/{named}.nar.zst"));

        let pending = write_nar(&store, &b"other"[..], Compression::Zstd, tmp.path(), "t")
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
        let e = write_nar(&store, src, Compression::Zstd, tmp.path(), "NAR of 'x'")
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("reading NAR of 'x'"), "{e}");
        assert!(!root.path().join("nar").exists());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
