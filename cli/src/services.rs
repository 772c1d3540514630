//! The services of the distributed mode: `kiln coordinator`, `kiln
//! evaluator` and `kiln builder`. Each runs the very role code of the
//! embedded `kiln build`, over RabbitMQ instead of the in-memory
//! transport, until SIGTERM or SIGINT.
//!
//! Settings come from a TOML file (`--config`), overridden by flags and
//! their environment variables; each role's file schema is the `*File`
//! struct below, and every key is optional.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln_protocol::{Transport, UploadMode};
use kiln_store::cache::{BinaryCache, CacheOptions};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::build::kiln_home;
use crate::farm::{serve_metrics, shutdown_on_signals, AmqpOpts, Health, ServiceOpts};
use crate::store_cmds::{open_cache, runtime, StoreOpts};

/// The store a service reads and writes.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// The store (`s3://BUCKET?endpoint=…`, `http(s)://…`, a directory).
    #[arg(long, env = "KILN_STORE_URL", value_name = "URL")]
    pub store: Option<String>,
    #[command(flatten)]
    pub store_opts: StoreOpts,
}

impl StoreArgs {
    fn url(&self, from_file: Option<&String>) -> Result<String> {
        match self.store.as_ref().or(from_file) {
            Some(u) => Ok(u.clone()),
            None => bail!("no store given: pass --store URL or set KILN_STORE_URL"),
        }
    }
}

async fn open(url: &str, opts: &StoreOpts, temp: PathBuf) -> Result<Arc<BinaryCache>> {
    std::fs::create_dir_all(&temp).with_context(|| format!("creating '{}'", temp.display()))?;
    let cache = open_cache(
        url,
        opts,
        CacheOptions {
            temp_dir: temp,
            ..CacheOptions::default()
        },
    )
    .await?;
    Ok(Arc::new(cache))
}

/// Shared start-up of a service: logging, metrics, signals, broker.
async fn start(
    role: &str,
    amqp: &AmqpOpts,
    service: &ServiceOpts,
) -> Result<(Arc<dyn Transport>, CancellationToken, Health)> {
    let shutdown = shutdown_on_signals();
    let health = Health::default();
    serve_metrics(service.metrics_addr, health.clone(), shutdown.clone()).await?;
    let transport = amqp.connect(role).await?;
    tracing::info!(role, broker = %transport.display_url(), "connected");
    health.set(true);
    Ok((Arc::new(transport), shutdown, health))
}

/// What the coordinator and an evaluator are started with: the broker,
/// the service options, the store and a work directory.
#[derive(clap::Args, Debug)]
pub struct RoleArgs {
    #[command(flatten)]
    amqp: AmqpOpts,
    #[command(flatten)]
    service: ServiceOpts,
    #[command(flatten)]
    store: StoreArgs,
    /// Working directory (the coordinator receives streamed outputs
    /// there, an evaluator unpacks and evaluates jobs' sources); default
    /// `~/.cache/kiln/<role>`.
    #[arg(long, value_name = "DIR", env = "KILN_WORK_DIR")]
    work_dir: Option<PathBuf>,
}

/// The keys every role's settings file has.
trait RoleFile: serde::de::DeserializeOwned + Default {
    fn store(&self) -> Option<&String>;
    fn work_dir(&self) -> Option<&PathBuf>;
}

/// A role ready to run: its settings file, store and work directory.
struct Prepared<F> {
    file: F,
    url: String,
    work: PathBuf,
}

impl RoleArgs {
    /// Starts logging and reads the settings file, flags winning over it.
    fn prepare<F: RoleFile>(&self, role: &str) -> Result<Prepared<F>> {
        self.service.init_logging();
        let file: F = self.service.load()?;
        let url = self.store.url(file.store())?;
        let work = match self.work_dir.clone().or(file.work_dir().cloned()) {
            Some(w) => w,
            None => kiln_home()?.join(role),
        };
        Ok(Prepared { file, url, work })
    }

    /// Opens the store and connects: the role's cache and transport.
    async fn connect<F>(
        &self,
        role: &str,
        p: &Prepared<F>,
    ) -> Result<(Arc<BinaryCache>, Arc<dyn Transport>, CancellationToken)> {
        let cache = open(&p.url, &self.store.store_opts, p.work.join("tmp")).await?;
        let (transport, shutdown, _health) = start(role, &self.amqp, &self.service).await?;
        Ok((cache, transport, shutdown))
    }
}

/// Settings file of `kiln coordinator`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorFile {
    pub store: Option<String>,
    pub work_dir: Option<PathBuf>,
    pub check_batch: Option<usize>,
    pub check_concurrency: Option<usize>,
}

impl RoleFile for CoordinatorFile {
    fn store(&self) -> Option<&String> {
        self.store.as_ref()
    }
    fn work_dir(&self) -> Option<&PathBuf> {
        self.work_dir.as_ref()
    }
}

/// `kiln coordinator`.
#[derive(clap::Args, Debug)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    role: RoleArgs,
}

pub fn run_coordinator(args: CoordinatorArgs) -> Result<ExitCode> {
    let p: Prepared<CoordinatorFile> = args.role.prepare("coordinator")?;
    runtime()?.block_on(async move {
        let (cache, transport, shutdown) = args.role.connect("coordinator", &p).await?;
        let mut config = kiln_coordinator::CoordinatorConfig::default();
        if let Some(b) = p.file.check_batch {
            config.check_batch = b;
        }
        if let Some(c) = p.file.check_concurrency {
            config.check_concurrency = c;
        }
        if cache.store().writable() {
            config.nar_dir = Some(p.work.join("nars"));
        }
        kiln_coordinator::run(transport, cache, config, shutdown)
            .await
            .context("the coordinator stopped")?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Settings file of `kiln evaluator`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorFile {
    pub store: Option<String>,
    pub work_dir: Option<PathBuf>,
}

impl RoleFile for EvaluatorFile {
    fn store(&self) -> Option<&String> {
        self.store.as_ref()
    }
    fn work_dir(&self) -> Option<&PathBuf> {
        self.work_dir.as_ref()
    }
}

/// `kiln evaluator`.
#[derive(clap::Args, Debug)]
pub struct EvaluatorArgs {
    #[command(flatten)]
    role: RoleArgs,
}

pub fn run_evaluator(args: EvaluatorArgs) -> Result<ExitCode> {
    let p: Prepared<EvaluatorFile> = args.role.prepare("evaluator")?;
    runtime()?.block_on(async move {
        let (cache, transport, shutdown) = args.role.connect("evaluator", &p).await?;
        kiln_evaluator::worker::run(
            transport,
            cache,
            kiln_evaluator::worker::EvalWorkerConfig {
                work_dir: p.work.join("jobs"),
            },
            shutdown,
        )
        .await
        .context("the evaluator stopped")?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Settings file of `kiln builder`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuilderFile {
    pub store: Option<String>,
    pub max_jobs: Option<usize>,
    pub systems: Option<Vec<String>>,
    pub features: Option<Vec<String>>,
    pub upload: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub builder_id: Option<String>,
    pub heartbeat_interval_secs: Option<f64>,
    pub drain_timeout_secs: Option<u64>,
}

/// Where a builder puts its outputs.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadArg {
    /// Into the store itself (it has credentials).
    Direct,
    /// Streamed back to the coordinator, which stores them.
    ViaCoordinator,
}

/// `kiln builder`.
#[derive(clap::Args, Debug)]
pub struct BuilderArgs {
    #[command(flatten)]
    amqp: AmqpOpts,
    #[command(flatten)]
    service: ServiceOpts,
    #[command(flatten)]
    store: StoreArgs,
    /// Builds at once (the builder's slots).
    #[arg(short = 'j', long = "max-jobs", env = "KILN_MAX_JOBS")]
    max_jobs: Option<usize>,
    /// A system it builds for (repeatable; default: the host's).
    #[arg(long = "system", value_name = "SYSTEM")]
    systems: Vec<String>,
    /// `system-features` it offers, comma-separated (`kvm,big-parallel`).
    #[arg(long, value_delimiter = ',', value_name = "FEATURES")]
    features: Vec<String>,
    /// Where outputs go (default: direct when the store is writable with
    /// credentials, else via the coordinator).
    #[arg(long, value_enum, env = "KILN_UPLOAD")]
    upload: Option<UploadArg>,
    /// Where inputs and outputs are kept on this machine.
    #[arg(long, value_name = "DIR", env = "KILN_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Its name in heartbeats and events (default: host and process id).
    #[arg(long, value_name = "ID", env = "KILN_BUILDER_ID")]
    builder_id: Option<String>,
    /// Seconds between heartbeats (its builds are dispatched again after
    /// three missed ones).
    #[arg(long, value_name = "SECS")]
    heartbeat_interval: Option<f64>,
    /// Seconds running builds may take to finish on shutdown before they
    /// are handed back.
    #[arg(long, value_name = "SECS")]
    drain_timeout: Option<u64>,
}

pub fn run_builder(args: BuilderArgs) -> Result<ExitCode> {
    args.service.init_logging();
    let file: BuilderFile = args.service.load()?;
    let url = args.store.url(file.store.as_ref())?;
    let cache_dir = match args.cache_dir.clone().or(file.cache_dir.clone()) {
        Some(d) => d,
        None => kiln_home()?.join("builder"),
    };
    let id = args
        .builder_id
        .clone()
        .or(file.builder_id.clone())
        .unwrap_or_else(|| {
            format!(
                "{}-{}",
                kiln_builder::worker::host_name(),
                std::process::id()
            )
        });
    let upload = match (args.upload, file.upload.as_deref()) {
        (Some(u), _) => Some(u),
        (None, Some("direct")) => Some(UploadArg::Direct),
        (None, Some("via-coordinator")) => Some(UploadArg::ViaCoordinator),
        (None, Some(other)) => bail!("upload = '{other}' (direct or via-coordinator)"),
        (None, None) => None,
    };
    runtime()?.block_on(async move {
        let cache = open(&url, &args.store.store_opts, cache_dir.join(".tmp")).await?;
        let upload = match upload {
            Some(UploadArg::Direct) => UploadMode::Direct,
            Some(UploadArg::ViaCoordinator) => UploadMode::ViaCoordinator,
            None if has_credentials(&url, &cache) => UploadMode::Direct,
            None => UploadMode::ViaCoordinator,
        };
        let mut wc = kiln_builder::worker::WorkerConfig::new(id.clone(), &cache_dir);
        wc.builder.max_jobs = args.max_jobs.or(file.max_jobs).unwrap_or(1).max(1);
        wc.builder.tmpfs_root = crate::build::tmpfs_root_wanted();
        let systems = if args.systems.is_empty() {
            file.systems.clone().unwrap_or_default()
        } else {
            args.systems.clone()
        };
        if !systems.is_empty() {
            wc.systems = systems;
        }
        let features = if args.features.is_empty() {
            file.features.clone().unwrap_or_default()
        } else {
            args.features.clone()
        };
        wc.features = features.into_iter().filter(|f| !f.is_empty()).collect();
        wc.upload = upload;
        wc.park_unavailable_inputs = true;
        if let Some(s) = args.heartbeat_interval.or(file.heartbeat_interval_secs) {
            if !(s > 0.0 && s < 3600.0) {
                bail!("--heartbeat-interval {s}: give seconds between 0 and 3600");
            }
            wc.heartbeat_every = Duration::from_secs_f64(s);
        }
        if let Some(s) = args.drain_timeout.or(file.drain_timeout_secs) {
            wc.drain_timeout = Duration::from_secs(s);
        }
        let (transport, shutdown, _health) = start("builder", &args.amqp, &args.service).await?;
        tracing::info!(builder = %id, slots = wc.builder.max_jobs, systems = ?wc.systems, features = ?wc.features, upload = ?upload, "building");
        kiln_builder::worker::run(transport, cache, wc, shutdown)
            .await
            .context("the builder stopped")?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Whether this builder may write the store itself: a writable backend,
/// and for S3, credentials in the environment.
fn has_credentials(url: &str, cache: &BinaryCache) -> bool {
    if !cache.store().writable() {
        return false;
    }
    if url.starts_with("s3://") {
        return std::env::var_os("AWS_ACCESS_KEY_ID").is_some();
    }
    true
}
