//! A binary cache in a local directory (`file://DIR` or a plain path).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::fs;
use tokio::io::AsyncWriteExt;

use super::{ByteStream, Store};
use crate::error::{Result, StoreError};
use crate::key::Key;

/// Name of the directory, inside the cache, where writes are staged.
const STAGING: &str = ".kiln-tmp";

/// A binary cache rooted at a directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Opens a cache directory, creating it when missing. An existing
    /// directory is not written to until something is stored.
    pub async fn open(root: impl Into<PathBuf>) -> Result<LocalStore> {
        let root = root.into();
        fs::create_dir_all(&root)
            .await
            .map_err(|e| StoreError::io("creating directory", &root, e))?;
        Ok(LocalStore { root })
    }

    /// The default cache directory: `$XDG_CACHE_HOME/kiln/store` or
    /// `~/.cache/kiln/store`.
    pub fn default_root(env: impl Fn(&str) -> Option<String>) -> PathBuf {
        match (env("XDG_CACHE_HOME"), env("HOME")) {
            (Some(x), _) if !x.is_empty() => PathBuf::from(x).join("kiln/store"),
            (_, Some(h)) => PathBuf::from(h).join(".cache/kiln/store"),
            _ => PathBuf::from(".kiln-store"),
        }
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where an object lives on disk. Keys are validated, so this stays
    /// inside the root.
    pub fn object_path(&self, key: &Key) -> PathBuf {
        self.root.join(key.as_str())
    }

    async fn staged(&self, key: &Key) -> Result<tempfile::TempPath> {
        let dir = self.root.join(STAGING);
        fs::create_dir_all(&dir)
            .await
            .map_err(|e| StoreError::io("creating directory", &dir, e))?;
        let tmp = tokio::task::spawn_blocking(move || {
            tempfile::Builder::new()
                .prefix("put-")
                .tempfile_in(&dir)
                .map_err(|e| (dir, e))
        })
        .await
        .map_err(|e| StoreError::stream(format!("staging '{key}'"), std::io::Error::other(e)))?
        .map_err(|(dir, e)| StoreError::io("creating temporary file in", dir, e))?;
        Ok(tmp.into_temp_path())
    }

    async fn publish(&self, tmp: tempfile::TempPath, key: &Key) -> Result<()> {
        let dest = self.object_path(key);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .await
                .map_err(|e| StoreError::io("creating directory", parent, e))?;
        }
        let tmp_path = tmp.to_path_buf();
        let file = fs::File::open(&tmp_path)
            .await
            .map_err(|e| StoreError::io("opening", &tmp_path, e))?;
        file.sync_all()
            .await
            .map_err(|e| StoreError::io("syncing", &tmp_path, e))?;
        tmp.persist(&dest)
            .map_err(|e| StoreError::io("renaming into place", &dest, e.error))?;
        Ok(())
    }
}

#[async_trait]
impl Store for LocalStore {
    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn get(&self, key: &Key) -> Result<Option<ByteStream>> {
        let path = self.object_path(key);
        match fs::File::open(&path).await {
            Ok(f) => Ok(Some(Box::pin(f))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("opening", path, e)),
        }
    }

    async fn exists(&self, key: &Key) -> Result<bool> {
        let path = self.object_path(key);
        match fs::metadata(&path).await {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io("checking", path, e)),
        }
    }

    async fn put_file(&self, key: &Key, file: &Path) -> Result<()> {
        let tmp = self.staged(key).await?;
        fs::copy(file, &tmp)
            .await
            .map_err(|e| StoreError::io("copying", file, e))?;
        self.publish(tmp, key).await
    }

    async fn put_bytes(&self, key: &Key, data: Bytes) -> Result<()> {
        let tmp = self.staged(key).await?;
        let mut f = fs::File::create(&tmp)
            .await
            .map_err(|e| StoreError::io("writing", tmp.to_path_buf(), e))?;
        f.write_all(&data)
            .await
            .map_err(|e| StoreError::io("writing", tmp.to_path_buf(), e))?;
        drop(f);
        self.publish(tmp, key).await
    }

    async fn put_bytes_if_absent(&self, key: &Key, data: Bytes) -> Result<bool> {
        let tmp = self.staged(key).await?;
        let mut f = fs::File::create(&tmp)
            .await
            .map_err(|e| StoreError::io("writing", tmp.to_path_buf(), e))?;
        f.write_all(&data)
            .await
            .map_err(|e| StoreError::io("writing", tmp.to_path_buf(), e))?;
        f.sync_all()
            .await
            .map_err(|e| StoreError::io("syncing", tmp.to_path_buf(), e))?;
        drop(f);
        let dest = self.object_path(key);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .await
                .map_err(|e| StoreError::io("creating directory", parent, e))?;
        }
        // A hard link, unlike a rename, never replaces what is there: of
        // concurrent writers exactly one succeeds, and a reader sees the
        // whole file or nothing. The staged name goes when `tmp` drops.
        match fs::hard_link(&tmp, &dest).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(StoreError::io("linking into place", dest, e)),
        }
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        let path = self.object_path(key);
        match fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("removing", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_root_follows_xdg() {
        let env = |k: &str| match k {
            "HOME" => Some("/home/u".to_string()),
            _ => None,
        };
        assert_eq!(
            LocalStore::default_root(env),
            PathBuf::from("/home/u/.cache/kiln/store")
        );
        let env = |k: &str| Some(format!("/x/{k}"));
        assert_eq!(
            LocalStore::default_root(env),
            PathBuf::from("/x/XDG_CACHE_HOME/kiln/store")
        );
    }
}
