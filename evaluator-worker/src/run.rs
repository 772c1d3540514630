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
    /// `--show-trace`.
    pub show_trace: bool,
    /// Directory relative paths in `-E`/`--arg` resolve against.
    pub cwd: PathBuf,
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
    let evr = Evaluator::new(Options {
        search_path,
        ..Default::default()
    });
    let fmt = |e: crate::Error| evr.format_error(&e, req.show_trace);
    let expr = match &req.expr {
        Some(text) => evr.parse_string(text, &req.cwd).map_err(fmt)?,
        None => {
            let file = req
                .file
                .clone()
                .unwrap_or_else(|| PathBuf::from("default.nix"));
            let file = if file.is_absolute() {
                file
            } else {
                req.cwd.join(file)
            };
            evr.parse_file(&file).map_err(fmt)?
        }
    };
    if req.parse_only {
        return Ok(String::new());
    }
    let mut entries = Vec::new();
    for (name, a) in &req.args {
        let v = match a {
            AutoArg::Str(s) => Value::string(s.clone()),
            AutoArg::Expr(e) => {
                let ex = evr.parse_string(e, &req.cwd).map_err(fmt)?;
                Value::Thunk(crate::value::Thunk::new(
                    crate::eval::Env::new(Vec::new(), None),
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
    let args = crate::value::Attrs::from_unsorted(entries);
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
            let mut drvs = Vec::new();
            collect_drvs(&evr, &v, true, &mut drvs).map_err(fmt)?;
            if drvs.is_empty() {
                return Err("error: expression does not evaluate to a derivation (or a set or list of those)".into());
            }
            for d in drvs {
                out.push_str(&d);
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
    Ok(out)
}

/// The `.drv` paths (with `!output` for non-default outputs) of the
/// derivations in `v`, as `nix-instantiate` finds them.
fn collect_drvs(evr: &Evaluator, v: &Value, top: bool, out: &mut Vec<String>) -> crate::Result<()> {
    let pos = crate::pos::Pos {
        file: 0,
        line: 1,
        col: 1,
    };
    let v = evr.ev.force(v)?;
    match &v {
        Value::Attrs(a) => {
            if crate::ops::is_derivation(&evr.ev, a)? {
                let drv = a
                    .get("drvPath")
                    .ok_or_else(|| crate::Error::eval("derivation has no 'drvPath'"))?;
                let drv = evr.ev.expect_string(drv, pos)?.s.clone();
                let output = match a.get("outputName") {
                    Some(o) => evr.ev.expect_string(o, pos)?.s.clone(),
                    None => "out".into(),
                };
                out.push(if output == "out" {
                    drv
                } else {
                    format!("{drv}!{output}")
                });
                return Ok(());
            }
            let recurse = match a.get("recurseForDerivations") {
                Some(r) => matches!(evr.ev.force(r)?, Value::Bool(true)),
                None => false,
            };
            if top || recurse {
                for attr in a.iter() {
                    let x = evr.ev.force(&attr.value)?;
                    if let Value::Attrs(_) = x {
                        collect_drvs(evr, &x, false, out)?;
                    }
                }
            }
        }
        Value::List(l) if top => {
            for x in l.iter() {
                collect_drvs(evr, x, false, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}
