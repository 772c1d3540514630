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
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[(
    "nix_tests/notyetpassing/eval-okay-replacestrings.nix",
    "Nix 2.8 forces every replacement string of `replaceStrings` and stops \
     with `error: unreachable` here; Kiln does the same (issue 15 asks for \
     Nix 2.8's strictness), while the results file records the case's .exp \
     (a later Nix's lazier result) for this one case",
)];

/// Files of the suite that are symbolic links upstream (`tvlfyi/tvix`,
/// `eval/src/tests/`) and were turned into files holding the link's
/// target when `../shared` was copied; Nix 2.8 ran the suite with the links
/// (`readDir` says `symlink`, and importing the link is importing its
/// target). The run restores them, in a copy of the suite, when the file
/// holds exactly that target.
const LOST_SYMLINKS: &[(&str, &str)] = &[
    (
        "tvix_tests/observable-eval-cache2.nix",
        "observable-eval-cache1.nix",
    ),
    ("nix_tests/readDir/ldir", "foo"),
    ("nix_tests/readDir/linked", "foo/git-hates-directories"),
];

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating the copy");
    for entry in std::fs::read_dir(from).expect("reading the suite") {
        let entry = entry.expect("directory entry");
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let ty = entry.file_type().expect("file type");
        if ty.is_dir() {
            copy_tree(&src, &dst);
        } else if ty.is_symlink() {
            let target = std::fs::read_link(&src).expect("link");
            std::os::unix::fs::symlink(target, &dst).expect("copying a link");
        } else {
            std::fs::copy(&src, &dst).expect("copying a file");
        }
    }
}

/// A copy of the suite with [`LOST_SYMLINKS`] restored.
fn suite_copy(dir: &Path) -> PathBuf {
    let copy = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tvix-eval-{}", std::process::id()));
    if copy.exists() {
        std::fs::remove_dir_all(&copy).expect("removing an old copy");
    }
    for sub in ["nix_tests", "tvix_tests"] {
        copy_tree(&dir.join(sub), &copy.join(sub));
    }
    for (file, target) in LOST_SYMLINKS {
        let path = copy.join(file);
        let meta = std::fs::symlink_metadata(&path).expect("a lost link's file");
        if meta.file_type().is_symlink() {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a lost link's file");
        assert_eq!(
            text.trim_end(),
            *target,
            "{file} is not the lost link it was"
        );
        std::fs::remove_file(&path).expect("removing the stand-in");
        std::os::unix::fs::symlink(target, &path).expect("restoring the link");
    }
    copy
}

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
            // Nix 2.8 does not know the feature named (it warns and goes on).
            "--extra-experimental-features" => {
                value(1)?;
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
    let Some(shared) = suite_dir() else { return };
    std::env::set_var("TEST_VAR", "foo");
    let text = std::fs::read_to_string(shared.join("nix-2.8-results.json")).expect("results");
    let dir = suite_copy(&shared);
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
    std::fs::remove_dir_all(&dir).ok();
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
