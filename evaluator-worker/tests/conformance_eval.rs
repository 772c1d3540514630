//! `../shared/conformance/eval/`: every derivation must get Nix 2.8's exact
//! `drvPath`, output paths and `.drv` bytes; `kind: value` cases the same JSON.

use kiln_evaluator::{with_big_stack, Evaluator, Options, Value};
use std::path::PathBuf;

fn shared_dir() -> PathBuf {
    if let Ok(p) = std::env::var("KILN_SHARED") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// Check one `NAME.nix`; returns (passed, failures).
fn check_file(nix: PathBuf) -> (usize, Vec<String>) {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(nix.with_extension("expected.json")).expect("expected.json"),
    )
    .expect("valid json");
    let cases = expected["cases"].as_object().cloned().unwrap_or_default();
    let evr = Evaluator::new(Options::default());
    let mut fails = Vec::new();
    let mut passed = 0;
    let root = match evr.eval_file(&nix) {
        Ok(v) => v,
        Err(e) => {
            return (
                0,
                vec![format!(
                    "{}: {}",
                    nix.display(),
                    evr.format_error(&e, false)
                )],
            )
        }
    };
    for (name, want) in cases {
        let res = (|| -> Result<(), String> {
            let fmt = |e: kiln_evaluator::Error| evr.format_error(&e, false);
            let v = evr
                .select_attr_path(&root, &name, &Default::default())
                .map_err(fmt)?;
            if want["kind"] == "value" {
                evr.force_deep(&v).map_err(fmt)?;
                let got: serde_json::Value =
                    serde_json::from_str(&evr.print_json(&v).map_err(fmt)?)
                        .map_err(|e| e.to_string())?;
                if got != want["value"] {
                    return Err(format!("value {got} != {}", want["value"]));
                }
                return Ok(());
            }
            let Value::Attrs(a) = v else {
                return Err("not a derivation".into());
            };
            let get = |k: &str| -> Result<String, String> {
                let x = a.get(k).ok_or(format!("no {k}"))?;
                let s = evr
                    .ev
                    .expect_string(
                        x,
                        kiln_evaluator::pos::Pos {
                            file: 0,
                            line: 1,
                            col: 1,
                        },
                    )
                    .map_err(fmt)?;
                Ok(s.s.clone())
            };
            let drv = get("drvPath")?;
            if drv != want["drvPath"].as_str().unwrap_or_default() {
                let aterm = evr.ev.store.read_text(&drv).unwrap_or_default();
                return Err(format!(
                    "drvPath {drv} != {}\n  got aterm:  {aterm}\n  want aterm: {}",
                    want["drvPath"],
                    want["aterm"].as_str().unwrap_or_default()
                ));
            }
            if let Some(outs) = want["outputs"].as_object() {
                for (o, p) in outs {
                    let out = a.get(o).ok_or(format!("no output {o}"))?;
                    let out = evr
                        .ev
                        .expect_attrs(
                            out,
                            kiln_evaluator::pos::Pos {
                                file: 0,
                                line: 1,
                                col: 1,
                            },
                        )
                        .map_err(fmt)?;
                    let got = out.get("outPath").ok_or("no outPath")?;
                    let got = evr
                        .ev
                        .expect_string(
                            got,
                            kiln_evaluator::pos::Pos {
                                file: 0,
                                line: 1,
                                col: 1,
                            },
                        )
                        .map_err(fmt)?
                        .s
                        .clone();
                    if got != p.as_str().unwrap_or_default() {
                        return Err(format!("output {o}: {got} != {p}"));
                    }
                }
            }
            let aterm = evr.ev.store.read_text(&drv).ok_or("drv not written")?;
            if aterm != want["aterm"].as_str().unwrap_or_default() {
                return Err(format!("aterm differs: {aterm}"));
            }
            Ok(())
        })();
        match res {
            Ok(()) => passed += 1,
            Err(e) => fails.push(format!(
                "{}#{name}: {e}",
                nix.file_name().unwrap_or_default().to_string_lossy()
            )),
        }
    }
    (passed, fails)
}

#[test]
fn conformance_eval() {
    let dir = shared_dir().join("conformance/eval");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("conformance/eval")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "nix"))
        .collect();
    files.sort();
    // paths.nix hashes eval/src, whose `link` must be a symlink: a checkout that
    // lost it gives other (but, with real Nix, identical to Kiln's) paths.
    if !dir
        .join("src/link")
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        println!(
            "SKIP paths.nix: {}/src/link is not a symlink in this checkout",
            dir.display()
        );
        files.retain(|f| !f.ends_with("paths.nix"));
    }
    let (passed, fails) = with_big_stack(move || {
        let mut passed = 0;
        let mut fails = Vec::new();
        for f in files {
            let (p, mut fl) = check_file(f);
            passed += p;
            fails.append(&mut fl);
        }
        (passed, fails)
    })
    .expect("no panic");
    for f in &fails {
        println!("FAIL {f}");
    }
    println!("conformance/eval: {passed} passed, {} failed", fails.len());
    assert!(fails.is_empty(), "{} conformance cases differ", fails.len());
}
