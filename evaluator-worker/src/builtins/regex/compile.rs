//! Compilation: the NFA, built the way libstdc++'s compiler builds it
//! (including how `{m,n}` is unrolled, which matters for the empty-loop
//! guard and the state limit).

use std::collections::HashMap;
use std::rc::Rc;

use super::class::{collating_element, BracketSet, CharClass, Last};
use super::exec::{Exec, Flags, Sub};
use super::scan::{Scanner, Token};
use super::{CompileError, STATE_LIMIT};

pub(super) const NONE: usize = usize::MAX;

#[derive(Debug, Clone)]
pub(super) enum Op {
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
pub(super) struct State {
    pub(super) op: Op,
    pub(super) next: usize,
    pub(super) alt: usize,
}

/// A fragment of the NFA: its first and last state.
#[derive(Clone, Copy)]
pub(super) struct Seq {
    pub(super) start: usize,
    pub(super) end: usize,
}

#[derive(Debug)]
pub(super) struct Nfa {
    pub(super) states: Vec<State>,
    pub(super) start: usize,
    /// Number of groups, the whole match (group 0) included.
    pub(super) groups: usize,
}

pub(super) struct Compiler<'a> {
    pub(super) scan: Scanner<'a>,
    pub(super) states: Vec<State>,
    pub(super) stack: Vec<Seq>,
    pub(super) groups: usize,
}

pub(super) type CResult<T> = std::result::Result<T, CompileError>;

impl<'a> Compiler<'a> {
    pub(super) fn insert(&mut self, op: Op, next: usize, alt: usize) -> CResult<usize> {
        self.states.push(State { op, next, alt });
        if self.states.len() > STATE_LIMIT {
            return Err(CompileError::TooBig);
        }
        Ok(self.states.len() - 1)
    }

    pub(super) fn single(&mut self, op: Op) -> CResult<Seq> {
        let id = self.insert(op, NONE, NONE)?;
        Ok(Seq { start: id, end: id })
    }

    pub(super) fn append(&mut self, seq: &mut Seq, other: Seq) {
        self.states[seq.end].next = other.start;
        seq.end = other.end;
    }

    pub(super) fn append_id(&mut self, seq: &mut Seq, id: usize) {
        self.append(seq, Seq { start: id, end: id });
    }

    pub(super) fn pop(&mut self) -> Seq {
        self.stack
            .pop()
            .expect("the regex compiler's stack is balanced")
    }

    /// Consume the current token when `pred` accepts it.
    pub(super) fn take<T>(&mut self, pred: impl FnOnce(&Token) -> Option<T>) -> CResult<Option<T>> {
        match pred(&self.scan.token) {
            Some(v) => {
                self.scan.advance()?;
                Ok(Some(v))
            }
            None => Ok(None),
        }
    }

    pub(super) fn eat(&mut self, t: Token) -> CResult<bool> {
        Ok(self.take(|c| (*c == t).then_some(()))?.is_some())
    }

    pub(super) fn try_char(&mut self) -> CResult<Option<u8>> {
        self.take(|t| match t {
            Token::Ord(c) => Some(*c),
            _ => None,
        })
    }

    pub(super) fn disjunction(&mut self) -> CResult<()> {
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

    pub(super) fn alternative(&mut self) -> CResult<()> {
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

    pub(super) fn term(&mut self) -> CResult<bool> {
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

    pub(super) fn quantifier(&mut self) -> CResult<bool> {
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

    pub(super) fn need_operand(&mut self) -> CResult<Seq> {
        self.stack.pop().ok_or(CompileError::Invalid)
    }

    pub(super) fn count(digits: &[u8]) -> CResult<i64> {
        digits.iter().try_fold(0i64, |v, d| {
            v.checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(d - b'0')))
                .ok_or(CompileError::Invalid)
        })
    }

    pub(super) fn dup_count(&mut self) -> CResult<Option<i64>> {
        match self.take(|t| match t {
            Token::DupCount(d) => Some(d.clone()),
            _ => None,
        })? {
            Some(d) => Ok(Some(Self::count(&d)?)),
            None => Ok(None),
        }
    }

    /// `{m}`, `{m,}` and `{m,n}`: unrolled into copies of the operand.
    pub(super) fn interval(&mut self) -> CResult<()> {
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
    pub(super) fn clone_seq(&mut self, seq: Seq) -> CResult<Seq> {
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

    pub(super) fn atom(&mut self) -> CResult<bool> {
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

    pub(super) fn bracket(&mut self, neg: bool) -> CResult<[bool; 256]> {
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
    pub(super) fn expression_term(&mut self, last: &mut Last, m: &mut BracketSet) -> CResult<bool> {
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

impl Nfa {
    pub(super) fn compile(re: &[u8]) -> CResult<Nfa> {
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
    pub(super) fn full_match(&self, s: &[u8]) -> Option<Vec<Sub>> {
        Exec::new(self, s, Flags::default()).run(0, true)
    }

    /// `std::regex_search` from `from`.
    pub(super) fn search(&self, s: &[u8], from: usize, flags: Flags) -> Option<Vec<Sub>> {
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
    pub(super) fn find_all(&self, s: &[u8]) -> Vec<(usize, Vec<Sub>)> {
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
