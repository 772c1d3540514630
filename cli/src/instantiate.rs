//! `kiln instantiate`: evaluate Nix expressions like `nix-instantiate --eval`.

use anyhow::Context;
use kiln_evaluator::run::{eval_request, AutoArg, Request};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags compatible with `nix-instantiate`.
#[derive(clap::Args)]
pub struct Args {
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
    /// Evaluate and print the value.
    #[arg(long)]
    pub eval: bool,
    /// Evaluate the value completely.
    #[arg(long)]
    pub strict: bool,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print as XML.
    #[arg(long)]
    pub xml: bool,
    /// Only parse.
    #[arg(long)]
    pub parse: bool,
    /// Print the evaluation trace on errors.
    #[arg(long = "show-trace")]
    pub show_trace: bool,
    /// Accepted for compatibility (XML output never carries locations).
    #[arg(long = "no-location")]
    pub no_location: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut req = Request {
        file: args.file,
        expr: args.expr,
        attr_paths: args.attr,
        include: args.include,
        nix_path: std::env::var("NIX_PATH").ok(),
        eval: args.eval,
        strict: args.strict,
        json: args.json,
        xml: args.xml,
        parse_only: args.parse,
        show_trace: args.show_trace,
        cwd: std::env::current_dir().context("current directory")?,
        ..Default::default()
    };
    for pair in args.arg.chunks(2) {
        req.args
            .push((pair[0].clone(), AutoArg::Expr(pair[1].clone())));
    }
    for pair in args.argstr.chunks(2) {
        req.args
            .push((pair[0].clone(), AutoArg::Str(pair[1].clone())));
    }
    let result = kiln_evaluator::with_big_stack(move || eval_request(&req))
        .map_err(|_| anyhow::anyhow!("the evaluator panicked"))?;
    match result {
        Ok(out) => {
            std::io::stdout().write_all(out.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(msg) => {
            eprintln!("{}", msg.trim_end_matches('\n'));
            Ok(ExitCode::FAILURE)
        }
    }
}
