//! The Tvix evaluator's test suite (`../shared/peer-tests/tvix-eval`, 435
//! checks) through Kiln's evaluator, against what Nix 2.8 printed for each
//! case (`nix-2.8-results.json`), run exactly as the suite's README says.
//!
//! Every case must agree with Nix 2.8: the same standard output where Nix
//! succeeded, a failure (not a crash) where Nix failed. The cases where
//! Kiln knowingly differs are listed, with the reason, in
//! [`KNOWN_DIFFERENCES`] only; a listed case that starts agreeing fails the
//! test too, so the list stays true.

use kiln_evaluator::run::{eval_request, AutoArg, Request};
use std::path::{Path, PathBuf};

/// Checks in `nix-2.8-results.json` as shipped.
const CASES: usize = 435;

/// Cases where Kiln's result differs from Nix 2.8's, and why.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[];

fn suite_dir() -> Option<PathBuf> {
    let dir = kiln_tests::shared_dir().join("peer-tests/tvix-eval");
    let present = dir.join("nix-2.8-results.json").exists();
    kiln_tests::require_service(
        &format!("the Tvix test suite at {}", dir.display()),
        present,
    )
    .then_some(dir)
}

/// The case's `.flags`, as the README says: `import(nix_tests/lib.nix)` and
/// `lang/` name files of the suite.
fn apply_flags(req: &mut Request, flags: &str, dir: &Path) -> Result<(), String> {
    let fixed = flags
        .replace(
            "import(nix_tests/",
            &format!("import({}/nix_tests/", dir.display()),
        )
        .replace("lang/", &format!("{}/nix_tests/", dir.display()));
    let words: Vec<&str> = fixed.split_whitespace().collect();
    let mut i = 0;
    while i < words.len() {
        let value = |k: usize| {
            words
                .get(i + k)
                .map(|s| s.to_string())
                .ok_or_else(|| format!("flag without value in {flags:?}"))
        };
        match words[i] {
            "--arg" => {
                req.args.push((value(1)?, AutoArg::Expr(value(2)?)));
                i += 3;
            }
            "--argstr" => {
                req.args.push((value(1)?, AutoArg::Str(value(2)?)));
                i += 3;
            }
            "-A" => {
                req.attr_paths.push(value(1)?);
                i += 2;
            }
            "-I" => {
                req.include.push(value(1)?);
                i += 2;
            }
            other => return Err(format!("flag {other:?} is not supported")),
        }
    }
    Ok(())
}

/// Runs one case; `Ok(stdout)` or `Err(message)`.
fn run_case(dir: &Path, case: &serde_json::Value) -> Result<String, String> {
    let name = case["case"].as_str().expect("case");
    let args: Vec<&str> = case["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let mut req = Request {
        file: Some(dir.join(name)),
        eval: args.contains(&"--eval"),
        strict: args.contains(&"--strict"),
        xml: args.contains(&"--xml"),
        nix_path: name
            .starts_with("nix_tests/")
            .then(|| format!("{0}/nix_tests/dir3:{0}/nix_tests/dir4", dir.display())),
        cwd: dir.to_path_buf(),
        ..Default::default()
    };
    apply_flags(&mut req, case["flags"].as_str().unwrap_or(""), dir)?;
    kiln_evaluator::with_big_stack(move || eval_request(&req))
        .unwrap_or_else(|_| Err("PANIC in the evaluator".into()))
}

#[test]
fn tvix_suite_agrees_with_nix_2_8() {
    let Some(dir) = suite_dir() else { return };
    std::env::set_var("TEST_VAR", "foo");
    let text = std::fs::read_to_string(dir.join("nix-2.8-results.json")).expect("results");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).expect("results JSON");
    assert_eq!(cases.len(), CASES, "checks in nix-2.8-results.json");
    let mut differ = Vec::new();
    let mut stale = Vec::new();
    let mut agree = 0;
    for case in &cases {
        let name = case["case"].as_str().expect("case");
        let nix_ok = case["nix_exit"].as_i64() == Some(0);
        let want = case["nix_stdout"]
            .as_str()
            .unwrap_or("")
            .replace("@TESTS@", &dir.display().to_string());
        let got = run_case(&dir, case);
        let problem = match (&got, nix_ok) {
            (Ok(out), true) if out.trim_end() == want.trim_end() => None,
            (Ok(out), true) => Some(format!("prints {out:?}, Nix {want:?}")),
            (Err(e), true) => Some(format!("fails ({}), Nix prints {want:?}", first_line(e))),
            (Ok(out), false) => Some(format!("prints {out:?}, Nix fails")),
            (Err(e), false) if e.contains("PANIC") => Some("panics, Nix fails".into()),
            (Err(_), false) => None,
        };
        let known = KNOWN_DIFFERENCES.iter().any(|(k, _)| *k == name);
        match (problem, known) {
            (None, false) => agree += 1,
            (None, true) => stale.push(name.to_string()),
            (Some(p), false) => differ.push(format!("{name}: {p}")),
            (Some(_), true) => {}
        }
    }
    println!(
        "tvix suite: {agree}/{CASES} agree with Nix 2.8 ({} known differences)",
        KNOWN_DIFFERENCES.len()
    );
    assert!(
        stale.is_empty(),
        "now agree with Nix, remove from KNOWN_DIFFERENCES: {stale:?}"
    );
    assert!(
        differ.is_empty(),
        "{} cases differ from Nix 2.8:\n{}",
        differ.len(),
        differ.join("\n")
    );
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s)
}
