//! `kiln instantiate` as a command: nix-instantiate's flags, `.drv` files
//! written where the store stands in, `--eval` output, and errors that
//! look like Nix's (message, position, source line with a caret, exit 1).

use std::path::Path;
use std::process::{Command, Output};

fn kiln(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("instantiate")
        .args(args)
        .env("XDG_CACHE_HOME", cwd.join("xdg"))
        .env_remove("NIX_PATH")
        .current_dir(cwd)
        .output()
        .expect("running kiln")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const DRV: &str = r#"{ name ? "x", extra ? "" }: rec {
  a = derivation { inherit name; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" extra ]; };
  multi = derivation { name = "m"; system = "x86_64-linux"; builder = "/bin/sh"; outputs = [ "out" "dev" ]; };
  dev = multi.dev;
  text = builtins.readFile (builtins.toFile "t" "hello");
}"#;

#[test]
fn writes_drv_files_and_prints_their_paths() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("default.nix"), DRV).unwrap();
    let store = tmp.path().join("store");
    let out = kiln(
        tmp.path(),
        &[
            "default.nix",
            "-A",
            "a",
            "-A",
            "dev",
            "--argstr",
            "name",
            "named",
            "--arg",
            "extra",
            "\"echo\"",
            "--store-dir",
            store.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("/nix/store/") && lines[0].ends_with("-named.drv"));
    assert!(lines[1].ends_with("-m.drv!dev"), "{stdout}");
    // The .drv files are written, byte for byte what the paths hash.
    for l in &lines {
        let drv_path = l.split('!').next().unwrap();
        let file = store.join(drv_path.rsplit('/').next().unwrap());
        let aterm = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let drv = kiln_nix::derivation::Derivation::parse_aterm(&aterm).unwrap();
        let name = drv.env["name"].clone();
        assert_eq!(drv.drv_path(&name).unwrap().to_absolute_path(), drv_path);
    }
    // The default store directory is under the cache home.
    let out = kiln(tmp.path(), &["-A", "a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let base = text(&out.stdout)
        .trim()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert!(tmp.path().join("xdg/kiln/drvs").join(base).is_file());
}

#[test]
fn evaluation_can_read_back_what_it_added() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("default.nix"), DRV).unwrap();
    let out = kiln(
        tmp.path(),
        &["-E", "let t = builtins.readFile (builtins.toFile \"t\" \"hello\"); in derivation { name = t; system = \"x\"; builder = \"/bin/sh\"; }"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).trim().ends_with("-hello.drv"));
}

#[test]
fn eval_prints_values_like_nix() {
    let tmp = tempfile::tempdir().unwrap();
    let out = kiln(tmp.path(), &["--eval", "-E", "1 + 2"]);
    assert_eq!(text(&out.stdout), "3\n");
    let out = kiln(
        tmp.path(),
        &["--eval", "--strict", "-E", "{ b = [ 1 \"x\" ]; a = null; }"],
    );
    assert_eq!(text(&out.stdout), "{ a = null; b = [ 1 \"x\" ]; }\n");
    let out = kiln(
        tmp.path(),
        &["--eval", "--json", "-E", "{ a = [ true 1.5 ]; }"],
    );
    assert_eq!(text(&out.stdout), "{\"a\":[true,1.5]}\n");
    let out = kiln(tmp.path(), &["--eval", "-E", "x: x", "--parse"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "(x: x)\n");
    // Nothing is written by --eval.
    assert!(!tmp.path().join("xdg/kiln/drvs").exists());
}

#[test]
fn errors_name_the_place_with_a_caret() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("bad.nix"),
        "let\n  f = x: x + \"a\";\nin f 1\n",
    )
    .unwrap();
    let out = kiln(tmp.path(), &["--eval", "bad.nix"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
    let file = tmp.path().join("bad.nix");
    assert!(
        err.contains(&format!("at {}:2:14:", file.display())),
        "{err}"
    );
    assert!(
        err.contains("f = x: x + \"a\";"),
        "source line missing: {err}"
    );
    assert!(err.contains('^'), "caret missing: {err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = kiln(tmp.path(), &["--eval", "-E", "let x = ; in x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("syntax error"), "{err}");
    assert!(err.contains("«string»:1:"), "{err}");

    let out = kiln(
        tmp.path(),
        &["--eval", "-E", "builtins.fetchGit { url = \"x\"; }"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("fetchGit"),
        "{}",
        text(&out.stderr)
    );
}

/// The frames Nix 2.8 prints for a failing call inside an attribute.
#[test]
fn show_trace_names_lambdas_call_sites_and_attributes_like_nix() {
    let tmp = tempfile::tempdir().unwrap();
    let expr = "let f = x: x + \"a\"; s = { a = f 1; }; in s.a";
    let out = kiln(tmp.path(), &["--eval", "--show-trace", "-E", expr]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let frames: Vec<&str> = err
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("… "))
        .collect();
    assert_eq!(
        frames,
        [
            "while evaluating 'f'",
            "from call site",
            "while evaluating the attribute 'a'"
        ],
        "{err}"
    );
    for at in ["«string»:1:9:", "«string»:1:31:", "«string»:1:27:"] {
        assert!(err.contains(at), "{at} missing from {err}");
    }
}

#[test]
fn show_trace_adds_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    // The message is built, so the source line shown does not hold it.
    let expr = "builtins.addErrorContext (\"while doing \" + \"the thing\") (throw \"boom\")";
    let plain = kiln(tmp.path(), &["--eval", "-E", expr]);
    let traced = kiln(tmp.path(), &["--eval", "--show-trace", "-E", expr]);
    assert_eq!(plain.status.code(), Some(1));
    assert_eq!(traced.status.code(), Some(1));
    let plain = text(&plain.stderr);
    assert!(plain.contains("boom"), "{plain}");
    assert!(!plain.contains("while doing the thing"), "{plain}");
    assert!(
        text(&traced.stderr).contains("while doing the thing"),
        "{}",
        text(&traced.stderr)
    );
}
