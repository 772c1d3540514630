//! `kiln hash path|file` (being written).
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum HashCommand {}

pub fn run(cmd: HashCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
