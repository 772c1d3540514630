//! `nix-instantiate --parse`: the parsed expression printed the way Nix 2.8's
//! `Expr::show` prints it.
//!
//! The rnix tree is first turned into the shape Nix 2.8's parser builds
//! (operators desugared to `__sub`/`__lessThan`/... calls, `+` as a string
//! concatenation, nested attribute paths merged, `<p>` as a `__findFile`
//! call, paths made absolute, indented strings stripped), then printed.
//!
//! Nix keeps formal arguments and `let` bindings ordered by the address of
//! their interned symbol. The names Nix 2.8 interns while starting up come in
//! a fixed order ([`STARTUP_SYMBOLS`], measured with `nix-instantiate
//! --parse`); names first seen in the parsed file are allocated after
//! `derivation` and before `strict` in that order, in the order the parser
//! creates them.

use crate::strlit::{self, Part};
use rnix::ast::{self, AstToken, HasEntry};
use rowan::ast::AstNode;
use std::collections::HashMap;
use std::fmt::Write as _;

/// A lambda's formals: the names with their defaults, and whether `...`
/// follows.
type Formals = (Vec<(String, Option<Nx>)>, bool);

/// A parsed expression in the shape of Nix 2.8's `Expr` classes.
#[derive(Clone)]
enum Nx {
    Int(i64),
    Float(f64),
    Str(String),
    Path(String),
    Var(String),
    Select(Box<Nx>, Vec<Name>, Option<Box<Nx>>),
    HasAttr(Box<Nx>, Vec<Name>),
    Attrs(Attrs),
    List(Vec<Nx>),
    Lambda {
        arg: Option<String>,
        formals: Option<Formals>,
        body: Box<Nx>,
    },
    Call(Box<Nx>, Vec<Nx>),
    Let(Attrs, Box<Nx>),
    With(Box<Nx>, Box<Nx>),
    If(Box<Nx>, Box<Nx>, Box<Nx>),
    Assert(Box<Nx>, Box<Nx>),
    Not(Box<Nx>),
    Bin(&'static str, Box<Nx>, Box<Nx>),
    Concat(Vec<Nx>),
    CurPos,
}

#[derive(Clone)]
enum Name {
    Sym(String),
    Dyn(Nx),
}

#[derive(Clone, Default)]
struct Attrs {
    rec: bool,
    /// Static attributes in insertion order: name, inherited, value.
    attrs: Vec<(String, bool, Nx)>,
    dynamic: Vec<(Nx, Nx)>,
}

impl Attrs {
    fn find(&self, name: &str) -> Option<usize> {
        self.attrs.iter().position(|(n, _, _)| n == name)
    }
}

/// Converts the rnix tree; also records the order in which Nix's parser
/// would create each symbol.
struct Conv<'a> {
    base_dir: &'a str,
    home: String,
    created: HashMap<String, usize>,
}

type R<T> = Result<T, String>;

fn need<T>(x: Option<T>) -> R<T> {
    x.ok_or_else(|| "syntax error, incomplete expression".to_string())
}

impl Conv<'_> {
    fn create(&mut self, name: &str) {
        let n = self.created.len();
        self.created.entry(name.to_string()).or_insert(n);
    }

    fn expr(&mut self, e: &ast::Expr) -> R<Nx> {
        Ok(match e {
            ast::Expr::Paren(p) => self.expr(&need(p.expr())?)?,
            ast::Expr::Root(r) => self.expr(&need(r.expr())?)?,
            ast::Expr::Literal(l) => match l.kind() {
                ast::LiteralKind::Integer(i) => Nx::Int(
                    i.value()
                        .map_err(|_| format!("invalid integer '{}'", i.syntax().text()))?,
                ),
                ast::LiteralKind::Float(f) => Nx::Float(
                    f.value()
                        .map_err(|_| format!("invalid float '{}'", f.syntax().text()))?,
                ),
                ast::LiteralKind::Uri(u) => Nx::Str(u.syntax().text().to_string()),
            },
            ast::Expr::Ident(id) => {
                let name = id.syntax().text().to_string();
                self.create(&name);
                Nx::Var(name)
            }
            ast::Expr::CurPos(_) => Nx::CurPos,
            ast::Expr::Str(s) => self.string(s)?,
            ast::Expr::PathAbs(p) => self.path(p.parts(), 'a')?,
            ast::Expr::PathRel(p) => self.path(p.parts(), 'r')?,
            ast::Expr::PathHome(p) => self.path(p.parts(), 'h')?,
            ast::Expr::PathSearch(p) => {
                let t = p.syntax().text().to_string();
                let inner = t.trim_start_matches('<').trim_end_matches('>').to_string();
                Nx::Call(
                    Box::new(Nx::Var("__findFile".into())),
                    vec![Nx::Var("__nixPath".into()), Nx::Str(inner)],
                )
            }
            ast::Expr::List(l) => Nx::List(l.items().map(|i| self.expr(&i)).collect::<R<_>>()?),
            ast::Expr::Apply(a) => {
                let f = self.expr(&need(a.lambda())?)?;
                let arg = self.expr(&need(a.argument())?)?;
                match f {
                    Nx::Call(f, mut args) => {
                        args.push(arg);
                        Nx::Call(f, args)
                    }
                    f => Nx::Call(Box::new(f), vec![arg]),
                }
            }
            ast::Expr::IfElse(i) => Nx::If(
                Box::new(self.expr(&need(i.condition())?)?),
                Box::new(self.expr(&need(i.body())?)?),
                Box::new(self.expr(&need(i.else_body())?)?),
            ),
            ast::Expr::Assert(a) => Nx::Assert(
                Box::new(self.expr(&need(a.condition())?)?),
                Box::new(self.expr(&need(a.body())?)?),
            ),
            ast::Expr::With(w) => Nx::With(
                Box::new(self.expr(&need(w.namespace())?)?),
                Box::new(self.expr(&need(w.body())?)?),
            ),
            ast::Expr::UnaryOp(u) => {
                let inner = self.expr(&need(u.expr())?)?;
                match u.operator() {
                    Some(ast::UnaryOpKind::Invert) => Nx::Not(Box::new(inner)),
                    Some(ast::UnaryOpKind::Negate) => call("__sub", vec![Nx::Int(0), inner]),
                    None => return Err("syntax error, unknown unary operator".into()),
                }
            }
            ast::Expr::BinOp(b) => self.binop(b)?,
            ast::Expr::Select(s) => {
                let subject = self.expr(&need(s.expr())?)?;
                let path = self.attrpath(need(s.attrpath())?.attrs())?;
                let default = match s.default_expr() {
                    Some(d) => Some(Box::new(self.expr(&d)?)),
                    None => None,
                };
                Nx::Select(Box::new(subject), path, default)
            }
            ast::Expr::HasAttr(h) => {
                let subject = self.expr(&need(h.expr())?)?;
                let path = self.attrpath(need(h.attrpath())?.attrs())?;
                Nx::HasAttr(Box::new(subject), path)
            }
            ast::Expr::AttrSet(s) => {
                let mut a = self.binds(s)?;
                a.rec = s.rec_token().is_some();
                Nx::Attrs(a)
            }
            ast::Expr::LetIn(l) => {
                let a = self.binds(l)?;
                if !a.dynamic.is_empty() {
                    return Err("dynamic attributes not allowed in let".into());
                }
                let body = self.expr(&need(l.body())?)?;
                Nx::Let(a, Box::new(body))
            }
            ast::Expr::LegacyLet(l) => {
                let mut a = self.binds(l)?;
                a.rec = true;
                self.create("body");
                Nx::Select(Box::new(Nx::Attrs(a)), vec![Name::Sym("body".into())], None)
            }
            ast::Expr::Lambda(l) => self.lambda(l)?,
            ast::Expr::Error(_) => return Err("syntax error".into()),
        })
    }

    fn binop(&mut self, b: &ast::BinOp) -> R<Nx> {
        use ast::BinOpKind as K;
        let kind = b.operator().ok_or("syntax error, unknown operator")?;
        let l = self.expr(&need(b.lhs())?)?;
        let r = self.expr(&need(b.rhs())?)?;
        let bin = |op, l, r| Nx::Bin(op, Box::new(l), Box::new(r));
        Ok(match kind {
            K::Concat => bin("++", l, r),
            K::Update => bin("//", l, r),
            K::Add => Nx::Concat(vec![l, r]),
            K::Sub => call("__sub", vec![l, r]),
            K::Mul => call("__mul", vec![l, r]),
            K::Div => call("__div", vec![l, r]),
            K::And => bin("&&", l, r),
            K::Or => bin("||", l, r),
            K::Implication => bin("->", l, r),
            K::Equal => bin("==", l, r),
            K::NotEqual => bin("!=", l, r),
            K::Less => call("__lessThan", vec![l, r]),
            K::LessOrEq => Nx::Not(Box::new(call("__lessThan", vec![r, l]))),
            K::More => call("__lessThan", vec![r, l]),
            K::MoreOrEq => Nx::Not(Box::new(call("__lessThan", vec![l, r]))),
            K::PipeLeft | K::PipeRight => {
                return Err("syntax error, unexpected pipe operator".into())
            }
        })
    }

    fn lambda(&mut self, l: &ast::Lambda) -> R<Nx> {
        match need(l.param())? {
            ast::Param::IdentParam(ip) => {
                let name = need(ip.ident())?.syntax().text().to_string();
                let body = self.expr(&need(l.body())?)?;
                // Nix creates the argument's symbol after parsing the body.
                self.create(&name);
                Ok(Nx::Lambda {
                    arg: Some(name),
                    formals: None,
                    body: Box::new(body),
                })
            }
            ast::Param::Pattern(pat) => {
                let mut formals = Vec::new();
                for entry in pat.pat_entries() {
                    let name = need(entry.ident())?.syntax().text().to_string();
                    let def = match entry.default() {
                        Some(d) => Some(self.expr(&d)?),
                        None => None,
                    };
                    self.create(&name);
                    formals.push((name, def));
                }
                let at = match pat.pat_bind() {
                    Some(b) => Some(need(b.ident())?.syntax().text().to_string()),
                    None => None,
                };
                let body = self.expr(&need(l.body())?)?;
                if let Some(a) = &at {
                    self.create(a);
                }
                Ok(Nx::Lambda {
                    arg: at,
                    formals: Some((formals, pat.ellipsis_token().is_some())),
                    body: Box::new(body),
                })
            }
        }
    }

    fn string(&mut self, s: &ast::Str) -> R<Nx> {
        let indented = s
            .syntax()
            .children_with_tokens()
            .filter_map(|c| c.into_token())
            .find(|t| t.kind() == rnix::SyntaxKind::TOKEN_STRING_START)
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
                return Ok(Nx::Str(String::new()));
            }
            parts = strlit::strip_indentation(parts);
            if let [Part::Lit(s, _)] = parts.as_slice() {
                return Ok(Nx::Str(s.clone()));
            }
        } else {
            let interpolated = parts.iter().any(|p| matches!(p, Part::Interp(_)));
            if !interpolated {
                let text: String = parts
                    .into_iter()
                    .map(|p| match p {
                        Part::Lit(s, _) => s,
                        Part::Interp(_) => String::new(),
                    })
                    .collect();
                return Ok(Nx::Str(text));
            }
        }
        let mut out = Vec::new();
        for p in parts {
            out.push(match p {
                Part::Lit(s, _) => Nx::Str(s),
                Part::Interp(i) => self.expr(&need(i.expr())?)?,
            });
        }
        Ok(Nx::Concat(out))
    }

    fn path(&mut self, parts: Vec<ast::InterpolPart<ast::PathContent>>, kind: char) -> R<Nx> {
        let mut out = Vec::new();
        for (n, p) in parts.into_iter().enumerate() {
            match p {
                ast::InterpolPart::Literal(l) => {
                    let s = l.syntax().text().to_string();
                    if n == 0 {
                        out.push(Nx::Path(self.resolve(&s, kind)));
                    } else {
                        out.push(Nx::Str(s));
                    }
                }
                ast::InterpolPart::Interpolation(i) => out.push(self.expr(&need(i.expr())?)?),
            }
        }
        if out.len() == 1 {
            return Ok(out.pop().expect("one part"));
        }
        Ok(Nx::Concat(out))
    }

    fn resolve(&self, s: &str, kind: char) -> String {
        if kind == 'h' {
            return format!("{}{}", self.home, &s[1..]);
        }
        let abs = if kind == 'a' {
            crate::lower::canon_path(s)
        } else {
            crate::lower::canon_path(&format!("{}/{}", self.base_dir, s))
        };
        if s.len() > 1 && s.ends_with('/') && !abs.ends_with('/') {
            abs + "/"
        } else {
            abs
        }
    }

    fn attr_name(&mut self, a: &ast::Attr) -> R<Name> {
        let s = match a {
            ast::Attr::Ident(i) => {
                let name = i.syntax().text().to_string();
                self.create(&name);
                return Ok(Name::Sym(name));
            }
            ast::Attr::Str(s) => s.clone(),
            ast::Attr::Dynamic(d) => match need(d.expr())? {
                ast::Expr::Str(s) => s,
                other => return Ok(Name::Dyn(self.expr(&other)?)),
            },
        };
        match self.string(&s)? {
            Nx::Str(text) => {
                self.create(&text);
                Ok(Name::Sym(text))
            }
            other => Ok(Name::Dyn(other)),
        }
    }

    fn attrpath(&mut self, attrs: impl Iterator<Item = ast::Attr>) -> R<Vec<Name>> {
        attrs.map(|a| self.attr_name(&a)).collect()
    }

    fn binds(&mut self, n: &impl HasEntry) -> R<Attrs> {
        let mut out = Attrs::default();
        for entry in n.entries() {
            match entry {
                ast::Entry::Inherit(inh) => {
                    let from = match inh.from() {
                        Some(f) => Some(self.expr(&need(f.expr())?)?),
                        None => None,
                    };
                    let mut names = Vec::new();
                    for a in inh.attrs() {
                        match self.attr_name(&a)? {
                            Name::Sym(s) => names.push(s),
                            Name::Dyn(_) => {
                                return Err("dynamic attributes not allowed in inherit".into())
                            }
                        }
                    }
                    for name in names {
                        if out.find(&name).is_some() {
                            return Err(format!("attribute '{name}' already defined"));
                        }
                        let (inherited, value) = match &from {
                            // Nix shares the expression; printing it twice is the same.
                            Some(f) => (
                                false,
                                Nx::Select(
                                    Box::new(f.clone()),
                                    vec![Name::Sym(name.clone())],
                                    None,
                                ),
                            ),
                            None => (true, Nx::Var(name.clone())),
                        };
                        out.attrs.push((name, inherited, value));
                    }
                }
                ast::Entry::AttrpathValue(apv) => {
                    let path = self.attrpath(need(apv.attrpath())?.attrs())?;
                    let value = self.expr(&need(apv.value())?)?;
                    add_attr(&mut out, path, value)?;
                }
            }
        }
        Ok(out)
    }
}

fn call(f: &str, args: Vec<Nx>) -> Nx {
    Nx::Call(Box::new(Nx::Var(f.into())), args)
}

/// Nix 2.8's `addAttr`: `a.b.c = v` creates or extends nested sets.
fn add_attr(attrs: &mut Attrs, path: Vec<Name>, e: Nx) -> R<()> {
    let mut path = path.into_iter().peekable();
    let mut cur = attrs;
    loop {
        let name = path.next().ok_or("empty attribute path")?;
        let last = path.peek().is_none();
        match name {
            Name::Sym(s) if !last => {
                let i = match cur.find(&s) {
                    Some(i) => {
                        if cur.attrs[i].1 || !matches!(cur.attrs[i].2, Nx::Attrs(_)) {
                            return Err(format!("attribute '{s}' already defined"));
                        }
                        i
                    }
                    None => {
                        cur.attrs.push((s, false, Nx::Attrs(Attrs::default())));
                        cur.attrs.len() - 1
                    }
                };
                let Nx::Attrs(next) = &mut cur.attrs[i].2 else {
                    unreachable!("checked above")
                };
                cur = next;
            }
            Name::Dyn(k) if !last => {
                cur.dynamic.push((k, Nx::Attrs(Attrs::default())));
                let Some((_, Nx::Attrs(next))) = cur.dynamic.last_mut() else {
                    unreachable!("just pushed")
                };
                cur = next;
            }
            Name::Sym(s) => {
                match cur.find(&s) {
                    Some(i) => match (cur.attrs[i].1, &mut cur.attrs[i].2, e) {
                        (false, Nx::Attrs(existing), Nx::Attrs(new)) => {
                            // Only the static attributes are merged (as in Nix 2.8).
                            for (n, inh, v) in new.attrs {
                                if existing.find(&n).is_some() {
                                    return Err(format!("attribute '{n}' already defined"));
                                }
                                existing.attrs.push((n, inh, v));
                            }
                        }
                        _ => return Err(format!("attribute '{s}' already defined")),
                    },
                    None => cur.attrs.push((s, false, e)),
                }
                return Ok(());
            }
            Name::Dyn(k) => {
                cur.dynamic.push((k, e));
                return Ok(());
            }
        }
    }
}

fn show_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' | '$' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn show_id(out: &mut String, s: &str) {
    if s.is_empty() {
        out.push_str("\"\"");
    } else if s == "if" {
        out.push_str("\"if\"");
    } else {
        let first = s.as_bytes()[0];
        let plain = (first.is_ascii_alphabetic() || first == b'_')
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'\'' | b'-'));
        if plain {
            out.push_str(s);
        } else {
            show_string(out, s);
        }
    }
}

fn show_path(out: &mut String, path: &[Name], order: &HashMap<String, usize>) {
    for (i, n) in path.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        match n {
            Name::Sym(s) => show_id(out, s),
            Name::Dyn(e) => {
                out.push_str("\"${");
                e.show(out, order);
                out.push_str("}\"");
            }
        }
    }
}

impl Nx {
    fn show(&self, out: &mut String, order: &HashMap<String, usize>) {
        let rank = |s: &str| symbol_rank(s, order);
        match self {
            Nx::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Nx::Float(f) => out.push_str(&crate::print::format_float(*f)),
            Nx::Str(s) => show_string(out, s),
            Nx::Path(p) => out.push_str(p),
            Nx::Var(v) => show_id(out, v),
            Nx::Select(e, path, def) => {
                out.push('(');
                e.show(out, order);
                out.push_str(").");
                show_path(out, path, order);
                if let Some(d) = def {
                    out.push_str(" or (");
                    d.show(out, order);
                    out.push(')');
                }
            }
            Nx::HasAttr(e, path) => {
                out.push_str("((");
                e.show(out, order);
                out.push_str(") ? ");
                show_path(out, path, order);
                out.push(')');
            }
            Nx::Attrs(a) => {
                if a.rec {
                    out.push_str("rec ");
                }
                out.push_str("{ ");
                let mut sorted: Vec<&(String, bool, Nx)> = a.attrs.iter().collect();
                sorted.sort_by(|x, y| x.0.as_bytes().cmp(y.0.as_bytes()));
                for (name, inherited, e) in sorted {
                    if *inherited {
                        out.push_str("inherit ");
                        show_id(out, name);
                        out.push_str(" ; ");
                    } else {
                        show_id(out, name);
                        out.push_str(" = ");
                        e.show(out, order);
                        out.push_str("; ");
                    }
                }
                for (k, v) in &a.dynamic {
                    out.push_str("\"${");
                    k.show(out, order);
                    out.push_str("}\" = ");
                    v.show(out, order);
                    out.push_str("; ");
                }
                out.push('}');
            }
            Nx::List(items) => {
                out.push_str("[ ");
                for i in items {
                    out.push('(');
                    i.show(out, order);
                    out.push_str(") ");
                }
                out.push(']');
            }
            Nx::Lambda { arg, formals, body } => {
                out.push('(');
                if let Some((fs, ellipsis)) = formals {
                    out.push_str("{ ");
                    let mut sorted: Vec<&(String, Option<Nx>)> = fs.iter().collect();
                    sorted.sort_by_key(|(n, _)| rank(n.as_str()));
                    let mut first = true;
                    for (name, def) in sorted {
                        if !first {
                            out.push_str(", ");
                        }
                        first = false;
                        show_id(out, name);
                        if let Some(d) = def {
                            out.push_str(" ? ");
                            d.show(out, order);
                        }
                    }
                    if *ellipsis {
                        if !first {
                            out.push_str(", ");
                        }
                        out.push_str("...");
                    }
                    out.push_str(" }");
                    if arg.is_some() {
                        out.push_str(" @ ");
                    }
                }
                if let Some(a) = arg {
                    show_id(out, a);
                }
                out.push_str(": ");
                body.show(out, order);
                out.push(')');
            }
            Nx::Call(f, args) => {
                out.push('(');
                f.show(out, order);
                for a in args {
                    out.push(' ');
                    a.show(out, order);
                }
                out.push(')');
            }
            Nx::Let(a, body) => {
                out.push_str("(let ");
                let mut sorted: Vec<&(String, bool, Nx)> = a.attrs.iter().collect();
                sorted.sort_by_key(|(n, _, _)| rank(n.as_str()));
                for (name, inherited, e) in sorted {
                    if *inherited {
                        out.push_str("inherit ");
                        show_id(out, name);
                        out.push_str("; ");
                    } else {
                        show_id(out, name);
                        out.push_str(" = ");
                        e.show(out, order);
                        out.push_str("; ");
                    }
                }
                out.push_str("in ");
                body.show(out, order);
                out.push(')');
            }
            Nx::With(a, b) => {
                out.push_str("(with ");
                a.show(out, order);
                out.push_str("; ");
                b.show(out, order);
                out.push(')');
            }
            Nx::If(c, t, e) => {
                out.push_str("(if ");
                c.show(out, order);
                out.push_str(" then ");
                t.show(out, order);
                out.push_str(" else ");
                e.show(out, order);
                out.push(')');
            }
            Nx::Assert(c, b) => {
                out.push_str("assert ");
                c.show(out, order);
                out.push_str("; ");
                b.show(out, order);
            }
            Nx::Not(e) => {
                out.push_str("(! ");
                e.show(out, order);
                out.push(')');
            }
            Nx::Bin(op, l, r) => {
                out.push('(');
                l.show(out, order);
                let _ = write!(out, " {op} ");
                r.show(out, order);
                out.push(')');
            }
            Nx::Concat(parts) => {
                out.push('(');
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" + ");
                    }
                    p.show(out, order);
                }
                out.push(')');
            }
            Nx::CurPos => out.push_str("__curPos"),
        }
    }
}

/// The symbols Nix 2.8 interns before it parses anything, in the order of
/// their addresses (as `nix-instantiate --parse` orders formal arguments).
/// New symbols fall between `derivation` and `strict`.
const STARTUP_SYMBOLS: &[&str] = &[
    "meta",
    "name",
    "value",
    "system",
    "__overrides",
    "outputs",
    "outputName",
    "__ignoreNulls",
    "file",
    "line",
    "column",
    "outPath",
    "drvPath",
    "type",
    "__functor",
    "__toString",
    "right",
    "wrong",
    "__structuredAttrs",
    "builder",
    "args",
    "__contentAddressed",
    "__impure",
    "outputHash",
    "outputHashAlgo",
    "outputHashMode",
    "recurseForDerivations",
    "description",
    "self",
    "startSet",
    "operator",
    "key",
    "path",
    "prefix",
    "builtins",
    "true",
    "false",
    "null",
    "__currentTime",
    "currentTime",
    "__currentSystem",
    "currentSystem",
    "__nixVersion",
    "nixVersion",
    "__storeDir",
    "storeDir",
    "__langVersion",
    "langVersion",
    "__nixPath",
    "nixPath",
    "scopedImport",
    "import",
    "__typeOf",
    "typeOf",
    "isNull",
    "__isFunction",
    "isFunction",
    "__isInt",
    "isInt",
    "__isFloat",
    "isFloat",
    "__isString",
    "isString",
    "__isBool",
    "isBool",
    "__isPath",
    "isPath",
    "__genericClosure",
    "genericClosure",
    "abort",
    "throw",
    "__addErrorContext",
    "addErrorContext",
    "__ceil",
    "ceil",
    "__floor",
    "floor",
    "__tryEval",
    "tryEval",
    "__getEnv",
    "getEnv",
    "__seq",
    "seq",
    "__deepSeq",
    "deepSeq",
    "__trace",
    "trace",
    "derivationStrict",
    "placeholder",
    "__toPath",
    "toPath",
    "__storePath",
    "storePath",
    "__pathExists",
    "pathExists",
    "baseNameOf",
    "dirOf",
    "__readFile",
    "readFile",
    "__findFile",
    "findFile",
    "__hashFile",
    "hashFile",
    "__readDir",
    "readDir",
    "__toXML",
    "toXML",
    "__toJSON",
    "toJSON",
    "__fromJSON",
    "fromJSON",
    "__toFile",
    "toFile",
    "__filterSource",
    "filterSource",
    "__path",
    "__attrNames",
    "attrNames",
    "__attrValues",
    "attrValues",
    "__getAttr",
    "getAttr",
    "__unsafeGetAttrPos",
    "unsafeGetAttrPos",
    "__hasAttr",
    "hasAttr",
    "__scopedImport",
    "__throw",
    "__true",
    "__isAttrs",
    "isAttrs",
    "removeAttrs",
    "__listToAttrs",
    "listToAttrs",
    "__intersectAttrs",
    "intersectAttrs",
    "__catAttrs",
    "catAttrs",
    "__functionArgs",
    "functionArgs",
    "__mapAttrs",
    "mapAttrs",
    "__zipAttrsWith",
    "zipAttrsWith",
    "__isList",
    "isList",
    "__elemAt",
    "elemAt",
    "__head",
    "head",
    "__tail",
    "tail",
    "map",
    "__filter",
    "filter",
    "__elem",
    "elem",
    "__concatLists",
    "concatLists",
    "__length",
    "length",
    "__foldl'",
    "foldl'",
    "__any",
    "any",
    "__all",
    "all",
    "__genList",
    "genList",
    "__sort",
    "sort",
    "__partition",
    "partition",
    "__groupBy",
    "groupBy",
    "__concatMap",
    "concatMap",
    "__add",
    "add",
    "__sub",
    "sub",
    "__mul",
    "mul",
    "__div",
    "div",
    "__bitAnd",
    "bitAnd",
    "__bitOr",
    "bitOr",
    "__bitXor",
    "bitXor",
    "__lessThan",
    "lessThan",
    "toString",
    "__substring",
    "substring",
    "__stringLength",
    "stringLength",
    "__hashString",
    "hashString",
    "__match",
    "match",
    "__split",
    "split",
    "__concatStringsSep",
    "concatStringsSep",
    "__replaceStrings",
    "replaceStrings",
    "__parseDrvName",
    "parseDrvName",
    "__compareVersions",
    "compareVersions",
    "__splitVersion",
    "splitVersion",
    "__unsafeDiscardStringContext",
    "unsafeDiscardStringContext",
    "__hasContext",
    "hasContext",
    "__unsafeDiscardOutputDependency",
    "unsafeDiscardOutputDependency",
    "__getContext",
    "getContext",
    "__appendContext",
    "appendContext",
    "fetchMercurial",
    "fetchTree",
    "__fetchurl",
    "fetchurl",
    "fetchTarball",
    "fetchGit",
    "fromTOML",
    "derivation",
    "strict",
    "drvAttrs",
    "commonAttrs",
    "outputsList",
    "x",
    "outputToAttrListElement",
];

/// Where new symbols go in [`STARTUP_SYMBOLS`].
const NEW_SYMBOLS_AT: &str = "strict";

fn symbol_rank(name: &str, created: &HashMap<String, usize>) -> (usize, usize) {
    thread_local! {
        static RANKS: HashMap<&'static str, usize> =
            STARTUP_SYMBOLS.iter().enumerate().map(|(i, s)| (*s, i)).collect();
    }
    let new_at = STARTUP_SYMBOLS
        .iter()
        .position(|s| *s == NEW_SYMBOLS_AT)
        .unwrap_or(STARTUP_SYMBOLS.len());
    match RANKS.with(|r| r.get(name).copied()) {
        Some(i) if i < new_at => (i, 0),
        Some(i) => (i + 1, 0),
        None => (new_at, created.get(name).copied().unwrap_or(usize::MAX)),
    }
}

/// Print `text` (parsed with rnix) as `nix-instantiate --parse` does, with
/// relative paths resolved against `base_dir` and `~` against `home`. The
/// result ends with a newline.
pub fn show_parsed(text: &str, base_dir: &str, home: &str) -> Result<String, String> {
    let text = crate::lower::normalize_newlines(text);
    let parse = rnix::Root::parse(&text);
    if let Some(e) = parse.errors().first() {
        return Err(format!("syntax error: {e}"));
    }
    let root = parse.tree();
    let mut conv = Conv {
        base_dir,
        home: home.to_string(),
        created: HashMap::new(),
    };
    let e = conv.expr(&need(root.expr())?)?;
    let mut out = String::new();
    e.show(&mut out, &conv.created);
    out.push('\n');
    Ok(out)
}

/// One expression printed as Nix 2.8's `Expr::show` prints it (the text
/// of a failed assertion's condition); `None` if it cannot be converted.
pub fn show_expr(e: &ast::Expr, base_dir: &str, home: &str) -> Option<String> {
    let mut conv = Conv {
        base_dir,
        home: home.to_string(),
        created: HashMap::new(),
    };
    let nx = conv.expr(e).ok()?;
    let mut out = String::new();
    nx.show(&mut out, &conv.created);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::show_parsed;

    fn show(text: &str) -> String {
        show_parsed(text, "/base", "/home/u").unwrap()
    }

    // Expected values printed by `nix-instantiate --parse -E` (Nix 2.8.0).
    #[test]
    fn formals_in_symbol_order() {
        assert_eq!(show("{x, y, z}: x"), "({ y, z, x }: x)\n");
        assert_eq!(
            show("{ n1, abort, n2, x }: 1"),
            "({ abort, n1, n2, x }: 1)\n"
        );
        assert_eq!(show("{fetchurl, stdenv}: 1"), "({ fetchurl, stdenv }: 1)\n");
    }

    #[test]
    fn let_in_symbol_order() {
        assert_eq!(
            show("let n1 = 1; x = 2; n2 = 3; n3 = 4; in 1"),
            "(let n1 = 1; n2 = 3; n3 = 4; x = 2; in 1)\n"
        );
        assert_eq!(
            show("let c = 1; b = 2; a = 3; in a"),
            "(let c = 1; b = 2; a = 3; in a)\n"
        );
    }
}
