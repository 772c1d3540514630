//! Runs Nix 2.8's language test suite (`../shared/nix-lang-tests/`) through
//! Kiln's evaluator in process, as Nix's `tests/lang.sh` does with
//! `nix-instantiate`.

use kiln_evaluator::run::{eval_request, AutoArg, Request};
use std::path::{Path, PathBuf};

/// Cases where Kiln knowingly differs from Nix 2.8, each with the reason:
/// the one place a case may fail. Every other case must pass, and a case
/// listed here that passes fails the test until it is taken off the list.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[];

#[derive(Debug)]
enum Outcome {
    Pass,
    Fail(String),
}

fn lang_dir() -> PathBuf {
    kiln_tests::shared_dir().join("nix-lang-tests")
}

/// Turn a `.flags` file into request fields (paths written as `lang/...`).
fn apply_flags(req: &mut Request, flags: &str, dir: &Path) -> Result<(), String> {
    let fixed = flags.replace("lang/", &format!("{}/", dir.display()));
    let words: Vec<&str> = fixed.split_whitespace().collect();
    let mut i = 0;
    let next = |i: &mut usize| -> Result<String, String> {
        *i += 1;
        words
            .get(*i)
            .map(|s| s.to_string())
            .ok_or_else(|| format!("flag without value in '{flags}'"))
    };
    while i < words.len() {
        match words[i] {
            "--arg" => {
                let n = next(&mut i)?;
                let v = next(&mut i)?;
                req.args.push((n, AutoArg::Expr(v)));
            }
            "--argstr" => {
                let n = next(&mut i)?;
                let v = next(&mut i)?;
                req.args.push((n, AutoArg::Str(v)));
            }
            "-A" => {
                let v = next(&mut i)?;
                req.attr_paths.push(v);
            }
            "-I" => {
                let v = next(&mut i)?;
                req.include.push(v);
            }
            other => return Err(format!("unknown flag '{other}'")),
        }
        i += 1;
    }
    Ok(())
}

fn base_request(dir: &Path, file: &Path) -> Request {
    Request {
        file: Some(file.to_path_buf()),
        nix_path: Some(format!("{0}/dir3:{0}/dir4", dir.display())),
        eval: true,
        cwd: dir.parent().map(Path::to_path_buf).unwrap_or_default(),
        ..Default::default()
    }
}

/// Run one request on a big-stack thread; a panic is reported as a failure.
fn run(req: Request) -> Result<Result<String, String>, String> {
    kiln_evaluator::with_big_stack(move || eval_request(&req)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        format!("PANIC: {}", msg.unwrap_or_default())
    })
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn eval_okay(dir: &Path, nix: &Path) -> Option<Outcome> {
    let exp = nix.with_extension("exp");
    let exp_xml = nix.with_extension("exp.xml");
    let (expected, xml) = if exp.exists() {
        (read(&exp), false)
    } else if exp_xml.exists() {
        (read(&exp_xml), true)
    } else {
        return None;
    };
    let mut req = base_request(dir, nix);
    req.strict = true;
    req.xml = xml;
    let flags = nix.with_extension("flags");
    if flags.exists() {
        let f = read(&flags);
        if let Err(e) = apply_flags(&mut req, &f, dir) {
            return Some(Outcome::Fail(e));
        }
    }
    Some(match run(req) {
        Err(p) => Outcome::Fail(p),
        Ok(Err(e)) => Outcome::Fail(e),
        Ok(Ok(out)) if out == expected => Outcome::Pass,
        Ok(Ok(out)) => Outcome::Fail(format!(
            "output differs:\n  got:      {out:?}\n  expected: {expected:?}"
        )),
    })
}

#[test]
fn nix_language_suite() {
    std::env::set_var("TEST_VAR", "foo");
    let dir = lang_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("nix-lang-tests directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".nix"))
        .collect();
    names.sort();
    let (mut okay, mut okay_total, mut fail, mut fail_total) = (0, 0, 0, 0);
    let (mut parse_ok, mut parse_total) = (0, 0);
    let (mut exp_ok, mut exp_total) = (0usize, 0usize);
    let mut failures = Vec::new();
    for name in &names {
        let path = dir.join(name);
        if name.starts_with("eval-okay-") {
            let Some(outcome) = eval_okay(&dir, &path) else {
                continue;
            };
            okay_total += 1;
            let plain_exp = path.with_extension("exp").exists();
            exp_total += usize::from(plain_exp);
            match outcome {
                Outcome::Pass => {
                    okay += 1;
                    exp_ok += usize::from(plain_exp);
                }
                Outcome::Fail(why) => failures.push(format!("{name}: {why}")),
            }
        } else if name.starts_with("eval-fail-") {
            fail_total += 1;
            match run(base_request(&dir, &path)) {
                Ok(Err(_)) => fail += 1,
                Ok(Ok(out)) => failures.push(format!("{name}: evaluated to {out:?}")),
                Err(p) => failures.push(format!("{name}: {p}")),
            }
        } else if name.starts_with("parse-okay-") || name.starts_with("parse-fail-") {
            parse_total += 1;
            let mut req = base_request(&dir, &path);
            req.parse_only = true;
            let want_ok = name.starts_with("parse-okay-");
            match run(req) {
                Ok(r) if r.is_ok() == want_ok => parse_ok += 1,
                Ok(r) => failures.push(format!("{name}: parse result {r:?}")),
                Err(p) => failures.push(format!("{name}: {p}")),
            }
        }
    }
    let mut unexpected = Vec::new();
    for f in &failures {
        println!("FAIL {f}");
        let name = f.split(':').next().unwrap_or_default();
        if !KNOWN_DIFFERENCES.iter().any(|(k, _)| *k == name) {
            unexpected.push(f.clone());
        }
    }
    for (known, why) in KNOWN_DIFFERENCES {
        if !failures.iter().any(|f| f.split(':').next() == Some(known)) {
            unexpected.push(format!(
                "{known} now agrees with Nix: remove it from KNOWN_DIFFERENCES ({why})"
            ));
        }
    }
    println!("eval-okay with .exp: {exp_ok}/{exp_total}");
    println!("eval-okay: {okay}/{okay_total}  eval-fail: {fail}/{fail_total}  parse: {parse_ok}/{parse_total}");
    assert!(
        unexpected.is_empty(),
        "{} language cases differ from Nix 2.8:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
    // The suite as shipped: a missing or unreadable part must not pass.
    assert_eq!(exp_total, 93, "eval-okay cases with a .exp");
    assert_eq!(okay_total, 96, "eval-okay cases");
    assert_eq!(fail_total, 17, "eval-fail cases");
    assert_eq!(parse_total, 24, "parse cases");
}

/// What `nix-instantiate --parse` (Nix 2.8.0) printed for each `parse-okay`
/// case (none of them has a relative path, so the text does not depend on
/// where the suite lives).
const PARSE_OKAY_SHOWN: &[(&str, &str)] = &[
    ("parse-okay-1.nix", r#"({ y, z, x }: ((x + y) + z))"#),
    (
        "parse-okay-crlf.nix",
        r#"rec { foo = "multi\nline\n  string\n  test\r"; x = y; y = 123; z = 456; }"#,
    ),
    (
        "parse-okay-dup-attrs-5.nix",
        r#"{ services = { ssh = { enable = true; port = 23; }; }; }"#,
    ),
    (
        "parse-okay-dup-attrs-6.nix",
        r#"{ services = { ssh = { enable = true; port = 23; }; }; }"#,
    ),
    (
        "parse-okay-mixed-nested-attrs-1.nix",
        r#"{ x = { q = 3; y = 3; z = 3; }; }"#,
    ),
    (
        "parse-okay-mixed-nested-attrs-2.nix",
        r#"{ x = { q = 3; y = 3; z = 3; }; }"#,
    ),
    (
        "parse-okay-mixed-nested-attrs-3.nix",
        r#"{ services = { httpd = { enable = true; }; ssh = { enable = true; port = 123; }; }; }"#,
    ),
    (
        "parse-okay-regression-20041027.nix",
        r#"({ fetchurl, stdenv }: ((stdenv).mkDerivation { name = "libXi-6.0.1"; src = (fetchurl { md5 = "7e935a42428d63a387b3c048be0f2756"; url = "http://freedesktop.org/~xlibs/release/libXi-6.0.1.tar.bz2"; }); }))"#,
    ),
    (
        "parse-okay-regression-751.nix",
        r#"(let const = (a: "const"); in ((const { x = "q"; })))"#,
    ),
    (
        "parse-okay-subversion.nix",
        r#"({ fetchurl, localServer ? false, httpServer ? false, sslSupport ? false, pythonBindings ? false, javaSwigBindings ? false, javahlBindings ? false, stdenv, openssl ? null, httpd ? null, db4 ? null, expat, swig ? null, j2sdk ? null }: assert (expat != null); assert (localServer -> (db4 != null)); assert (httpServer -> ((httpd != null) && ((httpd).expat == expat))); assert (sslSupport -> ((openssl != null) && (httpServer -> ((httpd).openssl == openssl)))); assert (pythonBindings -> ((swig != null) && (swig).pythonSupport)); assert (javaSwigBindings -> ((swig != null) && (swig).javaSupport)); assert (javahlBindings -> (j2sdk != null)); ((stdenv).mkDerivation { builder = /foo/bar; db4 = (if localServer then db4 else null); inherit expat ; inherit httpServer ; httpd = (if httpServer then httpd else null); j2sdk = (if javaSwigBindings then (swig).j2sdk else (if javahlBindings then j2sdk else null)); inherit javaSwigBindings ; inherit javahlBindings ; inherit localServer ; name = "subversion-1.1.1"; openssl = (if sslSupport then openssl else null); patches = (if javahlBindings then [ (/javahl.patch) ] else [ ]); python = (if pythonBindings then (swig).python else null); inherit pythonBindings ; src = (fetchurl { md5 = "a180c3fe91680389c210c99def54d9e0"; url = "http://subversion.tigris.org/tarballs/subversion-1.1.1.tar.bz2"; }); inherit sslSupport ; swig = (if (pythonBindings || javaSwigBindings) then swig else null); }))"#,
    ),
    (
        "parse-okay-url.nix",
        r#"[ ("x:x") ("https://svn.cs.uu.nl:12443/repos/trace/trunk") ("http://www2.mplayerhq.hu/MPlayer/releases/fonts/font-arial-iso-8859-1.tar.bz2") ("http://losser.st-lab.cs.uu.nl/~armijn/.nix/gcc-3.3.4-static-nix.tar.gz") ("http://fpdownload.macromedia.com/get/shockwave/flash/english/linux/7.0r25/install_flash_player_7_linux.tar.gz") ("https://ftp5.gwdg.de/pub/linux/archlinux/extra/os/x86_64/unzip-6.0-14-x86_64.pkg.tar.zst") ("ftp://ftp.gtk.org/pub/gtk/v1.2/gtk+-1.2.10.tar.gz") ]"#,
    ),
];

/// `kiln instantiate --parse` prints the parse tree exactly as Nix 2.8 does.
#[test]
fn parse_okay_prints_like_nix() {
    let dir = lang_dir();
    let mut mismatches = Vec::new();
    for (name, expected) in PARSE_OKAY_SHOWN {
        let path = dir.join(name);
        let mut req = base_request(&dir, &path);
        req.parse_only = true;
        match run(req) {
            Ok(Ok(out)) if out == format!("{expected}\n") => {}
            other => mismatches.push(format!("{name}: got {other:?}\n  expected {expected:?}")),
        }
    }
    let names = std::fs::read_dir(&dir)
        .expect("nix-lang-tests directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("parse-okay-") && n.ends_with(".nix"))
        .count();
    assert_eq!(
        names,
        PARSE_OKAY_SHOWN.len(),
        "a parse-okay case has no expected text"
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
