//! The streamed multipart path of the S3 backend against a real server
//! (the S3 named by KILN_S3_ENDPOINT, KILN_S3_REGION, KILN_S3_BUCKET and
//! AWS_*). Without one the test is skipped, or fails under `CI=true`.

use std::sync::Arc;

use kiln_nix::hash::{Hash, HashAlgo};
use kiln_nix::store_path::StorePath;
use kiln_store::backend::s3::S3Store;
use kiln_store::backend::Store;
use kiln_store::cache::{BinaryCache, CacheOptions, PathMeta};
use kiln_store::Key;
use tokio::io::AsyncReadExt;

fn nar_of(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = kiln_nix::nar::NarWriter::new(&mut out).unwrap();
    w.file(None, false, body.len() as u64, &mut &body[..])
        .unwrap();
    w.finish().unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_nar_round_trips_and_leaves_no_staging_object() {
    let Some(mut cfg) = crate::common::s3_config("kiln-test-stream") else {
        return;
    };
    // The smallest parts S3 allows, so a modest NAR spans several.
    cfg.part_size = 5 << 20;
    let s3 = Arc::new(S3Store::connect(cfg).await.unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let cache = BinaryCache::new(
        s3.clone(),
        CacheOptions {
            temp_dir: tmp.path().to_path_buf(),
            ..CacheOptions::default()
        },
    );
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let body: Vec<u8> = (0..(13 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let nar = nar_of(&body);
    let path = StorePath::new([7u8; 20], "stream").unwrap();
    let meta = |expected| PathMeta {
        path: path.clone(),
        references: Default::default(),
        deriver: None,
        system: None,
        ca: None,
        sigs: Default::default(),
        expected,
    };

    // A wrong expected hash: refused, and neither NAR nor narinfo appear.
    let wrong = Some((Hash::of(HashAlgo::Sha256, b"other"), nar.len() as u64));
    let e = cache.add_path(meta(wrong), &nar[..]).await.unwrap_err();
    assert!(e.to_string().contains("NAR hash"), "{e}");
    assert!(cache.path_info(&path).await.unwrap().is_none());

    let expected = Some((Hash::of(HashAlgo::Sha256, &nar), nar.len() as u64));
    let info = cache.add_path(meta(expected), &nar[..]).await.unwrap();
    assert_eq!(info.nar_size, nar.len() as u64);
    assert!(info.file_size > 10 << 20, "spans several 5 MiB parts");
    let key = Key::parse(&info.url).unwrap();
    let mut stored = Vec::new();
    s3.get(&key)
        .await
        .unwrap()
        .unwrap()
        .read_to_end(&mut stored)
        .await
        .unwrap();
    assert_eq!(Some(Hash::of(HashAlgo::Sha256, &stored)), info.file_hash);
    let mut back = Vec::new();
    cache
        .nar(&info)
        .await
        .unwrap()
        .read_to_end(&mut back)
        .await
        .unwrap();
    assert!(back == nar, "NAR differs after the round trip");

    // Staging objects are gone once the upload is committed.
    let listed = s3
        .client()
        .list_objects_v2()
        .bucket(&s3.config().bucket)
        .prefix(format!("{}/", s3.config().prefix))
        .send()
        .await
        .unwrap();
    let mut names: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    names.sort();
    let prefix = &s3.config().prefix;
    assert_eq!(
        names,
        vec![
            format!("{prefix}/{}.narinfo", path.hash_part()),
            format!("{prefix}/{key}"),
        ]
    );
    s3.delete(&key).await.unwrap();
    s3.delete(&Key::narinfo(&path.hash_part()).unwrap())
        .await
        .unwrap();
}
