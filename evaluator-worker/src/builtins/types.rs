//! Type predicates: `typeOf`, `isNull`, `isInt`, ...

use super::{b, g, Builtin};
use crate::error::Result;
use crate::eval::Eval;
use crate::pos::Pos;
use crate::value::Value;

pub(super) const BUILTINS: &[Builtin] = &[
    b("typeOf", 1, type_of),
    g("isNull", 1, |ev, a, _| {
        Ok(Value::Bool(matches!(ev.force(&a[0])?, Value::Null)))
    }),
    b("isInt", 1, |ev, a, _| {
        Ok(Value::Bool(matches!(ev.force(&a[0])?, Value::Int(_))))
    }),
    b("isFloat", 1, |ev, a, _| {
        Ok(Value::Bool(matches!(ev.force(&a[0])?, Value::Float(_))))
    }),
    b("isBool", 1, |ev, a, _| {
        Ok(Value::Bool(matches!(ev.force(&a[0])?, Value::Bool(_))))
    }),
    b("isString", 1, |ev, a, _| {
        Ok(Value::Bool(matches!(ev.force(&a[0])?, Value::Str(_))))
    }),
    b("isPath", 1, |ev, a, _| {
        Ok(Value::Bool(matches!(ev.force(&a[0])?, Value::Path(_))))
    }),
    b("isAttrs", 1, |ev, a, _| {
        Ok(Value::Bool(matches!(ev.force(&a[0])?, Value::Attrs(_))))
    }),
    b("isList", 1, |ev, a, _| {
        Ok(Value::Bool(matches!(ev.force(&a[0])?, Value::List(_))))
    }),
    b("isFunction", 1, |ev, a, _| {
        Ok(Value::Bool(ev.force(&a[0])?.is_function()))
    }),
];

fn type_of(ev: &Eval, a: &[Value], _: Pos) -> Result<Value> {
    Ok(Value::string(ev.force(&a[0])?.type_name()))
}
