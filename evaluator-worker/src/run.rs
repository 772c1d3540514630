//! `nix-instantiate --eval` as a library call, shared by `kiln instantiate`
//! and the language tests.

use crate::{parse_nix_path, Evaluator, Options, SearchPathEntry, Value};
use std::path::PathBuf;

/// An automatic argument (`--arg NAME EXPR` or `--argstr NAME STR`).
#[derive(Debug, Clone)]
pub enum AutoArg {
    /// Nix expression, evaluated lazily.
    Expr(String),
    /// Plain string.
    Str(String),
}

/// What to evaluate and how to print it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// File to evaluate (ignored when `expr` is set).
    pub file: Option<PathBuf>,
    /// `-E` expression.
    pub expr: Option<String>,
    /// The text of standard input, when the file is `-` (read by the
    /// caller): evaluated as an expression, relative paths against `cwd`.
    pub stdin: Option<String>,
    /// `-A` attribute paths (none means the whole value).
    pub attr_paths: Vec<String>,
    /// `--arg`/`--argstr`.
    pub args: Vec<(String, AutoArg)>,
    /// `-I` entries.
    pub include: Vec<String>,
    /// `NIX_PATH` value.
    pub nix_path: Option<String>,
    /// `--eval`: print values; otherwise print the `.drv` paths of the derivations.
    pub eval: bool,
    /// `--strict`.
    pub strict: bool,
    /// `--json`.
    pub json: bool,
    /// `--xml`.
    pub xml: bool,
    /// `--parse`: parse only.
    pub parse_only: bool,
    /// Write what evaluation adds to the store (sources, `toFile` texts,
    /// `.drv` files) into this directory, which stands in for `/nix/store`,
    /// as `nix-instantiate` writes them to its store. `None` computes the
    /// paths without writing anything, like `nix-instantiate --eval`.
    pub store_dir: Option<PathBuf>,
    /// `--show-trace`.
    pub show_trace: bool,
    /// Directory relative paths in `-E`/`--arg` resolve against.
    pub cwd: PathBuf,
    /// Free everything the evaluation allocated before returning, as a
    /// process evaluating request after request needs. Off by default:
    /// `nix-instantiate`-style callers exit right after, and freeing a big
    /// evaluation takes a noticeable share of its time (see
    /// [`crate::Options::leak_on_drop`]).
    pub release_memory: bool,
    /// Parse files ahead on a second thread (default on; see
    /// [`crate::Options::parse_ahead`]).
    pub parse_ahead: Option<bool>,
    /// `builtins.currentSystem` (`--system`); default: this machine's.
    pub system: Option<String>,
}

/// Evaluate `req` as `nix-instantiate --eval` would; `Ok` is standard output,
/// `Err` the formatted error message. Must run on a thread with a big stack
/// (see [`crate::with_big_stack`]).
pub fn eval_request(req: &Request) -> Result<String, String> {
    let mut search_path: Vec<SearchPathEntry> = req
        .include
        .iter()
        .map(|s| SearchPathEntry::parse(s))
        .collect();
    if let Some(np) = &req.nix_path {
        search_path.extend(parse_nix_path(np));
    }
    let store: Option<std::rc::Rc<dyn crate::store::Store>> = match &req.store_dir {
        Some(dir) => Some(std::rc::Rc::new(
            crate::store::DirStore::new(dir).map_err(|e| format!("error: {e}"))?,
        )),
        None => None,
    };
    let evr = Evaluator::new(Options {
        search_path,
        store,
        leak_on_drop: !req.release_memory,
        system: req.system.clone(),
        parse_ahead: req.parse_ahead,
        ..Default::default()
    });
    let fmt = |e: crate::Error| evr.format_error(&e, req.show_trace);
    let expr = match (&req.expr, &req.stdin) {
        (Some(text), _) | (None, Some(text)) => evr.parse_string(text, &req.cwd).map_err(fmt)?,
        (None, None) => {
            let file = req
                .file
                .clone()
                .unwrap_or_else(|| PathBuf::from("default.nix"));
            let file = lookup_file_arg(&evr, &file, &req.cwd).map_err(fmt)?;
            evr.parse_file(&file).map_err(fmt)?
        }
    };
    if req.parse_only {
        return parsed_text(req);
    }
    let args = auto_args(&evr, &req.args, &req.cwd).map_err(fmt)?;
    let root = evr.eval_expr(&expr).map_err(fmt)?;
    let paths = if req.attr_paths.is_empty() {
        vec![String::new()]
    } else {
        req.attr_paths.clone()
    };
    let mut out = String::new();
    for p in paths {
        let v = evr.select_attr_path(&root, &p, &args).map_err(fmt)?;
        if !req.eval {
            for r in roots(&evr, &v, &args).map_err(fmt)? {
                out.push_str(&r.drv_path);
                if r.output != "out" {
                    out.push('!');
                    out.push_str(&r.output);
                }
                out.push('\n');
            }
            continue;
        }
        let text = if req.xml {
            evr.force_deep(&v).map_err(fmt)?;
            evr.print_xml(&v).map_err(fmt)?
        } else if req.json {
            let mut s = evr.print_json(&v).map_err(fmt)?;
            s.push('\n');
            s
        } else {
            let mut s = evr.print(&v, req.strict).map_err(fmt)?;
            s.push('\n');
            s
        };
        out.push_str(&text);
    }
    if !req.release_memory {
        // The caller exits right after: what the evaluation built is left
        // for the process exit to reclaim instead of being freed object by
        // object (the parse cache, the sources and every value).
        std::mem::forget((root, args, expr, evr));
    }
    Ok(out)
}

/// The file a command-line argument names, as Nix's `lookupFileArg`:
/// `<name>` is looked up in the search path, anything else is relative to
/// `cwd`.
fn lookup_file_arg(
    evr: &Evaluator,
    file: &std::path::Path,
    cwd: &std::path::Path,
) -> crate::Result<PathBuf> {
    let text = file.to_string_lossy();
    if let Some(name) = text.strip_prefix('<').and_then(|t| t.strip_suffix('>')) {
        let find = evr.eval_string("builtins.findFile builtins.nixPath", cwd)?;
        let found = evr
            .ev
            .call(&find, Value::string(name), crate::pos::Pos::START)?;
        return match evr.ev.force(&found)? {
            Value::Path(p) => Ok(PathBuf::from(p.as_str())),
            other => Err(crate::Error::eval(format!(
                "the search path gave {} for '{text}'",
                other.type_desc()
            ))),
        };
    }
    Ok(if file.is_absolute() {
        file.to_path_buf()
    } else {
        cwd.join(file)
    })
}

/// `--parse`: the expression as Nix 2.8 prints its parse tree.
fn parsed_text(req: &Request) -> Result<String, String> {
    let home = std::env::var("HOME").unwrap_or_default();
    if let Some(text) = &req.expr {
        return crate::show::show_parsed(text, &req.cwd.display().to_string(), &home);
    }
    let file = req
        .file
        .clone()
        .unwrap_or_else(|| PathBuf::from("default.nix"));
    let mut file = req.cwd.join(file);
    if file.is_dir() {
        file.push("default.nix");
    }
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("error: opening file '{}': {e}", file.display()))?;
    let base = file
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "/".into());
    crate::show::show_parsed(&text, &base, &home)
}

/// Whether an attribute name is one `nix-instantiate` looks into
/// (`[A-Za-z_][A-Za-z0-9-_+]*`, Nix's `attrRegex`).
fn is_plain_attr_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+'))
}

/// Finds the derivations in a value as Nix's `getDerivations` does and
/// returns, for each, the line `nix-instantiate` prints: the `.drv` path,
/// with `!output` when the selected output is not `out`.
struct DrvCollector<'a> {
    evr: &'a Evaluator,
    args: &'a crate::value::Attrs,
    /// Derivations already found (the same set reached twice counts once).
    done: std::collections::HashSet<*const crate::value::Attrs>,
    /// Derivations in the order found.
    found: Vec<std::rc::Rc<crate::value::Attrs>>,
}

impl DrvCollector<'_> {
    /// Nix's `getDerivation`: `Ok(true)` when `v` is not a derivation (the
    /// caller may look inside it), else records it and returns `Ok(false)`.
    fn derivation(&mut self, v: &Value) -> crate::Result<bool> {
        let Value::Attrs(a) = self.evr.ev.force(v)? else {
            return Ok(true);
        };
        if !crate::ops::is_derivation(&self.evr.ev, &a)? {
            return Ok(true);
        }
        if self.done.insert(std::rc::Rc::as_ptr(&a)) {
            let name = a
                .get("name")
                .ok_or_else(|| crate::Error::eval("derivation name missing"))?;
            self.evr.ev.expect_string(name, NO_POS)?;
            self.found.push(a);
        }
        Ok(false)
    }

    /// Nix's `getDerivations`.
    fn derivations(&mut self, v: &Value) -> crate::Result<()> {
        let v = self.evr.auto_call(v, self.args)?;
        if !self.derivation(&v)? {
            return Ok(());
        }
        match &v {
            Value::Attrs(a) => {
                for attr in a.iter() {
                    if !is_plain_attr_name(attr.name.as_str()) {
                        continue;
                    }
                    if self.derivation(&attr.value)? {
                        if let Value::Attrs(inner) = self.evr.ev.force(&attr.value)? {
                            if let Some(r) = inner.get("recurseForDerivations") {
                                if self.evr.ev.expect_bool(r, NO_POS)? {
                                    self.derivations(&attr.value)?;
                                }
                            }
                        }
                    }
                }
                Ok(())
            }
            Value::List(l) => {
                for x in l.iter() {
                    if self.derivation(x)? {
                        self.derivations(x)?;
                    }
                }
                Ok(())
            }
            _ => Err(crate::Error::eval(
                "expression does not evaluate to a derivation (or a set or list of those)",
            )),
        }
    }
}

const NO_POS: crate::pos::Pos = crate::pos::Pos::START;

/// The `--arg`/`--argstr` values as the attribute set functions are
/// auto-called with; expressions resolve relative paths against `cwd`.
pub fn auto_args(
    evr: &Evaluator,
    args: &[(String, AutoArg)],
    cwd: &std::path::Path,
) -> crate::Result<crate::value::Attrs> {
    let mut entries = Vec::new();
    for (name, a) in args {
        let v = match a {
            AutoArg::Str(s) => Value::string(s.clone()),
            AutoArg::Expr(e) => {
                let ex = evr.parse_string(e, cwd)?;
                Value::Thunk(crate::value::Thunk::new(
                    crate::eval::Env::new(crate::eval::Slots::new(), None),
                    ex,
                ))
            }
        };
        entries.push(crate::value::Attr {
            name: name.as_str().into(),
            value: v,
            pos: None,
        });
    }
    Ok(crate::value::Attrs::from_unsorted(entries))
}

/// A derivation found in a value, as `nix-instantiate` and `nix-build` see
/// it: its `.drv` path, the selected output and that output's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// The `.drv` store path.
    pub drv_path: String,
    /// `outputName` (`out` unless an output was selected).
    pub output: String,
    /// The selected output's path (`outPath`).
    pub out_path: String,
}

/// The derivations in `v`, found as Nix's `getDerivations` does.
pub fn roots(evr: &Evaluator, v: &Value, args: &crate::value::Attrs) -> crate::Result<Vec<Root>> {
    let mut c = DrvCollector {
        evr,
        args,
        done: Default::default(),
        found: Vec::new(),
    };
    c.derivations(v)?;
    let mut found = Vec::with_capacity(c.found.len());
    for a in &c.found {
        let drv = a
            .get("drvPath")
            .ok_or_else(|| crate::Error::eval("derivation has no 'drvPath' attribute"))?;
        let drv_path = evr.ev.coerce_to_string(drv, NO_POS, false, false)?.s;
        let output = match a.get("outputName") {
            Some(o) => evr.ev.expect_string(o, NO_POS)?.s.clone(),
            None => String::new(),
        };
        if output.is_empty() {
            return Err(crate::Error::eval(format!(
                "derivation '{drv_path}' lacks an 'outputName' attribute"
            )));
        }
        let out = a
            .get("outPath")
            .ok_or_else(|| crate::Error::eval("derivation has no 'outPath' attribute"))?;
        let out_path = evr.ev.coerce_to_string(out, NO_POS, false, false)?.s;
        found.push(Root {
            drv_path,
            output,
            out_path,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instantiate(expr: &str) -> Result<String, String> {
        let req = Request {
            expr: Some(expr.to_string()),
            cwd: "/".into(),
            ..Default::default()
        };
        crate::with_big_stack(move || eval_request(&req)).expect("no panic")
    }

    const D: &str = r#"derivation { name = "a"; builder = "b"; system = "c"; }"#;
    const A: &str = "/nix/store/arhvjaf6zmlyn8vh8fgn55rpwnxq0n7l-a.drv";

    #[test]
    fn prints_drv_paths_like_nix_instantiate() {
        assert_eq!(instantiate(D).unwrap(), format!("{A}\n"));
        // A set reached twice is printed once; lists are walked; non-plain
        // attribute names and non-recursed sets are skipped.
        let e = format!(
            "let d = {D}; in {{ x = d; y = d; \"a.b\" = d // {{ name = \"z\"; }}; \
             n = {{ inner = d // {{ name = \"n\"; }}; }}; l = [ d ]; }}"
        );
        assert_eq!(instantiate(&e).unwrap(), format!("{A}\n"));
        let e = format!("[ ({D}) [ ] ]");
        assert_eq!(instantiate(&e).unwrap(), format!("{A}\n"));
        assert_eq!(instantiate("{ }").unwrap(), "");
        let e = format!("let d = {D} // {{ outputName = \"dev\"; }}; in d");
        assert_eq!(instantiate(&e).unwrap(), format!("{A}!dev\n"));
        let e = format!("{{ s = {{ recurseForDerivations = true; d = {D}; }}; }}");
        assert_eq!(instantiate(&e).unwrap(), format!("{A}\n"));
        let err = instantiate("1").unwrap_err();
        assert!(err.contains("does not evaluate to a derivation"), "{err}");
    }
}
