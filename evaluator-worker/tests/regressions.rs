//! Regressions found by evaluating real Nix code (issue 15), each checked
//! against what Nix 2.8.0 (`nix-instantiate --eval --strict`) prints.

use kiln_evaluator::run::{eval_request, Request};
use std::path::{Path, PathBuf};

/// `nix-instantiate --eval --strict -E expr` run from `cwd`: standard
/// output, or the error message.
fn eval_in(cwd: &Path, expr: &str) -> Result<String, String> {
    let req = Request {
        expr: Some(expr.to_string()),
        eval: true,
        strict: true,
        cwd: cwd.to_path_buf(),
        ..Default::default()
    };
    kiln_evaluator::with_big_stack(move || eval_request(&req)).expect("no panic")
}

fn eval(expr: &str) -> Result<String, String> {
    eval_in(Path::new("/"), expr)
}

/// Asserts that each expression prints as Nix 2.8 prints it.
fn check(cases: &[(&str, &str)]) {
    for (expr, want) in cases {
        match eval(expr) {
            Ok(out) => assert_eq!(out.trim_end(), *want, "{expr}"),
            Err(e) => panic!("{expr}: {e}"),
        }
    }
}

/// Asserts that each expression fails with a message containing the text.
fn check_err(cases: &[(&str, &str)]) {
    for (expr, want) in cases {
        match eval(expr) {
            Ok(out) => panic!("{expr} gave {out}, where Nix fails with {want}"),
            Err(e) => assert!(e.contains(want), "{expr}: {e}"),
        }
    }
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kiln-regressions-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    dir
}

#[test]
fn plain_inherit_in_rec_let_and_with() {
    check(&[
        ("let a = 1; in (rec { inherit a; }).a", "1"),
        ("with { a = 2; }; (rec { inherit a; b = a; }).b", "2"),
        ("(x: (rec { inherit x; y = x; }).y) 1", "1"),
        ("let a = 1; in let inherit a; b = a + 1; in b", "2"),
        ("let x = 5; in with { y = 1; }; let inherit x; in x", "5"),
        ("with { a = 3; }; let inherit a; in a", "3"),
        // The `rec` set's own names are not what `inherit` takes.
        ("let a = 1; in (rec { inherit a; b = a + 1; }).b", "2"),
    ]);
}

#[test]
fn equality_compares_functions_by_identity_only_inside_values() {
    check(&[
        ("let f = x: x; in {a=f;} == {a=(y: y) f;}", "false"),
        ("let f = x: x; in builtins.elem f [f]", "true"),
        ("let f = x: x; l = [f]; in builtins.elem f l", "true"),
        ("let f = x: x; in [f] == [f]", "true"),
        ("let f = x: x; in f == f", "false"),
        ("builtins.elem (x: x) [ (x: x) ]", "false"),
        (
            "let s = {f = x: x;}; in builtins.seq s ([s.f] == [s.f])",
            "false",
        ),
        (
            "let s = {f = x: x;}; in builtins.seq s.f ([s.f] == [s.f])",
            "false",
        ),
        (
            "let s = {f = x: x;}; in builtins.seq s.f ({inherit (s) f;} == {inherit (s) f;})",
            "false",
        ),
        (
            "{ inherit (builtins) map; } == { inherit (builtins) map; }",
            "false",
        ),
        ("[ map ] == [ map ]", "true"),
        ("let s = { f = x: x; }; in s == s", "true"),
        // A binding that names an earlier one is that same value.
        ("let f = x: x; g = f; in [ f ] == [ g ]", "true"),
        (
            "let f = x: x; in ({ a ? f, b ? a }: [ a ] == [ b ]) { }",
            "true",
        ),
        ("let f = x: x; g = y: f y; in [ f ] == [ g ]", "false"),
        // Members are forced before identity counts, as in Nix 2.8.
        ("let t = [ (throw \"x\") ]; in [ t ] == [ t ]", "true"),
    ]);
    check_err(&[("let x = { foo = throw \"foo\"; }; in x == x", "foo")]);
}

#[test]
fn imports_follow_symlinks() {
    let dir = temp_dir();
    std::fs::create_dir_all(dir.join("real")).unwrap();
    std::fs::write(dir.join("real/a.nix"), "{ f = x: x; b = import ./b.nix; }").unwrap();
    std::fs::write(dir.join("real/b.nix"), "2").unwrap();
    std::os::unix::fs::symlink("real/a.nix", dir.join("link.nix")).unwrap();
    // Relative paths in the linked file resolve beside its target, and the
    // link and its target are one file to the import cache.
    assert_eq!(eval_in(&dir, "(import ./link.nix).b").as_deref(), Ok("2\n"));
    assert_eq!(
        eval_in(&dir, "import ./link.nix == import ./real/a.nix").as_deref(),
        Ok("true\n")
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn imported_files_are_the_same_value() {
    let dir = temp_dir();
    std::fs::write(dir.join("x.nix"), "{ f = x: x; }").unwrap();
    std::fs::write(dir.join("y.nix"), "x: x").unwrap();
    assert_eq!(
        eval_in(&dir, "import ./x.nix == import ./x.nix").as_deref(),
        Ok("true\n")
    );
    // A function at the top level is never equal, cached or not.
    assert_eq!(
        eval_in(&dir, "import ./y.nix == import ./y.nix").as_deref(),
        Ok("false\n")
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn to_xml_writes_tab_and_carriage_return_as_they_are() {
    check(&[(
        r#"builtins.toXML "a\tb\rc\nd""#,
        "\"<?xml version='1.0' encoding='utf-8'?>\\n<expr>\\n  <string value=\\\"a\\tb\\rc&#xA;d\\\" />\\n</expr>\\n\"",
    )]);
}

#[test]
fn builtins_derivation_exists() {
    check(&[
        ("builtins ? derivation", "true"),
        (
            r#"(builtins.derivation { name = "a"; builder = "b"; system = "c"; }).drvPath"#,
            "\"/nix/store/arhvjaf6zmlyn8vh8fgn55rpwnxq0n7l-a.drv\"",
        ),
    ]);
}

#[test]
fn strict_builtins_refuse_what_nix_refuses() {
    check_err(&[
        (r#"builtins.replaceStrings ["a"] [(throw "unused")] "b""#, "unused"),
        (
            r#"builtins.replaceStrings ["a" "b"] ["x" (throw "later")] "a""#,
            "later",
        ),
        ("builtins.parseDrvName { }", "value is a set while a string was expected"),
        ("builtins.parseDrvName ./x", "value is a path while a string was expected"),
        (
            "builtins.genericClosure { startSet = [ { key = {}; } { key = {}; } ]; operator = x: []; }",
            "cannot compare a set with a set",
        ),
        (
            r#"builtins.genericClosure { startSet = [ { key = 1; } { key = "a"; } ]; operator = x: []; }"#,
            "cannot compare a string with an integer",
        ),
    ]);
    check(&[
        (r#"builtins.pathExists "/dev/null/.""#, "false"),
        (r#"builtins.pathExists "/dev/null/""#, "false"),
        (r#"builtins.pathExists "/dev/null""#, "true"),
        ("builtins.pathExists /dev/null/.", "true"),
        (
            "builtins.genericClosure { startSet = [ { key = x: x; } ]; operator = x: []; }",
            "[ { key = <LAMBDA>; } ]",
        ),
        (
            "builtins.genericClosure { startSet = [ { key = 1; } { key = 2; } { key = 1.0; } { key = 3; } ]; operator = x: []; }",
            "[ { key = 1; } { key = 2; } { key = 3; } ]",
        ),
        (
            "builtins.genericClosure { startSet = [ { key = [1 2]; } { key = [1]; } { key = [1 2]; } ]; operator = x: []; }",
            "[ { key = [ 1 2 ]; } { key = [ 1 ]; } ]",
        ),
        (
            "builtins.genericClosure { startSet = [ { key = 1; } { key = 2; } ]; operator = x: if x.key < 5 then [ { key = x.key + 2; } ] else []; }",
            "[ { key = 1; } { key = 2; } { key = 3; } { key = 4; } { key = 5; } { key = 6; } ]",
        ),
    ]);
}

#[test]
fn prints_if_quoted_like_nix() {
    check(&[(
        r#"{ "if"=1; "then"=1; "or"=1; "a b"=2; "1a"=3; a-b=4; "a'"=5; ""=6; _x=7; }"#,
        r#"{ "" = 6; "1a" = 3; _x = 7; "a b" = 2; a' = 5; a-b = 4; "if" = 1; or = 1; then = 1; }"#,
    )]);
}

#[test]
fn deep_recursion_and_nesting() {
    check(&[
        // eval-okay-tail-call-1: 100,000 calls deep.
        (
            "let f = n: if n == 100000 then n else f (n + 1); in f 0",
            "100000",
        ),
    ]);
    let elif = format!(
        "let x = 600; in {} -1",
        (0..600)
            .map(|i| format!("if x == {i} then {i} else"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert_eq!(eval(&elif).as_deref(), Ok("-1\n"));
    let sets = format!("{}1{}", "{ a = ".repeat(800), "; }".repeat(800));
    let out = eval(&format!("let s = {sets}; in s.a.a.a")).expect("800 nested sets");
    assert!(out.starts_with("{ a = { a = "), "{out}");
    let parens = format!("{}1{}", "(".repeat(800), ")".repeat(800));
    assert_eq!(eval(&parens).as_deref(), Ok("1\n"));
    let calls = format!("let f = x: x; in {}1{}", "f (".repeat(800), ")".repeat(800));
    assert_eq!(eval(&calls).as_deref(), Ok("1\n"));
    let json = format!(
        "builtins.length (builtins.fromJSON \"{}{}\")",
        "[".repeat(1000),
        "]".repeat(1000)
    );
    assert_eq!(eval(&json).as_deref(), Ok("1\n"));
    // Nix refuses 200,000 nested lists at once ("memory exhausted"): so
    // does Kiln, with its nesting limit, instead of running for minutes.
    let lists = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let start = std::time::Instant::now();
    let err = eval(&lists).expect_err("too deep");
    assert!(err.contains("nested too deeply"), "{err}");
    assert!(start.elapsed().as_secs() < 10, "took {:?}", start.elapsed());
    // Infinite recursion without a thunk cycle ends with a clean error.
    let err = eval("let f = n: f (n + 1) + 1; in f 0").expect_err("unbounded");
    assert!(err.contains("stack overflow"), "{err}");
}

#[test]
fn read_file_refuses_what_it_cannot_hold() {
    let dir = temp_dir();
    std::fs::write(dir.join("nul.txt"), b"ab\0cd").unwrap();
    std::fs::write(dir.join("latin1.txt"), b"caf\xe9!").unwrap();
    std::fs::write(dir.join("utf8.txt"), "café!").unwrap();
    let err = eval_in(&dir, "builtins.readFile ./nul.txt").expect_err("NUL byte");
    assert!(
        err.contains("cannot be represented as a Nix string"),
        "{err}"
    );
    assert!(err.contains("nul.txt"), "{err}");
    // Nix gives 5 (bytes); Kiln's strings are UTF-8, so it refuses rather
    // than give 7 (with U+FFFD) and a different hash.
    let err = eval_in(&dir, "builtins.readFile ./latin1.txt").expect_err("not UTF-8");
    assert!(err.contains("latin1.txt"), "{err}");
    assert_eq!(
        eval_in(&dir, "builtins.stringLength (builtins.readFile ./utf8.txt)").as_deref(),
        Ok("6\n")
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn file_argument_on_the_search_path_and_stdin() {
    let dir = temp_dir();
    std::fs::create_dir_all(dir.join("pkgs/nixos")).unwrap();
    std::fs::write(dir.join("pkgs/nixos/default.nix"), "{ a = 1 + 1; }").unwrap();
    let req = Request {
        file: Some(PathBuf::from("<nixpkgs/nixos>")),
        include: vec![format!("nixpkgs={}", dir.join("pkgs").display())],
        attr_paths: vec!["a".into()],
        eval: true,
        cwd: "/".into(),
        ..Default::default()
    };
    let out = kiln_evaluator::with_big_stack(move || eval_request(&req)).unwrap();
    assert_eq!(out.as_deref(), Ok("2\n"));
    let req = Request {
        file: Some(PathBuf::from("<nowhere>")),
        eval: true,
        cwd: "/".into(),
        ..Default::default()
    };
    let err = kiln_evaluator::with_big_stack(move || eval_request(&req))
        .unwrap()
        .expect_err("not on the search path");
    assert!(err.contains("'nowhere' was not found"), "{err}");
    // `-`: the text of standard input, relative paths against the cwd.
    let req = Request {
        file: Some(PathBuf::from("-")),
        stdin: Some("(import ./pkgs/nixos).a + 1".into()),
        eval: true,
        cwd: dir.clone(),
        ..Default::default()
    };
    let out = kiln_evaluator::with_big_stack(move || eval_request(&req)).unwrap();
    assert_eq!(out.as_deref(), Ok("3\n"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn error_messages_as_nix_words_them() {
    check_err(&[
        (
            "let stdenv = { a = 1; b = 1; }; in assert stdenv.a != stdenv.b; 1",
            "assertion '((stdenv).a != (stdenv).b)' failed",
        ),
        ("assert 1 == 2; 1", "assertion '(1 == 2)' failed"),
        ("let x = false; in assert x; 1", "assertion 'x' failed"),
        (
            "assert !(1 < 2) || [1] == [2]; 1",
            "assertion '((! (__lessThan 1 2)) || ([ (1) ] == [ (2) ]))' failed",
        ),
        (
            "let f = {a}: a; in assert (f {a = false;}); 1",
            "assertion '(f { a = false; })' failed",
        ),
        (
            "import /nonexistent-kiln-dir/x.nix",
            "getting status of '/nonexistent-kiln-dir/x.nix': No such file or directory",
        ),
    ]);
}
