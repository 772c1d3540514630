//! String builtins, versions and string context.

use super::{b, g, mk_attrs, Builtin};
use crate::error::{Error, Result};
use crate::eval::Eval;
use crate::pos::Pos;
use crate::value::*;
use kiln_nix::hash::{Hash, HashAlgo};
use std::rc::Rc;

pub(super) const BUILTINS: &[Builtin] = &[
    g("toString", 1, to_string),
    b("substring", 3, substring),
    b("stringLength", 1, string_length),
    b("concatStringsSep", 2, concat_strings_sep),
    b("replaceStrings", 3, replace_strings),
    b("splitVersion", 1, split_version_b),
    b("compareVersions", 2, compare_versions_b),
    b("parseDrvName", 1, parse_drv_name),
    b("hashString", 2, hash_string),
    b("unsafeDiscardStringContext", 1, discard_context),
    b("unsafeDiscardOutputDependency", 1, discard_output_dep),
    b("hasContext", 1, has_context),
    b("getContext", 1, get_context),
    b("appendContext", 2, append_context),
];

fn to_string(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    Ok(Value::Str(Rc::new(
        ev.coerce_to_string(&a[0], pos, true, false)?,
    )))
}

/// `coerce_to_string(v, pos, false, true)`, but a value that is already a
/// string is shared instead of copied.
fn string_arg(ev: &Eval, v: &Value, pos: Pos) -> Result<Rc<NixString>> {
    match ev.force(v)? {
        Value::Str(s) => Ok(s),
        other => Ok(Rc::new(ev.coerce_to_string(&other, pos, false, true)?)),
    }
}

fn substring(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let start = ev.expect_int(&a[0], pos)?;
    let len = ev.expect_int(&a[1], pos)?;
    let s = string_arg(ev, &a[2], pos)?;
    if start < 0 {
        return Err(Error::eval("negative start position in 'substring'").at(pos));
    }
    let bytes = s.s.as_bytes();
    let start = (start as usize).min(bytes.len());
    let end = if len < 0 {
        bytes.len()
    } else {
        start.saturating_add(len as usize).min(bytes.len())
    };
    let sub = String::from_utf8_lossy(&bytes[start..end]).into_owned();
    Ok(Value::string_ctx(sub, s.ctx.clone()))
}

fn string_length(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let s = string_arg(ev, &a[0], pos)?;
    Ok(Value::Int(s.s.len() as i64))
}

fn concat_strings_sep(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let sep = ev.expect_string(&a[0], pos)?;
    let l = ev.expect_list(&a[1], pos)?;
    let mut out = NixString::plain(String::new());
    out.add_context(&sep.ctx);
    for (i, x) in l.iter().enumerate() {
        if i > 0 {
            out.s.push_str(&sep.s);
        }
        let s = string_arg(ev, x, pos)?;
        out.s.push_str(&s.s);
        out.add_context(&s.ctx);
    }
    Ok(Value::Str(Rc::new(out)))
}

fn replace_strings(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let from = ev.expect_list(&a[0], pos)?;
    let to = ev.expect_list(&a[1], pos)?;
    if from.len() != to.len() {
        return Err(Error::eval(
            "'from' and 'to' arguments to 'replaceStrings' have different lengths",
        )
        .at(pos));
    }
    // Nix forces every pattern, then every replacement, then the subject.
    let from: Vec<Rc<NixString>> = from
        .iter()
        .map(|x| ev.expect_string(x, pos))
        .collect::<Result<_>>()?;
    let to: Vec<Rc<NixString>> = to
        .iter()
        .map(|x| ev.expect_string(x, pos))
        .collect::<Result<_>>()?;
    let s = ev.expect_string(&a[2], pos)?;
    let mut out = NixString {
        s: String::new(),
        ctx: s.ctx.clone(),
    };
    let bytes = s.s.as_bytes();
    let mut i = 0;
    while i <= bytes.len() {
        let mut matched = false;
        for (k, f) in from.iter().enumerate() {
            if bytes[i..].starts_with(f.s.as_bytes()) {
                let t = &to[k];
                out.s.push_str(&t.s);
                out.add_context(&t.ctx);
                if f.s.is_empty() {
                    if i < bytes.len() {
                        let c = s.s[i..].chars().next().unwrap_or('\0');
                        out.s.push(c);
                        i += c.len_utf8();
                    } else {
                        i += 1;
                    }
                } else {
                    i += f.s.len();
                }
                matched = true;
                break;
            }
        }
        if !matched {
            if i < bytes.len() {
                let c = s.s[i..].chars().next().unwrap_or('\0');
                out.s.push(c);
                i += c.len_utf8();
            } else {
                i += 1;
            }
        }
    }
    Ok(Value::Str(Rc::new(out)))
}

/// Split a version into components as Nix does (`1.2pre3` → `1`, `2`, `pre`, `3`).
pub fn split_version(s: &str) -> Vec<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'.' || b[i] == b'-' {
            i += 1;
            continue;
        }
        let start = i;
        if b[i].is_ascii_digit() {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        } else {
            while i < b.len() && !b[i].is_ascii_digit() && b[i] != b'.' && b[i] != b'-' {
                i += 1;
            }
        }
        out.push(s[start..i].to_string());
    }
    out
}

fn cmp_component(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    let an = a
        .parse::<u64>()
        .ok()
        .filter(|_| !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()));
    let bn = b
        .parse::<u64>()
        .ok()
        .filter(|_| !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()));
    match (an, bn) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ if a.is_empty() && bn.is_some() => Less,
        _ if b.is_empty() && an.is_some() => Greater,
        _ if a == "pre" && b != "pre" => Less,
        _ if b == "pre" && a != "pre" => Greater,
        (Some(_), None) => Greater,
        (None, Some(_)) => Less,
        _ => a.cmp(b),
    }
}

/// Nix's `compareVersions`.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let x = split_version(a);
    let y = split_version(b);
    for i in 0..x.len().max(y.len()) {
        let p = x.get(i).map(|s| s.as_str()).unwrap_or("");
        let q = y.get(i).map(|s| s.as_str()).unwrap_or("");
        let c = cmp_component(p, q);
        if c != std::cmp::Ordering::Equal {
            return c;
        }
    }
    std::cmp::Ordering::Equal
}

fn split_version_b(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let s = ev.coerce_to_string(&a[0], pos, false, false)?;
    Ok(Value::list(
        split_version(&s.s).into_iter().map(Value::string).collect(),
    ))
}

fn compare_versions_b(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let x = ev.expect_string(&a[0], pos)?;
    let y = ev.expect_string(&a[1], pos)?;
    Ok(Value::Int(match compare_versions(&x.s, &y.s) {
        std::cmp::Ordering::Less => -1,
        std::cmp::Ordering::Equal => 0,
        std::cmp::Ordering::Greater => 1,
    }))
}

fn parse_drv_name(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    // A string without context, as Nix's `forceStringNoCtx`.
    let s = ev.expect_string(&a[0], pos)?;
    if let Some(c) = s.ctx.first() {
        return Err(Error::eval(format!(
            "the string '{}' is not allowed to refer to a store path (such as '{}')",
            s.s, c
        ))
        .at(pos));
    }
    let b = s.s.as_bytes();
    let mut split = b.len();
    for i in 0..b.len() {
        if b[i] == b'-' && b.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic()) {
            split = i;
            break;
        }
    }
    let (name, version) = if split < b.len() {
        (&s.s[..split], &s.s[split + 1..])
    } else {
        (&s.s[..], "")
    };
    Ok(mk_attrs(vec![
        ("name", Value::string(name)),
        ("version", Value::string(version)),
    ]))
}

fn hash_string(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let algo = ev.expect_string(&a[0], pos)?;
    let algo = HashAlgo::from_name(&algo.s)
        .map_err(|_| Error::eval(format!("unknown hash algorithm '{}'", algo.s)).at(pos))?;
    let s = ev.coerce_to_string(&a[1], pos, false, false)?;
    Ok(Value::string(Hash::of(algo, s.s.as_bytes()).to_base16()))
}

fn discard_context(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let s = ev.coerce_to_string(&a[0], pos, false, false)?;
    Ok(Value::string(s.s))
}

fn discard_output_dep(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let s = ev.coerce_to_string(&a[0], pos, false, false)?;
    let ctx = s
        .ctx
        .iter()
        .map(|c| {
            if let Some(d) = c.strip_prefix('=') {
                Rc::from(d)
            } else {
                c.clone()
            }
        })
        .collect();
    let mut out = NixString::plain(s.s);
    merge_context(&mut out.ctx, &ctx_sorted(ctx));
    Ok(Value::Str(Rc::new(out)))
}

fn ctx_sorted(mut v: Vec<Rc<str>>) -> Vec<Rc<str>> {
    v.sort();
    v.dedup();
    v
}

fn has_context(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    Ok(Value::Bool(!ev.expect_string(&a[0], pos)?.ctx.is_empty()))
}

fn get_context(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let s = ev.expect_string(&a[0], pos)?;
    // path -> (path?, allOutputs?, outputs)
    let mut map: std::collections::BTreeMap<String, (bool, bool, Vec<String>)> = Default::default();
    for c in &s.ctx {
        if let Some(d) = c.strip_prefix('=') {
            map.entry(d.to_string()).or_default().1 = true;
        } else if let Some(rest) = c.strip_prefix('!') {
            if let Some((out, d)) = rest.split_once('!') {
                map.entry(d.to_string())
                    .or_default()
                    .2
                    .push(out.to_string());
            }
        } else {
            map.entry(c.to_string()).or_default().0 = true;
        }
    }
    let entries = map
        .into_iter()
        .map(|(path, (p, all, outs))| {
            let mut fields = Vec::new();
            if all {
                fields.push(("allOutputs", Value::Bool(true)));
            }
            if !outs.is_empty() {
                fields.push((
                    "outputs",
                    Value::list(outs.into_iter().map(Value::string).collect()),
                ));
            }
            if p {
                fields.push(("path", Value::Bool(true)));
            }
            Attr {
                name: path.as_str().into(),
                value: mk_attrs(fields),
                pos: None,
            }
        })
        .collect();
    Ok(Value::Attrs(Rc::new(Attrs::from_sorted(entries))))
}

fn append_context(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let s = ev.expect_string(&a[0], pos)?;
    let c = ev.expect_attrs(&a[1], pos)?;
    let mut out = (*s).clone();
    for e in c.iter() {
        let path = e.name.as_str();
        let info = ev.expect_attrs(&e.value, pos)?;
        let mut add: Vec<Rc<str>> = Vec::new();
        if let Some(p) = info.get("path") {
            if ev.expect_bool(p, pos)? {
                add.push(Rc::from(path));
            }
        }
        if let Some(p) = info.get("allOutputs") {
            if ev.expect_bool(p, pos)? {
                add.push(Rc::from(format!("={path}")));
            }
        }
        if let Some(o) = info.get("outputs") {
            for x in ev.expect_list(o, pos)?.iter() {
                let name = ev.expect_string(x, pos)?;
                add.push(Rc::from(format!("!{}!{path}", name.s)));
            }
        }
        out.add_context(&ctx_sorted(add));
    }
    Ok(Value::Str(Rc::new(out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn versions() {
        assert_eq!(split_version("1.2pre3-x"), vec!["1", "2", "pre", "3", "x"]);
        assert_eq!(compare_versions("1.0", "2.3"), Less);
        assert_eq!(compare_versions("2.3pre1", "2.3"), Less);
        assert_eq!(compare_versions("2.3", "2.3a"), Less);
        assert_eq!(compare_versions("2.3.1", "2.3a"), Greater);
        assert_eq!(compare_versions("1.0", "1.0"), Equal);
    }
}
