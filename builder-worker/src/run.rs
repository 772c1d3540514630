//! Supervising one sandboxed builder: streaming its log line by line,
//! enforcing `timeout`, `max-silent-time` and the log size limit, honouring
//! cancellation, and making sure the whole process tree is gone afterwards.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::sandbox::{self, SandboxChild};

/// Longest log line passed on in one piece; longer lines are split.
pub const MAX_LINE: usize = 64 * 1024;

/// A handle that cancels the builds it was given to.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<(AtomicBool, Notify)>);

impl CancelToken {
    /// A fresh, uncancelled token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels: running builds are killed, waiting ones do not start.
    pub fn cancel(&self) {
        self.0 .0.store(true, Ordering::SeqCst);
        self.0 .1.notify_waiters();
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0 .0.load(Ordering::SeqCst)
    }

    /// Completes once cancelled.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0 .1.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// Why a supervised build stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The overall timeout passed.
    Timeout(Duration),
    /// No output for this long.
    Silent(Duration),
    /// More log than allowed.
    LogLimit(u64),
    /// The caller cancelled.
    Cancelled,
}

/// How a supervised build ended.
#[derive(Debug)]
pub struct Outcome {
    /// Raw wait status, or why it was stopped (the tree is dead either way).
    pub result: Result<i32, Stop>,
    /// Everything it wrote, up to the limit.
    pub log: Vec<u8>,
}

/// Limits and sinks for [`supervise`].
#[derive(Debug, Clone, Default)]
pub struct Supervision {
    /// Kill after this long.
    pub timeout: Option<Duration>,
    /// Kill after this long without output.
    pub max_silent_time: Option<Duration>,
    /// Kill after this many bytes of log.
    pub max_log_size: Option<u64>,
    /// Receives each log line (without the newline).
    pub lines: Option<mpsc::Sender<String>>,
    /// Cancels the build.
    pub cancel: Option<CancelToken>,
}

/// Owns the child; killing and reaping it when dropped early.
struct Guard {
    child: Option<SandboxChild>,
}

impl Guard {
    fn child(&self) -> io::Result<&SandboxChild> {
        self.child
            .as_ref()
            .ok_or_else(|| io::Error::other("child already reaped"))
    }

    /// Reaps the child once its pidfd reported the exit.
    fn reap(&mut self) -> Option<i32> {
        let c = self.child.take()?;
        Some(sandbox::reap(c.pid))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            let _ = c.kill();
            // Reaping after SIGKILL is quick, but keep it off the caller.
            std::thread::spawn(move || sandbox::reap(c.pid));
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags == -1
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } == -1
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Registers an owned descriptor with the reactor for readability.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` stays open, and refers to the same description,
    // for as long as the `AsyncFd` owning it exists.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))
}

async fn send_line(s: &Supervision, line: &[u8]) {
    if let Some(tx) = &s.lines {
        // A caller that stopped listening does not stop the build.
        let _ = tx.send(String::from_utf8_lossy(line).into_owned()).await;
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Supervises `child` until it exits or is stopped; the pid namespace (and
/// so every process of the build) is gone when this returns or is dropped.
pub async fn supervise(child: SandboxChild, s: &Supervision) -> io::Result<Outcome> {
    let mut guard = Guard { child: Some(child) };
    let c = guard.child()?;
    set_nonblocking(&c.log)?;
    let log_fd = register(c.log.try_clone()?)?;
    let pid_fd = register(c.pidfd.try_clone()?)?;
    let start = Instant::now();
    let deadline = s.timeout.map(|t| start + t);
    let mut silent_deadline = s.max_silent_time.map(|t| start + t);
    let mut log = Vec::new();
    let mut line = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut log_open = true;
    let mut status = None;
    let never = CancelToken::new();
    let cancel = s.cancel.as_ref().unwrap_or(&never);
    let stop = loop {
        if !log_open {
            if let Some(st) = status {
                break Ok(st);
            }
        }
        tokio::select! {
            r = log_fd.readable(), if log_open => {
                let mut ready = r?;
                let n = unsafe { libc::read(log_fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::WouldBlock {
                        ready.clear_ready();
                        continue;
                    }
                    return Err(e);
                }
                if n == 0 {
                    log_open = false;
                    if !line.is_empty() {
                        send_line(s, &line).await;
                        line.clear();
                    }
                    continue;
                }
                let data = &buf[..n as usize];
                silent_deadline = s.max_silent_time.map(|t| Instant::now() + t);
                if let Some(max) = s.max_log_size {
                    if (log.len() + data.len()) as u64 > max {
                        break Err(Stop::LogLimit(max));
                    }
                }
                log.extend_from_slice(data);
                for &b in data {
                    if b == b'\n' {
                        send_line(s, &line).await;
                        line.clear();
                    } else {
                        line.push(b);
                        if line.len() >= MAX_LINE {
                            send_line(s, &line).await;
                            line.clear();
                        }
                    }
                }
            }
            r = pid_fd.readable(), if status.is_none() => {
                let mut ready = r?;
                ready.clear_ready();
                status = guard.reap();
            }
            _ = sleep_until_opt(deadline) => break Err(Stop::Timeout(s.timeout.unwrap_or_default())),
            _ = sleep_until_opt(silent_deadline) => break Err(Stop::Silent(s.max_silent_time.unwrap_or_default())),
            _ = cancel.cancelled() => break Err(Stop::Cancelled),
        }
    };
    if stop.is_err() {
        if let Some(c) = guard.child.as_ref() {
            c.kill()?;
        }
        let c = guard.child.take();
        if let Some(c) = c {
            let pid = c.pid;
            tokio::task::spawn_blocking(move || sandbox::reap(pid))
                .await
                .map_err(io::Error::other)?;
        }
    }
    Ok(Outcome { result: stop, log })
}

/// Describes a wait status the way Nix's `statusToString` does.
pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("failed with exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let name = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(sig)) }
            .to_string_lossy()
            .into_owned();
        format!("failed due to signal {sig} ({name})")
    } else {
        "died abnormally".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_like_nix() {
        assert_eq!(describe_status(3 << 8), "failed with exit code 3");
        assert_eq!(describe_status(9), "failed due to signal 9 (Killed)");
    }

    #[tokio::test]
    async fn cancel_token_wakes_waiters() {
        let t = CancelToken::new();
        let t2 = t.clone();
        let h = tokio::spawn(async move { t2.cancelled().await });
        tokio::task::yield_now().await;
        t.cancel();
        h.await.unwrap();
        assert!(t.is_cancelled());
    }
}
