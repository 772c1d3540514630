//! [`NarWriter`]: produce a NAR from a sequence of node events, without a
//! file system. The writer enforces the archive's structure: one root node,
//! valid and strictly sorted entry names, exact file sizes.

use std::io::{self, BufWriter, Read, Write};
use thiserror::Error;

use super::{check_name, padding, show, NameError, MAGIC, MAX_DEPTH, MAX_TARGET_LEN};

/// Size of the output buffer; file contents larger than this bypass it.
const OUT_BUF: usize = 64 * 1024;
/// Size of the buffer file contents are copied through.
const COPY_BUF: usize = 256 * 1024;

/// Why a NAR could not be written.
#[derive(Debug, Error)]
pub enum WriteError {
    #[error("writing NAR output")]
    Io(#[from] io::Error),
    #[error("invalid entry name '{name}' in directory '{dir}': {reason}")]
    Name {
        dir: String,
        name: String,
        reason: NameError,
    },
    #[error("entry '{name}' in directory '{dir}' does not sort after the previous entry '{prev}'")]
    Unsorted {
        dir: String,
        name: String,
        prev: String,
    },
    #[error("invalid symlink target for '{path}': {reason}")]
    Target { path: String, reason: &'static str },
    #[error("file '{path}' was declared as {expected} bytes but its contents ended after {got}")]
    ShortContents {
        path: String,
        expected: u64,
        got: u64,
    },
    #[error("reading the contents of '{path}'")]
    Contents {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("directories nested deeper than {MAX_DEPTH} levels at '{path}'")]
    TooDeep { path: String },
    #[error("NAR writer misuse: {0}")]
    Misuse(&'static str),
}

/// One open directory: its name (empty for the root) and the last entry
/// written in it.
struct Frame {
    name: Vec<u8>,
    last: Option<Vec<u8>>,
}

/// Writes a NAR as a stream of events.
///
/// Call [`start_directory`](Self::start_directory), [`symlink`](Self::symlink)
/// or [`file`](Self::file) once with `name: None` for the root node; inside a
/// directory every node needs a name, in strictly increasing byte order, and
/// each directory is closed by [`end_directory`](Self::end_directory).
/// [`finish`](Self::finish) checks the archive is complete and returns the
/// output.
///
/// ```
/// use kiln_nix::nar::NarWriter;
/// let mut w = NarWriter::new(Vec::new()).unwrap();
/// w.start_directory(None).unwrap();
/// w.file(Some(b"hello"), false, 3, &mut &b"hi\n"[..]).unwrap();
/// w.symlink(Some(b"link"), b"hello").unwrap();
/// w.end_directory().unwrap();
/// let nar = w.finish().unwrap();
/// assert_eq!(&nar[8..21], b"nix-archive-1");
/// ```
pub struct NarWriter<W: Write> {
    out: BufWriter<W>,
    stack: Vec<Frame>,
    root_started: bool,
    buf: Vec<u8>,
}

impl<W: Write> NarWriter<W> {
    /// Starts a NAR on `out`, writing the magic string.
    pub fn new(out: W) -> Result<Self, WriteError> {
        let mut w = NarWriter {
            out: BufWriter::with_capacity(OUT_BUF, out),
            stack: Vec::new(),
            root_started: false,
            buf: Vec::new(),
        };
        w.token(MAGIC)?;
        Ok(w)
    }

    /// Opens a directory node; its entries follow until
    /// [`end_directory`](Self::end_directory).
    pub fn start_directory(&mut self, name: Option<&[u8]>) -> Result<(), WriteError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(WriteError::TooDeep {
                path: self.path_of(name),
            });
        }
        self.begin_node(name)?;
        self.tokens(&[b"type", b"directory"])?;
        self.stack.push(Frame {
            name: name.unwrap_or_default().to_vec(),
            last: None,
        });
        Ok(())
    }

    /// Closes the innermost open directory.
    pub fn end_directory(&mut self) -> Result<(), WriteError> {
        if self.stack.pop().is_none() {
            return Err(WriteError::Misuse(
                "end_directory without an open directory",
            ));
        }
        self.end_node()
    }

    /// Writes a symlink node pointing at `target`.
    pub fn symlink(&mut self, name: Option<&[u8]>, target: &[u8]) -> Result<(), WriteError> {
        let reason = if target.is_empty() {
            Some("target is empty")
        } else if target.len() > MAX_TARGET_LEN {
            Some("target is longer than 4096 bytes")
        } else if target.contains(&0) {
            Some("target contains a NUL byte")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(WriteError::Target {
                path: self.path_of(name),
                reason,
            });
        }
        self.begin_node(name)?;
        self.tokens(&[b"type", b"symlink", b"target", target])?;
        self.end_node()
    }

    /// Writes a regular file of exactly `size` bytes read from `contents`
    /// (which is not read beyond `size` bytes). The contents are streamed.
    pub fn file(
        &mut self,
        name: Option<&[u8]>,
        executable: bool,
        size: u64,
        contents: &mut dyn Read,
    ) -> Result<(), WriteError> {
        self.begin_node(name)?;
        self.tokens(&[b"type", b"regular"])?;
        if executable {
            self.tokens(&[b"executable", b""])?;
        }
        self.token(b"contents")?;
        self.out.write_all(&size.to_le_bytes())?;
        if self.buf.is_empty() {
            self.buf = vec![0; COPY_BUF];
        }
        let mut done = 0u64;
        while done < size {
            let want = (size - done).min(self.buf.len() as u64) as usize;
            let n = match contents.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(WriteError::ShortContents {
                        path: self.path_of(name),
                        expected: size,
                        got: done,
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(WriteError::Contents {
                        path: self.path_of(name),
                        source,
                    })
                }
            };
            self.out.write_all(&self.buf[..n])?;
            done += n as u64;
        }
        self.out.write_all(&[0; 8][..padding(size)])?;
        self.end_node()
    }

    /// Checks that the root node is complete, flushes and returns the output.
    pub fn finish(self) -> Result<W, WriteError> {
        if !self.root_started || !self.stack.is_empty() {
            return Err(WriteError::Misuse(
                "finish before the root node is complete",
            ));
        }
        self.out
            .into_inner()
            .map_err(|e| WriteError::Io(e.into_error()))
    }

    /// Writes what precedes a node: the entry header inside a directory.
    fn begin_node(&mut self, name: Option<&[u8]>) -> Result<(), WriteError> {
        match (self.stack.last_mut(), name) {
            (None, None) if !self.root_started => {
                self.root_started = true;
                self.token(b"(")
            }
            (None, None) => Err(WriteError::Misuse("a NAR has exactly one root node")),
            (None, Some(_)) if !self.root_started => {
                Err(WriteError::Misuse("the root node has no name"))
            }
            (None, Some(_)) => Err(WriteError::Misuse("entry outside of any directory")),
            (Some(_), None) => Err(WriteError::Misuse("a directory entry needs a name")),
            (Some(frame), Some(name)) => {
                if let Err(reason) = check_name(name) {
                    return Err(WriteError::Name {
                        dir: self.dir_path(),
                        name: show(name),
                        reason,
                    });
                }
                if let Some(prev) = &frame.last {
                    if name <= prev.as_slice() {
                        return Err(WriteError::Unsorted {
                            name: show(name),
                            prev: show(prev),
                            dir: self.dir_path(),
                        });
                    }
                }
                frame.last = Some(name.to_vec());
                self.tokens(&[b"entry", b"(", b"name", name, b"node", b"("])
            }
        }
    }

    /// Writes what follows a node: its `)`, and the entry's `)` inside a
    /// directory.
    fn end_node(&mut self) -> Result<(), WriteError> {
        self.token(b")")?;
        if !self.stack.is_empty() {
            self.token(b")")?;
        }
        Ok(())
    }

    fn token(&mut self, s: &[u8]) -> Result<(), WriteError> {
        self.out.write_all(&(s.len() as u64).to_le_bytes())?;
        self.out.write_all(s)?;
        self.out.write_all(&[0; 8][..padding(s.len() as u64)])?;
        Ok(())
    }

    fn tokens(&mut self, ts: &[&[u8]]) -> Result<(), WriteError> {
        ts.iter().try_for_each(|t| self.token(t))
    }

    /// The path of the innermost open directory, for messages.
    fn dir_path(&self) -> String {
        let parts: Vec<String> = self.stack.iter().skip(1).map(|f| show(&f.name)).collect();
        format!("/{}", parts.join("/"))
    }

    fn path_of(&self, name: Option<&[u8]>) -> String {
        match name {
            None => self.dir_path(),
            Some(n) if self.stack.len() <= 1 => format!("/{}", show(n)),
            Some(n) => format!("{}/{}", self.dir_path(), show(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nar_of(f: impl FnOnce(&mut NarWriter<Vec<u8>>) -> Result<(), WriteError>) -> Vec<u8> {
        let mut w = NarWriter::new(Vec::new()).unwrap();
        f(&mut w).unwrap();
        w.finish().unwrap()
    }

    /// A NAR Nix 2.8 wrote (`../shared/conformance/nar`, or under
    /// `$KILN_SHARED`). Missing, the comparison is skipped, except under
    /// `CI=true`, where that is a failure like any missing prerequisite.
    fn golden(name: &str) -> Option<Vec<u8>> {
        let shared = std::env::var_os("KILN_SHARED")
            .filter(|s| !s.is_empty())
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
            });
        let path = shared.join("conformance/nar").join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("golden NAR {} missing under CI=true: {e}", path.display())
            }
            Err(e) => {
                eprintln!("skipping the comparison with {}: {e}", path.display());
                None
            }
        }
    }

    #[test]
    fn matches_nix_for_single_file_and_symlink() {
        let file = nar_of(|w| w.file(None, false, 6, &mut &b"hello\n"[..]));
        let link = nar_of(|w| w.symlink(None, b"target"));
        let empty = nar_of(|w| {
            w.start_directory(None)?;
            w.end_directory()
        });
        assert_eq!(file.len(), 120);
        assert_eq!(link.len(), 120);
        assert_eq!(empty.len(), 96);
        if let Some(g) = golden("single-file.nar") {
            assert_eq!(file, g);
        }
        if let Some(g) = golden("symlink.nar") {
            assert_eq!(link, g);
        }
        if let Some(g) = golden("emptydir.nar") {
            assert_eq!(empty, g);
        }
    }

    #[test]
    fn refuses_misuse() {
        let mut w = NarWriter::new(Vec::new()).unwrap();
        assert!(matches!(
            w.symlink(Some(b"x"), b"y"),
            Err(WriteError::Misuse(_))
        ));
        w.start_directory(None).unwrap();
        assert!(matches!(w.symlink(None, b"y"), Err(WriteError::Misuse(_))));
        assert!(matches!(
            w.symlink(Some(b".."), b"y"),
            Err(WriteError::Name { .. })
        ));
        assert!(matches!(
            w.symlink(Some(b"b"), b""),
            Err(WriteError::Target { .. })
        ));
        w.symlink(Some(b"b"), b"y").unwrap();
        let e = w.symlink(Some(b"a"), b"y").unwrap_err();
        assert_eq!(
            e.to_string(),
            "entry 'a' in directory '/' does not sort after the previous entry 'b'"
        );
        assert!(matches!(
            w.symlink(Some(b"b"), b"y"),
            Err(WriteError::Unsorted { .. })
        ));
        w.start_directory(Some(b"c")).unwrap();
        let e = w
            .file(Some(b"f"), true, 10, &mut &b"short"[..])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "file '/c/f' was declared as 10 bytes but its contents ended after 5"
        );
    }

    #[test]
    fn refuses_incomplete() {
        let w = NarWriter::new(Vec::new()).unwrap();
        assert!(matches!(w.finish(), Err(WriteError::Misuse(_))));
        let mut w = NarWriter::new(Vec::new()).unwrap();
        w.start_directory(None).unwrap();
        assert!(matches!(w.finish(), Err(WriteError::Misuse(_))));
    }
}
