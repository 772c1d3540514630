//! `match` and `split` with POSIX extended regular expressions (translated to
//! the `regex` crate's syntax).

use super::{b, Builtin};
use crate::error::{Error, Result};
use crate::eval::Eval;
use crate::pos::Pos;
use crate::value::*;
use std::cell::RefCell;
use std::collections::HashMap;

pub(super) const BUILTINS: &[Builtin] = &[b("match", 2, match_), b("split", 2, split)];

thread_local! {
    static CACHE: RefCell<HashMap<(String, bool), regex::Regex>> = RefCell::new(HashMap::new());
}

/// Translate POSIX ERE to `regex` syntax: bracket expressions keep `[:class:]`,
/// a leading `]` in a bracket is literal, and backslash escapes pass through.
fn translate(re: &str) -> String {
    let mut out = String::with_capacity(re.len() + 8);
    let chars: Vec<char> = re.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '[' {
            out.push('[');
            i += 1;
            if i < chars.len() && chars[i] == '^' {
                out.push('^');
                i += 1;
            }
            if i < chars.len() && chars[i] == ']' {
                out.push_str("\\]");
                i += 1;
            }
            while i < chars.len() && chars[i] != ']' {
                if chars[i] == '[' && i + 1 < chars.len() && chars[i + 1] == ':' {
                    if let Some(end) = (i + 2..chars.len().saturating_sub(1))
                        .find(|&j| chars[j] == ':' && chars[j + 1] == ']')
                    {
                        out.extend(&chars[i..end + 2]);
                        i = end + 2;
                        continue;
                    }
                }
                match chars[i] {
                    '\\' => out.push_str("\\\\"),
                    '[' => out.push_str("\\["),
                    c => out.push(c),
                }
                i += 1;
            }
            out.push(']');
            i += 1;
            continue;
        }
        if c == '\\' && i + 1 < chars.len() {
            out.push('\\');
            out.push(chars[i + 1]);
            i += 2;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

fn compile(re: &str, anchored: bool, pos: Pos) -> Result<regex::Regex> {
    let key = (re.to_string(), anchored);
    if let Some(r) = CACHE.with(|c| c.borrow().get(&key).cloned()) {
        return Ok(r);
    }
    let t = translate(re);
    let src = if anchored { format!("^(?:{t})$") } else { t };
    let r = regex::Regex::new(&src)
        .map_err(|e| Error::eval(format!("invalid regular expression '{re}': {e}")).at(pos))?;
    CACHE.with(|c| c.borrow_mut().insert(key, r.clone()));
    Ok(r)
}

fn groups(caps: &regex::Captures<'_>) -> Vec<Value> {
    (1..caps.len())
        .map(|i| {
            caps.get(i)
                .map(|m| Value::string(m.as_str()))
                .unwrap_or(Value::Null)
        })
        .collect()
}

fn match_(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let re = ev.expect_string(&a[0], pos)?;
    let s = ev.coerce_to_string(&a[1], pos, false, false)?;
    let r = compile(&re.s, true, pos)?;
    Ok(match r.captures(&s.s) {
        Some(c) => Value::list(groups(&c)),
        None => Value::Null,
    })
}

fn split(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let re = ev.expect_string(&a[0], pos)?;
    let s = ev.coerce_to_string(&a[1], pos, false, false)?;
    let r = compile(&re.s, false, pos)?;
    let mut out = Vec::new();
    let mut last = 0;
    for c in r.captures_iter(&s.s) {
        let m = c.get(0).expect("group 0 always matches");
        out.push(Value::string(&s.s[last..m.start()]));
        out.push(Value::list(groups(&c)));
        last = m.end();
    }
    out.push(Value::string(&s.s[last..]));
    Ok(Value::list(out))
}

#[cfg(test)]
mod tests {
    use super::translate;

    #[test]
    fn posix_brackets() {
        assert_eq!(translate("[]a]"), "[\\]a]");
        assert_eq!(translate("[[:alpha:]_]+"), "[[:alpha:]_]+");
        assert_eq!(translate("a\\.b"), "a\\.b");
    }
}
