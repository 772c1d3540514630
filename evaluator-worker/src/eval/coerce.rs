//! Forcing values to an expected type and coercing them to strings
//! (`coerceToString`), copying paths to the store on the way.

use super::Eval;
use crate::error::{Error, Result};
use crate::pos::Pos;
use crate::value::*;
use kiln_nix::store_path::StorePath;
use std::path::PathBuf;
use std::rc::Rc;

impl Eval {
    /// Force `v` and require an attribute set.
    pub fn expect_attrs(&self, v: &Value, pos: Pos) -> Result<Rc<Attrs>> {
        match self.force(v)? {
            Value::Attrs(a) => Ok(a),
            other => Err(Error::eval(format!(
                "value is {} while a set was expected",
                other.type_desc()
            ))
            .at(pos)),
        }
    }

    /// Force `v` and require a list.
    pub fn expect_list(&self, v: &Value, pos: Pos) -> Result<Rc<Vec<Value>>> {
        match self.force(v)? {
            Value::List(l) => Ok(l),
            other => Err(Error::eval(format!(
                "value is {} while a list was expected",
                other.type_desc()
            ))
            .at(pos)),
        }
    }

    /// Force `v` and require an integer.
    pub fn expect_int(&self, v: &Value, pos: Pos) -> Result<i64> {
        match self.force(v)? {
            Value::Int(i) => Ok(i),
            other => Err(Error::eval(format!(
                "value is {} while an integer was expected",
                other.type_desc()
            ))
            .at(pos)),
        }
    }

    /// Force `v` and require a Boolean.
    pub fn expect_bool(&self, v: &Value, pos: Pos) -> Result<bool> {
        match self.force(v)? {
            Value::Bool(b) => Ok(b),
            other => Err(Error::eval(format!(
                "value is {} while a Boolean was expected",
                other.type_desc()
            ))
            .at(pos)),
        }
    }

    /// Force `v` and require a function.
    pub fn expect_function(&self, v: &Value, pos: Pos) -> Result<Value> {
        let f = self.force(v)?;
        if f.is_function() || matches!(&f, Value::Attrs(a) if a.get("__functor").is_some()) {
            Ok(f)
        } else {
            Err(Error::eval(format!(
                "value is {} while a function was expected",
                f.type_desc()
            ))
            .at(pos))
        }
    }

    /// Force `v` and require a string (no coercion); returns it with its context.
    pub fn expect_string(&self, v: &Value, pos: Pos) -> Result<Rc<NixString>> {
        match self.force(v)? {
            Value::Str(s) => Ok(s),
            other => Err(Error::eval(format!(
                "value is {} while a string was expected",
                other.type_desc()
            ))
            .at(pos)),
        }
    }

    /// Nix's `coerceToString`. `more` enables the `toString` conversions (numbers,
    /// Booleans, null, lists); `copy` copies paths to the store.
    pub fn coerce_to_string(
        &self,
        v: &Value,
        pos: Pos,
        more: bool,
        copy: bool,
    ) -> Result<NixString> {
        let v = self.force(v)?;
        match &v {
            Value::Str(s) => Ok((**s).clone()),
            Value::Path(p) => {
                if copy {
                    let sp = self.copy_path_to_store(p).map_err(|e| e.at(pos))?;
                    Ok(NixString {
                        s: sp.clone(),
                        ctx: vec![Rc::from(sp.as_str())],
                    })
                } else {
                    Ok(NixString::plain(&**p))
                }
            }
            Value::Attrs(a) => {
                if let Some(f) = a.get("__toString") {
                    let f = self.force(f)?;
                    let r = self.call(&f, v.clone(), pos)?;
                    return self.coerce_to_string(&r, pos, more, copy);
                }
                if let Some(o) = a.get("outPath") {
                    return self.coerce_to_string(o, pos, more, copy);
                }
                Err(Error::eval("cannot coerce a set to a string").at(pos))
            }
            Value::Int(i) if more => Ok(NixString::plain(i.to_string())),
            Value::Float(f) if more => Ok(NixString::plain(format!("{f:.6}"))),
            Value::Bool(b) if more => Ok(NixString::plain(if *b { "1" } else { "" })),
            Value::Null if more => Ok(NixString::plain("")),
            Value::List(l) if more => {
                let mut out = NixString::plain(String::new());
                for (i, item) in l.iter().enumerate() {
                    let s = self.coerce_to_string(item, pos, more, copy)?;
                    out.s.push_str(&s.s);
                    out.add_context(&s.ctx);
                    if i + 1 < l.len() {
                        let item = self.force(item)?;
                        let empty_list = matches!(&item, Value::List(x) if x.is_empty());
                        if !empty_list {
                            out.s.push(' ');
                        }
                    }
                }
                Ok(out)
            }
            other => {
                Err(Error::eval(format!("cannot coerce {} to a string", other.type_desc())).at(pos))
            }
        }
    }

    /// Copy a source path into the store (cached per path), returning its store path.
    pub fn copy_path_to_store(&self, p: &str) -> Result<String> {
        if let Some(sp) = self.src_cache.borrow().get(p) {
            return Ok(sp.clone());
        }
        let name = p.rsplit('/').next().unwrap_or("source");
        let real = self.real_path(p);
        let sp = self
            .store
            .add_path(&real, name, None)
            .map_err(|e| Error::eval(e.to_string()))?
            .to_absolute_path();
        self.src_cache
            .borrow_mut()
            .insert(p.to_string(), sp.clone());
        Ok(sp)
    }

    /// Where the file named `p` can be read: inside the store directory, the
    /// location the [`Store`] gives for it (for example a `toFile` result
    /// written into a [`crate::store::DirStore`]); anywhere else, `p` itself.
    pub fn real_path(&self, p: &str) -> PathBuf {
        let dir = self.store.store_dir();
        let in_store = p
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'));
        if in_store {
            if let Ok((sp, rest)) = StorePath::from_absolute_path_prefix(p) {
                if let Some(real) = self.store.real_path(&sp) {
                    let rest = rest.trim_start_matches('/');
                    return if rest.is_empty() {
                        real
                    } else {
                        real.join(rest)
                    };
                }
            }
        }
        PathBuf::from(p)
    }
}
