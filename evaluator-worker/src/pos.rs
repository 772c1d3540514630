//! Source files and positions (file, line, column).

use std::path::PathBuf;
use std::rc::Rc;

/// A position in a source file: index into the evaluator's file table, 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// Index into [`Sources`].
    pub file: u32,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub col: u32,
}

/// One parsed source: its name as Nix prints it and its text.
#[derive(Debug)]
pub struct Source {
    /// `/abs/path.nix` or `«string»`.
    pub name: String,
    /// The file, if the source is one (used for relative paths).
    pub path: Option<PathBuf>,
    /// Full text.
    pub text: Rc<str>,
    line_starts: Vec<u32>,
}

impl Source {
    /// A new source with its line index.
    pub fn new(name: String, path: Option<PathBuf>, text: Rc<str>) -> Self {
        let mut line_starts = vec![0u32];
        for (i, b) in text.bytes().enumerate() {
            if b == b'\n' {
                line_starts.push(i as u32 + 1);
            }
        }
        Source {
            name,
            path,
            text,
            line_starts,
        }
    }

    /// 1-based line and column of byte offset `off`.
    pub fn line_col(&self, off: u32) -> (u32, u32) {
        let line = match self.line_starts.binary_search(&off) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line] as usize;
        let end = (off as usize).min(self.text.len());
        let col = self
            .text
            .get(start..end)
            .map(|s| s.chars().count())
            .unwrap_or(end - start);
        (line as u32 + 1, col as u32 + 1)
    }

    /// The text of 1-based line `line`, without its newline.
    pub fn line_text(&self, line: u32) -> Option<&str> {
        let i = line.checked_sub(1)? as usize;
        let start = *self.line_starts.get(i)? as usize;
        let end = self
            .line_starts
            .get(i + 1)
            .map(|e| *e as usize - 1)
            .unwrap_or(self.text.len());
        self.text
            .get(start..end)
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
    }
}

/// The table of every source the evaluator has parsed.
#[derive(Debug, Default)]
pub struct Sources {
    files: Vec<Source>,
}

impl Sources {
    /// Add a source and return its index.
    pub fn add(&mut self, src: Source) -> u32 {
        self.files.push(src);
        self.files.len() as u32 - 1
    }
    /// The source at `idx`.
    pub fn get(&self, idx: u32) -> Option<&Source> {
        self.files.get(idx as usize)
    }
    /// `FILE:LINE:COL` for `pos`.
    pub fn describe(&self, pos: Pos) -> String {
        match self.get(pos.file) {
            Some(f) => format!("{}:{}:{}", f.name, pos.line, pos.col),
            None => format!("«unknown»:{}:{}", pos.line, pos.col),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col() {
        let s = Source::new("x".into(), None, "ab\ncd\n\ne".into());
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(4), (2, 2));
        assert_eq!(s.line_col(7), (4, 1));
        assert_eq!(s.line_text(2), Some("cd"));
        assert_eq!(s.line_text(3), Some(""));
    }
}
