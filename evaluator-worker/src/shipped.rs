//! Sources shipped with a job by `kiln submit`: the submitter's expression
//! tree and the local paths named on its command line, each stored as a
//! source store path. An evaluator on another machine unpacks each under
//! the job's directory, keeping its base name (a path copied into the
//! store is named after its base name, so the derivations come out the
//! same), and reads the job's paths there.

use std::path::Path;

use kiln_nix::store_path::StorePath;
use kiln_protocol::{ArgValue, ExprSource, JobSpec};
use kiln_store::cache::BinaryCache;

/// Unpacks `spec`'s shipped sources under `dir` and rewrites the job's
/// file, base directory, `--arg` expressions and search path to name the
/// unpacked copies. Runs on the evaluation thread (blocks on `handle`).
pub fn materialise(
    spec: &mut JobSpec,
    cache: &BinaryCache,
    handle: &tokio::runtime::Handle,
    dir: &Path,
) -> Result<(), String> {
    let mut map: Vec<(String, String)> = Vec::new();
    for (i, src) in spec.sources.iter().enumerate() {
        let sp = StorePath::from_absolute_path(&src.store_path)
            .map_err(|e| format!("shipped source '{}': {e}", src.store_path))?;
        let base = Path::new(&src.local)
            .file_name()
            .map(|b| b.to_string_lossy().into_owned())
            .filter(|b| !b.is_empty() && b != "." && b != "..")
            .unwrap_or_else(|| "source".into());
        let parent = dir.join("shipped").join(i.to_string());
        std::fs::create_dir_all(&parent)
            .map_err(|e| format!("creating '{}': {e}", parent.display()))?;
        let target = parent.join(&base);
        unpack(cache, handle, &sp, &target).map_err(|e| {
            format!(
                "fetching the shipped source '{}' ({}): {e}",
                src.local, src.store_path
            )
        })?;
        map.push((src.local.clone(), target.display().to_string()));
    }
    if map.is_empty() {
        return Ok(());
    }
    // Longest first, so a path inside another shipped one maps to its own
    // copy.
    map.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
    let rewrite = |p: &str| -> String {
        for (local, copy) in &map {
            if p == local {
                return copy.clone();
            }
            if let Some(rest) = p.strip_prefix(local.as_str()) {
                if rest.starts_with('/') {
                    return format!("{copy}{rest}");
                }
            }
        }
        p.to_string()
    };
    match &mut spec.source {
        ExprSource::File { path } => *path = rewrite(path),
        ExprSource::Expr { base_dir, .. } => *base_dir = rewrite(base_dir),
    }
    for entry in &mut spec.search_path {
        entry.path = rewrite(&entry.path);
    }
    for arg in &mut spec.args {
        if let ArgValue::Expr(text) = &mut arg.value {
            for (local, copy) in &map {
                if text.contains(local.as_str()) {
                    *text = replace_path(text, local, copy);
                }
            }
        }
    }
    Ok(())
}

/// Replaces `local` in `text` where it appears as a whole path (followed
/// by the end, `/`, or a character that cannot be in a path literal).
fn replace_path(text: &str, local: &str, copy: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(local) {
        let after = &rest[i + local.len()..];
        let whole = after
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || "._-+".contains(c)));
        out.push_str(&rest[..i]);
        out.push_str(if whole { copy } else { local });
        rest = after;
    }
    out.push_str(rest);
    out
}

fn unpack(
    cache: &BinaryCache,
    handle: &tokio::runtime::Handle,
    sp: &StorePath,
    target: &Path,
) -> Result<(), String> {
    if target.symlink_metadata().is_ok() {
        return Ok(());
    }
    let stream = handle.block_on(async {
        let info = cache.require_info(sp).await.map_err(|e| e.to_string())?;
        cache.nar(&info).await.map_err(|e| e.to_string())
    })?;
    let reader = tokio_util::io::SyncIoBridge::new_with_handle(stream, handle.clone());
    kiln_nix::nar::unpack(reader, target).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_paths_only() {
        assert_eq!(
            replace_path(
                "{ b = /tmp/x/busybox; c = /tmp/x/busybox2; }",
                "/tmp/x/busybox",
                "/w/busybox"
            ),
            "{ b = /w/busybox; c = /tmp/x/busybox2; }"
        );
        assert_eq!(replace_path("/a/b/c", "/a/b", "/z"), "/z/c");
    }
}
