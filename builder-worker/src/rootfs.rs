//! The sandbox's root file system: the directories, `/etc` files, `/dev`
//! entries and mount points Nix 2.8 gives a builder, laid out in a fresh
//! host directory before the namespaces are created.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::sandbox::{Bind, SANDBOX_GID, SANDBOX_UID};

/// The build directory inside the sandbox (Nix's `sandbox-build-dir`).
pub const BUILD_DIR: &str = "/build";

/// `/etc/passwd` as Nix writes it.
pub fn passwd() -> String {
    format!(
        "root:x:0:0:Nix build user:{BUILD_DIR}:/noshell\n\
         nixbld:x:{SANDBOX_UID}:{SANDBOX_GID}:Nix build user:{BUILD_DIR}:/noshell\n\
         nobody:x:65534:65534:Nobody:/:/noshell\n"
    )
}

/// `/etc/group` as Nix writes it.
pub fn group() -> String {
    format!("root:x:0:\nnixbld:!:{SANDBOX_GID}:\nnogroup:x:65534:\n")
}

/// `/etc/hosts` as Nix writes it for sandboxed (not fixed-output) builds.
pub const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n";

/// `/etc/nsswitch.conf` Nix writes for fixed-output builds.
pub const NSSWITCH: &str = "hosts: files dns\nservices: files\n";

/// Device nodes bound from the host, in Nix's order (`/dev/kvm` only when the
/// host has it).
const DEVICES: &[&str] = &[
    "/dev/full",
    "/dev/kvm",
    "/dev/null",
    "/dev/random",
    "/dev/tty",
    "/dev/urandom",
    "/dev/zero",
];

/// Host files a fixed-output derivation may see.
const FOD_ETC: &[&str] = &["/etc/resolv.conf", "/etc/services", "/etc/hosts"];

/// Errors while laying out the root.
#[derive(Debug, thiserror::Error)]
#[error("cannot prepare sandbox root: {action} '{path}'")]
pub struct RootfsError {
    /// What was being done.
    pub action: &'static str,
    /// The host path involved.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

fn ctx<T>(r: io::Result<T>, action: &'static str, path: &Path) -> Result<T, RootfsError> {
    r.map_err(|source| RootfsError {
        action,
        path: path.to_path_buf(),
        source,
    })
}

fn mkdir(p: &Path, mode: u32) -> Result<(), RootfsError> {
    ctx(fs::create_dir_all(p), "create directory", p)?;
    ctx(
        fs::set_permissions(p, fs::Permissions::from_mode(mode)),
        "set permissions of",
        p,
    )
}

fn write(p: &Path, data: &str) -> Result<(), RootfsError> {
    ctx(fs::write(p, data), "write", p)
}

/// Creates an empty mount point for binding `source` (a file or directory).
fn mount_point(source: &Path, target: &Path) -> Result<bool, RootfsError> {
    let md = match fs::metadata(source) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(RootfsError {
                action: "inspect",
                path: source.to_path_buf(),
                source: e,
            })
        }
    };
    if md.is_dir() {
        ctx(fs::create_dir_all(target), "create mount point", target)?;
    } else {
        if let Some(parent) = target.parent() {
            ctx(fs::create_dir_all(parent), "create directory", parent)?;
        }
        ctx(fs::write(target, b""), "create mount point", target)?;
    }
    Ok(true)
}

/// A prepared root: the directory and the host paths to bind into it.
#[derive(Debug)]
pub struct Rootfs {
    /// The directory that becomes `/`.
    pub root: PathBuf,
    /// `/build` seen from the host.
    pub build_dir: PathBuf,
    /// `/nix/store` seen from the host (outputs appear here).
    pub store_dir: PathBuf,
    /// Bind mounts the sandbox needs, in order.
    pub binds: Vec<Bind>,
}

/// Where a build's directories live on the host.
#[derive(Debug, Clone, Copy)]
pub struct Layout<'a> {
    /// The empty-or-absent directory that becomes `/`: only the skeleton
    /// (`/etc`, `/dev`, mount points), so a tmpfs is the place for it;
    /// creating and deleting those few dozen inodes per build on a disk file
    /// system costs more than the rest of the set-up together.
    pub root: &'a Path,
    /// The empty-or-absent directory on a real file system that holds what
    /// the build writes: `build/` (bound to `/build`) and `store/` (bound to
    /// the store directory, where the outputs appear).
    pub work: &'a Path,
}

/// Lays out a root at `layout.root` and the writable directories at
/// `layout.work`.
///
/// `inputs` maps store paths (`/nix/store/…`) to where they live on the
/// host; each is bound read-only. `fixed_output` gives the build the host's
/// name-resolution files, as Nix does.
pub fn prepare<'a>(
    layout: Layout<'_>,
    store_dir: &str,
    inputs: impl IntoIterator<Item = (&'a str, &'a Path)>,
    fixed_output: bool,
) -> Result<Rootfs, RootfsError> {
    let root = layout.root;
    mkdir(root, 0o750)?;
    let rel = |p: &str| root.join(p.trim_start_matches('/'));
    mkdir(&rel("tmp"), 0o1777)?;
    mkdir(&rel(BUILD_DIR), 0o700)?;
    mkdir(&rel("proc"), 0o555)?;
    mkdir(&rel(store_dir), 0o1775)?;
    mkdir(layout.work, 0o700)?;
    let build_dir = layout.work.join("build");
    mkdir(&build_dir, 0o700)?;
    let store = layout.work.join("store");
    mkdir(&store, 0o1775)?;
    // The writable directories first: the inputs are bound into the store.
    let mut binds = vec![
        Bind {
            source: build_dir.clone(),
            target: BUILD_DIR.into(),
            read_only: false,
        },
        Bind {
            source: store.clone(),
            target: store_dir.into(),
            read_only: false,
        },
    ];

    let etc = rel("etc");
    mkdir(&etc, 0o755)?;
    write(&etc.join("passwd"), &passwd())?;
    write(&etc.join("group"), &group())?;
    if fixed_output {
        write(&etc.join("nsswitch.conf"), NSSWITCH)?;
        for f in FOD_ETC {
            if mount_point(Path::new(f), &rel(f))? {
                binds.push(Bind {
                    source: f.into(),
                    target: f.into(),
                    read_only: true,
                });
            }
        }
    } else {
        write(&etc.join("hosts"), HOSTS)?;
    }
    ctx(
        fs::set_permissions(&etc, fs::Permissions::from_mode(0o555)),
        "set permissions of",
        &etc,
    )?;

    let dev = rel("dev");
    mkdir(&dev.join("shm"), 0o755)?;
    mkdir(&dev.join("pts"), 0o755)?;
    for d in DEVICES {
        if mount_point(Path::new(d), &rel(d))? {
            binds.push(Bind {
                source: d.into(),
                target: d.into(),
                read_only: false,
            });
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "/dev/pts/ptmx"),
    ] {
        let p = dev.join(link);
        ctx(symlink(target, &p), "create symlink", &p)?;
    }

    for (store_path, host) in inputs {
        let name = store_path
            .strip_prefix(store_dir)
            .map(|n| n.trim_start_matches('/'))
            .filter(|n| !n.is_empty() && !n.contains('/') && *n != "..")
            .ok_or_else(|| RootfsError {
                action: "place input outside the store",
                path: PathBuf::from(store_path),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            })?;
        let target = store.join(name);
        if !mount_point(host, &target)? {
            return Err(RootfsError {
                action: "find input",
                path: host.to_path_buf(),
                source: io::Error::from(io::ErrorKind::NotFound),
            });
        }
        binds.push(Bind {
            source: host.to_path_buf(),
            target: store_path.into(),
            read_only: true,
        });
    }
    Ok(Rootfs {
        root: root.to_path_buf(),
        build_dir,
        store_dir: store,
        binds,
    })
}

/// A private directory on a tmpfs for build roots: `/dev/shm` (where it is
/// a tmpfs the caller may write) gets a fresh `kiln-<uid>-<pid>-<n>`
/// directory, mode 0700, made with `mkdir` so nothing planted there before
/// can be used. `None` when there is no such tmpfs; roots then go on disk.
pub fn tmpfs_roots_dir() -> Option<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let shm = Path::new("/dev/shm");
    let c = std::ffi::CString::new("/dev/shm").ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 || st.f_type != libc::TMPFS_MAGIC {
        return None;
    }
    let uid = unsafe { libc::geteuid() };
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(|| sweep_stale_roots(shm, uid));
    for _ in 0..16 {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = shm.join(format!("kiln-{uid}-{}-{n}", std::process::id()));
        let made = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        match made {
            Ok(()) => return Some(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(_) => return None,
        }
    }
    None
}

/// Removes the root directories a killed Kiln process of this user left in
/// `shm` (`kiln-<uid>-<pid>-<n>` whose process is gone).
fn sweep_stale_roots(shm: &Path, uid: u32) {
    let Ok(entries) = fs::read_dir(shm) else {
        return;
    };
    let prefix = format!("kiln-{uid}-");
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest
            .split('-')
            .next()
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let gone = unsafe { libc::kill(pid, 0) } == -1
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        let ours = e.metadata().is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.is_dir() && m.uid() == uid
        });
        if gone && ours {
            let _ = remove_tree(&e.path());
        }
    }
}

/// Gives the prepared root to a build user (host `uid`/`gid`) as Nix does
/// for its build users: the root stays root's but the build group may enter
/// it (0750), the store directory is writable by the group (1775) and the
/// build directory, with the files already in it, belongs to the user.
pub fn hand_over(root: &Rootfs, uid: u32, gid: u32) -> Result<(), RootfsError> {
    let chown = |p: &Path, uid: Option<u32>| {
        ctx(
            std::os::unix::fs::lchown(p, uid, Some(gid)),
            "change owner of",
            p,
        )
    };
    chown(&root.root, None)?;
    chown(&root.store_dir, None)?;
    chown(&root.build_dir, Some(uid))?;
    for entry in ctx(fs::read_dir(&root.build_dir), "list", &root.build_dir)? {
        let entry = ctx(entry, "list", &root.build_dir)?;
        chown(&entry.path(), Some(uid))?;
    }
    Ok(())
}

/// Removes `path` recursively, first making directories writable (outputs
/// and `/etc` are read-only by then). A missing path is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !md.is_dir() {
        return fs::remove_file(path);
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let m = fs::symlink_metadata(&dir)?;
        if m.permissions().mode() & 0o700 != 0o700 {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        }
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    fs::remove_dir_all(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_files_match_nix() {
        assert_eq!(
            passwd(),
            "root:x:0:0:Nix build user:/build:/noshell\nnixbld:x:1000:100:Nix build user:/build:/noshell\nnobody:x:65534:65534:Nobody:/:/noshell\n"
        );
        assert_eq!(group(), "root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n");
    }

    #[test]
    fn prepare_lays_out_root_and_remove_cleans_it() {
        let t = tempfile::tempdir().unwrap();
        let input = t.path().join("in");
        fs::create_dir(&input).unwrap();
        let root = t.path().join("root");
        let work = t.path().join("work");
        let r = prepare(
            Layout {
                root: &root,
                work: &work,
            },
            "/nix/store",
            [("/nix/store/abc-in", input.as_path())],
            false,
        )
        .unwrap();
        let mut names: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["build", "dev", "etc", "nix", "proc", "tmp"]);
        // Mount points for the writable directories, which live in `work`
        // and are bound first; the inputs' mount points are in the store.
        assert!(root.join("nix/store").is_dir() && root.join("build").is_dir());
        assert_eq!(r.build_dir, work.join("build"));
        assert_eq!(r.store_dir, work.join("store"));
        assert_eq!(r.binds[0].target, Path::new("/build"));
        assert_eq!(r.binds[1].target, Path::new("/nix/store"));
        assert!(!r.binds[1].read_only);
        assert!(work.join("store/abc-in").is_dir());
        assert!(r
            .binds
            .iter()
            .any(|b| b.target == Path::new("/nix/store/abc-in") && b.read_only));
        assert_eq!(fs::read_to_string(root.join("etc/hosts")).unwrap(), HOSTS);
        remove_tree(&root).unwrap();
        remove_tree(&work).unwrap();
        assert!(!root.exists() && !work.exists());
    }

    #[test]
    fn roots_of_dead_processes_are_swept() {
        let t = tempfile::tempdir().unwrap();
        let uid = unsafe { libc::geteuid() };
        // pid_max is at most 2^22: this pid cannot be running.
        let dead = t.path().join(format!("kiln-{uid}-99999999-0"));
        let alive = t
            .path()
            .join(format!("kiln-{uid}-{}-0", std::process::id()));
        let other = t.path().join("kiln-x-1-0");
        for d in [&dead, &alive, &other] {
            fs::create_dir_all(d.join("root/etc")).unwrap();
        }
        sweep_stale_roots(t.path(), uid);
        assert!(!dead.exists());
        assert!(alive.exists() && other.exists());
    }

    #[test]
    fn missing_input_is_reported() {
        let t = tempfile::tempdir().unwrap();
        let layout = Layout {
            root: &t.path().join("r"),
            work: &t.path().join("w"),
        };
        let err = prepare(
            layout,
            "/nix/store",
            [("/nix/store/x-y", t.path().join("nope").as_path())],
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let layout = Layout {
            root: &t.path().join("r2"),
            work: &t.path().join("w2"),
        };
        let err = prepare(layout, "/nix/store", [("/etc/x-y", t.path())], false).unwrap_err();
        assert!(err.to_string().contains("outside the store"), "{err}");
    }
}
