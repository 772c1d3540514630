//! Build users for a builder running as root.
//!
//! Inside the sandbox a build always runs as uid 1000 / gid 100. Which host
//! identity that maps to matters: mapped to root, a build would own every
//! root-owned file it can reach (device nodes, `/proc/sys`) even without
//! capabilities. So, like Nix's build users, a root builder runs each build
//! as an unprivileged host uid and gid of its own, taken from a pool and held
//! by a lock file for as long as the build runs. Lock files (rather than an
//! in-process set) keep two Kiln processes on one host apart too.
//!
//! A lock only says no Kiln process is using a user; a process of a build
//! whose owner died could in principle still run under its uid. So, like
//! Nix, a user is handed out only once no process holds its uid: any found
//! is killed first, and a user whose processes will not die is skipped.
//!
//! An unprivileged builder needs none of this: its own uid is the only one it
//! can map, and it owns nothing the build could misuse.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// First host uid (and gid) of the default pool: the range Nix uses for
/// automatically allocated build users, far from any account's id.
pub const DEFAULT_BASE: u32 = 872_415_232;
/// Pool size by default; more than any sensible `max-jobs`.
pub const DEFAULT_SIZE: u32 = 1024;
/// Where the lock files live by default (root only).
pub const DEFAULT_LOCK_DIR: &str = "/run/kiln/userpool";

/// Where build users come from.
#[derive(Debug, Clone)]
pub struct UserPool {
    /// Directory of the per-user lock files.
    pub lock_dir: PathBuf,
    /// First uid/gid of the range.
    pub base: u32,
    /// Number of users in the range.
    pub size: u32,
}

impl Default for UserPool {
    fn default() -> Self {
        UserPool {
            lock_dir: PathBuf::from(DEFAULT_LOCK_DIR),
            base: DEFAULT_BASE,
            size: DEFAULT_SIZE,
        }
    }
}

/// A host uid and gid reserved for one build; released when dropped.
#[derive(Debug)]
pub struct BuildUser {
    /// Host uid the sandbox's uid 1000 maps to.
    pub uid: u32,
    /// Host gid the sandbox's gid 100 maps to.
    pub gid: u32,
    _lock: File,
}

/// Errors while reserving a build user.
#[derive(Debug, thiserror::Error)]
pub enum UserPoolError {
    /// The lock directory or a lock file could not be used.
    #[error("cannot use build-user lock '{path}'")]
    Lock {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Every user of the pool is taken.
    #[error("all {size} build users starting at uid {base} are busy (locks in '{dir}')")]
    Exhausted {
        /// First uid.
        base: u32,
        /// Pool size.
        size: u32,
        /// Lock directory.
        dir: PathBuf,
    },
}

impl UserPool {
    /// Whether builds should take users from this pool: the process is root
    /// and every uid and gid of the pool exists in its user namespace (not
    /// so for root inside a rootless container, which then builds as
    /// itself, like an unprivileged user).
    pub fn usable(&self) -> bool {
        if unsafe { libc::geteuid() } != 0 {
            return false;
        }
        let covers = |file: &str| {
            std::fs::read_to_string(file).is_ok_and(|map| map_covers(&map, self.base, self.size))
        };
        covers("/proc/self/uid_map") && covers("/proc/self/gid_map")
    }

    /// Reserves the first free user of the pool.
    pub fn acquire(&self) -> Result<BuildUser, UserPoolError> {
        let lock_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| UserPoolError::Lock { path, source }
        };
        fs::create_dir_all(&self.lock_dir).map_err(lock_err(&self.lock_dir))?;
        for slot in 0..self.size {
            let uid = self.base + slot;
            let path = self.lock_dir.join(uid.to_string());
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(lock_err(&path))?;
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                if !reclaim(uid) {
                    tracing::warn!(
                        uid,
                        "build user still has processes that do not die; skipped"
                    );
                    continue;
                }
                return Ok(BuildUser {
                    uid,
                    gid: uid,
                    _lock: file,
                });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(UserPoolError::Lock { path, source: e });
            }
        }
        Err(UserPoolError::Exhausted {
            base: self.base,
            size: self.size,
            dir: self.lock_dir.clone(),
        })
    }
}

/// How long [`reclaim`] waits for a user's processes to die.
const RECLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Pids of the processes (in this pid namespace) with `uid` as real,
/// effective, saved or file-system uid.
pub fn processes_of(uid: u32) -> Vec<libc::pid_t> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| holds_uid(*pid, uid))
        .collect()
}

fn holds_uid(pid: libc::pid_t, uid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .is_some_and(|ids| ids.split_whitespace().any(|id| id == uid.to_string()))
    })
}

/// Kills every process holding `uid` and waits until none is left; false
/// when some survive [`RECLAIM_WAIT`].
pub fn reclaim(uid: u32) -> bool {
    let until = std::time::Instant::now() + RECLAIM_WAIT;
    loop {
        let pids = processes_of(uid);
        if pids.is_empty() {
            return true;
        }
        if std::time::Instant::now() > until {
            return false;
        }
        for pid in pids {
            // Through a pidfd, checked again once opened, so a recycled pid
            // of another user is never signalled.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if fd < 0 {
                continue;
            }
            if holds_uid(pid, uid) {
                tracing::warn!(uid, pid, "killing a leftover process of a build user");
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd as libc::c_int,
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
            }
            unsafe { libc::close(fd as libc::c_int) };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether the id map text (`/proc/self/uid_map` lines: inside, outside,
/// count) maps every id in `base .. base + size`.
fn map_covers(map: &str, base: u32, size: u32) -> bool {
    let (lo, hi) = (u64::from(base), u64::from(base) + u64::from(size));
    map.lines().any(|l| {
        let f: Vec<u64> = l
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        matches!(f[..], [inside, _, count] if inside <= lo && hi <= inside + count)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_namespace_holding_the_pool_can_use_it() {
        let full = "         0          0 4294967295\n";
        assert!(map_covers(full, DEFAULT_BASE, DEFAULT_SIZE));
        // Root of a rootless container: a few thousand ids.
        let rootless = "         0       1000          1\n         1     100000      65536\n";
        assert!(!map_covers(rootless, DEFAULT_BASE, DEFAULT_SIZE));
        assert!(map_covers(rootless, 100, 1000));
        assert!(!map_covers("", 0, 1));
    }

    #[test]
    fn a_user_without_processes_is_reclaimed_at_once() {
        // No process runs under an id this far up the pool.
        assert!(processes_of(DEFAULT_BASE + DEFAULT_SIZE - 1).is_empty());
        assert!(reclaim(DEFAULT_BASE + DEFAULT_SIZE - 1));
        // This process holds its own uid.
        let me = unsafe { libc::getuid() };
        let pid = std::process::id() as libc::pid_t;
        assert!(processes_of(me).contains(&pid));
    }

    #[test]
    fn users_are_exclusive_until_dropped() {
        let t = tempfile::tempdir().unwrap();
        let pool = UserPool {
            lock_dir: t.path().join("locks"),
            base: 5000,
            size: 2,
        };
        let a = pool.acquire().unwrap();
        let b = pool.acquire().unwrap();
        assert_eq!((a.uid, b.uid), (5000, 5001));
        assert_eq!(b.gid, 5001);
        let err = pool.acquire().unwrap_err();
        assert!(err.to_string().contains("busy"), "{err}");
        drop(a);
        assert_eq!(pool.acquire().unwrap().uid, 5000);
    }
}
