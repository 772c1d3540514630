//! The store gateway over HTTP, with Kiln and real Nix 2.8 as clients, and
//! Kiln reading the signed conformance caches written by Nix.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use kiln_nix::signing::{PublicKey, SecretKey, TrustedKeys};
use kiln_nix::store_path::StorePath;
use kiln_store::backend::http::HttpStore;
use kiln_store::backend::local::LocalStore;
use kiln_store::backend::Store;
use kiln_store::cache::{BinaryCache, CacheOptions, PathMeta};
use kiln_store::copy::copy_paths;
use kiln_store::gateway::{serve, GatewayState};
use kiln_store::realise::realise;
use kiln_tests::store_fixtures::{self, make_nar, new_path};

const TOKEN: &str = "test-upload-token";

fn meta(path: &StorePath, refs: &[&StorePath]) -> PathMeta {
    store_fixtures::meta(path, refs, None)
}

/// A running gateway over a fresh local cache.
struct Gateway {
    url: String,
    cache: Arc<BinaryCache>,
    key: SecretKey,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Gateway {
    async fn start(tokens: Vec<String>) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate("kiln-gateway-test-1").unwrap();
        let store = Arc::new(LocalStore::open(dir.path().join("cache")).await.unwrap());
        let cache = Arc::new(BinaryCache::new(
            store,
            CacheOptions {
                secret_keys: vec![key.clone()],
                temp_dir: dir.path().to_path_buf(),
                ..CacheOptions::default()
            },
        ));
        let state = Arc::new(GatewayState::new(cache.clone(), tokens));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state, async {
            let _ = rx.await;
        }));
        Gateway {
            url,
            cache,
            key,
            _dir: dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    fn client(&self, token: Option<&str>) -> BinaryCache {
        let store = HttpStore::new(&self.url, token.map(str::to_string)).unwrap();
        BinaryCache::new(Arc::new(store), CacheOptions::default())
    }

    fn trusting_client(&self) -> BinaryCache {
        let store = HttpStore::new(&self.url, None).unwrap();
        let trusted: TrustedKeys = [self.key.to_public()].into_iter().collect();
        BinaryCache::new(
            Arc::new(store),
            CacheOptions {
                trusted_keys: Some(trusted),
                ..CacheOptions::default()
            },
        )
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// Sends one raw HTTP/1.1 request and returns the status code, so paths
/// reach the server exactly as written (no client-side normalisation).
fn raw_status(url: &str, method: &str, path: &str, extra: &str) -> u16 {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: 0\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_serves_verifies_uploads_and_refuses_bad_requests() {
    let gw = Gateway::start(vec![TOKEN.to_string()]).await;
    let http = reqwest::Client::new();
    let get = |p: &str| http.get(format!("{}{p}", gw.url)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let info = get("/nix-cache-info").await.unwrap().text().await.unwrap();
    assert!(info.contains("StoreDir: /nix/store\n"), "{info}");

    // Upload through Kiln's HTTP backend with the token: dependencies first.
    let writer = gw.client(Some(TOKEN));
    let dep = new_path("dep");
    let top = new_path("top");
    writer
        .add_path(meta(&dep, &[]), &make_nar(b"dependency", None)[..])
        .await
        .unwrap();
    let sent = writer
        .add_path(meta(&top, &[&dep]), &make_nar(b"top", Some(&dep))[..])
        .await
        .unwrap();

    // Served back, signed by the gateway's key, verified by a reader trusting it.
    let reader = gw.trusting_client();
    let served = reader.require_info(&top).await.unwrap();
    assert_eq!(served.nar_hash, sent.nar_hash);
    let dest = tempfile::tempdir().unwrap();
    let report = realise(&reader, std::slice::from_ref(&top), dest.path(), 4)
        .await
        .unwrap();
    assert_eq!(report.fetched, {
        let mut v = vec![dep.clone(), top.clone()];
        v.sort();
        v
    });
    assert_eq!(
        std::fs::read(dest.path().join(top.base_name()).join("data")).unwrap(),
        b"top"
    );

    // Batch existence.
    let asked =
        serde_json::json!({"paths": [top.to_string(), new_path("x").hash_part(), dep.base_name()]});
    let resp = http
        .post(format!("{}/api/v1/exists", gw.url))
        .json(&asked)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["present"], serde_json::json!([true, false, true]));
    let hashes = vec![top.hash_part(), new_path("y").hash_part()];
    assert_eq!(
        gw.client(None).has_paths(&hashes).await.unwrap(),
        vec![true, false]
    );

    // Without a token, or with a wrong one: refused, nothing written.
    let anon = gw.client(None);
    let other = new_path("other");
    assert!(anon
        .add_path(meta(&other, &[]), &make_nar(b"o", None)[..])
        .await
        .is_err());
    let wrong = gw.client(Some("wrong"));
    let err = wrong
        .add_path(meta(&other, &[]), &make_nar(b"o", None)[..])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    assert!(gw.cache.path_info(&other).await.unwrap().is_none());

    // A reference that is not uploaded yet: narinfo refused.
    let orphan = new_path("orphan");
    let err = writer
        .add_path(
            meta(&orphan, &[&new_path("never")]),
            &make_nar(b"o", None)[..],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("409"), "{err}");
    assert!(gw.cache.path_info(&orphan).await.unwrap().is_none());

    // A truncated NAR upload does not match its name: refused, and the
    // narinfo that follows is refused too, leaving no narinfo.
    let trunc = new_path("truncated");
    let staged_dir = tempfile::tempdir().unwrap();
    let full = make_nar(&vec![1u8; 100_000], None);
    let staged = kiln_store::ingest::stage_nar(
        &full[..],
        kiln_store::compression::Compression::Zstd,
        staged_dir.path(),
        "t",
    )
    .await
    .unwrap();
    let nar_key = staged.key().unwrap();
    let bytes = std::fs::read(&staged.file).unwrap();
    let put = |key: String, body: Vec<u8>| {
        http.put(format!("{}/{key}", gw.url))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
    };
    let r = put(nar_key.to_string(), bytes[..bytes.len() / 2].to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let narinfo = format!(
        "StorePath: {trunc}\nURL: {nar_key}\nCompression: zstd\nFileHash: sha256:{}\nFileSize: {}\nNarHash: {}\nNarSize: {}\nReferences: \n",
        staged.file_hash.to_base32(),
        staged.file_size,
        staged.nar_hash.to_nix_base32_prefixed(),
        staged.nar_size
    );
    let r = put(
        format!("{}.narinfo", trunc.hash_part()),
        narinfo.clone().into_bytes(),
    )
    .await
    .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    assert!(gw.cache.path_info(&trunc).await.unwrap().is_none());
    // With the whole NAR, but a narinfo lying about the NAR hash: refused.
    assert_eq!(
        put(nar_key.to_string(), bytes.clone())
            .await
            .unwrap()
            .status(),
        201
    );
    let lying = narinfo.replace(
        &staged.nar_hash.to_nix_base32_prefixed(),
        &sent.nar_hash.to_nix_base32_prefixed(),
    );
    let r = put(format!("{}.narinfo", trunc.hash_part()), lying.into_bytes())
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(gw.cache.path_info(&trunc).await.unwrap().is_none());
    // The honest narinfo is accepted and signed.
    let r = put(
        format!("{}.narinfo", trunc.hash_part()),
        narinfo.into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(reader.require_info(&trunc).await.unwrap().sigs.len(), 1);
    // A malformed narinfo upload gets a clear 400.
    let r = put(
        format!("{}.narinfo", new_path("m").hash_part()),
        b"garbage".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("corrupt"));

    // Bad paths: 4xx, touching nothing.
    let url = gw.url.clone();
    let statuses = tokio::task::spawn_blocking(move || {
        let h = "1sy2203698px76lmf1hr7rfiijmdd40i";
        let auth = format!("Authorization: Bearer {TOKEN}\r\n");
        vec![
            raw_status(&url, "GET", "/../../etc/passwd", ""),
            raw_status(&url, "GET", "/nar/../../../etc/passwd", ""),
            raw_status(&url, "GET", &format!("/{}.narinfo", &h[..31]), ""),
            raw_status(&url, "GET", &format!("/{}.narinfo", "a".repeat(500)), ""),
            raw_status(&url, "GET", "/log/..%2f..%2fx.drv", ""),
            raw_status(&url, "PUT", "/nar/%2e%2e/x.nar", &auth),
            raw_status(&url, "PUT", "/nix-cache-info", &auth),
            raw_status(&url, "GET", &format!("/{h}.narinfo"), ""),
        ]
    })
    .await
    .unwrap();
    assert!(
        statuses[..7].iter().all(|s| (400..500).contains(s)),
        "{statuses:?}"
    );
    assert_eq!(statuses[7], 404);

    // Metrics count what happened.
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("kiln_store_uploads_rejected_total "),
        "{metrics}"
    );
    assert!(
        !metrics.contains("kiln_store_uploads_accepted_total 0\n"),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn read_only_gateway_refuses_uploads() {
    let gw = Gateway::start(Vec::new()).await;
    let writer = gw.client(Some(TOKEN));
    let p = new_path("ro");
    let err = writer
        .add_path(meta(&p, &[]), &make_nar(b"x", None)[..])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("405"), "{err}");
    gw.shutdown().await;
}

fn conformance_dir() -> PathBuf {
    kiln_tests::shared_dir().join("conformance/binary-cache")
}

fn narinfo_paths(cache: &Path) -> Vec<StorePath> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(cache).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if let Some(_h) = name.strip_suffix(".narinfo") {
            let text = std::fs::read_to_string(cache.join(&name)).unwrap();
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix("StorePath: "))
                .unwrap();
            out.push(StorePath::from_absolute_path(line).unwrap());
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_realises_the_nix_written_conformance_caches() {
    let dir = conformance_dir();
    let public = PublicKey::from_file(dir.join("public.key")).unwrap();
    for flavour in ["cache-zstd", "cache-xz", "cache-none"] {
        let root = dir.join(flavour);
        let paths = narinfo_paths(&root);
        assert!(!paths.is_empty(), "{flavour} has no narinfo");
        let store: Arc<dyn Store> = Arc::new(LocalStore::open(&root).await.unwrap());
        let cache = BinaryCache::new(
            store,
            CacheOptions {
                trusted_keys: Some([public.clone()].into_iter().collect()),
                ..CacheOptions::default()
            },
        );
        let dest = tempfile::tempdir().unwrap();
        let report = realise(&cache, &paths, dest.path(), 4).await.unwrap();
        assert_eq!(report.fetched.len(), paths.len(), "{flavour}");
        for p in &paths {
            let info = cache.require_info(p).await.unwrap();
            let (_, d) =
                kiln_nix::nar::dump_path(&dest.path().join(p.base_name()), std::io::sink())
                    .unwrap();
            assert_eq!(
                (d.hash, d.size),
                (info.nar_hash.clone(), info.nar_size),
                "{flavour} {p}"
            );
        }
        assert!(
            !root.join(".kiln-tmp").exists(),
            "reading wrote into {flavour}"
        );
    }
}

fn nix_available() -> bool {
    let ok = Command::new("nix")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    kiln_tests::require_service("Nix 2.8 (nix-bin) on PATH", ok)
}

fn nix(args: &[&str]) -> std::process::Output {
    let out = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command"])
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "nix {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_copies_from_and_to_the_gateway() {
    if !nix_available() {
        return;
    }
    let gw = Gateway::start(vec![TOKEN.to_string()]).await;
    let writer = gw.client(Some(TOKEN));
    let dep = new_path("nix-dep");
    let top = new_path("nix-top");
    writer
        .add_path(meta(&dep, &[]), &make_nar(b"from kiln", None)[..])
        .await
        .unwrap();
    writer
        .add_path(
            meta(&top, &[&dep]),
            &make_nar(b"top from kiln", Some(&dep))[..],
        )
        .await
        .unwrap();
    let public = gw.key.to_public().to_string();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let root_s = root.to_str().unwrap().to_string();
    let top_s = top.to_string();
    let url = gw.url.clone();

    // Nix pulls the closure with signatures required and Kiln's key trusted.
    let (pub2, root2, top2, url2) = (public.clone(), root_s.clone(), top_s.clone(), url.clone());
    let out = tokio::task::spawn_blocking(move || {
        nix(&[
            "copy",
            "--from",
            &url2,
            "--to",
            &root2,
            "--option",
            "require-sigs",
            "true",
            "--option",
            "trusted-public-keys",
            &pub2,
            &top2,
        ])
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let copied = root.join("nix/store").join(top.base_name()).join("data");
    assert_eq!(std::fs::read(copied).unwrap(), b"top from kiln");

    // Without Kiln's key trusted, Nix refuses the unsigned-for-it path.
    let (root3, top3, url3) = (work.path().join("root2"), top_s.clone(), url.clone());
    let out = tokio::task::spawn_blocking(move || {
        nix(&[
            "copy",
            "--from",
            &url3,
            "--to",
            root3.to_str().unwrap(),
            "--option",
            "require-sigs",
            "true",
            "--option",
            "trusted-public-keys",
            "other:+houG+mp5/qsV+mEd6GuhDwfx7nBED5e8QT7Xowmf9o=",
            &top3,
        ])
    })
    .await
    .unwrap();
    assert!(!out.status.success());

    // Nix writes a file:// cache; Kiln imports it into the gateway, serves
    // it back and verifies it.
    let file_cache = work.path().join("filecache");
    let fc = format!("file://{}", file_cache.display());
    let secret = work.path().join("nix.sec");
    let nix_key = SecretKey::generate("nix-side-1").unwrap();
    std::fs::write(&secret, nix_key.to_key_file_string()).unwrap();
    let (root4, top4, fc4, sec4) = (root_s.clone(), top_s.clone(), fc.clone(), secret.clone());
    let out = tokio::task::spawn_blocking(move || {
        nix(&[
            "copy",
            "--from",
            &root4,
            "--to",
            &format!("{fc4}?compression=xz&secret-key={}", sec4.display()),
            &top4,
        ])
    })
    .await
    .unwrap();
    assert!(out.status.success());
    // Re-upload under another cache: a fresh gateway gets it from Nix's cache.
    let gw2 = Gateway::start(vec![TOKEN.to_string()]).await;
    let from = BinaryCache::new(
        Arc::new(LocalStore::open(&file_cache).await.unwrap()),
        CacheOptions {
            trusted_keys: Some([nix_key.to_public()].into_iter().collect()),
            ..CacheOptions::default()
        },
    );
    let report = copy_paths(
        &from,
        &gw2.client(Some(TOKEN)),
        std::slice::from_ref(&top),
        true,
    )
    .await
    .unwrap();
    assert_eq!(report.copied, vec![dep.clone(), top.clone()]);
    let reader = gw2.trusting_client();
    let dest = tempfile::tempdir().unwrap();
    realise(&reader, std::slice::from_ref(&top), dest.path(), 2)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(dest.path().join(top.base_name()).join("data")).unwrap(),
        b"top from kiln"
    );
    let served = reader.require_info(&top).await.unwrap();
    let nix_pub: TrustedKeys = [nix_key.to_public()].into_iter().collect();
    assert_eq!(
        served.verify_signatures(&nix_pub).unwrap(),
        1,
        "Nix's signature kept"
    );
    gw2.shutdown().await;
    gw.shutdown().await;
}
