//! Attribute set builtins.

use super::{b, g, mk_attrs, Builtin};
use crate::error::{Error, Result};
use crate::eval::Eval;
use crate::pos::Pos;
use crate::value::*;
use std::collections::HashMap;
use std::rc::Rc;

pub(super) const BUILTINS: &[Builtin] = &[
    b("attrNames", 1, attr_names),
    b("attrValues", 1, attr_values),
    b("getAttr", 2, get_attr),
    b("hasAttr", 2, has_attr),
    g("removeAttrs", 2, remove_attrs),
    b("listToAttrs", 1, list_to_attrs),
    b("intersectAttrs", 2, intersect_attrs),
    b("catAttrs", 2, cat_attrs),
    b("mapAttrs", 2, map_attrs),
    b("zipAttrsWith", 2, zip_attrs_with),
    b("functionArgs", 1, function_args),
    b("unsafeGetAttrPos", 2, unsafe_get_attr_pos),
];

fn attr_names(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let s = ev.expect_attrs(&a[0], pos)?;
    Ok(Value::list(
        s.iter().map(|x| Value::string(x.name.as_str())).collect(),
    ))
}

fn attr_values(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let s = ev.expect_attrs(&a[0], pos)?;
    Ok(Value::list(s.iter().map(|x| x.value.clone()).collect()))
}

fn get_attr(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let n = ev.expect_string(&a[0], pos)?;
    let s = ev.expect_attrs(&a[1], pos)?;
    match s.get(&n.s) {
        Some(v) => ev.force(v),
        None => Err(Error::eval(format!("attribute '{}' missing", n.s)).at(pos)),
    }
}

fn has_attr(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let n = ev.expect_string(&a[0], pos)?;
    let s = ev.expect_attrs(&a[1], pos)?;
    Ok(Value::Bool(s.get(&n.s).is_some()))
}

fn remove_attrs(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let s = ev.expect_attrs(&a[0], pos)?;
    let names = ev.expect_list(&a[1], pos)?;
    let mut out = (*s).clone();
    for n in names.iter() {
        out.remove(&ev.expect_string(n, pos)?.s);
    }
    Ok(Value::Attrs(Rc::new(out)))
}

fn list_to_attrs(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let l = ev.expect_list(&a[0], pos)?;
    let mut entries: Vec<Attr> = Vec::with_capacity(l.len());
    let mut seen: HashMap<String, ()> = HashMap::with_capacity(l.len());
    for item in l.iter() {
        let s = ev.expect_attrs(item, pos)?;
        let name = s
            .get("name")
            .ok_or_else(|| Error::eval("attribute 'name' missing").at(pos))?;
        let name = ev.expect_string(name, pos)?;
        let value = s
            .get("value")
            .ok_or_else(|| Error::eval("attribute 'value' missing").at(pos))?;
        if seen.insert(name.s.clone(), ()).is_none() {
            entries.push(Attr {
                name: name.s.as_str().into(),
                value: value.clone(),
                pos: None,
            });
        }
    }
    Ok(Value::Attrs(Rc::new(Attrs::from_unsorted(entries))))
}

fn intersect_attrs(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let x = ev.expect_attrs(&a[0], pos)?;
    let y = ev.expect_attrs(&a[1], pos)?;
    // Walk the smaller set and look names up in the larger one: the usual
    // call (`intersectAttrs (functionArgs f) pkgs`) has a tiny first set
    // and a huge second one. Either way the values come from `y`, in name
    // order.
    let entries: Vec<Attr> = if x.len() <= y.len() {
        x.iter()
            .filter_map(|e| y.get_attr(e.name.as_str()).cloned())
            .collect()
    } else {
        y.iter()
            .filter(|e| x.get(e.name.as_str()).is_some())
            .cloned()
            .collect()
    };
    Ok(Value::Attrs(Rc::new(Attrs::from_sorted(entries))))
}

fn cat_attrs(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let n = ev.expect_string(&a[0], pos)?;
    let l = ev.expect_list(&a[1], pos)?;
    let mut out = Vec::new();
    for item in l.iter() {
        if let Some(v) = ev.expect_attrs(item, pos)?.get(&n.s) {
            out.push(v.clone());
        }
    }
    Ok(Value::list(out))
}

fn map_attrs(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let s = ev.expect_attrs(&a[1], pos)?;
    let f = a[0].clone();
    let entries = s
        .iter()
        .map(|e| {
            let partial = Thunk::apply(f.clone(), Value::string(e.name.as_str()), pos);
            Attr {
                name: e.name.clone(),
                value: Thunk::apply(partial, e.value.clone(), pos),
                pos: e.pos,
            }
        })
        .collect();
    Ok(Value::Attrs(Rc::new(Attrs::from_sorted(entries))))
}

fn zip_attrs_with(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let l = ev.expect_list(&a[1], pos)?;
    let mut groups: std::collections::BTreeMap<std::sync::Arc<str>, (Symbol, Vec<Value>)> =
        Default::default();
    for item in l.iter() {
        let s = ev.expect_attrs(item, pos)?;
        for e in s.iter() {
            groups
                .entry(e.name.0.clone())
                .or_insert_with(|| (e.name.clone(), Vec::new()))
                .1
                .push(e.value.clone());
        }
    }
    let f = a[0].clone();
    let entries = groups
        .into_values()
        .map(|(name, vals)| {
            let partial = Thunk::apply(f.clone(), Value::string(name.as_str()), pos);
            Attr {
                name,
                value: Thunk::apply(partial, Value::list(vals), pos),
                pos: None,
            }
        })
        .collect();
    Ok(Value::Attrs(Rc::new(Attrs::from_sorted(entries))))
}

fn function_args(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    match ev.force(&a[0])? {
        Value::Lambda(c) => match &c.def.formals {
            Some(f) => Ok(Value::Attrs(Rc::new(Attrs::from_unsorted(
                f.entries
                    .iter()
                    .zip(&f.positions)
                    .map(|((n, d), p)| Attr {
                        name: n.clone(),
                        value: Value::Bool(d.is_some()),
                        pos: Some(*p),
                    })
                    .collect(),
            )))),
            None => Ok(mk_attrs(vec![])),
        },
        Value::PrimOp(_) | Value::PrimOpApp(_) => Ok(mk_attrs(vec![])),
        other => Err(Error::eval(format!(
            "'functionArgs' requires a function, got {}",
            other.type_desc()
        ))
        .at(pos)),
    }
}

fn unsafe_get_attr_pos(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let n = ev.expect_string(&a[0], pos)?;
    let s = ev.expect_attrs(&a[1], pos)?;
    match s.get_attr(&n.s) {
        Some(attr) => Ok(ev.pos_value(attr.pos)),
        None => Ok(Value::Null),
    }
}
