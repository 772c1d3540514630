//! Bracket expressions: the set being built, the character classes of the
//! "C" locale (plus libstdc++'s `d`, `s`, `w`), and POSIX collating names.

/// What the previous element of a bracket expression was.
#[derive(Clone, Copy)]
pub(super) enum Last {
    None,
    Char(u8),
    Class,
}

pub(super) struct BracketSet {
    pub(super) chars: [bool; 256],
    pub(super) ranges: Vec<(i8, i8)>,
    pub(super) classes: Vec<CharClass>,
    pub(super) equiv: Vec<u8>,
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
    pub(super) fn matches(&self, c: u8) -> bool {
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
pub(super) enum CharClass {
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
    pub(super) fn lookup(name: &[u8]) -> Option<CharClass> {
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

    pub(super) fn contains(self, c: u8) -> bool {
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
pub(super) const COLLATING_NAMES: [&str; 128] = [
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

pub(super) fn collating_element(name: &[u8]) -> Option<u8> {
    COLLATING_NAMES
        .iter()
        .position(|n| n.as_bytes() == name)
        .map(|i| i as u8)
}
