//! Starting a builder inside Linux namespaces, the way Nix 2.8's sandbox does.
//!
//! One `clone` creates the process in new user, mount, pid, ipc and uts
//! namespaces (plus a network namespace unless the derivation is
//! fixed-output). The child maps itself to uid 1000 / gid 100, sets the
//! hostname, bind-mounts its inputs read-only into a prepared root, mounts
//! `/proc`, `/dev/shm` and `/dev/pts`, `pivot_root`s into it and `execve`s the
//! builder. No helper binary is involved.
//!
//! The namespace init is the builder itself, and it dies with the process
//! that started it (`PR_SET_PDEATHSIG`, set after the last change of
//! credentials, which would clear it): when Kiln is killed, even by SIGKILL
//! or the OOM killer, the kernel kills the init and with it every process
//! of the build. The signal follows the *thread* that cloned the child, so
//! every sandbox is cloned by one thread that lives as long as the process
//! ([`crate::spawner`]).
//!
//! The child of a multi-threaded program may not allocate, so every path,
//! argument and step is prepared beforehand as a [`Plan`]; the child only
//! walks that plan with raw system calls and reports the first failing step
//! over a close-on-exec pipe.

use std::ffi::{CString, NulError};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Uid of the build user inside the sandbox (as in Nix).
pub const SANDBOX_UID: u32 = 1000;
/// Gid of the build group inside the sandbox (as in Nix).
pub const SANDBOX_GID: u32 = 100;

/// Errors while preparing or starting a sandboxed process.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A path, argument or variable contained a NUL byte.
    #[error("sandbox setting '{what}' contains a NUL byte")]
    Nul {
        /// Which setting.
        what: String,
        /// The underlying error.
        #[source]
        source: NulError,
    },
    /// Inspecting a bind-mount source on the host failed.
    #[error("cannot inspect sandbox input '{path}'")]
    Source {
        /// The host path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A host-side system call (pipe, clone, pidfd) failed.
    #[error("cannot start the sandbox: {call} failed")]
    Host {
        /// The failing call.
        call: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A set-up step inside the new namespaces failed.
    #[error("setting up the sandbox failed at step '{step}'")]
    Setup {
        /// Description of the failing step.
        step: String,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
}

/// One host path made visible inside the sandbox.
#[derive(Debug, Clone)]
pub struct Bind {
    /// The path on the host.
    pub source: PathBuf,
    /// Absolute path inside the sandbox (e.g. `/nix/store/…-busybox`).
    pub target: PathBuf,
    /// Whether to remount the bind read-only.
    pub read_only: bool,
}

/// What to run and how to isolate it.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Host directory that becomes `/`; it must already hold the mount
    /// points (see [`crate::rootfs`]).
    pub root: PathBuf,
    /// Host paths to bind into the root.
    pub binds: Vec<Bind>,
    /// Host uid and gid the build user maps to, when the caller is root
    /// (see [`crate::userpool`]); `None` maps to the caller's own ids.
    pub host_user: Option<(u32, u32)>,
    /// Cut the network (every derivation except fixed-output ones).
    pub private_network: bool,
    /// Size option for the `/dev/shm` tmpfs (Nix: `sandbox-shm-size`).
    pub shm_size: String,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
    /// The program to execute (path inside the sandbox).
    pub program: Vec<u8>,
    /// `argv`, including `argv[0]`.
    pub args: Vec<Vec<u8>>,
    /// `NAME=value` strings.
    pub env: Vec<Vec<u8>>,
}

/// A running sandboxed process: the init of its pid namespace.
#[derive(Debug)]
pub struct SandboxChild {
    /// Its pid in the caller's pid namespace.
    pub pid: libc::pid_t,
    /// A pidfd referring to it, for race-free signalling.
    pub pidfd: OwnedFd,
    /// Read side of the pipe carrying its stdout and stderr.
    pub log: OwnedFd,
}

impl SandboxChild {
    /// Sends SIGKILL to the namespace init; the kernel then kills every
    /// other process of the namespace.
    pub fn kill(&self) -> io::Result<()> {
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }
}

/// One system call the child performs, with every argument pre-built.
enum Step {
    /// Blocks until the parent has written the id maps (one byte on the fd).
    WaitParent(RawFd),
    /// Drops the supplementary groups inherited from a root parent.
    DropGroups,
    WriteFile {
        path: CString,
        data: Vec<u8>,
    },
    LoopbackUp,
    Hostname,
    Mount {
        src: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    Chdir(CString),
    Mkdir(CString),
    PivotRoot,
    ChrootDot,
    DetachOldRoot,
    RmdirOldRoot,
    SetIds,
    /// Dies with the parent (`PR_SET_PDEATHSIG`); closes the child's copy
    /// of the write end of the parent's liveness pipe and refuses to go on
    /// when no write end is left, i.e. the parent died before this step.
    DieWithParent {
        alive_r: RawFd,
        alive_w: RawFd,
    },
    /// Resets what a builder inherits from Kiln's process: umask 022, no
    /// blocked signals, default dispositions (Rust ignores SIGPIPE).
    ProcessState,
    Stdio,
    CloseFds,
    CoreLimit,
    /// Nix's system-call filter (see [`crate::seccomp`]).
    Seccomp,
    Exec,
}

/// Everything the child needs, allocated before `clone`.
struct Plan {
    steps: Vec<(Step, String)>,
    program: CString,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    dev_null: CString,
    log_fd: RawFd,
    seccomp: Vec<crate::seccomp::Insn>,
}

fn cstr(what: &str, bytes: &[u8]) -> Result<CString, SandboxError> {
    CString::new(bytes).map_err(|source| SandboxError::Nul {
        what: what.to_string(),
        source,
    })
}

fn cpath(p: &Path) -> Result<CString, SandboxError> {
    cstr(&p.display().to_string(), p.as_os_str().as_bytes())
}

/// Mount flags of the file system holding `path` that a remount inside a
/// user namespace must keep (the kernel locks them).
fn locked_flags(path: &Path) -> Result<libc::c_ulong, SandboxError> {
    let c = cpath(path)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } == -1 {
        return Err(SandboxError::Source {
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    let f = st.f_flag;
    let mut out = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f & st_flag != 0 {
            out |= ms_flag;
        }
    }
    Ok(out)
}

impl Plan {
    fn new(
        spec: &SandboxSpec,
        log_fd: RawFd,
        go_fd: Option<RawFd>,
        alive: (RawFd, RawFd),
    ) -> Result<Plan, SandboxError> {
        let root = &spec.root;
        let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        let mut steps: Vec<(Step, String)> = Vec::new();
        let mut push = |s: Step, d: String| steps.push((s, d));

        if let Some(fd) = go_fd {
            // A root parent maps the build user to an unprivileged host
            // user; only it may write such a map.
            push(Step::WaitParent(fd), "wait for the id maps".into());
            push(Step::DropGroups, "drop supplementary groups".into());
        } else {
            let uid = unsafe { libc::geteuid() };
            let gid = unsafe { libc::getegid() };
            push(
                Step::WriteFile {
                    path: cstr("setgroups", b"/proc/self/setgroups")?,
                    data: b"deny".to_vec(),
                },
                "write /proc/self/setgroups".into(),
            );
            push(
                Step::WriteFile {
                    path: cstr("uid_map", b"/proc/self/uid_map")?,
                    data: format!("{SANDBOX_UID} {uid} 1").into_bytes(),
                },
                "write /proc/self/uid_map".into(),
            );
            push(
                Step::WriteFile {
                    path: cstr("gid_map", b"/proc/self/gid_map")?,
                    data: format!("{SANDBOX_GID} {gid} 1").into_bytes(),
                },
                "write /proc/self/gid_map".into(),
            );
        }
        if spec.private_network {
            push(Step::LoopbackUp, "bring up the loopback interface".into());
        }
        push(Step::Hostname, "set host and domain name".into());
        push(
            Step::Mount {
                src: None,
                target: cstr("/", b"/")?,
                fstype: None,
                flags: libc::MS_PRIVATE | libc::MS_REC,
                data: None,
            },
            "make / private".into(),
        );
        let root_c = cpath(root)?;
        push(
            Step::Mount {
                src: Some(root_c.clone()),
                target: root_c.clone(),
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
            },
            format!("bind {} onto itself", root.display()),
        );
        for b in &spec.binds {
            let target = cpath(&inside(&b.target))?;
            push(
                Step::Mount {
                    src: Some(cpath(&b.source)?),
                    target: target.clone(),
                    fstype: None,
                    flags: libc::MS_BIND | libc::MS_REC,
                    data: None,
                },
                format!("bind {} to {}", b.source.display(), b.target.display()),
            );
            if b.read_only {
                let keep = locked_flags(&b.source)?;
                push(
                    Step::Mount {
                        src: None,
                        target,
                        fstype: None,
                        flags: libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | keep,
                        data: None,
                    },
                    format!("make {} read-only", b.target.display()),
                );
            }
        }
        push(
            Step::Mount {
                src: Some(cstr("none", b"none")?),
                target: cpath(&root.join("proc"))?,
                fstype: Some(cstr("proc", b"proc")?),
                flags: 0,
                data: None,
            },
            "mount /proc".into(),
        );
        push(
            Step::Mount {
                src: Some(cstr("none", b"none")?),
                target: cpath(&root.join("dev/shm"))?,
                fstype: Some(cstr("tmpfs", b"tmpfs")?),
                flags: 0,
                data: Some(cstr(
                    "shm size",
                    format!("size={}", spec.shm_size).as_bytes(),
                )?),
            },
            "mount /dev/shm".into(),
        );
        push(
            Step::Mount {
                src: Some(cstr("none", b"none")?),
                target: cpath(&root.join("dev/pts"))?,
                fstype: Some(cstr("devpts", b"devpts")?),
                flags: 0,
                data: Some(cstr("devpts", b"newinstance,mode=0620,ptmxmode=0666")?),
            },
            "mount /dev/pts".into(),
        );
        push(Step::Chdir(root_c), format!("chdir {}", root.display()));
        push(
            Step::Mkdir(cstr("real-root", b"real-root")?),
            "mkdir real-root".into(),
        );
        push(Step::PivotRoot, "pivot_root".into());
        push(Step::ChrootDot, "chroot .".into());
        push(Step::DetachOldRoot, "unmount the old root".into());
        push(Step::RmdirOldRoot, "remove real-root".into());
        push(Step::SetIds, "switch to uid 1000 / gid 100".into());
        push(
            Step::DieWithParent {
                alive_r: alive.0,
                alive_w: alive.1,
            },
            "tie the build to its parent (PR_SET_PDEATHSIG)".into(),
        );
        push(Step::ProcessState, "reset umask and signals".into());
        push(
            Step::Chdir(cpath(&spec.cwd)?),
            format!("chdir {}", spec.cwd.display()),
        );
        push(Step::Stdio, "set up standard file descriptors".into());
        push(Step::CloseFds, "close inherited file descriptors".into());
        push(Step::CoreLimit, "disable core dumps".into());
        push(Step::Seccomp, "install the system-call filter".into());
        push(
            Step::Exec,
            format!("execute '{}'", String::from_utf8_lossy(&spec.program)),
        );

        let program = cstr("builder", &spec.program)?;
        let argv = spec
            .args
            .iter()
            .map(|a| cstr("builder argument", a))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = spec
            .env
            .iter()
            .map(|e| cstr("environment variable", e))
            .collect::<Result<Vec<_>, _>>()?;
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<_> = envp.iter().map(|a| a.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        Ok(Plan {
            steps,
            program,
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
            dev_null: cstr("/dev/null", b"/dev/null")?,
            log_fd,
            seccomp: crate::seccomp::program(),
        })
    }
}

/// Runs one step in the child. Only raw system calls: no allocation.
unsafe fn run_step(plan: &Plan, step: &Step) -> libc::c_int {
    match step {
        Step::WaitParent(fd) => {
            let mut byte = 0u8;
            loop {
                let n = libc::read(*fd, (&mut byte as *mut u8).cast(), 1);
                if n == 1 {
                    return 0;
                }
                if n == 0 {
                    // The parent gave up before mapping us.
                    *libc::__errno_location() = libc::EPIPE;
                    return -1;
                }
                if *libc::__errno_location() != libc::EINTR {
                    return -1;
                }
            }
        }
        Step::DropGroups => {
            libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>())
                as libc::c_int
        }
        Step::ProcessState => {
            libc::umask(0o022);
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) == -1 {
                return -1;
            }
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::sigaction(sig, &dfl, std::ptr::null_mut());
                }
            }
            0
        }
        Step::WriteFile { path, data } => {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd == -1 {
                return -1;
            }
            let n = libc::write(fd, data.as_ptr().cast(), data.len());
            libc::close(fd);
            if n == data.len() as isize {
                0
            } else {
                -1
            }
        }
        Step::LoopbackUp => {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd == -1 {
                return -1;
            }
            // struct ifreq: 16 bytes of name, then the flags as a short.
            let mut req = [0u8; 40];
            req[..2].copy_from_slice(b"lo");
            let flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
            req[16..18].copy_from_slice(&flags.to_ne_bytes());
            let r = libc::ioctl(fd, libc::SIOCSIFFLAGS, req.as_mut_ptr());
            libc::close(fd);
            r
        }
        Step::Hostname => {
            let host = b"localhost";
            if libc::sethostname(host.as_ptr().cast(), host.len()) == -1 {
                return -1;
            }
            let dom = b"(none)";
            libc::setdomainname(dom.as_ptr().cast(), dom.len())
        }
        Step::Mount {
            src,
            target,
            fstype,
            flags,
            data,
        } => libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            *flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        ),
        Step::Chdir(p) => libc::chdir(p.as_ptr()),
        Step::Mkdir(p) => libc::mkdir(p.as_ptr(), 0),
        Step::PivotRoot => {
            let dot = c".";
            let old = c"real-root";
            libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), old.as_ptr()) as libc::c_int
        }
        Step::ChrootDot => libc::chroot(c".".as_ptr()),
        Step::DetachOldRoot => libc::umount2(c"real-root".as_ptr(), libc::MNT_DETACH),
        Step::RmdirOldRoot => libc::rmdir(c"real-root".as_ptr()),
        Step::SetIds => {
            // Raw system calls: glibc's setgid/setuid synchronise with other
            // threads (and take locks) that do not exist in this child.
            if libc::syscall(libc::SYS_setgid, SANDBOX_GID) == -1 {
                return -1;
            }
            libc::syscall(libc::SYS_setuid, SANDBOX_UID) as libc::c_int
        }
        Step::DieWithParent { alive_r, alive_w } => {
            let (sig, zero) = (libc::SIGKILL as libc::c_ulong, 0 as libc::c_ulong);
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig, zero, zero, zero) == -1 {
                return -1;
            }
            libc::close(*alive_w);
            // Other children being cloned may hold a write end for a moment;
            // only a hang-up with no data means every holder is gone, and
            // the parent holds its end until this child has exec'd.
            let mut pfd = libc::pollfd {
                fd: *alive_r,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut pfd, 1, 0) == 1 && pfd.revents & libc::POLLHUP != 0 {
                *libc::__errno_location() = libc::ESRCH;
                return -1;
            }
            0
        }
        Step::Stdio => {
            let null = libc::open(plan.dev_null.as_ptr(), libc::O_RDONLY);
            if null == -1 || libc::dup2(null, 0) == -1 {
                return -1;
            }
            if libc::dup2(plan.log_fd, 1) == -1 || libc::dup2(plan.log_fd, 2) == -1 {
                return -1;
            }
            if libc::setsid() == -1 {
                return -1;
            }
            0
        }
        Step::CloseFds => libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) as libc::c_int,
        Step::Seccomp => crate::seccomp::install(&plan.seccomp),
        Step::CoreLimit => {
            let lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: libc::RLIM_INFINITY,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &lim)
        }
        Step::Exec => {
            // A child cloned by another thread may briefly hold a write
            // descriptor to a just-written binary until it execs itself
            // (ETXTBSY); retry for up to ~1 s, as Go's os/exec does.
            let mut tries = 0;
            loop {
                let r = libc::execve(
                    plan.program.as_ptr(),
                    plan.argv_ptrs.as_ptr(),
                    plan.envp_ptrs.as_ptr(),
                );
                if *libc::__errno_location() != libc::ETXTBSY || tries == 100 {
                    break r;
                }
                tries += 1;
                let pause = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 10_000_000,
                };
                libc::nanosleep(&pause, std::ptr::null_mut());
            }
        }
    }
}

/// The child's side: run every step, report the first failure, never return.
unsafe fn child_main(plan: &Plan, report_fd: RawFd) -> ! {
    for (i, (step, _)) in plan.steps.iter().enumerate() {
        if run_step(plan, step) == -1 {
            let errno = *libc::__errno_location();
            let mut msg = [0u8; 8];
            msg[..4].copy_from_slice(&(i as u32).to_ne_bytes());
            msg[4..].copy_from_slice(&errno.to_ne_bytes());
            libc::write(report_fd, msg.as_ptr().cast(), msg.len());
            libc::_exit(127);
        }
    }
    libc::_exit(127)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(SandboxError::Host {
            call: "pipe2",
            source: io::Error::last_os_error(),
        });
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `spec` in new namespaces and waits until the builder has been
/// executed (or set-up failed, in which case the child has been reaped).
/// The child is cloned by the process's spawner thread, so that it lives
/// exactly as long as this process.
pub fn spawn(spec: &SandboxSpec) -> Result<SandboxChild, SandboxError> {
    crate::spawner::spawn(spec)
}

/// [`spawn`] from the calling thread: the child dies when this thread
/// ends. Only [`crate::spawner`]'s thread, which never ends, calls it.
pub(crate) fn spawn_here(spec: &SandboxSpec) -> Result<SandboxChild, SandboxError> {
    let (log_r, log_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    let (alive_r, alive_w) = pipe()?;
    let go = spec
        .host_user
        .map(|ids| pipe().map(|p| (p, ids)))
        .transpose()?;
    let plan = Plan::new(
        spec,
        log_w.as_raw_fd(),
        go.as_ref().map(|((r, _), _)| r.as_raw_fd()),
        (alive_r.as_raw_fd(), alive_w.as_raw_fd()),
    )?;
    let mut flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    if spec.private_network {
        flags |= libc::CLONE_NEWNET;
    }
    // A fork-like clone: the child gets a copy of our address space and
    // runs on a copy of this stack.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    if pid == -1 {
        return Err(SandboxError::Host {
            call: "clone",
            source: io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        unsafe { child_main(&plan, rep_w.as_raw_fd()) }
    }
    let pid = pid as libc::pid_t;
    drop(rep_w);
    drop(log_w);
    drop(alive_r);
    if let Some(((go_r, go_w), (uid, gid))) = go {
        drop(go_r);
        if let Err(e) = map_ids(pid, uid, gid).and_then(|()| {
            let n = unsafe { libc::write(go_w.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
            if n == 1 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap(pid);
            return Err(SandboxError::Host {
                call: "writing the build user's id maps",
                source: e,
            });
        }
    }
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let mut msg = [0u8; 8];
    let n = loop {
        let n = unsafe { libc::read(rep_r.as_raw_fd(), msg.as_mut_ptr().cast(), msg.len()) };
        if n == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break n;
    };
    if n == 8 {
        reap(pid);
        let idx = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
        let errno = i32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]);
        let step = plan
            .steps
            .get(idx)
            .map_or_else(|| format!("step {idx}"), |s| s.1.clone());
        return Err(SandboxError::Setup {
            step,
            source: io::Error::from_raw_os_error(errno),
        });
    }
    if pidfd == -1 {
        let e = io::Error::last_os_error();
        unsafe { libc::kill(pid, libc::SIGKILL) };
        reap(pid);
        return Err(SandboxError::Host {
            call: "pidfd_open",
            source: e,
        });
    }
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // Held until the child exec'd (the report pipe closed), so that its
    // liveness check could not see this process as dead.
    drop(alive_w);
    drop(plan);
    Ok(SandboxChild {
        pid,
        pidfd,
        log: log_r,
    })
}

/// Maps the sandbox's build user and group of the freshly cloned `pid` to
/// the host's `uid` and `gid` (the parent, root in the parent namespace, may
/// map any id; the child itself could only map its own).
fn map_ids(pid: libc::pid_t, uid: u32, gid: u32) -> io::Result<()> {
    std::fs::write(
        format!("/proc/{pid}/uid_map"),
        format!("{SANDBOX_UID} {uid} 1"),
    )?;
    std::fs::write(
        format!("/proc/{pid}/gid_map"),
        format!("{SANDBOX_GID} {gid} 1"),
    )
}

/// Waits for `pid` and returns its raw wait status.
pub fn reap(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return status;
    }
}
