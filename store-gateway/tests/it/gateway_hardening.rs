//! The gateway as a hostile client meets it: hostile, truncated and garbage
//! NARs are refused with 4xx and nothing stored; a path is written once;
//! a narinfo's references must exist; a narinfo without FileSize is served
//! with the real one; exists requests are bounded in paths and bytes.

use std::sync::Arc;

use crate::common::{meta, nar_of, new_path, shared_dir, Gateway, TOKEN};
use kiln_nix::hash::{Hash, HashAlgo};
use kiln_store::backend::http::HttpStore;
use kiln_store::cache::{BinaryCache, CacheOptions};
use kiln_store::gateway::{MAX_ANONYMOUS_EXISTS_BATCH, MAX_EXISTS_BATCH, MAX_EXISTS_BODY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn put(url: &str, body: Vec<u8>, extra: Option<(&str, &str)>) -> (u16, String) {
    let mut req = client().put(url).bearer_auth(TOKEN).body(body);
    if let Some((k, v)) = extra {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

fn nar_name(bytes: &[u8]) -> String {
    format!("nar/{}.nar", Hash::of(HashAlgo::Sha256, bytes).to_base32())
}

#[tokio::test]
async fn hostile_truncated_and_garbage_nars_are_refused_and_nothing_is_stored() {
    let gw = Gateway::start().await;
    let bad_dir = shared_dir().join("conformance/nar/bad");
    let mut cases: Vec<(String, Vec<u8>)> = std::fs::read_dir(&bad_dir)
        .unwrap_or_else(|e| panic!("reading '{}': {e}", bad_dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "nar"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        cases.len(),
        14,
        "the 14 hostile NARs of {}",
        bad_dir.display()
    );
    let good = nar_of(b"a perfectly good file\n");
    cases.push(("cut-short".into(), good[..good.len() - 9].to_vec()));
    cases.push((
        "garbage".into(),
        b"GET / HTTP/1.1\r\n\r\nnot a nar at all".to_vec(),
    ));
    let zst = zstd::encode_all(&cases[0].1[..], 1).unwrap();
    cases.push((format!("{} as zstd", cases[0].0), zst));
    for (name, bytes) in &cases {
        let key = if name.ends_with("as zstd") {
            nar_name(bytes).replace(".nar", ".nar.zst")
        } else {
            nar_name(bytes)
        };
        let (status, text) = put(&format!("{}/{key}", gw.url), bytes.clone(), None).await;
        assert!(
            (400..500).contains(&status),
            "{name}: answered {status} {text}"
        );
        assert!(
            gw.nar_files().is_empty(),
            "{name}: stored {:?}",
            gw.nar_files()
        );
    }
    // The well-formed NAR is accepted, so the refusals above are about form.
    let (status, text) = put(&format!("{}/{}", gw.url, nar_name(&good)), good, None).await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(gw.nar_files().len(), 1);
}

fn narinfo_text(path: &kiln_nix::store_path::StorePath, nar: &[u8], refs: &str) -> String {
    let h = Hash::of(HashAlgo::Sha256, nar).to_nix_base32_prefixed();
    format!(
        "StorePath: {}\nURL: {}\nCompression: none\nNarHash: {h}\nNarSize: {}\nReferences: {refs}\n",
        path.to_absolute_path(),
        nar_name(nar),
        nar.len()
    )
}

#[tokio::test]
async fn a_path_is_written_once_and_needs_its_references() {
    let gw = Gateway::start().await;
    let writer = BinaryCache::new(
        Arc::new(HttpStore::new(&gw.url, Some(TOKEN.into())).unwrap()),
        CacheOptions {
            temp_dir: gw.dir.path().to_path_buf(),
            ..CacheOptions::default()
        },
    );
    let p = new_path("hello-2.12");
    let first = writer
        .add_path(meta(&p, &[]), &nar_of(b"hello\n")[..])
        .await
        .unwrap();

    // Another program under the same name: its NAR may be stored (keys
    // name content) but the narinfo may not replace the first.
    let evil = nar_of(b"#!/bin/sh\nrm -rf ~\n");
    let (s, t) = put(
        &format!("{}/{}", gw.url, nar_name(&evil)),
        evil.clone(),
        None,
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let key = format!("{}/{}.narinfo", gw.url, p.hash_part());
    let (s, t) = put(&key, narinfo_text(&p, &evil, "").into_bytes(), None).await;
    assert_eq!(s, 409, "{t}");
    assert!(t.contains("written once"), "{t}");
    let (s, t) = put(
        &key,
        narinfo_text(&p, &evil, "").into_bytes(),
        Some(("if-none-match", "*")),
    )
    .await;
    assert_eq!(s, 412, "{t}");
    // The cache layer over HTTP sees the first narinfo and keeps it.
    let again = writer.add_path(meta(&p, &[]), &evil[..]).await.unwrap();
    assert_eq!(again.nar_hash, first.nar_hash);
    let served = gw.cache.require_info(&p).await.unwrap();
    assert_eq!(served.nar_hash, first.nar_hash);

    // A narinfo naming a reference the cache lacks is refused.
    let q = new_path("needs-missing");
    let missing = new_path("missing");
    let nar = nar_of(b"q");
    let (s, _) = put(&format!("{}/{}", gw.url, nar_name(&nar)), nar.clone(), None).await;
    assert_eq!(s, 201);
    let (s, t) = put(
        &format!("{}/{}.narinfo", gw.url, q.hash_part()),
        narinfo_text(&q, &nar, &missing.base_name()).into_bytes(),
        None,
    )
    .await;
    assert_eq!(s, 409, "{t}");
    assert!(t.contains("must be uploaded first"), "{t}");
    assert!(gw.cache.path_info(&q).await.unwrap().is_none());
}

#[tokio::test]
async fn a_narinfo_without_file_size_is_served_with_the_real_one() {
    let gw = Gateway::start().await;
    let p = new_path("no-file-size");
    let nar = nar_of(b"some bytes to count\n");
    let (s, t) = put(&format!("{}/{}", gw.url, nar_name(&nar)), nar.clone(), None).await;
    assert_eq!(s, 201, "{t}");
    let text = narinfo_text(&p, &nar, "");
    assert!(!text.contains("FileSize"));
    let (s, t) = put(
        &format!("{}/{}.narinfo", gw.url, p.hash_part()),
        text.into_bytes(),
        None,
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let served = client()
        .get(format!("{}/{}.narinfo", gw.url, p.hash_part()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        served.contains(&format!("FileSize: {}\n", nar.len())),
        "{served}"
    );
    let fh = Hash::of(HashAlgo::Sha256, &nar).to_nix_base32_prefixed();
    assert!(served.contains(&format!("FileHash: {fh}\n")), "{served}");

    // A FileSize that is not the file's is refused.
    let q = new_path("wrong-file-size");
    let text = narinfo_text(&q, &nar, "") + "FileSize: 3\n";
    let (s, t) = put(
        &format!("{}/{}.narinfo", gw.url, q.hash_part()),
        text.into_bytes(),
        None,
    )
    .await;
    assert_eq!(s, 422, "{t}");
}

fn exists_body(n: usize) -> Vec<u8> {
    let paths: Vec<String> = (0..n)
        .map(|_| "1sy2203698px76lmf1hr7rfiijmdd40i".to_string())
        .collect();
    serde_json::to_vec(&serde_json::json!({ "paths": paths })).unwrap()
}

#[tokio::test]
async fn exists_requests_are_bounded_in_paths_and_bytes() {
    let gw = Gateway::start().await;
    let url = format!("{}/api/v1/exists", gw.url);
    let post = |body: Vec<u8>, token: bool| {
        let mut req = client().post(&url).body(body);
        if token {
            req = req.bearer_auth(TOKEN);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        post(exists_body(MAX_ANONYMOUS_EXISTS_BATCH), false).await,
        200
    );
    assert_eq!(
        post(exists_body(MAX_ANONYMOUS_EXISTS_BATCH + 1), false).await,
        413
    );
    assert_eq!(
        post(exists_body(MAX_ANONYMOUS_EXISTS_BATCH + 1), true).await,
        200
    );
    assert_eq!(post(exists_body(MAX_EXISTS_BATCH), true).await, 200);
    assert_eq!(post(exists_body(MAX_EXISTS_BATCH + 1), true).await, 413);

    // A declared length over the limit is refused before it is read.
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(
        b"POST /api/v1/exists HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2147483648\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 64];
    let n = c.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // An undeclared (chunked) length is cut at the limit: the gateway
    // answers 413 and stops reading long before the client is done.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"POST /api/v1/exists HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b' '; 1 << 20];
    let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
    framed.extend_from_slice(&chunk);
    framed.extend_from_slice(b"\r\n");
    let mut sent = 0usize;
    let mut refused = false;
    while sent < 64 * MAX_EXISTS_BODY {
        match c.write_all(&framed).await {
            Ok(()) => sent += chunk.len(),
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        c.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.200}");
    assert!(refused, "the gateway read {sent} bytes without closing");
}
