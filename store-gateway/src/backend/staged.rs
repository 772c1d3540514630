//! The default [`Upload`]: bytes go to a temporary file, which is stored
//! with [`Store::put_file`] once its key is known.

use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufWriter};

use super::{Store, Upload};
use crate::error::{Result, StoreError};
use crate::key::Key;

/// An upload staged in a temporary file (removed when dropped).
pub struct FileUpload<'a, S: ?Sized> {
    store: &'a S,
    path: tempfile::TempPath,
    file: BufWriter<tokio::fs::File>,
}

impl<'a, S: Store + ?Sized> FileUpload<'a, S> {
    /// Creates the staging file in `temp_dir`.
    pub async fn create(store: &'a S, temp_dir: &Path) -> Result<FileUpload<'a, S>> {
        let dir = temp_dir.to_path_buf();
        let tmp = tokio::task::spawn_blocking(move || {
            tempfile::Builder::new()
                .prefix("kiln-upload-")
                .tempfile_in(&dir)
                .map_err(|e| (dir, e))
        })
        .await
        .map_err(|e| StoreError::stream("staging an upload", std::io::Error::other(e)))?
        .map_err(|(dir, e)| StoreError::io("creating temporary file in", dir, e))?
        .into_temp_path();
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&tmp)
            .await
            .map_err(|e| StoreError::io("opening", tmp.to_path_buf(), e))?;
        Ok(FileUpload {
            store,
            path: tmp,
            file: BufWriter::with_capacity(1 << 20, file),
        })
    }
}

#[async_trait]
impl<S: Store + ?Sized> Upload for FileUpload<'_, S> {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.file
            .write_all(&data)
            .await
            .map_err(|e| StoreError::io("writing", self.path.to_path_buf(), e))
    }

    async fn commit(mut self: Box<Self>, key: &Key) -> Result<()> {
        self.file
            .flush()
            .await
            .map_err(|e| StoreError::io("writing", self.path.to_path_buf(), e))?;
        if !self.store.exists(key).await? {
            self.store.put_file(key, &self.path).await?;
        }
        Ok(())
    }

    async fn abort(self: Box<Self>) {}
}
