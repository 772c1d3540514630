//! Operators' commands on a running farm: `kiln queues`, `kiln builders`
//! and `kiln dlq`. Each prints a table, or with `--json` an array of
//! objects for scripts.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_protocol::amqp::{topology, AmqpTransport};
use kiln_protocol::{Message, Route, Transport};
use serde::Serialize;

use crate::farm::AmqpOpts;
use crate::store_cmds::runtime;

/// `kiln queues`.
#[derive(clap::Args, Debug)]
pub struct QueuesArgs {
    #[command(flatten)]
    amqp: AmqpOpts,
    /// Print JSON: objects with name, ready, unacked (when known),
    /// consumers, and the rates per second when the management API gives
    /// them.
    #[arg(long)]
    json: bool,
    /// RabbitMQ's management API (`http://user:pass@host:15672`): adds
    /// unacknowledged counts, rates and every per-job queue. Without it
    /// the counts come from passive declarations.
    #[arg(long, value_name = "URL", env = "KILN_MANAGEMENT_URL")]
    management: Option<String>,
    /// Redraw every SECS seconds until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<f64>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
struct QueueRow {
    name: String,
    ready: u32,
    unacked: Option<u32>,
    consumers: u32,
    /// Messages per second published, delivered and acknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    publish_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deliver_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ack_rate: Option<f64>,
}

/// The vhost an AMQP URL names (`/` when it names none).
fn vhost_of(amqp: &str) -> Result<String> {
    let url = reqwest::Url::parse(amqp)
        .with_context(|| format!("AMQP URL '{}'", kiln_protocol::amqp::redact(amqp)))?;
    let path = url.path().trim_start_matches('/');
    if path.is_empty() {
        return Ok("/".into());
    }
    Ok(percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned())
}

/// Every Kiln queue of the vhost, from the management API.
async fn management_rows(base: &str, vhost: &str) -> Result<Vec<QueueRow>> {
    let mut url = reqwest::Url::parse(base)
        .with_context(|| format!("management URL '{}'", kiln_protocol::amqp::redact(base)))?;
    let user = url.username().to_string();
    let pass = url.password().map(str::to_string);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.path_segments_mut()
        .map_err(|_| anyhow::anyhow!("management URL '{base}' cannot take a path"))?
        .pop_if_empty()
        .extend(["api", "queues", vhost]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut req = client.get(url.clone());
    if !user.is_empty() {
        req = req.basic_auth(&user, pass);
    }
    let resp = req.send().await.map_err(|e| {
        anyhow::Error::new(crate::exit::Unreachable(format!(
            "cannot reach the management API at {}: {e}",
            url
        )))
    })?;
    let status = resp.status();
    if !status.is_success() {
        anyhow::bail!("the management API at {url} answered {status}");
    }
    let queues: Vec<serde_json::Value> =
        resp.json().await.context("the management API's answer")?;
    let rate = |q: &serde_json::Value, k: &str| {
        q.get("message_stats")
            .and_then(|m| m.get(k))
            .and_then(|d| d.get("rate"))
            .and_then(serde_json::Value::as_f64)
            .or(Some(0.0))
    };
    let count = |q: &serde_json::Value, k: &str| {
        q.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0) as u32
    };
    let mut rows: Vec<QueueRow> = queues
        .iter()
        .filter_map(|q| {
            let name = q.get("name")?.as_str()?;
            name.starts_with("kiln.").then(|| QueueRow {
                name: name.to_string(),
                ready: count(q, "messages_ready"),
                unacked: Some(count(q, "messages_unacknowledged")),
                consumers: count(q, "consumers"),
                publish_rate: rate(q, "publish_details"),
                deliver_rate: rate(q, "deliver_get_details"),
                ack_rate: rate(q, "ack_details"),
            })
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

/// Kiln's queues with their counts, from passive declarations.
async fn declared_rows(t: &AmqpTransport) -> Result<Vec<QueueRow>> {
    let names = queue_names(t).await?;
    Ok(t.queue_stats(&names)
        .await?
        .into_iter()
        .map(|q| QueueRow {
            name: q.name,
            ready: q.ready,
            unacked: None,
            consumers: q.consumers,
            publish_rate: None,
            deliver_rate: None,
            ack_rate: None,
        })
        .collect())
}

fn print_queues(rows: &[QueueRow]) {
    let rates = rows.iter().any(|r| r.publish_rate.is_some());
    if rates {
        println!(
            "{:<48} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "QUEUE", "READY", "UNACKED", "CONSUMERS", "PUB/S", "DELIV/S", "ACK/S"
        );
    } else {
        println!(
            "{:<48} {:>8} {:>9} {:>9}",
            "QUEUE", "READY", "UNACKED", "CONSUMERS"
        );
    }
    let f = |r: Option<f64>| r.map_or("-".to_string(), |v| format!("{v:.1}"));
    for r in rows {
        let unacked = r.unacked.map_or("-".to_string(), |u| u.to_string());
        if rates {
            println!(
                "{:<48} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
                r.name,
                r.ready,
                unacked,
                r.consumers,
                f(r.publish_rate),
                f(r.deliver_rate),
                f(r.ack_rate)
            );
        } else {
            println!(
                "{:<48} {:>8} {:>9} {:>9}",
                r.name, r.ready, unacked, r.consumers
            );
        }
    }
}

/// The names of every Kiln queue the broker may hold: the fixed ones, the
/// dead letters, and the build queues the coordinator has published to.
async fn queue_names(t: &AmqpTransport) -> Result<Vec<String>> {
    let mut names: Vec<String> = topology::fixed_queues().iter().map(Route::name).collect();
    names.push(topology::DEAD_LETTER_QUEUE.to_string());
    if let Some(bytes) = t.load_state(topology::BUILD_QUEUES_RECORD).await? {
        let built: Vec<String> = serde_json::from_slice(&bytes).unwrap_or_default();
        names.extend(built);
    }
    names.sort();
    names.dedup();
    Ok(names)
}

pub fn run_queues(args: QueuesArgs) -> Result<ExitCode> {
    runtime()?.block_on(async move {
        let vhost = vhost_of(&args.amqp.amqp)?;
        let t = match &args.management {
            Some(_) => None,
            None => Some(args.amqp.connect_client().await?),
        };
        loop {
            let rows = match (&args.management, &t) {
                (Some(base), _) => management_rows(base, &vhost).await?,
                (None, Some(t)) => declared_rows(t).await?,
                (None, None) => unreachable!("connected above"),
            };
            if args.watch.is_some() && !args.json {
                // Clear the screen and home the cursor.
                print!("\x1b[2J\x1b[H");
            }
            if args.json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                print_queues(&rows);
            }
            let Some(every) = args.watch else { break };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(every.clamp(0.2, 3600.0))) => {}
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        if let Some(t) = t {
            t.close().await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `kiln builders`.
#[derive(clap::Args, Debug)]
pub struct BuildersArgs {
    #[command(flatten)]
    amqp: AmqpOpts,
    /// Print JSON: one object per live builder.
    #[arg(long)]
    json: bool,
    /// Seconds to listen for heartbeats (longer than the builders'
    /// heartbeat interval).
    #[arg(long, default_value_t = 6.0)]
    listen: f64,
}

#[derive(Serialize)]
struct BuilderRow {
    builder_id: String,
    host: String,
    systems: Vec<String>,
    features: Vec<String>,
    slots: u32,
    running: u32,
    running_builds: Vec<String>,
    load: f64,
    last_seen_secs: f64,
    stopping: bool,
}

pub fn run_builders(args: BuildersArgs) -> Result<ExitCode> {
    runtime()?.block_on(async move {
        let t = args.amqp.connect_client().await?;
        let mut sub = t.subscribe(&Route::Heartbeats).await?;
        let start = std::time::Instant::now();
        let mut seen: BTreeMap<String, (kiln_protocol::Heartbeat, std::time::Instant)> =
            BTreeMap::new();
        let listen = Duration::from_secs_f64(args.listen.clamp(0.1, 600.0));
        while let Some(left) = listen.checked_sub(start.elapsed()) {
            let Ok(next) = tokio::time::timeout(left, sub.next()).await else {
                break;
            };
            let Some(d) = next? else { break };
            if let Message::Heartbeat(hb) = d.envelope.body {
                seen.insert(hb.builder_id.clone(), (hb, std::time::Instant::now()));
            }
        }
        drop(sub);
        t.close().await;
        let rows: Vec<BuilderRow> = seen
            .into_values()
            .filter(|(hb, _)| !(hb.stopping && hb.running_builds.is_empty()))
            .map(|(hb, at)| BuilderRow {
                builder_id: hb.builder_id,
                host: hb.host,
                systems: hb.systems,
                features: hb.features,
                slots: hb.max_jobs,
                running: hb.running,
                running_builds: hb.running_builds.into_iter().map(|r| r.drv_path).collect(),
                load: hb.load,
                last_seen_secs: at.elapsed().as_secs_f64(),
                stopping: hb.stopping,
            })
            .collect();
        if args.json {
            println!("{}", serde_json::to_string(&rows)?);
        } else {
            println!(
                "{:<24} {:<16} {:<22} {:>5} {:>7} {:>6} {:>9}",
                "BUILDER", "HOST", "SYSTEMS", "SLOTS", "RUNNING", "LOAD", "SEEN"
            );
            for r in rows {
                println!(
                    "{:<24} {:<16} {:<22} {:>5} {:>7} {:>6.2} {:>8.1}s",
                    r.builder_id,
                    r.host,
                    r.systems.join(","),
                    r.slots,
                    r.running,
                    r.load,
                    r.last_seen_secs
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `kiln dlq`.
#[derive(clap::Args, Debug)]
pub struct DlqArgs {
    #[command(flatten)]
    amqp: AmqpOpts,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters with their reason, origin queue and age.
    List {
        /// Print JSON: one object per letter.
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Show one dead letter (by id or index) in full.
    Show { id: String },
    /// Put dead letters (by id or index; all without any) back on their queue.
    Replay { ids: Vec<String> },
    /// Drop every dead letter.
    Purge,
}

pub fn run_dlq(args: DlqArgs) -> Result<ExitCode> {
    runtime()?.block_on(async move {
        let t = args.amqp.connect_client().await?;
        let code = match args.command {
            DlqCommand::List { json, limit } => {
                let letters = t.dead_letters(limit).await?;
                if json {
                    println!("{}", serde_json::to_string(&letters)?);
                } else {
                    println!(
                        "{:>5} {:<24} {:>8} {:<36} REASON",
                        "INDEX", "ORIGIN", "AGE", "ID"
                    );
                    for l in &letters {
                        let age = l.age_secs.map_or("-".to_string(), |a| format!("{a}s"));
                        println!(
                            "{:>5} {:<24} {:>8} {:<36} {}",
                            l.index, l.origin, age, l.id, l.reason
                        );
                    }
                }
                ExitCode::SUCCESS
            }
            DlqCommand::Show { id } => {
                let letters = t.dead_letters(usize::MAX).await?;
                let l = letters
                    .iter()
                    .find(|l| l.id == id || l.index.to_string() == id)
                    .with_context(|| format!("no dead letter '{id}'"))?;
                println!("{}", serde_json::to_string_pretty(l)?);
                match kiln_protocol::decode(&l.bytes) {
                    Ok(env) => println!("{}", serde_json::to_string_pretty(&env.body)?),
                    Err(e) => println!("(cannot be decoded: {e})"),
                }
                ExitCode::SUCCESS
            }
            DlqCommand::Replay { ids } => {
                let replayed = t.replay_dead_letters(&ids).await?;
                for l in &replayed {
                    eprintln!("replayed {} onto {}", l.id, l.origin);
                }
                if replayed.is_empty() {
                    eprintln!("nothing to replay");
                }
                ExitCode::SUCCESS
            }
            DlqCommand::Purge => {
                let n = t.purge_dead_letters().await?;
                eprintln!("purged {n} dead letters");
                ExitCode::SUCCESS
            }
        };
        t.close().await;
        Ok(code)
    })
}
