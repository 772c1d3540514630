//! `kiln`: one binary for every Kiln user command and service.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod build;
mod exit;
mod expr_args;
mod farm;
mod hash;
mod instantiate;
mod jobs;
mod junit;
mod nar;
mod ops;
mod progress;
mod services;
mod state;
mod store_cmds;
mod submit;

// The evaluator allocates many small, short-lived values; mimalloc handles
// that pattern far better than glibc's allocator. Built without its
// transparent-huge-page advice (`no_thp`): an evaluation touches most of
// its heap once, and faulting it in 2 MiB at a time (with the compaction
// the kernel does for advised regions) cost more system time than the
// TLB saved, and left a larger resident set. Nothing process-wide is
// changed, so build processes still get the system's THP setting.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "kiln", version, about = "A build farm for Nix derivations")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Evaluate, schedule and build derivations in one process, like `nix-build`.
    Build(build::Args),
    /// Serialise or restore Nix archives (NAR).
    #[command(subcommand)]
    Nar(nar::NarCommand),
    /// Compute the hash of a file or of a path's NAR serialisation.
    #[command(subcommand)]
    Hash(hash::HashCommand),
    /// Evaluate Nix expressions and instantiate derivations, like `nix-instantiate`.
    Instantiate(instantiate::Args),
    /// Copy store paths (closures by default) between binary caches.
    Copy(store_cmds::CopyArgs),
    /// Show what a binary cache knows about store paths.
    PathInfo(store_cmds::PathInfoArgs),
    /// Serve a store over HTTP as a Nix binary cache.
    StoreGateway(store_cmds::GatewayArgs),
    /// Print a build's log from the store.
    Log(store_cmds::LogArgs),
    /// Submit a job to the farm (RabbitMQ); with --wait, follow it like `kiln build`.
    Submit(submit::SubmitArgs),
    /// Run the farm's coordinator (one leads; others stand by).
    Coordinator(services::CoordinatorArgs),
    /// Run an evaluator worker of the farm.
    Evaluator(services::EvaluatorArgs),
    /// Run a builder worker of the farm.
    Builder(services::BuilderArgs),
    /// Show the farm's queues: ready, unacknowledged and consumers.
    Queues(ops::QueuesArgs),
    /// Show the farm's live builders, from their heartbeats.
    Builders(ops::BuildersArgs),
    /// List, show, replay or purge dead letters.
    Dlq(ops::DlqArgs),
    /// Show how a farm job stands: counts, running builds, and why each
    /// waiting derivation waits.
    Status(jobs::StatusArgs),
    /// List the farm's running and recent jobs.
    Jobs(jobs::JobsArgs),
    /// Cancel a farm job: its evaluation and the builds no other job wants.
    Cancel(jobs::CancelArgs),
    /// Print a farm job's build logs (stored, and live with --follow).
    Logs(jobs::LogsArgs),
}

impl Command {
    /// Services configure their own logging (level and format).
    fn is_service(&self) -> bool {
        matches!(
            self,
            Command::Coordinator(_) | Command::Evaluator(_) | Command::Builder(_)
        )
    }
}

/// Diagnostics of every role on standard error, as `KILN_LOG` selects
/// (`KILN_LOG=debug`, `KILN_LOG=kiln_builder=debug,warn`: the syntax of
/// tracing's `EnvFilter`). Nothing is logged when it is unset, so command
/// output stays as documented.
fn init_logging() {
    let Ok(spec) = std::env::var("KILN_LOG") else {
        return;
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&spec) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kiln: ignoring KILN_LOG={spec:?}: {e}");
            return;
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .try_init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    if !cli.command.is_service() {
        init_logging();
    }
    let result = match cli.command {
        Command::Build(a) => build::run(a),
        Command::Nar(c) => nar::run(c),
        Command::Hash(c) => hash::run(c),
        Command::Instantiate(a) => instantiate::run(a),
        Command::Copy(a) => store_cmds::run_copy(a),
        Command::PathInfo(a) => store_cmds::run_path_info(a),
        Command::StoreGateway(a) => store_cmds::run_gateway(a),
        Command::Log(a) => store_cmds::run_log(a),
        Command::Submit(a) => submit::run(a),
        Command::Coordinator(a) => services::run_coordinator(a),
        Command::Evaluator(a) => services::run_evaluator(a),
        Command::Builder(a) => services::run_builder(a),
        Command::Queues(a) => ops::run_queues(a),
        Command::Builders(a) => ops::run_builders(a),
        Command::Dlq(a) => ops::run_dlq(a),
        Command::Status(a) => jobs::run_status(a),
        Command::Jobs(a) => jobs::run_jobs(a),
        Command::Cancel(a) => jobs::run_cancel(a),
        Command::Logs(a) => jobs::run_logs(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            if exit::is_unreachable(&err) {
                ExitCode::from(exit::UNREACHABLE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Help and version go out as clap prints them; a usage error is one line
/// naming the cause (clap's own first line) and exits with 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    // clap's message is the paragraph before "Usage:"; fold it to one line.
    let text = e.render().to_string();
    let message: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    let line = if message.is_empty() {
        "error: invalid arguments".to_string()
    } else {
        message.join(" ")
    };
    eprintln!("{line} (see 'kiln --help')");
    ExitCode::from(2)
}

/// A closed stdout (`kiln nar dump x | head`) is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
