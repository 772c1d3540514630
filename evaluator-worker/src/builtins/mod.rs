//! The builtins, one file per theme, registered in one table ([`table`]).
//! To add a builtin: write it in the theme's file and list it in that file's `BUILTINS`.

use crate::error::{Error, ErrorKind, Result};
use crate::eval::Eval;
use crate::pos::Pos;
use crate::value::*;
use std::rc::Rc;

mod attrs;
mod derivation;
mod json;
mod json_parse;
mod lists;
mod misc;
mod paths;
mod regex;
mod strings;
mod types;

/// The signature of every builtin.
pub type BuiltinFn = fn(&Eval, &[Value], Pos) -> Result<Value>;

/// One builtin: its name, arity and implementation. `global` ones are also
/// bound at top level (`map`, `toString`, ...).
pub struct Builtin {
    /// Name in `builtins`.
    pub name: &'static str,
    /// Number of arguments.
    pub arity: usize,
    /// Implementation.
    pub f: BuiltinFn,
    /// Also available without `builtins.`.
    pub global: bool,
}

/// Shorthand for table entries.
pub const fn b(name: &'static str, arity: usize, f: BuiltinFn) -> Builtin {
    Builtin {
        name,
        arity,
        f,
        global: false,
    }
}

/// Shorthand for entries also bound at top level.
pub const fn g(name: &'static str, arity: usize, f: BuiltinFn) -> Builtin {
    Builtin {
        name,
        arity,
        f,
        global: true,
    }
}

/// Nix 2.8 builtins Kiln does not provide: calling one is a clear error naming it.
const UNSUPPORTED: &[(&str, bool)] = &[
    ("fetchurl", false),
    ("fetchTarball", true),
    ("fetchGit", true),
    ("fetchMercurial", true),
    ("fetchTree", true),
    ("fetchClosure", false),
    ("getFlake", false),
    ("storePath", false),
];

fn unsupported(_: &Eval, _: &[Value], _: Pos) -> Result<Value> {
    Err(Error::new(ErrorKind::UnsupportedBuiltin(
        "(unsupported)".into(),
    )))
}

/// Every builtin, from every theme file.
pub fn table() -> Vec<&'static Builtin> {
    let mut v: Vec<&'static Builtin> = Vec::new();
    for t in [
        attrs::BUILTINS,
        derivation::BUILTINS,
        json::BUILTINS,
        lists::BUILTINS,
        misc::BUILTINS,
        paths::BUILTINS,
        regex::BUILTINS,
        strings::BUILTINS,
        types::BUILTINS,
    ] {
        v.extend(t.iter());
    }
    v
}

/// Install `builtins` and the global names into `ev`.
pub fn install(ev: &mut Eval) {
    let mut entries: Vec<Attr> = Vec::new();
    let mut globals: Vec<(String, Value)> = Vec::new();
    for bi in table() {
        let v = Value::PrimOp(Rc::new(PrimOp {
            name: bi.name,
            arity: bi.arity,
            f: bi.f,
        }));
        entries.push(Attr {
            name: bi.name.into(),
            value: v.clone(),
            pos: None,
        });
        if bi.global {
            globals.push((bi.name.to_string(), v.clone()));
        }
        globals.push((format!("__{}", bi.name), v));
    }
    for (name, global) in UNSUPPORTED {
        if entries.iter().any(|e| e.name.as_str() == *name) {
            continue;
        }
        let v = Value::PrimOp(Rc::new(PrimOp {
            name,
            arity: 1,
            f: unsupported_named(name),
        }));
        entries.push(Attr {
            name: (*name).into(),
            value: v.clone(),
            pos: None,
        });
        if *global {
            globals.push((name.to_string(), v.clone()));
        }
        globals.push((format!("__{name}"), v));
    }
    let nix_path: Vec<Value> = ev
        .search_path
        .iter()
        .map(|e| {
            Value::Attrs(Rc::new(Attrs::from_unsorted(vec![
                Attr {
                    name: "path".into(),
                    value: Value::string(e.path.clone()),
                    pos: None,
                },
                Attr {
                    name: "prefix".into(),
                    value: Value::string(e.prefix.clone()),
                    pos: None,
                },
            ])))
        })
        .collect();
    let consts: Vec<(&str, Value, bool)> = vec![
        ("true", Value::Bool(true), true),
        ("false", Value::Bool(false), true),
        ("null", Value::Null, true),
        ("currentSystem", Value::string(ev.system.clone()), false),
        ("nixVersion", Value::string("2.8.0"), false),
        ("langVersion", Value::Int(6), false),
        (
            "storeDir",
            Value::string(ev.store.store_dir().to_string()),
            false,
        ),
        ("nixPath", Value::list(nix_path), false),
        (
            "currentTime",
            Value::Int(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
            ),
            false,
        ),
    ];
    for (name, v, global) in consts {
        entries.push(Attr {
            name: name.into(),
            value: v.clone(),
            pos: None,
        });
        if global {
            globals.push((name.to_string(), v.clone()));
        }
        globals.push((format!("__{name}"), v));
    }
    let self_ref = Thunk(Rc::new(std::cell::RefCell::new(ThunkState::Blackhole)));
    entries.push(Attr {
        name: "builtins".into(),
        value: Value::Thunk(self_ref.clone()),
        pos: None,
    });
    let set = Value::Attrs(Rc::new(Attrs::from_unsorted(entries)));
    *self_ref.0.borrow_mut() = ThunkState::Done(set.clone());
    ev.add_global("builtins", set);
    for (n, v) in globals {
        ev.add_global(&n, v);
    }
}

fn unsupported_named(name: &str) -> BuiltinFn {
    // Each unsupported builtin reports its own name.
    macro_rules! named {
        ($($n:literal),*) => {
            match name {
                $($n => |_: &Eval, _: &[Value], pos: Pos| Err(Error::new(ErrorKind::UnsupportedBuiltin($n.into())).at(pos)),)*
                _ => unsupported,
            }
        };
    }
    named!(
        "fetchurl",
        "fetchTarball",
        "fetchGit",
        "fetchMercurial",
        "fetchTree",
        "fetchClosure",
        "getFlake",
        "storePath"
    )
}

/// Build an attribute set from name/value pairs.
pub fn mk_attrs(pairs: Vec<(&str, Value)>) -> Value {
    Value::Attrs(Rc::new(Attrs::from_unsorted(
        pairs
            .into_iter()
            .map(|(n, v)| Attr {
                name: n.into(),
                value: v,
                pos: None,
            })
            .collect(),
    )))
}

pub use misc::deep_force;

/// Define the global `derivation` from its Nix source (see [`derivation::DERIVATION_NIX`]).
pub fn install_derivation(ev: &mut Eval) {
    let parsed = ev.parse(
        derivation::DERIVATION_NIX,
        "«derivation»".into(),
        None,
        "/",
        None,
    );
    match parsed.and_then(|e| ev.eval(&crate::eval::Env::new(crate::eval::Slots::new(), None), &e))
    {
        Ok(v) => {
            add_to_builtins(ev, "derivation", v.clone());
            ev.add_global("derivation", v.clone());
            ev.add_global("__derivation", v);
        }
        Err(e) => {
            // Only reachable if the embedded source is broken; report it at use.
            let f: BuiltinFn = |_, _, pos| {
                Err(Error::eval("the built-in derivation wrapper failed to load").at(pos))
            };
            let _ = e;
            ev.add_global(
                "derivation",
                Value::PrimOp(Rc::new(PrimOp {
                    name: "derivation",
                    arity: 1,
                    f,
                })),
            );
        }
    }
}

/// Adds `name` to the `builtins` set (which holds itself as `builtins`):
/// for values defined in Nix after the set was made, like `derivation`.
fn add_to_builtins(ev: &mut Eval, name: &str, v: Value) {
    let Some(&i) = ev.global_names.get(&Symbol::from("builtins")) else {
        return;
    };
    let Some(Value::Attrs(old)) = ev.globals.get(i as usize) else {
        return;
    };
    let mut set = (**old).clone();
    set.insert(Attr {
        name: name.into(),
        value: v,
        pos: None,
    });
    let set = Value::Attrs(Rc::new(set));
    if let Some(Value::Thunk(t)) = old.get("builtins") {
        *t.0.borrow_mut() = ThunkState::Done(set.clone());
    }
    ev.globals[i as usize] = set;
}
