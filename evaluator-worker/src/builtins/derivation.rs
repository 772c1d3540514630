//! `derivationStrict` (ATerm, `hashDerivationModulo`, output and `.drv` paths)
//! and `derivation`, a Nix-level wrapper around it.

use super::{b, mk_attrs, Builtin};
use crate::error::{Error, Result};
use crate::eval::Eval;
use crate::pos::Pos;
use crate::store::make_store_path;
use crate::value::*;
use kiln_nix::hash::{Hash, HashAlgo};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

pub(super) const BUILTINS: &[Builtin] = &[b("derivationStrict", 1, derivation_strict)];

/// The `derivation` function, written in Nix on top of `derivationStrict`.
pub const DERIVATION_NIX: &str = r#"
attrs:
let
  strict = builtins.derivationStrict attrs;
  outNames = attrs.outputs or [ "out" ];
  mkOut = o: {
    name = o;
    value = common // {
      outPath = builtins.getAttr o strict;
      drvPath = strict.drvPath;
      type = "derivation";
      outputName = o;
    };
  };
  outs = map mkOut outNames;
  common = attrs // builtins.listToAttrs outs // {
    all = map (x: x.value) outs;
    drvAttrs = attrs;
  };
in (builtins.head outs).value
"#;

struct Output {
    path: String,
    hash_algo: String,
    hash: String,
}

fn escape(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn list<T>(
    out: &mut String,
    items: impl IntoIterator<Item = T>,
    mut f: impl FnMut(&mut String, T),
) {
    out.push('[');
    for (i, x) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        f(out, x);
    }
    out.push(']');
}

fn aterm(
    outputs: &BTreeMap<String, Output>,
    input_drvs: &BTreeMap<String, BTreeSet<String>>,
    input_srcs: &BTreeSet<String>,
    system: &str,
    builder: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
) -> String {
    let mut o = String::from("Derive(");
    list(&mut o, outputs, |o, (name, out)| {
        o.push('(');
        escape(name, o);
        o.push(',');
        escape(&out.path, o);
        o.push(',');
        escape(&out.hash_algo, o);
        o.push(',');
        escape(&out.hash, o);
        o.push(')');
    });
    o.push(',');
    list(&mut o, input_drvs, |o, (p, outs)| {
        o.push('(');
        escape(p, o);
        o.push(',');
        list(o, outs, |o, s| escape(s, o));
        o.push(')');
    });
    o.push(',');
    list(&mut o, input_srcs, |o, s| escape(s, o));
    o.push(',');
    escape(system, &mut o);
    o.push(',');
    escape(builder, &mut o);
    o.push(',');
    list(&mut o, args, |o, s| escape(s, o));
    o.push(',');
    list(&mut o, env, |o, (k, v)| {
        o.push('(');
        escape(k, o);
        o.push(',');
        escape(v, o);
        o.push(')');
    });
    o.push(')');
    o
}

fn derivation_strict(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let attrs = ev.expect_attrs(&a[0], pos)?;
    let name = attrs
        .get("name")
        .ok_or_else(|| Error::eval("required attribute 'name' missing").at(pos))?;
    let name = ev.expect_string(name, pos)?.s.clone();
    let ignore_nulls = match attrs.get("__ignoreNulls") {
        Some(v) => ev.expect_bool(v, pos)?,
        None => false,
    };
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut ctx: Context = Vec::new();
    let mut args: Vec<String> = Vec::new();
    let mut builder = String::new();
    let mut system = String::new();
    let mut out_names: Vec<String> = vec!["out".into()];
    let (mut hash, mut hash_algo, mut hash_mode) = (None, String::new(), String::from("flat"));
    let structured_attrs = match attrs.get("__structuredAttrs") {
        Some(v) => ev.expect_bool(v, pos)?,
        None => false,
    };
    let mut json_fields: Vec<(String, String)> = Vec::new();
    for attr in attrs.iter() {
        let key = attr.name.as_str();
        if key == "__ignoreNulls" || (structured_attrs && key == "__structuredAttrs") {
            continue;
        }
        let v = ev.force(&attr.value)?;
        if ignore_nulls && matches!(v, Value::Null) {
            continue;
        }
        let trace = |e: Error| {
            e.with_trace(
                Some(pos),
                format!("while evaluating the attribute '{key}' of the derivation '{name}'"),
            )
        };
        if key == "args" {
            for x in ev.expect_list(&v, pos)?.iter() {
                let s = ev.coerce_to_string(x, pos, true, true).map_err(trace)?;
                merge_context(&mut ctx, &s.ctx);
                args.push(s.s);
            }
            continue;
        }
        if structured_attrs {
            let mut j = String::new();
            crate::print::to_json(ev, &v, pos, &mut j, &mut ctx).map_err(trace)?;
            match key {
                "builder" | "system" | "outputHash" | "outputHashAlgo" | "outputHashMode" => {
                    let s = ev.coerce_to_string(&v, pos, false, true).map_err(trace)?;
                    match key {
                        "builder" => builder = s.s,
                        "system" => system = s.s,
                        "outputHash" => hash = Some(s.s),
                        "outputHashAlgo" => hash_algo = s.s,
                        _ => hash_mode = s.s,
                    }
                }
                "outputs" => {
                    out_names = Vec::new();
                    for o in ev.expect_list(&v, pos)?.iter() {
                        out_names.push(ev.expect_string(o, pos)?.s.clone());
                    }
                }
                _ => {}
            }
            json_fields.push((key.to_string(), j));
            continue;
        }
        let s = ev.coerce_to_string(&v, pos, true, true).map_err(trace)?;
        merge_context(&mut ctx, &s.ctx);
        match key {
            "builder" => builder = s.s.clone(),
            "system" => system = s.s.clone(),
            "outputHash" => hash = Some(s.s.clone()),
            "outputHashAlgo" => hash_algo = s.s.clone(),
            "outputHashMode" => hash_mode = s.s.clone(),
            "outputs" => {
                out_names = s.s.split_whitespace().map(String::from).collect();
                if out_names.is_empty() {
                    return Err(Error::eval(format!(
                        "derivation '{name}' does not have any outputs"
                    ))
                    .at(pos));
                }
            }
            _ => {}
        }
        env.insert(key.to_string(), s.s);
    }
    let structured = structured_attrs.then(|| {
        let mut j = String::from("{");
        for (i, (k, v)) in json_fields.iter().enumerate() {
            if i > 0 {
                j.push(',');
            }
            crate::print::json_string(k, &mut j);
            j.push(':');
            j.push_str(v);
        }
        j.push('}');
        j
    });
    let mut input_srcs = BTreeSet::new();
    let mut input_drvs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if let Some(json) = structured {
        env.insert("__json".into(), json);
    }
    for c in &ctx {
        if let Some(d) = c.strip_prefix('=') {
            // The whole closure of the derivation: every path in it is a
            // source, every derivation in it is needed with all its outputs.
            let mut todo = vec![d.to_string()];
            let mut seen = BTreeSet::new();
            while let Some(p) = todo.pop() {
                if !seen.insert(p.clone()) {
                    continue;
                }
                if let Some(refs) = ev.drv_refs.borrow().get(&p) {
                    todo.extend(refs.iter().cloned());
                }
                if p.ends_with(".drv") {
                    let outs = ev.drv_outputs.borrow().get(&p).cloned().unwrap_or_default();
                    input_drvs.entry(p.clone()).or_default().extend(outs);
                }
                input_srcs.insert(p);
            }
        } else if let Some(rest) = c.strip_prefix('!') {
            if let Some((o, d)) = rest.split_once('!') {
                input_drvs
                    .entry(d.to_string())
                    .or_default()
                    .insert(o.to_string());
            }
        } else {
            input_srcs.insert(c.to_string());
        }
    }
    let store_dir = ev.store.store_dir().to_string();
    let mut outputs: BTreeMap<String, Output> = BTreeMap::new();
    if let Some(h) = hash {
        let algo = if hash_algo.is_empty() {
            None
        } else {
            HashAlgo::from_name(&hash_algo).ok()
        };
        let parsed = Hash::parse_any(&h, algo)
            .map_err(|e| Error::eval(format!("invalid output hash '{h}': {e}")).at(pos))?;
        let recursive = hash_mode == "recursive";
        let path = if recursive && parsed.algo() == HashAlgo::Sha256 {
            make_store_path(&store_dir, "source", &parsed, &name)
        } else {
            let prefix = if recursive { "r:" } else { "" };
            let inner = format!(
                "fixed:out:{prefix}{}:{}:",
                parsed.algo(),
                parsed.to_base16()
            );
            make_store_path(
                &store_dir,
                "output:out",
                &Hash::of(HashAlgo::Sha256, inner.as_bytes()),
                &name,
            )
        };
        env.insert("out".into(), path.clone());
        outputs.insert(
            "out".into(),
            Output {
                path,
                hash_algo: format!("{}{}", if recursive { "r:" } else { "" }, parsed.algo()),
                hash: parsed.to_base16(),
            },
        );
    } else {
        for o in &out_names {
            env.insert(o.clone(), String::new());
            outputs.insert(
                o.clone(),
                Output {
                    path: String::new(),
                    hash_algo: String::new(),
                    hash: String::new(),
                },
            );
        }
        let modulo = hash_modulo(
            ev,
            &outputs,
            &input_drvs,
            &input_srcs,
            &system,
            &builder,
            &args,
            &env,
        );
        for o in &out_names {
            let pname = if o == "out" {
                name.clone()
            } else {
                format!("{name}-{o}")
            };
            let p = make_store_path(&store_dir, &format!("output:{o}"), &modulo, &pname);
            env.insert(o.clone(), p.clone());
            if let Some(out) = outputs.get_mut(o) {
                out.path = p;
            }
        }
    }
    let text = aterm(
        &outputs,
        &input_drvs,
        &input_srcs,
        &system,
        &builder,
        &args,
        &env,
    );
    let mut refs: Vec<String> = input_srcs.iter().cloned().collect();
    refs.extend(input_drvs.keys().cloned());
    let drv_path = ev
        .store
        .add_text(&format!("{name}.drv"), &text, &refs)
        .map_err(|e| Error::eval(e.to_string()).at(pos))?;
    let own_modulo = if outputs.len() == 1 && !outputs["out"].hash.is_empty() {
        let o = &outputs["out"];
        Hash::of(
            HashAlgo::Sha256,
            format!("fixed:out:{}:{}:{}", o.hash_algo, o.hash, o.path).as_bytes(),
        )
    } else {
        hash_modulo(
            ev,
            &outputs,
            &input_drvs,
            &input_srcs,
            &system,
            &builder,
            &args,
            &env,
        )
    };
    ev.drv_hashes
        .borrow_mut()
        .insert(drv_path.clone(), own_modulo);
    ev.drv_outputs
        .borrow_mut()
        .insert(drv_path.clone(), outputs.keys().cloned().collect());
    ev.drv_refs.borrow_mut().insert(drv_path.clone(), refs);
    if let Some(sink) = &ev.sink {
        sink.derivation(&drv_path, &text);
    }
    let drv_ctx: Rc<str> = Rc::from(format!("={drv_path}"));
    let mut fields = vec![(
        "drvPath",
        Value::string_ctx(drv_path.clone(), vec![drv_ctx]),
    )];
    for (o, out) in &outputs {
        let c: Rc<str> = Rc::from(format!("!{o}!{drv_path}"));
        fields.push((o.as_str(), Value::string_ctx(out.path.clone(), vec![c])));
    }
    Ok(mk_attrs(fields))
}

#[allow(clippy::too_many_arguments)]
fn hash_modulo(
    ev: &Eval,
    outputs: &BTreeMap<String, Output>,
    input_drvs: &BTreeMap<String, BTreeSet<String>>,
    input_srcs: &BTreeSet<String>,
    system: &str,
    builder: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
) -> Hash {
    let hashes = ev.drv_hashes.borrow();
    let mut replaced: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (p, outs) in input_drvs {
        let key = hashes
            .get(p)
            .map(|h| h.to_base16())
            .unwrap_or_else(|| p.clone());
        replaced
            .entry(key)
            .or_default()
            .extend(outs.iter().cloned());
    }
    let text = aterm(outputs, &replaced, input_srcs, system, builder, args, env);
    Hash::of(HashAlgo::Sha256, text.as_bytes())
}
