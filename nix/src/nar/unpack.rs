//! Restoring a NAR to disk (`nix-store --restore`), safely.
//!
//! Everything is created relative to an open directory descriptor with
//! `mkdirat`, `symlinkat` and `openat(O_CREAT | O_EXCL | O_NOFOLLOW)`, so no
//! symlink (whether from the archive or planted concurrently) is ever
//! followed and nothing is written outside the target. Entry names were
//! already checked by the strict [`NarReader`] (no `/`, `.`, `..`, NUL,
//! duplicates).
//!
//! **On error** the partial tree is removed: the target itself when this call
//! created it, or everything inside it when it was an existing empty
//! directory. If that removal fails too, [`UnpackError::Cleanup`] says so and
//! names the path left behind.

use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use thiserror::Error;

use super::reader::{Event, FileContents, NarReader, ReadError};

/// How many directory descriptors are kept open at once; deeper ancestors
/// are reopened (without following symlinks) when the walk returns to them.
const HELD_FDS: usize = 64;
/// Buffer file contents are copied through.
const COPY_BUF: usize = 256 * 1024;

/// Why a NAR could not be restored.
#[derive(Debug, Error)]
pub enum UnpackError {
    #[error("invalid NAR")]
    Read(#[from] ReadError),
    #[error("target '{0}' already exists and is not an empty directory")]
    TargetExists(PathBuf),
    #[error("target '{0}' is an existing empty directory but the NAR holds a {1}")]
    RootNotDirectory(PathBuf, &'static str),
    #[error("target '{0}' does not name a new file or directory")]
    InvalidTarget(PathBuf),
    #[error("{action} '{path}'")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{cause} (and removing the partial output at '{path}' failed)")]
    Cleanup {
        cause: Box<UnpackError>,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Restores the NAR read from `input` at `target`, which must not exist (or,
/// if the NAR's root is a directory, may be an existing empty directory).
/// On error nothing is left behind (see the module documentation).
pub fn unpack<R: Read>(input: R, target: &Path) -> Result<(), UnpackError> {
    let (parent, name) = split_target(target)?;
    let parent_fd = open_dir(&parent).map_err(io_err("opening directory", &parent))?;
    let existing = match stat_at(&parent_fd, &name).map_err(io_err("getting status of", target))? {
        None => false,
        Some(mode) if mode & libc::S_IFMT == libc::S_IFDIR && is_empty_dir(target)? => true,
        Some(_) => return Err(UnpackError::TargetExists(target.to_path_buf())),
    };
    let mut u = Unpacker {
        target,
        existing,
        levels: Vec::new(),
        parent_fd,
        root_name: name,
        created_root: false,
        buf: vec![0; COPY_BUF],
    };
    match u.run(input) {
        Ok(()) => Ok(()),
        Err(cause) => match u.clean_up() {
            Ok(()) => Err(cause),
            Err(source) => Err(UnpackError::Cleanup {
                cause: Box::new(cause),
                path: target.to_path_buf(),
                source,
            }),
        },
    }
}

/// One directory being filled: its name and, while held, its descriptor.
struct Level {
    name: CString,
    fd: Option<OwnedFd>,
}

struct Unpacker<'t> {
    target: &'t Path,
    existing: bool,
    levels: Vec<Level>,
    parent_fd: OwnedFd,
    root_name: CString,
    created_root: bool,
    buf: Vec<u8>,
}

impl Unpacker<'_> {
    fn run<R: Read>(&mut self, input: R) -> Result<(), UnpackError> {
        let mut reader = NarReader::new(input);
        while let Some(event) = reader.next()? {
            let root = self.levels.is_empty();
            match event {
                Event::Directory { name } => {
                    let path = self.path_of(name.as_deref());
                    let name = self.cname(name)?;
                    let reuse = root && self.existing;
                    let fd = self.dir_fd()?;
                    // An existing empty target directory is reused as it is.
                    if !reuse {
                        mkdir_at(fd, &name).map_err(io_err("creating directory", &path))?;
                    }
                    let new = open_dir_at(fd, &name).map_err(io_err("opening directory", &path))?;
                    self.created_root |= root;
                    self.push(name, new);
                }
                Event::EndDirectory => {
                    self.levels.pop();
                }
                Event::Symlink { name, target } => {
                    self.check_root_kind("symlink")?;
                    let path = self.path_of(name.as_deref());
                    let name = self.cname(name)?;
                    let target = CString::new(target)
                        .map_err(|_| UnpackError::InvalidTarget(path.clone()))?;
                    let fd = self.dir_fd()?;
                    symlink_at(&target, fd, &name).map_err(io_err("creating symlink", &path))?;
                    self.created_root |= root;
                }
                Event::File {
                    name,
                    executable,
                    contents,
                } => {
                    self.check_root_kind("regular file")?;
                    let path = self.path_of(name.as_deref());
                    let name = self.cname(name)?;
                    let fd = self.dir_fd()?;
                    let file = create_at(fd, &name).map_err(io_err("creating file", &path))?;
                    self.created_root |= root;
                    self.write_file(file, executable, contents, &path)?;
                }
            }
        }
        Ok(())
    }

    fn write_file(
        &mut self,
        mut file: File,
        executable: bool,
        mut contents: FileContents<'_>,
        path: &Path,
    ) -> Result<(), UnpackError> {
        loop {
            let n = match contents.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadError::from_contents_error(e, 0).into()),
            };
            file.write_all(&self.buf[..n])
                .map_err(io_err("writing file", path))?;
        }
        if executable {
            let mode = file
                .metadata()
                .map_err(io_err("getting status of", path))?
                .permissions()
                .mode();
            file.set_permissions(fs::Permissions::from_mode(mode | 0o111))
                .map_err(io_err("making executable", path))?;
        }
        Ok(())
    }

    /// An existing empty target can only receive a directory.
    fn check_root_kind(&self, kind: &'static str) -> Result<(), UnpackError> {
        if self.levels.is_empty() && self.existing {
            return Err(UnpackError::RootNotDirectory(
                self.target.to_path_buf(),
                kind,
            ));
        }
        Ok(())
    }

    fn cname(&self, name: Option<Vec<u8>>) -> Result<CString, UnpackError> {
        match name {
            None => Ok(self.root_name.clone()),
            Some(n) => CString::new(n)
                .map_err(|e| UnpackError::InvalidTarget(self.path_of(Some(&e.into_vec())))),
        }
    }

    fn push(&mut self, name: CString, fd: OwnedFd) {
        self.levels.push(Level { name, fd: Some(fd) });
        let n = self.levels.len();
        if n > HELD_FDS + 1 {
            self.levels[n - 1 - HELD_FDS].fd = None;
        }
    }

    /// The descriptor of the directory new nodes go into, reopening dropped
    /// ones from the nearest held ancestor.
    fn dir_fd(&mut self) -> Result<&OwnedFd, UnpackError> {
        let Some(top) = self.levels.len().checked_sub(1) else {
            return Ok(&self.parent_fd);
        };
        if self.levels[top].fd.is_none() {
            let held = (0..top)
                .rev()
                .find(|&i| self.levels[i].fd.is_some())
                .unwrap_or(0);
            for i in held + 1..=top {
                let path = self.path_at(i);
                let fd = match &self.levels[i - 1].fd {
                    Some(parent) => open_dir_at(parent, &self.levels[i].name),
                    None => Err(io::Error::other("ancestor directory not open")),
                }
                .map_err(io_err("reopening directory", &path))?;
                self.levels[i].fd = Some(fd);
            }
        }
        self.levels[top]
            .fd
            .as_ref()
            .ok_or_else(|| UnpackError::InvalidTarget(self.target.to_path_buf()))
    }

    /// The on-disk path of level `i`, for messages.
    fn path_at(&self, i: usize) -> PathBuf {
        let mut p = self.target.to_path_buf();
        for l in &self.levels[1..=i] {
            p.push(std::ffi::OsStr::from_bytes(l.name.as_bytes()));
        }
        p
    }

    /// The on-disk path of a new node named `name` in the current directory.
    fn path_of(&self, name: Option<&[u8]>) -> PathBuf {
        match (name, self.levels.len()) {
            (None, _) | (_, 0) => self.target.to_path_buf(),
            (Some(n), len) => self.path_at(len - 1).join(std::ffi::OsStr::from_bytes(n)),
        }
    }

    /// Removes whatever this call created.
    fn clean_up(&mut self) -> io::Result<()> {
        self.levels.clear();
        if self.existing {
            for entry in fs::read_dir(self.target)? {
                let p = entry?.path();
                match fs::symlink_metadata(&p)?.is_dir() {
                    true => fs::remove_dir_all(&p)?,
                    false => fs::remove_file(&p)?,
                }
            }
        } else if self.created_root {
            match fs::symlink_metadata(self.target)?.is_dir() {
                true => fs::remove_dir_all(self.target)?,
                false => fs::remove_file(self.target)?,
            }
        }
        Ok(())
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Splits the target into its parent directory and final name.
fn split_target(target: &Path) -> Result<(PathBuf, CString), UnpackError> {
    let bad = || UnpackError::InvalidTarget(target.to_path_buf());
    let Some(Component::Normal(name)) = target.components().next_back() else {
        return Err(bad());
    };
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, CString::new(name.as_bytes()).map_err(|_| bad())?))
}

fn is_empty_dir(path: &Path) -> Result<bool, UnpackError> {
    let mut it = fs::read_dir(path).map_err(io_err("reading directory", path))?;
    Ok(it.next().is_none())
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `c` is NUL-terminated; a non-negative result is a fresh fd we own.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_dir_at(dir: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `dir` is an open fd, `name` is NUL-terminated.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn create_at(dir: &OwnedFd, name: &CStr) -> io::Result<File> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let mode: libc::c_uint = 0o666;
    // SAFETY: `dir` is an open fd, `name` is NUL-terminated.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn mkdir_at(dir: &OwnedFd, name: &CStr) -> io::Result<()> {
    // SAFETY: `dir` is an open fd, `name` is NUL-terminated.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o777) }).map(drop)
}

fn symlink_at(target: &CStr, dir: &OwnedFd, name: &CStr) -> io::Result<()> {
    // SAFETY: `dir` is an open fd, both strings are NUL-terminated.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// The mode of `name` in `dir` (not following a symlink), or `None`.
fn stat_at(dir: &OwnedFd, name: &CStr) -> io::Result<Option<libc::mode_t>> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid fd and string; `st` is written on success.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match cvt(r) {
        // SAFETY: fstatat succeeded, so `st` is initialised.
        Ok(_) => Ok(Some(unsafe { st.assume_init() }.st_mode)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nar::{write_path, NarWriter};
    use std::os::unix::fs::symlink;

    fn sample() -> Vec<u8> {
        let mut w = NarWriter::new(Vec::new()).unwrap();
        w.start_directory(None).unwrap();
        w.symlink(Some(b"escape"), b"../..").unwrap();
        w.file(Some(b"exe"), true, 2, &mut &b"#!"[..]).unwrap();
        w.start_directory(Some(b"sub")).unwrap();
        w.file(Some(b"data"), false, 5, &mut &b"hello"[..]).unwrap();
        w.end_directory().unwrap();
        w.end_directory().unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn restores_and_round_trips() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        let nar = sample();
        unpack(&nar[..], &out).unwrap();
        assert_eq!(fs::read(out.join("sub/data")).unwrap(), b"hello");
        assert_eq!(
            fs::read_link(out.join("escape")).unwrap(),
            Path::new("../..")
        );
        assert_ne!(
            fs::metadata(out.join("exe")).unwrap().permissions().mode() & 0o111,
            0
        );
        assert_eq!(
            fs::metadata(out.join("sub/data"))
                .unwrap()
                .permissions()
                .mode()
                & 0o100,
            0
        );
        assert_eq!(write_path(&out, Vec::new()).unwrap(), nar);
        // An existing empty directory is accepted, a non-empty one is not.
        let empty = t.path().join("empty");
        fs::create_dir(&empty).unwrap();
        unpack(&nar[..], &empty).unwrap();
        assert_eq!(write_path(&empty, Vec::new()).unwrap(), nar);
        assert!(matches!(
            unpack(&nar[..], &out),
            Err(UnpackError::TargetExists(_))
        ));
    }

    #[test]
    fn never_follows_a_symlink_target() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        fs::create_dir(&victim).unwrap();
        let link = t.path().join("link");
        symlink(&victim, &link).unwrap();
        let nar = sample();
        assert!(matches!(
            unpack(&nar[..], &link),
            Err(UnpackError::TargetExists(_))
        ));
        assert_eq!(fs::read_dir(&victim).unwrap().count(), 0);
    }

    #[test]
    fn removes_partial_output_on_error() {
        let t = tempfile::tempdir().unwrap();
        let nar = sample();
        let cut = &nar[..nar.len() - 30];
        let out = t.path().join("out");
        let e = unpack(cut, &out).unwrap_err();
        assert!(
            matches!(e, UnpackError::Read(ReadError::Truncated { .. })),
            "{e}"
        );
        assert!(!out.exists());
        let mut trailing = nar.clone();
        trailing.extend_from_slice(&[0; 8]);
        let empty = t.path().join("empty");
        fs::create_dir(&empty).unwrap();
        assert!(matches!(
            unpack(&trailing[..], &empty),
            Err(UnpackError::Read(ReadError::Trailing { .. }))
        ));
        assert_eq!(fs::read_dir(&empty).unwrap().count(), 0);
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
    }

    #[test]
    fn single_file_root() {
        let t = tempfile::tempdir().unwrap();
        let mut w = NarWriter::new(Vec::new()).unwrap();
        w.file(None, false, 3, &mut &b"abc"[..]).unwrap();
        let nar = w.finish().unwrap();
        let out = t.path().join("f");
        unpack(&nar[..], &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"abc");
        let dir = t.path().join("d");
        fs::create_dir(&dir).unwrap();
        assert!(matches!(
            unpack(&nar[..], &dir),
            Err(UnpackError::RootNotDirectory(..))
        ));
        assert!(matches!(
            unpack(&nar[..], Path::new("/")),
            Err(UnpackError::InvalidTarget(_))
        ));
    }

    #[test]
    fn deep_trees_reopen_directories() {
        let depth = HELD_FDS * 3;
        let mut w = NarWriter::new(Vec::new()).unwrap();
        w.start_directory(None).unwrap();
        for _ in 0..depth {
            w.start_directory(Some(b"d")).unwrap();
        }
        for _ in 0..depth {
            w.end_directory().unwrap();
            w.file(Some(b"z"), false, 1, &mut &b"z"[..]).unwrap();
        }
        w.end_directory().unwrap();
        let nar = w.finish().unwrap();
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("deep");
        unpack(&nar[..], &out).unwrap();
        assert_eq!(write_path(&out, Vec::new()).unwrap(), nar);
    }
}
