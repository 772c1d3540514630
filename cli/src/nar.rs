//! `kiln nar dump|restore` (being written).
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum NarCommand {}

pub fn run(cmd: NarCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
