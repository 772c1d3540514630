//! `kiln build` end to end: the bundled example builds for real in the
//! sandbox (with the host's dash and glibc as its toolchain), links
//! `result`, prints the output path; a second run builds nothing; a failing
//! derivation makes the command fail and names it with its log tail.

use std::path::Path;
use std::process::{Command, Output};

fn kiln(cache: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .current_dir(cwd)
        .output()
        .expect("running kiln")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn builds_the_example_then_finds_it_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let example = kiln_tests::workspace_root().join("examples/default.nix");
    let example = example.to_str().unwrap();
    let cache = tmp.path().join("cache");

    let first_started = std::time::Instant::now();
    let first = kiln(&cache, tmp.path(), &["build", "-f", example, "-A", "hello"]);
    let first_took = first_started.elapsed();
    let stderr = text(&first.stderr);
    assert!(first.status.success(), "kiln build failed:\n{stderr}");
    let printed = text(&first.stdout);
    assert!(
        printed.trim().starts_with("/nix/store/") && printed.trim().ends_with("-hello-2.12"),
        "{printed}"
    );
    let content = std::fs::read_to_string(tmp.path().join("result")).unwrap();
    assert_eq!(content, "Hello, world!\nbuilt with libgreet 1.0\n");
    assert!(
        stderr.contains("job succeeded: 3 built, 0 cached"),
        "{stderr}"
    );
    assert!(
        !stderr.chars().any(|c| c.is_control() && c != '\n'),
        "plain output has no control characters"
    );

    let second_started = std::time::Instant::now();
    let second = kiln(
        &cache,
        tmp.path(),
        &["build", "-f", example, "-A", "hello", "--no-out-link"],
    );
    let second_took = second_started.elapsed();
    let stderr = text(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert_eq!(text(&second.stdout), printed);
    assert!(
        stderr.contains("0 built"),
        "second run built something:\n{stderr}"
    );
    assert!(!stderr.contains("building "), "{stderr}");
    eprintln!("first run {first_took:?}, cached run {second_took:?}");

    // The log of an output's build, found through its deriver.
    let log = kiln(&cache, tmp.path(), &["log", printed.trim()]);
    assert!(log.status.success(), "{}", text(&log.stderr));

    // path-info on the default store: the facts of the narinfo, which agree
    // with hashing the realised output behind `result`.
    let out = printed.trim();
    let realised = std::fs::canonicalize(tmp.path().join("result")).unwrap();
    let hashed = kiln(
        &cache,
        tmp.path(),
        &["hash", "path", realised.to_str().unwrap()],
    );
    assert!(hashed.status.success(), "{}", text(&hashed.stderr));
    let nar_hash = text(&hashed.stdout).trim().to_string();
    let info = kiln(&cache, tmp.path(), &["path-info", out]);
    assert!(info.status.success(), "{}", text(&info.stderr));
    let info = text(&info.stdout);
    assert!(info.starts_with(&format!("{out}\n")), "{info}");
    assert!(
        info.contains(&format!("\n  NarHash: {nar_hash}\n")),
        "{info}"
    );
    assert!(info.contains("\n  NarSize: "), "{info}");
    assert!(info.contains("\n  References: "), "{info}");
    assert!(info.contains("\n  Deriver: /nix/store/"), "{info}");
    let json = kiln(&cache, tmp.path(), &["path-info", "--json", out]);
    assert!(json.status.success(), "{}", text(&json.stderr));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v[0]["path"], out);
    assert_eq!(v[0]["narHash"], nar_hash.as_str());
    assert!(v[0]["narSize"].as_u64().unwrap() > 0);
    assert!(v[0]["references"].is_array());
    let missing = kiln(
        &cache,
        tmp.path(),
        &[
            "path-info",
            "/nix/store/00000000000000000000000000000000-nothing",
        ],
    );
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("is not valid"));
}

#[test]
fn a_failing_build_fails_the_command_and_shows_its_log() {
    let tmp = tempfile::tempdir().unwrap();
    let bootstrap = kiln_tests::workspace_root().join("examples/bootstrap.nix");
    let expr = format!(
        "(import {} {{ }}).mkDerivation {{ name = \"broken\"; script = ''echo about to fail; exit 3''; }}",
        bootstrap.display()
    );
    let out = kiln(
        &tmp.path().join("cache"),
        tmp.path(),
        &["build", "-E", &expr, "--json"],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "a failing build succeeded");
    assert!(
        stderr.contains("broken.drv") && stderr.contains("failed with exit code 3"),
        "{stderr}"
    );
    assert!(stderr.contains("about to fail"), "log tail shown: {stderr}");
    let stdout = text(&out.stdout);
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let failed = events
        .iter()
        .find(|e| e["event"]["event"] == "failed")
        .unwrap_or_else(|| panic!("no failed event: {stdout}"));
    assert!(!tmp.path().join("result").exists());

    // `kiln log` prints the stored log of the failed build.
    let drv = failed["event"]["drv_path"].as_str().unwrap();
    let log = kiln(&tmp.path().join("cache"), tmp.path(), &["log", drv]);
    assert!(log.status.success(), "{}", text(&log.stderr));
    assert!(
        text(&log.stdout).contains("about to fail"),
        "{}",
        text(&log.stdout)
    );
    let missing = kiln(
        &tmp.path().join("cache"),
        tmp.path(),
        &[
            "log",
            "/nix/store/00000000000000000000000000000000-none.drv",
        ],
    );
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("no build log"),
        "{}",
        text(&missing.stderr)
    );
}
