//! Canonicalising a build output as Nix does before it enters the store:
//! permissions become 0444 or 0555 (so setuid, setgid and sticky bits go),
//! modification times become 1, extended attributes are removed, and file
//! types a NAR cannot hold (FIFOs, sockets, devices) are refused. Every
//! entry is given to the builder process's own user and group (root when it
//! runs as root), so nothing a build leaves stays owned by its build user.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors while canonicalising.
#[derive(Debug, thiserror::Error)]
pub enum CanonicaliseError {
    /// A FIFO, socket or device node in the output (Nix's wording).
    #[error("file '{0}' has an unsupported type")]
    UnsupportedType(PathBuf),
    /// A file system operation failed.
    #[error("cannot canonicalise '{path}': {action}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(io::Error) -> CanonicaliseError + 'a {
    move |source| CanonicaliseError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// The permissions Nix gives an entry with mode `mode`: 0555 when the owner
/// could execute it, else 0444.
pub fn canonical_mode(mode: u32) -> u32 {
    if mode & 0o100 != 0 {
        0o555
    } else {
        0o444
    }
}

fn cpath(p: &Path) -> Result<CString, CanonicaliseError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| CanonicaliseError::Io {
        path: p.to_path_buf(),
        action: "path contains NUL",
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

fn set_mtime_one(p: &Path) -> Result<(), CanonicaliseError> {
    let c = cpath(p)?;
    let t = libc::timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    let times = [t, t];
    if unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } == -1
    {
        return Err(io_err(p, "setting modification time")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn remove_xattrs(p: &Path) -> Result<(), CanonicaliseError> {
    let c = cpath(p)?;
    let mut buf = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        // Not supported, or a list longer than any sane output has.
        if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ERANGE)) {
            return Ok(());
        }
        return Err(io_err(p, "listing extended attributes")(e));
    }
    for name in buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        if name == b"security.selinux" {
            continue;
        }
        let Ok(cn) = CString::new(name) else { continue };
        if unsafe { libc::lremovexattr(c.as_ptr(), cn.as_ptr()) } == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EPERM) {
                return Err(io_err(p, "removing an extended attribute")(e));
            }
        }
    }
    Ok(())
}

/// Gives `p` to the process's effective user and group, as Nix gives
/// outputs to root. Without the right to (an unprivileged builder), the
/// entry is the process's already.
fn set_owner(p: &Path, md: &fs::Metadata) -> Result<(), CanonicaliseError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: plain system calls without arguments.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if md.uid() == uid && md.gid() == gid {
        return Ok(());
    }
    let c = cpath(p)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::lchown(c.as_ptr(), uid, gid) } == -1 {
        return Err(io_err(p, "changing owner")(io::Error::last_os_error()));
    }
    Ok(())
}

/// Canonicalises the tree at `path` in place.
pub fn canonicalise(path: &Path) -> Result<(), CanonicaliseError> {
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).map_err(io_err(&p, "reading metadata"))?;
        let ft = md.file_type();
        if ft.is_fifo() || ft.is_socket() || ft.is_block_device() || ft.is_char_device() {
            return Err(CanonicaliseError::UnsupportedType(p));
        }
        set_owner(&p, &md)?;
        if !ft.is_symlink() {
            remove_xattrs(&p)?;
            let mode = md.permissions().mode() & 0o7777;
            let want = canonical_mode(mode);
            if mode != want {
                fs::set_permissions(&p, fs::Permissions::from_mode(want))
                    .map_err(io_err(&p, "setting permissions"))?;
            }
        }
        if ft.is_dir() {
            for entry in fs::read_dir(&p).map_err(io_err(&p, "reading directory"))? {
                stack.push(entry.map_err(io_err(&p, "reading directory"))?.path());
            }
        }
        // Directories are stamped after their entries were listed; adding
        // or removing nothing below keeps the stamp.
        set_mtime_one(&p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};

    #[test]
    fn modes_and_times_become_canonical() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("out");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("exe"), "x").unwrap();
        fs::set_permissions(root.join("exe"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::write(root.join("plain"), "y").unwrap();
        fs::set_permissions(root.join("plain"), fs::Permissions::from_mode(0o2666)).unwrap();
        symlink("plain", root.join("link")).unwrap();
        canonicalise(&root).unwrap();
        let m = |n: &str| fs::symlink_metadata(root.join(n)).unwrap();
        assert_eq!(m("exe").mode() & 0o7777, 0o555);
        assert_eq!(m("plain").mode() & 0o7777, 0o444);
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o7777, 0o555);
        for n in ["exe", "plain", "link", ""] {
            assert_eq!(m(n).mtime(), 1, "{n}");
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn fifo_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("f");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = canonicalise(t.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("file '{}' has an unsupported type", fifo.display())
        );
    }
}
