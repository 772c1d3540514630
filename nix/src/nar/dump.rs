//! Serialising a file system tree from disk, like `nix-store --dump`.
//!
//! The walk is iterative (deep trees cannot overflow the stack), entries are
//! sorted by the bytes of their names, files are opened with `O_NOFOLLOW` and
//! streamed, and anything that is not a regular file, directory or symlink
//! is refused with an error naming it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

use super::writer::{NarWriter, WriteError};
use super::MAX_DEPTH;
use crate::hash::{Hash, HashAlgo, HashingWriter};

/// Why a path could not be serialised.
#[derive(Debug, Error)]
pub enum DumpError {
    #[error("{action} '{path}'")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("'{path}' is a {kind}, which a NAR cannot hold")]
    UnsupportedType { path: PathBuf, kind: &'static str },
    #[error("file '{path}' changed while it was being serialised")]
    Changed { path: PathBuf },
    #[error("serialising '{path}'")]
    Write {
        path: PathBuf,
        #[source]
        source: WriteError,
    },
}

/// The hash and size of a NAR serialisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarDigest {
    /// Hash of the NAR bytes.
    pub hash: Hash,
    /// Number of NAR bytes.
    pub size: u64,
}

/// Serialises `path` (not following a symlink at `path` itself) as a NAR to
/// `out`, returning `out`.
pub fn write_path<W: Write>(path: &Path, out: W) -> Result<W, DumpError> {
    write_path_filtered(path, out, &mut |_, _| true)
}

/// Like [`write_path`], but every entry below `path` is first shown to
/// `filter` (its full path and file type, not following symlinks) and left
/// out, with everything under it, when the filter returns false. The root
/// itself is always included. This is what `builtins.path { filter = …; }`
/// and `builtins.filterSource` hash and copy.
pub fn write_path_filtered<W: Write>(
    path: &Path,
    out: W,
    filter: &mut dyn FnMut(&Path, fs::FileType) -> bool,
) -> Result<W, DumpError> {
    let mut w = NarWriter::new(out).map_err(|source| write_err(path, source))?;
    walk(path, &mut w, filter)?;
    w.finish().map_err(|source| write_err(path, source))
}

/// [`write_path_filtered`] returning the NAR's hash (with `algo`) and size
/// along with `out`.
pub fn dump_path_filtered<W: Write>(
    path: &Path,
    out: W,
    algo: HashAlgo,
    filter: &mut dyn FnMut(&Path, fs::FileType) -> bool,
) -> Result<(W, NarDigest), DumpError> {
    let hw = write_path_filtered(path, HashingWriter::new(out, algo), filter)?;
    let (out, hash, size) = hw.finish();
    Ok((out, NarDigest { hash, size }))
}

/// Serialises `path` to `out` and returns `out` with the NAR's sha256 and
/// size, computed in the same pass. Use [`std::io::sink`] to only hash.
pub fn dump_path<W: Write>(path: &Path, out: W) -> Result<(W, NarDigest), DumpError> {
    dump_path_with(path, out, HashAlgo::Sha256)
}

/// Like [`dump_path`] with any hash algorithm.
pub fn dump_path_with<W: Write>(
    path: &Path,
    out: W,
    algo: HashAlgo,
) -> Result<(W, NarDigest), DumpError> {
    let hw = write_path(path, HashingWriter::new(out, algo))?;
    let (out, hash, size) = hw.finish();
    Ok((out, NarDigest { hash, size }))
}

fn write_err(path: &Path, source: WriteError) -> DumpError {
    DumpError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DumpError + 'a {
    move |source| DumpError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Work left to do in the iterative walk.
enum Step {
    /// Serialise the node at `path`, named `name` in its parent.
    Node {
        path: PathBuf,
        name: Option<Vec<u8>>,
        depth: usize,
    },
    /// Close the directory opened earlier.
    Leave,
}

fn walk<W: Write>(
    root: &Path,
    w: &mut NarWriter<W>,
    filter: &mut dyn FnMut(&Path, fs::FileType) -> bool,
) -> Result<(), DumpError> {
    let mut todo = vec![Step::Node {
        path: root.to_path_buf(),
        name: None,
        depth: 0,
    }];
    while let Some(step) = todo.pop() {
        let (path, name, depth) = match step {
            Step::Leave => {
                w.end_directory().map_err(|e| write_err(root, e))?;
                continue;
            }
            Step::Node { path, name, depth } => (path, name, depth),
        };
        let name = name.as_deref();
        let meta = fs::symlink_metadata(&path).map_err(io_err("getting status of", &path))?;
        let ft = meta.file_type();
        if depth > 0 && !filter(&path, ft) {
            continue;
        }
        if ft.is_dir() {
            if depth >= MAX_DEPTH {
                return Err(write_err(
                    &path,
                    WriteError::TooDeep {
                        path: path.display().to_string(),
                    },
                ));
            }
            let mut names = Vec::new();
            for entry in fs::read_dir(&path).map_err(io_err("reading directory", &path))? {
                let entry = entry.map_err(io_err("reading directory", &path))?;
                names.push(entry.file_name().into_vec());
            }
            names.sort_unstable();
            w.start_directory(name).map_err(|e| write_err(&path, e))?;
            todo.push(Step::Leave);
            for n in names.into_iter().rev() {
                let child = path.join(std::ffi::OsStr::from_bytes(&n));
                todo.push(Step::Node {
                    path: child,
                    name: Some(n),
                    depth: depth + 1,
                });
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err("reading symlink", &path))?;
            w.symlink(name, target.as_os_str().as_bytes())
                .map_err(|e| write_err(&path, e))?;
        } else if ft.is_file() {
            dump_file(&path, name, w)?;
        } else {
            return Err(DumpError::UnsupportedType {
                path,
                kind: kind_of(ft),
            });
        }
    }
    Ok(())
}

/// Streams one regular file, trusting only what `fstat` says about the file
/// actually opened (it may have been replaced since `lstat`).
fn dump_file<W: Write>(
    path: &Path,
    name: Option<&[u8]>,
    w: &mut NarWriter<W>,
) -> Result<(), DumpError> {
    let mut file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err("opening file", path))?;
    let meta = file.metadata().map_err(io_err("getting status of", path))?;
    if !meta.file_type().is_file() {
        return Err(DumpError::Changed {
            path: path.to_path_buf(),
        });
    }
    let executable = meta.permissions().mode() & 0o100 != 0;
    match w.file(name, executable, meta.len(), &mut file) {
        Ok(()) => Ok(()),
        Err(WriteError::Contents { source, .. }) => Err(io_err("reading file", path)(source)),
        Err(WriteError::ShortContents { .. }) => Err(DumpError::Changed {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(write_err(path, e)),
    }
}

fn kind_of(ft: fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "file of unknown type"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn dumps_a_tree_in_byte_order() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("sub/empty")).unwrap();
        fs::write(root.join("b"), b"bee").unwrap();
        fs::write(root.join("B"), b"big bee").unwrap();
        fs::write(root.join("sub/run"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("sub/run"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("../b", root.join("sub/link")).unwrap();

        let mut expect = NarWriter::new(Vec::new()).unwrap();
        expect.start_directory(None).unwrap();
        expect
            .file(Some(b"B"), false, 7, &mut &b"big bee"[..])
            .unwrap();
        expect.file(Some(b"b"), false, 3, &mut &b"bee"[..]).unwrap();
        expect.start_directory(Some(b"sub")).unwrap();
        expect.start_directory(Some(b"empty")).unwrap();
        expect.end_directory().unwrap();
        expect.symlink(Some(b"link"), b"../b").unwrap();
        expect
            .file(Some(b"run"), true, 10, &mut &b"#!/bin/sh\n"[..])
            .unwrap();
        expect.end_directory().unwrap();
        expect.end_directory().unwrap();
        let expect = expect.finish().unwrap();

        let (nar, digest) = dump_path(&root, Vec::new()).unwrap();
        assert_eq!(nar, expect);
        assert_eq!(digest.size, expect.len() as u64);
        assert_eq!(digest.hash, Hash::of(HashAlgo::Sha256, &expect));
        assert_eq!(write_path(&root, Vec::new()).unwrap(), expect);
    }

    #[test]
    fn filtered_dump_leaves_out_rejected_subtrees() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("keep/drop.log")).unwrap();
        fs::create_dir_all(root.join("gone")).unwrap();
        fs::write(root.join("keep/a"), b"a").unwrap();
        fs::write(root.join("gone/b"), b"b").unwrap();
        fs::write(root.join("x.log"), b"x").unwrap();

        let mut expect = NarWriter::new(Vec::new()).unwrap();
        expect.start_directory(None).unwrap();
        expect.start_directory(Some(b"keep")).unwrap();
        expect.file(Some(b"a"), false, 1, &mut &b"a"[..]).unwrap();
        expect.end_directory().unwrap();
        expect.end_directory().unwrap();
        let expect = expect.finish().unwrap();

        let mut seen = Vec::new();
        let mut filter = |p: &Path, ft: fs::FileType| {
            seen.push((p.strip_prefix(&root).unwrap().to_path_buf(), ft.is_dir()));
            !(p.ends_with("gone") || p.to_string_lossy().ends_with(".log"))
        };
        let (nar, digest) =
            dump_path_filtered(&root, Vec::new(), HashAlgo::Sha256, &mut filter).unwrap();
        assert_eq!(nar, expect);
        assert_eq!(digest.hash, Hash::of(HashAlgo::Sha256, &expect));
        // The root is never shown to the filter, nor anything under a
        // rejected directory.
        seen.sort();
        let want: Vec<(PathBuf, bool)> = vec![
            ("gone".into(), true),
            ("keep".into(), true),
            ("keep/a".into(), false),
            ("keep/drop.log".into(), true),
            ("x.log".into(), false),
        ];
        assert_eq!(seen, want);
        // Accepting everything is the unfiltered dump.
        let all = write_path_filtered(&root, Vec::new(), &mut |_, _| true).unwrap();
        assert_eq!(all, write_path(&root, Vec::new()).unwrap());
    }

    #[test]
    fn refuses_fifo_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = dump_path(t.path(), io::sink()).unwrap_err();
        assert!(matches!(
            err,
            DumpError::UnsupportedType { kind: "FIFO", .. }
        ));
        assert!(err.to_string().contains("pipe"), "{err}");
    }

    #[test]
    fn missing_path_is_named() {
        let err = write_path(Path::new("/nonexistent/kiln-nar"), io::sink()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/kiln-nar"), "{err}");
    }
}
