//! The builder worker: consumes build requests from a transport, realises
//! each request's input closure from the store, builds in the sandbox,
//! uploads outputs and the log to the store, and reports back.
//!
//! The same loop serves the embedded default (in-memory transport, local
//! store) and a distributed builder (queue transport, S3 store).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kiln_nix::derivation::{Derivation, DerivationOutput};
use kiln_nix::narinfo::ContentAddress;
use kiln_nix::store_path::StorePath;
use kiln_protocol::{
    BuildLog, BuildOutcome, BuildParked, BuildRequest, BuildResult, BuildStarted,
    BuiltOutput as WireOutput, Delivery, Envelope, FailureKind, Heartbeat, Message, NarChunk,
    Route, RunningBuild, Transport, TransportError, UploadMode, MAX_NAR_CHUNK,
};
use kiln_store::cache::{BinaryCache, PathMeta};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::builder::{BuildError, BuildOptions, Builder, BuilderConfig};
use crate::outputs::BuiltOutput;
use crate::run::CancelToken;

/// Settings of a builder worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Names this worker in events and heartbeats.
    pub builder_id: String,
    /// Systems it builds for (`x86_64-linux`).
    pub systems: Vec<String>,
    /// `system-features` it offers.
    pub features: Vec<String>,
    /// Where realised inputs and finished outputs are kept on the host.
    pub cache_dir: PathBuf,
    /// Settings of the sandboxed builder (max-jobs, scratch directory…).
    pub builder: BuilderConfig,
    /// Downloads at once when realising inputs.
    pub fetch_concurrency: usize,
    /// How often a heartbeat is published.
    pub heartbeat_every: Duration,
    /// On shutdown, how long running builds may take to finish before they
    /// are stopped and handed back (dispatched again elsewhere).
    pub drain_timeout: Duration,
    /// The machine's name, for heartbeats.
    pub host: String,
    /// Where outputs go: into the store directly, or streamed back to the
    /// coordinator (a builder without store credentials).
    pub upload: UploadMode,
    /// Tries at fetching a build's inputs before the request is set aside
    /// among the dead letters (the store could not give them: it is down,
    /// or has not got them yet), for an operator to replay.
    pub input_attempts: u32,
    /// Set aside (rather than fail) a build whose inputs stay unavailable
    /// after `input_attempts`: on a farm, where an operator can replay
    /// it; the embedded mode has no one to, so there it fails.
    pub park_unavailable_inputs: bool,
}

impl WorkerConfig {
    /// A worker for this machine's system with `cache_dir` as its home.
    pub fn new(builder_id: impl Into<String>, cache_dir: impl Into<PathBuf>) -> Self {
        let cache_dir = cache_dir.into();
        WorkerConfig {
            builder_id: builder_id.into(),
            systems: vec![host_system().to_string()],
            features: Vec::new(),
            builder: BuilderConfig::new(cache_dir.join(".scratch")),
            cache_dir,
            fetch_concurrency: 8,
            heartbeat_every: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(3600),
            host: host_name(),
            upload: UploadMode::Direct,
            input_attempts: 3,
            park_unavailable_inputs: false,
        }
    }
}

/// This machine's host name (empty when it cannot be read).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The one-minute load average, or 0 when unknown.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|l| l.parse().ok()))
        .unwrap_or(0.0)
}

/// Cancellations remembered for builds not seen yet.
const CANCELLED_REMEMBERED: usize = 4096;

/// The Nix system name of this machine.
pub fn host_system() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86_64-linux",
        "aarch64" => "aarch64-linux",
        "x86" => "i686-linux",
        other => other,
    }
}

/// Why the worker stopped.
#[derive(Debug, Error)]
pub enum WorkerError {
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Lines per [`BuildLog`] message, and the longest a line waits to be sent.
const LOG_BATCH: usize = 64;
const LOG_FLUSH: Duration = Duration::from_millis(100);
/// Log lines kept for a failure report.
const LOG_TAIL: usize = 25;

struct Shared {
    transport: Arc<dyn Transport>,
    cache: Arc<BinaryCache>,
    builder: Builder,
    config: WorkerConfig,
    /// Running builds: their cancel token and derivation.
    running: Mutex<BTreeMap<uuid::Uuid, (CancelToken, String)>>,
    /// Cancellations of builds not (yet) running, oldest first, bounded.
    cancelled: Mutex<std::collections::VecDeque<uuid::Uuid>>,
    /// Set when shutting down after the drain timeout: stopped builds are
    /// handed back (no result), not reported as failed.
    handing_back: std::sync::atomic::AtomicBool,
    /// Set once shutdown began (heartbeats say so).
    stopping: std::sync::atomic::AtomicBool,
}

/// Runs the worker until `shutdown` is cancelled; running builds are
/// cancelled then.
pub async fn run(
    transport: Arc<dyn Transport>,
    cache: Arc<BinaryCache>,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let shared = Arc::new(Shared {
        builder: Builder::new(config.builder.clone()),
        transport: transport.clone(),
        cache,
        config,
        running: Mutex::new(BTreeMap::new()),
        cancelled: Mutex::new(Default::default()),
        handing_back: Default::default(),
        stopping: Default::default(),
    });
    let prefetch = u16::try_from(shared.config.builder.max_jobs.max(1)).unwrap_or(u16::MAX);
    let (tx, mut rx) = mpsc::channel::<Delivery>(1);
    let mut feeders = Vec::new();
    for system in &shared.config.systems {
        for route in Route::build_routes_for(system, &shared.config.features) {
            let mut sub = transport.subscribe_with(&route, prefetch).await?;
            let tx = tx.clone();
            feeders.push(tokio::spawn(async move {
                loop {
                    match sub.next().await {
                        Ok(Some(d)) => {
                            if tx.send(d).await.is_err() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => warn!(error = %e, "dropped a malformed build request"),
                    }
                }
            }));
        }
    }
    drop(tx);
    // A request is taken only when a build slot is free, so queued work
    // stays on the queue (in priority order, for other builders) and
    // `BuildStarted` means a slot is building it.
    let slots = Arc::new(tokio::sync::Semaphore::new(
        shared.config.builder.max_jobs.max(1),
    ));
    let mut control = transport.subscribe(&Route::BuildControl).await?;
    let mut heartbeat = tokio::time::interval(shared.config.heartbeat_every);
    let mut tasks = tokio::task::JoinSet::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = heartbeat.tick() => {
                shared.heartbeat().await;
                metrics::gauge!("kiln_builder_running_builds").set(shared.running.lock().unwrap().len() as f64);
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            c = control.next() => match c {
                Ok(Some(d)) => {
                    if let Message::CancelBuild { build_id, .. } = d.envelope.body {
                        shared.cancel(build_id);
                    }
                }
                Ok(None) => break Err(TransportError::Closed { route: Route::BuildControl.name() }.into()),
                Err(e) => warn!(error = %e, "dropped a malformed control message"),
            },
            (permit, d) = async {
                let permit = slots.clone().acquire_owned().await;
                (permit, rx.recv().await)
            } => {
                let Some(d) = d else { break Ok(()) };
                let Ok(permit) = permit else { break Ok(()) };
                let Message::BuildRequest(req) = d.envelope.body.clone() else {
                    debug!("ignored a message that is not a build request");
                    let _ = d.ack().await;
                    continue;
                };
                let shared = shared.clone();
                tasks.spawn(async move {
                    shared.handle(req, d).await;
                    drop(permit);
                });
            }
        }
    };
    // Shutting down: take no more work (prefetched requests go back to
    // their queues with the consumers), let running builds finish within
    // the drain timeout, then stop the rest and hand them back.
    shared
        .stopping
        .store(true, std::sync::atomic::Ordering::Relaxed);
    for f in feeders {
        f.abort();
    }
    drop(rx);
    shared.heartbeat().await;
    let drained = tokio::time::timeout(shared.config.drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("drain timeout: handing running builds back");
        shared
            .handing_back
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for (token, _) in shared.running.lock().unwrap().values() {
            token.cancel();
        }
        while tasks.join_next().await.is_some() {}
    }
    shared.heartbeat().await;
    result
}

impl Shared {
    fn cancel(&self, build_id: uuid::Uuid) {
        if let Some((t, _)) = self.running.lock().unwrap().get(&build_id) {
            t.cancel();
            return;
        }
        let mut c = self.cancelled.lock().unwrap();
        c.push_back(build_id);
        while c.len() > CANCELLED_REMEMBERED {
            c.pop_front();
        }
    }

    async fn heartbeat(&self) {
        let stopping = self.stopping.load(std::sync::atomic::Ordering::Relaxed);
        let running_builds: Vec<RunningBuild> = self
            .running
            .lock()
            .unwrap()
            .iter()
            .map(|(id, (_, drv))| RunningBuild {
                build_id: *id,
                drv_path: drv.clone(),
            })
            .collect();
        let hb = Heartbeat {
            builder_id: self.config.builder_id.clone(),
            systems: self.config.systems.clone(),
            features: self.config.features.clone(),
            max_jobs: self.config.builder.max_jobs as u32,
            running: running_builds.len() as u32,
            host: self.config.host.clone(),
            running_builds,
            load: load_average(),
            interval_ms: self.config.heartbeat_every.as_millis() as u64,
            stopping,
        };
        let _ = self
            .transport
            .publish(
                &Route::Heartbeats,
                &Envelope::new(Message::Heartbeat(hb)),
                0,
            )
            .await;
    }

    async fn publish(&self, body: Message) {
        if let Err(e) = self
            .transport
            .publish(&Route::BuildEvents, &Envelope::new(body), 0)
            .await
        {
            warn!(error = %e, "could not report to the coordinator");
        }
    }

    async fn handle(&self, req: BuildRequest, delivery: Delivery) {
        let started = Instant::now();
        let token = CancelToken::new();
        {
            let mut c = self.cancelled.lock().unwrap();
            if let Some(i) = c.iter().position(|id| *id == req.build_id) {
                c.remove(i);
                token.cancel();
            }
        }
        self.running
            .lock()
            .unwrap()
            .insert(req.build_id, (token.clone(), req.drv_path.clone()));
        let mut delivery = Some(delivery);
        let built = self.build(&req, token.clone(), &mut delivery).await;
        self.running.lock().unwrap().remove(&req.build_id);
        let Some((outcome, log)) = built else {
            // Parked among the dead letters: no result.
            return;
        };
        if token.is_cancelled() && self.handing_back.load(std::sync::atomic::Ordering::Relaxed) {
            // Handed back on shutdown: no result; the coordinator
            // dispatches it again when this builder's lease ends.
            if let Some(d) = delivery {
                let _ = d.nack(true).await;
            }
            return;
        }
        if let Ok(drv) = StorePath::from_absolute_path(&req.drv_path) {
            // A builder without store credentials keeps no log in the
            // store; its lines reached the coordinator as they came.
            if let (Some(log), UploadMode::Direct) = (log, self.config.upload) {
                if let Err(e) = self.cache.put_log(&drv, Bytes::from(log)).await {
                    warn!(drv = %req.drv_path, error = %e, "could not store the build log");
                }
            }
        }
        let result = match &outcome {
            BuildOutcome::Built { .. } => "built",
            BuildOutcome::Failed { .. } => "failed",
        };
        metrics::counter!("kiln_builder_builds_total", "result" => result).increment(1);
        metrics::histogram!("kiln_builder_build_seconds").record(started.elapsed().as_secs_f64());
        self.publish(Message::BuildResult(BuildResult {
            build_id: req.build_id,
            drv_path: req.drv_path.clone(),
            builder_id: self.config.builder_id.clone(),
            duration_ms: started.elapsed().as_millis() as u64,
            outcome,
        }))
        .await;
        if let Some(d) = delivery {
            if let Err(e) = d.ack().await {
                warn!(error = %e, "could not acknowledge a build request");
            }
        }
    }

    /// Outputs of `drv` that are all in the store already (another builder
    /// built them: a request dispatched twice), as a build result would
    /// list them; `None` when any is missing.
    async fn already_built(&self, drv: &Derivation) -> Option<Vec<WireOutput>> {
        let mut outs = Vec::new();
        for (name, out) in &drv.outputs {
            let path = out.path()?;
            let info = self.cache.path_info(path).await.ok()??;
            outs.push(WireOutput {
                name: name.clone(),
                path: path.to_absolute_path(),
                nar_hash: info.nar_hash.to_sri(),
                nar_size: info.nar_size,
                references: info
                    .references
                    .iter()
                    .map(|r| r.to_absolute_path())
                    .collect(),
            });
        }
        Some(outs)
    }

    /// Realises inputs, builds, uploads; returns the outcome and the log.
    /// The request is acknowledged (`delivery` taken) once the build
    /// starts: from then on the heartbeats hold its lease, so a build may
    /// run longer than the broker's consumer timeout.
    /// `None` when the request was parked among the dead letters instead
    /// (see [`Shared::park`]).
    async fn build(
        &self,
        req: &BuildRequest,
        token: CancelToken,
        delivery: &mut Option<Delivery>,
    ) -> Option<(BuildOutcome, Option<Vec<u8>>)> {
        let fail = |kind, message: String| BuildOutcome::Failed {
            kind,
            message,
            log_tail: Vec::new(),
        };
        let drv = match Derivation::parse_aterm(req.aterm.as_bytes()) {
            Ok(d) => d,
            Err(e) => {
                return Some((
                    fail(
                        FailureKind::Internal,
                        format!("derivation '{}': {e}", req.drv_path),
                    ),
                    Some(Vec::new()),
                ))
            }
        };
        if let Some(outputs) = self.already_built(&drv).await {
            // No log: the build that made them kept its own.
            debug!(drv = %req.drv_path, "outputs already in the store; not building again");
            return Some((BuildOutcome::Built { outputs }, None));
        }
        let fetching = std::time::Instant::now();
        let mut attempt = 1;
        let inputs = loop {
            match self.realise_inputs(req).await {
                Ok(i) => break i,
                Err(message) if attempt >= self.config.input_attempts.max(1) => {
                    let park = self.config.park_unavailable_inputs && delivery.is_some();
                    return match delivery.take_if(|_| park) {
                        Some(d) => {
                            self.park(req, d, &message).await;
                            None
                        }
                        None => Some((fail(FailureKind::Store, message), Some(Vec::new()))),
                    };
                }
                Err(message) => {
                    warn!(drv = %req.drv_path, attempt, error = %message, "fetching the inputs failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1 << (attempt - 1).min(5))).await;
                    attempt += 1;
                }
            }
        };
        debug!(
            drv = %req.drv_path,
            inputs = inputs.len(),
            ms = fetching.elapsed().as_secs_f64() * 1e3,
            "inputs realised"
        );
        self.publish(Message::BuildStarted(BuildStarted {
            build_id: req.build_id,
            drv_path: req.drv_path.clone(),
            builder_id: self.config.builder_id.clone(),
        }))
        .await;
        if let Some(d) = delivery.take() {
            if let Err(e) = d.ack().await {
                warn!(error = %e, "could not acknowledge a started build");
            }
        }

        let out_dir = self
            .config
            .cache_dir
            .join(".outputs")
            .join(req.build_id.to_string());
        let (lines_tx, lines_rx) = mpsc::channel(1024);
        let forward = tokio::spawn(forward_log(
            self.transport.clone(),
            req.build_id,
            req.drv_path.clone(),
            lines_rx,
        ));
        let options = BuildOptions {
            out_dir: out_dir.clone(),
            timeout: req.timeout_secs.map(Duration::from_secs),
            max_silent_time: req.max_silent_secs.map(Duration::from_secs),
            log_lines: Some(lines_tx),
            cancel: Some(token),
        };
        let result = self
            .builder
            .build(&req.drv_path, &drv, &inputs, &options)
            .await;
        drop(options);
        let (log, tail) = forward.await.unwrap_or_default();
        let outcome = match result {
            Ok(built) => match self.upload(req, &drv, built.outputs).await {
                Ok(outputs) => BuildOutcome::Built { outputs },
                Err(message) => fail(FailureKind::Store, message),
            },
            Err(e) => BuildOutcome::Failed {
                kind: failure_kind(&e),
                message: error_chain(&e),
                log_tail: tail,
            },
        };
        let _ = tokio::fs::remove_dir_all(&out_dir).await;
        Some((outcome, Some(log)))
    }

    /// Sets a request whose inputs the store could not give aside among
    /// the dead letters, with the reason, and tells the coordinator: the
    /// derivation is not at fault, so the build is not failed; an operator
    /// replays it (`kiln dlq replay`) once the store is whole.
    async fn park(&self, req: &BuildRequest, delivery: Delivery, reason: &str) {
        let route = Route::build(&req.system, &req.required_features);
        let reason = format!("inputs unavailable: {reason}");
        warn!(drv = %req.drv_path, %reason, "setting the build request aside among the dead letters");
        match self
            .transport
            .dead_letter(&route, &delivery.envelope, &reason)
            .await
        {
            Ok(()) => {
                let _ = delivery.ack().await;
            }
            Err(e) => {
                // Not set aside: back to its queue for another builder.
                warn!(error = %e, "could not dead-letter the request; requeueing it");
                let _ = delivery.nack(true).await;
                return;
            }
        }
        metrics::counter!("kiln_builder_builds_total", "result" => "parked").increment(1);
        self.publish(Message::BuildParked(BuildParked {
            build_id: req.build_id,
            drv_path: req.drv_path.clone(),
            builder_id: self.config.builder_id.clone(),
            reason,
        }))
        .await;
    }

    /// Fetches the closure of the request's inputs into the cache directory.
    async fn realise_inputs(
        &self,
        req: &BuildRequest,
    ) -> Result<BTreeMap<String, PathBuf>, String> {
        let roots: Vec<StorePath> = req
            .input_paths
            .iter()
            .map(|p| StorePath::from_absolute_path(p).map_err(|e| format!("input '{p}': {e}")))
            .collect::<Result<_, _>>()?;
        if roots.is_empty() {
            return Ok(BTreeMap::new());
        }
        let looking = std::time::Instant::now();
        let closure = self.cache.closure(&roots).await.map_err(|e| {
            format!(
                "cannot find the inputs of '{}' in the store: {e}",
                req.drv_path
            )
        })?;
        debug!(
            drv = %req.drv_path,
            paths = closure.len(),
            ms = looking.elapsed().as_secs_f64() * 1e3,
            "input closure looked up"
        );
        let paths: Vec<StorePath> = closure.iter().map(|i| i.store_path.clone()).collect();
        kiln_store::realise::realise_closure(
            &self.cache,
            closure,
            &self.config.cache_dir,
            self.config.fetch_concurrency,
        )
        .await
        .map_err(|e| format!("cannot fetch the inputs of '{}': {e}", req.drv_path))?;
        Ok(paths
            .into_iter()
            .map(|p| {
                (
                    p.to_absolute_path(),
                    self.config.cache_dir.join(p.base_name()),
                )
            })
            .collect())
    }

    /// Stores each output (those it refers to first) and keeps a copy in the
    /// cache directory for later builds.
    async fn upload(
        &self,
        req: &BuildRequest,
        drv: &Derivation,
        outputs: BTreeMap<String, BuiltOutput>,
    ) -> Result<Vec<WireOutput>, String> {
        let deriver = StorePath::from_absolute_path(&req.drv_path).ok();
        let mut wire = Vec::new();
        for (name, out) in order_outputs(&outputs) {
            let path = StorePath::from_absolute_path(&out.path).map_err(|e| e.to_string())?;
            let references: BTreeSet<StorePath> = out
                .references
                .iter()
                .filter_map(|r| StorePath::from_absolute_path(r).ok())
                .collect();
            let ca = match drv.outputs.get(&name) {
                Some(DerivationOutput::Fixed { hash, .. }) => Some(ContentAddress::Fixed {
                    method: hash.method,
                    hash: hash.hash.clone(),
                }),
                _ => None,
            };
            let meta = PathMeta {
                path: path.clone(),
                references,
                deriver: deriver.clone(),
                system: Some(drv.system.clone()),
                ca,
                sigs: BTreeSet::new(),
                expected: Some((out.nar_hash.clone(), out.nar_size)),
            };
            let (reader, writer) = tokio::io::duplex(1 << 20);
            let location = out.location.clone();
            let dump = tokio::task::spawn_blocking(move || {
                let bridge = tokio_util::io::SyncIoBridge::new(writer);
                kiln_nix::nar::write_path(&location, bridge).map(|_| ())
            });
            let uploading = Instant::now();
            let stored = match self.config.upload {
                // The store keeps the first complete copy of a path: when
                // another writer won, its narinfo is the truth to report.
                UploadMode::Direct => self.cache.add_path(meta, reader).await.map(Some),
                UploadMode::ViaCoordinator => self
                    .stream_back(req.build_id, &name, reader)
                    .await
                    .map(|()| None)
                    .map_err(|e| kiln_store::StoreError::Format {
                        context: format!("streaming output '{name}' to the coordinator"),
                        message: e,
                    }),
            };
            metrics::histogram!("kiln_store_upload_seconds")
                .record(uploading.elapsed().as_secs_f64());
            let dumped = dump.await.map_err(|e| e.to_string())?;
            // The store's error first: it is the cause when both fail.
            let stored = stored
                .map_err(|e| format!("storing output '{name}' of '{}': {e}", req.drv_path))?;
            dumped
                .map_err(|e| format!("serialising output '{name}' of '{}': {e}", req.drv_path))?;
            let (nar_hash, nar_size) = match &stored {
                Some(info) => (info.nar_hash.to_sri(), info.nar_size),
                None => (out.nar_hash.to_sri(), out.nar_size),
            };
            let keep = self.config.cache_dir.join(path.base_name());
            if tokio::fs::symlink_metadata(&keep).await.is_err() {
                let _ = tokio::fs::rename(&out.location, &keep).await;
            }
            wire.push(WireOutput {
                name,
                path: out.path.clone(),
                nar_hash,
                nar_size,
                references: out.references.iter().cloned().collect(),
            });
        }
        Ok(wire)
    }
}

impl Shared {
    /// Sends an output's NAR to the coordinator as sequenced chunks, the
    /// last one marked; each publish is confirmed before the next.
    async fn stream_back(
        &self,
        build_id: uuid::Uuid,
        output: &str,
        mut reader: impl tokio::io::AsyncRead + Unpin,
    ) -> Result<(), String> {
        use tokio::io::AsyncReadExt;
        let mut offset = 0u64;
        loop {
            let mut data = Vec::with_capacity(MAX_NAR_CHUNK);
            while data.len() < MAX_NAR_CHUNK {
                let n = (&mut reader)
                    .take((MAX_NAR_CHUNK - data.len()) as u64)
                    .read_to_end(&mut data)
                    .await
                    .map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
            }
            let last = data.len() < MAX_NAR_CHUNK;
            let len = data.len() as u64;
            let chunk = Message::NarChunk(NarChunk {
                build_id,
                output: output.to_string(),
                offset,
                data,
                last,
            });
            self.transport
                .publish(&Route::BuildEvents, &Envelope::new(chunk), 0)
                .await
                .map_err(|e| e.to_string())?;
            offset += len;
            if last {
                return Ok(());
            }
        }
    }
}

/// Outputs ordered so that an output comes after the outputs it refers to.
fn order_outputs(outputs: &BTreeMap<String, BuiltOutput>) -> Vec<(String, BuiltOutput)> {
    let mut done: HashSet<String> = HashSet::new();
    let mut ordered = Vec::new();
    while ordered.len() < outputs.len() {
        let before = ordered.len();
        for (name, out) in outputs {
            if done.contains(&out.path) {
                continue;
            }
            let blocked = outputs.values().any(|o| {
                o.path != out.path && out.references.contains(&o.path) && !done.contains(&o.path)
            });
            if !blocked {
                done.insert(out.path.clone());
                ordered.push((name.clone(), out.clone()));
            }
        }
        if ordered.len() == before {
            // A cycle; the builder refuses those, so keep any order.
            for (name, out) in outputs {
                if done.insert(out.path.clone()) {
                    ordered.push((name.clone(), out.clone()));
                }
            }
        }
    }
    ordered
}

/// Batches log lines into [`BuildLog`] messages; returns the whole log and
/// its last lines.
async fn forward_log(
    transport: Arc<dyn Transport>,
    build_id: uuid::Uuid,
    drv_path: String,
    mut rx: mpsc::Receiver<String>,
) -> (Vec<u8>, Vec<String>) {
    let mut log = Vec::new();
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut batch: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(LOG_FLUSH);
    loop {
        let line = tokio::select! {
            l = rx.recv() => l,
            _ = tick.tick() => {
                flush(&transport, build_id, &drv_path, &mut batch).await;
                continue;
            }
        };
        let Some(line) = line else { break };
        log.extend_from_slice(line.as_bytes());
        log.push(b'\n');
        if tail.len() == LOG_TAIL {
            tail.pop_front();
        }
        tail.push_back(line.clone());
        batch.push(line);
        if batch.len() >= LOG_BATCH {
            flush(&transport, build_id, &drv_path, &mut batch).await;
        }
    }
    flush(&transport, build_id, &drv_path, &mut batch).await;
    (log, tail.into_iter().collect())
}

async fn flush(
    transport: &Arc<dyn Transport>,
    build_id: uuid::Uuid,
    drv_path: &str,
    batch: &mut Vec<String>,
) {
    if batch.is_empty() {
        return;
    }
    let msg = Message::BuildLog(BuildLog {
        build_id,
        drv_path: drv_path.to_string(),
        lines: std::mem::take(batch),
    });
    let _ = transport
        .publish(&Route::BuildEvents, &Envelope::new(msg), 0)
        .await;
}

fn failure_kind(e: &BuildError) -> FailureKind {
    use crate::outputs::OutputError as O;
    match e {
        BuildError::BuilderFailed { .. } | BuildError::LogLimit { .. } => FailureKind::BuilderExit,
        BuildError::Timeout { .. } => FailureKind::Timeout,
        BuildError::Silent { .. } => FailureKind::SilentTimeout,
        BuildError::Cancelled { .. } => FailureKind::Cancelled,
        BuildError::Env { .. } | BuildError::Recipe { .. } => FailureKind::Unsupported,
        BuildError::Rootfs { .. } | BuildError::Sandbox { .. } | BuildError::User { .. } => {
            FailureKind::Sandbox
        }
        BuildError::Output(o) => match o {
            O::HashMismatch { .. } => FailureKind::HashMismatch,
            O::Cycle { .. } => FailureKind::ReferenceCycle,
            O::Missing { .. } => FailureKind::OutputMissing,
            _ => FailureKind::Internal,
        },
        BuildError::Io { .. } => FailureKind::Internal,
    }
}

/// The error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
