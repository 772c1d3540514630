//! The Nix binary cache layout over any [`Store`]: `nix-cache-info`,
//! signed narinfos, compressed NARs, logs; existence checks with a short
//! positive cache; verified NAR streams; uploads that write a narinfo only
//! once its NAR is stored; closure queries.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use kiln_nix::hash::{Hash, HashAlgo, Hasher};
use kiln_nix::narinfo::{ContentAddress, NarInfo, NixCacheInfo};
use kiln_nix::signing::{SecretKey, TrustedKeys};
use kiln_nix::store_path::{StorePath, STORE_DIR};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::backend::{get_small, read_ahead, read_ahead_checked, ByteStream, Store};
use crate::compression::{Compression, NarCheck, VerifyingReader};
use crate::error::{Result, StoreError};
use crate::ingest::write_nar;
use crate::key::Key;

/// Largest narinfo or `nix-cache-info` accepted.
pub const MAX_NARINFO_SIZE: u64 = 1 << 20;
/// Largest build log accepted in memory.
pub const MAX_LOG_SIZE: u64 = 64 << 20;
/// Chunks of a NAR fetched ahead of its decompression and verification
/// (as received: tens to hundreds of KiB each from S3 and HTTP).
const NAR_READ_AHEAD: usize = 64;
/// Most entries kept in the positive existence cache.
const POSITIVE_CACHE_CAP: usize = 200_000;

/// How a [`BinaryCache`] reads and writes.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Compression of NARs written.
    pub compression: Compression,
    /// Store a NAR uncompressed (`Compression: none`) when its first
    /// [`PROBE_SIZE`](crate::ingest::PROBE_SIZE) bytes prove incompressible, which spares compressing
    /// (and a second hash) on upload and decompressing on download.
    pub skip_incompressible: bool,
    /// When set, only paths signed by one of these keys are accepted.
    pub trusted_keys: Option<TrustedKeys>,
    /// Keys that sign every narinfo written.
    pub secret_keys: Vec<SecretKey>,
    /// How long a positive existence answer is remembered.
    pub positive_ttl: Duration,
    /// Where NARs are staged before upload.
    pub temp_dir: PathBuf,
    /// Paths fetched at once by closure queries.
    pub concurrency: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            compression: Compression::Zstd,
            skip_incompressible: true,
            trusted_keys: None,
            secret_keys: Vec::new(),
            positive_ttl: Duration::from_secs(30),
            temp_dir: std::env::temp_dir(),
            concurrency: 16,
        }
    }
}

/// What describes a path apart from its NAR, for [`BinaryCache::add_path`].
#[derive(Debug, Clone)]
pub struct PathMeta {
    /// The store path.
    pub path: StorePath,
    /// Its references.
    pub references: BTreeSet<StorePath>,
    /// The derivation that built it.
    pub deriver: Option<StorePath>,
    /// The system it was built for.
    pub system: Option<String>,
    /// Its content address, if content-addressed.
    pub ca: Option<ContentAddress>,
    /// Signatures to keep.
    pub sigs: BTreeSet<String>,
    /// When known, the NAR's expected hash and size: the upload is refused
    /// if the stream does not match.
    pub expected: Option<(kiln_nix::hash::Hash, u64)>,
}

impl PathMeta {
    /// Metadata copied from an existing narinfo, expecting its NAR.
    pub fn from_narinfo(info: &NarInfo) -> PathMeta {
        PathMeta {
            path: info.store_path.clone(),
            references: info.references.clone(),
            deriver: info.deriver.clone(),
            system: info.system.clone(),
            ca: info.ca.clone(),
            sigs: info.sigs.clone(),
            expected: Some((info.nar_hash.clone(), info.nar_size)),
        }
    }
}

/// A Nix binary cache over an object store.
#[derive(Debug)]
pub struct BinaryCache {
    store: Arc<dyn Store>,
    opts: CacheOptions,
    positive: Mutex<HashMap<String, Instant>>,
}

impl BinaryCache {
    /// A cache over `store`.
    pub fn new(store: Arc<dyn Store>, opts: CacheOptions) -> BinaryCache {
        BinaryCache {
            store,
            opts,
            positive: Mutex::new(HashMap::new()),
        }
    }

    /// The object store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The options in use.
    pub fn options(&self) -> &CacheOptions {
        &self.opts
    }

    fn malformed(&self, key: &Key, message: impl ToString) -> StoreError {
        StoreError::Malformed {
            store: self.store.url(),
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    async fn small_text(&self, key: &Key) -> Result<Option<String>> {
        match get_small(self.store.as_ref(), key, MAX_NARINFO_SIZE).await? {
            None => Ok(None),
            Some(b) => String::from_utf8(b)
                .map(Some)
                .map_err(|_| self.malformed(key, "not UTF-8")),
        }
    }

    /// Reads `nix-cache-info`, if present.
    pub async fn cache_info(&self) -> Result<Option<NixCacheInfo>> {
        let key = Key::cache_info();
        let Some(text) = self.small_text(&key).await? else {
            return Ok(None);
        };
        let whence = format!("{}/{key}", self.store.url());
        let info = NixCacheInfo::parse(&text, &whence).map_err(|e| self.malformed(&key, e))?;
        if info.store_dir != STORE_DIR {
            return Err(self.malformed(
                &key,
                format!("cache is for store '{}', not '{STORE_DIR}'", info.store_dir),
            ));
        }
        Ok(Some(info))
    }

    /// Writes `nix-cache-info` unless the cache already has one.
    pub async fn ensure_cache_info(&self) -> Result<()> {
        if self.cache_info().await?.is_none() {
            let mut info = NixCacheInfo::new(STORE_DIR);
            info.want_mass_query = Some(true);
            info.priority = Some(40);
            let text = info.to_cache_info_string();
            self.store
                .put_bytes(&Key::cache_info(), Bytes::from(text))
                .await?;
        }
        Ok(())
    }

    fn remember(&self, hash_part: &str) {
        let mut map = self.positive.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= POSITIVE_CACHE_CAP {
            let ttl = self.opts.positive_ttl;
            map.retain(|_, t| t.elapsed() < ttl);
            if map.len() >= POSITIVE_CACHE_CAP {
                map.clear();
            }
        }
        map.insert(hash_part.to_string(), Instant::now());
    }

    fn remembered(&self, hash_part: &str) -> bool {
        let map = self.positive.lock().unwrap_or_else(|p| p.into_inner());
        map.get(hash_part)
            .is_some_and(|t| t.elapsed() < self.opts.positive_ttl)
    }

    /// Which of `hash_parts` have a narinfo, in order. Positive answers are
    /// remembered for [`CacheOptions::positive_ttl`].
    pub async fn has_paths(&self, hash_parts: &[String]) -> Result<Vec<bool>> {
        let mut answer: Vec<bool> = hash_parts.iter().map(|h| self.remembered(h)).collect();
        let mut ask = Vec::new();
        let mut idx = Vec::new();
        for (i, h) in hash_parts.iter().enumerate() {
            if !answer[i] {
                ask.push(Key::narinfo(h)?);
                idx.push(i);
            }
        }
        if !ask.is_empty() {
            let found = self.store.exists_many(&ask).await?;
            for (i, present) in idx.into_iter().zip(found) {
                if present {
                    self.remember(&hash_parts[i]);
                }
                answer[i] = present;
            }
        }
        Ok(answer)
    }

    /// Parses a narinfo's text, checking that it describes `path`.
    pub fn parse_narinfo(
        &self,
        text: &str,
        key: &Key,
        path: Option<&StorePath>,
    ) -> Result<NarInfo> {
        let whence = format!("{}/{key}", self.store.url());
        let info = NarInfo::parse(text, &whence).map_err(|e| self.malformed(key, e))?;
        if let Some(p) = path {
            if &info.store_path != p {
                return Err(
                    self.malformed(key, format!("describes '{}', not '{p}'", info.store_path))
                );
            }
        }
        Ok(info)
    }

    /// Checks a narinfo's signatures against the trusted keys, if any.
    pub fn check_trust(&self, info: &NarInfo) -> Result<()> {
        if let Some(trusted) = &self.opts.trusted_keys {
            let valid = info
                .verify_signatures(trusted)
                .map_err(|e| StoreError::Format {
                    context: format!("verifying signatures of '{}'", info.store_path),
                    message: e.to_string(),
                })?;
            if valid == 0 {
                return Err(StoreError::Untrusted {
                    path: info.store_path.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The narinfo of `path`, or `None` when the cache lacks it. Refused if
    /// malformed, about another path, or (with trusted keys) unsigned.
    pub async fn path_info(&self, path: &StorePath) -> Result<Option<NarInfo>> {
        let key = Key::narinfo(&path.hash_part())?;
        let Some(text) = self.small_text(&key).await? else {
            return Ok(None);
        };
        let info = self.parse_narinfo(&text, &key, Some(path))?;
        self.check_trust(&info)?;
        self.remember(&path.hash_part());
        Ok(Some(info))
    }

    /// Like [`BinaryCache::path_info`], but a missing path is an error.
    pub async fn require_info(&self, path: &StorePath) -> Result<NarInfo> {
        self.path_info(path)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                store: self.store.url(),
                path: path.to_string(),
            })
    }

    /// The key of the NAR file a narinfo points to.
    pub fn nar_key(&self, info: &NarInfo) -> Result<Key> {
        let key = Key::parse(&info.url)?;
        if key.kind() != crate::key::KeyKind::Nar {
            return Err(StoreError::Malformed {
                store: self.store.url(),
                key: format!("{}.narinfo", info.store_path.hash_part()),
                message: format!("URL '{}' is not a NAR", info.url),
            });
        }
        Ok(key)
    }

    /// The uncompressed NAR of a path, verified against its narinfo as it
    /// streams: reading to the end fails if hash or size differ.
    pub async fn nar(&self, info: &NarInfo) -> Result<ByteStream> {
        self.nar_inspected(info, |_| {}).await
    }

    /// [`BinaryCache::nar`] that also shows `inspect` each chunk of the
    /// file as stored (compressed), as it arrives: the gateway measures an
    /// uploaded NAR's file this way while it verifies its content.
    pub async fn nar_inspected(
        &self,
        info: &NarInfo,
        inspect: impl FnMut(&[u8]) + Send + 'static,
    ) -> Result<ByteStream> {
        let mut inspect = inspect;
        let key = self.nar_key(info)?;
        let compression =
            Compression::from_name(&info.compression).ok_or_else(|| StoreError::Malformed {
                store: self.store.url(),
                key: format!("{}.narinfo", info.store_path.hash_part()),
                message: format!("unsupported compression '{}'", info.compression),
            })?;
        let raw = self
            .store
            .get_chunks(&key)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                store: self.store.url(),
                path: format!("{} (its NAR {key})", info.store_path),
            })?;
        let raw: crate::backend::ChunkStream = Box::pin(raw.inspect_ok(move |c| inspect(c)));
        let what = format!("NAR of '{}' from '{}'", info.store_path, self.store.url());
        if compression == Compression::None {
            // The file is the NAR: check it as it is received.
            let check = NarCheck::new(info.nar_hash.clone(), info.nar_size, what);
            return Ok(read_ahead_checked(raw, NAR_READ_AHEAD, Some(check)));
        }
        let plain = compression.decoder(read_ahead(raw, NAR_READ_AHEAD));
        Ok(Box::pin(VerifyingReader::new(
            plain,
            info.nar_hash.clone(),
            info.nar_size,
            what,
        )))
    }

    /// Stores a path from its NAR stream: compress, hash and upload the NAR
    /// in one pipelined pass (uncompressed when it proves incompressible,
    /// see [`CacheOptions::skip_incompressible`]), make it visible once its
    /// hashes are checked, then sign and write the narinfo. Nothing is
    /// written when the stream fails or does not match `meta.expected`.
    ///
    /// A path is written once: when its narinfo exists already (before the
    /// upload, even in a read-only store, or because a concurrent writer got
    /// there first), that narinfo is returned and nothing more is written.
    /// So the caller must use the returned `nar_hash`, which may differ from
    /// its own when the build is not reproducible. The stream is always
    /// read to its end, so that a writer on its other side finishes and the
    /// error returned here is the one that matters.
    pub async fn add_path<R: AsyncRead + Unpin + Send>(
        &self,
        meta: PathMeta,
        mut nar: R,
    ) -> Result<NarInfo> {
        let existing = match self.path_info(&meta.path).await {
            Ok(e) => e,
            Err(e) => {
                drain(&mut nar).await;
                return Err(e);
            }
        };
        if let Some(existing) = existing {
            let ours = drain(&mut nar).await;
            note_if_different(&existing, ours.as_ref());
            return Ok(existing);
        }
        if !self.store.writable() {
            drain(&mut nar).await;
            return Err(StoreError::ReadOnly {
                store: self.store.url(),
            });
        }
        let what = format!("NAR of '{}'", meta.path);
        let started = std::time::Instant::now();
        let pending = write_nar(
            self.store.as_ref(),
            nar,
            self.opts.compression,
            self.opts.skip_incompressible,
            &self.opts.temp_dir,
            &what,
        )
        .await?;
        let staged = pending.digests.clone();
        if let Some((hash, size)) = &meta.expected {
            let mismatch = if staged.nar_size != *size {
                Some(("NAR size", size.to_string(), staged.nar_size.to_string()))
            } else if &staged.nar_hash != hash {
                Some((
                    "NAR hash",
                    hash.to_nix_base32_prefixed(),
                    staged.nar_hash.to_nix_base32_prefixed(),
                ))
            } else {
                None
            };
            if let Some((what, expected, got)) = mismatch {
                pending.abort().await;
                return Err(StoreError::Mismatch {
                    what,
                    path: meta.path.to_string(),
                    expected,
                    got,
                });
            }
        }
        // Staging took a while: another writer may have finished meanwhile,
        // and then this NAR is not needed.
        if let Some(existing) = self.path_info(&meta.path).await? {
            pending.abort().await;
            note_if_different(&existing, Some(&(staged.nar_hash, staged.nar_size)));
            return Ok(existing);
        }
        let staged_ms = started.elapsed().as_secs_f64() * 1e3;
        let key = pending.commit().await?;
        let committed_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut info = NarInfo {
            store_path: meta.path,
            url: key.to_string(),
            compression: staged.compression.name().to_string(),
            file_hash: Some(staged.file_hash.clone()),
            file_size: staged.file_size,
            nar_hash: staged.nar_hash.clone(),
            nar_size: staged.nar_size,
            references: meta.references,
            deriver: meta.deriver,
            system: meta.system,
            sigs: meta.sigs,
            ca: meta.ca,
        };
        let info = self.put_narinfo_once(&mut info).await?;
        tracing::debug!(
            path = %info.store_path,
            nar_size = info.nar_size,
            compression = %info.compression,
            staged_ms,
            committed_ms,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "path added"
        );
        Ok(info)
    }

    /// Signs `info` with the configured keys and writes it unless the path
    /// has a narinfo already; the caller guarantees its NAR is stored.
    /// Returns the narinfo that is in the store afterwards: `info` itself,
    /// or the one a concurrent writer stored first.
    pub async fn put_narinfo_once(&self, info: &mut NarInfo) -> Result<NarInfo> {
        let mut wait = Duration::from_millis(50);
        for _ in 0..WRITE_ONCE_ATTEMPTS {
            match self.put_narinfo(info).await {
                Ok(()) => return Ok(info.clone()),
                Err(StoreError::Exists { .. }) => {}
                Err(e) => return Err(e),
            }
            if let Some(winner) = self.path_info(&info.store_path).await? {
                note_if_different(&winner, Some(&(info.nar_hash.clone(), info.nar_size)));
                return Ok(winner);
            }
            // Taken but not readable yet: an S3 conditional write still
            // in progress (409). Ask again shortly.
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        Err(StoreError::Exists {
            store: self.store.url(),
            path: info.store_path.to_string(),
        })
    }

    /// Signs `info` with the configured keys and writes it, unless the path
    /// has a narinfo already ([`StoreError::Exists`]): a path is written
    /// once. The caller guarantees its NAR is already stored.
    pub async fn put_narinfo(&self, info: &mut NarInfo) -> Result<()> {
        let path = info.store_path.to_string();
        let fmt_err = |e: kiln_nix::narinfo::NarInfoError| StoreError::Format {
            context: format!("writing narinfo of '{path}'"),
            message: e.to_string(),
        };
        for k in &self.opts.secret_keys {
            info.sign(k).map_err(fmt_err)?;
        }
        let text = info.to_narinfo_string().map_err(fmt_err)?;
        let hash_part = info.store_path.hash_part();
        let written = self
            .store
            .put_bytes_if_absent(&Key::narinfo(&hash_part)?, Bytes::from(text))
            .await?;
        if !written {
            return Err(StoreError::Exists {
                store: self.store.url(),
                path,
            });
        }
        self.remember(&hash_part);
        Ok(())
    }

    /// Stores a build log for a derivation.
    pub async fn put_log(&self, drv: &StorePath, log: Bytes) -> Result<()> {
        self.store
            .put_bytes(&Key::log(&drv.base_name())?, log)
            .await
    }

    /// A derivation's build log, if stored.
    pub async fn get_log(&self, drv: &StorePath) -> Result<Option<Vec<u8>>> {
        get_small(
            self.store.as_ref(),
            &Key::log(&drv.base_name())?,
            MAX_LOG_SIZE,
        )
        .await
    }
}

/// Attempts to write or read back a narinfo in [`BinaryCache::put_narinfo_once`].
const WRITE_ONCE_ATTEMPTS: u32 = 6;

/// Reads `nar` to its end (what its writer sends is not needed) and returns
/// the NAR's hash and size, or `None` when the stream failed.
async fn drain<R: AsyncRead + Unpin>(nar: &mut R) -> Option<(Hash, u64)> {
    let mut hasher = Hasher::new(HashAlgo::Sha256);
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match nar.read(&mut buf).await {
            Ok(0) => return Some((hasher.finish(), size)),
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Err(_) => return None,
        }
    }
}

/// Logs when a path stored by another writer differs from this writer's
/// copy (a build that is not reproducible): the store's copy wins.
fn note_if_different(stored: &NarInfo, ours: Option<&(Hash, u64)>) {
    if let Some((hash, size)) = ours {
        if *hash != stored.nar_hash || *size != stored.nar_size {
            tracing::warn!(
                path = %stored.store_path,
                stored = %stored.nar_hash.to_sri(),
                ours = %hash.to_sri(),
                "path already in the store with other content (not reproducible?); the store's copy is kept"
            );
        }
    }
}
