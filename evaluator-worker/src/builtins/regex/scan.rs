//! Scanning: the tokens of POSIX extended syntax as libstdc++ scans them
//! (what may be escaped, brackets, intervals and their syntax errors).

use super::CompileError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Token {
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
pub(super) enum ScanState {
    Normal,
    InBracket,
    InBrace,
}

/// Characters with a meaning outside brackets; only these may be escaped.
pub(super) const SPECIAL: &[u8] = b".[\\()*+?{|^$";

pub(super) struct Scanner<'a> {
    pub(super) re: &'a [u8],
    pub(super) i: usize,
    pub(super) state: ScanState,
    pub(super) at_bracket_start: bool,
    pub(super) token: Token,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(re: &'a [u8]) -> std::result::Result<Self, CompileError> {
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

    pub(super) fn next_byte(&mut self) -> Option<u8> {
        let c = self.re.get(self.i).copied();
        self.i += usize::from(c.is_some());
        c
    }

    pub(super) fn advance(&mut self) -> std::result::Result<(), CompileError> {
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

    pub(super) fn scan_normal(&mut self) -> std::result::Result<(), CompileError> {
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

    pub(super) fn scan_in_bracket(&mut self) -> std::result::Result<(), CompileError> {
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
    pub(super) fn eat_class(&mut self, k: u8) -> std::result::Result<Vec<u8>, CompileError> {
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

    pub(super) fn scan_in_brace(&mut self) -> std::result::Result<(), CompileError> {
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
