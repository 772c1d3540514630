//! Lowering of rnix's syntax tree into Kiln's IR, resolving every variable to
//! an environment slot (or, failing that, to a dynamic `with` lookup).

use crate::error::{Error, ErrorKind, Result};
use crate::ir::*;
use crate::pos::{Pos, Source};
use crate::strlit::{self, Part};
use crate::value::{Symbol, Value};
use rnix::ast::{self, AstToken};
use rnix::SyntaxKind;
use rowan::ast::AstNode;
use std::collections::HashMap;
use std::rc::Rc;

mod attrs;

/// A lexical scope during lowering.
enum Scope {
    /// A frame of named slots (`let`, `rec`, lambda arguments, `scopedImport`).
    Vars(Vars),
    /// A `with` frame (one slot, the namespace).
    With,
}

/// The names of a frame's slots; large frames also get a hash index so
/// that resolving each variable does not scan thousands of names.
struct Vars {
    names: Vec<Symbol>,
    index: Option<HashMap<Symbol, u32>>,
}

/// Frames with at least this many names get an index.
const INDEX_MIN_NAMES: usize = 16;

impl Scope {
    fn vars(names: Vec<Symbol>) -> Scope {
        let index = (names.len() >= INDEX_MIN_NAMES).then(|| {
            // Later duplicates win, as a search from the end would find them.
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i as u32))
                .collect()
        });
        Scope::Vars(Vars { names, index })
    }
}

impl Vars {
    /// The slot of `name` (the last one if it appears twice).
    fn slot(&self, name: &Symbol) -> Option<u32> {
        match &self.index {
            Some(ix) => ix.get(name).copied(),
            None => self.names.iter().rposition(|s| s == name).map(|i| i as u32),
        }
    }
}

/// An evaluator's names, one [`Symbol`] each, shared by every thread that
/// lowers its files.
pub type SymbolTable = std::sync::Mutex<HashMap<String, Symbol>>;

/// Lowers one file.
pub struct Lowerer<'a> {
    file: u32,
    src: &'a Source,
    base_dir: Rc<str>,
    home: Option<String>,
    globals: &'a HashMap<Symbol, u32>,
    scopes: Vec<Scope>,
    /// The evaluator's symbol table: one shared `Symbol` per name across
    /// every source, so that equal names compare by pointer.
    names: &'a SymbolTable,
    in_rec: bool,
    /// Every constant absolute or relative path literal lowered, resolved
    /// (for [`crate::prefetch`]).
    pub paths: Vec<String>,
}

impl<'a> Lowerer<'a> {
    /// A lowerer for source `file`; `outer` names form an extra outermost frame
    /// (used by `scopedImport`).
    pub fn new(
        file: u32,
        src: &'a Source,
        base_dir: Rc<str>,
        globals: &'a HashMap<Symbol, u32>,
        names: &'a SymbolTable,
        outer: Option<Vec<Symbol>>,
    ) -> Self {
        let scopes = outer.map(|v| vec![Scope::vars(v)]).unwrap_or_default();
        Lowerer {
            file,
            src,
            base_dir,
            home: std::env::var("HOME").ok(),
            globals,
            scopes,
            names,
            in_rec: false,
            paths: Vec::new(),
        }
    }

    /// The name of an identifier node, interned; reads the token's text
    /// in place instead of collecting the node's text into a new string.
    fn ident(&mut self, id: &ast::Ident) -> Symbol {
        let node = id.syntax();
        match node.first_token() {
            Some(t) if t.text_range() == node.text_range() => self.sym(t.text()),
            _ => self.sym(&node.text().to_string()),
        }
    }

    fn sym(&mut self, s: &str) -> Symbol {
        // Locked per name: the evaluation and parsing threads may lower
        // files at the same time.
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = names.get(s) {
            return v.clone();
        }
        let v = Symbol::from(s);
        names.insert(s.to_string(), v.clone());
        v
    }

    fn pos_of(&self, off: rowan::TextSize) -> Pos {
        Pos::new(self.file, u32::from(off))
    }

    fn pos(&self, n: &impl AstNode) -> Pos {
        self.pos_of(n.syntax().text_range().start())
    }

    fn err(&self, pos: Pos, msg: impl Into<String>) -> Error {
        Error::new(ErrorKind::Parse(msg.into())).at(pos)
    }

    /// Lower `parse`, rnix's parse of `text` (with normalised newlines).
    pub fn lower_parse(&mut self, parse: &rnix::Parse<rnix::Root>, text: &str) -> Result<Rc<Expr>> {
        if let Some(e) = parse.errors().first() {
            return Err(self.parse_error(e, text));
        }
        let root = parse.tree();
        let expr = root.expr().ok_or_else(|| {
            self.err(
                self.pos_of(0.into()),
                "syntax error, unexpected end of file",
            )
        })?;
        self.lower(&expr)
    }

    fn parse_error(&self, e: &rnix::ParseError, text: &str) -> Error {
        use rnix::ParseError as P;
        let end = rowan::TextSize::from(text.len() as u32);
        let (off, msg) = match e {
            P::Unexpected(r) | P::UnexpectedExtra(r) | P::UnexpectedDoubleBind(r) => (
                r.start(),
                format!("syntax error, unexpected '{}'", snippet(text, *r)),
            ),
            P::UnexpectedWanted(_, r, _) => (
                r.start(),
                format!("syntax error, unexpected '{}'", snippet(text, *r)),
            ),
            P::UnexpectedEOF | P::UnexpectedEOFWanted(_) => {
                (end, "syntax error, unexpected end of file".into())
            }
            P::DuplicatedArgs(r, name) => (
                r.start(),
                format!("duplicate formal function argument '{name}'"),
            ),
            P::RecursionLimitExceeded => (0.into(), "expression nested too deeply".into()),
            other => (0.into(), format!("syntax error: {other}")),
        };
        self.err(self.pos_of(off.min(end)), msg)
    }

    fn lookup(&mut self, name: &Symbol, pos: Pos, skip: usize) -> Result<Expr> {
        let mut withs = Vec::new();
        let n = self.scopes.len();
        for (level, scope) in self.scopes[..n - skip.min(n)].iter().rev().enumerate() {
            let level = (level + skip) as u32;
            match scope {
                Scope::Vars(v) => {
                    if let Some(slot) = v.slot(name) {
                        return Ok(Expr::Var { level, slot, pos });
                    }
                }
                Scope::With => withs.push(level),
            }
        }
        if let Some(g) = self.globals.get(name) {
            return Ok(Expr::Global(*g));
        }
        if withs.is_empty() {
            return Err(
                Error::new(ErrorKind::UndefinedVariable(name.as_str().to_string())).at(pos),
            );
        }
        Ok(Expr::WithVar {
            name: name.clone(),
            withs,
            pos,
        })
    }

    /// Lower an expression.
    pub fn lower(&mut self, e: &ast::Expr) -> Result<Rc<Expr>> {
        Ok(Rc::new(self.lower_inner(e)?))
    }

    fn lower_inner(&mut self, e: &ast::Expr) -> Result<Expr> {
        let pos = self.pos(e);
        Ok(match e {
            ast::Expr::Paren(p) => return self.lower_inner(&self.child(p.expr(), pos)?),
            ast::Expr::Root(r) => return self.lower_inner(&self.child(r.expr(), pos)?),
            ast::Expr::Literal(l) => match l.kind() {
                ast::LiteralKind::Integer(i) => {
                    Expr::Const(Value::Int(i.value().map_err(|_| {
                        self.err(pos, format!("invalid integer '{}'", i.syntax().text()))
                    })?))
                }
                ast::LiteralKind::Float(f) => {
                    Expr::Const(Value::Float(f.value().map_err(|_| {
                        self.err(pos, format!("invalid float '{}'", f.syntax().text()))
                    })?))
                }
                ast::LiteralKind::Uri(u) => Expr::Const(Value::string(u.syntax().text())),
            },
            ast::Expr::Ident(id) => {
                let name = self.ident(id);
                self.lookup(&name, pos, 0)?
            }
            ast::Expr::Str(s) => self.lower_str(s, pos)?,
            ast::Expr::PathAbs(p) => self.lower_path(PathKind::Absolute, p.parts(), pos)?,
            ast::Expr::PathRel(p) => self.lower_path(PathKind::Relative, p.parts(), pos)?,
            ast::Expr::PathHome(p) => self.lower_path(PathKind::Home, p.parts(), pos)?,
            ast::Expr::PathSearch(p) => {
                let t = p.syntax().text().to_string();
                let inner = t.trim_start_matches('<').trim_end_matches('>').to_string();
                // `<x>` is `__findFile __nixPath "x"`, both names resolved lexically.
                let find = self.sym("__findFile");
                let np = self.sym("__nixPath");
                let f = Rc::new(self.lookup(&find, pos, 0)?);
                let np = Rc::new(self.lookup(&np, pos, 0)?);
                let partial = Rc::new(Expr::Apply { f, arg: np, pos });
                Expr::Apply {
                    f: partial,
                    arg: Rc::new(Expr::Const(Value::string(inner))),
                    pos,
                }
            }
            ast::Expr::List(l) => {
                let items = l
                    .items()
                    .map(|i| self.lower(&i))
                    .collect::<Result<Vec<_>>>()?;
                Expr::List(items)
            }
            ast::Expr::Apply(a) => {
                let f = self.lower(&self.child(a.lambda(), pos)?)?;
                let arg = self.lower(&self.child(a.argument(), pos)?)?;
                Expr::Apply { f, arg, pos }
            }
            ast::Expr::IfElse(i) => Expr::If {
                cond: self.lower(&self.child(i.condition(), pos)?)?,
                then: self.lower(&self.child(i.body(), pos)?)?,
                els: self.lower(&self.child(i.else_body(), pos)?)?,
                pos,
            },
            ast::Expr::Assert(a) => {
                let c = self.child(a.condition(), pos)?;
                // Nix's message shows the condition as its `Expr::show`.
                let text =
                    crate::show::show_expr(&c, &self.base_dir, self.home.as_deref().unwrap_or(""))
                        .unwrap_or_else(|| render_cond(&c));
                Expr::Assert {
                    cond: self.lower(&c)?,
                    body: self.lower(&self.child(a.body(), pos)?)?,
                    text,
                    pos,
                }
            }
            ast::Expr::UnaryOp(u) => {
                let inner = self.lower(&self.child(u.expr(), pos)?)?;
                match u.operator() {
                    Some(ast::UnaryOpKind::Invert) => Expr::Not(inner, pos),
                    Some(ast::UnaryOpKind::Negate) => Expr::Neg(inner, pos),
                    None => return Err(self.err(pos, "syntax error, unknown unary operator")),
                }
            }
            ast::Expr::BinOp(b) => self.lower_binop(b, pos)?,
            ast::Expr::Select(s) => {
                let subject = self.lower(&self.child(s.expr(), pos)?)?;
                let path = self.lower_attrpath(s.attrpath(), pos)?;
                let default = match s.default_expr() {
                    Some(d) => Some(self.lower(&d)?),
                    None => None,
                };
                Expr::Select {
                    e: subject,
                    path,
                    default,
                    pos,
                }
            }
            ast::Expr::HasAttr(h) => {
                let subject = self.lower(&self.child(h.expr(), pos)?)?;
                let path = self.lower_attrpath(h.attrpath(), pos)?;
                Expr::HasAttr { e: subject, path }
            }
            ast::Expr::AttrSet(s) => {
                let p = self.collect_attrs(s, s.rec_token().is_some())?;
                Expr::Attrs(self.lower_pattrs(p)?)
            }
            ast::Expr::LetIn(l) => {
                let mut p = self.collect_entries(l, true)?;
                if let Some((_, _, dpos)) = p.dynamic.first() {
                    return Err(self.err(*dpos, "dynamic attributes not allowed in let"));
                }
                p.rec = true;
                let names: Vec<Symbol> = p.entries.iter().map(|e| e.name.clone()).collect();
                let binds = self.lower_pattrs(p)?;
                self.scopes.push(Scope::vars(names));
                let body = self.child(l.body(), pos).and_then(|b| self.lower(&b));
                self.scopes.pop();
                Expr::Let { binds, body: body? }
            }
            ast::Expr::LegacyLet(l) => {
                let mut p = self.collect_entries(l, true)?;
                p.rec = true;
                let body_sym = self.sym("body");
                let def = self.lower_pattrs(p)?;
                let attrs = Rc::new(Expr::Attrs(def));
                Expr::Select {
                    e: attrs,
                    path: vec![AttrKey::Static(body_sym)],
                    default: None,
                    pos,
                }
            }
            ast::Expr::With(w) => {
                let ns = self.lower(&self.child(w.namespace(), pos)?)?;
                self.scopes.push(Scope::With);
                let body = self.child(w.body(), pos).and_then(|b| self.lower(&b));
                self.scopes.pop();
                Expr::With { ns, body: body? }
            }
            ast::Expr::Lambda(l) => Expr::Lambda(Rc::new(self.lower_lambda(l, pos)?)),
            ast::Expr::CurPos(_) => Expr::CurPos(pos),
            ast::Expr::Error(_) => return Err(self.err(pos, "syntax error")),
        })
    }

    fn child<T>(&self, c: Option<T>, pos: Pos) -> Result<T> {
        c.ok_or_else(|| self.err(pos, "syntax error, incomplete expression"))
    }

    fn lower_binop(&mut self, b: &ast::BinOp, pos: Pos) -> Result<Expr> {
        use ast::BinOpKind as K;
        // One scan finds the operator token: its kind and its position.
        let (kind, op_pos) = b
            .syntax()
            .children_with_tokens()
            .filter_map(|c| c.into_token())
            .find_map(|t| {
                ast::BinOpKind::from_kind(t.kind())
                    .map(|k| (k, self.pos_of(t.text_range().start())))
            })
            .ok_or_else(|| self.err(pos, "syntax error, unknown operator"))?;
        let op = match kind {
            K::Concat => BinOp::Concat,
            K::Update => BinOp::Update,
            K::Add => BinOp::Add,
            K::Sub => BinOp::Sub,
            K::Mul => BinOp::Mul,
            K::Div => BinOp::Div,
            K::And => BinOp::And,
            K::Or => BinOp::Or,
            K::Implication => BinOp::Impl,
            K::Equal => BinOp::Eq,
            K::NotEqual => BinOp::Neq,
            K::Less => BinOp::Lt,
            K::LessOrEq => BinOp::Le,
            K::More => BinOp::Gt,
            K::MoreOrEq => BinOp::Ge,
            K::PipeLeft | K::PipeRight => {
                return Err(self.err(op_pos, "syntax error, unexpected pipe operator"))
            }
        };
        let rhs = self.child(b.rhs(), pos)?;
        // Nix 2.8 reports `+` errors at the right operand, the others at the expression.
        let at = if op == BinOp::Add {
            self.pos(&rhs)
        } else {
            pos
        };
        let l = self.lower(&self.child(b.lhs(), pos)?)?;
        let r = self.lower(&rhs)?;
        Ok(Expr::Bin { op, l, r, pos: at })
    }

    fn lower_lambda(&mut self, l: &ast::Lambda, pos: Pos) -> Result<LambdaDef> {
        let param = self.child(l.param(), pos)?;
        match param {
            ast::Param::IdentParam(ip) => {
                let id = self.child(ip.ident(), pos)?;
                let name = self.ident(&id);
                self.scopes.push(Scope::vars(vec![name.clone()]));
                let body = self.child(l.body(), pos).and_then(|b| self.lower(&b));
                self.scopes.pop();
                Ok(LambdaDef {
                    arg: Some(name),
                    formals: None,
                    body: body?,
                    pos,
                    slots: 1,
                    name: Default::default(),
                })
            }
            ast::Param::Pattern(pat) => {
                let mut names = Vec::new();
                let mut defaults = Vec::new();
                let mut positions = Vec::new();
                for entry in pat.pat_entries() {
                    let id = self.child(entry.ident(), pos)?;
                    let name = self.ident(&id);
                    if names.contains(&name) {
                        return Err(self.err(
                            self.pos(&id),
                            format!("duplicate formal function argument '{}'", name.as_str()),
                        ));
                    }
                    names.push(name);
                    positions.push(self.pos(&id));
                    defaults.push(entry.default());
                }
                let at = match pat.pat_bind() {
                    Some(b) => {
                        let id = self.child(b.ident(), pos)?;
                        let name = self.ident(&id);
                        if names.contains(&name) {
                            return Err(self.err(
                                self.pos(&id),
                                format!("duplicate formal function argument '{}'", name.as_str()),
                            ));
                        }
                        Some(name)
                    }
                    None => None,
                };
                let mut slots = names.clone();
                slots.extend(at.clone());
                let nslots = slots.len();
                self.scopes.push(Scope::vars(slots));
                let res = (|| {
                    let mut entries = Vec::new();
                    for (n, d) in names.into_iter().zip(defaults) {
                        let d = match d {
                            Some(d) => Some(self.lower(&d)?),
                            None => None,
                        };
                        entries.push((n, d));
                    }
                    let body = self.lower(&self.child(l.body(), pos)?)?;
                    Ok::<_, Error>((entries, body))
                })();
                self.scopes.pop();
                let (entries, body) = res?;
                Ok(LambdaDef {
                    arg: None,
                    formals: Some(Formals {
                        entries,
                        positions,
                        ellipsis: pat.ellipsis_token().is_some(),
                        at,
                    }),
                    body,
                    pos,
                    slots: nslots,
                    name: Default::default(),
                })
            }
        }
    }

    fn lower_str(&mut self, s: &ast::Str, pos: Pos) -> Result<Expr> {
        let indented = s
            .syntax()
            .children_with_tokens()
            .filter_map(|c| c.into_token())
            .find(|t| t.kind() == SyntaxKind::TOKEN_STRING_START)
            .is_some_and(|t| t.text() == "''");
        let mut parts: Vec<Part<ast::Interpol>> = Vec::new();
        let mut first = true;
        for p in s.parts() {
            match p {
                ast::InterpolPart::Literal(lit) => {
                    let raw = lit.syntax().text();
                    if indented {
                        let mut raw: &str = raw;
                        if first {
                            let sp = raw.bytes().take_while(|b| *b == b' ').count();
                            if raw.as_bytes().get(sp) == Some(&b'\n') {
                                raw = &raw[sp + 1..];
                            }
                        }
                        strlit::lex_indented(raw, &mut parts);
                    } else {
                        parts.push(Part::Lit(strlit::unescape_normal(raw), false));
                    }
                }
                ast::InterpolPart::Interpolation(i) => parts.push(Part::Interp(i)),
            }
            first = false;
        }
        if indented {
            if parts.is_empty() {
                return Ok(Expr::Const(Value::string("")));
            }
            parts = strlit::strip_indentation(parts);
        }
        self.lower_parts(parts, pos, true)
    }

    fn lower_parts(
        &mut self,
        parts: Vec<Part<ast::Interpol>>,
        pos: Pos,
        string: bool,
    ) -> Result<Expr> {
        let mut out: Vec<Rc<Expr>> = Vec::new();
        let mut pending: Option<String> = None;
        let interpolated = parts.iter().any(|p| matches!(p, Part::Interp(_)));
        for p in parts {
            match p {
                Part::Lit(s, _) => pending.get_or_insert_with(String::new).push_str(&s),
                Part::Interp(i) => {
                    if let Some(s) = pending.take() {
                        out.push(Rc::new(Expr::Const(Value::string(s))));
                    }
                    let ipos = self.pos(&i);
                    out.push(self.lower(&self.child(i.expr(), ipos)?)?);
                }
            }
        }
        if let Some(s) = pending.take() {
            out.push(Rc::new(Expr::Const(Value::string(s))));
        }
        if string && out.len() == 1 && !interpolated {
            if let Expr::Const(_) = &*out[0] {
                return Ok(Rc::try_unwrap(out.pop().expect("one part"))
                    .unwrap_or_else(|_| Expr::Const(Value::string(""))));
            }
        }
        if out.is_empty() {
            return Ok(Expr::Const(Value::string("")));
        }
        Ok(Expr::Concat {
            parts: out,
            is_string: string,
            pos,
        })
    }

    fn lower_path(
        &mut self,
        kind: PathKind,
        parts: Vec<ast::InterpolPart<ast::PathContent>>,
        pos: Pos,
    ) -> Result<Expr> {
        let mut lit_parts: Vec<Part<ast::Interpol>> = Vec::new();
        for p in parts {
            match p {
                ast::InterpolPart::Literal(l) => {
                    lit_parts.push(Part::Lit(l.syntax().text().to_string(), false))
                }
                ast::InterpolPart::Interpolation(i) => lit_parts.push(Part::Interp(i)),
            }
        }
        if lit_parts.len() == 1 {
            if let Part::Lit(s, _) = &lit_parts[0] {
                if s.ends_with('/') && s.len() > 1 {
                    return Err(self.err(pos, format!("path '{s}' has a trailing slash")));
                }
                let resolved = self.resolve_path(kind, s);
                if kind != PathKind::Home {
                    self.paths.push(resolved.clone());
                }
                return Ok(Expr::Const(Value::Path(resolved.into())));
            }
        }
        let e = self.lower_parts(lit_parts, pos, false)?;
        let parts = match e {
            Expr::Concat { parts, .. } => parts,
            other => vec![Rc::new(other)],
        };
        Ok(Expr::PathInterp {
            kind,
            parts,
            base: self.base_dir.clone(),
            pos,
        })
    }

    fn resolve_path(&self, kind: PathKind, s: &str) -> String {
        match kind {
            PathKind::Absolute => canon_path(s),
            PathKind::Relative => canon_path(&format!("{}/{}", self.base_dir, s)),
            PathKind::Home => {
                let home = self.home.clone().unwrap_or_default();
                canon_path(&format!("{}/{}", home, s.trim_start_matches('~')))
            }
        }
    }
}

fn snippet(text: &str, r: rowan::TextRange) -> String {
    let s = text
        .get(usize::from(r.start())..usize::from(r.end()))
        .unwrap_or("");
    s.chars().take(40).collect()
}

/// Render an assertion condition the way Nix prints expressions (approximately:
/// binary operators parenthesised).
fn render_cond(e: &ast::Expr) -> String {
    match e {
        ast::Expr::BinOp(b) => {
            let op = b
                .syntax()
                .children_with_tokens()
                .filter_map(|c| c.into_token())
                .find(|t| ast::BinOpKind::from_kind(t.kind()).is_some())
                .map(|t| t.text().to_string())
                .unwrap_or_default();
            let l = b.lhs().map(|l| render_cond(&l)).unwrap_or_default();
            let r = b.rhs().map(|r| render_cond(&r)).unwrap_or_default();
            format!("({l} {op} {r})")
        }
        ast::Expr::Paren(p) => p.expr().map(|e| render_cond(&e)).unwrap_or_default(),
        other => other.syntax().text().to_string(),
    }
}

/// Canonicalise an absolute path lexically: collapse `//`, `.` and `..`, no trailing slash.
pub fn canon_path(s: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return "/".into();
    }
    let mut r = String::with_capacity(s.len());
    for c in out {
        r.push('/');
        r.push_str(c);
    }
    r
}

/// Nix's lexer treats CR as whitespace and turns CR/LF and lone CR in
/// strings into LF; rnix does not, so sources are normalised before parsing.
pub(crate) fn normalize_newlines(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\r') {
        text.replace("\r\n", "\n").replace('\r', "\n").into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::canon_path;

    #[test]
    fn canon() {
        assert_eq!(canon_path("/a/./b//c/../d/"), "/a/b/d");
        assert_eq!(canon_path("/.."), "/");
    }
}
