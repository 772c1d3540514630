//! [`NarReader`]: a strict streaming pull parser for NARs.
//!
//! It accepts exactly what the canonical writer produces and nothing else:
//! right magic, known node types, valid and strictly sorted entry names,
//! zero padding, nothing after the root node. No allocation depends on a
//! declared length beyond the small caps on names ([`MAX_NAME_LEN`]),
//! symlink targets ([`MAX_TARGET_LEN`]) and keywords; file contents are
//! handed out as a bounded reader ([`FileContents`]) and never buffered.
//! Every error says what is wrong and at which byte offset.

use std::io::{self, BufReader, Read};
use thiserror::Error;

use super::{check_name, padding, show, NameError, MAGIC, MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN};

/// Input buffer size; large file reads bypass it.
const IN_BUF: usize = 64 * 1024;
/// Longest keyword string read when a keyword is expected.
const MAX_KEYWORD: usize = 16;

/// Why a NAR was refused. Offsets count bytes from the start of the NAR.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("reading NAR at byte {offset}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("NAR is truncated: stream ends inside {what} at byte {offset}")]
    Truncated { offset: u64, what: &'static str },
    #[error("not a NAR: wrong magic string at byte 0")]
    BadMagic,
    #[error("malformed NAR at byte {offset}: expected {expected}, found {found}")]
    Unexpected {
        offset: u64,
        expected: &'static str,
        found: String,
    },
    #[error("malformed NAR at byte {offset}: unknown node type '{found}'")]
    UnknownType { offset: u64, found: String },
    #[error(
        "malformed NAR at byte {offset}: {what} of {len} bytes is longer than the {max} allowed"
    )]
    TooLong {
        offset: u64,
        what: &'static str,
        len: u64,
        max: usize,
    },
    #[error("malformed NAR at byte {offset}: invalid entry name '{name}' in directory '{dir}': {reason}")]
    Name {
        offset: u64,
        dir: String,
        name: String,
        reason: NameError,
    },
    #[error("malformed NAR at byte {offset}: entry '{name}' in directory '{dir}' does not sort after the previous entry '{prev}' (unsorted or duplicate)")]
    Unsorted {
        offset: u64,
        dir: String,
        name: String,
        prev: String,
    },
    #[error("malformed NAR at byte {offset}: symlink '{path}' has an invalid target: {reason}")]
    Target {
        offset: u64,
        path: String,
        reason: &'static str,
    },
    #[error("malformed NAR at byte {offset}: nonzero padding")]
    Padding { offset: u64 },
    #[error("malformed NAR at byte {offset}: data after the end of the archive")]
    Trailing { offset: u64 },
    #[error("malformed NAR at byte {offset}: directories nested deeper than {MAX_DEPTH} levels")]
    TooDeep { offset: u64 },
    #[error("NAR reader used again after an error")]
    AfterError,
}

impl ReadError {
    /// Recovers the parse error from an error returned by
    /// [`FileContents`]'s `read` (a truncation); any other I/O error becomes
    /// [`ReadError::Io`] at `offset`.
    pub fn from_contents_error(e: io::Error, offset: u64) -> ReadError {
        if e.get_ref().is_some_and(|i| i.is::<ReadError>()) {
            if let Some(Ok(re)) = e.into_inner().map(|i| i.downcast::<ReadError>()) {
                return *re;
            }
            return ReadError::AfterError;
        }
        ReadError::Io { offset, source: e }
    }
}

/// One step of a NAR, in archive order. `name` is `None` for the root node.
#[derive(Debug)]
pub enum Event<'a> {
    /// A directory starts; its entries follow, then [`Event::EndDirectory`].
    Directory { name: Option<Vec<u8>> },
    /// The innermost open directory ends.
    EndDirectory,
    /// A symlink.
    Symlink {
        name: Option<Vec<u8>>,
        target: Vec<u8>,
    },
    /// A regular file; read its contents from `contents` before calling
    /// [`NarReader::next`] again (whatever is left unread is skipped).
    File {
        name: Option<Vec<u8>>,
        executable: bool,
        contents: FileContents<'a>,
    },
}

/// Where the parser is between events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    /// Inside a file's contents (the count is left in `Pos`).
    InFile {
        size: u64,
    },
    /// A node just ended.
    NodeDone,
    /// Inside a directory, before an entry or its end.
    InDir,
    Done,
    Failed,
}

/// Byte accounting shared with [`FileContents`].
#[derive(Debug, Default)]
struct Pos {
    offset: u64,
    file_left: u64,
}

/// One open directory: its name and the last entry name seen in it.
struct Frame {
    name: Vec<u8>,
    last: Option<Vec<u8>>,
}

/// A strict streaming NAR parser: call [`next`](Self::next) until it
/// returns `Ok(None)`, which happens only after the whole input was checked.
///
/// ```
/// use kiln_nix::nar::{Event, NarReader, NarWriter};
/// let mut w = NarWriter::new(Vec::new()).unwrap();
/// w.file(None, true, 2, &mut &b"hi"[..]).unwrap();
/// let nar = w.finish().unwrap();
/// let mut r = NarReader::new(&nar[..]);
/// match r.next().unwrap() {
///     Some(Event::File { executable, mut contents, .. }) => {
///         assert!(executable);
///         let mut s = String::new();
///         std::io::Read::read_to_string(&mut contents, &mut s).unwrap();
///         assert_eq!(s, "hi");
///     }
///     other => panic!("{other:?}"),
/// }
/// assert!(r.next().unwrap().is_none());
/// ```
pub struct NarReader<R: Read> {
    r: BufReader<R>,
    pos: Pos,
    state: State,
    stack: Vec<Frame>,
    pending: Pending,
}

/// The event found by the last step, before it is handed out.
#[derive(Default)]
enum Pending {
    #[default]
    Nothing,
    Directory(Option<Vec<u8>>),
    EndDirectory,
    Symlink(Option<Vec<u8>>, Vec<u8>),
    File(Option<Vec<u8>>, bool, u64),
}

impl<R: Read> NarReader<R> {
    /// Parses the NAR that `input` holds (and nothing after it).
    pub fn new(input: R) -> Self {
        NarReader {
            r: BufReader::with_capacity(IN_BUF, input),
            pos: Pos::default(),
            state: State::Start,
            stack: Vec::new(),
            pending: Pending::Nothing,
        }
    }

    /// Number of bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.pos.offset
    }

    /// The next event, or `None` once the archive ended cleanly at the end
    /// of the input. After an error every call fails.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Event<'_>>, ReadError> {
        if self.state == State::Failed {
            return Err(ReadError::AfterError);
        }
        match self.step() {
            Ok(true) => Ok(Some(self.emit())),
            Ok(false) => Ok(None),
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    /// Advances to the next event; `Ok(false)` at the end. The event itself
    /// is built by [`emit`](Self::emit) from `pending`.
    fn step(&mut self) -> Result<bool, ReadError> {
        loop {
            match self.state {
                State::Start => {
                    let magic = self
                        .string(MAGIC.len(), "magic")
                        .map_err(|_| ReadError::BadMagic)?;
                    if magic != MAGIC {
                        return Err(ReadError::BadMagic);
                    }
                    return self.node(None).map(|()| true);
                }
                State::InFile { size } => {
                    self.skip_contents()?;
                    self.pad(size)?;
                    self.expect(b")", "')' after file contents")?;
                    self.state = State::NodeDone;
                }
                State::NodeDone => {
                    if self.stack.is_empty() {
                        let at = self.pos.offset;
                        let mut b = [0u8; 1];
                        match self.r.read(&mut b) {
                            Ok(0) => {
                                self.state = State::Done;
                                return Ok(false);
                            }
                            Ok(_) => return Err(ReadError::Trailing { offset: at }),
                            Err(source) => return Err(ReadError::Io { offset: at, source }),
                        }
                    }
                    self.expect(b")", "')' closing a directory entry")?;
                    self.state = State::InDir;
                }
                State::InDir => {
                    let at = self.pos.offset;
                    let tok = self.keyword("'entry' or ')'")?;
                    if tok == b")" {
                        self.stack.pop();
                        self.state = State::NodeDone;
                        self.pending = Pending::EndDirectory;
                        return Ok(true);
                    }
                    if tok != b"entry" {
                        return Err(self.unexpected(at, "'entry' or ')'", &tok));
                    }
                    self.expect(b"(", "'(' opening an entry")?;
                    self.expect(b"name", "'name'")?;
                    let at = self.pos.offset;
                    let name = self.string(MAX_NAME_LEN, "entry name")?;
                    if let Err(reason) = check_name(&name) {
                        return Err(ReadError::Name {
                            offset: at,
                            dir: self.dir_path(),
                            name: show(&name),
                            reason,
                        });
                    }
                    if let Some(prev) = self.stack.last().and_then(|f| f.last.as_ref()) {
                        if name <= *prev {
                            return Err(ReadError::Unsorted {
                                offset: at,
                                dir: self.dir_path(),
                                name: show(&name),
                                prev: show(prev),
                            });
                        }
                    }
                    if let Some(frame) = self.stack.last_mut() {
                        frame.last = Some(name.clone());
                    }
                    self.expect(b"node", "'node'")?;
                    return self.node(Some(name)).map(|()| true);
                }
                State::Done => return Ok(false),
                State::Failed => return Err(ReadError::AfterError),
            }
        }
    }
}

impl<R: Read> NarReader<R> {
    /// Turns `pending` into the event handed out.
    fn emit(&mut self) -> Event<'_> {
        match std::mem::take(&mut self.pending) {
            Pending::Directory(name) => Event::Directory { name },
            Pending::EndDirectory | Pending::Nothing => Event::EndDirectory,
            Pending::Symlink(name, target) => Event::Symlink { name, target },
            Pending::File(name, executable, size) => Event::File {
                name,
                executable,
                contents: FileContents {
                    r: &mut self.r,
                    pos: &mut self.pos,
                    size,
                },
            },
        }
    }

    /// Parses a node up to its first event: `(` `type` and the body of a
    /// symlink, the header of a file, or the opening of a directory.
    fn node(&mut self, name: Option<Vec<u8>>) -> Result<(), ReadError> {
        self.expect(b"(", "'(' opening a node")?;
        self.expect(b"type", "'type'")?;
        let at = self.pos.offset;
        let ty = self.keyword("a node type")?;
        match ty.as_slice() {
            b"regular" => {
                let at = self.pos.offset;
                let mut tok = self.keyword("'executable' or 'contents'")?;
                let executable = tok == b"executable";
                if executable {
                    self.expect(b"", "'' after 'executable'")?;
                    tok = self.keyword("'contents'")?;
                }
                if tok != b"contents" {
                    return Err(self.unexpected(at, "'executable' or 'contents'", &tok));
                }
                let size = self.u64("file size")?;
                self.pos.file_left = size;
                self.state = State::InFile { size };
                self.pending = Pending::File(name, executable, size);
            }
            b"symlink" => {
                self.expect(b"target", "'target'")?;
                let at = self.pos.offset;
                let target = self.string(MAX_TARGET_LEN, "symlink target")?;
                let reason = if target.is_empty() {
                    Some("target is empty")
                } else if target.contains(&0) {
                    Some("target contains a NUL byte")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    let path = self.path_of(name.as_deref());
                    return Err(ReadError::Target {
                        offset: at,
                        path,
                        reason,
                    });
                }
                self.expect(b")", "')' closing the symlink node")?;
                self.state = State::NodeDone;
                self.pending = Pending::Symlink(name, target);
            }
            b"directory" => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(ReadError::TooDeep { offset: at });
                }
                self.stack.push(Frame {
                    name: name.clone().unwrap_or_default(),
                    last: None,
                });
                self.state = State::InDir;
                self.pending = Pending::Directory(name);
            }
            _ => {
                return Err(ReadError::UnknownType {
                    offset: at,
                    found: show(&ty),
                })
            }
        }
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), ReadError> {
        let offset = self.pos.offset;
        self.r
            .read_exact(buf)
            .map_err(|source| match source.kind() {
                io::ErrorKind::UnexpectedEof => ReadError::Truncated { offset, what },
                _ => ReadError::Io { offset, source },
            })?;
        self.pos.offset += buf.len() as u64;
        Ok(())
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, ReadError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Checks the zero padding after a string of `len` bytes.
    fn pad(&mut self, len: u64) -> Result<(), ReadError> {
        let mut b = [0u8; 8];
        let n = padding(len);
        let at = self.pos.offset;
        self.read_exact(&mut b[..n], "padding")?;
        if b.iter().any(|&x| x != 0) {
            return Err(ReadError::Padding { offset: at });
        }
        Ok(())
    }

    /// Reads a string of at most `max` bytes (checked before allocating).
    fn string(&mut self, max: usize, what: &'static str) -> Result<Vec<u8>, ReadError> {
        let at = self.pos.offset;
        let len = self.u64(what)?;
        if len > max as u64 {
            return Err(ReadError::TooLong {
                offset: at,
                what,
                len,
                max,
            });
        }
        let mut s = vec![0u8; len as usize];
        self.read_exact(&mut s, what)?;
        self.pad(len)?;
        Ok(s)
    }

    /// Reads a short keyword; a longer string is reported as unexpected.
    fn keyword(&mut self, expected: &'static str) -> Result<Vec<u8>, ReadError> {
        let at = self.pos.offset;
        self.string(MAX_KEYWORD, "keyword").map_err(|e| match e {
            ReadError::TooLong { len, .. } => ReadError::Unexpected {
                offset: at,
                expected,
                found: format!("a string of {len} bytes"),
            },
            e => e,
        })
    }

    fn expect(&mut self, tok: &[u8], expected: &'static str) -> Result<(), ReadError> {
        let at = self.pos.offset;
        let got = self.keyword(expected)?;
        if got != tok {
            return Err(self.unexpected(at, expected, &got));
        }
        Ok(())
    }

    fn unexpected(&self, offset: u64, expected: &'static str, found: &[u8]) -> ReadError {
        ReadError::Unexpected {
            offset,
            expected,
            found: format!("'{}'", show(found)),
        }
    }

    /// Skips what the consumer left unread of the current file.
    fn skip_contents(&mut self) -> Result<(), ReadError> {
        FileContents {
            r: &mut self.r,
            pos: &mut self.pos,
            size: 0,
        }
        .finish()
    }

    fn dir_path(&self) -> String {
        let parts: Vec<String> = self.stack.iter().skip(1).map(|f| show(&f.name)).collect();
        format!("/{}", parts.join("/"))
    }

    fn path_of(&self, name: Option<&[u8]>) -> String {
        match name {
            None => "/".to_string(),
            Some(n) if self.stack.len() <= 1 => format!("/{}", show(n)),
            Some(n) => format!("{}/{}", self.dir_path(), show(n)),
        }
    }
}

/// The contents of one file in a NAR: reads at most the declared size and
/// fails with [`io::ErrorKind::UnexpectedEof`] (wrapping a
/// [`ReadError::Truncated`]) if the stream ends first.
pub struct FileContents<'a> {
    r: &'a mut dyn Read,
    pos: &'a mut Pos,
    size: u64,
}

impl std::fmt::Debug for FileContents<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FileContents {{ size: {}, left: {} }}",
            self.size, self.pos.file_left
        )
    }
}

impl FileContents<'_> {
    /// The declared size of the file.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Offset in the NAR of the next content byte.
    pub fn offset(&self) -> u64 {
        self.pos.offset
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> u64 {
        self.pos.file_left
    }

    /// Skips whatever is left, reporting a truncated stream as a
    /// [`ReadError`].
    pub fn finish(mut self) -> Result<(), ReadError> {
        let mut buf = [0u8; 8192];
        while self.pos.file_left > 0 {
            match self.read(&mut buf) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::from_contents_error(e, self.pos.offset)),
            }
        }
        Ok(())
    }
}

impl Read for FileContents<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.pos.file_left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            let e = ReadError::Truncated {
                offset: self.pos.offset,
                what: "file contents",
            };
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, e));
        }
        self.pos.offset += n as u64;
        self.pos.file_left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
