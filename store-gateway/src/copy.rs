//! Copying paths between caches, closures by default, dependencies first,
//! so the destination never holds a path whose references are missing.

use kiln_nix::narinfo::NarInfo;
use kiln_nix::store_path::StorePath;

use crate::cache::{BinaryCache, PathMeta};
use crate::error::Result;
use crate::key::Key;

/// What [`copy_paths`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Paths uploaded to the destination, in upload order.
    pub copied: Vec<StorePath>,
    /// Paths the destination already had.
    pub present: Vec<StorePath>,
}

/// Copies `paths` (with their closures unless `closure` is false) from
/// `from` to `to`. Each NAR is verified against its narinfo while it
/// streams, recompressed for the destination, and its narinfo written only
/// once the NAR is stored.
pub async fn copy_paths(
    from: &BinaryCache,
    to: &BinaryCache,
    paths: &[StorePath],
    closure: bool,
) -> Result<CopyReport> {
    let infos: Vec<NarInfo> = if closure {
        from.closure(paths).await?
    } else {
        let mut v = Vec::with_capacity(paths.len());
        for p in paths {
            v.push(from.require_info(p).await?);
        }
        v
    };
    let hashes: Vec<String> = infos.iter().map(|i| i.store_path.hash_part()).collect();
    let present = to.has_paths(&hashes).await?;
    let mut report = CopyReport::default();
    for (info, there) in infos.into_iter().zip(present) {
        if there {
            report.present.push(info.store_path);
            continue;
        }
        let nar = from.nar(&info).await?;
        let added = to.add_path(PathMeta::from_narinfo(&info), nar).await?;
        copy_listing(from, to, &added).await?;
        report.copied.push(added.store_path);
    }
    Ok(report)
}

/// Copies a path's `.ls` listing when the source has one.
async fn copy_listing(from: &BinaryCache, to: &BinaryCache, info: &NarInfo) -> Result<()> {
    let key = Key::listing(&info.store_path.hash_part())?;
    if let Some(data) = crate::backend::get_small(from.store().as_ref(), &key, 64 << 20).await? {
        to.store().put_bytes(&key, data.into()).await?;
    }
    Ok(())
}
