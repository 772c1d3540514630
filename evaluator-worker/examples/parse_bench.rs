//! Times reading, tokenizing, parsing (rnix) and parsing plus lowering of
//! every `.nix` file under a directory, each step on its own:
//! `cargo run --release -p kiln-evaluator --example parse_bench DIR`.
//! It runs with the system allocator (the `kiln` binary uses mimalloc) and
//! with parsing ahead as `KILN_EVAL_PARSE_AHEAD` says; set it to 0 to time
//! lowering with parsing on one thread.
use std::time::Instant;

fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "nix") {
            out.push(p);
        }
    }
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: parse_bench DIR");
    let mut paths = Vec::new();
    files(std::path::Path::new(&dir), &mut paths);
    paths.sort();
    let t = Instant::now();
    let texts: Vec<String> = paths
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let read = t.elapsed();
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    let t = Instant::now();
    let mut n = 0usize;
    for text in &texts {
        let parse = rnix::Root::parse(text);
        n += parse.errors().len();
    }
    let parse = t.elapsed();
    let t = Instant::now();
    for text in &texts {
        n += rnix::tokenize(text).count();
    }
    let lex = t.elapsed();
    let ev = kiln_evaluator::Evaluator::new(kiln_evaluator::Options {
        parse_ahead: Some(std::env::var_os("KILN_EVAL_PARSE_AHEAD").is_none_or(|v| v != "0")),
        ..Default::default()
    });
    let t = Instant::now();
    for p in &paths {
        ev.parse_file(p).unwrap();
    }
    let all = t.elapsed();
    println!(
        "{} files, {} KiB: read {:?}, tokenize {:?}, rnix parse {:?}, parse+lower {:?} ({n})",
        paths.len(),
        bytes / 1024,
        read,
        lex,
        parse,
        all
    );
}
