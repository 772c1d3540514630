//! A minimal `nix-instantiate` over the library, for profiling the
//! evaluator without building the whole CLI:
//! `instantiate [--eval] [--strict] [--json] [-A ATTR]… [-E EXPR | FILE]`.

use kiln_evaluator::run::{eval_request, Request};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut req = Request {
        cwd: std::env::current_dir().unwrap_or_else(|_| "/".into()),
        nix_path: std::env::var("NIX_PATH").ok(),
        ..Default::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--eval" => req.eval = true,
            "--strict" => req.strict = true,
            "--json" => req.json = true,
            "-A" | "-E" => {
                let Some(v) = args.next() else {
                    eprintln!("error: {a} needs a value");
                    return ExitCode::FAILURE;
                };
                if a == "-A" {
                    req.attr_paths.push(v);
                } else {
                    req.expr = Some(v);
                }
            }
            _ => req.file = Some(a.into()),
        }
    }
    match kiln_evaluator::with_big_stack(move || eval_request(&req)) {
        Ok(Ok(out)) => {
            let _ = std::io::stdout().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Ok(Err(msg)) => {
            eprintln!("{}", msg.trim_end_matches('\n'));
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("error: the evaluator panicked");
            ExitCode::FAILURE
        }
    }
}
