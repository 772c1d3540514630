//! `kiln copy`, `kiln path-info` and `kiln store-gateway`: the store
//! commands, thin wrappers over `kiln-store`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use kiln_nix::narinfo::NarInfo;
use kiln_nix::signing::{PublicKey, SecretKey, TrustedKeys};
use kiln_nix::store_path::StorePath;
use kiln_store::cache::{BinaryCache, CacheOptions};
use kiln_store::compression::Compression;
use kiln_store::copy::copy_paths;
use kiln_store::gateway::{serve, GatewayState};
use kiln_store::url::StoreUrl;
use serde::Serialize;

/// Options every store command shares.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreOpts {
    /// Accept only paths signed by this public key (`name:base64`);
    /// repeatable.
    #[arg(long = "trusted-public-key", value_name = "KEY")]
    trusted_public_keys: Vec<String>,
    /// File holding a bearer token for writing to a Kiln gateway.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

/// `kiln copy`.
#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Store to copy from.
    #[arg(long, value_name = "URL")]
    from: String,
    /// Store to copy to.
    #[arg(long, value_name = "URL")]
    to: String,
    /// Copy only the named paths, not their closures.
    #[arg(long)]
    no_closure: bool,
    /// Sign what is written with this Nix secret key file; repeatable.
    #[arg(long = "secret-key-file", value_name = "FILE")]
    secret_key_files: Vec<PathBuf>,
    /// Compression of NARs written: zstd, xz or none.
    #[arg(long, default_value = "zstd")]
    compression: String,
    #[command(flatten)]
    opts: StoreOpts,
    /// Store paths to copy.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,
}

/// `kiln path-info`.
#[derive(Args, Debug)]
pub struct PathInfoArgs {
    /// Store to query; the embedded default store when omitted.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Print JSON as `nix path-info --json` does.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    opts: StoreOpts,
    /// Store paths to describe.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,
}

/// `kiln log`.
#[derive(Args, Debug)]
pub struct LogArgs {
    /// Store holding the log; the embedded default store when omitted.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    #[command(flatten)]
    opts: StoreOpts,
    /// The derivation (`/nix/store/…drv`, or its base name), or one of its
    /// outputs when the store knows the output's deriver.
    #[arg(value_name = "DRV")]
    path: String,
}

/// `kiln store-gateway`.
#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// Store to serve.
    #[arg(long, value_name = "URL")]
    store: String,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Sign accepted uploads with this Nix secret key file; repeatable.
    #[arg(long = "secret-key-file", value_name = "FILE")]
    secret_key_files: Vec<PathBuf>,
    /// File holding the bearer token that allows uploads; read-only without.
    #[arg(long, value_name = "FILE")]
    upload_token_file: Option<PathBuf>,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn read_token(path: &PathBuf) -> Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file '{}'", path.display()))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        bail!("token file '{}' is empty", path.display());
    }
    Ok(t)
}

fn parse_path(s: &str) -> Result<StorePath> {
    StorePath::from_absolute_path_prefix(s)
        .map(|(p, _)| p)
        .with_context(|| format!("'{s}' is not a store path"))
}

fn secret_keys(files: &[PathBuf]) -> Result<Vec<SecretKey>> {
    files
        .iter()
        .map(|f| {
            SecretKey::from_file(f).with_context(|| format!("loading secret key '{}'", f.display()))
        })
        .collect()
}

pub(crate) async fn open_cache(
    url: &str,
    opts: &StoreOpts,
    cache_opts: CacheOptions,
) -> Result<BinaryCache> {
    let token = opts.token_file.as_ref().map(read_token).transpose()?;
    let store = StoreUrl::parse(url)?.open(env, token).await?;
    let mut cache_opts = cache_opts;
    if !opts.trusted_public_keys.is_empty() {
        let mut keys = TrustedKeys::new();
        for k in &opts.trusted_public_keys {
            keys.insert(PublicKey::parse(k).with_context(|| format!("trusted public key '{k}'"))?);
        }
        cache_opts.trusted_keys = Some(keys);
    }
    Ok(BinaryCache::new(store, cache_opts))
}

/// Runs `kiln copy`.
pub fn run_copy(args: CopyArgs) -> Result<ExitCode> {
    let compression = Compression::from_name(&args.compression).with_context(|| {
        format!(
            "unknown compression '{}' (zstd, xz or none)",
            args.compression
        )
    })?;
    let paths = args
        .paths
        .iter()
        .map(|p| parse_path(p))
        .collect::<Result<Vec<_>>>()?;
    let keys = secret_keys(&args.secret_key_files)?;
    runtime()?.block_on(async {
        let from = open_cache(&args.from, &args.opts, CacheOptions::default()).await?;
        let to_opts = CacheOptions {
            compression,
            secret_keys: keys,
            ..CacheOptions::default()
        };
        let plain = StoreOpts {
            trusted_public_keys: Vec::new(),
            token_file: args.opts.token_file.clone(),
        };
        let to = open_cache(&args.to, &plain, to_opts).await?;
        if to.store().writable() {
            to.ensure_cache_info().await?;
        }
        let report = copy_paths(&from, &to, &paths, !args.no_closure).await?;
        eprintln!(
            "copied {} path(s) from '{}' to '{}' ({} already present)",
            report.copied.len(),
            args.from,
            args.to,
            report.present.len()
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// One entry of `nix path-info --json`, fields in Nix 2.8's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PathInfoJson {
    path: String,
    nar_hash: String,
    nar_size: u64,
    references: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deriver: Option<String>,
    signatures: Vec<String>,
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    download_hash: Option<String>,
    download_size: u64,
}

fn to_json(info: &NarInfo) -> PathInfoJson {
    let mut references: Vec<String> = info
        .references
        .iter()
        .map(StorePath::to_absolute_path)
        .collect();
    references.sort();
    PathInfoJson {
        path: info.store_path.to_absolute_path(),
        nar_hash: info.nar_hash.to_sri(),
        nar_size: info.nar_size,
        references,
        ca: info.ca.as_ref().map(|c| c.to_string()),
        deriver: info.deriver.as_ref().map(StorePath::to_absolute_path),
        signatures: info.sigs.iter().cloned().collect(),
        url: info.url.clone(),
        download_hash: info.file_hash.as_ref().map(|h| h.to_sri()),
        download_size: info.file_size,
    }
}

/// Runs `kiln path-info`.
pub fn run_path_info(args: PathInfoArgs) -> Result<ExitCode> {
    let paths = args
        .paths
        .iter()
        .map(|p| parse_path(p))
        .collect::<Result<Vec<_>>>()?;
    runtime()?.block_on(async {
        let url = crate::build::default_store(args.store.as_deref())?;
        let cache = open_cache(&url, &args.opts, CacheOptions::default()).await?;
        let mut infos = Vec::with_capacity(paths.len());
        for p in &paths {
            match cache.path_info(p).await? {
                Some(i) => infos.push(i),
                None => bail!("path '{p}' is not valid"),
            }
        }
        if args.json {
            let list: Vec<PathInfoJson> = infos.iter().map(to_json).collect();
            // Nix prints the JSON without a final newline.
            print!("{}", serde_json::to_string(&list)?);
        } else {
            // The path, then its facts in narinfo's words, indented.
            for i in infos.iter().map(to_json) {
                println!("{}", i.path);
                println!("  NarHash: {}", i.nar_hash);
                println!("  NarSize: {}", i.nar_size);
                println!("  References: {}", i.references.join(" "));
                if let Some(d) = &i.deriver {
                    println!("  Deriver: {d}");
                }
                if let Some(ca) = &i.ca {
                    println!("  CA: {ca}");
                }
                for sig in &i.signatures {
                    println!("  Sig: {sig}");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs `kiln store-gateway` until SIGINT or SIGTERM.
pub fn run_gateway(args: GatewayArgs) -> Result<ExitCode> {
    let keys = secret_keys(&args.secret_key_files)?;
    let tokens = args
        .upload_token_file
        .as_ref()
        .map(read_token)
        .transpose()?
        .into_iter()
        .collect();
    runtime()?.block_on(async {
        let store = StoreUrl::parse(&args.store)?.open(env, None).await?;
        let cache = BinaryCache::new(
            store,
            CacheOptions {
                secret_keys: keys,
                ..CacheOptions::default()
            },
        );
        let state = Arc::new(GatewayState::new(Arc::new(cache), tokens));
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        eprintln!(
            "kiln store-gateway: serving '{}' on http://{}",
            args.store,
            listener.local_addr()?
        );
        serve(listener, state, shutdown_signal())
            .await
            .context("serving")?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Runs `kiln log`: prints a build's log as stored under `log/<drv>`.
pub fn run_log(args: LogArgs) -> Result<ExitCode> {
    let url = crate::build::default_store(args.store.as_deref())?;
    let given = if args.path.starts_with('/') {
        args.path.clone()
    } else {
        format!("{}/{}", kiln_nix::store_path::STORE_DIR, args.path)
    };
    let path = parse_path(&given)?;
    runtime()?.block_on(async {
        let cache = open_cache(&url, &args.opts, CacheOptions::default()).await?;
        // An output path leads to its derivation through the narinfo's Deriver.
        let drv = if path.name().ends_with(".drv") {
            path
        } else {
            let info = cache
                .path_info(&path)
                .await?
                .with_context(|| format!("'{given}' is not in the store '{url}'"))?;
            info.deriver.with_context(|| {
                format!("the store does not record which derivation built '{given}'")
            })?
        };
        let log = cache.get_log(&drv).await?.with_context(|| {
            format!(
                "no build log of '{}' in the store '{url}'",
                drv.to_absolute_path()
            )
        })?;
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        out.write_all(&log)?;
        out.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}
