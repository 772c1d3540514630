//! `match` and `split` with the regular expressions of Nix 2.8.
//!
//! Nix 2.8 compiles every regex with C++ `std::regex` and the flag
//! `std::regex::extended`, and on Linux that is GCC's libstdc++. Its results
//! are neither Perl's leftmost-first nor textbook POSIX: libstdc++ runs a
//! depth-first search over an NFA in which an alternation tries both sides
//! and keeps the first of the longest overall matches, while a greedy repeat
//! stops exploring as soon as taking one more iteration led to a match. The
//! sub-matches are those of the run that won. This module is an independent
//! engine with exactly those rules: the same syntax (and the same syntax
//! errors), the same NFA shape (including how `{m,n}` is unrolled, which
//! matters for the empty-loop guard and the state limit), and the same
//! search and iteration rules as `std::regex_match` and
//! `std::sregex_iterator`. The search runs on an explicit stack, so long
//! inputs cannot overflow the native stack.
//!
//! This file holds the builtins and the compiled-regex cache; `scan`
//! tokenises, `compile` builds the NFA, `class` handles bracket
//! expressions and character classes, `exec` runs the search.

use super::{b, Builtin};
use crate::error::{Error, Result};
use crate::eval::Eval;
use crate::pos::Pos;
use crate::value::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

mod class;
mod compile;
mod exec;
mod scan;

use compile::Nfa;
use exec::Sub;

pub(super) const BUILTINS: &[Builtin] = &[b("match", 2, match_), b("split", 2, split)];

thread_local! {
    static CACHE: RefCell<HashMap<String, Rc<Nfa>>> = RefCell::new(HashMap::new());
}

/// libstdc++'s `_GLIBCXX_REGEX_STATE_LIMIT`: more NFA states is `error_space`.
const STATE_LIMIT: usize = 100_000;

/// Why a regex was refused (Nix reports only these two cases apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CompileError {
    /// Any syntax error.
    Invalid,
    /// The NFA would exceed [`STATE_LIMIT`] states.
    TooBig,
}

fn compile(re: &str, pos: Pos) -> Result<Rc<Nfa>> {
    if let Some(r) = CACHE.with(|c| c.borrow().get(re).cloned()) {
        return Ok(r);
    }
    let nfa = Rc::new(Nfa::compile(re.as_bytes()).map_err(|e| {
        let msg = match e {
            CompileError::Invalid => format!("invalid regular expression '{re}'"),
            CompileError::TooBig => {
                format!("memory limit exceeded by regular expression '{re}'")
            }
        };
        Error::eval(msg).at(pos)
    })?);
    CACHE.with(|c| c.borrow_mut().insert(re.to_string(), nfa.clone()));
    Ok(nfa)
}

fn groups(s: &[u8], subs: &[Sub]) -> Vec<Value> {
    subs[1..]
        .iter()
        .map(|m| {
            if m.matched {
                Value::string(String::from_utf8_lossy(&s[m.start..m.end]).into_owned())
            } else {
                Value::Null
            }
        })
        .collect()
}

fn match_(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let re = ev.expect_string(&a[0], pos)?;
    let s = ev.expect_string(&a[1], pos)?;
    let nfa = compile(&re.s, pos)?;
    let bytes = s.s.as_bytes();
    Ok(match nfa.full_match(bytes) {
        Some(subs) => Value::list(groups(bytes, &subs)),
        None => Value::Null,
    })
}

fn split(ev: &Eval, a: &[Value], pos: Pos) -> Result<Value> {
    let re = ev.expect_string(&a[0], pos)?;
    let s = ev.expect_string(&a[1], pos)?;
    let nfa = compile(&re.s, pos)?;
    let bytes = s.s.as_bytes();
    let found = nfa.find_all(bytes);
    if found.is_empty() {
        // Nix hands back the argument itself (context included).
        return Ok(Value::list(vec![a[1].clone()]));
    }
    let text = |from: usize, to: usize| {
        Value::string(String::from_utf8_lossy(&bytes[from..to]).into_owned())
    };
    let mut out = Vec::with_capacity(2 * found.len() + 1);
    let mut last = 0;
    for (prefix_start, subs) in &found {
        out.push(text(*prefix_start, subs[0].start));
        out.push(Value::list(groups(bytes, subs)));
        last = subs[0].end;
    }
    out.push(text(last, bytes.len()));
    Ok(Value::list(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nix's rendering of `builtins.match`'s result.
    fn m(re: &str, s: &str) -> String {
        let nfa = match Nfa::compile(re.as_bytes()) {
            Ok(n) => n,
            Err(e) => return format!("{e:?}"),
        };
        match nfa.full_match(s.as_bytes()) {
            None => "null".into(),
            Some(subs) => render(s.as_bytes(), &subs),
        }
    }

    fn render(s: &[u8], subs: &[Sub]) -> String {
        let mut out = String::from("[ ");
        for g in &subs[1..] {
            if g.matched {
                out.push_str(&format!(
                    "{:?} ",
                    String::from_utf8_lossy(&s[g.start..g.end])
                ));
            } else {
                out.push_str("null ");
            }
        }
        out.push(']');
        out
    }

    /// Nix's rendering of `builtins.split`'s result.
    fn sp(re: &str, s: &str) -> String {
        let nfa = match Nfa::compile(re.as_bytes()) {
            Ok(n) => n,
            Err(e) => return format!("{e:?}"),
        };
        let b = s.as_bytes();
        let found = nfa.find_all(b);
        let mut out = String::from("[ ");
        let mut last = 0;
        for (p, subs) in &found {
            out.push_str(&format!("{:?} ", &s[*p..subs[0].start]));
            out.push_str(&render(b, subs));
            out.push(' ');
            last = subs[0].end;
        }
        out.push_str(&format!("{:?} ]", &s[last..]));
        out
    }

    // Every expected value below was printed by nix-instantiate (Nix 2.8.0)
    // for `builtins.match RE S` / `builtins.split RE S`.

    #[test]
    fn alternation_keeps_the_first_longest_run() {
        assert_eq!(m("(a|ab)(c|bcd)(d*)", "abcd"), r#"[ "a" "bcd" "" ]"#);
        assert_eq!(sp("(a|ab)", "abc"), r#"[ "" [ "ab" ] "c" ]"#);
    }

    #[test]
    fn groups_that_did_not_take_part_are_null() {
        assert_eq!(m("((a)|b)*", "ab"), r#"[ "b" "a" ]"#);
        assert_eq!(m("(a*)*", "b"), "null");
        assert_eq!(m("(a*)+", "b"), "null");
    }

    #[test]
    fn empty_matches_in_split() {
        assert_eq!(sp("x*", "abc"), r#"[ "" [ ] "a" [ ] "b" [ ] "c" [ ] "" ]"#);
    }

    #[test]
    fn brackets_classes_and_collating_names() {
        assert_eq!(m("[[:ALPHA:]]", "a"), "[ ]");
        assert_eq!(m("[[.hyphen.]]", "-"), "[ ]");
        assert_eq!(m("[[=a=]]", "A"), "[ ]");
        assert_eq!(m("[a-]+", "a-"), "[ ]");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Arbitrary patterns (metacharacters included) against arbitrary
        /// subjects: compiling either succeeds or reports an error, and
        /// matching and splitting always finish without a panic, with
        /// submatches inside the subject.
        #[test]
        fn any_pattern_is_refused_or_runs_safely(
            re in "[ab()|*+?{}\\[\\]^$.\\\\:,=0-3-]{0,12}",
            s in "[ab\\-\n:]{0,16}",
        ) {
            if let Ok(nfa) = Nfa::compile(re.as_bytes()) {
                let b = s.as_bytes();
                if let Some(subs) = nfa.full_match(b) {
                    for g in subs.iter().filter(|g| g.matched) {
                        proptest::prop_assert!(g.start <= g.end && g.end <= b.len());
                    }
                }
                for (p, subs) in nfa.find_all(b) {
                    proptest::prop_assert!(p <= subs[0].start && subs[0].end <= b.len());
                }
            }
        }
    }

    #[test]
    fn syntax_errors() {
        for re in ["\\d", "a\\]", "[[.0.]]", "^*", "a{2,1}"] {
            assert_eq!(m(re, "a"), "Invalid", "{re}");
        }
    }
}
