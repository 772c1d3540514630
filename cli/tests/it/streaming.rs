//! Builds start while evaluation is still going: an expression whose
//! derivations take a while each to evaluate (a long `genList` chain, each
//! step depending on the one before) sees its first build start before the
//! last derivation is even instantiated. Run again, the same job builds
//! nothing and takes under a tenth of the time.

use std::process::Command;

fn kiln_build(
    tmp: &std::path::Path,
    busybox: &std::path::Path,
    expr: &str,
) -> (std::process::Output, std::time::Duration) {
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", "-E", expr, "--arg", "busybox"])
        .arg(busybox)
        .arg("--store")
        .arg(tmp.join("store"))
        .args(["--no-out-link", "--json", "-j", "2"])
        .env("XDG_CACHE_HOME", tmp.join("xdg"))
        .current_dir(tmp)
        .output()
        .unwrap();
    (out, started.elapsed())
}

#[test]
fn a_second_run_builds_nothing_in_a_tenth_of_the_time() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = kiln_tests::host_busybox(tmp.path()) else {
        return;
    };
    let lib = kiln_tests::shared_dir().join("conformance/build/lib.nix");
    // 24 builds that each do a little work (a shell loop), two at a time.
    let expr = format!(
        r#"{{ busybox }}:
        let inherit (import {} {{ inherit busybox; }}) mk;
        in builtins.genList (i: mk {{
          name = "work-${{toString i}}";
          script = "n=0; while [ $n -lt 30000 ]; do n=$((n+1)); done; echo $n ${{toString i}} > $out";
        }}) 24"#,
        lib.display()
    );
    let (first, first_took) = kiln_build(tmp.path(), &busybox, &expr);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let count = |out: &std::process::Output, kind: &str| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&format!("\"event\":\"{kind}\"")))
            .count()
    };
    assert_eq!(count(&first, "started"), 24);
    let (second, second_took) = kiln_build(tmp.path(), &busybox, &expr);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(
        count(&second, "started"),
        0,
        "the second run built something"
    );
    assert_eq!(count(&second, "cached"), 24);
    eprintln!("first run {first_took:?}, second run {second_took:?}");
    assert!(
        second_took * 10 < first_took,
        "the second run took {second_took:?}, the first {first_took:?}"
    );
}

#[test]
fn first_build_starts_before_the_last_derivation_is_instantiated() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = kiln_tests::host_busybox(tmp.path()) else {
        return;
    };
    let lib = kiln_tests::shared_dir().join("conformance/build/lib.nix");
    let lib = lib.display();
    let steps = 80;
    let expr = format!(
        r#"{{ busybox }}:
        let
          inherit (import {lib} {{ inherit busybox; }}) mk;
          # Deliberately slow to evaluate: a fold over 20,000 numbers per step.
          work = i: builtins.foldl' (a: b: a + b) i (builtins.genList (x: x) 20000);
          chain = builtins.genList (i: mk {{
            name = "step-${{toString i}}";
            work = toString (work i);
            prev = if i == 0 then "" else builtins.elemAt chain (i - 1);
            script = "echo ${{toString i}} > $out";
          }}) {steps};
        in chain"#
    );
    let (out, _) = kiln_build(tmp.path(), &busybox, &expr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |kind: &str| -> Vec<u64> {
        events
            .iter()
            .filter(|e| e["event"]["event"] == kind)
            .map(|e| e["at_ms"].as_u64().unwrap())
            .collect()
    };
    let discovered = at("discovered");
    let started = at("started");
    assert_eq!(discovered.len(), steps, "{stdout}");
    assert_eq!(started.len(), steps, "every step built");
    let first_start = *started.iter().min().unwrap();
    let last_discovered = *discovered.iter().max().unwrap();
    eprintln!("first build started at {first_start} ms, last derivation at {last_discovered} ms");
    assert!(
        first_start < last_discovered,
        "the first build started at {first_start} ms, after the last derivation \
         was instantiated at {last_discovered} ms"
    );
    // Events arrive in order, numbered without gaps.
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

/// Fail-fast stops the evaluation too: a build that fails early ends the
/// job long before a slow evaluation would have finished.
#[test]
fn fail_fast_stops_a_slow_evaluation() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = kiln_tests::host_busybox(tmp.path()) else {
        return;
    };
    let lib = kiln_tests::shared_dir().join("conformance/build/lib.nix");
    // `slow` is pure evaluation work with little memory: nested folds.
    let slow = "builtins.foldl' (a: i: builtins.foldl' (b: j: b + 1) a (builtins.genList (x: x) 1000)) 0 (builtins.genList (x: x) N)";
    let expr = |n: u32| {
        format!(
            r#"{{ busybox }}:
            let inherit (import {} {{ inherit busybox; }}) mk;
                slow = {};
            in [ (mk {{ name = "fails"; script = "exit 1"; }})
                 (mk {{ name = "late"; script = "echo ${{toString slow}} > $out"; }}) ]"#,
            lib.display(),
            slow.replace('N', &n.to_string())
        )
    };
    // How long the slow part takes here per outer step (less the start-up
    // of the process), to size it at about 10 s of evaluation.
    let timed = |e: &str| {
        let t = std::time::Instant::now();
        let probe = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["instantiate", "--eval", "-E", e])
            .output()
            .unwrap();
        assert!(
            probe.status.success(),
            "{}",
            String::from_utf8_lossy(&probe.stderr)
        );
        t.elapsed().as_secs_f64()
    };
    let startup = timed("1");
    let per_step = ((timed(&slow.replace('N', "2000")) - startup) / 2000.0).max(1e-6);
    let n = (10.0 / per_step).clamp(2000.0, 1_000_000.0) as u32;
    let expected_eval = per_step * f64::from(n);

    let (out, took) = kiln_build(tmp.path(), &busybox, &expr(n));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("fails") && stderr.contains("exit code 1"),
        "{stderr}"
    );
    assert!(!stderr.contains("evaluation cancelled"), "{stderr}");
    assert!(
        took.as_secs_f64() < expected_eval / 2.0,
        "the job took {took:?}; its evaluation alone takes about {expected_eval:.1} s"
    );
}
