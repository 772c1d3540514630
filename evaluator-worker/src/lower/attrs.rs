//! Attribute sets during lowering: collecting entries (`a.b.c = …`,
//! `inherit`, dynamic names) with Nix's merging rules and duplicate checks,
//! then lowering them to [`AttrsDef`].

use super::{Lowerer, Scope};
use crate::error::{Error, Result};
use crate::ir::*;
use crate::pos::Pos;
use crate::value::{Symbol, Value};
use rnix::ast::{self, HasEntry};
use std::collections::HashMap;
use std::rc::Rc;

/// An attribute set under construction (Nix's `addAttr` merging rules).
pub(super) struct PAttrs {
    pub(super) rec: bool,
    pub(super) entries: Vec<PEntry>,
    /// Position of each name in `entries` (sets can have thousands of
    /// attributes: a linear search per attribute would be quadratic).
    index: HashMap<Symbol, usize>,
    pub(super) dynamic: Vec<(ast::Attr, PValue, Pos)>,
}

impl PAttrs {
    fn new(rec: bool) -> Self {
        PAttrs {
            rec,
            entries: Vec::new(),
            index: HashMap::new(),
            dynamic: Vec::new(),
        }
    }

    fn find(&self, name: &Symbol) -> Option<usize> {
        self.index.get(name).copied()
    }

    fn push(&mut self, e: PEntry) -> usize {
        let i = self.entries.len();
        self.index.insert(e.name.clone(), i);
        self.entries.push(e);
        i
    }
}

pub(super) struct PEntry {
    pub(super) name: Symbol,
    value: PValue,
    pos: Pos,
}

pub(super) enum PValue {
    Expr(ast::Expr),
    Nested(PAttrs),
    /// `inherit x;` (value from the enclosing scope).
    Inherit(Symbol, Pos),
    /// `inherit (e) x;`
    InheritFrom(ast::Expr, Symbol, Pos),
}

impl Lowerer<'_> {
    pub(super) fn lower_attrpath(
        &mut self,
        ap: Option<ast::Attrpath>,
        pos: Pos,
    ) -> Result<Vec<AttrKey>> {
        let ap = self.child(ap, pos)?;
        let mut out = Vec::new();
        for a in ap.attrs() {
            out.push(match self.attr_key(&a)? {
                Ok(s) => AttrKey::Static(s),
                Err(e) => AttrKey::Dynamic(e),
            });
        }
        Ok(out)
    }

    /// A static name, or the lowered expression of a dynamic one.
    pub(super) fn attr_key(
        &mut self,
        a: &ast::Attr,
    ) -> Result<std::result::Result<Symbol, Rc<Expr>>> {
        let pos = self.pos(a);
        match a {
            ast::Attr::Ident(i) => Ok(Ok(self.ident(i))),
            ast::Attr::Str(s) => self.str_key(s, pos),
            ast::Attr::Dynamic(d) => {
                let inner = self.child(d.expr(), pos)?;
                if let ast::Expr::Str(s) = &inner {
                    return self.str_key(s, pos);
                }
                Ok(Err(self.lower(&inner)?))
            }
        }
    }

    /// The name of `a` if it is known without evaluation.
    pub(super) fn static_key(&mut self, a: &ast::Attr) -> Result<Option<Symbol>> {
        let s = match a {
            ast::Attr::Ident(i) => return Ok(Some(self.ident(i))),
            ast::Attr::Str(s) => s.clone(),
            ast::Attr::Dynamic(d) => match d.expr() {
                Some(ast::Expr::Str(s)) => s,
                _ => return Ok(None),
            },
        };
        if s.parts()
            .any(|p| matches!(p, ast::InterpolPart::Interpolation(_)))
        {
            return Ok(None);
        }
        let pos = self.pos(&s);
        Ok(self.str_key(&s, pos)?.ok())
    }

    pub(super) fn str_key(
        &mut self,
        s: &ast::Str,
        pos: Pos,
    ) -> Result<std::result::Result<Symbol, Rc<Expr>>> {
        let e = self.lower_str(s, pos)?;
        if let Expr::Const(Value::Str(st)) = &e {
            return Ok(Ok(self.sym(&st.s)));
        }
        Ok(Err(Rc::new(e)))
    }

    pub(super) fn collect_attrs(&mut self, s: &ast::AttrSet, rec: bool) -> Result<PAttrs> {
        let mut p = self.collect_entries(s, rec)?;
        p.rec = rec;
        Ok(p)
    }

    pub(super) fn collect_entries(&mut self, n: &impl HasEntry, rec: bool) -> Result<PAttrs> {
        let mut p = PAttrs::new(rec);
        for entry in n.entries() {
            match entry {
                ast::Entry::Inherit(inh) => {
                    let from = match inh.from() {
                        Some(f) => {
                            let fpos = self.pos(&f);
                            Some(self.child(f.expr(), fpos)?)
                        }
                        None => None,
                    };
                    for a in inh.attrs() {
                        let apos = self.pos(&a);
                        let name = match self.attr_key(&a)? {
                            Ok(s) => s,
                            Err(_) => {
                                return Err(
                                    self.err(apos, "dynamic attributes not allowed in inherit")
                                )
                            }
                        };
                        if let Some(prev) = p.find(&name) {
                            return Err(self.dup(&name, apos, p.entries[prev].pos));
                        }
                        let value = match &from {
                            Some(f) => PValue::InheritFrom(f.clone(), name.clone(), apos),
                            None => PValue::Inherit(name.clone(), apos),
                        };
                        p.push(PEntry {
                            name,
                            value,
                            pos: apos,
                        });
                    }
                }
                ast::Entry::AttrpathValue(apv) => {
                    let pos = self.pos(&apv);
                    let ap = self.child(apv.attrpath(), pos)?;
                    let value = self.child(apv.value(), pos)?;
                    let keys: Vec<ast::Attr> = ap.attrs().collect();
                    self.add_attr(&mut p, &keys, value, Vec::new())?;
                }
            }
        }
        Ok(p)
    }

    pub(super) fn dup(&self, name: &Symbol, pos: Pos, prev: Pos) -> Error {
        let (line, col) = self.src.line_col(prev.offset());
        self.err(
            pos,
            format!(
                "attribute '{}' already defined at {}:{line}:{col}",
                name.as_str(),
                self.src.name,
            ),
        )
    }

    pub(super) fn add_attr(
        &mut self,
        p: &mut PAttrs,
        keys: &[ast::Attr],
        value: ast::Expr,
        mut path: Vec<String>,
    ) -> Result<()> {
        let Some((first, rest)) = keys.split_first() else {
            return Err(self.err(self.pos(&value), "syntax error, empty attribute path"));
        };
        let kpos = self.pos(first);
        // Dynamic names are lowered later, in the scope of the finished set.
        let key = match self.static_key(first)? {
            Some(name) => Ok(name),
            None => Err(()),
        };
        match key {
            Ok(name) => {
                path.push(name.as_str().to_string());
                let idx = p.find(&name);
                if rest.is_empty() {
                    let new_val = match &value {
                        ast::Expr::AttrSet(s) => {
                            PValue::Nested(self.collect_attrs(s, s.rec_token().is_some())?)
                        }
                        _ => PValue::Expr(value.clone()),
                    };
                    match idx {
                        Some(i) => {
                            let prev_pos = p.entries[i].pos;
                            match (&mut p.entries[i].value, new_val) {
                                (PValue::Nested(existing), PValue::Nested(new)) => {
                                    for e in new.entries {
                                        if let Some(prev) = existing.find(&e.name) {
                                            let full = Symbol::from(
                                                format!("{}.{}", path.join("."), e.name.as_str())
                                                    .as_str(),
                                            );
                                            let prev_pos = existing.entries[prev].pos;
                                            return Err(self.dup(&full, e.pos, prev_pos));
                                        }
                                        existing.push(e);
                                    }
                                    existing.dynamic.extend(new.dynamic);
                                }
                                _ => {
                                    let full = Symbol::from(path.join(".").as_str());
                                    return Err(self.dup(&full, kpos, prev_pos));
                                }
                            }
                        }
                        None => {
                            p.push(PEntry {
                                name,
                                value: new_val,
                                pos: kpos,
                            });
                        }
                    }
                    Ok(())
                } else {
                    let i = match idx {
                        Some(i) => {
                            if !matches!(p.entries[i].value, PValue::Nested(_)) {
                                let full = Symbol::from(path.join(".").as_str());
                                return Err(self.dup(&full, kpos, p.entries[i].pos));
                            }
                            i
                        }
                        None => p.push(PEntry {
                            name,
                            value: PValue::Nested(PAttrs::new(false)),
                            pos: kpos,
                        }),
                    };
                    match &mut p.entries[i].value {
                        PValue::Nested(inner) => self.add_attr(inner, rest, value, path),
                        _ => Err(self.err(kpos, "internal error: nested attribute expected")),
                    }
                }
            }
            Err(_) => {
                if rest.is_empty() {
                    p.dynamic.push((first.clone(), PValue::Expr(value), kpos));
                } else {
                    let mut inner = PAttrs::new(false);
                    self.add_attr(&mut inner, rest, value, path)?;
                    p.dynamic.push((first.clone(), PValue::Nested(inner), kpos));
                }
                Ok(())
            }
        }
    }

    pub(super) fn lower_pvalue(&mut self, v: PValue) -> Result<(Rc<Expr>, bool)> {
        Ok(match v {
            PValue::Expr(e) => (self.lower(&e)?, true),
            PValue::Nested(p) => (Rc::new(Expr::Attrs(self.lower_pattrs(p)?)), true),
            PValue::Inherit(name, pos) => {
                // Resolved in the enclosing scope, skipping the set's own
                // frame. The levels `lookup` gives count from the innermost
                // scope, which in a `rec` set or `let` is that frame: the
                // value is evaluated there (its own names are skipped).
                let skip = usize::from(self.in_rec);
                (Rc::new(self.lookup(&name, pos, skip)?), self.in_rec)
            }
            PValue::InheritFrom(from, name, pos) => {
                let from = self.lower(&from)?;
                (
                    Rc::new(Expr::Select {
                        e: from,
                        path: vec![AttrKey::Static(name)],
                        default: None,
                        pos,
                    }),
                    true,
                )
            }
        })
    }

    pub(super) fn lower_pattrs(&mut self, p: PAttrs) -> Result<AttrsDef> {
        let names: Vec<Symbol> = p.entries.iter().map(|e| e.name.clone()).collect();
        let saved = self.in_rec;
        if p.rec {
            self.scopes.push(Scope::vars(names));
        }
        self.in_rec = p.rec;
        let res = (|| {
            let mut attrs = Vec::with_capacity(p.entries.len());
            for e in p.entries {
                let (value, in_rec_env) = self.lower_pvalue(e.value)?;
                if let Expr::Lambda(def) = &*value {
                    let _ = def.name.set(e.name.clone());
                }
                attrs.push(AttrDef {
                    name: e.name,
                    value,
                    in_rec_env,
                    pos: e.pos,
                });
            }
            let mut dynamic = Vec::new();
            for (key, val, pos) in p.dynamic {
                let k = match self.attr_key(&key)? {
                    Ok(s) => Rc::new(Expr::Const(Value::string(s.as_str()))),
                    Err(e) => e,
                };
                let (value, _) = self.lower_pvalue(val)?;
                dynamic.push(DynAttr { key: k, value, pos });
            }
            Ok(AttrsDef {
                rec: p.rec,
                attrs,
                dynamic,
            })
        })();
        self.in_rec = saved;
        if p.rec {
            self.scopes.pop();
        }
        res
    }
}
