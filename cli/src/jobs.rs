//! Commands on a farm's jobs: `kiln status JOB`, `kiln jobs`, `kiln cancel
//! JOB` and `kiln logs JOB [DRV] [--follow]`. They ask the leading
//! coordinator (a `StatusQuery` on `kiln.jobs`, answered on a reply route
//! of the asker's own) and follow a job's event stream; none of them needs
//! the client that submitted the job.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln_protocol::{
    Envelope, Event, JobId, JobState, JobStatus, Message, Route, StatusQuery, Transport, WaitReason,
};

use crate::farm::{AmqpOpts, CLIENT_CONNECT_TIMEOUT};
use crate::progress::drv_name;
use crate::store_cmds::{open_cache, runtime, StoreOpts};

/// Asks the coordinator how `job` (or every job) stands.
pub(crate) async fn query(t: &Arc<dyn Transport>, job: Option<JobId>) -> Result<Vec<JobStatus>> {
    let query_id = uuid::Uuid::new_v4();
    let mut replies = t.subscribe(&Route::Reply(query_id)).await?;
    t.publish(
        &Route::Jobs,
        &Envelope::new(Message::StatusQuery(StatusQuery {
            query_id,
            job_id: job,
        })),
        0,
    )
    .await
    .context("asking the coordinator")?;
    let answer = tokio::time::timeout(CLIENT_CONNECT_TIMEOUT, async {
        loop {
            match replies.next().await? {
                Some(d) => {
                    if let Message::StatusReply(r) = d.envelope.body {
                        if r.query_id == query_id {
                            return Ok::<_, anyhow::Error>(r.jobs);
                        }
                    }
                }
                None => bail!("the reply route closed"),
            }
        }
    })
    .await;
    match answer {
        Ok(jobs) => jobs,
        Err(_) => Err(anyhow::Error::new(crate::exit::Unreachable(format!(
            "no coordinator answered within {}s (is one running on this broker and vhost?)",
            CLIENT_CONNECT_TIMEOUT.as_secs()
        )))),
    }
}

/// The one job `id` names, or an error saying it is unknown.
async fn one(t: &Arc<dyn Transport>, id: JobId) -> Result<JobStatus> {
    query(t, Some(id))
        .await?
        .into_iter()
        .next()
        .with_context(|| {
            format!("the coordinator knows no job {id} (finished long ago, or never submitted)")
        })
}

async fn connect(amqp: &AmqpOpts) -> Result<Arc<dyn Transport>> {
    Ok(Arc::new(amqp.connect_client().await?))
}

/// `kiln status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The job id `kiln submit` printed.
    job: JobId,
    /// Print the status as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    amqp: AmqpOpts,
}

pub fn run_status(args: StatusArgs) -> Result<ExitCode> {
    runtime()?.block_on(async move {
        let t = connect(&args.amqp).await?;
        let status = one(&t, args.job).await?;
        if args.json {
            println!("{}", serde_json::to_string(&status)?);
        } else {
            print!("{}", render_status(&status));
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Evaluating => "evaluating",
        JobState::Building => "building",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

fn secs(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}.{}s", s, (ms % 1000) / 100)
    }
}

/// Why a derivation waits, in words.
pub(crate) fn reason_text(why: &WaitReason) -> String {
    match why {
        WaitReason::CheckingStore => "checking whether the store has its outputs".into(),
        WaitReason::Inputs { missing, first } => format!(
            "waiting for {missing} input{} (first: {})",
            if *missing == 1 { "" } else { "s" },
            drv_name(first)
        ),
        WaitReason::NoBuilder { system, features } if features.is_empty() => {
            format!("no builder offers system {system}")
        }
        WaitReason::NoBuilder { system, features } => format!(
            "no builder offers system {system} with features {}",
            features.join(", ")
        ),
        WaitReason::QueuedBehind { ahead, queue } => {
            format!("queued behind {ahead} on {queue}")
        }
        WaitReason::DeadLettered { message } => {
            format!("set aside among the dead letters ({message}); 'kiln dlq replay' retries it")
        }
    }
}

fn render_status(s: &JobStatus) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let c = &s.counts;
    let _ = writeln!(
        o,
        "job {}: {} ({})",
        s.job_id,
        state_name(s.state),
        secs(s.elapsed_ms)
    );
    let _ = writeln!(o, "  {}", s.what);
    let _ = writeln!(
        o,
        "  {} derivations: {} built, {} cached, {} running, {} queued, {} waiting, {} failed, {} dependency failed, {} cancelled",
        c.total, c.built, c.cached, c.running, c.queued, c.waiting, c.failed, c.dependency_failed, c.cancelled
    );
    if let Some(e) = &s.eval_error {
        let _ = writeln!(o, "  evaluation: {}", e.lines().next().unwrap_or(""));
    }
    if !s.running.is_empty() {
        let _ = writeln!(o, "running:");
        for r in &s.running {
            let _ = writeln!(
                o,
                "  {} on {} for {}",
                drv_name(&r.drv_path),
                r.builder_id,
                secs(r.running_ms)
            );
        }
    }
    if !s.waiting.is_empty() {
        let _ = writeln!(o, "waiting:");
        for w in &s.waiting {
            let _ = writeln!(o, "  {}: {}", drv_name(&w.drv_path), reason_text(&w.why));
        }
    }
    for r in &s.roots {
        for p in r.outputs.values() {
            let _ = writeln!(o, "root {}: {p}", r.attr_path);
        }
    }
    o
}

/// `kiln jobs`.
#[derive(clap::Args, Debug)]
pub struct JobsArgs {
    /// Print JSON: one object per job.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    amqp: AmqpOpts,
}

pub fn run_jobs(args: JobsArgs) -> Result<ExitCode> {
    runtime()?.block_on(async move {
        let t = connect(&args.amqp).await?;
        let jobs = query(&t, None).await?;
        if args.json {
            // The per-derivation lists stay with `kiln status`.
            let rows: Vec<serde_json::Value> = jobs
                .iter()
                .map(|j| {
                    serde_json::json!({
                        "job_id": j.job_id,
                        "state": j.state,
                        "what": j.what,
                        "accepted_at_ms": j.accepted_at_ms,
                        "elapsed_ms": j.elapsed_ms,
                        "counts": j.counts,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string(&rows)?);
        } else {
            println!(
                "{:<36} {:<10} {:>8} {:>6} {:>6} {:>6} {:>7} {:>6}  WHAT",
                "JOB", "STATE", "TIME", "DRVS", "BUILT", "CACHED", "RUNNING", "FAILED"
            );
            for j in &jobs {
                let c = &j.counts;
                println!(
                    "{:<36} {:<10} {:>8} {:>6} {:>6} {:>6} {:>7} {:>6}  {}",
                    j.job_id,
                    state_name(j.state),
                    secs(j.elapsed_ms),
                    c.total,
                    c.built,
                    c.cached,
                    c.running,
                    c.failed + c.dependency_failed,
                    j.what
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `kiln cancel`.
#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// The job id `kiln submit` printed.
    job: JobId,
    /// Return at once instead of waiting for the job to end.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    amqp: AmqpOpts,
}

pub fn run_cancel(args: CancelArgs) -> Result<ExitCode> {
    runtime()?.block_on(async move {
        let t = connect(&args.amqp).await?;
        let status = one(&t, args.job).await?;
        if status.state.is_final() {
            eprintln!("job {} already {}", args.job, state_name(status.state));
            return Ok(ExitCode::SUCCESS);
        }
        t.publish(
            &Route::Jobs,
            &Envelope::new(Message::CancelJob { job_id: args.job }),
            0,
        )
        .await
        .context("sending the cancellation")?;
        if args.no_wait {
            eprintln!("job {}: cancellation sent", args.job);
            return Ok(ExitCode::SUCCESS);
        }
        // The coordinator stops the evaluation and the builds no other
        // job wants; the job ends once the builders confirm.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let s = one(&t, args.job).await?;
            if s.state.is_final() {
                eprintln!("job {} {}", args.job, state_name(s.state));
                return Ok(ExitCode::SUCCESS);
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "job {} is still {} a minute after its cancellation",
                    args.job,
                    state_name(s.state)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// `kiln logs`.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The job id `kiln submit` printed.
    job: JobId,
    /// Only this derivation (its path, its file name or its name).
    drv: Option<String>,
    /// Keep printing the lines of running builds until the job ends.
    #[arg(short, long)]
    follow: bool,
    /// The farm's store, where the logs of finished builds are kept
    /// (default: KILN_STORE_URL).
    #[arg(long, env = "KILN_STORE_URL")]
    store: Option<String>,
    #[command(flatten)]
    store_opts: StoreOpts,
    #[command(flatten)]
    amqp: AmqpOpts,
}

/// Whether `drv` is the derivation the user named.
fn names(drv: &str, wanted: &Option<String>) -> bool {
    let Some(w) = wanted else { return true };
    drv == w
        || drv.rsplit('/').next() == Some(w.as_str())
        || drv_name(drv) == w.trim_end_matches(".drv")
}

pub fn run_logs(args: LogsArgs) -> Result<ExitCode> {
    runtime()?.block_on(async move {
        let t = connect(&args.amqp).await?;
        // Subscribed first, so no line between the query and the stream
        // is lost.
        let mut events = if args.follow {
            Some(t.subscribe(&Route::JobEvents(args.job)).await?)
        } else {
            None
        };
        let status = one(&t, args.job).await?;
        let prefix = |drv: &str| {
            if args.drv.is_some() {
                String::new()
            } else {
                format!("{}> ", drv_name(drv))
            }
        };
        // Finished builds: their logs are in the store.
        let stored: Vec<_> = status
            .ended
            .iter()
            .filter(|d| d.log.is_some() && names(&d.drv_path, &args.drv))
            .collect();
        if !stored.is_empty() {
            let url = args.store.clone().context(
                "the logs of finished builds are in the farm's store: pass --store URL or set KILN_STORE_URL",
            )?;
            let cache = open_cache(&url, &args.store_opts, Default::default()).await?;
            for d in stored {
                let drv = kiln_nix::store_path::StorePath::from_absolute_path(&d.drv_path)
                    .with_context(|| format!("derivation '{}'", d.drv_path))?;
                match cache.get_log(&drv).await? {
                    Some(log) => {
                        for line in String::from_utf8_lossy(&log).lines() {
                            println!("{}{line}", prefix(&d.drv_path));
                        }
                    }
                    None => eprintln!("no stored log of {}", d.drv_path),
                }
            }
        }
        let running: Vec<_> = status
            .running
            .iter()
            .filter(|r| names(&r.drv_path, &args.drv))
            .collect();
        let Some(events) = events.as_mut() else {
            for r in running {
                eprintln!(
                    "{} is building on {}: 'kiln logs --follow' shows its lines as they come",
                    r.drv_path, r.builder_id
                );
            }
            return Ok(ExitCode::SUCCESS);
        };
        if status.state.is_final() {
            return Ok(ExitCode::SUCCESS);
        }
        loop {
            let Some(d) = events.next().await? else {
                bail!("the job's event stream closed")
            };
            let Message::JobEvent(ev) = d.envelope.body else {
                continue;
            };
            match ev.event {
                Event::Log { drv_path, line } if names(&drv_path, &args.drv) => {
                    println!("{}{}", prefix(&drv_path), crate::progress::sanitize(&line));
                }
                Event::JobFinished { .. } => return Ok(ExitCode::SUCCESS),
                _ => {}
            }
        }
    })
}
