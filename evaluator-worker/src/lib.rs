//! Kiln's lazy Nix evaluator: parses with rnix, lowers to a compact IR with
//! lexically resolved variables, and evaluates it lazily with thunks.
//!
//! Entry point: [`Evaluator`]. Run deep evaluations inside [`with_big_stack`].

pub mod builtins;
pub mod corepkgs;
pub mod error;
pub mod eval;
pub mod ir;
pub mod lower;
pub mod ops;
pub mod pos;
pub mod prefetch;
pub mod print;
pub mod run;
pub mod shipped;
pub mod show;
pub mod store;
pub mod strlit;
pub mod value;
pub mod worker;

pub use error::{Error, ErrorKind, Result};
pub use eval::{Eval, SearchPathEntry};
pub use value::Value;

use std::path::Path;
use std::rc::Rc;

/// Stack size of the evaluation thread made by [`with_big_stack`].
pub const EVAL_STACK_SIZE: usize = 1 << 30;

/// Run `f` on a new thread with a large stack (evaluation recurses deeply).
pub fn with_big_stack<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::Result<T> {
    match std::thread::Builder::new()
        .name("kiln-eval".into())
        .stack_size(EVAL_STACK_SIZE)
        .spawn(f)
    {
        Ok(h) => h.join(),
        Err(e) => Err(Box::new(e.to_string())),
    }
}

/// Options for a new [`Evaluator`].
#[derive(Default)]
pub struct Options {
    /// `-I` entries, then `NIX_PATH` entries.
    pub search_path: Vec<SearchPathEntry>,
    /// The store; defaults to an in-memory [`store::MemStore`].
    pub store: Option<Rc<dyn store::Store>>,
    /// Maximum evaluation depth (default 10,000,000 nested evaluations:
    /// in practice the stack budget decides).
    pub max_depth: Option<usize>,
    /// Bytes of stack the evaluation may use (default seven eighths of
    /// [`EVAL_STACK_SIZE`]); the evaluating thread's stack must be larger.
    pub stack_budget: Option<usize>,
    /// Skip freeing the evaluation's values when the evaluator is dropped:
    /// their reference cycles are then neither recorded nor broken, which
    /// saves a few percent of evaluation time and the time freeing takes,
    /// but leaks most of what the evaluation allocated. Only for a process
    /// that exits right after (`kiln instantiate`); a long-lived one, like
    /// the evaluator worker, must leave it off.
    pub leak_on_drop: bool,
    /// Stops the evaluation (with an error) once set.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Parse and lower files named by the evaluation on a second thread
    /// before they are imported (default on; off only to measure what it
    /// gains, as the CLI does for `KILN_EVAL_PARSE_AHEAD=0`).
    pub parse_ahead: Option<bool>,
    /// `builtins.currentSystem`; default: this machine's ([`host_system`]),
    /// as Nix's `system` setting defaults to the platform it runs on.
    pub system: Option<String>,
}

/// This machine's Nix system name (`x86_64-linux`, `aarch64-darwin`, …).
pub fn host_system() -> String {
    let arch = match std::env::consts::ARCH {
        "x86" => "i686",
        other => other,
    };
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    format!("{arch}-{os}")
}

/// Parse a `NIX_PATH`-style list (`a:b=c`).
pub fn parse_nix_path(s: &str) -> Vec<SearchPathEntry> {
    s.split(':')
        .filter(|e| !e.is_empty())
        .map(SearchPathEntry::parse)
        .collect()
}

/// A Nix evaluator.
pub struct Evaluator {
    /// The evaluator state.
    pub ev: Eval,
}

/// Splits an `-A` attribute path as Nix does: on dots, except inside double
/// quotes (`a."b.c".d` is `a`, `b.c`, `d`).
pub fn split_attr_path(path: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in path.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        return Err(Error::eval(format!(
            "missing closing quote in selection path '{path}'"
        )));
    }
    out.push(cur);
    Ok(out)
}

impl Evaluator {
    /// A new evaluator.
    pub fn new(opts: Options) -> Evaluator {
        let store = opts
            .store
            .unwrap_or_else(|| Rc::new(store::MemStore::new()));
        let system = opts.system.unwrap_or_else(|| host_system().clone());
        let mut ev = Eval::new(
            opts.search_path,
            store,
            &system,
            opts.parse_ahead.unwrap_or(true),
        );
        ev.max_depth = opts.max_depth.unwrap_or(10_000_000);
        if let Some(b) = opts.stack_budget {
            ev.stack_budget = b;
        }
        ev.cancel = opts.cancel;
        // Nothing the evaluator made so far (the builtins) is in a cycle
        // that needs recording.
        ev.free_on_drop = !opts.leak_on_drop;
        Evaluator { ev }
    }

    /// Parse (and lower) a file without evaluating it.
    pub fn parse_file(&self, path: &Path) -> Result<Rc<ir::Expr>> {
        self.ev.parse_file(path, None)
    }

    /// Parse an expression given as text; relative paths resolve against `base_dir`.
    pub fn parse_string(&self, text: &str, base_dir: &Path) -> Result<Rc<ir::Expr>> {
        self.ev.parse(
            text,
            "«string»".into(),
            None,
            &base_dir.display().to_string(),
            None,
        )
    }

    /// Evaluate a parsed expression to weak head normal form.
    pub fn eval_expr(&self, e: &Rc<ir::Expr>) -> Result<Value> {
        self.ev.eval(&eval::Env::new(eval::Slots::new(), None), e)
    }

    /// Evaluate a file.
    pub fn eval_file(&self, path: &Path) -> Result<Value> {
        self.ev.eval_file(path)
    }

    /// Evaluate an expression string.
    pub fn eval_string(&self, text: &str, base_dir: &Path) -> Result<Value> {
        let e = self.parse_string(text, base_dir)?;
        self.eval_expr(&e)
    }

    /// Call `v` with the automatic arguments if it is a function taking a set
    /// (what `nix-instantiate` does with `--arg`/`--argstr`).
    pub fn auto_call(&self, v: &Value, args: &value::Attrs) -> Result<Value> {
        let v = self.ev.force(v)?;
        match &v {
            Value::Lambda(c) if c.def.formals.is_some() => {
                let formals = c.def.formals.as_ref().expect("checked");
                let mut entries = Vec::new();
                for a in args.iter() {
                    if formals.ellipsis || formals.entries.iter().any(|(n, _)| n == &a.name) {
                        entries.push(a.clone());
                    }
                }
                let pos = c.def.pos;
                let arg = Value::Attrs(Rc::new(value::Attrs::from_sorted(entries)));
                self.ev.call(&v, arg, pos)
            }
            Value::Attrs(a) if a.get("__functor").is_some() => {
                let pos = pos::Pos::START;
                self.ev.call(&v, Value::Attrs(Rc::new(args.clone())), pos)
            }
            _ => Ok(v),
        }
    }

    /// Select `-A` attribute path `path` (dot-separated; numbers index lists).
    pub fn select_attr_path(&self, v: &Value, path: &str, args: &value::Attrs) -> Result<Value> {
        let mut v = self.auto_call(v, args)?;
        if path.is_empty() {
            return Ok(v);
        }
        for comp in split_attr_path(path)? {
            let comp = comp.as_str();
            v = self.ev.force(&v)?;
            v = match &v {
                Value::Attrs(a) => match a.get(comp) {
                    Some(x) => x.clone(),
                    None => return Err(Error::eval(format!("attribute '{comp}' in selection path '{path}' not found"))),
                },
                Value::List(l) => match comp.parse::<usize>().ok().and_then(|i| l.get(i)) {
                    Some(x) => x.clone(),
                    None => return Err(Error::eval(format!("invalid index '{comp}' in selection path '{path}'"))),
                },
                other => {
                    return Err(Error::eval(format!(
                        "the expression selected by the selection path '{path}' should be a set but is {}",
                        other.type_desc()
                    )))
                }
            };
            v = self.auto_call(&v, args)?;
        }
        self.ev.force(&v)
    }

    /// Force `v` completely (`--strict`).
    pub fn force_deep(&self, v: &Value) -> Result<()> {
        builtins::deep_force(&self.ev, v)
    }

    /// Print as `nix-instantiate --eval [--strict]`.
    pub fn print(&self, v: &Value, strict: bool) -> Result<String> {
        if strict {
            self.force_deep(v)?;
        }
        print::print_value(&self.ev, v, strict)
    }

    /// Print as `--json`.
    pub fn print_json(&self, v: &Value) -> Result<String> {
        let mut out = String::new();
        let mut ctx = Vec::new();
        print::to_json(&self.ev, v, pos::Pos::START, &mut out, &mut ctx)?;
        Ok(out)
    }

    /// Print as `--xml`.
    pub fn print_xml(&self, v: &Value) -> Result<String> {
        let mut ctx = Vec::new();
        print::to_xml(&self.ev, v, pos::Pos::START, &mut ctx)
    }

    /// Render an error the way Nix 2.8 does: message, position, source line with
    /// a caret, and (with `show_trace`) the trace frames.
    pub fn format_error(&self, err: &Error, show_trace: bool) -> String {
        let mut out = format!("error: {}", err.kind);
        let sources = self.ev.sources.borrow();
        let snippet = |out: &mut String, pos: pos::Pos| {
            let Some((src, line, col)) = sources.locate(pos) else {
                return;
            };
            out.push_str(&format!("\n\n       at {}:{line}:{col}:\n\n", src.name));
            let width = (line + 1).to_string().len();
            if line > 1 {
                if let Some(l) = src.line_text(line - 1) {
                    out.push_str(&format!("{:>w$}| {}\n", line - 1, l, w = width + 12));
                }
            }
            if let Some(l) = src.line_text(line) {
                out.push_str(&format!("{:>w$}| {}\n", line, l, w = width + 12));
                out.push_str(&format!(
                    "{:>w$}| {}^\n",
                    "",
                    " ".repeat(col as usize - 1),
                    w = width + 12
                ));
            }
            if let Some(l) = src.line_text(line + 1) {
                if !l.is_empty() || src.line_text(line + 2).is_some() {
                    out.push_str(&format!("{:>w$}| {}\n", line + 1, l, w = width + 12));
                }
            }
        };
        if let Some(pos) = err.pos {
            snippet(&mut out, pos);
        }
        if show_trace {
            for (pos, msg) in &err.trace {
                out.push_str(&format!("\n\n       … {msg}"));
                if let Some(p) = pos {
                    snippet(&mut out, *p);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(src: &str) -> std::result::Result<String, String> {
        let src = src.to_string();
        with_big_stack(move || {
            let e = Evaluator::new(Options::default());
            let v = e
                .eval_string(&src, Path::new("/"))
                .map_err(|err| e.format_error(&err, false))?;
            e.print(&v, true).map_err(|err| e.format_error(&err, false))
        })
        .expect("no panic")
    }

    /// Files parsed ahead on the second thread evaluate, and fail, exactly
    /// as files parsed on the evaluation thread do.
    #[test]
    fn files_parsed_ahead_behave_as_parsed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/default.nix"), "{ x }: x * 2").unwrap();
        std::fs::write(d.join("ok.nix"), "42").unwrap();
        std::fs::write(d.join("crlf.nix"), "let\r\n  a = 1;\r\nin a + 1").unwrap();
        std::fs::write(d.join("bad.nix"), "{\r\n  a = 1;\r\n  b = ;\r\n}").unwrap();
        let main = "[ (import ./ok.nix) (import ./sub { x = 4; }) (import ./crlf.nix) \
                    (builtins.tryEval (import ./bad.nix)).success ]";
        std::fs::write(d.join("main.nix"), main).unwrap();
        let root = d.to_path_buf();
        for ahead in [true, false] {
            let root = root.clone();
            let out = with_big_stack(move || {
                let e = Evaluator::new(Options {
                    parse_ahead: Some(ahead),
                    ..Options::default()
                });
                let v = e.eval_file(&root.join("main.nix"));
                let v = v.and_then(|v| e.print(&v, true));
                v.map_err(|err| e.format_error(&err, false))
            })
            .expect("no panic");
            let err = out.expect_err("bad.nix is a parse error, which tryEval does not catch");
            assert!(
                err.contains("syntax error, unexpected ';'") && err.contains("bad.nix:3:7"),
                "parse ahead {ahead}: {err}"
            );
        }
        let root2 = root.clone();
        let out = with_big_stack(move || {
            let e = Evaluator::new(Options::default());
            let v = e.eval_string(
                "[ (import ./ok.nix) (import ./sub { x = 4; }) (import ./crlf.nix) ]",
                &root2,
            )?;
            e.print(&v, true)
        })
        .expect("no panic")
        .map_err(|e| e.to_string());
        assert_eq!(out.unwrap(), "[ 42 8 2 ]");
    }

    /// Files lowered on the parsing thread evaluate as if lowered in place:
    /// the same values, the same errors at the same positions, and
    /// `scopedImport` still sees its own names.
    #[test]
    fn files_lowered_ahead_behave_as_lowered_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let files = [
            ("fun.nix", "{ a, b ? 2 }: let c = a * b; in { inherit c; s = \"${toString c}!\"; p = ./fun.nix; }"),
            ("undef.nix", "{ a = 1;\n  b = nope; }"),
            ("dup.nix", "{ a = 1;\n  a = 2; }"),
            // Lowers on its own (`magic` left to `with`), but scopedImport binds it.
            ("scoped.nix", "with { }; magic + 1"),
            ("chain.nix", "import ./leaf.nix"),
            ("leaf.nix", "builtins.length [ 1 2 3 ]"),
        ];
        for (name, text) in files {
            std::fs::write(d.join(name), text).unwrap();
        }
        let cases = [
            "(import ./fun.nix { a = 3; })",
            "(import ./undef.nix)",
            "(import ./dup.nix)",
            "(scopedImport { magic = 41; } ./scoped.nix)",
            "(import ./chain.nix)",
        ];
        let root = d.to_path_buf();
        let run = move |ahead: bool| {
            let root = root.clone();
            with_big_stack(move || {
                let e = Evaluator::new(Options {
                    parse_ahead: Some(ahead),
                    ..Options::default()
                });
                // Name every file, let the parsing thread lower them (and
                // what they name), then evaluate.
                e.eval_string(
                    "[ ./fun.nix ./undef.nix ./dup.nix ./scoped.nix ./chain.nix ]",
                    &root,
                )
                .unwrap();
                let lowered = e.ev.prefetcher().map(|pf| {
                    pf.settle();
                    pf.ready_files()
                });
                let out: Vec<String> = cases
                    .iter()
                    .map(|c| {
                        let v = e.eval_string(c, &root).and_then(|v| e.print(&v, true));
                        v.unwrap_or_else(|err| e.format_error(&err, false))
                    })
                    .collect();
                (lowered, out)
            })
            .expect("no panic")
        };
        let (lowered, ahead) = run(true);
        let (_, in_place) = run(false);
        let lowered = lowered.expect("parsing ahead is on");
        let state = |name: &str| {
            lowered
                .iter()
                .find(|(p, _)| p.ends_with(name))
                .map(|(_, l)| *l)
        };
        assert_eq!(state("fun.nix"), Some(true));
        assert_eq!(
            state("leaf.nix"),
            Some(true),
            "named by a file lowered ahead"
        );
        assert_eq!(
            state("undef.nix"),
            Some(false),
            "does not lower: parsed only"
        );
        assert_eq!(state("dup.nix"), Some(false));
        assert_eq!(state("scoped.nix"), Some(true));
        assert_eq!(ahead, in_place);
        assert!(
            ahead[0].contains("c = 6") && ahead[0].contains("fun.nix"),
            "{}",
            ahead[0]
        );
        assert!(
            ahead[1].contains("undefined variable 'nope'") && ahead[1].contains("undef.nix:2:"),
            "{}",
            ahead[1]
        );
        assert!(ahead[2].contains("dup.nix:2:"), "{}", ahead[2]);
        assert_eq!(ahead[3], "42");
        assert_eq!(ahead[4], "3");
    }

    #[test]
    fn language_basics() {
        assert_eq!(
            eval("let x = 1; in with { x = 2; y = 3; }; [ x y ]").unwrap(),
            "[ 1 3 ]"
        );
        assert_eq!(eval("with { a = 1; }; with { a = 2; }; a").unwrap(), "2");
        assert_eq!(
            eval("rec { a = b; b = 2; inherit (x) c; x = { c = 3; }; }.c").unwrap(),
            "3"
        );
        assert_eq!(
            eval("({ a, b ? a + 1, ... }@args: [ a b args.z ]) { a = 1; z = 0; }").unwrap(),
            "[ 1 2 0 ]"
        );
        assert_eq!(
            eval("''\n  a\n    b ''${x}\n''").unwrap(),
            "\"a\\n  b \\${x}\\n\""
        );
        assert_eq!(
            eval("{ a.b = 1; a.c = 2; }").unwrap(),
            "{ a = { b = 1; c = 2; }; }"
        );
        assert_eq!(
            eval("9223372036854775807 + 1").unwrap(),
            "-9223372036854775808"
        );
        assert_eq!(
            eval("[ (1 / 2) (1.0 / 2) (2 < 2.5) ]").unwrap(),
            "[ 0 0.5 true ]"
        );
    }

    #[test]
    fn generic_closure_dedupes_by_nix_equality_and_scales() {
        // 1 and 1.0 are the same key; strings ignore context; other keys
        // (lists) are compared structurally. Keys of kinds Nix cannot
        // compare fail, as in Nix 2.8 (`nix-instantiate --eval --strict`).
        let e = "builtins.genericClosure { startSet = [ { key = 1; } { key = 1.0; } { key = [ 1 ]; } ]; \
                 operator = x: [ { key = [ 1 ]; } { key = \"${toString 2}\"; } { key = \"2\"; } ]; }";
        assert!(eval(e)
            .unwrap_err()
            .contains("cannot compare a list with an integer"));
        let e = "builtins.genericClosure { startSet = [ { key = 1; } { key = 1.0; } ]; operator = x: [ ]; }";
        assert_eq!(eval(e).unwrap(), "[ { key = 1; } ]");
        let e = "builtins.genericClosure { startSet = [ { key = \"${toString 2}\"; } ]; \
                 operator = x: [ { key = \"2\"; } ]; }";
        assert_eq!(eval(e).unwrap(), "[ { key = \"2\"; } ]");
        let e = "builtins.genericClosure { startSet = [ { key = [ 1 ]; } ]; \
                 operator = x: [ { key = [ 1 ]; } { key = [ 2 ]; } ]; }";
        assert_eq!(eval(e).unwrap(), "[ { key = [ 1 ]; } { key = [ 2 ]; } ]");
        // 20,000 keys, each reached twice: linear in the number of keys.
        let big = "builtins.length (builtins.genericClosure { startSet = [ { key = 0; } ]; \
                   operator = x: if x.key < 19999 then [ { key = x.key + 1; } { key = x.key; } ] else [ ]; })";
        assert_eq!(eval(big).unwrap(), "20000");
    }

    #[test]
    fn path_added_flat_is_named_like_nix() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("flat.txt");
        std::fs::write(&f, "hello\n").unwrap();
        let e = format!(
            "builtins.path {{ path = {}; recursive = false; }}",
            f.display()
        );
        // nix-instantiate --eval, Nix 2.8.
        assert_eq!(
            eval(&e).unwrap(),
            "\"/nix/store/6knq949b53ya3z1rs5ips7h7xkb8mw3a-flat.txt\""
        );
        let e = format!(
            "builtins.path {{ path = {}; recursive = false; sha256 = \"sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=\"; }}",
            f.display()
        );
        assert!(eval(&e).is_ok());
        let e = format!(
            "builtins.path {{ path = {}; recursive = false; }}",
            t.path().display()
        );
        assert!(eval(&e).unwrap_err().contains("not a regular file"));
    }

    #[test]
    fn attr_paths_split_like_nix() {
        let parts = |p: &str| split_attr_path(p).unwrap();
        assert_eq!(parts("a.b"), ["a", "b"]);
        assert_eq!(parts("a.\"b.c\".d"), ["a", "b.c", "d"]);
        assert_eq!(parts("0"), ["0"]);
        assert!(split_attr_path("a.\"b").is_err());
    }

    #[test]
    fn intersect_attrs_either_size() {
        let small_first =
            "builtins.intersectAttrs { a = 1; c = 2; } { a = 10; b = 20; c = 30; d = 40; }";
        assert_eq!(eval(small_first).unwrap(), "{ a = 10; c = 30; }");
        let big_first =
            "builtins.intersectAttrs { a = 10; b = 20; c = 30; d = 40; } { a = 1; c = 2; e = 5; }";
        assert_eq!(eval(big_first).unwrap(), "{ a = 1; c = 2; }");
        assert_eq!(
            eval("builtins.intersectAttrs { } { a = 1; }").unwrap(),
            "{ }"
        );
    }

    #[test]
    fn to_file_is_readable_from_a_dir_store() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let out = with_big_stack(move || {
            let store = Rc::new(store::DirStore::new(root.join("store")).unwrap());
            let e = Evaluator::new(Options {
                store: Some(store),
                ..Default::default()
            });
            let src = r#"let f = builtins.toFile "foo" "bar"; in [ f (builtins.readFile f) (builtins.pathExists f) ]"#;
            let v = e.eval_string(src, Path::new("/")).unwrap();
            e.print(&v, true).unwrap()
        })
        .unwrap();
        assert_eq!(
            out,
            "[ \"/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo\" \"bar\" true ]"
        );
    }

    #[test]
    fn path_checks_its_expected_sha256() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "hello\n").unwrap();
        let f = dir.path().join("f").display().to_string();
        // `nix-hash --type sha256 --base32` of the file, and the path Nix
        // 2.8 gives it.
        let ok = format!(
            "builtins.path {{ path = {f}; name = \"f\"; sha256 = \"04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\"; }}"
        );
        let want = "\"/nix/store/xp0dpr9yz5h0fk5c5lpj7zzqjbdh3w8c-f\"";
        assert_eq!(eval(&ok).unwrap(), want);
        let plain = eval(&format!("builtins.path {{ path = {f}; name = \"f\"; }}")).unwrap();
        assert_eq!(plain, want);
        let bad = format!(
            "builtins.path {{ path = {f}; name = \"f\"; sha256 = \"0000000000000000000000000000000000000000000000000000\"; }}"
        );
        let e = eval(&bad).unwrap_err();
        assert!(e.contains("store path mismatch"), "{e}");
    }

    #[test]
    fn deep_but_finite_recursion() {
        assert_eq!(
            eval("builtins.foldl' (a: b: a + b) 0 (builtins.genList (x: x) 100000)").unwrap(),
            "4999950000"
        );
        assert_eq!(
            eval("let f = n: if n == 0 then 0 else 1 + f (n - 1); in f 10000").unwrap(),
            "10000"
        );
    }

    #[test]
    fn runaway_recursion_is_an_error() {
        let e = eval("let x = x; in x").unwrap_err();
        assert!(
            e.starts_with("error: infinite recursion encountered"),
            "{e}"
        );
        assert!(e.contains("at «string»:1:9:"), "{e}");
        let e = eval("let f = n: 1 + f n; in f 1").unwrap_err();
        assert!(e.contains("stack overflow"), "{e}");
    }

    #[test]
    fn parse_errors_name_the_position() {
        let e = eval("1 +").unwrap_err();
        assert!(e.contains("at «string»:1:"), "{e}");
        let e = eval("undefinedThing").unwrap_err();
        assert!(
            e.starts_with("error: undefined variable 'undefinedThing'"),
            "{e}"
        );
    }

    #[test]
    fn derivation_paths_match_nix() {
        // Values from nix-instantiate 2.8.
        let v =
            eval(r#"(derivation { name = "a"; builder = "b"; system = "c"; }).drvPath"#).unwrap();
        assert_eq!(v, "\"/nix/store/arhvjaf6zmlyn8vh8fgn55rpwnxq0n7l-a.drv\"");
        let v =
            eval(r#"(derivation { name = "a"; builder = "b"; system = "c"; }).outPath"#).unwrap();
        assert_eq!(v, "\"/nix/store/s6glliw064sgl7vix22p91cxsx7ml1rf-a\"");
    }
}
