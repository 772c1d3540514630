//! Store benchmark (run by `bench/store_bench.sh`, not a timed test):
//! existence checks of 10,000 paths through the gateway, batched versus one
//! request per path; and upload/download throughput of a 1 GiB NAR through
//! the store versus raw PutObject/GetObject of the same bytes, on the S3
//! named by KILN_S3_ENDPOINT, KILN_S3_REGION, KILN_S3_BUCKET and AWS_*.
//! Downloads are also compared with a raw GetObject whose bytes are checked
//! against the NAR's hash and size as they are read: the least any reader
//! that verifies what it receives must do, which shows how much of the gap
//! to raw is the check itself.

use std::hash::{BuildHasher, Hasher as _};
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{self, StreamExt};
use kiln_nix::store_path::StorePath;
use kiln_store::backend::http::HttpStore;
use kiln_store::backend::s3::{S3Config, S3Store};
use kiln_store::backend::Store;
use kiln_store::cache::{BinaryCache, CacheOptions, PathMeta};
use kiln_store::gateway::{serve, GatewayState};
use kiln_store::Key;
use tokio::io::AsyncReadExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn random_digest(i: u64) -> [u8; 20] {
    let mut out = [0u8; 20];
    for chunk in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
    }
    out
}

fn env(name: &str) -> Result<String, BoxError> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let size_mib: u64 = std::env::var("KILN_BENCH_NAR_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let paths: usize = std::env::var("KILN_BENCH_PATHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut cfg = S3Config::new(env("KILN_S3_BUCKET")?);
    cfg.endpoint = Some(env("KILN_S3_ENDPOINT")?);
    cfg.region = Some(env("KILN_S3_REGION")?);
    cfg.access_key_id = Some(env("AWS_ACCESS_KEY_ID")?);
    cfg.secret_access_key = Some(env("AWS_SECRET_ACCESS_KEY")?);
    cfg.prefix = format!(
        "bench-{}",
        kiln_nix::nixbase32::encode(&random_digest(0)[..8])
    );
    let s3 = Arc::new(S3Store::connect(cfg.clone()).await?);
    let work = tempfile::tempdir()?;
    let cache = Arc::new(BinaryCache::new(
        s3.clone(),
        CacheOptions {
            temp_dir: work.path().to_path_buf(),
            ..CacheOptions::default()
        },
    ));
    if std::env::var("KILN_BENCH_SKIP_EXISTS").as_deref() != Ok("1") {
        existence(&s3, &cache, paths).await?;
    }

    // --- Throughput of a large NAR: one regular file, of pseudo-random
    // (incompressible) bytes, or of text when KILN_BENCH_NAR_DATA=text.
    let text = match std::env::var("KILN_BENCH_NAR_DATA").as_deref() {
        Err(_) | Ok("random") => false,
        Ok("text") => true,
        Ok(other) => return Err(format!("KILN_BENCH_NAR_DATA={other}: random or text").into()),
    };
    let nar_path = work.path().join("big.nar");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&nar_path)?);
        let body = size_mib << 20;
        let mut w = kiln_nix::nar::NarWriter::new(&mut f)?;
        if text {
            let mut reader = std::io::Read::take(TextFiller::default(), body);
            w.file(None, false, body, &mut reader)?;
        } else {
            let mut reader = std::io::Read::take(Filler::new(), body);
            w.file(None, false, body, &mut reader)?;
        }
        w.finish()?;
        f.flush()?;
    }
    let nar_size = std::fs::metadata(&nar_path)?.len();
    let nar_hash = {
        let mut h = kiln_nix::hash::Hasher::new(kiln_nix::hash::HashAlgo::Sha256);
        std::io::copy(&mut std::fs::File::open(&nar_path)?, &mut h)?;
        h.finish()
    };
    let path = StorePath::new(random_digest(u64::MAX), "big")?;
    let meta = PathMeta {
        path: path.clone(),
        references: Default::default(),
        deriver: None,
        system: None,
        ca: None,
        sigs: Default::default(),
        expected: None,
    };
    let raw_key = Key::log(&format!("{}-raw.drv", path.hash_part()))?;
    let rounds: usize = std::env::var("KILN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);

    // Each round times the store and raw requests on the same bytes; the
    // side that goes first alternates, so neither always meets a colder
    // (or warmer) server.
    let mut up_ratios = Vec::new();
    let mut down_ratios = Vec::new();
    let mut checked_ratios = Vec::new();
    let mut stored_as = String::new();
    for round in 0..rounds {
        let mut times = [0f64; 5];
        // This process's CPU time in each download: store, raw, checked.
        let mut cpu = [0f64; 3];
        // Both uploads, then every download: a download never runs while
        // the server is still writing out an upload. The
        // side that goes first rotates, so neither always meets a colder
        // (or warmer) server.
        let mut info = None;
        let okey = s3.config().object_key(&raw_key);
        for side in [round % 2, 1 - round % 2] {
            let t = Instant::now();
            if side == 0 {
                let stored = cache
                    .add_path(meta.clone(), tokio::fs::File::open(&nar_path).await?)
                    .await?;
                times[0] = t.elapsed().as_secs_f64();
                stored_as = format!("{} bytes, {}", stored.file_size, stored.compression);
                info = Some(stored);
            } else {
                // Raw: one PutObject straight from the SDK (no multipart).
                s3.client()
                    .put_object()
                    .bucket(&s3.config().bucket)
                    .key(&okey)
                    .body(aws_sdk_s3::primitives::ByteStream::from_path(&nar_path).await?)
                    .send()
                    .await?;
                times[2] = t.elapsed().as_secs_f64();
            }
        }
        let info = info.expect("stored");
        // Untimed: write the uploads out first, so that no download
        // competes with the server's disk writes.
        std::process::Command::new("sync").status()?;
        for i in 0..3 {
            let t = Instant::now();
            let cpu_before = cpu_seconds();
            let which = (round + i) % 3;
            match which {
                0 => {
                    let nar = cache.nar(&info).await?;
                    assert_eq!(drain(nar, None).await?, nar_size);
                    times[1] = t.elapsed().as_secs_f64();
                }
                which => {
                    // Raw: one GetObject (no ranged reads), drained as it
                    // is, or checked against the NAR's hash as it is read.
                    let raw = s3
                        .client()
                        .get_object()
                        .bucket(&s3.config().bucket)
                        .key(&okey)
                        .send()
                        .await?;
                    let body = Box::pin(raw.body.into_async_read());
                    if which == 1 {
                        assert_eq!(drain(body, None).await?, nar_size);
                        times[3] = t.elapsed().as_secs_f64();
                    } else {
                        let check = kiln_store::compression::NarCheck::new(
                            nar_hash.clone(),
                            nar_size,
                            "raw GetObject",
                        );
                        drain(body, Some(check)).await?;
                        times[4] = t.elapsed().as_secs_f64();
                    }
                }
            }
            cpu[which] = cpu_seconds() - cpu_before;
        }
        s3.delete(&Key::parse(&info.url)?).await?;
        s3.delete(&Key::narinfo(&path.hash_part())?).await?;
        s3.delete(&raw_key).await?;
        let [store_up, store_down, raw_up, raw_down, checked_down] = times;
        println!(
            "round {}: NAR of {nar_size} bytes stored as {stored_as}",
            round + 1
        );
        println!(
            "  upload   store {:.1} MiB/s, raw PutObject {:.1} MiB/s, store/raw {:.2}",
            mib_per_s(nar_size, store_up),
            mib_per_s(nar_size, raw_up),
            raw_up / store_up
        );
        println!(
            "  download store {:.1} MiB/s, raw GetObject {:.1} MiB/s, store/raw {:.2}",
            mib_per_s(nar_size, store_down),
            mib_per_s(nar_size, raw_down),
            raw_down / store_down
        );
        println!(
            "  download raw GetObject checked as read {:.1} MiB/s, store/checked {:.2}",
            mib_per_s(nar_size, checked_down),
            checked_down / store_down
        );
        println!(
            "  client CPU per download: store {:.2} s, raw {:.2} s, checked raw {:.2} s",
            cpu[0], cpu[1], cpu[2]
        );
        up_ratios.push(raw_up / store_up);
        down_ratios.push(raw_down / store_down);
        checked_ratios.push(checked_down / store_down);
    }
    println!(
        "median of {rounds} rounds: upload store/raw {:.2}, download store/raw {:.2}, \
         download store/checked raw {:.2}",
        median(&mut up_ratios),
        median(&mut down_ratios),
        median(&mut checked_ratios)
    );
    Ok(())
}

/// Existence of `paths` paths through the gateway, a tenth of them
/// present: one batched request against one request per path.
async fn existence(
    s3: &Arc<S3Store>,
    cache: &Arc<BinaryCache>,
    paths: usize,
) -> Result<(), BoxError> {
    let keys: Vec<Key> = (0..paths as u64)
        .map(|i| {
            Ok(Key::narinfo(
                &StorePath::new(random_digest(i + 1), "p")?.hash_part(),
            )?)
        })
        .collect::<Result<_, BoxError>>()?;
    let present: Vec<&Key> = keys.iter().step_by(10).collect();
    stream::iter(
        present
            .iter()
            .map(|k| s3.put_bytes(k, kiln_store::Bytes::from_static(b"x"))),
    )
    .buffer_unordered(32)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let state = Arc::new(GatewayState::new(cache.clone(), Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));
    let http = HttpStore::new(&url, None)?;
    let t = Instant::now();
    let batched = http.exists_many(&keys).await?;
    let batched_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut single = Vec::with_capacity(keys.len());
    for k in &keys {
        single.push(http.exists(k).await?);
    }
    let single_s = t.elapsed().as_secs_f64();
    assert_eq!(batched, single);
    let _ = stop.send(());
    server.await??;
    println!("existence of {paths} paths ({} present):", present.len());
    println!("  batched POST /api/v1/exists: {batched_s:.3} s");
    println!("  one HEAD per path:           {single_s:.3} s");
    println!(
        "  ratio single/batched:        {:.1}x",
        single_s / batched_s
    );
    for k in present {
        s3.delete(k).await?;
    }
    Ok(())
}

/// CPU time (user and system) this process has used so far, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Endless text-like bytes (words from a small vocabulary in a
/// pseudo-random order) that compress about as well as source code.
#[derive(Default)]
struct TextFiller {
    inner: Option<Filler>,
    pending: Vec<u8>,
}

impl std::io::Read for TextFiller {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        const WORDS: [&str; 16] = [
            "fn ", "let ", "store", "path", " = ", "(", ")", ";\n", "nar", "hash", "    ", "info",
            ".", "kiln", "{\n", "}\n",
        ];
        let rng = self.inner.get_or_insert_with(Filler::new);
        let mut n = 0;
        while n < buf.len() {
            if self.pending.is_empty() {
                let mut r = [0u8; 8];
                std::io::Read::read(rng, &mut r)?;
                for b in r {
                    self.pending
                        .extend_from_slice(WORDS[usize::from(b & 15)].as_bytes());
                }
            }
            let take = self.pending.len().min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&self.pending[..take]);
            self.pending.drain(..take);
            n += take;
        }
        Ok(n)
    }
}

/// Reads a stream to its end the same way for every side of the
/// comparison (1 MiB reads), returning its length; with `check`, the bytes
/// are also checked against a NAR hash and size as they are read.
async fn drain(
    mut stream: kiln_store::ByteStream,
    mut check: Option<kiln_store::compression::NarCheck>,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            if let Some(c) = check {
                c.finish()?;
            }
            return Ok(total);
        }
        if let Some(c) = check.as_mut() {
            c.update(&buf[..n])?;
        }
        total += n as u64;
    }
}

/// Endless pseudo-random (xorshift) bytes, incompressible like real
/// binaries at worst.
struct Filler {
    state: u64,
}

impl Filler {
    fn new() -> Filler {
        Filler {
            state: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

impl std::io::Read for Filler {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        for c in buf.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            c.copy_from_slice(&self.state.to_le_bytes()[..c.len()]);
        }
        Ok(buf.len())
    }
}
