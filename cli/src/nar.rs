//! `kiln nar dump PATH` and `kiln nar restore DIR`: the equivalents of
//! `nix-store --dump` and `nix-store --restore`.

use anyhow::Context;
use kiln_nix::nar;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

/// `kiln nar …`
#[derive(clap::Subcommand)]
pub enum NarCommand {
    /// Write the NAR serialisation of PATH to standard output.
    Dump {
        /// File, directory or symlink to serialise (a symlink is not followed).
        path: PathBuf,
    },
    /// Read a NAR from standard input and unpack it at DIR, which must not
    /// exist yet (or be an empty directory). Nothing is left on error.
    Restore {
        /// Where to create the restored file, directory or symlink.
        dir: PathBuf,
    },
}

pub fn run(cmd: NarCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NarCommand::Dump { path } => {
            let mut out = nar::write_path(&path, raw_stdout()?)
                .with_context(|| format!("dumping '{}'", path.display()))?;
            out.flush().context("writing to standard output")?;
        }
        NarCommand::Restore { dir } => {
            let input = File::from(
                io::stdin()
                    .as_fd()
                    .try_clone_to_owned()
                    .context("opening standard input")?,
            );
            nar::unpack(input, &dir)
                .with_context(|| format!("restoring into '{}'", dir.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Standard output as an unbuffered file: the NAR writer does its own
/// buffering, and `Stdout`'s line buffering would scan binary data for
/// newlines.
pub fn raw_stdout() -> anyhow::Result<File> {
    let fd = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("opening standard output")?;
    Ok(File::from(fd))
}
