//! Source files and positions (a source and a byte offset in it).

use std::cell::OnceCell;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::rc::Rc;

/// A position in a source: its index in the evaluator's [`Sources`] and a
/// byte offset into its text. Line and column are worked out from the
/// source only when a position is shown, so that lowering, which records a
/// position for nearly every node, does not pay for it; and a position is
/// 8 bytes, `Option<Pos>` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// Index into [`Sources`], plus one.
    file: NonZeroU32,
    /// Byte offset into the source's text.
    off: u32,
}

impl Pos {
    /// Offset `off` of source `file`.
    pub const fn new(file: u32, off: u32) -> Pos {
        // `file` is an index into a vector; it is never `u32::MAX`.
        match NonZeroU32::new(file.wrapping_add(1)) {
            Some(file) => Pos { file, off },
            None => Pos {
                file: NonZeroU32::MAX,
                off,
            },
        }
    }

    /// The start of the first source: where values made outside any
    /// source (command-line arguments, printing) are said to be.
    pub const START: Pos = Pos::new(0, 0);

    /// Index of the source, into [`Sources`].
    pub fn file(self) -> u32 {
        self.file.get() - 1
    }

    /// Byte offset into the source's text.
    pub fn offset(self) -> u32 {
        self.off
    }
}

/// One parsed source: its name as Nix prints it and its text.
#[derive(Debug)]
pub struct Source {
    /// `/abs/path.nix` or `«string»`.
    pub name: String,
    /// The file, if the source is one (used for relative paths).
    pub path: Option<PathBuf>,
    /// Full text (newlines normalised to `\n`, as parsed).
    pub text: Rc<str>,
    /// Offset of each line's start, made when first needed.
    line_starts: OnceCell<Vec<u32>>,
}

impl Source {
    /// A new source with its line index.
    pub fn new(name: String, path: Option<PathBuf>, text: Rc<str>) -> Self {
        Source {
            name,
            path,
            text,
            line_starts: OnceCell::new(),
        }
    }

    fn line_starts(&self) -> &[u32] {
        self.line_starts.get_or_init(|| {
            let mut starts = vec![0u32];
            for (i, b) in self.text.bytes().enumerate() {
                if b == b'\n' {
                    starts.push(i as u32 + 1);
                }
            }
            starts
        })
    }

    /// 1-based line and column of byte offset `off`.
    pub fn line_col(&self, off: u32) -> (u32, u32) {
        let starts = self.line_starts();
        let line = match starts.binary_search(&off) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = starts[line] as usize;
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
        let starts = self.line_starts();
        let start = *starts.get(i)? as usize;
        let end = starts
            .get(i + 1)
            .map(|e| *e as usize - 1)
            .unwrap_or(self.text.len());
        self.text
            .get(start..end)
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
    }
}

/// The table of every source the evaluator has parsed.
///
/// Indices are handed out by a counter that the parsing thread shares
/// ([`Sources::counter`]): a file lowered ahead of its import gets its
/// index there and is entered here when it is taken. A file lowered ahead
/// but never imported leaves its index unused.
#[derive(Debug, Default)]
pub struct Sources {
    files: Vec<Option<Source>>,
    next: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Sources {
    /// Add a source and return its index.
    pub fn add(&mut self, src: Source) -> u32 {
        let idx = reserve(&self.next);
        self.insert(idx, src);
        idx
    }
    /// Enter `src` at `idx`, an index taken from [`Sources::counter`].
    pub fn insert(&mut self, idx: u32, src: Source) {
        let i = idx as usize;
        if self.files.len() <= i {
            self.files.resize_with(i + 1, || None);
        }
        self.files[i] = Some(src);
    }
    /// The counter that hands out source indices, for the parsing thread.
    pub fn counter(&self) -> std::sync::Arc<std::sync::atomic::AtomicU32> {
        self.next.clone()
    }
    /// The source at `idx`.
    pub fn get(&self, idx: u32) -> Option<&Source> {
        self.files.get(idx as usize)?.as_ref()
    }
    /// The source of `pos` with `pos`'s 1-based line and column in it.
    pub fn locate(&self, pos: Pos) -> Option<(&Source, u32, u32)> {
        let src = self.get(pos.file())?;
        let (line, col) = src.line_col(pos.offset());
        Some((src, line, col))
    }

    /// `FILE:LINE:COL` for `pos`.
    pub fn describe(&self, pos: Pos) -> String {
        match self.locate(pos) {
            Some((f, line, col)) => format!("{}:{line}:{col}", f.name),
            None => "«unknown»:1:1".to_string(),
        }
    }
}

/// The next source index from `counter` (see [`Sources`]).
pub fn reserve(counter: &std::sync::atomic::AtomicU32) -> u32 {
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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

    #[test]
    fn positions_are_small() {
        assert_eq!(std::mem::size_of::<Option<Pos>>(), 8);
        let p = Pos::new(3, 17);
        assert_eq!((p.file(), p.offset()), (3, 17));
        let mut table = Sources::default();
        table.add(Source::new("a".into(), None, "x\ny".into()));
        assert_eq!(table.describe(Pos::new(0, 2)), "a:2:1");
        assert_eq!(table.describe(Pos::new(5, 0)), "«unknown»:1:1");
    }
}
