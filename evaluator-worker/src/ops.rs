//! Operators: arithmetic with Nix's int/float rules, comparison, equality,
//! `+` on strings and paths, `++` and `//`.

use crate::error::{Error, Result};
use crate::eval::Eval;
use crate::ir::BinOp;
use crate::lower::canon_path;
use crate::pos::Pos;
use crate::value::*;
use std::cmp::Ordering;
use std::rc::Rc;

/// Apply a strict binary operator to two forced values.
pub fn binop(ev: &Eval, op: BinOp, a: &Value, b: &Value, pos: Pos) -> Result<Value> {
    match op {
        BinOp::Add => add(ev, a, b, pos),
        BinOp::Sub | BinOp::Mul | BinOp::Div => arith(ev, op, a, b, pos),
        BinOp::Eq => Ok(Value::Bool(equal(ev, a, b, pos, false)?)),
        BinOp::Neq => Ok(Value::Bool(!equal(ev, a, b, pos, false)?)),
        BinOp::Lt => Ok(Value::Bool(compare(ev, a, b, pos)? == Ordering::Less)),
        BinOp::Le => Ok(Value::Bool(compare(ev, b, a, pos)? != Ordering::Less)),
        BinOp::Gt => Ok(Value::Bool(compare(ev, b, a, pos)? == Ordering::Less)),
        BinOp::Ge => Ok(Value::Bool(compare(ev, a, b, pos)? != Ordering::Less)),
        BinOp::Concat => {
            let l = ev.expect_list(a, pos)?;
            let r = ev.expect_list(b, pos)?;
            if r.is_empty() {
                return Ok(Value::List(l));
            }
            if l.is_empty() {
                return Ok(Value::List(r));
            }
            let mut v = Vec::with_capacity(l.len() + r.len());
            v.extend(l.iter().cloned());
            v.extend(r.iter().cloned());
            Ok(Value::list(v))
        }
        BinOp::Update => {
            let l = ev.expect_attrs(a, pos)?;
            let r = ev.expect_attrs(b, pos)?;
            if r.is_empty() {
                return Ok(Value::Attrs(l));
            }
            if l.is_empty() {
                return Ok(Value::Attrs(r));
            }
            Ok(Value::Attrs(Rc::new(l.update(&r))))
        }
        BinOp::And | BinOp::Or | BinOp::Impl => {
            let x = ev.expect_bool(a, pos)?;
            let y = ev.expect_bool(b, pos)?;
            Ok(Value::Bool(match op {
                BinOp::And => x && y,
                BinOp::Or => x || y,
                _ => !x || y,
            }))
        }
    }
}

/// `+`: numbers, or string/path concatenation decided by the left operand.
pub fn add(ev: &Eval, a: &Value, b: &Value, pos: Pos) -> Result<Value> {
    match a {
        Value::Int(_) | Value::Float(_) => arith(ev, BinOp::Add, a, b, pos),
        Value::Path(p) => {
            let s = ev.coerce_to_string(b, pos, false, false)?;
            if !s.ctx.is_empty() {
                return Err(Error::eval(
                    "a string that refers to a store path cannot be appended to a path",
                )
                .at(pos));
            }
            Ok(Value::Path(canon_path(&format!("{p}{}", s.s)).into()))
        }
        _ => {
            let l = ev.coerce_to_string(a, pos, false, true)?;
            let r = ev.coerce_to_string(b, pos, false, true)?;
            let mut out = l;
            out.s.push_str(&r.s);
            out.add_context(&r.ctx);
            Ok(Value::Str(Rc::new(out)))
        }
    }
}

/// `-`, `*`, `/` (and numeric `+`): integers wrap, mixed operands give floats.
pub fn arith(_ev: &Eval, op: BinOp, a: &Value, b: &Value, pos: Pos) -> Result<Value> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Ok(Value::Int(match op {
            BinOp::Add => x.wrapping_add(*y),
            BinOp::Sub => x.wrapping_sub(*y),
            BinOp::Mul => x.wrapping_mul(*y),
            _ => {
                if *y == 0 {
                    return Err(Error::eval("division by zero").at(pos));
                }
                x.wrapping_div(*y)
            }
        })),
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            let x = as_f64(a);
            let y = as_f64(b);
            Ok(Value::Float(match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                _ => {
                    if y == 0.0 {
                        return Err(Error::eval("division by zero").at(pos));
                    }
                    x / y
                }
            }))
        }
        (Value::Int(_) | Value::Float(_), other) if op == BinOp::Add => Err(Error::eval(format!(
            "cannot add {} to {}",
            other.type_desc(),
            a.type_desc()
        ))
        .at(pos)),
        (Value::Int(_) | Value::Float(_), other) | (other, _) => Err(Error::eval(format!(
            "value is {} while an integer was expected",
            other.type_desc()
        ))
        .at(pos)),
    }
}

fn as_f64(v: &Value) -> f64 {
    match v {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        _ => 0.0,
    }
}

/// Nix's ordering (`<`, `sort`, `lessThan`): numbers, strings, paths, lists.
pub fn compare(ev: &Eval, a: &Value, b: &Value, pos: Pos) -> Result<Ordering> {
    let a = ev.force(a)?;
    let b = ev.force(b)?;
    match (&a, &b) {
        (Value::Int(x), Value::Int(y)) => Ok(x.cmp(y)),
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => Ok(as_f64(&a)
            .partial_cmp(&as_f64(&b))
            .unwrap_or(Ordering::Equal)),
        (Value::Str(x), Value::Str(y)) => Ok(x.s.as_bytes().cmp(y.s.as_bytes())),
        (Value::Path(x), Value::Path(y)) => Ok(x.as_bytes().cmp(y.as_bytes())),
        (Value::List(x), Value::List(y)) => {
            for (p, q) in x.iter().zip(y.iter()) {
                if !equal(ev, p, q, pos, true)? {
                    return compare(ev, p, q, pos);
                }
            }
            Ok(x.len().cmp(&y.len()))
        }
        _ => Err(Error::eval(format!(
            "cannot compare {} with {}",
            a.type_desc(),
            b.type_desc()
        ))
        .at(pos)),
    }
}

/// Whether `a` and `b` are the same value object: Nix's `&v1 == &v2` in
/// `eqValues`, for values reached through a set or list (or an argument of
/// `elem`). A Kiln thunk, closure, set or list allocation plays the part of
/// a Nix value cell: a thunk forced to a function is a cell of its own.
fn same_cell(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Thunk(x), Value::Thunk(y)) => Rc::ptr_eq(&x.0, &y.0),
        (Value::Lambda(x), Value::Lambda(y)) => Rc::ptr_eq(x, y),
        (Value::Attrs(x), Value::Attrs(y)) => Rc::ptr_eq(x, y),
        (Value::List(x), Value::List(y)) => Rc::ptr_eq(x, y),
        (Value::PrimOp(x), Value::PrimOp(y)) => Rc::ptr_eq(x, y),
        (Value::PrimOpApp(x), Value::PrimOpApp(y)) => Rc::ptr_eq(x, y),
        _ => false,
    }
}

/// Nix's `==`. `by_ref` says whether `a` and `b` are referenced values (the
/// elements of lists and sets, `elem`'s arguments), for which Nix compares
/// identity once both are forced: the same function is equal to itself
/// there, while a function is never equal to anything at the top level.
/// Nix 2.8 forces first, so a member that fails fails the comparison even
/// when both sides are the same value (`let x = { a = throw ""; }; in x == x`).
pub fn equal(ev: &Eval, a_ref: &Value, b_ref: &Value, pos: Pos, by_ref: bool) -> Result<bool> {
    let a = ev.force(a_ref).map_err(|e| e.at(pos))?;
    let b = ev.force(b_ref).map_err(|e| e.at(pos))?;
    if by_ref && same_cell(a_ref, b_ref) {
        return Ok(true);
    }
    Ok(match (&a, &b) {
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            as_f64(&a) == as_f64(&b)
        }
        (Value::Str(x), Value::Str(y)) => x.s == y.s,
        (Value::Path(x), Value::Path(y)) => x == y,
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::List(x), Value::List(y)) => {
            if x.len() != y.len() {
                return Ok(false);
            }
            for (p, q) in x.iter().zip(y.iter()) {
                if !equal(ev, p, q, pos, true)? {
                    return Ok(false);
                }
            }
            true
        }
        (Value::Attrs(x), Value::Attrs(y)) => {
            if is_derivation(ev, x)? && is_derivation(ev, y)? {
                if let (Some(p), Some(q)) = (x.get("outPath"), y.get("outPath")) {
                    return equal(ev, p, q, pos, true);
                }
            }
            if x.len() != y.len() {
                return Ok(false);
            }
            for (p, q) in x.iter().zip(y.iter()) {
                if p.name != q.name || !equal(ev, &p.value, &q.value, pos, true)? {
                    return Ok(false);
                }
            }
            true
        }
        _ => false,
    })
}

/// True if the set has `type = "derivation"`.
pub fn is_derivation(ev: &Eval, a: &Attrs) -> Result<bool> {
    match a.get("type") {
        Some(t) => Ok(matches!(ev.force(t)?, Value::Str(s) if s.s == "derivation")),
        None => Ok(false),
    }
}
