//! Instantiation conformance against Nix 2.8.0, through Kiln's evaluator:
//!
//! - every `kind: "derivation"` case of `conformance/eval/*.expected.json`
//!   gets Nix's `drvPath`, output paths and `.drv` bytes, and every
//!   `kind: "value"` case the same `--eval --strict --json` value;
//! - every case of `conformance/build/*.nix` (except `ifd.nix`, which needs a
//!   build during evaluation) instantiates, with `--arg busybox <dir>`, to
//!   Nix's `drvPath`, output paths and `.drv` bytes.
//!
//! Derivations are written into a [`DirStore`] in a temporary directory and
//! read back from there, so the `.drv` bytes compared are the ones written.

use kiln_evaluator::pos::Pos;
use kiln_evaluator::store::{DirStore, Store};
use kiln_evaluator::value::{Attr, Attrs};
use kiln_evaluator::{with_big_stack, Evaluator, Options, Value};
use kiln_nix::hash::{Hash, HashAlgo};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Cases in the corpus: 27 derivations and 3 values under `eval/`, and 22
/// derivations under `build/` once `ifd.nix` is left out.
const EVAL_CASES: usize = 30;
const BUILD_CASES: usize = 22;

const NO_POS: Pos = Pos::START;

/// The `NAME.nix` files of `dir` that have a `NAME.expected.json`.
fn case_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "nix"))
        .filter(|p| p.with_extension("expected.json").exists())
        .collect();
    files.sort();
    files
}

fn load_expected(nix: &Path) -> serde_json::Value {
    let file = nix.with_extension("expected.json");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()))
}

/// An evaluator writing into a fresh [`DirStore`] under `tmp`.
fn evaluator(tmp: &Path) -> (Evaluator, Rc<DirStore>) {
    let store = Rc::new(DirStore::new(tmp.join("store")).expect("store directory"));
    let evr = Evaluator::new(Options {
        store: Some(store.clone()),
        ..Default::default()
    });
    (evr, store)
}

fn string_of(evr: &Evaluator, v: &Value) -> Result<String, String> {
    evr.ev
        .expect_string(v, NO_POS)
        .map(|s| s.s.clone())
        .map_err(|e| evr.format_error(&e, false))
}

/// Checks one case (`name`, an attribute of `root`) against `want`.
fn check_case(
    evr: &Evaluator,
    store: &DirStore,
    root: &Value,
    args: &Attrs,
    name: &str,
    want: &serde_json::Value,
) -> Result<(), String> {
    let fmt = |e: kiln_evaluator::Error| evr.format_error(&e, false);
    let v = evr.select_attr_path(root, name, args).map_err(fmt)?;
    if want["kind"] == "value" {
        evr.force_deep(&v).map_err(fmt)?;
        let got: serde_json::Value =
            serde_json::from_str(&evr.print_json(&v).map_err(fmt)?).map_err(|e| e.to_string())?;
        if got != want["value"] {
            return Err(format!("value {got} != {}", want["value"]));
        }
        return Ok(());
    }
    let Value::Attrs(a) = v else {
        return Err(format!("not a derivation: {}", v.type_desc()));
    };
    let get = |k: &str| a.get(k).ok_or(format!("no attribute '{k}'"));
    let drv = string_of(evr, get("drvPath")?)?;
    let want_drv = want["drvPath"].as_str().ok_or("no expected drvPath")?;
    let sp = kiln_nix::store_path::StorePath::from_absolute_path(&drv)
        .map_err(|e| format!("drvPath '{drv}': {e}"))?;
    let written = store
        .real_path(&sp)
        .ok_or("the store has no location for it")?;
    let aterm = std::fs::read_to_string(&written)
        .map_err(|e| format!("reading the written {}: {e}", written.display()))?;
    let want_aterm = want["aterm"].as_str().ok_or("no expected aterm")?;
    if drv != want_drv {
        return Err(format!(
            "drvPath {drv} != {want_drv}\n  got aterm:  {aterm}\n  want aterm: {want_aterm}"
        ));
    }
    let outs = want["outputs"].as_object().ok_or("no expected outputs")?;
    for (o, p) in outs {
        let out = evr.ev.expect_attrs(get(o)?, NO_POS).map_err(fmt)?;
        let got = string_of(evr, out.get("outPath").ok_or("no outPath")?)?;
        if got != p.as_str().unwrap_or_default() {
            return Err(format!("output {o}: {got} != {p}"));
        }
    }
    if aterm != want_aterm {
        return Err(format!(
            "aterm differs:\n  got:  {aterm}\n  want: {want_aterm}"
        ));
    }
    Ok(())
}

/// Evaluates `nix` (called with `args`, `--arg NAME EXPR` pairs, when it
/// is a function) and checks every case of its expected file; returns
/// (cases checked, failures).
fn check_file(nix: &Path, args: &[(&str, String)], tmp: &Path) -> (usize, Vec<String>) {
    let expected = load_expected(nix);
    let cases = expected["cases"].as_object().cloned().unwrap_or_default();
    let (evr, store) = evaluator(tmp);
    let label = nix.file_name().unwrap_or_default().to_string_lossy();
    let mut entries = Vec::new();
    for (name, expr) in args {
        match evr.eval_string(expr, Path::new("/")) {
            Ok(value) => entries.push(Attr {
                name: (*name).into(),
                value,
                pos: None,
            }),
            Err(e) => {
                let e = evr.format_error(&e, false);
                return (cases.len(), vec![format!("{label}: --arg {name}: {e}")]);
            }
        }
    }
    let args = Attrs::from_unsorted(entries);
    let root = match evr.eval_file(nix) {
        Ok(v) => v,
        Err(e) => {
            return (
                cases.len(),
                vec![format!("{label}: {}", evr.format_error(&e, false))],
            )
        }
    };
    let mut fails = Vec::new();
    for (name, want) in &cases {
        if let Err(e) = check_case(&evr, &store, &root, &args, name, want) {
            fails.push(format!("{label}#{name}: {e}"));
        }
    }
    (cases.len(), fails)
}

/// Copies `eval/paths.nix` (with its expected file) and `eval/src/` to `dest`, turning `src/link`
/// (a regular file holding the target in checkouts that lost the symlink)
/// back into a symlink. Permissions of files are kept (`run.sh` is
/// executable); directories are made writable so the copy can be removed.
fn stage_paths_case(eval_dir: &Path, dest: &Path) -> PathBuf {
    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("create directory");
        let mut entries: Vec<_> = std::fs::read_dir(from)
            .expect("read eval/src")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let target = to.join(p.file_name().expect("file name"));
            let meta = p.symlink_metadata().expect("stat");
            if meta.file_type().is_symlink() {
                symlink(std::fs::read_link(&p).expect("readlink"), &target).expect("symlink");
            } else if meta.is_dir() {
                copy_tree(&p, &target);
            } else {
                std::fs::copy(&p, &target).expect("copy");
            }
        }
    }
    let src = dest.join("src");
    copy_tree(&eval_dir.join("src"), &src);
    let link = src.join("link");
    if !link
        .symlink_metadata()
        .expect("src/link")
        .file_type()
        .is_symlink()
    {
        let target = std::fs::read_to_string(&link).expect("src/link contents");
        std::fs::remove_file(&link).expect("remove src/link");
        symlink(target.trim_end_matches('\n'), &link).expect("recreate src/link");
    }
    let nix = dest.join("paths.nix");
    std::fs::copy(eval_dir.join("paths.nix"), &nix).expect("copy paths.nix");
    std::fs::copy(
        eval_dir.join("paths.expected.json"),
        nix.with_extension("expected.json"),
    )
    .expect("copy paths.expected.json");
    nix
}

fn report(what: &str, checked: usize, fails: &[String], want: usize) {
    for f in fails {
        println!("FAIL {f}");
    }
    println!("{what}: {checked} cases checked, {} failed", fails.len());
    assert!(
        fails.is_empty(),
        "{} {what} cases differ from Nix",
        fails.len()
    );
    assert_eq!(checked, want, "number of {what} cases checked");
}

#[test]
fn eval_corpus_instantiates_like_nix() {
    let eval_dir = kiln_tests::shared_dir().join("conformance/eval");
    let (checked, fails) = with_big_stack(move || {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut checked = 0;
        let mut fails = Vec::new();
        for (i, file) in case_files(&eval_dir).into_iter().enumerate() {
            let work = tmp.path().join(i.to_string());
            let file = if file.ends_with("paths.nix") {
                stage_paths_case(&eval_dir, &work.join("case"))
            } else {
                file
            };
            let (n, mut f) = check_file(&file, &[], &work);
            println!("{}: {n} cases", file.display());
            checked += n;
            fails.append(&mut f);
        }
        (checked, fails)
    })
    .expect("no panic");
    report("conformance/eval", checked, &fails, EVAL_CASES);
}

/// The `busybox` argument: a temporary directory named `busybox` holding
/// `bin/busybox` copied from the host, or `None` (after saying why) when
/// the host has none or a different one, which the build corpus was not
/// recorded with. Under `CI=true` both are failures.
fn stage_busybox(tmp: &Path, want_sha256: &str) -> Option<PathBuf> {
    let host = Path::new("/bin/busybox");
    let bytes = match std::fs::read(host) {
        Ok(b) => b,
        Err(e) => {
            let msg = format!(
                "{} is missing ({e}): install busybox-static to check conformance/build",
                host.display()
            );
            assert!(!kiln_tests::in_ci(), "{msg}");
            println!("SKIP: {msg}");
            return None;
        }
    };
    let got = Hash::of(HashAlgo::Sha256, &bytes).to_base16();
    if got != want_sha256 {
        let msg = format!(
            "{} has sha256 {got}, but conformance/build was recorded with busybox sha256 \
             {want_sha256}: its drvPaths cannot match on this host",
            host.display()
        );
        assert!(!kiln_tests::in_ci(), "{msg}");
        println!("SKIP: {msg}");
        return None;
    }
    println!(
        "busybox: {} matches the corpus (sha256 {got})",
        host.display()
    );
    let dir = tmp.join("busybox");
    std::fs::create_dir_all(dir.join("bin")).expect("create busybox/bin");
    std::fs::copy(host, dir.join("bin/busybox")).expect("copy busybox");
    Some(dir)
}

#[test]
fn build_corpus_instantiates_like_nix() {
    let build_dir = kiln_tests::shared_dir().join("conformance/build");
    let files: Vec<PathBuf> = case_files(&build_dir)
        .into_iter()
        .filter(|f| !f.ends_with("ifd.nix"))
        .collect();
    let want_sha = files
        .iter()
        .map(|f| load_expected(f)["busyboxSha256"].as_str().map(String::from))
        .next()
        .flatten()
        .expect("busyboxSha256 in conformance/build");
    let tmp = tempfile::tempdir().expect("temp dir");
    let Some(busybox) = stage_busybox(tmp.path(), &want_sha) else {
        return;
    };
    let root = tmp.path().to_path_buf();
    let (checked, fails) = with_big_stack(move || {
        let mut checked = 0;
        let mut fails = Vec::new();
        for (i, file) in files.into_iter().enumerate() {
            let work = root.join(i.to_string());
            // `--arg busybox <dir>`: a Nix expression, here a path literal.
            let args = [("busybox", busybox.display().to_string())];
            let (n, mut f) = check_file(&file, &args, &work);
            checked += n;
            fails.append(&mut f);
        }
        (checked, fails)
    })
    .expect("no panic");
    report("conformance/build", checked, &fails, BUILD_CASES);
}
