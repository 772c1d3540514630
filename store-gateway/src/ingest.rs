//! Staging a NAR for upload: compress and hash it in one streaming pass
//! into a temporary file, so the narinfo can be written from what was
//! actually stored and no NAR is ever held whole in memory.

use std::path::Path;

use kiln_nix::hash::{Hash, HashAlgo, Hasher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::compression::{Compression, HashingAsyncWriter};
use crate::error::{Result, StoreError};
use crate::key::Key;

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
        Ok(Key::parse(&format!(
            "nar/{}{}",
            self.file_hash.to_base32(),
            self.compression.extension()
        ))?)
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
}
