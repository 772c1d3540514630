//! `kiln build` over every expression in `conformance/build/` (with the
//! host's static busybox as the `busybox` argument), against what Nix 2.8
//! recorded: the same output paths, the same `narHash`, `narSize` and
//! references in the store's narinfo, and a failure — with each failing
//! derivation reported — exactly where Nix failed. `ifd.nix` exercises
//! import from derivation through the coordinator.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use kiln_nix::narinfo::NarInfo;
use kiln_nix::store_path::StorePath;

struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
    events: Vec<serde_json::Value>,
}

fn kiln_build(file: &Path, busybox: &Path, store: &Path, cwd: &Path) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("build")
        .arg(file)
        .args(["--arg", "busybox"])
        .arg(busybox)
        .arg("--store")
        .arg(store)
        .args(["--keep-going", "--no-out-link", "--json", "-j", "2"])
        .env("XDG_CACHE_HOME", cwd.join("xdg"))
        .current_dir(cwd)
        .output()
        .expect("running kiln");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let events = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON {l:?}: {e}"))
        })
        .collect();
    Outcome {
        success: out.status.success(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        events,
    }
}

/// The event of kind `kind` about `drv`, if any.
fn event<'a>(
    events: &'a [serde_json::Value],
    kind: &str,
    drv: &str,
) -> Option<&'a serde_json::Value> {
    events
        .iter()
        .map(|e| &e["event"])
        .find(|e| e["event"] == kind && e["drv_path"] == drv)
}

#[test]
fn kiln_build_matches_nix_on_every_build_case() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = kiln_tests::host_busybox(tmp.path()) else {
        return;
    };
    let corpus = kiln_tests::shared_dir().join("conformance/build");
    let mut files: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".expected.json"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "corpus incomplete: {files:?}");
    // One store for the whole corpus, as a user's would be: later files
    // find what earlier ones built.
    let store = tmp.path().join("store");
    let mut checked_built = 0;
    let mut checked_failed = 0;
    let mut problems = Vec::new();
    for expected_file in files {
        let name = expected_file.file_name().unwrap().to_string_lossy();
        let nix_file = corpus.join(name.replace(".expected.json", ".nix"));
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&expected_file).unwrap()).unwrap();
        let cases = expected["cases"].as_object().unwrap();
        let run = kiln_build(&nix_file, &busybox, &store, tmp.path());
        let nix_fails = cases.values().any(|c| c["buildFails"] == true);
        if run.success == nix_fails {
            problems.push(format!(
                "{name}: kiln build {} but Nix {}\n{}",
                if run.success { "succeeded" } else { "failed" },
                if nix_fails { "fails" } else { "succeeds" },
                run.stderr
            ));
            continue;
        }
        let finished = run
            .events
            .iter()
            .find(|e| e["event"]["event"] == "job_finished")
            .unwrap_or_else(|| panic!("{name}: no job_finished event:\n{}", run.stdout));
        for (case, c) in cases {
            let drv = c["drvPath"].as_str().unwrap();
            let root = finished["event"]["roots"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["attr_path"] == "" && r["drv_path"] == drv);
            if root.is_none() {
                problems.push(format!("{name}/{case}: no root with Nix's drvPath {drv}"));
                continue;
            }
            if c["buildFails"] == true {
                let failed = event(&run.events, "failed", drv)
                    .or_else(|| event(&run.events, "dependency_failed", drv));
                match failed {
                    Some(_) => checked_failed += 1,
                    None => problems.push(format!(
                        "{name}/{case}: Nix fails ({}) but no failure was reported",
                        c["nixError"]
                    )),
                }
                // Each failed derivation is named on stderr.
                if !run.stderr.contains(drv) {
                    problems.push(format!("{name}/{case}: {drv} not named in the output"));
                }
                continue;
            }
            if root.unwrap()["outputs"]
                .as_object()
                .is_none_or(|o| o.is_empty())
            {
                problems.push(format!("{name}/{case}: the root names no output"));
            }
            for (output, want) in c["built"].as_object().unwrap() {
                let out_path = c["outputs"][output].as_str().unwrap();
                // Like nix-build, a root is one output of its derivation (the
                // first); building it builds all of them.
                let rooted = &root.unwrap()["outputs"][output];
                if !rooted.is_null() && rooted != out_path {
                    problems.push(format!(
                        "{name}/{case}: output {output} is {} not {out_path}",
                        root.unwrap()["outputs"][output]
                    ));
                    continue;
                }
                let sp = StorePath::from_absolute_path(out_path).unwrap();
                let narinfo = store.join(format!("{}.narinfo", sp.hash_part()));
                let info = match std::fs::read_to_string(&narinfo) {
                    Ok(t) => NarInfo::parse(&t, &narinfo.display().to_string()).unwrap(),
                    Err(e) => {
                        problems.push(format!("{name}/{case}: {}: {e}", narinfo.display()));
                        continue;
                    }
                };
                let refs: Vec<String> = info
                    .references
                    .iter()
                    .map(|r| r.to_absolute_path())
                    .collect();
                let want_refs: Vec<String> = want["references"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect();
                let got = (
                    info.nar_hash.to_sri(),
                    info.nar_size,
                    refs.into_iter().collect::<std::collections::BTreeSet<_>>(),
                );
                let want = (
                    want["narHash"].as_str().unwrap().to_string(),
                    want["narSize"].as_u64().unwrap(),
                    want_refs.into_iter().collect(),
                );
                if got != want {
                    problems.push(format!("{name}/{case}/{output}: {got:?} != Nix {want:?}"));
                } else {
                    checked_built += 1;
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked_built >= 20, "only {checked_built} outputs checked");
    assert!(
        checked_failed >= 4,
        "only {checked_failed} failures checked"
    );
    eprintln!(
        "{checked_built} outputs identical to Nix, {checked_failed} failures where Nix fails"
    );
}

#[test]
fn keep_going_builds_everything_buildable_and_reports_each_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = kiln_tests::host_busybox(tmp.path()) else {
        return;
    };
    let corpus = kiln_tests::shared_dir().join("conformance/build");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(corpus.join("failures.expected.json")).unwrap())
            .unwrap();
    // failures.nix, plus derivations that build fine beside the failures.
    let expr = format!(
        r#"{{ busybox }}:
        let
          inherit (import {corpus}/lib.nix {{ inherit busybox; }}) mk;
          failures = import {corpus}/failures.nix {{ inherit busybox; }};
        in failures // rec {{
          fine = mk {{ name = "fine"; script = "echo fine > $out"; }};
          afterFine = mk {{ name = "after-fine"; script = "cat ${{fine}} > $out"; }};
        }}"#,
        corpus = corpus.display()
    );
    let store = tmp.path().join("store");
    let run = |keep_going: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(["build", "-E", &expr, "--arg", "busybox"])
            .arg(&busybox)
            .arg("--store")
            .arg(&store)
            .args(["--no-out-link", "-j", "1"])
            .env("XDG_CACHE_HOME", tmp.path().join("xdg"))
            .current_dir(tmp.path());
        if keep_going {
            cmd.arg("--keep-going");
        }
        cmd.output().unwrap()
    };
    let out = run(true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(100), "{stderr}");
    let mut reported = BTreeMap::new();
    for (case, c) in expected["cases"].as_object().unwrap() {
        assert_eq!(c["buildFails"], true, "failures.nix only holds failures");
        let drv = c["drvPath"].as_str().unwrap();
        reported.insert(case.clone(), stderr.contains(drv));
    }
    assert!(
        reported.values().all(|&r| r),
        "every failure named: {reported:?}\n{stderr}"
    );
    assert!(stderr.contains("failed with exit code 3"), "{stderr}");
    assert!(stderr.contains("about to fail"), "log tail shown: {stderr}");
    // Everything buildable was built, despite the failures.
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(&store).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "narinfo") {
            let text = std::fs::read_to_string(&path).unwrap();
            let info = NarInfo::parse(&text, &path.display().to_string()).unwrap();
            stored.push(info.store_path.name().to_string());
        }
    }
    for name in ["fine", "after-fine"] {
        assert!(
            stored.iter().any(|s| s == name),
            "{name} not built: {stored:?}\n{stderr}"
        );
    }
    for name in ["exits-non-zero", "no-output", "cycle", "depends-on-failure"] {
        assert!(
            !stored.iter().any(|s| s == name),
            "{name} stored: {stored:?}"
        );
    }

    // Fail-fast stops at the first failure with the same exit code.
    let out = run(false);
    assert_eq!(out.status.code(), Some(100));
}
