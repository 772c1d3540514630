//! Value output exactly as Nix 2.8 prints it: `nix-instantiate --eval` syntax,
//! JSON (`--json`, `builtins.toJSON`) and XML (`--xml`, `builtins.toXML`).

use crate::error::{Error, Result};
use crate::eval::Eval;
use crate::pos::Pos;
use crate::value::*;
use std::collections::HashSet;
use std::fmt::Write;

/// Format a float like C++'s `ostream << double` (`%g` with precision 6).
pub fn format_float(x: f64) -> String {
    if x.is_nan() {
        return if x.is_sign_negative() {
            "-nan".into()
        } else {
            "nan".into()
        };
    }
    if x.is_infinite() {
        return if x < 0.0 { "-inf".into() } else { "inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let e = format!("{x:.5e}");
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..6).contains(&exp) {
        let decimals = (5 - exp).max(0) as usize;
        let s = format!("{x:.decimals$}");
        strip_zeros(&s)
    } else {
        let m = strip_zeros(mant);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{m}e{sign}{:02}", exp.abs())
    }
}

fn strip_zeros(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

/// Quote a string the way Nix prints string values.
pub fn quote_string(s: &str, out: &mut String) {
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' if chars.peek() == Some(&'{') => out.push_str("\\$"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn is_plain_ident(s: &str) -> bool {
    // Of the keywords, Nix 2.8 quotes only `if` (`{ "if" = 1; }`, but
    // `{ then = 1; }`): its printer checks that one name.
    if s == "if" {
        return false;
    }
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '\'' || c == '-')
}

/// Print a value as `nix-instantiate --eval` does; with `strict`, everything is
/// forced first, otherwise unevaluated parts print as `<CODE>`.
pub fn print_value(ev: &Eval, v: &Value, strict: bool) -> Result<String> {
    let mut out = String::new();
    let mut seen = HashSet::new();
    print_rec(ev, v, strict, &mut out, &mut seen, true)?;
    Ok(out)
}

fn print_rec(
    ev: &Eval,
    v: &Value,
    strict: bool,
    out: &mut String,
    seen: &mut HashSet<usize>,
    top: bool,
) -> Result<()> {
    let v = if strict || top {
        ev.force(v)?
    } else {
        match v {
            Value::Thunk(t) => match t.value() {
                Some(v) => v,
                None => {
                    out.push_str("<CODE>");
                    return Ok(());
                }
            },
            o => o.clone(),
        }
    };
    match &v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => out.push_str(&format_float(*f)),
        Value::Str(s) => quote_string(&s.s, out),
        Value::Path(p) => out.push_str(p),
        Value::Attrs(a) => {
            if !a.is_empty() && !seen.insert(std::rc::Rc::as_ptr(a) as usize) {
                out.push_str("«repeated»");
                return Ok(());
            }
            out.push_str("{ ");
            for attr in a.iter() {
                if is_plain_ident(attr.name.as_str()) {
                    out.push_str(attr.name.as_str());
                } else {
                    quote_string(attr.name.as_str(), out);
                }
                out.push_str(" = ");
                print_rec(ev, &attr.value, strict, out, seen, false)?;
                out.push_str("; ");
            }
            out.push('}');
        }
        Value::List(l) => {
            if !l.is_empty() && !seen.insert(std::rc::Rc::as_ptr(l) as usize) {
                out.push_str("«repeated»");
                return Ok(());
            }
            out.push_str("[ ");
            for item in l.iter() {
                print_rec(ev, item, strict, out, seen, false)?;
                out.push(' ');
            }
            out.push(']');
        }
        Value::Lambda(_) => out.push_str("<LAMBDA>"),
        Value::PrimOp(_) => out.push_str("<PRIMOP>"),
        Value::PrimOpApp(_) => out.push_str("<PRIMOP-APP>"),
        Value::Thunk(_) => out.push_str("<CODE>"),
    }
    Ok(())
}

/// Escape a string for JSON as Nix does.
pub fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Serialise a value as JSON (`builtins.toJSON`), collecting string context.
pub fn to_json(ev: &Eval, v: &Value, pos: Pos, out: &mut String, ctx: &mut Context) -> Result<()> {
    let v = ev.force(v)?;
    match &v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => out.push_str(&format_float(*f)),
        Value::Str(s) => {
            merge_context(ctx, &s.ctx);
            json_string(&s.s, out);
        }
        Value::Path(_) => {
            let s = ev.coerce_to_string(&v, pos, false, true)?;
            merge_context(ctx, &s.ctx);
            json_string(&s.s, out);
        }
        Value::Attrs(a) => {
            if let Some(f) = a.get("__toString") {
                let _ = f;
                let s = ev.coerce_to_string(&v, pos, false, true)?;
                merge_context(ctx, &s.ctx);
                json_string(&s.s, out);
                return Ok(());
            }
            if let Some(o) = a.get("outPath") {
                return to_json(ev, o, pos, out, ctx);
            }
            out.push('{');
            for (i, attr) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(attr.name.as_str(), out);
                out.push(':');
                to_json(ev, &attr.value, pos, out, ctx)?;
            }
            out.push('}');
        }
        Value::List(l) => {
            out.push('[');
            for (i, item) in l.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                to_json(ev, item, pos, out, ctx)?;
            }
            out.push(']');
        }
        other => {
            return Err(
                Error::eval(format!("cannot convert {} to JSON", other.type_desc())).at(pos),
            );
        }
    }
    Ok(())
}

fn xml_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            // Only newlines are escaped (XML attribute normalisation);
            // Nix 2.8 writes tab and carriage return as they are.
            '\n' => out.push_str("&#xA;"),
            c => out.push(c),
        }
    }
}

/// Serialise a value as Nix's XML (`--xml`, `builtins.toXML`), forcing it deeply.
pub fn to_xml(ev: &Eval, v: &Value, pos: Pos, ctx: &mut Context) -> Result<String> {
    let mut out = String::from("<?xml version='1.0' encoding='utf-8'?>\n<expr>\n");
    let mut drvs = HashSet::new();
    xml_rec(ev, v, pos, 1, &mut out, ctx, &mut drvs)?;
    out.push_str("</expr>\n");
    Ok(out)
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn xml_leaf(out: &mut String, depth: usize, tag: &str, value: &str) {
    indent(out, depth);
    let _ = write!(out, "<{tag} value=\"");
    xml_escape(value, out);
    out.push_str("\" />\n");
}

fn xml_attrs(
    ev: &Eval,
    a: &Attrs,
    pos: Pos,
    depth: usize,
    out: &mut String,
    ctx: &mut Context,
    drvs: &mut HashSet<String>,
) -> Result<()> {
    for attr in a.iter() {
        indent(out, depth);
        out.push_str("<attr name=\"");
        xml_escape(attr.name.as_str(), out);
        out.push_str("\">\n");
        xml_rec(ev, &attr.value, pos, depth + 1, out, ctx, drvs)?;
        indent(out, depth);
        out.push_str("</attr>\n");
    }
    Ok(())
}

fn xml_rec(
    ev: &Eval,
    v: &Value,
    pos: Pos,
    depth: usize,
    out: &mut String,
    ctx: &mut Context,
    drvs: &mut HashSet<String>,
) -> Result<()> {
    let v = ev.force(v)?;
    match &v {
        Value::Null => {
            indent(out, depth);
            out.push_str("<null />\n");
        }
        Value::Bool(b) => xml_leaf(out, depth, "bool", if *b { "true" } else { "false" }),
        Value::Int(i) => xml_leaf(out, depth, "int", &i.to_string()),
        Value::Float(f) => xml_leaf(out, depth, "float", &format_float(*f)),
        Value::Str(s) => {
            merge_context(ctx, &s.ctx);
            xml_leaf(out, depth, "string", &s.s)
        }
        Value::Path(p) => xml_leaf(out, depth, "path", p),
        Value::Attrs(a) => {
            if crate::ops::is_derivation(ev, a)? {
                indent(out, depth);
                out.push_str("<derivation");
                let mut drv_path = None;
                if let Some(d) = a.get("drvPath") {
                    let s = ev.expect_string(d, pos)?;
                    merge_context(ctx, &s.ctx);
                    out.push_str(" drvPath=\"");
                    xml_escape(&s.s, out);
                    out.push('"');
                    drv_path = Some(s.s.clone());
                }
                if let Some(o) = a.get("outPath") {
                    let s = ev.expect_string(o, pos)?;
                    merge_context(ctx, &s.ctx);
                    out.push_str(" outPath=\"");
                    xml_escape(&s.s, out);
                    out.push('"');
                }
                out.push_str(">\n");
                let first = drv_path.map(|d| drvs.insert(d)).unwrap_or(true);
                if first {
                    xml_attrs(ev, a, pos, depth + 1, out, ctx, drvs)?;
                } else {
                    indent(out, depth + 1);
                    out.push_str("<repeated />\n");
                }
                indent(out, depth);
                out.push_str("</derivation>\n");
            } else if a.is_empty() {
                indent(out, depth);
                out.push_str("<attrs>\n");
                indent(out, depth);
                out.push_str("</attrs>\n");
            } else {
                indent(out, depth);
                out.push_str("<attrs>\n");
                xml_attrs(ev, a, pos, depth + 1, out, ctx, drvs)?;
                indent(out, depth);
                out.push_str("</attrs>\n");
            }
        }
        Value::List(l) => {
            indent(out, depth);
            out.push_str("<list>\n");
            for item in l.iter() {
                xml_rec(ev, item, pos, depth + 1, out, ctx, drvs)?;
            }
            indent(out, depth);
            out.push_str("</list>\n");
        }
        Value::Lambda(c) => {
            indent(out, depth);
            out.push_str("<function>\n");
            let def = &c.def;
            match &def.formals {
                Some(f) => {
                    indent(out, depth + 1);
                    out.push_str("<attrspat");
                    if f.ellipsis {
                        out.push_str(" ellipsis=\"1\"");
                    }
                    if let Some(at) = &f.at {
                        out.push_str(" name=\"");
                        xml_escape(at.as_str(), out);
                        out.push('"');
                    }
                    out.push_str(">\n");
                    let mut names: Vec<&str> = f.entries.iter().map(|(n, _)| n.as_str()).collect();
                    names.sort_unstable();
                    for n in names {
                        indent(out, depth + 2);
                        out.push_str("<attr name=\"");
                        xml_escape(n, out);
                        out.push_str("\" />\n");
                    }
                    indent(out, depth + 1);
                    out.push_str("</attrspat>\n");
                }
                None => {
                    indent(out, depth + 1);
                    out.push_str("<varpat name=\"");
                    xml_escape(def.arg.as_ref().map(|s| s.as_str()).unwrap_or(""), out);
                    out.push_str("\" />\n");
                }
            }
            indent(out, depth);
            out.push_str("</function>\n");
        }
        Value::PrimOp(_) | Value::PrimOpApp(_) => {
            indent(out, depth);
            out.push_str("<unevaluated />\n");
        }
        Value::Thunk(_) => {
            indent(out, depth);
            out.push_str("<unevaluated />\n");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_like_cpp() {
        assert_eq!(format_float(1.0), "1");
        assert_eq!(format_float(1.5), "1.5");
        assert_eq!(format_float(123456789.0), "1.23457e+08");
        assert_eq!(format_float(1e-7), "1e-07");
        assert_eq!(format_float(100000.0), "100000");
        assert_eq!(format_float(1000000.0), "1e+06");
        assert_eq!(format_float(567.89), "567.89");
        assert_eq!(format_float(0.1), "0.1");
        assert_eq!(format_float(0.0001), "0.0001");
    }

    #[test]
    fn quoting() {
        let mut s = String::new();
        quote_string("a\"\\\n${$", &mut s);
        assert_eq!(s, "\"a\\\"\\\\\\n\\${$\"");
    }
}
