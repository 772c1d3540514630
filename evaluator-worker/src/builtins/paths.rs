//! Files and paths: `import`, `scopedImport`, `readFile`, `readDir`,
//! `pathExists`, `baseNameOf`, `dirOf`, `toPath`, `toFile`, `path`,
//! `filterSource`, `hashFile`, `findFile`.

use super::{b, g, Builtin};
use crate::error::{Error, ErrorKind, Result};
use crate::eval::{Env, Eval};
use crate::lower::canon_path;
use crate::pos::Pos;
use crate::value::*;
use kiln_nix::hash::HashAlgo;
use kiln_nix::store_path::StorePath;
use std::collections::BTreeSet;
use std::path::Path;
use std::rc::Rc;

pub(super) const BUILTINS: &[Builtin] = &[
    g("import", 1, import),
    g("scopedImport", 2, scoped_import),
    b("readFile", 1, read_file),
    b("readDir", 1, read_dir),
    b("pathExists", 1, path_exists),
    g("baseNameOf", 1, base_name_of),
    g("dirOf", 1, dir_of),
    b("toPath", 1, to_path),
    b("toFile", 2, to_file),
    b("hashFile", 2, hash_file),
    b("findFile", 2, find_file),
    b("filterSource", 2, filter_source),
    b("path", 1, path_b),
];

/// Coerce to an absolute path string (paths, or strings starting with `/`).
/// Its context is returned unrealised: see [`realise_path`] for reading.
pub fn coerce_path(ev: &Eval, v: &Value, pos: Pos) -> Result<String> {
    Ok(coerce_path_ctx(ev, v, pos)?.0)
}

fn coerce_path_ctx(ev: &Eval, v: &Value, pos: Pos) -> Result<(String, Context)> {
    let (s, ctx) = coerce_path_raw(ev, v, pos)?;
    Ok((canon_path(&s), ctx))
}

/// Nix's `coerceToPath`: an absolute path string, not canonicalised
/// (`pathExists "/dev/null/."` asks about that very name).
fn coerce_path_raw(ev: &Eval, v: &Value, pos: Pos) -> Result<(String, Context)> {
    let s = ev.coerce_to_string(v, pos, false, false)?;
    if !s.s.starts_with('/') {
        return Err(Error::eval(format!(
            "string '{}' doesn't represent an absolute path",
            s.s
        ))
        .at(pos));
    }
    Ok((s.s.clone(), s.ctx.clone()))
}

/// A path that is about to be read: like [`coerce_path`], and the
/// derivation outputs in its context are built first (import from
/// derivation), as Nix's `realiseContext` does.
pub fn realise_path(ev: &Eval, v: &Value, pos: Pos) -> Result<String> {
    let (path, ctx) = coerce_path_ctx(ev, v, pos)?;
    realise_context(ev, &ctx, pos)?;
    Ok(path)
}

/// Builds every `!output!drv` element of `ctx` through the evaluation's
/// [`crate::store::Realiser`], one request per derivation.
fn realise_context(ev: &Eval, ctx: &Context, pos: Pos) -> Result<()> {
    let mut wanted: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for c in ctx {
        if let Some((output, drv)) = c.strip_prefix('!').and_then(|r| r.split_once('!')) {
            wanted.entry(drv).or_default().push(output.to_string());
        }
    }
    for (drv, outputs) in wanted {
        let Some(realiser) = ev.realiser.clone() else {
            return Err(Error::eval(format!(
                "cannot build '{drv}' during evaluation: import from derivation \
                 needs a builder (use 'kiln build')"
            ))
            .at(pos));
        };
        realiser
            .realise(drv, &outputs)
            .map_err(|e| Error::eval(e.to_string()).at(pos))?;
    }
    Ok(())
}

fn io(msg: &str, path: &str, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io {
        msg: format!("{msg}: {e}:"),
        path: path.to_string(),
    })
}

fn import(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let p = realise_path(ev, &a[0], pos)?;
    ev.eval_file(&ev.real_path(&p)).map_err(|e| e.at(pos))
}

fn scoped_import(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let scope = ev.expect_attrs(&a[0], pos)?;
    let p = realise_path(ev, &a[1], pos)?;
    let names: Vec<Symbol> = scope.iter().map(|e| e.name.clone()).collect();
    let vals: Vec<Value> = scope.iter().map(|e| e.value.clone()).collect();
    let e = ev.parse_file(&ev.real_path(&p), Some(names))?;
    ev.eval(&Env::new(crate::eval::Slots::from_vec(vals), None), &e)
}

fn read_file(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let p = realise_path(ev, &a[0], pos)?;
    let bytes = std::fs::read(ev.real_path(&p)).map_err(|e| io("opening file", &p, e).at(pos))?;
    if bytes.contains(&0) {
        return Err(Error::eval(format!(
            "the contents of the file '{p}' cannot be represented as a Nix string"
        ))
        .at(pos));
    }
    // Nix strings are bytes; Kiln's are UTF-8 text for now. Replacing the
    // bytes that are not would change the string (its length, its hash):
    // refuse instead of giving a different value.
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::eval(format!(
            "the contents of the file '{p}' are not UTF-8 (byte {} is not), \
             which Kiln's strings cannot hold yet",
            e.utf8_error().valid_up_to()
        ))
        .at(pos)
    })?;
    Ok(Value::string(text))
}

fn read_dir(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let p = realise_path(ev, &a[0], pos)?;
    let rd =
        std::fs::read_dir(ev.real_path(&p)).map_err(|e| io("reading directory", &p, e).at(pos))?;
    let mut entries = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| io("reading directory", &p, e).at(pos))?;
        let ft = ent
            .file_type()
            .map_err(|e| io("reading directory", &p, e).at(pos))?;
        let ty = if ft.is_dir() {
            "directory"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "regular"
        } else {
            "unknown"
        };
        let name = ent.file_name().to_string_lossy().into_owned();
        entries.push(Attr {
            name: name.as_str().into(),
            value: Value::string(ty),
            pos: None,
        });
    }
    Ok(Value::Attrs(Rc::new(Attrs::from_unsorted(entries))))
}

fn path_exists(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let (p, ctx) = coerce_path_raw(ev, &a[0], pos)?;
    realise_context(ev, &ctx, pos)?;
    // `lstat` of the name as given: a trailing `/.` or `/` after a file
    // fails, as in Nix.
    let real = ev.real_path(&p);
    let real = if p.ends_with('/') && !real.as_os_str().to_string_lossy().ends_with('/') {
        let mut s = real.into_os_string();
        s.push("/");
        std::path::PathBuf::from(s)
    } else {
        real
    };
    Ok(Value::Bool(real.symlink_metadata().is_ok()))
}

fn base_name_of(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let s = ev.coerce_to_string(&a[0], pos, false, false)?;
    let t = s.s.strip_suffix('/').unwrap_or(&s.s);
    let base = t.rsplit('/').next().unwrap_or("").to_string();
    Ok(Value::string_ctx(base, s.ctx))
}

fn dir_of(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let v = ev.force(&a[0])?;
    let s = ev.coerce_to_string(&v, pos, false, false)?;
    let dir = match s.s.rfind('/') {
        Some(0) => "/".to_string(),
        Some(i) => s.s[..i].to_string(),
        None => ".".to_string(),
    };
    if let Value::Path(_) = v {
        return Ok(Value::Path(dir.into()));
    }
    Ok(Value::string_ctx(dir, s.ctx))
}

fn to_path(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    Ok(Value::string(coerce_path(ev, &a[0], pos)?))
}

fn to_file(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let name = ev.expect_string(&a[0], pos)?;
    let text = ev.coerce_to_string(&a[1], pos, false, false)?;
    let mut refs = BTreeSet::new();
    for c in &text.ctx {
        if !c.starts_with('/') {
            return Err(Error::eval(format!(
                "in 'toFile': the file named '{}' must not contain a reference to a derivation but contains ({c})",
                name.s
            ))
            .at(pos));
        }
        refs.insert(
            StorePath::from_absolute_path(c)
                .map_err(|e| Error::eval(format!("in 'toFile' of '{}': {e}", name.s)).at(pos))?,
        );
    }
    let p = ev
        .store
        .add_text(&name.s, &text.s, &refs)
        .map_err(|e| Error::eval(e.to_string()).at(pos))?
        .to_absolute_path();
    Ok(Value::string_ctx(p.clone(), vec![Rc::from(p.as_str())]))
}

fn hash_file(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let algo = ev.expect_string(&a[0], pos)?;
    let algo = HashAlgo::from_name(&algo.s)
        .map_err(|_| Error::eval(format!("unknown hash algorithm '{}'", algo.s)).at(pos))?;
    let p = realise_path(ev, &a[1], pos)?;
    let mut file =
        std::fs::File::open(ev.real_path(&p)).map_err(|e| io("opening file", &p, e).at(pos))?;
    let mut h = kiln_nix::hash::Hasher::new(algo);
    std::io::copy(&mut file, &mut h).map_err(|e| io("reading file", &p, e).at(pos))?;
    Ok(Value::string(h.finish().to_base16()))
}

fn find_file(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let sp = ev.expect_list(&a[0], pos)?;
    let name = ev.expect_string(&a[1], pos)?;
    let mut entries = Vec::new();
    for e in sp.iter() {
        let s = ev.expect_attrs(e, pos)?;
        let prefix = match s.get("prefix") {
            Some(p) => ev.expect_string(p, pos)?.s.clone(),
            None => String::new(),
        };
        let path = s
            .get("path")
            .ok_or_else(|| Error::eval("attribute 'path' missing").at(pos))?;
        let path = ev.coerce_to_string(path, pos, false, false)?.s;
        entries.push(crate::eval::SearchPathEntry { prefix, path });
    }
    for entry in entries {
        let candidate = if entry.prefix.is_empty() {
            format!("{}/{}", entry.path, name.s)
        } else if name.s == entry.prefix {
            entry.path.clone()
        } else if let Some(rest) = name
            .s
            .strip_prefix(&entry.prefix)
            .and_then(|r| r.strip_prefix('/'))
        {
            format!("{}/{}", entry.path, rest)
        } else {
            continue;
        };
        let abs = if candidate.starts_with('/') {
            candidate
        } else {
            let cwd = std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            format!("{cwd}/{candidate}")
        };
        if Path::new(&abs).exists() {
            return Ok(Value::Path(canon_path(&abs).into()));
        }
    }
    // `<nix/...>` falls back to the files bundled with the evaluator.
    if let Some(p) = crate::corepkgs::lookup_path(&name.s) {
        return Ok(Value::Path(p.into()));
    }
    Err(Error::throw(format!(
        "file '{}' was not found in the Nix search path (add it using $NIX_PATH or -I)",
        name.s
    ))
    .at(pos))
}

fn add_filtered(
    ev: &Eval,
    path: &str,
    name: &str,
    filter: Option<Value>,
    pos: Pos,
) -> Result<Value> {
    let real = ev.real_path(path);
    let mut err: Option<Error> = None;
    let mut f = |p: &Path, ft: std::fs::FileType| -> bool {
        let Some(filter) = &filter else { return true };
        if err.is_some() {
            return false;
        }
        let ty = if ft.is_dir() {
            "directory"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "regular"
        } else {
            "unknown"
        };
        // The filter sees the path as the expression named it.
        let shown = match p.strip_prefix(&real) {
            Ok(rest) => Path::new(path).join(rest).display().to_string(),
            Err(_) => p.display().to_string(),
        };
        let r = ev
            .call(filter, Value::string(shown), pos)
            .and_then(|g| ev.call(&g, Value::string(ty), pos))
            .and_then(|r| ev.expect_bool(&r, pos));
        match r {
            Ok(b) => b,
            Err(e) => {
                err = Some(e);
                false
            }
        }
    };
    let res = ev.store.add_path(&real, name, Some(&mut f));
    if let Some(e) = err {
        return Err(e);
    }
    let p = res
        .map_err(|e| Error::eval(e.to_string()).at(pos))?
        .to_absolute_path();
    Ok(Value::string_ctx(p.clone(), vec![Rc::from(p.as_str())]))
}

fn filter_source(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let filter = ev.expect_function(&a[0], pos)?;
    let p = realise_path(ev, &a[1], pos)?;
    let name = p.rsplit('/').next().unwrap_or("source").to_string();
    add_filtered(ev, &p, &name, Some(filter), pos)
}

fn path_b(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let args = ev.expect_attrs(&a[0], pos)?;
    for attr in args.iter() {
        let n = attr.name.as_str();
        if !matches!(n, "path" | "name" | "filter" | "recursive" | "sha256") {
            return Err(
                Error::eval(format!("unsupported argument '{n}' to 'addPath'"))
                    .at_opt(attr.pos)
                    .at(pos),
            );
        }
    }
    let recursive = match args.get("recursive") {
        Some(r) => ev.expect_bool(r, pos)?,
        None => true,
    };
    let p = args
        .get("path")
        .ok_or_else(|| Error::eval("attribute 'path' missing in call to 'path'").at(pos))?;
    let p = realise_path(ev, p, pos)?;
    let name = match args.get("name") {
        Some(n) => ev.expect_string(n, pos)?.s.clone(),
        None => p.rsplit('/').next().unwrap_or("source").to_string(),
    };
    let filter = match args.get("filter") {
        Some(f) => Some(ev.expect_function(f, pos)?),
        None => None,
    };
    let expected = match args.get("sha256") {
        Some(h) => {
            let h = ev.expect_string(h, pos)?;
            let hash = kiln_nix::hash::Hash::parse_any(&h.s, Some(HashAlgo::Sha256))
                .map_err(|e| Error::eval(format!("invalid sha256 '{}': {e}", h.s)).at(pos))?;
            let method = if recursive {
                kiln_nix::store_path::FileIngestionMethod::Recursive
            } else {
                kiln_nix::store_path::FileIngestionMethod::Flat
            };
            let sp = kiln_nix::store_path::make_fixed_output_path(
                &name,
                method,
                &hash,
                &BTreeSet::new(),
            )
            .map_err(|e| Error::eval(e.to_string()).at(pos))?;
            Some(sp.to_absolute_path())
        }
        None => None,
    };
    let v = if recursive {
        add_filtered(ev, &p, &name, filter, pos)?
    } else {
        // Flat: the file's own bytes are hashed (a filter has nothing to
        // select in a single file).
        let real = ev.real_path(&p);
        if !std::fs::symlink_metadata(&real).is_ok_and(|m| m.is_file()) {
            return Err(Error::eval(format!(
                "'{p}' is not a regular file, which builtins.path with 'recursive = false' needs"
            ))
            .at(pos));
        }
        let sp = ev
            .store
            .add_flat(&real, &name)
            .map_err(|e| Error::eval(e.to_string()).at(pos))?
            .to_absolute_path();
        Value::string_ctx(sp.clone(), vec![Rc::from(sp.as_str())])
    };
    if let Some(want) = expected {
        let got = ev.expect_string(&v, pos)?;
        if got.s != want {
            return Err(Error::eval(format!(
                "store path mismatch in (possibly filtered) path added from '{p}': expected '{want}', got '{}'",
                got.s
            ))
            .at(pos));
        }
    }
    Ok(v)
}
