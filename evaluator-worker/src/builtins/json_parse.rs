//! `builtins.fromJSON`'s parser. Nix 2.8 parses JSON with an event (SAX)
//! parser that has no nesting limit; serde_json stops at 128 levels, so
//! Kiln parses with an explicit stack of its own: any depth, no recursion.

use crate::value::*;
use std::rc::Rc;

/// A container being filled.
enum Open {
    List(Vec<Value>),
    /// Entries so far, and the key whose value comes next.
    Object(Vec<Attr>, Option<String>),
}

/// Parses `text` as one JSON value. Errors say what was wrong and at which
/// byte offset.
pub fn parse(text: &str) -> Result<Value, String> {
    let mut p = Parser {
        b: text.as_bytes(),
        i: 0,
    };
    let mut stack: Vec<Open> = Vec::new();
    loop {
        p.ws();
        // A value starts here (or a container closes right away).
        let mut v = match p.peek() {
            Some(b'[') => {
                p.i += 1;
                p.ws();
                if p.peek() == Some(b']') {
                    p.i += 1;
                    Value::list(Vec::new())
                } else {
                    stack.push(Open::List(Vec::new()));
                    continue;
                }
            }
            Some(b'{') => {
                p.i += 1;
                p.ws();
                if p.peek() == Some(b'}') {
                    p.i += 1;
                    Value::Attrs(Rc::new(Attrs::new()))
                } else {
                    let key = p.key()?;
                    stack.push(Open::Object(Vec::new(), Some(key)));
                    continue;
                }
            }
            _ => p.scalar()?,
        };
        // Put the value into its container; close containers that end.
        loop {
            let Some(top) = stack.last_mut() else {
                p.ws();
                if p.i < p.b.len() {
                    return Err(p.err("unexpected text after the value"));
                }
                return Ok(v);
            };
            match top {
                Open::List(items) => items.push(v),
                Open::Object(entries, key) => entries.push(Attr {
                    name: key.take().unwrap_or_default().as_str().into(),
                    value: v,
                    pos: None,
                }),
            }
            p.ws();
            match (p.peek(), &*top) {
                (Some(b','), Open::List(_)) => {
                    p.i += 1;
                    break;
                }
                (Some(b','), Open::Object(..)) => {
                    p.i += 1;
                    p.ws();
                    let k = p.key()?;
                    if let Some(Open::Object(_, key)) = stack.last_mut() {
                        *key = Some(k);
                    }
                    break;
                }
                (Some(b']'), Open::List(_)) | (Some(b'}'), Open::Object(..)) => {
                    p.i += 1;
                    v = match stack.pop() {
                        Some(Open::List(items)) => Value::list(items),
                        Some(Open::Object(mut entries, _)) => {
                            // A repeated key: the last one counts.
                            entries.reverse();
                            Value::Attrs(Rc::new(Attrs::from_unsorted(entries)))
                        }
                        None => unreachable!("a container is open"),
                    };
                }
                _ => return Err(p.err("expected ',' or the end of the list or object")),
            }
        }
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn err(&self, what: &str) -> String {
        match self.peek() {
            Some(c) if c.is_ascii_graphic() => {
                format!("{what} at offset {} (at '{}')", self.i, c as char)
            }
            Some(_) => format!("{what} at offset {}", self.i),
            None => format!("{what} at the end of the text"),
        }
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// `"key" :`
    fn key(&mut self) -> Result<String, String> {
        if self.peek() != Some(b'"') {
            return Err(self.err("expected a string as an object key"));
        }
        let k = self.string()?;
        self.ws();
        if self.peek() != Some(b':') {
            return Err(self.err("expected ':' after an object key"));
        }
        self.i += 1;
        Ok(k)
    }

    fn literal(&mut self, word: &str, v: Value) -> Result<Value, String> {
        if self.b[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn scalar(&mut self) -> Result<Value, String> {
        match self.peek() {
            Some(b'"') => Ok(Value::string(self.string()?)),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.err("expected a value")),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let int_start = self.i;
        let n = self.digits();
        if n == 0 || (n > 1 && self.b[int_start] == b'0') {
            return Err(self.err("invalid number"));
        }
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number: digits expected after '.'"));
            }
            float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number: digits expected in the exponent"));
            }
            float = true;
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).unwrap_or("0");
        if !float {
            if let Ok(i) = text.parse::<i64>() {
                return Ok(Value::Int(i));
            }
            if text.parse::<u64>().is_ok() {
                return Err(format!("unsigned json number too large at offset {start}"));
            }
        }
        text.parse::<f64>()
            .map(Value::Float)
            .map_err(|_| format!("invalid number at offset {start}"))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .b
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| self.err("invalid \\u escape"))?;
        self.i += 4;
        Ok(h)
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1; // the opening quote
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err("unterminated string"));
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(self.err("unterminated string"));
                    };
                    self.i += 1;
                    match e {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp) {
                                if !self.b[self.i..].starts_with(b"\\u") {
                                    return Err(self.err("unpaired surrogate in \\u escape"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("invalid surrogate pair"));
                                }
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                            }
                            let ch =
                                char::from_u32(cp).ok_or_else(|| self.err("invalid \\u escape"))?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(self.err("invalid escape in string")),
                    }
                }
                0..=0x1f => return Err(self.err("control character in string")),
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("invalid UTF-8 in string"))
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use crate::value::Value;

    #[test]
    fn nesting_has_no_limit() {
        let depth = 3_000;
        let text = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let mut v = parse(&text).expect("parses");
        for _ in 0..depth {
            v = match v {
                Value::List(l) => l[0].clone(),
                other => panic!("expected a list, got {other:?}"),
            };
        }
        assert!(matches!(v, Value::Int(1)));
        let obj = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        assert!(parse(&obj).is_ok());
    }

    #[test]
    fn scalars_and_errors() {
        assert!(matches!(parse(" 12 "), Ok(Value::Int(12))));
        assert!(matches!(parse("-1.5e1"), Ok(Value::Float(f)) if f == -15.0));
        assert!(matches!(parse("\"a\\u00e9\\ud83d\\ude00\""), Ok(Value::Str(s)) if s.s == "aé😀"));
        for bad in [
            "",
            "[1,]",
            "{\"a\" 1}",
            "01",
            "[1 2]",
            "\"a",
            "tru",
            "1 2",
            "{1:2}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn last_repeated_key_counts() {
        let Ok(Value::Attrs(a)) = parse("{\"a\": 1, \"b\": 2, \"a\": 3}") else {
            panic!("not a set")
        };
        assert_eq!(a.len(), 2);
        assert!(matches!(a.get("a"), Some(Value::Int(3))));
    }
}
