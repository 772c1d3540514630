//! `toJSON`, `fromJSON`, `fromTOML` and `toXML`.

use super::{b, Builtin};
use crate::error::{Error, Result};
use crate::eval::Eval;
use crate::pos::Pos;
use crate::value::*;
use std::rc::Rc;

pub(super) const BUILTINS: &[Builtin] = &[
    b("toJSON", 1, to_json),
    b("fromJSON", 1, from_json),
    g_from_toml(),
    b("toXML", 1, to_xml),
];

const fn g_from_toml() -> Builtin {
    super::g("fromTOML", 1, from_toml)
}

fn to_json(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let mut out = String::new();
    let mut ctx = Vec::new();
    crate::print::to_json(ev, &a[0], pos, &mut out, &mut ctx)?;
    Ok(Value::string_ctx(out, ctx))
}

fn to_xml(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let mut ctx = Vec::new();
    let out = crate::print::to_xml(ev, &a[0], pos, &mut ctx)?;
    Ok(Value::string_ctx(out, ctx))
}

fn from_json(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let s = ev.expect_string(&a[0], pos)?;
    super::json_parse::parse(&s.s)
        .map_err(|e| Error::eval(format!("while decoding a JSON string: {e}")).at(pos))
}

/// Nix 2.8 refuses TOML dates and times.
fn toml_value(v: toml::Value) -> std::result::Result<Value, &'static str> {
    Ok(match v {
        toml::Value::String(s) => Value::string(s),
        toml::Value::Integer(i) => Value::Int(i),
        toml::Value::Float(f) => Value::Float(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(_) => return Err("Dates and times are not supported"),
        toml::Value::Array(a) => Value::list(
            a.into_iter()
                .map(toml_value)
                .collect::<std::result::Result<_, _>>()?,
        ),
        toml::Value::Table(t) => Value::Attrs(Rc::new(Attrs::from_unsorted(
            t.into_iter()
                .map(|(k, v)| {
                    Ok::<_, &'static str>(Attr {
                        name: k.as_str().into(),
                        value: toml_value(v)?,
                        pos: None,
                    })
                })
                .collect::<std::result::Result<_, _>>()?,
        ))),
    })
}

fn from_toml(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let s = ev.expect_string(&a[0], pos)?;
    let t: toml::Table =
        s.s.parse()
            .map_err(|e| Error::eval(format!("while parsing a TOML string: {e}")).at(pos))?;
    toml_value(toml::Value::Table(t))
        .map_err(|e| Error::eval(format!("while parsing a TOML string: {e}")).at(pos))
}
