//! Control, arithmetic and miscellaneous builtins.

use super::{b, g, mk_attrs, Builtin};
use crate::error::{Error, ErrorKind, Result};
use crate::eval::Eval;
use crate::ir::BinOp;
use crate::ops;
use crate::pos::Pos;
use crate::value::*;
use std::rc::Rc;

pub(super) const BUILTINS: &[Builtin] = &[
    g("throw", 1, throw),
    g("abort", 1, abort),
    b("trace", 2, trace),
    b("tryEval", 1, try_eval),
    b("seq", 2, seq),
    b("deepSeq", 2, deep_seq),
    b("add", 2, |ev, a, p| arith(ev, a, p, BinOp::Add)),
    b("sub", 2, |ev, a, p| arith(ev, a, p, BinOp::Sub)),
    b("mul", 2, |ev, a, p| arith(ev, a, p, BinOp::Mul)),
    b("div", 2, |ev, a, p| arith(ev, a, p, BinOp::Div)),
    b("lessThan", 2, less_than),
    b("bitAnd", 2, |ev, a, p| {
        Ok(Value::Int(
            ev.expect_int(&a[0], p)? & ev.expect_int(&a[1], p)?,
        ))
    }),
    b("bitOr", 2, |ev, a, p| {
        Ok(Value::Int(
            ev.expect_int(&a[0], p)? | ev.expect_int(&a[1], p)?,
        ))
    }),
    b("bitXor", 2, |ev, a, p| {
        Ok(Value::Int(
            ev.expect_int(&a[0], p)? ^ ev.expect_int(&a[1], p)?,
        ))
    }),
    b("floor", 1, |ev, a, p| round(ev, a, p, f64::floor)),
    b("ceil", 1, |ev, a, p| round(ev, a, p, f64::ceil)),
    b("getEnv", 1, get_env),
    g("placeholder", 1, placeholder),
    b("genericClosure", 1, generic_closure),
    b("addErrorContext", 2, add_error_context),
];

fn throw(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let s = ev.coerce_to_string(&a[0], pos, false, false)?;
    Err(Error::throw(s.s))
}

fn abort(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let s = ev.coerce_to_string(&a[0], pos, false, false)?;
    Err(Error::new(ErrorKind::Abort(s.s)))
}

fn trace(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let v = ev.force(&a[0])?;
    if ev.print_trace {
        let shown = match &v {
            Value::Str(s) => s.s.clone(),
            other => crate::print::print_value(ev, other, false)?,
        };
        eprintln!("trace: {shown}");
    }
    let _ = pos;
    ev.force(&a[1])
}

fn try_eval(ev: &Eval, a: &[Value], _: Pos) -> Result<Value> {
    match ev.force(&a[0]) {
        Ok(v) => Ok(mk_attrs(vec![("success", Value::Bool(true)), ("value", v)])),
        Err(e) if e.is_catchable() => Ok(mk_attrs(vec![
            ("success", Value::Bool(false)),
            ("value", Value::Bool(false)),
        ])),
        Err(e) => Err(e),
    }
}

fn seq(ev: &Eval, a: &[Value], _: Pos) -> Result<Value> {
    ev.force(&a[0])?;
    ev.force(&a[1])
}

/// Force a value and everything inside it.
pub fn deep_force(ev: &Eval, v: &Value) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    deep_rec(ev, v, &mut seen)
}

fn deep_rec(ev: &Eval, v: &Value, seen: &mut std::collections::HashSet<usize>) -> Result<()> {
    match ev.force(v)? {
        Value::Attrs(s) => {
            if !seen.insert(Rc::as_ptr(&s) as usize) {
                return Ok(());
            }
            for e in s.iter() {
                deep_rec(ev, &e.value, seen)?;
            }
        }
        Value::List(l) => {
            if !seen.insert(Rc::as_ptr(&l) as usize) {
                return Ok(());
            }
            for x in l.iter() {
                deep_rec(ev, x, seen)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn deep_seq(ev: &Eval, a: &[Value], _: Pos) -> Result<Value> {
    deep_force(ev, &a[0])?;
    ev.force(&a[1])
}

fn arith(ev: &Eval, a: &[Value], pos: Pos, op: BinOp) -> Result<Value> {
    let x = ev.force(&a[0])?;
    let y = ev.force(&a[1])?;
    for v in [&x, &y] {
        if !matches!(v, Value::Int(_) | Value::Float(_)) {
            return Err(Error::eval(format!(
                "value is {} while an integer was expected",
                v.type_desc()
            ))
            .at(pos));
        }
    }
    ops::arith(ev, op, &x, &y, pos)
}

fn less_than(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    Ok(Value::Bool(
        ops::compare(ev, &a[0], &a[1], pos)? == std::cmp::Ordering::Less,
    ))
}

fn round(ev: &Eval, a: &[Value], pos: Pos, f: fn(f64) -> f64) -> Result<Value> {
    match ev.force(&a[0])? {
        Value::Int(i) => Ok(Value::Int(i)),
        Value::Float(x) => Ok(Value::Int(f(x) as i64)),
        other => Err(Error::eval(format!(
            "value is {} while a float was expected",
            other.type_desc()
        ))
        .at(pos)),
    }
}

fn get_env(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let n = ev.expect_string(&a[0], pos)?;
    Ok(Value::string(std::env::var(&n.s).unwrap_or_default()))
}

/// `/` followed by the nixbase32 SHA-256 of `nix-output:NAME`.
pub fn placeholder_for(output: &str) -> String {
    let h = kiln_nix::hash::Hash::of(
        kiln_nix::hash::HashAlgo::Sha256,
        format!("nix-output:{output}").as_bytes(),
    );
    format!("/{}", kiln_nix::nixbase32::encode(h.digest()))
}

fn placeholder(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let n = ev.expect_string(&a[0], pos)?;
    Ok(Value::string(placeholder_for(&n.s)))
}

fn generic_closure(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let args = ev.expect_attrs(&a[0], pos)?;
    let start = args
        .get("startSet")
        .ok_or_else(|| Error::eval("attribute 'startSet' required").at(pos))?;
    let op = args
        .get("operator")
        .ok_or_else(|| Error::eval("attribute 'operator' required").at(pos))?;
    let op = ev.force(op)?;
    let mut work: std::collections::VecDeque<Value> =
        ev.expect_list(start, pos)?.iter().cloned().collect();
    let mut done: Vec<Value> = Vec::new();
    // Nix keeps the keys in a set ordered by its value comparison, which
    // fails on keys that cannot be compared. Numbers, strings and paths
    // (what keys nearly always are) are looked up by hash; other keys
    // (lists) are kept sorted and searched with the comparison. Keys of
    // different kinds would be compared with each other: that comparison
    // is made, for its error.
    let mut hashed: std::collections::HashSet<ClosureKey> = std::collections::HashSet::new();
    let mut sorted: Vec<Value> = Vec::new();
    let mut first: Option<Value> = None;
    while let Some(item) = work.pop_front() {
        let s = ev.expect_attrs(&item, pos)?;
        let key = s
            .get("key")
            .ok_or_else(|| Error::eval("attribute 'key' required").at(pos))?;
        let key = ev.force(key)?;
        match &first {
            None => first = Some(key.clone()),
            Some(f) if key_kind(f) != key_kind(&key) => {
                ops::compare(ev, &key, f, pos)?;
            }
            Some(_) => {}
        }
        match ClosureKey::of(&key) {
            Some(k) => {
                if !hashed.insert(k) {
                    continue;
                }
            }
            None => {
                // Binary search with Nix's comparison (which may fail).
                let (mut lo, mut hi) = (0, sorted.len());
                let mut found = false;
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    match ops::compare(ev, &key, &sorted[mid], pos)? {
                        std::cmp::Ordering::Less => hi = mid,
                        std::cmp::Ordering::Greater => lo = mid + 1,
                        std::cmp::Ordering::Equal => {
                            found = true;
                            break;
                        }
                    }
                }
                if found {
                    continue;
                }
                sorted.insert(lo, key);
            }
        }
        done.push(item.clone());
        let next = ev.call(&op, item, pos)?;
        work.extend(ev.expect_list(&next, pos)?.iter().cloned());
    }
    Ok(Value::list(done))
}

/// Which keys of `genericClosure` Nix can compare with each other.
#[derive(PartialEq, Eq, Clone, Copy)]
enum KeyKind {
    Number,
    Str,
    Path,
    Other,
}

fn key_kind(v: &Value) -> KeyKind {
    match v {
        Value::Int(_) | Value::Float(_) => KeyKind::Number,
        Value::Str(_) => KeyKind::Str,
        Value::Path(_) => KeyKind::Path,
        _ => KeyKind::Other,
    }
}

/// A `genericClosure` key with a hashable identity that agrees with Nix's
/// equality: `1 == 1.0`, strings by content (context ignored), paths.
#[derive(PartialEq, Eq, Hash)]
enum ClosureKey {
    Int(i64),
    Float(u64),
    Str(String),
    Path(String),
}

impl ClosureKey {
    fn of(v: &Value) -> Option<ClosureKey> {
        Some(match v {
            Value::Int(i) => ClosureKey::Int(*i),
            Value::Float(f) if f.is_nan() => return None,
            // An integral float equals the integer of the same value.
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => ClosureKey::Int(*f as i64),
            Value::Float(f) => ClosureKey::Float((f + 0.0).to_bits()),
            Value::Str(s) => ClosureKey::Str(s.s.clone()),
            Value::Path(p) => ClosureKey::Path(p.to_string()),
            _ => return None,
        })
    }
}

fn add_error_context(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    match ev.force(&a[1]) {
        Ok(v) => Ok(v),
        Err(e) => {
            let msg = ev
                .coerce_to_string(&a[0], pos, false, false)
                .map(|s| s.s)
                .unwrap_or_default();
            Err(e.with_trace(Some(pos), msg))
        }
    }
}
