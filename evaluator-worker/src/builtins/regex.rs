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

use super::{b, Builtin};
use crate::error::{Error, Result};
use crate::eval::Eval;
use crate::pos::Pos;
use crate::value::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

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

// ---------------------------------------------------------------------------
// Syntax: the tokens of POSIX extended syntax as libstdc++ scans them.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ord(u8),
    Any,
    LineBegin,
    LineEnd,
    Star,
    Plus,
    Opt,
    Or,
    GroupBegin,
    GroupEnd,
    BracketBegin,
    BracketNegBegin,
    BracketEnd,
    BracketDash,
    IntervalBegin,
    IntervalEnd,
    DupCount(Vec<u8>),
    Comma,
    CollSymbol(Vec<u8>),
    EquivClass(Vec<u8>),
    CharClass(Vec<u8>),
    Eof,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ScanState {
    Normal,
    InBracket,
    InBrace,
}

/// Characters with a meaning outside brackets; only these may be escaped.
const SPECIAL: &[u8] = b".[\\()*+?{|^$";

struct Scanner<'a> {
    re: &'a [u8],
    i: usize,
    state: ScanState,
    at_bracket_start: bool,
    token: Token,
}

impl<'a> Scanner<'a> {
    fn new(re: &'a [u8]) -> std::result::Result<Self, CompileError> {
        let mut s = Scanner {
            re,
            i: 0,
            state: ScanState::Normal,
            at_bracket_start: false,
            token: Token::Eof,
        };
        s.advance()?;
        Ok(s)
    }

    fn next_byte(&mut self) -> Option<u8> {
        let c = self.re.get(self.i).copied();
        self.i += usize::from(c.is_some());
        c
    }

    fn advance(&mut self) -> std::result::Result<(), CompileError> {
        if self.i == self.re.len() {
            self.token = Token::Eof;
            return Ok(());
        }
        match self.state {
            ScanState::Normal => self.scan_normal(),
            ScanState::InBracket => self.scan_in_bracket(),
            ScanState::InBrace => self.scan_in_brace(),
        }
    }

    fn scan_normal(&mut self) -> std::result::Result<(), CompileError> {
        let c = self.re[self.i];
        self.i += 1;
        if c != 0 && !SPECIAL.contains(&c) {
            self.token = Token::Ord(c);
            return Ok(());
        }
        self.token = match c {
            b'\\' => {
                // Only a special character may follow (strict ISO C++ build).
                match self.next_byte() {
                    Some(e) if SPECIAL.contains(&e) => Token::Ord(e),
                    _ => return Err(CompileError::Invalid),
                }
            }
            b'(' => Token::GroupBegin,
            b')' => Token::GroupEnd,
            b'[' => {
                self.state = ScanState::InBracket;
                self.at_bracket_start = true;
                if self.re.get(self.i) == Some(&b'^') {
                    self.i += 1;
                    Token::BracketNegBegin
                } else {
                    Token::BracketBegin
                }
            }
            b'{' => {
                self.state = ScanState::InBrace;
                Token::IntervalBegin
            }
            b'^' => Token::LineBegin,
            b'$' => Token::LineEnd,
            b'.' => Token::Any,
            b'*' => Token::Star,
            b'+' => Token::Plus,
            b'?' => Token::Opt,
            b'|' => Token::Or,
            other => Token::Ord(other),
        };
        Ok(())
    }

    fn scan_in_bracket(&mut self) -> std::result::Result<(), CompileError> {
        let c = self.re[self.i];
        self.i += 1;
        self.token = match c {
            b'-' => Token::BracketDash,
            b'[' => match self.re.get(self.i) {
                None => return Err(CompileError::Invalid),
                Some(&k @ (b'.' | b':' | b'=')) => {
                    self.i += 1;
                    let name = self.eat_class(k)?;
                    match k {
                        b'.' => Token::CollSymbol(name),
                        b':' => Token::CharClass(name),
                        _ => Token::EquivClass(name),
                    }
                }
                Some(_) => Token::Ord(b'['),
            },
            // "[]" and "[^]" start with a literal ']'.
            b']' if !self.at_bracket_start => {
                self.state = ScanState::Normal;
                Token::BracketEnd
            }
            other => Token::Ord(other),
        };
        self.at_bracket_start = false;
        Ok(())
    }

    /// The name in `[:name:]` (and the like) up to `k]`.
    fn eat_class(&mut self, k: u8) -> std::result::Result<Vec<u8>, CompileError> {
        let start = self.i;
        while self.i < self.re.len() && self.re[self.i] != k {
            self.i += 1;
        }
        let name = self.re[start..self.i].to_vec();
        if self.next_byte() != Some(k) || self.next_byte() != Some(b']') {
            return Err(CompileError::Invalid);
        }
        Ok(name)
    }

    fn scan_in_brace(&mut self) -> std::result::Result<(), CompileError> {
        let c = self.re[self.i];
        self.i += 1;
        self.token = if c.is_ascii_digit() {
            let mut v = vec![c];
            while let Some(&d) = self.re.get(self.i).filter(|d| d.is_ascii_digit()) {
                v.push(d);
                self.i += 1;
            }
            Token::DupCount(v)
        } else if c == b',' {
            Token::Comma
        } else if c == b'}' {
            self.state = ScanState::Normal;
            Token::IntervalEnd
        } else {
            return Err(CompileError::Invalid);
        };
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The NFA, built the way libstdc++'s compiler builds it.

const NONE: usize = usize::MAX;

#[derive(Debug, Clone)]
enum Op {
    /// Try `alt` (the left side), then `next`; keep the longer result.
    Alternative,
    /// Greedy loop: `alt` is one more iteration, `next` leaves.
    Repeat,
    LineBegin,
    LineEnd,
    GroupBegin(usize),
    GroupEnd(usize),
    Dummy,
    Char(u8),
    /// `.`: anything but NUL.
    Any,
    Bracket(Rc<[bool; 256]>),
    Accept,
}

#[derive(Debug, Clone)]
struct State {
    op: Op,
    next: usize,
    alt: usize,
}

/// A fragment of the NFA: its first and last state.
#[derive(Clone, Copy)]
struct Seq {
    start: usize,
    end: usize,
}

#[derive(Debug)]
struct Nfa {
    states: Vec<State>,
    start: usize,
    /// Number of groups, the whole match (group 0) included.
    groups: usize,
}

struct Compiler<'a> {
    scan: Scanner<'a>,
    states: Vec<State>,
    stack: Vec<Seq>,
    groups: usize,
}

type CResult<T> = std::result::Result<T, CompileError>;

impl<'a> Compiler<'a> {
    fn insert(&mut self, op: Op, next: usize, alt: usize) -> CResult<usize> {
        self.states.push(State { op, next, alt });
        if self.states.len() > STATE_LIMIT {
            return Err(CompileError::TooBig);
        }
        Ok(self.states.len() - 1)
    }

    fn single(&mut self, op: Op) -> CResult<Seq> {
        let id = self.insert(op, NONE, NONE)?;
        Ok(Seq { start: id, end: id })
    }

    fn append(&mut self, seq: &mut Seq, other: Seq) {
        self.states[seq.end].next = other.start;
        seq.end = other.end;
    }

    fn append_id(&mut self, seq: &mut Seq, id: usize) {
        self.append(seq, Seq { start: id, end: id });
    }

    fn pop(&mut self) -> Seq {
        self.stack
            .pop()
            .expect("the regex compiler's stack is balanced")
    }

    /// Consume the current token when `pred` accepts it.
    fn take<T>(&mut self, pred: impl FnOnce(&Token) -> Option<T>) -> CResult<Option<T>> {
        match pred(&self.scan.token) {
            Some(v) => {
                self.scan.advance()?;
                Ok(Some(v))
            }
            None => Ok(None),
        }
    }

    fn eat(&mut self, t: Token) -> CResult<bool> {
        Ok(self.take(|c| (*c == t).then_some(()))?.is_some())
    }

    fn try_char(&mut self) -> CResult<Option<u8>> {
        self.take(|t| match t {
            Token::Ord(c) => Some(*c),
            _ => None,
        })
    }

    fn disjunction(&mut self) -> CResult<()> {
        self.alternative()?;
        while self.eat(Token::Or)? {
            let mut alt1 = self.pop();
            self.alternative()?;
            let mut alt2 = self.pop();
            let end = self.insert(Op::Dummy, NONE, NONE)?;
            self.append_id(&mut alt1, end);
            self.append_id(&mut alt2, end);
            let alt = self.insert(Op::Alternative, alt2.start, alt1.start)?;
            self.stack.push(Seq { start: alt, end });
        }
        Ok(())
    }

    fn alternative(&mut self) -> CResult<()> {
        if self.term()? {
            let mut re = self.pop();
            self.alternative()?;
            let rest = self.pop();
            self.append(&mut re, rest);
            self.stack.push(re);
        } else {
            let d = self.single(Op::Dummy)?;
            self.stack.push(d);
        }
        Ok(())
    }

    fn term(&mut self) -> CResult<bool> {
        if self.eat(Token::LineBegin)? {
            let s = self.single(Op::LineBegin)?;
            self.stack.push(s);
            return Ok(true);
        }
        if self.eat(Token::LineEnd)? {
            let s = self.single(Op::LineEnd)?;
            self.stack.push(s);
            return Ok(true);
        }
        if self.atom()? {
            while self.quantifier()? {}
            return Ok(true);
        }
        Ok(false)
    }

    fn quantifier(&mut self) -> CResult<bool> {
        if self.eat(Token::Star)? {
            let mut e = self.need_operand()?;
            let r = self.single(Op::Repeat)?;
            self.states[r.start].alt = e.start;
            self.append(&mut e, r);
            self.stack.push(r);
        } else if self.eat(Token::Plus)? {
            let mut e = self.need_operand()?;
            let r = self.insert(Op::Repeat, NONE, e.start)?;
            self.append_id(&mut e, r);
            self.stack.push(e);
        } else if self.eat(Token::Opt)? {
            let mut e = self.need_operand()?;
            let end = self.insert(Op::Dummy, NONE, NONE)?;
            let mut r = self.single(Op::Repeat)?;
            self.states[r.start].alt = e.start;
            self.append_id(&mut e, end);
            self.append_id(&mut r, end);
            self.stack.push(r);
        } else if self.eat(Token::IntervalBegin)? {
            self.interval()?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    fn need_operand(&mut self) -> CResult<Seq> {
        self.stack.pop().ok_or(CompileError::Invalid)
    }

    fn count(digits: &[u8]) -> CResult<i64> {
        digits.iter().try_fold(0i64, |v, d| {
            v.checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(d - b'0')))
                .ok_or(CompileError::Invalid)
        })
    }

    fn dup_count(&mut self) -> CResult<Option<i64>> {
        match self.take(|t| match t {
            Token::DupCount(d) => Some(d.clone()),
            _ => None,
        })? {
            Some(d) => Ok(Some(Self::count(&d)?)),
            None => Ok(None),
        }
    }

    /// `{m}`, `{m,}` and `{m,n}`: unrolled into copies of the operand.
    fn interval(&mut self) -> CResult<()> {
        if self.stack.is_empty() {
            return Err(CompileError::Invalid);
        }
        let Some(min) = self.dup_count()? else {
            return Err(CompileError::Invalid);
        };
        let r = self.pop();
        let mut e = self.single(Op::Dummy)?;
        let mut infinite = false;
        let mut extra = 0i64;
        if self.eat(Token::Comma)? {
            match self.dup_count()? {
                Some(max) => extra = max - min,
                None => infinite = true,
            }
        }
        if !self.eat(Token::IntervalEnd)? {
            return Err(CompileError::Invalid);
        }
        for _ in 0..min {
            let c = self.clone_seq(r)?;
            self.append(&mut e, c);
        }
        if infinite {
            let mut tmp = self.clone_seq(r)?;
            let s = self.insert(Op::Repeat, NONE, tmp.start)?;
            self.append_id(&mut tmp, s);
            self.append_id(&mut e, s);
        } else {
            if extra < 0 {
                return Err(CompileError::Invalid);
            }
            let end = self.insert(Op::Dummy, NONE, NONE)?;
            for _ in 0..extra {
                let tmp = self.clone_seq(r)?;
                // "Match more" is the loop body, "match less" skips to the end.
                let alt = self.insert(Op::Repeat, end, tmp.start)?;
                self.append(
                    &mut e,
                    Seq {
                        start: alt,
                        end: tmp.end,
                    },
                );
            }
            self.append_id(&mut e, end);
        }
        self.stack.push(e);
        Ok(())
    }

    /// Copy every state of `seq` (reachable from its start without leaving
    /// through its end), as libstdc++'s `_StateSeq::_M_clone` does.
    fn clone_seq(&mut self, seq: Seq) -> CResult<Seq> {
        let mut map: HashMap<usize, usize> = HashMap::new();
        let mut todo = vec![seq.start];
        while let Some(u) = todo.pop() {
            if map.contains_key(&u) {
                continue;
            }
            let dup = self.states[u].clone();
            let id = self.insert(dup.op.clone(), dup.next, dup.alt)?;
            map.insert(u, id);
            if matches!(dup.op, Op::Alternative | Op::Repeat)
                && dup.alt != NONE
                && !map.contains_key(&dup.alt)
            {
                todo.push(dup.alt);
            }
            if u == seq.end {
                continue;
            }
            if dup.next != NONE && !map.contains_key(&dup.next) {
                todo.push(dup.next);
            }
        }
        for &id in map.values() {
            let st = &mut self.states[id];
            if let Some(&n) = map.get(&st.next) {
                st.next = n;
            }
            if matches!(st.op, Op::Alternative | Op::Repeat) {
                if let Some(&a) = map.get(&st.alt) {
                    st.alt = a;
                }
            }
        }
        Ok(Seq {
            start: map[&seq.start],
            end: map[&seq.end],
        })
    }

    fn atom(&mut self) -> CResult<bool> {
        if self.eat(Token::Any)? {
            let s = self.single(Op::Any)?;
            self.stack.push(s);
        } else if let Some(c) = self.try_char()? {
            let s = self.single(Op::Char(c))?;
            self.stack.push(s);
        } else if self.eat(Token::GroupBegin)? {
            let k = self.groups;
            self.groups += 1;
            let mut r = self.single(Op::GroupBegin(k))?;
            self.disjunction()?;
            if !self.eat(Token::GroupEnd)? {
                return Err(CompileError::Invalid);
            }
            let inner = self.pop();
            self.append(&mut r, inner);
            let end = self.insert(Op::GroupEnd(k), NONE, NONE)?;
            self.append_id(&mut r, end);
            self.stack.push(r);
        } else {
            let neg = if self.eat(Token::BracketNegBegin)? {
                true
            } else if self.eat(Token::BracketBegin)? {
                false
            } else {
                return Ok(false);
            };
            let set = self.bracket(neg)?;
            let s = self.single(Op::Bracket(Rc::new(set)))?;
            self.stack.push(s);
        }
        Ok(true)
    }

    fn bracket(&mut self, neg: bool) -> CResult<[bool; 256]> {
        let mut m = BracketSet::default();
        let mut last = Last::None;
        if let Some(c) = self.try_char()? {
            last = Last::Char(c);
        } else if self.eat(Token::BracketDash)? {
            last = Last::Char(b'-');
        }
        while self.expression_term(&mut last, &mut m)? {}
        if let Last::Char(c) = last {
            m.chars[usize::from(c)] = true;
        }
        Ok(std::array::from_fn(|i| m.matches(i as u8) != neg))
    }

    /// One element of a bracket expression; false at its closing `]`.
    fn expression_term(&mut self, last: &mut Last, m: &mut BracketSet) -> CResult<bool> {
        fn push_char(last: &mut Last, m: &mut BracketSet, c: u8) {
            if let Last::Char(p) = *last {
                m.chars[usize::from(p)] = true;
            }
            *last = Last::Char(c);
        }
        fn push_class(last: &mut Last, m: &mut BracketSet) {
            if let Last::Char(p) = *last {
                m.chars[usize::from(p)] = true;
            }
            *last = Last::Class;
        }
        if self.eat(Token::BracketEnd)? {
            return Ok(false);
        }
        if let Some(name) = self.take(|t| match t {
            Token::CollSymbol(n) => Some(n.clone()),
            _ => None,
        })? {
            let c = collating_element(&name).ok_or(CompileError::Invalid)?;
            m.chars[usize::from(c)] = true;
            push_char(last, m, c);
        } else if let Some(name) = self.take(|t| match t {
            Token::EquivClass(n) => Some(n.clone()),
            _ => None,
        })? {
            push_class(last, m);
            let c = collating_element(&name).ok_or(CompileError::Invalid)?;
            m.equiv.push(c.to_ascii_lowercase());
        } else if let Some(name) = self.take(|t| match t {
            Token::CharClass(n) => Some(n.clone()),
            _ => None,
        })? {
            push_class(last, m);
            m.classes
                .push(CharClass::lookup(&name).ok_or(CompileError::Invalid)?);
        } else if let Some(c) = self.try_char()? {
            push_char(last, m, c);
        } else if self.eat(Token::BracketDash)? {
            if self.eat(Token::BracketEnd)? {
                push_char(last, m, b'-');
                return Ok(false);
            }
            let Last::Char(from) = *last else {
                // A range cannot start at a class, nor a dash stand alone.
                return Err(CompileError::Invalid);
            };
            let to = if let Some(c) = self.try_char()? {
                c
            } else if self.eat(Token::BracketDash)? {
                b'-'
            } else {
                return Err(CompileError::Invalid);
            };
            // `char` is signed: bytes from 0x80 sort below ASCII.
            if (from as i8) > (to as i8) {
                return Err(CompileError::Invalid);
            }
            m.ranges.push((from as i8, to as i8));
            *last = Last::None;
        } else {
            return Err(CompileError::Invalid);
        }
        Ok(true)
    }
}

/// What the previous element of a bracket expression was.
#[derive(Clone, Copy)]
enum Last {
    None,
    Char(u8),
    Class,
}

struct BracketSet {
    chars: [bool; 256],
    ranges: Vec<(i8, i8)>,
    classes: Vec<CharClass>,
    equiv: Vec<u8>,
}

impl Default for BracketSet {
    fn default() -> Self {
        BracketSet {
            chars: [false; 256],
            ranges: Vec::new(),
            classes: Vec::new(),
            equiv: Vec::new(),
        }
    }
}

impl BracketSet {
    fn matches(&self, c: u8) -> bool {
        self.chars[usize::from(c)]
            || self
                .ranges
                .iter()
                .any(|&(lo, hi)| lo <= c as i8 && c as i8 <= hi)
            || self.classes.iter().any(|k| k.contains(c))
            || self.equiv.contains(&c.to_ascii_lowercase())
    }
}

/// The character classes of the "C" locale (plus libstdc++'s `d`, `s`, `w`).
#[derive(Clone, Copy)]
enum CharClass {
    Alnum,
    Alpha,
    Blank,
    Cntrl,
    Digit,
    Graph,
    Lower,
    Print,
    Punct,
    Space,
    Upper,
    Xdigit,
    Word,
}

impl CharClass {
    fn lookup(name: &[u8]) -> Option<CharClass> {
        Some(match name.to_ascii_lowercase().as_slice() {
            b"d" | b"digit" => CharClass::Digit,
            b"w" => CharClass::Word,
            b"s" | b"space" => CharClass::Space,
            b"alnum" => CharClass::Alnum,
            b"alpha" => CharClass::Alpha,
            b"blank" => CharClass::Blank,
            b"cntrl" => CharClass::Cntrl,
            b"graph" => CharClass::Graph,
            b"lower" => CharClass::Lower,
            b"print" => CharClass::Print,
            b"punct" => CharClass::Punct,
            b"upper" => CharClass::Upper,
            b"xdigit" => CharClass::Xdigit,
            _ => return None,
        })
    }

    fn contains(self, c: u8) -> bool {
        match self {
            CharClass::Alnum => c.is_ascii_alphanumeric(),
            CharClass::Alpha => c.is_ascii_alphabetic(),
            CharClass::Blank => c == b' ' || c == b'\t',
            CharClass::Cntrl => c.is_ascii_control(),
            CharClass::Digit => c.is_ascii_digit(),
            CharClass::Graph => c.is_ascii_graphic(),
            CharClass::Lower => c.is_ascii_lowercase(),
            CharClass::Print => c.is_ascii_graphic() || c == b' ',
            CharClass::Punct => c.is_ascii_punctuation(),
            CharClass::Space => matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'),
            CharClass::Upper => c.is_ascii_uppercase(),
            CharClass::Xdigit => c.is_ascii_hexdigit(),
            CharClass::Word => c.is_ascii_alphanumeric() || c == b'_',
        }
    }
}

/// POSIX names of the portable character set, by code (what `[.name.]` and
/// `[=name=]` accept; letters are named by themselves, digits are not).
const COLLATING_NAMES: [&str; 128] = [
    "NUL",
    "SOH",
    "STX",
    "ETX",
    "EOT",
    "ENQ",
    "ACK",
    "alert",
    "backspace",
    "tab",
    "newline",
    "vertical-tab",
    "form-feed",
    "carriage-return",
    "SO",
    "SI",
    "DLE",
    "DC1",
    "DC2",
    "DC3",
    "DC4",
    "NAK",
    "SYN",
    "ETB",
    "CAN",
    "EM",
    "SUB",
    "ESC",
    "IS4",
    "IS3",
    "IS2",
    "IS1",
    "space",
    "exclamation-mark",
    "quotation-mark",
    "number-sign",
    "dollar-sign",
    "percent-sign",
    "ampersand",
    "apostrophe",
    "left-parenthesis",
    "right-parenthesis",
    "asterisk",
    "plus-sign",
    "comma",
    "hyphen",
    "period",
    "slash",
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "colon",
    "semicolon",
    "less-than-sign",
    "equals-sign",
    "greater-than-sign",
    "question-mark",
    "commercial-at",
    "A",
    "B",
    "C",
    "D",
    "E",
    "F",
    "G",
    "H",
    "I",
    "J",
    "K",
    "L",
    "M",
    "N",
    "O",
    "P",
    "Q",
    "R",
    "S",
    "T",
    "U",
    "V",
    "W",
    "X",
    "Y",
    "Z",
    "left-square-bracket",
    "backslash",
    "right-square-bracket",
    "circumflex",
    "underscore",
    "grave-accent",
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "h",
    "i",
    "j",
    "k",
    "l",
    "m",
    "n",
    "o",
    "p",
    "q",
    "r",
    "s",
    "t",
    "u",
    "v",
    "w",
    "x",
    "y",
    "z",
    "left-curly-bracket",
    "vertical-line",
    "right-curly-bracket",
    "tilde",
    "DEL",
];

fn collating_element(name: &[u8]) -> Option<u8> {
    COLLATING_NAMES
        .iter()
        .position(|n| n.as_bytes() == name)
        .map(|i| i as u8)
}

impl Nfa {
    fn compile(re: &[u8]) -> CResult<Nfa> {
        let mut c = Compiler {
            scan: Scanner::new(re)?,
            states: Vec::new(),
            stack: Vec::new(),
            groups: 1,
        };
        let start = c.insert(Op::GroupBegin(0), NONE, NONE)?;
        let mut r = Seq { start, end: start };
        c.disjunction()?;
        if !c.eat(Token::Eof)? {
            return Err(CompileError::Invalid);
        }
        let body = c.pop();
        c.append(&mut r, body);
        let end = c.insert(Op::GroupEnd(0), NONE, NONE)?;
        c.append_id(&mut r, end);
        let accept = c.insert(Op::Accept, NONE, NONE)?;
        c.append_id(&mut r, accept);
        Ok(Nfa {
            states: c.states,
            start,
            groups: c.groups,
        })
    }

    /// `std::regex_match`: the sub-matches when the whole of `s` matches.
    fn full_match(&self, s: &[u8]) -> Option<Vec<Sub>> {
        Exec::new(self, s, Flags::default()).run(0, true)
    }

    /// `std::regex_search` from `from`.
    fn search(&self, s: &[u8], from: usize, flags: Flags) -> Option<Vec<Sub>> {
        let mut ex = Exec::new(self, s, flags);
        if let Some(r) = ex.run(from, false) {
            return Some(r);
        }
        if flags.continuous {
            return None;
        }
        ex.flags.prev_avail = true;
        (from + 1..=s.len()).find_map(|b| ex.run(b, false))
    }

    /// Every match as `std::sregex_iterator` yields them: the start of the
    /// text before it (the end of the previous match) and its sub-matches.
    fn find_all(&self, s: &[u8]) -> Vec<(usize, Vec<Sub>)> {
        let mut out = Vec::new();
        let mut flags = Flags::default();
        let mut found = self.search(s, 0, flags);
        let mut prefix_start = 0;
        while let Some(subs) = found {
            let (m_start, m_end) = (subs[0].start, subs[0].end);
            out.push((prefix_start, subs));
            prefix_start = m_end;
            let mut start = m_end;
            if m_start == m_end {
                if start == s.len() {
                    break;
                }
                let retry = Flags {
                    not_null: true,
                    continuous: true,
                    ..flags
                };
                if let Some(r) = self.search(s, start, retry) {
                    found = Some(r);
                    continue;
                }
                start += 1;
            }
            flags.prev_avail = true;
            found = self.search(s, start, flags);
        }
        out
    }
}

// ---------------------------------------------------------------------------
// The depth-first executor.

#[derive(Clone, Copy, Default)]
struct Flags {
    /// The search does not start at the beginning of the text: `^` fails.
    prev_avail: bool,
    /// An empty match is no match.
    not_null: bool,
    /// Only a match starting at the search start counts.
    continuous: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sub {
    start: usize,
    end: usize,
    matched: bool,
}

/// Work left on the explicit stack; the `Restore*` entries undo a change
/// when the search backtracks past it.
enum Step {
    Visit(usize),
    RestorePos(usize),
    RestoreStart(usize, usize),
    RestoreSub(usize, Sub),
    RestoreRep(usize, (usize, u32)),
    RepDecrement(usize),
    /// The left side of an alternation is done: try the right side.
    AltRight(usize),
    /// Both sides are done: either may have found a solution.
    AltJoin(bool),
    /// The loop body was tried: leave the loop unless that succeeded.
    RepLeave(usize),
}

struct Exec<'a> {
    nfa: &'a Nfa,
    s: &'a [u8],
    flags: Flags,
    begin: usize,
    cur: usize,
    cur_results: Vec<Sub>,
    results: Vec<Sub>,
    /// Per state: where a loop was last entered and how often there.
    rep: Vec<(usize, u32)>,
    has_sol: bool,
    sol_pos: Option<usize>,
}

impl<'a> Exec<'a> {
    fn new(nfa: &'a Nfa, s: &'a [u8], flags: Flags) -> Self {
        Exec {
            nfa,
            s,
            flags,
            begin: 0,
            cur: 0,
            cur_results: vec![Sub::default(); nfa.groups],
            results: vec![Sub::default(); nfa.groups],
            rep: vec![(0, 0); nfa.states.len()],
            has_sol: false,
            sol_pos: None,
        }
    }

    /// One attempt at position `begin`, for the whole text (`exact`) or a prefix.
    fn run(&mut self, begin: usize, exact: bool) -> Option<Vec<Sub>> {
        self.begin = begin;
        self.cur = begin;
        self.has_sol = false;
        self.sol_pos = None;
        self.cur_results.clone_from(&self.results);
        let mut stack = vec![Step::Visit(self.nfa.start)];
        while let Some(step) = stack.pop() {
            match step {
                Step::Visit(i) => self.visit(i, exact, &mut stack),
                Step::RestorePos(p) => self.cur = p,
                Step::RestoreStart(k, v) => self.cur_results[k].start = v,
                Step::RestoreSub(k, v) => self.cur_results[k] = v,
                Step::RestoreRep(i, v) => self.rep[i] = v,
                Step::RepDecrement(i) => self.rep[i].1 -= 1,
                Step::AltRight(next) => {
                    stack.push(Step::AltJoin(self.has_sol));
                    self.has_sol = false;
                    stack.push(Step::Visit(next));
                }
                Step::AltJoin(h) => self.has_sol |= h,
                Step::RepLeave(next) => {
                    if !self.has_sol {
                        stack.push(Step::Visit(next));
                    }
                }
            }
        }
        self.has_sol.then(|| self.results.clone())
    }

    fn visit(&mut self, i: usize, exact: bool, stack: &mut Vec<Step>) {
        let st = &self.nfa.states[i];
        match &st.op {
            Op::Repeat => {
                stack.push(Step::RepLeave(st.next));
                let rc = self.rep[i];
                if rc.1 == 0 || rc.0 != self.cur {
                    stack.push(Step::RestoreRep(i, rc));
                    self.rep[i] = (self.cur, 1);
                    stack.push(Step::Visit(st.alt));
                } else if rc.1 < 2 {
                    self.rep[i].1 += 1;
                    stack.push(Step::RepDecrement(i));
                    stack.push(Step::Visit(st.alt));
                }
            }
            Op::Alternative => {
                stack.push(Step::AltRight(st.next));
                stack.push(Step::Visit(st.alt));
            }
            Op::GroupBegin(k) => {
                stack.push(Step::RestoreStart(*k, self.cur_results[*k].start));
                self.cur_results[*k].start = self.cur;
                stack.push(Step::Visit(st.next));
            }
            Op::GroupEnd(k) => {
                let old = self.cur_results[*k];
                stack.push(Step::RestoreSub(*k, old));
                self.cur_results[*k].end = self.cur;
                self.cur_results[*k].matched = true;
                stack.push(Step::Visit(st.next));
            }
            Op::LineBegin => {
                if self.cur == self.begin && !self.flags.prev_avail {
                    stack.push(Step::Visit(st.next));
                }
            }
            Op::LineEnd => {
                if self.cur == self.s.len() {
                    stack.push(Step::Visit(st.next));
                }
            }
            Op::Dummy => stack.push(Step::Visit(st.next)),
            Op::Char(_) | Op::Any | Op::Bracket(_) => {
                let Some(&c) = self.s.get(self.cur) else {
                    return;
                };
                let ok = match &st.op {
                    Op::Char(x) => *x == c,
                    Op::Any => c != 0,
                    Op::Bracket(set) => set[usize::from(c)],
                    _ => false,
                };
                if ok {
                    stack.push(Step::RestorePos(self.cur));
                    self.cur += 1;
                    stack.push(Step::Visit(st.next));
                }
            }
            Op::Accept => {
                self.has_sol = if exact {
                    self.cur == self.s.len()
                } else {
                    true
                };
                if self.cur == self.begin && self.flags.not_null {
                    self.has_sol = false;
                }
                if self.has_sol && self.sol_pos.is_none_or(|p| p < self.cur) {
                    self.sol_pos = Some(self.cur);
                    self.results.clone_from(&self.cur_results);
                }
            }
        }
    }
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
