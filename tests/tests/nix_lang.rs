//! Runs Nix 2.8's language test suite (`../shared/nix-lang-tests/`) through
//! Kiln's evaluator in process, as Nix's `tests/lang.sh` does with
//! `nix-instantiate`.

use kiln_evaluator::run::{eval_request, AutoArg, Request};
use std::path::{Path, PathBuf};

/// Cases that must pass (raised as the evaluator improves; never above the real count).
const MIN_EVAL_OKAY: usize = 95;
const MIN_EVAL_FAIL: usize = 17;

#[derive(Debug)]
enum Outcome {
    Pass,
    Fail(String),
}

fn lang_dir() -> PathBuf {
    kiln_tests::shared_dir().join("nix-lang-tests")
}

/// Turn a `.flags` file into request fields (paths written as `lang/...`).
fn apply_flags(req: &mut Request, flags: &str, dir: &Path) -> Result<(), String> {
    let fixed = flags.replace("lang/", &format!("{}/", dir.display()));
    let words: Vec<&str> = fixed.split_whitespace().collect();
    let mut i = 0;
    let next = |i: &mut usize| -> Result<String, String> {
        *i += 1;
        words
            .get(*i)
            .map(|s| s.to_string())
            .ok_or_else(|| format!("flag without value in '{flags}'"))
    };
    while i < words.len() {
        match words[i] {
            "--arg" => {
                let n = next(&mut i)?;
                let v = next(&mut i)?;
                req.args.push((n, AutoArg::Expr(v)));
            }
            "--argstr" => {
                let n = next(&mut i)?;
                let v = next(&mut i)?;
                req.args.push((n, AutoArg::Str(v)));
            }
            "-A" => {
                let v = next(&mut i)?;
                req.attr_paths.push(v);
            }
            "-I" => {
                let v = next(&mut i)?;
                req.include.push(v);
            }
            other => return Err(format!("unknown flag '{other}'")),
        }
        i += 1;
    }
    Ok(())
}

fn base_request(dir: &Path, file: &Path) -> Request {
    Request {
        file: Some(file.to_path_buf()),
        nix_path: Some(format!("{0}/dir3:{0}/dir4", dir.display())),
        eval: true,
        cwd: dir.parent().map(Path::to_path_buf).unwrap_or_default(),
        ..Default::default()
    }
}

/// Run one request on a big-stack thread; a panic is reported as a failure.
fn run(req: Request) -> Result<Result<String, String>, String> {
    kiln_evaluator::with_big_stack(move || eval_request(&req)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        format!("PANIC: {}", msg.unwrap_or_default())
    })
}

fn eval_okay(dir: &Path, nix: &Path) -> Option<Outcome> {
    let exp = nix.with_extension("exp");
    let exp_xml = nix.with_extension("exp.xml");
    let (expected, xml) = if exp.exists() {
        (std::fs::read_to_string(&exp).ok()?, false)
    } else if exp_xml.exists() {
        (std::fs::read_to_string(&exp_xml).ok()?, true)
    } else {
        return None;
    };
    let mut req = base_request(dir, nix);
    req.strict = true;
    req.xml = xml;
    let flags = nix.with_extension("flags");
    if flags.exists() {
        let f = std::fs::read_to_string(&flags).ok()?;
        if let Err(e) = apply_flags(&mut req, &f, dir) {
            return Some(Outcome::Fail(e));
        }
    }
    Some(match run(req) {
        Err(p) => Outcome::Fail(p),
        Ok(Err(e)) => Outcome::Fail(e),
        Ok(Ok(out)) if out == expected => Outcome::Pass,
        Ok(Ok(out)) => Outcome::Fail(format!(
            "output differs:\n  got:      {out:?}\n  expected: {expected:?}"
        )),
    })
}

#[test]
fn nix_language_suite() {
    std::env::set_var("TEST_VAR", "foo");
    let dir = lang_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("nix-lang-tests directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".nix"))
        .collect();
    names.sort();
    let (mut okay, mut okay_total, mut fail, mut fail_total) = (0, 0, 0, 0);
    let (mut parse_ok, mut parse_total) = (0, 0);
    let (mut exp_ok, mut exp_total) = (0usize, 0usize);
    let mut failures = Vec::new();
    for name in &names {
        let path = dir.join(name);
        if name.starts_with("eval-okay-") {
            let Some(outcome) = eval_okay(&dir, &path) else {
                continue;
            };
            okay_total += 1;
            let plain_exp = path.with_extension("exp").exists();
            exp_total += usize::from(plain_exp);
            match outcome {
                Outcome::Pass => {
                    okay += 1;
                    exp_ok += usize::from(plain_exp);
                }
                Outcome::Fail(why) => failures.push(format!("{name}: {why}")),
            }
        } else if name.starts_with("eval-fail-") {
            fail_total += 1;
            match run(base_request(&dir, &path)) {
                Ok(Err(_)) => fail += 1,
                Ok(Ok(out)) => failures.push(format!("{name}: evaluated to {out:?}")),
                Err(p) => failures.push(format!("{name}: {p}")),
            }
        } else if name.starts_with("parse-okay-") || name.starts_with("parse-fail-") {
            parse_total += 1;
            let mut req = base_request(&dir, &path);
            req.parse_only = true;
            let want_ok = name.starts_with("parse-okay-");
            match run(req) {
                Ok(r) if r.is_ok() == want_ok => parse_ok += 1,
                Ok(r) => failures.push(format!("{name}: parse result {r:?}")),
                Err(p) => failures.push(format!("{name}: {p}")),
            }
        }
    }
    for f in &failures {
        println!("FAIL {f}");
    }
    println!("eval-okay with .exp: {exp_ok}/{exp_total}");
    println!("eval-okay: {okay}/{okay_total}  eval-fail: {fail}/{fail_total}  parse: {parse_ok}/{parse_total}");
    assert!(
        okay >= MIN_EVAL_OKAY,
        "eval-okay passes {okay} < {MIN_EVAL_OKAY}"
    );
    assert!(
        fail >= MIN_EVAL_FAIL,
        "eval-fail passes {fail} < {MIN_EVAL_FAIL}"
    );
    assert_eq!(parse_ok, parse_total, "every parse case");
}
