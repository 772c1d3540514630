//! The expression-selecting flags shared by `kiln instantiate` and
//! `kiln build` (those of `nix-instantiate` and `nix-build`).

use std::path::PathBuf;

/// What to evaluate.
#[derive(clap::Args, Debug, Clone)]
pub struct ExprArgs {
    /// File to evaluate (default: ./default.nix).
    pub file: Option<PathBuf>,
    /// Evaluate this expression instead of a file.
    #[arg(short = 'E', long = "expr")]
    pub expr: Option<String>,
    /// Select an attribute (repeatable).
    #[arg(short = 'A', long = "attr")]
    pub attr: Vec<String>,
    /// `--arg NAME EXPR`: automatic argument given as a Nix expression.
    #[arg(long = "arg", num_args = 2, value_names = ["NAME", "EXPR"])]
    pub arg: Vec<String>,
    /// `--argstr NAME STRING`: automatic argument given as a string.
    #[arg(long = "argstr", num_args = 2, value_names = ["NAME", "STRING"])]
    pub argstr: Vec<String>,
    /// Add `[NAME=]PATH` to the search path.
    #[arg(short = 'I')]
    pub include: Vec<String>,
}

impl ExprArgs {
    /// `--arg` pairs as (name, expression).
    pub fn exprs(&self) -> impl Iterator<Item = (&String, &String)> {
        self.arg.chunks(2).map(|p| (&p[0], &p[1]))
    }

    /// `--argstr` pairs as (name, string).
    pub fn strs(&self) -> impl Iterator<Item = (&String, &String)> {
        self.argstr.chunks(2).map(|p| (&p[0], &p[1]))
    }
}
