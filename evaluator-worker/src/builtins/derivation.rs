//! `derivationStrict` and `derivation`, a Nix-level wrapper around it.
//!
//! The attributes are turned into a [`kiln_nix::derivation::Derivation`];
//! output paths, `hashDerivationModulo`, the ATerm and the `.drv` path all
//! come from `kiln_nix`, so they are the very bytes Nix 2.8 produces.

use super::{g, mk_attrs, Builtin};
use crate::error::{Error, Result};
use crate::eval::{DrvInfo, Eval};
use crate::pos::Pos;
use crate::value::*;
use kiln_nix::derivation::{Derivation, DerivationOutput, FixedOutputHash};
use kiln_nix::hash::{Hash, HashAlgo};
use kiln_nix::store_path::{FileIngestionMethod, StorePath};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

pub(super) const BUILTINS: &[Builtin] = &[g("derivationStrict", 1, derivation_strict)];

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
    if let Some(json) = structured {
        env.insert("__json".into(), json);
    }
    let store_path = |p: &str| {
        StorePath::from_absolute_path(p).map_err(|e| {
            Error::eval(format!(
                "derivation '{name}' refers to '{p}', which is not a store path: {e}"
            ))
            .at(pos)
        })
    };
    let mut input_srcs: BTreeSet<StorePath> = BTreeSet::new();
    let mut input_drvs: BTreeMap<StorePath, BTreeSet<String>> = BTreeMap::new();
    {
        let drvs = ev.drvs.borrow();
        for c in &ctx {
            if let Some(d) = c.strip_prefix('=') {
                // The whole closure of the derivation: every path in it is a
                // source, every derivation in it is needed with all its outputs.
                let mut todo = vec![store_path(d)?];
                let mut seen = BTreeSet::new();
                while let Some(p) = todo.pop() {
                    if !seen.insert(p.clone()) {
                        continue;
                    }
                    if let Some(info) = drvs.get(&p) {
                        todo.extend(info.refs.iter().cloned());
                        input_drvs
                            .entry(p.clone())
                            .or_default()
                            .extend(info.outputs.iter().cloned());
                    }
                    input_srcs.insert(p);
                }
            } else if let Some(rest) = c.strip_prefix('!') {
                if let Some((o, d)) = rest.split_once('!') {
                    input_drvs
                        .entry(store_path(d)?)
                        .or_default()
                        .insert(o.to_string());
                }
            } else {
                input_srcs.insert(store_path(c)?);
            }
        }
    }
    let drv_err = |e: kiln_nix::derivation::DerivationError| {
        Error::eval(format!("derivation '{name}': {e}")).at(pos)
    };
    let mut outputs = BTreeMap::new();
    if let Some(h) = hash {
        if out_names != ["out"] {
            return Err(Error::eval(format!(
                "multiple outputs are not supported in fixed-output derivations (derivation '{name}')"
            ))
            .at(pos));
        }
        let algo = if hash_algo.is_empty() {
            None
        } else {
            Some(HashAlgo::from_name(&hash_algo).map_err(|e| {
                Error::eval(format!("derivation '{name}': outputHashAlgo: {e}")).at(pos)
            })?)
        };
        let hash = Hash::parse_any(&h, algo)
            .map_err(|e| Error::eval(format!("invalid output hash '{h}': {e}")).at(pos))?;
        let method = match hash_mode.as_str() {
            "flat" => FileIngestionMethod::Flat,
            "recursive" => FileIngestionMethod::Recursive,
            other => {
                return Err(Error::eval(format!(
                    "invalid value '{other}' for 'outputHashMode' attribute"
                ))
                .at(pos))
            }
        };
        let out =
            DerivationOutput::fixed(&name, FixedOutputHash { method, hash }).map_err(drv_err)?;
        outputs.insert("out".to_string(), out);
    } else {
        for o in &out_names {
            outputs.insert(o.clone(), DerivationOutput::Deferred);
        }
    }
    let mut drv = Derivation {
        outputs,
        input_drvs,
        input_srcs,
        system,
        builder,
        args,
        env,
    };
    {
        let drvs = ev.drvs.borrow();
        let lookup = |p: &StorePath| drvs.get(p).map(|i| i.hash_modulo.clone());
        drv.fill_output_paths(&name, lookup).map_err(drv_err)?;
    }
    let text = drv.to_aterm();
    let refs = drv.references();
    let drv_path = ev
        .store
        .add_text(&format!("{name}.drv"), &text, &refs)
        .map_err(|e| Error::eval(e.to_string()).at(pos))?;
    let own_modulo = {
        let drvs = ev.drvs.borrow();
        drv.hash_modulo(false, |p: &StorePath| {
            drvs.get(p).map(|i| i.hash_modulo.clone())
        })
        .map_err(drv_err)?
    };
    let drv_path_str = drv_path.to_absolute_path();
    if let Some(sink) = &ev.sink {
        sink.derivation(&drv_path_str, &text);
    }
    let drv_ctx: Rc<str> = Rc::from(format!("={drv_path_str}"));
    let mut fields = vec![(
        "drvPath",
        Value::string_ctx(drv_path_str.clone(), vec![drv_ctx]),
    )];
    for (o, out) in &drv.outputs {
        let c: Rc<str> = Rc::from(format!("!{o}!{drv_path_str}"));
        let p = out.path().map(|p| p.to_absolute_path()).unwrap_or_default();
        fields.push((o.as_str(), Value::string_ctx(p, vec![c])));
    }
    let result = mk_attrs(fields);
    ev.drvs.borrow_mut().insert(
        drv_path,
        DrvInfo {
            hash_modulo: own_modulo,
            outputs: drv.outputs.keys().cloned().collect(),
            refs,
        },
    );
    Ok(result)
}
