//! Helpers shared by Kiln's integration tests: where `../shared` is, and
//! whether a required service must be present (`CI=true`) or may be skipped.

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `../shared` beside the checkout (or `$KILN_SHARED`).
pub fn shared_dir() -> PathBuf {
    if let Ok(p) = std::env::var("KILN_SHARED") {
        return PathBuf::from(p);
    }
    workspace_root().parent().unwrap().join("shared")
}

/// True when running under CI, where a missing service is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}
