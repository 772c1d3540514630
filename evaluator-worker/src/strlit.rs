//! String literal semantics exactly as Nix 2.8's lexer and parser: escapes in
//! `"..."` strings, and the escapes and indentation stripping of `''...''` strings.

/// A part of a string literal before lowering.
#[derive(Debug, Clone, PartialEq)]
pub enum Part<E> {
    /// Literal text; the flag is Nix's `hasIndentation` (false for escapes).
    Lit(String, bool),
    /// `${e}`
    Interp(E),
}

/// Unescape the raw text of a `"..."` string segment (`\n`, `\r`, `\t`,
/// `\x` → `x`; CR and CRLF become LF).
pub fn unescape_normal(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut it = raw.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\\' => match it.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            },
            '\r' => {
                out.push('\n');
                if it.peek() == Some(&'\n') {
                    it.next();
                }
            }
            o => out.push(o),
        }
    }
    out
}

/// Split the raw text of an indented-string segment into Nix's lexer tokens:
/// plain runs (with indentation) and escapes (`''$`, `'''`, `''\x`).
pub fn lex_indented<E>(raw: &str, out: &mut Vec<Part<E>>) {
    let b = raw.as_bytes();
    let mut plain = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\'' && b.get(i + 1) == Some(&b'\'') {
            let esc = match b.get(i + 2) {
                Some(b'$') => {
                    i += 3;
                    "$".to_string()
                }
                Some(b'\'') => {
                    i += 3;
                    "''".to_string()
                }
                Some(b'\\') => {
                    let rest = &raw[i + 3..];
                    let ch = rest.chars().next();
                    match ch {
                        Some(c) => {
                            i += 3 + c.len_utf8();
                            let mut tmp = [0u8; 4];
                            unescape_normal(&format!("\\{}", c.encode_utf8(&mut tmp)))
                        }
                        None => {
                            i += 3;
                            String::new()
                        }
                    }
                }
                _ => {
                    plain.push_str("''");
                    i += 2;
                    continue;
                }
            };
            if !plain.is_empty() {
                out.push(Part::Lit(std::mem::take(&mut plain), true));
            }
            out.push(Part::Lit(esc, false));
            continue;
        }
        let c = raw[i..].chars().next().unwrap_or('\u{fffd}');
        plain.push(c);
        i += c.len_utf8().max(1);
    }
    if !plain.is_empty() {
        out.push(Part::Lit(plain, true));
    }
}

/// Nix's `stripIndentation`: remove the common leading indentation of an
/// indented string and drop a final line made only of spaces.
pub fn strip_indentation<E>(parts: Vec<Part<E>>) -> Vec<Part<E>> {
    let mut at_start = true;
    let mut min_indent = usize::MAX;
    let mut cur = 0usize;
    for p in &parts {
        match p {
            Part::Lit(s, true) => {
                for c in s.bytes() {
                    if at_start {
                        if c == b' ' {
                            cur += 1;
                        } else if c == b'\n' {
                            cur = 0;
                        } else {
                            at_start = false;
                            min_indent = min_indent.min(cur);
                        }
                    } else if c == b'\n' {
                        at_start = true;
                        cur = 0;
                    }
                }
            }
            _ => {
                if at_start {
                    at_start = false;
                    min_indent = min_indent.min(cur);
                }
            }
        }
    }
    let mut out = Vec::with_capacity(parts.len());
    at_start = true;
    let mut dropped = 0usize;
    let n = parts.len();
    for (idx, p) in parts.into_iter().enumerate() {
        match p {
            Part::Interp(e) => {
                at_start = false;
                dropped = 0;
                out.push(Part::Interp(e));
            }
            Part::Lit(s, _) => {
                let mut s2 = String::with_capacity(s.len());
                for c in s.chars() {
                    if at_start {
                        if c == ' ' {
                            if dropped >= min_indent {
                                s2.push(c);
                            }
                            dropped += 1;
                        } else if c == '\n' {
                            dropped = 0;
                            s2.push(c);
                        } else {
                            at_start = false;
                            dropped = 0;
                            s2.push(c);
                        }
                    } else {
                        s2.push(c);
                        if c == '\n' {
                            at_start = true;
                        }
                    }
                }
                if idx + 1 == n {
                    if let Some(p) = s2.rfind('\n') {
                        if s2[p + 1..].bytes().all(|b| b == b' ') {
                            s2.truncate(p + 1);
                        }
                    }
                }
                out.push(Part::Lit(s2, false));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ind(raw: &str) -> String {
        let mut parts: Vec<Part<()>> = Vec::new();
        lex_indented(raw, &mut parts);
        strip_indentation(parts)
            .into_iter()
            .map(|p| match p {
                Part::Lit(s, _) => s,
                Part::Interp(()) => "#".into(),
            })
            .collect()
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape_normal(r"a\nb\$\x\\"), "a\nb$x\\");
        assert_eq!(unescape_normal("a\r\nb\rc"), "a\nb\nc");
    }

    #[test]
    fn indentation() {
        assert_eq!(ind("  foo\n   bar\n  "), "foo\n bar\n");
        assert_eq!(ind("  a''$b'''c''\\nd\n"), "a$b''c\nd\n");
        assert_eq!(ind("\n  x\n\n  y"), "\nx\n\ny");
    }
}
