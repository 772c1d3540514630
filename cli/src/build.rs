//! `kiln build`: evaluate, schedule and build in one process, like
//! `nix-build`. The coordinator, an evaluator worker and a builder worker
//! run as tasks talking over the in-memory transport, with a local (or any)
//! store; the CLI only submits the job and renders its events.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln_nix::store_path::StorePath;
use kiln_protocol::memory::MemoryTransport;
use kiln_protocol::{
    ArgValue, AutoArg, Envelope, EvalRoot, Event, ExprSource, JobOptions, JobSpec, Message, Route,
    SearchPathEntry, Transport,
};
use kiln_store::cache::{BinaryCache, CacheOptions};
use tokio_util::sync::CancellationToken;

use crate::progress::{drv_name, Mode, Progress};
use crate::store_cmds::{open_cache, runtime, StoreOpts};

/// `kiln build`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub expr: crate::expr_args::ExprArgs,
    /// File to evaluate (as `nix-build -f`).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file_flag: Option<PathBuf>,
    /// Build everything that can be built after a failure.
    #[arg(short = 'k', long = "keep-going")]
    pub keep_going: bool,
    /// Builds at once.
    #[arg(short = 'j', long = "max-jobs", default_value_t = 1)]
    pub jobs: usize,
    /// Store (directory, `file://`, `s3://…`, `http(s)://…`); default
    /// `~/.cache/kiln/store`.
    #[arg(long)]
    pub store: Option<String>,
    /// Name of the result link.
    #[arg(short = 'o', long = "out-link", default_value = "result")]
    pub out_link: PathBuf,
    /// Make no result link.
    #[arg(long = "no-out-link")]
    pub no_out_link: bool,
    /// Print the job's events as JSON lines.
    #[arg(long)]
    pub json: bool,
    /// Kill a build running longer than this many seconds (as nix-build).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Keep all state (default store, realised paths, work and temporary
    /// directories) under this directory instead of `~/.cache/kiln`; also
    /// `KILN_STATE_DIR`.
    #[arg(long = "state-dir", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Kill a build silent (no log output) for this many seconds.
    #[arg(long = "max-silent-time", value_name = "SECS")]
    pub max_silent_time: Option<u64>,
    #[command(flatten)]
    pub store_opts: StoreOpts,
}

/// Whether build roots go on a tmpfs: yes, unless
/// `KILN_SANDBOX_TMPFS_ROOT=0` (kept on disk, for measuring what it gains).
pub(crate) fn tmpfs_root_wanted() -> bool {
    std::env::var("KILN_SANDBOX_TMPFS_ROOT").map_or(true, |v| v != "0")
}

/// `$KILN_STATE_DIR`, else `~/.cache/kiln` (or `$XDG_CACHE_HOME/kiln`).
pub(crate) fn kiln_home() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("KILN_STATE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("kiln"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; pass --store")?;
    Ok(PathBuf::from(home).join(".cache/kiln"))
}

pub(crate) fn spec(args: &Args) -> Result<JobSpec> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    if args.expr.file.is_some() && args.file_flag.is_some() {
        bail!("give the file either as an argument or with -f, not both");
    }
    let source = match (
        &args.expr.expr,
        args.expr.file.as_ref().or(args.file_flag.as_ref()),
    ) {
        (Some(text), _) => ExprSource::Expr {
            text: text.clone(),
            base_dir: cwd.display().to_string(),
        },
        (None, file) => {
            let file = file
                .cloned()
                .unwrap_or_else(|| PathBuf::from("default.nix"));
            let file = cwd.join(file);
            if !file.exists() {
                bail!("file '{}' does not exist", file.display());
            }
            ExprSource::File {
                path: file.display().to_string(),
            }
        }
    };
    let mut auto = Vec::new();
    for (name, e) in args.expr.exprs() {
        auto.push(AutoArg {
            name: name.clone(),
            value: ArgValue::Expr(e.clone()),
        });
    }
    for (name, s) in args.expr.strs() {
        auto.push(AutoArg {
            name: name.clone(),
            value: ArgValue::Str(s.clone()),
        });
    }
    let nix_path = std::env::var("NIX_PATH").unwrap_or_default();
    let search_path: Vec<SearchPathEntry> = args
        .expr
        .include
        .iter()
        .map(String::as_str)
        .chain(nix_path.split(':').filter(|e| !e.is_empty()))
        .map(|e| match e.split_once('=') {
            Some((p, path)) => SearchPathEntry {
                prefix: Some(p.to_string()),
                path: path.to_string(),
            },
            None => SearchPathEntry {
                prefix: None,
                path: e.to_string(),
            },
        })
        .collect();
    Ok(JobSpec {
        job_id: uuid::Uuid::new_v4(),
        source,
        attr_paths: args.expr.attr.clone(),
        args: auto,
        search_path,
        options: JobOptions {
            keep_going: args.keep_going,
            max_jobs: args.jobs.max(1) as u32,
            timeout_secs: args.timeout.filter(|t| *t > 0),
            max_silent_secs: args.max_silent_time.filter(|t| *t > 0),
            ..JobOptions::default()
        },
        sources: Vec::new(),
        attempt: uuid::Uuid::nil(),
    })
}

/// The store named on the command line, else the embedded default
/// (`~/.cache/kiln/store`).
pub(crate) fn default_store(given: Option<&str>) -> Result<String> {
    match given {
        Some(s) => Ok(s.to_string()),
        None => Ok(kiln_home()?.join("store").display().to_string()),
    }
}

/// The state directory: `--state-dir`, else [`kiln_home`].
fn state_dir(args: &Args) -> Result<PathBuf> {
    match &args.state_dir {
        Some(d) => {
            Ok(std::path::absolute(d)
                .with_context(|| format!("state directory '{}'", d.display()))?)
        }
        None => kiln_home(),
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let spec = spec(&args)?;
    let home = state_dir(&args)?;
    let store_url = match &args.store {
        Some(s) => s.clone(),
        None => home.join("store").display().to_string(),
    };
    let _state = crate::state::lock(&home)?;
    let mode = if args.json {
        Mode::Json
    } else if std::io::stderr().is_terminal() {
        Mode::Live
    } else {
        Mode::Plain
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let cache_opts = CacheOptions {
            temp_dir: home.join("tmp"),
            ..CacheOptions::default()
        };
        std::fs::create_dir_all(&cache_opts.temp_dir)
            .with_context(|| format!("creating '{}'", cache_opts.temp_dir.display()))?;
        let cache = Arc::new(open_cache(&store_url, &args.store_opts, cache_opts).await?);
        cache.ensure_cache_info().await?;
        let realised = home.join("realised");
        let outcome = run_job(&args, spec, cache.clone(), &home, &realised, mode).await?;
        finish(&args, &cache, &realised, outcome).await
    })
}

/// How a followed job ended.
pub(crate) struct Outcome {
    pub(crate) success: bool,
    pub(crate) cancelled: bool,
    pub(crate) roots: Vec<EvalRoot>,
    pub(crate) failures: Vec<Failure>,
    /// Derivations not built because an input failed: (drv, failed input).
    pub(crate) dependency_failures: Vec<(String, String)>,
    pub(crate) eval_error: Option<String>,
    pub(crate) summary: Vec<kiln_protocol::DrvSummary>,
}

/// A build of the job that failed.
pub(crate) struct Failure {
    pub(crate) drv_path: String,
    pub(crate) reason: String,
    pub(crate) log_tail: Vec<String>,
    pub(crate) kind: Option<kiln_protocol::FailureKind>,
}

impl Outcome {
    /// The exit code for this outcome (see [`crate::exit`]).
    pub(crate) fn exit_code(&self) -> ExitCode {
        if self.success {
            ExitCode::SUCCESS
        } else if self.cancelled {
            ExitCode::from(crate::exit::CANCELLED)
        } else if self.eval_error.is_some() || self.failures.is_empty() {
            ExitCode::from(crate::exit::EVAL_FAILED)
        } else {
            crate::exit::build_failure(self.failures.iter().map(|f| f.kind))
        }
    }
}

async fn run_job(
    args: &Args,
    spec: JobSpec,
    cache: Arc<BinaryCache>,
    home: &Path,
    realised: &Path,
    mode: Mode,
) -> Result<Outcome> {
    let transport = MemoryTransport::new();
    let t: Arc<dyn Transport> = Arc::new(transport.clone());
    let shutdown = CancellationToken::new();
    let mut coordinator = tokio::spawn(kiln_coordinator::run(
        t.clone(),
        cache.clone(),
        kiln_coordinator::CoordinatorConfig::default(),
        shutdown.clone(),
    ));
    let mut evaluator = tokio::spawn(kiln_evaluator::worker::run(
        t.clone(),
        cache.clone(),
        kiln_evaluator::worker::EvalWorkerConfig {
            work_dir: home.join("eval"),
        },
        shutdown.clone(),
    ));
    let mut wc = kiln_builder::worker::WorkerConfig::new("local", realised);
    wc.builder.max_jobs = args.jobs.max(1);
    wc.builder.tmpfs_root = tmpfs_root_wanted();
    let mut builder = tokio::spawn(kiln_builder::worker::run(
        t.clone(),
        cache.clone(),
        wc,
        shutdown.clone(),
    ));

    let job_id = spec.job_id;
    let mut events = transport.subscribe(&Route::JobEvents(job_id)).await?;
    transport
        .publish(&Route::Jobs, &Envelope::new(Message::SubmitJob(spec)), 0)
        .await?;
    // A role that stops before the job ends would leave the job waiting
    // for ever: its end is the job's failure.
    let roles = async {
        tokio::select! {
            r = &mut coordinator => format!("the coordinator stopped: {}", role_end(r.map(|r| r.map_err(|e| e.to_string())))),
            r = &mut evaluator => format!("the evaluator stopped: {}", role_end(r.map(|r| r.map_err(|e| e.to_string())))),
            r = &mut builder => format!("the builder stopped: {}", role_end(r.map(|r| r.map_err(|e| e.to_string())))),
        }
    };
    let outcome = follow(&mut events, &t, job_id, mode, OnInterrupt::Cancel, roles)
        .await
        .and_then(|o| o.context("the job was left running"));
    shutdown.cancel();
    if outcome.is_ok() {
        let _ = coordinator.await;
        let _ = evaluator.await;
        let _ = builder.await;
    }
    outcome
}

fn role_end(r: Result<Result<(), String>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "without an error".into(),
        Ok(Err(e)) => e,
        Err(e) => format!("it crashed ({e})"),
    }
}

/// What Ctrl-C does to a followed job.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnInterrupt {
    /// Cancel it (`kiln build`: the job lives in this process).
    Cancel,
    /// Stop following and leave it running (`kiln submit --wait`: the
    /// farm carries on; `kiln status`/`kiln cancel` reach it later).
    Detach,
}

/// Renders a job's events until it finishes. Fails when the event stream
/// ends, or when `gone` resolves first (the roles serving the job
/// stopped); Ctrl-C does what `interrupt` says.
pub(crate) async fn follow(
    events: &mut Box<dyn kiln_protocol::Subscription>,
    transport: &Arc<dyn Transport>,
    job_id: uuid::Uuid,
    mode: Mode,
    interrupt: OnInterrupt,
    gone: impl std::future::Future<Output = String>,
) -> Result<Option<Outcome>> {
    tokio::pin!(gone);
    let mut progress = Progress::new(mode);
    let mut failures = Vec::new();
    let mut dependency_failures = Vec::new();
    let mut eval_error = None;
    let mut redraw = tokio::time::interval(Duration::from_millis(500));
    redraw.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut cancelled = false;
    // A farm client whose connection dropped may have missed events (its
    // queue of them goes with the connection): after a quiet spell it asks
    // the coordinator, and ends with the job's last status if it ended.
    let mut quiet = tokio::time::interval(QUIET_CHECK);
    quiet.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    quiet.tick().await;
    let outcome = loop {
        tokio::select! {
            _ = redraw.tick() => progress.tick(),
            _ = quiet.tick(), if interrupt == OnInterrupt::Detach => {
                if let Ok(Some(status)) = crate::jobs::query(transport, Some(job_id)).await.map(|v| v.into_iter().next()) {
                    if status.state.is_final() {
                        tracing::warn!(job = %job_id, "the job ended without its last events reaching this client; using its status");
                        break outcome_from_status(status, failures, dependency_failures);
                    }
                }
            }
            why = &mut gone => {
                progress.finish();
                bail!("{why}");
            }
            _ = tokio::signal::ctrl_c(), if !cancelled => {
                if interrupt == OnInterrupt::Detach {
                    progress.finish();
                    eprintln!("job {job_id} keeps running on the farm: 'kiln status {job_id}' follows it, 'kiln cancel {job_id}' stops it");
                    return Ok(None);
                }
                cancelled = true;
                transport
                    .publish(&Route::Jobs, &Envelope::new(Message::CancelJob { job_id }), 0)
                    .await?;
            }
            d = events.next() => {
                quiet.reset();
                let Some(d) = d? else { bail!("the job's event stream closed") };
                let Message::JobEvent(ev) = d.envelope.body else { continue };
                if ev.job_id != job_id { continue }
                progress.event(&ev);
                match ev.event {
                    Event::Failed { drv_path, reason, log_tail, kind } => {
                        let log_tail = if log_tail.is_empty() { progress.tail(&drv_path).to_vec() } else { log_tail };
                        failures.push(Failure { drv_path, reason, log_tail, kind });
                    }
                    Event::DependencyFailed { drv_path, dependency } => {
                        dependency_failures.push((drv_path, dependency));
                    }
                    Event::EvalFinished { error: Some(e) } => eval_error = Some(e),
                    Event::JobFinished { success, roots, summary, cancelled } => {
                        break Outcome { success, cancelled, roots, failures, dependency_failures, eval_error, summary };
                    }
                    _ => {}
                }
            }
        }
    };
    progress.finish();
    Ok(Some(outcome))
}

/// How long a farm client hears nothing before it asks how its job stands.
const QUIET_CHECK: Duration = Duration::from_secs(15);

/// The outcome of a job that ended while its events were lost, from its
/// status (failures seen as events keep their log tails).
fn outcome_from_status(
    s: kiln_protocol::JobStatus,
    mut failures: Vec<Failure>,
    dependency_failures: Vec<(String, String)>,
) -> Outcome {
    for d in &s.ended {
        if d.status == kiln_protocol::DrvStatus::Failed
            && !failures.iter().any(|f| f.drv_path == d.drv_path)
        {
            failures.push(Failure {
                drv_path: d.drv_path.clone(),
                reason: format!(
                    "builder for '{}' failed ('kiln logs {}' shows its log)",
                    d.drv_path, s.job_id
                ),
                log_tail: Vec::new(),
                kind: None,
            });
        }
    }
    Outcome {
        success: s.state == kiln_protocol::JobState::Succeeded,
        cancelled: s.state == kiln_protocol::JobState::Cancelled,
        roots: s.roots,
        failures,
        dependency_failures,
        eval_error: s.eval_error,
        summary: s.ended,
    }
}

pub(crate) async fn finish(
    args: &Args,
    cache: &BinaryCache,
    realised: &Path,
    o: Outcome,
) -> Result<ExitCode> {
    if let Some(e) = &o.eval_error {
        eprintln!("{e}");
    }
    for f in &o.failures {
        eprintln!("error: {}", f.reason);
        if !f.log_tail.is_empty() {
            eprintln!(
                "       last {} log lines of {}:",
                f.log_tail.len(),
                drv_name(&f.drv_path)
            );
            for l in &f.log_tail {
                eprintln!("       > {}", crate::progress::sanitize(l));
            }
        }
    }
    for (drv, dependency) in &o.dependency_failures {
        eprintln!("error: derivation '{drv}' was not built: its dependency '{dependency}' failed");
    }
    if !o.success {
        if o.failures.len() > 1 {
            eprintln!("error: {} derivations failed", o.failures.len());
        }
        if o.cancelled {
            eprintln!("error: the job was cancelled");
        }
        return Ok(o.exit_code());
    }
    let mut out = std::io::stdout().lock();
    for (i, root) in o.roots.iter().enumerate() {
        for (output, path) in &root.outputs {
            let sp =
                StorePath::from_absolute_path(path).with_context(|| format!("output '{path}'"))?;
            kiln_store::realise::realise(cache, std::slice::from_ref(&sp), realised, 8)
                .await
                .with_context(|| format!("fetching '{path}' from the store"))?;
            if !args.no_out_link {
                let mut link = args.out_link.as_os_str().to_owned();
                if i > 0 {
                    link.push(format!("-{}", i + 1));
                }
                if output != "out" {
                    link.push(format!("-{output}"));
                }
                let link = PathBuf::from(link);
                if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
                    std::fs::remove_file(&link)
                        .with_context(|| format!("replacing '{}'", link.display()))?;
                }
                std::os::unix::fs::symlink(realised.join(sp.base_name()), &link)
                    .with_context(|| format!("creating the link '{}'", link.display()))?;
            }
            // With --json, stdout is the event stream alone (the paths are
            // in its last event).
            if !args.json {
                use std::io::Write;
                writeln!(out, "{path}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
