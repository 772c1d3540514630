//! Helpers shared by kiln-store's integration tests: a gateway on loopback
//! over a fresh local cache, NARs and store paths.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_nix::nar::NarWriter;
use kiln_nix::store_path::StorePath;
use kiln_store::backend::local::LocalStore;
use kiln_store::cache::{BinaryCache, CacheOptions, PathMeta};
use kiln_store::gateway::{serve, GatewayState};

pub const TOKEN: &str = "hardening-test-token";

/// A running gateway over a fresh local cache in `dir/cache`.
pub struct Gateway {
    pub url: String,
    pub cache: Arc<BinaryCache>,
    pub root: PathBuf,
    pub dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Gateway {
    pub async fn start() -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let store = Arc::new(LocalStore::open(&root).await.unwrap());
        let cache = Arc::new(BinaryCache::new(
            store,
            CacheOptions {
                temp_dir: dir.path().to_path_buf(),
                ..CacheOptions::default()
            },
        ));
        let state = Arc::new(GatewayState::new(cache.clone(), vec![TOKEN.to_string()]));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, state, async {
            let _ = rx.await;
        }));
        Gateway {
            url,
            cache,
            root,
            dir,
            _stop: tx,
        }
    }

    /// Files under the cache's `nar/` directory.
    pub fn nar_files(&self) -> Vec<PathBuf> {
        files_in(&self.root.join("nar"))
    }
}

pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// A store path with a digest drawn from `seed` and the clock.
pub fn new_path(name: &str) -> StorePath {
    use std::hash::{BuildHasher, Hasher};
    let mut d = [0u8; 20];
    for chunk in d.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
    }
    StorePath::new(d, name).unwrap()
}

/// The NAR of one regular file holding `content`.
pub fn nar_of(content: &[u8]) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new()).unwrap();
    w.file(None, false, content.len() as u64, &mut &content[..])
        .unwrap();
    w.finish().unwrap()
}

pub fn meta(path: &StorePath, refs: &[&StorePath]) -> PathMeta {
    PathMeta {
        path: path.clone(),
        references: refs.iter().map(|r| (*r).clone()).collect(),
        deriver: None,
        system: None,
        ca: None,
        sigs: BTreeSet::new(),
        expected: None,
    }
}

/// `../shared` beside the checkout (or `$KILN_SHARED`).
pub fn shared_dir() -> PathBuf {
    if let Ok(p) = std::env::var("KILN_SHARED") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared")
        .clone()
}

/// The test bucket's settings (scripts/test.sh exports them) under a key
/// prefix of `prefix` and this process; `None` (skip) without them, except
/// under `CI=true`, where that fails.
pub fn s3_config(prefix: &str) -> Option<kiln_store::backend::s3::S3Config> {
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    let (Some(bucket), Some(endpoint)) = (var("KILN_S3_BUCKET"), var("KILN_S3_ENDPOINT")) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "KILN_S3_ENDPOINT and KILN_S3_BUCKET are needed under CI"
        );
        eprintln!("skipped: no S3 (KILN_S3_ENDPOINT, KILN_S3_BUCKET)");
        return None;
    };
    let mut cfg = kiln_store::backend::s3::S3Config::new(bucket);
    cfg.endpoint = Some(endpoint);
    cfg.region = var("KILN_S3_REGION");
    cfg.fill_from_env(var);
    cfg.prefix = format!("{prefix}-{}", std::process::id());
    Some(cfg)
}
