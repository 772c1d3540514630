//! Nix archives (NAR): the canonical, deterministic serialisation of a file
//! system tree that Nix hashes, signs and ships. Byte-identical to Nix 2.8's
//! `nix-store --dump`.
//!
//! The wire format is a sequence of strings, each an unsigned 64-bit
//! little-endian length followed by the bytes and zero padding up to a
//! multiple of eight:
//!
//! ```text
//! nar   = "nix-archive-1" node
//! node  = "(" "type" ( "regular" ["executable" ""] "contents" BYTES
//!                    | "symlink" "target" STR
//!                    | "directory" { "entry" "(" "name" STR "node" node ")" } ) ")"
//! ```
//!
//! Directory entries appear in strictly increasing byte order of their names.
//!
//! - [`writer`]: an event API ([`NarWriter`]) that produces a NAR without a
//!   file system, and [`dump_path`] / [`write_path`] that serialise a tree
//!   from disk.
//! - [`reader`]: a strict streaming pull parser ([`NarReader`]) that hands
//!   file contents out as bounded readers.
//! - [`unpack`]: restores a NAR into a fresh directory without following
//!   symlinks or writing outside it.
//! - [`copy`]: parse and re-serialise in one pass (canonicalising check).

use std::io;
use thiserror::Error;

mod dump;
pub mod reader;
pub mod unpack;
pub mod writer;

pub use dump::{
    dump_path, dump_path_filtered, dump_path_with, write_path, write_path_filtered, DumpError,
    NarDigest,
};
pub use reader::{Event, FileContents, NarReader, ReadError};
pub use unpack::{unpack, UnpackError};
pub use writer::{NarWriter, WriteError};

/// The string every NAR starts with.
pub const MAGIC: &[u8] = b"nix-archive-1";

/// Longest entry name accepted (Linux `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Longest symlink target accepted (Linux `PATH_MAX`).
pub const MAX_TARGET_LEN: usize = 4096;

/// Deepest directory nesting accepted by the reader and the writers.
pub const MAX_DEPTH: usize = 4096;

/// Why a directory entry name is not acceptable in a NAR.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("entry name is empty")]
    Empty,
    #[error("entry name is '.' or '..'")]
    Dot,
    #[error("entry name contains '/'")]
    Slash,
    #[error("entry name contains a NUL byte")]
    Nul,
    #[error("entry name is {0} bytes long (at most {MAX_NAME_LEN} allowed)")]
    TooLong(usize),
}

/// Checks that `name` can be a directory entry: not empty, not `.` or `..`,
/// no `/` or NUL, at most [`MAX_NAME_LEN`] bytes.
pub fn check_name(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() {
        Err(NameError::Empty)
    } else if name == b"." || name == b".." {
        Err(NameError::Dot)
    } else if name.contains(&b'/') {
        Err(NameError::Slash)
    } else if name.contains(&0) {
        Err(NameError::Nul)
    } else if name.len() > MAX_NAME_LEN {
        Err(NameError::TooLong(name.len()))
    } else {
        Ok(())
    }
}

/// Number of zero bytes that follow a string of `len` bytes.
pub(crate) fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// Shows a name or target for an error message (lossy UTF-8, escaped).
pub(crate) fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).escape_debug().to_string()
}

/// Why [`copy`] failed.
#[derive(Debug, Error)]
pub enum CopyError {
    #[error("reading NAR")]
    Read(#[from] ReadError),
    #[error("writing NAR")]
    Write(#[from] WriteError),
}

/// Parses a NAR from `input` and writes it again to `output`, returning
/// `output`. Since the reader is strict and the writer canonical, the output
/// is byte-identical to the input whenever this succeeds.
pub fn copy<R: io::Read, W: io::Write>(input: R, output: W) -> Result<W, CopyError> {
    let mut reader = NarReader::new(input);
    let mut writer = NarWriter::new(output)?;
    while let Some(event) = reader.next()? {
        match event {
            Event::Directory { name } => writer.start_directory(name.as_deref())?,
            Event::EndDirectory => writer.end_directory()?,
            Event::Symlink { name, target } => writer.symlink(name.as_deref(), &target)?,
            Event::File {
                name,
                executable,
                mut contents,
            } => {
                let size = contents.size();
                match writer.file(name.as_deref(), executable, size, &mut contents) {
                    Ok(()) => {}
                    // A failure to read the contents is the input's fault.
                    Err(WriteError::Contents { source, .. }) => {
                        return Err(ReadError::from_contents_error(source, contents.offset()).into())
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(writer.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(check_name(b"a.b"), Ok(()));
        assert_eq!(check_name(b"..."), Ok(()));
        assert_eq!(check_name(b""), Err(NameError::Empty));
        assert_eq!(check_name(b"."), Err(NameError::Dot));
        assert_eq!(check_name(b".."), Err(NameError::Dot));
        assert_eq!(check_name(b"a/b"), Err(NameError::Slash));
        assert_eq!(check_name(b"a\0"), Err(NameError::Nul));
        assert_eq!(check_name(&[b'x'; 256]), Err(NameError::TooLong(256)));
        assert_eq!(check_name(&[b'x'; 255]), Ok(()));
    }

    #[test]
    fn pads() {
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 7);
        assert_eq!(padding(8), 0);
        assert_eq!(padding(13), 3);
    }
}

#[cfg(test)]
mod round_trip {
    //! Arbitrary trees → NAR → parse → identical bytes, and through disk.
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Tree {
        File(bool, Vec<u8>),
        Symlink(Vec<u8>),
        Dir(BTreeMap<Vec<u8>, Tree>),
    }

    fn name() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
            1..6,
        )
        .prop_filter("not . or ..", |n| n != b"." && n != b"..")
    }

    fn tree() -> impl Strategy<Value = Tree> {
        let leaf = prop_oneof![
            (
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(x, c)| Tree::File(x, c)),
            proptest::collection::vec(1u8..=255, 1..40).prop_map(Tree::Symlink),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            proptest::collection::btree_map(name(), inner, 0..6).prop_map(Tree::Dir)
        })
    }

    fn emit<W: io::Write>(
        w: &mut NarWriter<W>,
        name: Option<&[u8]>,
        t: &Tree,
    ) -> Result<(), WriteError> {
        match t {
            Tree::File(x, c) => w.file(name, *x, c.len() as u64, &mut &c[..]),
            Tree::Symlink(target) => w.symlink(name, target),
            Tree::Dir(entries) => {
                w.start_directory(name)?;
                for (n, child) in entries {
                    emit(w, Some(n), child)?;
                }
                w.end_directory()
            }
        }
    }

    /// A reader that hands out at most `n` bytes per call.
    struct Trickle<'a>(&'a [u8], usize);
    impl io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn tree_nar_parse_write(t in tree(), chunk in 1usize..20) {
            let mut w = NarWriter::new(Vec::new()).unwrap();
            emit(&mut w, None, &t).unwrap();
            let nar = w.finish().unwrap();
            prop_assert_eq!(&copy(&nar[..], Vec::new()).unwrap(), &nar);
            prop_assert_eq!(&copy(Trickle(&nar, chunk), Vec::new()).unwrap(), &nar);

            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out");
            unpack(Trickle(&nar, chunk * 7), &out).unwrap();
            let (again, digest) = dump_path(&out, Vec::new()).unwrap();
            prop_assert_eq!(&again, &nar);
            prop_assert_eq!(digest.size, nar.len() as u64);
        }

        #[test]
        fn every_truncation_is_refused(t in tree()) {
            let mut w = NarWriter::new(Vec::new()).unwrap();
            emit(&mut w, None, &t).unwrap();
            let nar = w.finish().unwrap();
            for cut in (0..nar.len()).step_by(7) {
                prop_assert!(copy(&nar[..cut], io::sink()).is_err());
            }
        }
    }
}
