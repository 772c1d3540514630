//! The real `kiln` binary's `nar` and `hash` commands, checked against the
//! Nix 2.8 corpus and, when `nix` is on `PATH`, against `nix-store --dump`,
//! `nix hash path` and `nix hash file` on the same trees.
//!
//! Cargo builds the `kiln` binary with the same features as this test and
//! passes its path as `CARGO_BIN_EXE_kiln`.

use kiln_nix::hash::Hash;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kiln() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kiln"))
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(kiln());
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().unwrap();
    if let Some(data) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().unwrap();
        // A refused NAR may close stdin early; that is not a test failure.
        let _ = pipe.write_all(data);
    }
    child.wait_with_output().unwrap()
}

fn ok_stdout(args: &[&str]) -> Vec<u8> {
    let out = run(args, None);
    assert!(
        out.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap().trim_end().to_string()
}

/// Asserts a failure with exactly one `error:` line naming `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "stderr: {err}"
    );
}

/// `nix` when available; under CI its absence fails the test.
fn nix_available() -> bool {
    let found = Command::new("nix")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !kiln_tests::in_ci(),
            "nix is required under CI=true for the oracle comparison"
        );
        eprintln!("note: nix not on PATH, skipping the comparison with nix");
    }
    found
}

fn nix(args: &[&str]) -> Vec<u8> {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A tree with what matters to a NAR: nesting, byte order of names,
/// an executable, symlinks (also dangling), an empty file and directory.
fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/empty-dir")).unwrap();
    fs::write(root.join("B"), b"upper").unwrap();
    fs::write(root.join("a"), b"lower").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("sub/é"), "unicode name".as_bytes()).unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(root.join("sub/big"), big).unwrap();
    fs::write(root.join("sub/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("sub/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("../a", root.join("sub/link")).unwrap();
    symlink("/nonexistent/dangling", root.join("dangling")).unwrap();
}

#[test]
fn restore_then_dump_and_hash_match_the_corpus() {
    let dir = kiln_tests::shared_dir().join("conformance/nar");
    let expected: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (name, exp) in expected.as_object().unwrap() {
        let bytes = fs::read(dir.join(name)).unwrap();
        let out = tmp.path().join(name.trim_end_matches(".nar"));
        let o = out.to_str().unwrap();
        let r = run(&["nar", "restore", o], Some(&bytes));
        assert!(
            r.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(
            ok_stdout(&["nar", "dump", o]) == bytes,
            "{name}: dump differs"
        );
        assert_eq!(
            text(ok_stdout(&["hash", "path", o])),
            exp["narHashSRI"].as_str().unwrap()
        );
        let b32 = exp["narHash"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        assert_eq!(text(ok_stdout(&["hash", "path", "--base32", o])), b32);
    }
}

#[test]
fn matches_nix_on_a_fresh_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    sample_tree(&root);
    let r = root.to_str().unwrap();
    let dump = ok_stdout(&["nar", "dump", r]);
    // Independent of nix: the dump restores to a tree that dumps the same.
    let copy = tmp.path().join("copy");
    let c = copy.to_str().unwrap();
    assert!(run(&["nar", "restore", c], Some(&dump)).status.success());
    assert!(ok_stdout(&["nar", "dump", c]) == dump);
    let sri = text(ok_stdout(&["hash", "path", r]));
    assert_eq!(
        Hash::parse_any_prefixed(&sri).unwrap(),
        Hash::of(kiln_nix::hash::HashAlgo::Sha256, &dump)
    );

    if !nix_available() {
        return;
    }
    assert!(
        nix(&["nix-store", "--dump", r]) == dump,
        "kiln nar dump differs from nix-store --dump"
    );
    let x = ["--extra-experimental-features", "nix-command"];
    let file = root.join("sub/big");
    let f = file.to_str().unwrap();
    for algo in ["sha256", "sha1", "sha512", "md5"] {
        for enc in ["--sri", "--base32", "--base16", "--base64"] {
            for (what, p) in [("path", r), ("file", f)] {
                let ours = text(ok_stdout(&["hash", what, "--type", algo, enc, p]));
                let theirs = text(nix(&[
                    "nix", x[0], x[1], "hash", what, "--type", algo, enc, p,
                ]));
                assert_eq!(ours, theirs, "hash {what} --type {algo} {enc}");
            }
        }
    }
    // Default encoding (SRI) and several paths at once.
    let a = root.join("a");
    let a = a.to_str().unwrap();
    assert_eq!(
        ok_stdout(&["hash", "path", r, a]),
        nix(&["nix", x[0], x[1], "hash", "path", r, a])
    );
    assert_eq!(
        ok_stdout(&["hash", "file", a]),
        nix(&["nix", x[0], x[1], "hash", "file", a])
    );
}

#[test]
fn errors_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let m = missing.to_str().unwrap();
    assert_one_line_error(&run(&["hash", "path", m], None), m);
    assert_one_line_error(&run(&["hash", "file", m], None), m);
    assert_one_line_error(&run(&["nar", "dump", m], None), m);

    let bad =
        fs::read(kiln_tests::shared_dir().join("conformance/nar/bad/dotdot-entry.nar")).unwrap();
    let target = tmp.path().join("out");
    let out = run(&["nar", "restore", target.to_str().unwrap()], Some(&bad));
    assert_one_line_error(&out, "at byte 128");
    assert!(!target.exists());

    // Usage errors are one line too, naming the bad argument.
    assert_one_line_error(
        &run(&["hash", "path", "--frobnicate", m], None),
        "--frobnicate",
    );
    assert_one_line_error(&run(&["hash", "path", "--type", "sha3", m], None), "sha3");
    assert_one_line_error(&run(&["nar", "dump"], None), "PATH");
    let out = run(&["hash", "path", "--frobnicate", m], None);
    assert_eq!(out.status.code(), Some(2));

    // A FIFO cannot go into a NAR; the error names it.
    let fifo = tmp.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    assert_one_line_error(
        &run(&["nar", "dump", tmp.path().to_str().unwrap()], None),
        "fifo",
    );
}
