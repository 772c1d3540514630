//! Execution: the depth-first search of `std::regex_match` and
//! `std::sregex_iterator` over the NFA, on an explicit stack so long inputs
//! cannot overflow the native stack.

use super::compile::{Nfa, Op};

#[derive(Clone, Copy, Default)]
pub(super) struct Flags {
    /// The search does not start at the beginning of the text: `^` fails.
    pub(super) prev_avail: bool,
    /// An empty match is no match.
    pub(super) not_null: bool,
    /// Only a match starting at the search start counts.
    pub(super) continuous: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Sub {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) matched: bool,
}

/// Work left on the explicit stack; the `Restore*` entries undo a change
/// when the search backtracks past it.
pub(super) enum Step {
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

pub(super) struct Exec<'a> {
    pub(super) nfa: &'a Nfa,
    pub(super) s: &'a [u8],
    pub(super) flags: Flags,
    pub(super) begin: usize,
    pub(super) cur: usize,
    pub(super) cur_results: Vec<Sub>,
    pub(super) results: Vec<Sub>,
    /// Per state: where a loop was last entered and how often there.
    pub(super) rep: Vec<(usize, u32)>,
    pub(super) has_sol: bool,
    pub(super) sol_pos: Option<usize>,
}

impl<'a> Exec<'a> {
    pub(super) fn new(nfa: &'a Nfa, s: &'a [u8], flags: Flags) -> Self {
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
    pub(super) fn run(&mut self, begin: usize, exact: bool) -> Option<Vec<Sub>> {
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

    pub(super) fn visit(&mut self, i: usize, exact: bool, stack: &mut Vec<Step>) {
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
