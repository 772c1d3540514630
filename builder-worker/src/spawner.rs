//! The one thread that clones sandboxes.
//!
//! A build's namespace init dies with its parent (`PR_SET_PDEATHSIG`), but
//! the kernel takes "parent" to be the *thread* that cloned it: a child
//! cloned from a pooled thread (Tokio's blocking pool retires idle threads)
//! would be killed when that thread ends, mid-build. So every sandbox is
//! cloned by this thread, which is started on first use and never ends; the
//! signal then fires exactly when the process dies.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};

use crate::sandbox::{self, SandboxChild, SandboxError, SandboxSpec};

type Reply = Sender<Result<SandboxChild, SandboxError>>;

type Requests = Mutex<Sender<(SandboxSpec, Reply)>>;

/// The spawner's request queue, or why it could not be started.
fn requests() -> &'static Result<Requests, String> {
    static SPAWNER: OnceLock<Result<Requests, String>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<(SandboxSpec, Reply)>();
        std::thread::Builder::new()
            .name("kiln-sandbox-spawner".into())
            .spawn(move || {
                // The sender lives in a static: this loop never ends.
                while let Ok((spec, reply)) = rx.recv() {
                    let _ = reply.send(sandbox::spawn_here(&spec));
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Mutex::new(tx))
    })
}

/// Clones `spec` from the spawner thread and waits for the result.
pub(crate) fn spawn(spec: &SandboxSpec) -> Result<SandboxChild, SandboxError> {
    let gone = |why: &str| SandboxError::Host {
        call: "handing the build to the sandbox spawner thread",
        source: std::io::Error::other(why.to_string()),
    };
    let queue = requests().as_ref().map_err(|e| gone(e))?;
    let (tx, rx) = channel();
    let sent = queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((spec.clone(), tx));
    let gone = || gone("the spawner thread is gone");
    sent.map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())?
}
