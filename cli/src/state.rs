//! The directory holding a `kiln build`'s state (`~/.cache/kiln`, or the
//! one `--state-dir`/`KILN_STATE_DIR` names): the default store, realised
//! paths, work and temporary directories. Runs sharing it hold a shared
//! lock on `<state>/.lock` while they run; a run that finds no other run
//! (the lock is free to take exclusively) first removes the work
//! directories a killed run left behind.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Work directories of a run, relative to the state directory; what is in
/// them belongs to the runs in progress only.
const WORK_DIRS: &[&str] = &[
    "tmp",
    "realised/.scratch",
    "realised/.outputs",
    "realised/.kiln-realise",
];

/// Held while a run uses the state directory.
#[derive(Debug)]
pub(crate) struct StateLock {
    _file: File,
    /// Entries of work directories removed when the lock was taken.
    #[cfg_attr(not(test), allow(dead_code))]
    pub swept: usize,
}

fn flock(f: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: a valid descriptor owned by `f`.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Takes the state directory `home` for a run, removing leftovers of
/// killed runs when no other run is using it.
pub(crate) fn lock(home: &Path) -> Result<StateLock> {
    std::fs::create_dir_all(home).with_context(|| format!("creating '{}'", home.display()))?;
    let path = home.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening '{}'", path.display()))?;
    let mut swept = 0;
    if flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_ok() {
        for dir in WORK_DIRS {
            swept += sweep(&home.join(dir));
        }
    }
    flock(&file, libc::LOCK_SH).with_context(|| format!("locking '{}'", path.display()))?;
    Ok(StateLock { _file: file, swept })
}

/// Removes everything in `dir`; returns how many entries went.
fn sweep(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let p: PathBuf = e.path();
        match kiln_builder::rootfs::remove_tree(&p) {
            Ok(()) => n += 1,
            Err(err) => eprintln!("warning: cannot remove leftover '{}': {err}", p.display()),
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes the state, retrying while it seems held: a process another
    /// test forks meanwhile holds a copy of the lock until it execs.
    fn lock_sweeping(home: &Path) -> StateLock {
        for _ in 0..100 {
            let l = lock(home).unwrap();
            if l.swept == 1 {
                return l;
            }
            drop(l);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("the state was never free to sweep");
    }

    #[test]
    fn leftovers_go_only_when_no_other_run_holds_the_state() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path();
        let stale = home.join("realised/.outputs/some-build/out");
        std::fs::create_dir_all(&stale).unwrap();
        let first = lock_sweeping(home);
        assert!(!home.join("realised/.outputs/some-build").exists());
        // While `first` runs, a second run leaves its files alone.
        std::fs::create_dir_all(&stale).unwrap();
        let second = lock(home).unwrap();
        assert_eq!(second.swept, 0);
        assert!(stale.exists());
        drop((first, second));
        assert_eq!(lock_sweeping(home).swept, 1);
    }
}
