//! Realising paths into a local directory for builders: the closure is
//! downloaded concurrently, each NAR verified against its narinfo (and its
//! signatures when trusted keys are set) while it is unpacked into a staging
//! directory, and moved into place only when everything matched. A refused
//! path leaves nothing behind.
//!
//! A copy already in the destination is used only when it agrees with the
//! store: the first time a copy is seen (a builder may have put its own
//! output there, and another writer's copy may have won the store, see
//! [`BinaryCache::add_path`]), its NAR hash is computed and compared with
//! the narinfo's; a copy that agrees is recorded in [`VERIFIED`] so that
//! later realisations are a file read, and one that does not is replaced by
//! the store's.

use std::path::{Path, PathBuf};

use futures::stream::{self, StreamExt};
use kiln_nix::narinfo::NarInfo;
use kiln_nix::store_path::StorePath;
use tokio_util::io::SyncIoBridge;

use crate::cache::BinaryCache;
use crate::error::{Result, StoreError};

/// Directory inside the destination where paths are unpacked first.
const STAGING: &str = ".kiln-realise";
/// Directory inside the destination holding, per path, the NAR hash (SRI)
/// its copy was found to have.
pub const VERIFIED: &str = ".kiln-verified";

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
        if copy_agrees(info, dest, &target).await? {
            return Ok(false);
        }
        set_aside(&target, staging).await?;
    }
    let started = std::time::Instant::now();
    let nar = cache.nar(info).await?;
    let staging_dir = staging.to_path_buf();
    let what = info.store_path.to_string();
    let (tmp, unpacked): (tempfile::TempDir, PathBuf) = tokio::task::spawn_blocking(move || {
        let tmp = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(&staging_dir)
            .map_err(|e| StoreError::io("creating temporary directory in", &staging_dir, e))?;
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
    let mut attempts = 0;
    loop {
        match tokio::fs::rename(&unpacked, &target).await {
            Ok(()) => {
                record_verified(info, dest).await?;
                break;
            }
            // Someone put a copy there meanwhile: a realiser with the same
            // verified content, or a builder with its own.
            Err(_) if tokio::fs::symlink_metadata(&target).await.is_ok() => {
                if copy_agrees(info, dest, &target).await? {
                    break;
                }
                attempts += 1;
                if attempts > 3 {
                    return Err(StoreError::Stream {
                        context: format!("realising {} in '{}'", info.store_path, dest.display()),
                        cause: std::io::Error::other("a disagreeing copy keeps appearing there"),
                    });
                }
                set_aside(&target, staging).await?;
            }
            Err(e) => return Err(StoreError::io("moving into place", &target, e)),
        }
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

fn marker(dest: &Path, info: &NarInfo) -> PathBuf {
    dest.join(VERIFIED).join(info.store_path.base_name())
}

/// Records that the copy of `info`'s path in `dest` has its NAR hash.
async fn record_verified(info: &NarInfo, dest: &Path) -> Result<()> {
    let file = marker(dest, info);
    let dir = dest.join(VERIFIED);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| StoreError::io("creating directory", &dir, e))?;
    tokio::fs::write(&file, info.nar_hash.to_sri())
        .await
        .map_err(|e| StoreError::io("writing", &file, e))
}

/// Whether the copy at `target` has the NAR hash and size of `info`:
/// recorded before, or computed now (and then recorded).
async fn copy_agrees(info: &NarInfo, dest: &Path, target: &Path) -> Result<bool> {
    let want = info.nar_hash.to_sri();
    if tokio::fs::read_to_string(marker(dest, info))
        .await
        .is_ok_and(|seen| seen == want)
    {
        return Ok(true);
    }
    let path = target.to_path_buf();
    let digest =
        tokio::task::spawn_blocking(move || kiln_nix::nar::dump_path(&path, std::io::sink()))
            .await
            .map_err(|e| StoreError::stream("hashing", std::io::Error::other(e)))?;
    match digest {
        Ok((_, d)) if d.hash == info.nar_hash && d.size == info.nar_size => {
            record_verified(info, dest).await?;
            Ok(true)
        }
        Ok((_, d)) => {
            tracing::warn!(
                path = %info.store_path,
                local = %d.hash.to_sri(),
                store = %want,
                "local copy differs from the store's; replacing it"
            );
            Ok(false)
        }
        Err(e) => {
            tracing::warn!(path = %info.store_path, "local copy unreadable ({e}); replacing it");
            Ok(false)
        }
    }
}

/// Moves a disagreeing copy out of the way (into `staging`, so that a build
/// which bound it keeps its files) and removes it.
async fn set_aside(target: &Path, staging: &Path) -> Result<()> {
    let aside = staging.join(format!("stale-{}", uuid::Uuid::new_v4()));
    match tokio::fs::rename(target, &aside).await {
        Ok(()) => {}
        // Another realiser set it aside first.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("moving aside", target, e)),
    }
    tokio::task::spawn_blocking(move || remove_tree(&aside))
        .await
        .map_err(|e| StoreError::stream("removing", std::io::Error::other(e)))?
}

/// Removes a tree whose directories may be read-only (as store paths are).
pub fn remove_tree(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let md = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("reading", path, e)),
    };
    if !md.is_dir() {
        return std::fs::remove_file(path).map_err(|e| StoreError::io("removing", path, e));
    }
    let mode = md.permissions().mode();
    if mode & 0o700 != 0o700 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o700))
            .map_err(|e| StoreError::io("making writable", path, e))?;
    }
    let entries = std::fs::read_dir(path).map_err(|e| StoreError::io("reading", path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("reading", path, e))?;
        remove_tree(&entry.path())?;
    }
    std::fs::remove_dir(path).map_err(|e| StoreError::io("removing", path, e))
}
