//! The `Derive(...)` ATerm: Nix 2.8's writer (`Derivation::unparse`) and a
//! parser that accepts exactly what that writer produces.
//!
//! Nix writes some fields escaped (builder, arguments, environment names
//! and values: `\"`, `\\`, `\n`, `\r`, `\t`) and every other field raw
//! (output names, paths, hash fields, input output names and the system).
//! The parser follows the same split: raw fields may not contain a
//! backslash, escaped fields may not contain a raw tab, newline or carriage
//! return, unknown escapes are refused, entries must be sorted and unique,
//! and nothing may follow the final `)`. Anything it accepts is therefore
//! written back to the very same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use super::{Derivation, DerivationError, DerivationOutput, FixedOutputHash};
use crate::hash::{Hash, HashAlgo};
use crate::store_path::{FileIngestionMethod, StorePath};

/// Where the writer puts its bytes; infallible so hashing needs no errors.
pub(super) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Adapts an [`io::Write`], keeping the first error and dropping the rest.
pub(super) struct IoSink<W> {
    pub w: W,
    pub err: Option<io::Error>,
}

impl<W: io::Write> Sink for IoSink<W> {
    fn put(&mut self, bytes: &[u8]) {
        if self.err.is_none() {
            if let Err(e) = self.w.write_all(bytes) {
                self.err = Some(e);
            }
        }
    }
}

fn raw(s: &mut impl Sink, v: &str) {
    s.put(b"\"");
    s.put(v.as_bytes());
    s.put(b"\"");
}

fn escaped(s: &mut impl Sink, v: &str) {
    s.put(b"\"");
    let bytes = v.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        s.put(&bytes[start..i]);
        s.put(esc);
        start = i + 1;
    }
    s.put(&bytes[start..]);
    s.put(b"\"");
}

fn list<S: Sink, T>(
    s: &mut S,
    items: impl IntoIterator<Item = T>,
    mut each: impl FnMut(&mut S, T),
) {
    s.put(b"[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            s.put(b",");
        }
        each(s, item);
    }
    s.put(b"]");
}

/// Writes `drv` as Nix's `unparse(maskOutputs, actualInputs)`: with
/// `mask_outputs`, output paths and output environment variables are
/// blanked; with `inputs`, the input derivations are replaced by those
/// (hash → outputs) entries.
pub(super) fn write(
    drv: &Derivation,
    s: &mut impl Sink,
    mask_outputs: bool,
    inputs: Option<&BTreeMap<String, BTreeSet<String>>>,
) {
    s.put(b"Derive(");
    list(s, &drv.outputs, |s, (name, out)| {
        s.put(b"(");
        raw(s, name);
        s.put(b",");
        match out {
            DerivationOutput::InputAddressed { path } => {
                raw(
                    s,
                    &if mask_outputs {
                        String::new()
                    } else {
                        path.to_absolute_path()
                    },
                );
                s.put(b",\"\",\"\"");
            }
            DerivationOutput::Fixed { path, hash } => {
                raw(
                    s,
                    &if mask_outputs {
                        String::new()
                    } else {
                        path.to_absolute_path()
                    },
                );
                s.put(b",");
                raw(s, &hash.method_algo());
                s.put(b",");
                raw(s, &hash.hash.to_base16());
            }
            DerivationOutput::Deferred => s.put(b"\"\",\"\",\"\""),
        }
        s.put(b")");
    });
    s.put(b",");
    fn input(s: &mut impl Sink, key: &str, outs: &BTreeSet<String>) {
        s.put(b"(");
        raw(s, key);
        s.put(b",");
        list(s, outs, |s, o| raw(s, o));
        s.put(b")");
    }
    match inputs {
        Some(map) => list(s, map, |s, (k, outs)| input(s, k, outs)),
        None => list(s, &drv.input_drvs, |s, (p, outs)| {
            input(s, &p.to_absolute_path(), outs)
        }),
    }
    s.put(b",");
    list(s, &drv.input_srcs, |s, p| raw(s, &p.to_absolute_path()));
    s.put(b",");
    raw(s, &drv.system);
    s.put(b",");
    escaped(s, &drv.builder);
    s.put(b",");
    list(s, &drv.args, |s, a| escaped(s, a));
    s.put(b",");
    list(s, &drv.env, |s, (k, v)| {
        s.put(b"(");
        escaped(s, k);
        s.put(b",");
        escaped(
            s,
            if mask_outputs && drv.outputs.contains_key(k) {
                ""
            } else {
                v
            },
        );
        s.put(b")");
    });
    s.put(b")");
}

/// A cursor over the ATerm text.
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

type Result<T> = std::result::Result<T, DerivationError>;

impl Parser<'_> {
    fn found(&self) -> String {
        match std::str::from_utf8(&self.s[self.pos..])
            .ok()
            .and_then(|r| r.chars().next())
        {
            Some(c) => format!("{c:?}"),
            None if self.pos >= self.s.len() => "end of input".to_string(),
            None => format!("byte 0x{:02x}", self.s[self.pos]),
        }
    }

    fn syntax(&self, expected: &str) -> DerivationError {
        DerivationError::Syntax {
            offset: self.pos,
            expected: expected.to_string(),
            found: self.found(),
        }
    }

    fn expect(&mut self, lit: &'static str) -> Result<()> {
        for &b in lit.as_bytes() {
            if self.s.get(self.pos) != Some(&b) {
                return Err(self.syntax(&format!("'{lit}'")));
            }
            self.pos += 1;
        }
        Ok(())
    }

    /// Parses a quoted string; `field` names it, and says whether Nix
    /// writes it escaped (`escaped`) or raw.
    fn string(&mut self, escaped: bool, field: &'static str) -> Result<String> {
        if self.s.get(self.pos) != Some(&b'"') {
            return Err(self.syntax("'\"' (a string)"));
        }
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let at = self.pos;
            let Some(&b) = self.s.get(at) else {
                return Err(self.syntax("'\"' (end of string)"));
            };
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' if !escaped => {
                    return Err(DerivationError::BackslashInRawField { offset: at, field })
                }
                b'\\' => {
                    let c = match self.s.get(self.pos) {
                        Some(b'n') => b'\n',
                        Some(b'r') => b'\r',
                        Some(b't') => b'\t',
                        Some(b'"') => b'"',
                        Some(b'\\') => b'\\',
                        Some(_) => {
                            let ch = std::str::from_utf8(&self.s[self.pos..])
                                .ok()
                                .and_then(|r| r.chars().next())
                                .unwrap_or('?');
                            return Err(DerivationError::BadEscape { offset: at, ch });
                        }
                        None => return Err(self.syntax("an escaped character")),
                    };
                    self.pos += 1;
                    out.push(c);
                }
                b'\n' | b'\r' | b'\t' if escaped => {
                    return Err(DerivationError::RawControlChar {
                        offset: at,
                        ch: b as char,
                        field,
                    })
                }
                _ => out.push(b),
            }
        }
        // The input was checked to be UTF-8 and escapes are ASCII.
        String::from_utf8(out).map_err(|_| DerivationError::BadUtf8 { offset: self.pos })
    }

    /// Parses `[item,item,...]`, calling `item` for each element.
    fn list(&mut self, mut item: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        self.expect("[")?;
        if self.s.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.s.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.syntax("',' or ']'")),
            }
        }
    }

    fn store_path(&mut self, field: &'static str) -> Result<StorePath> {
        let offset = self.pos;
        let s = self.string(false, field)?;
        StorePath::from_absolute_path(&s).map_err(|source| DerivationError::BadStorePath {
            offset,
            field,
            source,
        })
    }

    fn output(&mut self) -> Result<(String, DerivationOutput)> {
        self.expect("(")?;
        let offset = self.pos;
        let name = self.string(false, "an output name")?;
        self.expect(",")?;
        let path_offset = self.pos;
        let path = self.string(false, "an output path")?;
        self.expect(",")?;
        let algo = self.string(false, "an output hash algorithm")?;
        self.expect(",")?;
        let hash = self.string(false, "an output hash")?;
        self.expect(")")?;
        let bad = |reason: String| DerivationError::BadOutput {
            offset,
            output: name.clone(),
            reason,
        };
        let parse_path = |field| {
            StorePath::from_absolute_path(&path).map_err(|source| DerivationError::BadStorePath {
                offset: path_offset,
                field,
                source,
            })
        };
        let out = if algo.is_empty() {
            if !hash.is_empty() {
                return Err(bad("has a hash but no hash algorithm".into()));
            }
            if path.is_empty() {
                DerivationOutput::Deferred
            } else {
                DerivationOutput::InputAddressed {
                    path: parse_path("output path")?,
                }
            }
        } else {
            let (method, algo_name) = match algo.strip_prefix("r:") {
                Some(a) => (FileIngestionMethod::Recursive, a),
                None => (FileIngestionMethod::Flat, algo.as_str()),
            };
            let algo = HashAlgo::from_name(algo_name).map_err(|e| bad(e.to_string()))?;
            if hash.is_empty() {
                return Err(DerivationError::FloatingCa { output: name });
            }
            let h = Hash::parse_non_sri_unprefixed(&hash, algo)
                .ok()
                .filter(|h| h.to_base16() == hash)
                .ok_or_else(|| bad(format!("hash '{hash}' is not lower-case base-16 {algo}")))?;
            DerivationOutput::Fixed {
                path: parse_path("fixed output path")?,
                hash: FixedOutputHash { method, hash: h },
            }
        };
        Ok((name, out))
    }
}

/// Inserts into a sorted map, refusing keys that are not strictly after the
/// last one (Nix writes them sorted and unique).
fn push_sorted<K: Ord + ToString, V>(
    map: &mut BTreeMap<K, V>,
    key: K,
    value: V,
    offset: usize,
    what: &'static str,
) -> Result<()> {
    if map.last_key_value().is_some_and(|(last, _)| *last >= key) {
        return Err(DerivationError::Unsorted {
            offset,
            what,
            key: key.to_string(),
        });
    }
    map.insert(key, value);
    Ok(())
}

fn push_sorted_set<K: Ord + ToString>(
    set: &mut BTreeSet<K>,
    key: K,
    offset: usize,
    what: &'static str,
) -> Result<()> {
    if set.last().is_some_and(|last| *last >= key) {
        return Err(DerivationError::Unsorted {
            offset,
            what,
            key: key.to_string(),
        });
    }
    set.insert(key);
    Ok(())
}

/// Parses a whole `.drv` file.
pub(super) fn parse(bytes: &[u8]) -> Result<Derivation> {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(DerivationError::BadUtf8 {
            offset: e.valid_up_to(),
        });
    }
    let mut p = Parser { s: bytes, pos: 0 };
    let mut drv = Derivation::default();
    p.expect("Derive(")?;
    p.list(|p| {
        let offset = p.pos;
        let (name, out) = p.output()?;
        push_sorted(&mut drv.outputs, name, out, offset, "output")
    })?;
    p.expect(",")?;
    p.list(|p| {
        p.expect("(")?;
        let offset = p.pos;
        let path = p.store_path("input derivation path")?;
        p.expect(",")?;
        let mut outs = BTreeSet::new();
        p.list(|p| {
            let offset = p.pos;
            let o = p.string(false, "an input derivation output name")?;
            push_sorted_set(&mut outs, o, offset, "input derivation output")
        })?;
        p.expect(")")?;
        push_sorted(&mut drv.input_drvs, path, outs, offset, "input derivation")
    })?;
    p.expect(",")?;
    p.list(|p| {
        let offset = p.pos;
        let path = p.store_path("input source path")?;
        push_sorted_set(&mut drv.input_srcs, path, offset, "input source")
    })?;
    p.expect(",")?;
    drv.system = p.string(false, "the system")?;
    p.expect(",")?;
    drv.builder = p.string(true, "the builder")?;
    p.expect(",")?;
    p.list(|p| {
        drv.args.push(p.string(true, "an argument")?);
        Ok(())
    })?;
    p.expect(",")?;
    p.list(|p| {
        p.expect("(")?;
        let offset = p.pos;
        let key = p.string(true, "an environment variable name")?;
        p.expect(",")?;
        let value = p.string(true, "an environment variable value")?;
        p.expect(")")?;
        push_sorted(&mut drv.env, key, value, offset, "environment variable")
    })?;
    p.expect(")")?;
    if p.pos != bytes.len() {
        return Err(DerivationError::TrailingData { offset: p.pos });
    }
    Ok(drv)
}
