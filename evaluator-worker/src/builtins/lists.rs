//! List builtins.

use super::{b, g, mk_attrs, Builtin};
use crate::error::{Error, Result};
use crate::eval::Eval;
use crate::ops;
use crate::pos::Pos;
use crate::value::*;
use std::rc::Rc;

pub(super) const BUILTINS: &[Builtin] = &[
    g("map", 2, map),
    b("filter", 2, filter),
    b("length", 1, |ev, a, p| {
        Ok(Value::Int(ev.expect_list(&a[0], p)?.len() as i64))
    }),
    b("head", 1, head),
    b("tail", 1, tail),
    b("elemAt", 2, elem_at),
    b("elem", 2, elem),
    b("concatLists", 1, concat_lists),
    b("concatMap", 2, concat_map),
    b("foldl'", 3, foldl),
    b("genList", 2, gen_list),
    b("sort", 2, sort),
    b("partition", 2, partition),
    b("any", 2, |ev, a, p| any_all(ev, a, p, true)),
    b("all", 2, |ev, a, p| any_all(ev, a, p, false)),
    b("groupBy", 2, group_by),
];

fn map(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let l = ev.expect_list(&a[1], pos)?;
    let f = &a[0];
    Ok(Value::list(
        l.iter()
            .map(|x| Thunk::apply(f.clone(), x.clone(), pos))
            .collect(),
    ))
}

fn filter(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let f = ev.force(&a[0])?;
    let l = ev.expect_list(&a[1], pos)?;
    let mut out = Vec::new();
    for x in l.iter() {
        let r = ev.call(&f, x.clone(), pos)?;
        if ev.expect_bool(&r, pos)? {
            out.push(x.clone());
        }
    }
    if out.len() == l.len() {
        return Ok(Value::List(l));
    }
    Ok(Value::list(out))
}

fn head(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let l = ev.expect_list(&a[0], pos)?;
    match l.first() {
        Some(v) => ev.force(v),
        None => Err(Error::eval("list index 0 is out of bounds").at(pos)),
    }
}

fn tail(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let l = ev.expect_list(&a[0], pos)?;
    if l.is_empty() {
        return Err(Error::eval("'tail' called on an empty list").at(pos));
    }
    Ok(Value::list(l[1..].to_vec()))
}

fn elem_at(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let l = ev.expect_list(&a[0], pos)?;
    let i = ev.expect_int(&a[1], pos)?;
    match usize::try_from(i).ok().and_then(|i| l.get(i)) {
        Some(v) => ev.force(v),
        None => Err(Error::eval(format!("list index {i} is out of bounds")).at(pos)),
    }
}

fn elem(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let l = ev.expect_list(&a[1], pos)?;
    for x in l.iter() {
        if ops::equal(ev, &a[0], x, pos, true)? {
            return Ok(Value::Bool(true));
        }
    }
    Ok(Value::Bool(false))
}

fn concat_lists(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let l = ev.expect_list(&a[0], pos)?;
    let mut out = Vec::new();
    for x in l.iter() {
        out.extend(ev.expect_list(x, pos)?.iter().cloned());
    }
    Ok(Value::list(out))
}

fn concat_map(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let f = ev.force(&a[0])?;
    let l = ev.expect_list(&a[1], pos)?;
    let mut out = Vec::new();
    for x in l.iter() {
        let r = ev.call(&f, x.clone(), pos)?;
        out.extend(ev.expect_list(&r, pos)?.iter().cloned());
    }
    Ok(Value::list(out))
}

fn foldl(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let f = ev.force(&a[0])?;
    let l = ev.expect_list(&a[2], pos)?;
    let mut acc = a[1].clone();
    for x in l.iter() {
        let g = ev.call(&f, acc, pos)?;
        acc = ev.call(&g, x.clone(), pos)?;
    }
    ev.force(&acc)
}

fn gen_list(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let n = ev.expect_int(&a[1], pos)?;
    if n < 0 {
        return Err(Error::eval(format!("cannot create list of size {n}")).at(pos));
    }
    let f = &a[0];
    Ok(Value::list(
        (0..n)
            .map(|i| Thunk::apply(f.clone(), Value::Int(i), pos))
            .collect(),
    ))
}

fn sort(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let f = ev.force(&a[0])?;
    let l = ev.expect_list(&a[1], pos)?;
    let mut items: Vec<Value> = l.iter().cloned().collect();
    // A stable merge sort that propagates comparator errors.
    let mut err: Option<Error> = None;
    let mut less = |x: &Value, y: &Value| -> bool {
        if err.is_some() {
            return false;
        }
        let r = ev
            .call(&f, x.clone(), pos)
            .and_then(|g| ev.call(&g, y.clone(), pos))
            .and_then(|r| ev.expect_bool(&r, pos));
        match r {
            Ok(b) => b,
            Err(e) => {
                err = Some(e);
                false
            }
        }
    };
    merge_sort(&mut items, &mut less);
    if let Some(e) = err {
        return Err(e);
    }
    Ok(Value::list(items))
}

fn merge_sort(v: &mut Vec<Value>, less: &mut impl FnMut(&Value, &Value) -> bool) {
    if v.len() <= 1 {
        return;
    }
    let mut right = v.split_off(v.len() / 2);
    merge_sort(v, less);
    merge_sort(&mut right, less);
    let left = std::mem::take(v);
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut i, mut j) = (0, 0);
    while i < left.len() && j < right.len() {
        if less(&right[j], &left[i]) {
            out.push(right[j].clone());
            j += 1;
        } else {
            out.push(left[i].clone());
            i += 1;
        }
    }
    out.extend_from_slice(&left[i..]);
    out.extend_from_slice(&right[j..]);
    *v = out;
}

fn partition(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let f = ev.force(&a[0])?;
    let l = ev.expect_list(&a[1], pos)?;
    let (mut right, mut wrong) = (Vec::new(), Vec::new());
    for x in l.iter() {
        let r = ev.call(&f, x.clone(), pos)?;
        if ev.expect_bool(&r, pos)? {
            right.push(x.clone());
        } else {
            wrong.push(x.clone());
        }
    }
    Ok(mk_attrs(vec![
        ("right", Value::list(right)),
        ("wrong", Value::list(wrong)),
    ]))
}

fn any_all(ev: &Eval, a: &[Value], pos: Pos, any: bool) -> Result<Value> {
    let f = ev.force(&a[0])?;
    let l = ev.expect_list(&a[1], pos)?;
    for x in l.iter() {
        let r = ev.call(&f, x.clone(), pos)?;
        if ev.expect_bool(&r, pos)? == any {
            return Ok(Value::Bool(any));
        }
    }
    Ok(Value::Bool(!any))
}

fn group_by(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let f = ev.force(&a[0])?;
    let l = ev.expect_list(&a[1], pos)?;
    let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
    for x in l.iter() {
        let k = ev.call(&f, x.clone(), pos)?;
        let k = ev.expect_string(&k, pos)?;
        match groups.iter_mut().find(|(n, _)| *n == k.s) {
            Some((_, v)) => v.push(x.clone()),
            None => groups.push((k.s.clone(), vec![x.clone()])),
        }
    }
    Ok(Value::Attrs(Rc::new(Attrs::from_unsorted(
        groups
            .into_iter()
            .map(|(n, v)| Attr {
                name: n.as_str().into(),
                value: Value::list(v),
                pos: None,
            })
            .collect(),
    ))))
}
