//! Realising paths into a local directory for builders: the closure is
//! downloaded concurrently, each NAR verified against its narinfo (and its
//! signatures when trusted keys are set) while it is unpacked into a staging
//! directory, and moved into place only when everything matched. A refused
//! path leaves nothing behind.

use std::path::{Path, PathBuf};

use futures::stream::{self, StreamExt};
use kiln_nix::narinfo::NarInfo;
use kiln_nix::store_path::StorePath;
use tokio_util::io::SyncIoBridge;

use crate::cache::BinaryCache;
use crate::error::{Result, StoreError};

/// Directory inside the destination where paths are unpacked first.
const STAGING: &str = ".kiln-realise";

/// What [`realise`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RealiseReport {
    /// Paths downloaded and unpacked.
    pub fetched: Vec<StorePath>,
    /// Paths already in the destination.
    pub present: Vec<StorePath>,
}

/// Makes the closure of `roots` present in `dest` (as `dest/<hash>-<name>`),
/// with up to `concurrency` downloads at once.
pub async fn realise(
    cache: &BinaryCache,
    roots: &[StorePath],
    dest: &Path,
    concurrency: usize,
) -> Result<RealiseReport> {
    let infos = cache.closure(roots).await?;
    realise_closure(cache, infos, dest, concurrency).await
}

/// [`realise`] for a closure already looked up with [`BinaryCache::closure`]
/// (saves reading every narinfo a second time).
pub async fn realise_closure(
    cache: &BinaryCache,
    infos: Vec<NarInfo>,
    dest: &Path,
    concurrency: usize,
) -> Result<RealiseReport> {
    let staging = dest.join(STAGING);
    tokio::fs::create_dir_all(&staging)
        .await
        .map_err(|e| StoreError::io("creating directory", &staging, e))?;
    let outcomes: Vec<(StorePath, bool)> = stream::iter(infos.into_iter().map(|info| {
        let staging = staging.clone();
        async move {
            let fetched = realise_one(cache, &info, dest, &staging).await?;
            Ok::<_, StoreError>((info.store_path, fetched))
        }
    }))
    .buffer_unordered(concurrency.max(1))
    // Wait for every started unpack, even after a failure: dropping one
    // mid-way would leave its blocking task writing into staging after we
    // return.
    .collect::<Vec<Result<(StorePath, bool)>>>()
    .await
    .into_iter()
    .collect::<Result<_>>()?;
    let mut report = RealiseReport::default();
    for (p, fetched) in outcomes {
        if fetched {
            report.fetched.push(p);
        } else {
            report.present.push(p);
        }
    }
    report.fetched.sort();
    report.present.sort();
    Ok(report)
}

/// Unpacks one path unless present; returns whether it was fetched.
async fn realise_one(
    cache: &BinaryCache,
    info: &NarInfo,
    dest: &Path,
    staging: &Path,
) -> Result<bool> {
    let base = info.store_path.base_name();
    let target = dest.join(&base);
    if tokio::fs::symlink_metadata(&target).await.is_ok() {
        return Ok(false);
    }
    let started = std::time::Instant::now();
    let nar = cache.nar(info).await?;
    let staging = staging.to_path_buf();
    let what = info.store_path.to_string();
    let (tmp, unpacked): (tempfile::TempDir, PathBuf) = tokio::task::spawn_blocking(move || {
        let tmp = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(&staging)
            .map_err(|e| StoreError::io("creating temporary directory in", &staging, e))?;
        let unpacked = tmp.path().join(&base);
        let mut input = SyncIoBridge::new(nar);
        kiln_nix::nar::unpack(&mut input, &unpacked).map_err(|e| StoreError::Format {
            context: format!("unpacking {what}"),
            message: e.to_string(),
        })?;
        // Read to the end so the verifier checks hash and size.
        std::io::copy(&mut input, &mut std::io::sink())
            .map_err(|e| StoreError::stream(format!("verifying {what}"), e))?;
        Ok::<_, StoreError>((tmp, unpacked))
    })
    .await
    .map_err(|e| StoreError::stream("unpacking", std::io::Error::other(e)))??;
    match tokio::fs::rename(&unpacked, &target).await {
        Ok(()) => {}
        // Another realiser won the race with the same verified content.
        Err(_) if tokio::fs::symlink_metadata(&target).await.is_ok() => {}
        Err(e) => return Err(StoreError::io("moving into place", &target, e)),
    }
    drop(tmp);
    tracing::debug!(
        path = %info.store_path,
        nar_size = info.nar_size,
        ms = started.elapsed().as_secs_f64() * 1e3,
        "path realised"
    );
    Ok(true)
}
