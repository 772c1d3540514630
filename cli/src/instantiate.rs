//! `kiln instantiate`: evaluate Nix expressions like `nix-instantiate --eval`.

use anyhow::Context;
use kiln_evaluator::run::{eval_request, AutoArg, Request};
use std::io::Write;
use std::process::ExitCode;

/// Flags compatible with `nix-instantiate`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub expr: crate::expr_args::ExprArgs,
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
    /// Directory standing in for `/nix/store` where `.drv` files and
    /// sources are written (default `~/.cache/kiln/drvs`); `--eval` and
    /// `--parse` write nothing.
    #[arg(long = "store-dir", value_name = "DIR")]
    pub store_dir: Option<std::path::PathBuf>,
    /// The value of `builtins.currentSystem` (default: this machine's, as
    /// Nix's `system` setting).
    #[arg(long, value_name = "SYSTEM")]
    pub system: Option<String>,
    /// Accepted for compatibility (XML output never carries locations).
    #[arg(long = "no-location")]
    pub no_location: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // `-` reads the expression from standard input, as `nix-instantiate -`.
    let from_stdin = args.expr.file.as_deref() == Some(std::path::Path::new("-"));
    let stdin = if from_stdin && args.expr.expr.is_none() {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading the expression from standard input")?;
        Some(text)
    } else {
        None
    };
    let mut req = Request {
        stdin,
        file: args.expr.file.clone(),
        expr: args.expr.expr.clone(),
        attr_paths: args.expr.attr.clone(),
        include: args.expr.include.clone(),
        nix_path: std::env::var("NIX_PATH").ok(),
        eval: args.eval,
        strict: args.strict,
        json: args.json,
        xml: args.xml,
        parse_only: args.parse,
        show_trace: args.show_trace,
        cwd: std::env::current_dir().context("current directory")?,
        system: args.system.clone(),
        // A switch for measuring what parsing ahead gains.
        parse_ahead: Some(std::env::var_os("KILN_EVAL_PARSE_AHEAD").is_none_or(|v| v != "0")),
        ..Default::default()
    };
    if !args.eval && !args.parse {
        req.store_dir = Some(match args.store_dir {
            Some(d) => d,
            None => crate::build::kiln_home()?.join("drvs"),
        });
    }
    for (name, e) in args.expr.exprs() {
        req.args.push((name.clone(), AutoArg::Expr(e.clone())));
    }
    for (name, s) in args.expr.strs() {
        req.args.push((name.clone(), AutoArg::Str(s.clone())));
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
