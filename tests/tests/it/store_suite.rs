//! The shared store test suite: one async function over `&dyn Store`, run
//! against the local directory backend and against the real S3 (Garage).
//! It covers the object layer, the binary cache layout, signatures,
//! closures, copying, realisation and corruption handling.

use std::path::Path;
use std::sync::Arc;

use kiln_nix::hash::{Hash, HashAlgo};
use kiln_nix::signing::{SecretKey, TrustedKeys};
use kiln_nix::store_path::StorePath;
use kiln_store::backend::local::LocalStore;
use kiln_store::backend::s3::{S3Config, S3Store};
use kiln_store::backend::{get_small, Store};
use kiln_store::cache::{BinaryCache, CacheOptions, PathMeta};
use kiln_store::compression::Compression;
use kiln_store::copy::copy_paths;
use kiln_store::realise::realise;
use kiln_store::Bytes;
use kiln_store::{Key, StoreError};
use kiln_tests::store_fixtures::{self, make_nar, new_path};
use tokio::io::AsyncReadExt;

fn meta(path: &StorePath, refs: &[&StorePath]) -> PathMeta {
    store_fixtures::meta(path, refs, Some("x86_64-linux"))
}

fn nar_hash_of_dir(dir: &Path) -> (Hash, u64) {
    let (_, d) = kiln_nix::nar::dump_path(dir, std::io::sink()).unwrap();
    (d.hash, d.size)
}

/// Everything a store must do, run against one backend.
async fn store_suite(store: Arc<dyn Store>) {
    // --- The object layer.
    let log_path = new_path("suite.drv");
    let log_key = Key::log(&log_path.base_name()).unwrap();
    assert!(!store.exists(&log_key).await.unwrap());
    assert!(store.get(&log_key).await.unwrap().is_none());
    store
        .put_bytes(&log_key, Bytes::from_static(b"build log\n"))
        .await
        .unwrap();
    assert!(store.exists(&log_key).await.unwrap());
    assert_eq!(
        get_small(store.as_ref(), &log_key, 100)
            .await
            .unwrap()
            .unwrap(),
        b"build log\n"
    );
    let missing = Key::narinfo(&new_path("missing").hash_part()).unwrap();
    assert_eq!(
        store
            .exists_many(&[log_key.clone(), missing.clone()])
            .await
            .unwrap(),
        vec![true, false]
    );
    store.delete(&log_key).await.unwrap();
    assert!(!store.exists(&log_key).await.unwrap());
    store.delete(&log_key).await.unwrap();

    // --- The binary cache layout, signed.
    let key = SecretKey::generate("kiln-suite-1").unwrap();
    let other = SecretKey::generate("kiln-suite-2").unwrap();
    let signing = CacheOptions {
        secret_keys: vec![key.clone()],
        ..CacheOptions::default()
    };
    let cache = BinaryCache::new(store.clone(), signing);
    cache.ensure_cache_info().await.unwrap();
    assert_eq!(
        cache.cache_info().await.unwrap().unwrap().store_dir,
        "/nix/store"
    );

    let dep = new_path("dep");
    let top = new_path("top");
    let dep_nar = make_nar(&vec![7u8; 300_000], None);
    let top_nar = make_nar(b"hello", Some(&dep));
    let dep_info = cache.add_path(meta(&dep, &[]), &dep_nar[..]).await.unwrap();
    let top_info = cache
        .add_path(meta(&top, &[&dep, &top]), &top_nar[..])
        .await
        .unwrap();
    assert_eq!(dep_info.nar_hash, Hash::of(HashAlgo::Sha256, &dep_nar));
    assert_eq!(dep_info.nar_size, dep_nar.len() as u64);
    assert_eq!(dep_info.compression, "zstd");
    assert!(dep_info.file_size < dep_info.nar_size / 10);
    assert!(store
        .exists(&Key::parse(&dep_info.url).unwrap())
        .await
        .unwrap());

    // Round trip of the narinfo, as written.
    let back = cache.path_info(&top).await.unwrap().unwrap();
    assert_eq!(back, top_info);
    assert_eq!(back.sigs.len(), 1);
    assert!(cache
        .path_info(&new_path("absent"))
        .await
        .unwrap()
        .is_none());

    // Signatures: accepted by a cache trusting the key (among others),
    // refused by one trusting only another key.
    let trusting = |keys: Vec<&SecretKey>| {
        let trusted: TrustedKeys = keys.into_iter().map(|k| k.to_public()).collect();
        BinaryCache::new(
            store.clone(),
            CacheOptions {
                trusted_keys: Some(trusted),
                ..CacheOptions::default()
            },
        )
    };
    assert!(trusting(vec![&other, &key])
        .path_info(&top)
        .await
        .unwrap()
        .is_some());
    let err = trusting(vec![&other]).path_info(&top).await.unwrap_err();
    assert!(matches!(err, StoreError::Untrusted { .. }), "{err}");

    // Existence, batched, positive answers cached.
    let asked = vec![
        dep.hash_part(),
        new_path("nope").hash_part(),
        top.hash_part(),
    ];
    assert_eq!(
        cache.has_paths(&asked).await.unwrap(),
        vec![true, false, true]
    );

    // Closure: dependencies first, the self-reference ignored.
    let closure: Vec<StorePath> = cache
        .closure(std::slice::from_ref(&top))
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.store_path)
        .collect();
    assert_eq!(closure, vec![dep.clone(), top.clone()]);

    // NAR stream.
    let mut nar = Vec::new();
    cache
        .nar(&top_info)
        .await
        .unwrap()
        .read_to_end(&mut nar)
        .await
        .unwrap();
    assert_eq!(nar, top_nar);

    // Realisation into a builder's directory, verified.
    let dest = tempfile::tempdir().unwrap();
    let report = realise(
        &trusting(vec![&key]),
        std::slice::from_ref(&top),
        dest.path(),
        4,
    )
    .await
    .unwrap();
    assert_eq!(report.fetched.len(), 2);
    assert_eq!(
        nar_hash_of_dir(&dest.path().join(top.base_name())).0,
        top_info.nar_hash
    );
    assert_eq!(
        nar_hash_of_dir(&dest.path().join(dep.base_name())).0,
        dep_info.nar_hash
    );
    let again = realise(&cache, std::slice::from_ref(&top), dest.path(), 4)
        .await
        .unwrap();
    assert_eq!((again.fetched.len(), again.present.len()), (0, 2));

    // Copy to another cache, xz-compressed, then back through the layout.
    let copy_dir = tempfile::tempdir().unwrap();
    let target = BinaryCache::new(
        Arc::new(LocalStore::open(copy_dir.path()).await.unwrap()),
        CacheOptions {
            compression: Compression::Xz,
            secret_keys: vec![other.clone()],
            ..CacheOptions::default()
        },
    );
    let copied = copy_paths(&cache, &target, std::slice::from_ref(&top), true)
        .await
        .unwrap();
    assert_eq!(copied.copied, vec![dep.clone(), top.clone()]);
    let copied_top = target.path_info(&top).await.unwrap().unwrap();
    assert_eq!(copied_top.nar_hash, top_info.nar_hash);
    assert_eq!(copied_top.compression, "xz");
    assert_eq!(
        copied_top.sigs.len(),
        2,
        "source signature kept, destination's added"
    );

    // --- Corruption: a bit-flipped NAR is detected and never materialised.
    let nar_key = Key::parse(&dep_info.url).unwrap();
    let mut raw = get_small(store.as_ref(), &nar_key, 1 << 30)
        .await
        .unwrap()
        .unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x10;
    store.put_bytes(&nar_key, Bytes::from(raw)).await.unwrap();
    let mut sink = Vec::new();
    let read = cache
        .nar(&dep_info)
        .await
        .unwrap()
        .read_to_end(&mut sink)
        .await;
    assert!(read.is_err(), "flipped NAR was read without error");
    let dest2 = tempfile::tempdir().unwrap();
    let err = realise(&cache, std::slice::from_ref(&top), dest2.path(), 4)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&dep.to_string()) || err.to_string().contains("unpacking"),
        "{err}"
    );
    assert!(
        !dest2.path().join(dep.base_name()).exists(),
        "corrupt path materialised"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dest2.path().join(".kiln-realise"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "staging not cleaned: {leftovers:?}");

    // A malformed narinfo gives a clear error naming it.
    let bad = new_path("bad");
    let bad_key = Key::narinfo(&bad.hash_part()).unwrap();
    store
        .put_bytes(
            &bad_key,
            Bytes::from(format!("StorePath: {bad}\nNarHash: nonsense\n")),
        )
        .await
        .unwrap();
    let err = cache.path_info(&bad).await.unwrap_err().to_string();
    assert!(
        err.contains(&bad_key.to_string()) && err.contains("NarHash"),
        "{err}"
    );

    // A NAR stream that does not match what is expected stores nothing.
    let lying = new_path("lying");
    let mut m = meta(&lying, &[]);
    m.expected = Some((Hash::of(HashAlgo::Sha256, b"other"), 5));
    let err = cache
        .add_path(m, &make_nar(b"x", None)[..])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Mismatch { .. }), "{err}");
    assert!(cache.path_info(&lying).await.unwrap().is_none());
}

#[tokio::test]
async fn local_backend_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("cache")).await.unwrap();
    store_suite(Arc::new(store)).await;
}

#[tokio::test]
async fn s3_backend_passes_the_suite() {
    let Some(env) = kiln_tests::s3_config() else {
        return;
    };
    let mut cfg = S3Config::new(&env.bucket);
    cfg.endpoint = Some(env.endpoint.clone());
    cfg.region = Some(env.region.clone());
    cfg.access_key_id = Some(env.access_key_id.clone());
    cfg.secret_access_key = Some(env.secret_access_key.clone());
    cfg.prefix = format!("store-suite-{}", new_path("p").hash_part());
    // Small parts so the multipart path is exercised too.
    cfg.multipart_threshold = 5 << 20;
    cfg.part_size = 5 << 20;
    let store = Arc::new(S3Store::connect(cfg.clone()).await.unwrap());
    store_suite(store.clone()).await;

    // Multipart upload of a file larger than the threshold round-trips.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    let data: Vec<u8> = (0..(12u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    let big_key = Key::log(&new_path("big.drv").base_name()).unwrap();
    store.put_file(&big_key, &file).await.unwrap();
    let back = get_small(store.as_ref(), &big_key, 1 << 30)
        .await
        .unwrap()
        .unwrap();
    assert!(back == data, "multipart object differs");
    store.delete(&big_key).await.unwrap();

    // Objects of every size come back whole: empty, one byte, and larger
    // than a multipart part.
    for size in [0usize, 1, (5 << 20) + 12345] {
        let data: Vec<u8> = (0..size as u32)
            .map(|i| (i.wrapping_mul(2246822519) >> 24) as u8)
            .collect();
        let key = Key::log(&new_path("ranged.drv").base_name()).unwrap();
        store
            .put_bytes(&key, kiln_store::Bytes::from(data.clone()))
            .await
            .unwrap();
        let back = get_small(store.as_ref(), &key, 1 << 30)
            .await
            .unwrap()
            .unwrap();
        assert!(
            back == data,
            "object of {size} bytes differs when read back"
        );
        store.delete(&key).await.unwrap();
    }

    // Bad credentials give an error naming the bucket, not a hang or panic.
    let mut wrong = cfg;
    wrong.secret_access_key = Some("wrong".into());
    let wrong = S3Store::connect(wrong).await.unwrap();
    let err = wrong
        .exists(&Key::cache_info())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&env.bucket), "{err}");
}

/// A proxy in front of the real S3 server that answers the first `refuse`
/// requests itself with `503 SlowDown` (as S3 does when throttling) and
/// passes every later connection through. Returns its address and the
/// number of requests it refused.
async fn flaky_proxy(
    upstream: String,
    refuse: usize,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = refused.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            if count.load(Ordering::SeqCst) < refuse {
                count.fetch_add(1, Ordering::SeqCst);
                // Read the request head (HEAD and GET carry no body), then
                // throttle it and close the connection.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match client.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                let resp = format!(
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = client.write_all(resp.as_bytes()).await;
                let _ = client.shutdown().await;
                continue;
            }
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (format!("http://{addr}"), refused)
}

/// Throttling (SlowDown) is retried with backoff until the server answers,
/// and the retries are bounded: a server that keeps refusing gives an error
/// naming the bucket, after a few seconds, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_retries_slow_down_with_backoff() {
    use std::sync::atomic::Ordering;
    let Some(env) = kiln_tests::s3_config() else {
        return;
    };
    let upstream = env
        .endpoint_authority()
        .expect("endpoint host:port")
        .to_string();
    let prefix = format!("retry-{}", new_path("p").hash_part());
    let connect = |endpoint: String| {
        let mut cfg = S3Config::new(&env.bucket);
        cfg.endpoint = Some(endpoint);
        cfg.region = Some(env.region.clone());
        cfg.access_key_id = Some(env.access_key_id.clone());
        cfg.secret_access_key = Some(env.secret_access_key.clone());
        cfg.prefix = prefix.clone();
        S3Store::connect(cfg)
    };

    // The object exists; the first two attempts to see it are throttled.
    let direct = connect(env.endpoint.clone()).await.unwrap();
    let key = Key::log(&new_path("retry.drv").base_name()).unwrap();
    direct
        .put_bytes(&key, Bytes::from_static(b"log"))
        .await
        .unwrap();
    let (endpoint, refused) = flaky_proxy(upstream.clone(), 2).await;
    let through = connect(endpoint).await.unwrap();
    let t = std::time::Instant::now();
    assert!(
        through.exists(&key).await.unwrap(),
        "object seen after retries"
    );
    assert_eq!(refused.load(Ordering::SeqCst), 2);
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(50),
        "no backoff between attempts ({:?})",
        t.elapsed()
    );
    let got = get_small(&through, &key, 1024).await.unwrap().unwrap();
    assert_eq!(got, b"log");

    // A server that never stops throttling: a bounded number of attempts.
    let (endpoint, refused) = flaky_proxy(upstream, usize::MAX).await;
    let hopeless = connect(endpoint).await.unwrap();
    let t = std::time::Instant::now();
    let err = hopeless.exists(&key).await.unwrap_err().to_string();
    assert!(err.contains(&env.bucket), "{err}");
    let attempts = refused.load(Ordering::SeqCst);
    assert!((2..=10).contains(&attempts), "{attempts} attempts");
    assert!(t.elapsed() < std::time::Duration::from_secs(60));
    direct.delete(&key).await.unwrap();
}
