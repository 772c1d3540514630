//! The coordinator service: runs the [`Graph`] against a transport and a
//! store, until its shutdown token is cancelled.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kiln_protocol::{
    BuildOutcome, BuildRequest, Delivery, Envelope, EvalRoot, Event, IfdResponse, JobEvent, JobId,
    JobSpec, JobState, JobStatus, Message, Route, StatusReply, Transport, TransportError,
    UploadMode,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::drv::DrvInfo;
use crate::graph::{Effect, Graph};
use crate::leases::Leases;

/// The coordinator's view of the store: which output paths are valid.
#[async_trait]
pub trait OutputStore: Send + Sync + 'static {
    /// For each absolute store path, whether it is in the store.
    async fn valid_paths(&self, paths: &[String]) -> Result<Vec<bool>, String>;

    /// Stores the NAR in `file` as `output` of the derivation `drv` (an
    /// output streamed back by a builder without store credentials); the
    /// store refuses it unless its hash and size are `output`'s.
    async fn add_nar(
        &self,
        drv: &crate::DrvInfo,
        output: &kiln_protocol::BuiltOutput,
        file: &std::path::Path,
    ) -> Result<(), String>;
}

/// Kiln's binary cache answers existence checks from its narinfos, in one
/// batched request (with its short positive cache).
#[async_trait]
impl OutputStore for kiln_store::cache::BinaryCache {
    async fn valid_paths(&self, paths: &[String]) -> Result<Vec<bool>, String> {
        let mut hash_parts = Vec::with_capacity(paths.len());
        for p in paths {
            let sp = kiln_nix::store_path::StorePath::from_absolute_path(p)
                .map_err(|e| format!("'{p}': {e}"))?;
            hash_parts.push(sp.hash_part());
        }
        self.has_paths(&hash_parts).await.map_err(|e| e.to_string())
    }

    async fn add_nar(
        &self,
        drv: &crate::DrvInfo,
        output: &kiln_protocol::BuiltOutput,
        file: &std::path::Path,
    ) -> Result<(), String> {
        use kiln_nix::derivation::{Derivation, DerivationOutput};
        use kiln_nix::narinfo::ContentAddress;
        use kiln_nix::store_path::StorePath;
        let parse = |p: &str| StorePath::from_absolute_path(p).map_err(|e| format!("'{p}': {e}"));
        let path = parse(&output.path)?;
        let references = output
            .references
            .iter()
            .map(|r| parse(r))
            .collect::<Result<_, _>>()?;
        let parsed = Derivation::parse_aterm(drv.aterm.as_bytes()).map_err(|e| e.to_string())?;
        let ca = match parsed.outputs.get(&output.name) {
            Some(DerivationOutput::Fixed { hash, .. }) => Some(ContentAddress::Fixed {
                method: hash.method,
                hash: hash.hash.clone(),
            }),
            _ => None,
        };
        let nar_hash = kiln_nix::hash::Hash::parse_any_prefixed(&output.nar_hash)
            .map_err(|e| format!("narHash of '{}': {e}", output.path))?;
        let meta = kiln_store::cache::PathMeta {
            path,
            references,
            deriver: Some(parse(&drv.drv_path)?),
            system: Some(drv.system.clone()),
            ca,
            sigs: Default::default(),
            expected: Some((nar_hash, output.nar_size)),
        };
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| format!("opening '{}': {e}", file.display()))?;
        self.add_path(meta, f)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Settings of the coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// How builders return outputs.
    pub upload: UploadMode,
    /// How long a positive store answer is trusted.
    pub positive_cache_ttl: Duration,
    /// Derivations checked against the store in one request.
    pub check_batch: usize,
    /// Store checks in flight at once. Derivations arriving meanwhile wait
    /// and go out together in the next request, so a fast evaluator makes
    /// few large requests instead of one per derivation.
    pub check_concurrency: usize,
    /// Name of the transport record holding the active jobs, from which a
    /// coordinator that takes over resumes them.
    pub state_name: String,
    /// Where outputs streamed back by builders are received; `None`
    /// refuses them (a coordinator without store write access).
    pub nar_dir: Option<std::path::PathBuf>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            upload: UploadMode::Direct,
            positive_cache_ttl: Duration::from_secs(30),
            check_batch: 512,
            check_concurrency: 2,
            state_name: "coordinator-jobs".into(),
            nar_dir: None,
        }
    }
}

/// Why the coordinator stopped.
#[derive(Debug, Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("another coordinator took over the leadership")]
    LeadershipLost,
}

/// A job as recorded for the next leader: enough to evaluate it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ActiveJob {
    spec: JobSpec,
}

/// Finished jobs remembered, so a redelivered submission is not rerun.
const FINISHED_REMEMBERED: usize = 10_000;

struct JobEntry {
    accepted: Instant,
    /// When it was accepted, in milliseconds since the Unix epoch.
    accepted_at_ms: u64,
    seq: u64,
    eval_done: Option<Option<String>>,
    roots: Vec<EvalRoot>,
    cancelled: bool,
    /// `CancelEval` was sent for the job.
    eval_stopped: bool,
    options: kiln_protocol::JobOptions,
    /// The job as submitted, with the current evaluation attempt.
    spec: JobSpec,
}

struct Coordinator {
    transport: Arc<dyn Transport>,
    store: Arc<dyn OutputStore>,
    config: CoordinatorConfig,
    graph: Graph,
    jobs: HashMap<JobId, JobEntry>,
    leases: Leases,
    /// The transport link the leases were last checked on.
    link: Option<u64>,
    nars: Option<crate::nar_sink::NarSink>,
    /// Build queues published to, recorded for operators.
    build_queues: std::collections::BTreeSet<String>,
    finished: std::collections::VecDeque<JobId>,
    finished_set: HashSet<JobId>,
    /// The last finished jobs as they ended, newest last (`kiln jobs`).
    recent: std::collections::VecDeque<JobStatus>,
    to_check: Vec<String>,
    checks_in_flight: usize,
    present_cache: HashMap<String, Instant>,
    checks_tx: mpsc::UnboundedSender<Vec<(String, Result<bool, String>)>>,
}

/// Runs the coordinator until `shutdown` is cancelled.
///
/// It first waits for the leadership (several coordinators may run; one
/// leads, the others stand by), then resumes the jobs the previous leader
/// left active, and serves until shut down or until the leadership is lost.
pub async fn run(
    transport: Arc<dyn Transport>,
    store: Arc<dyn OutputStore>,
    config: CoordinatorConfig,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    // Heartbeats are followed while standing by, so a new leader knows at
    // once which builds already run.
    let mut heartbeats = transport.subscribe(&Route::Heartbeats).await?;
    let (checks_tx, mut checks_rx) = mpsc::unbounded_channel();
    let mut c = Coordinator {
        transport: transport.clone(),
        store,
        config,
        graph: Graph::new(),
        jobs: HashMap::new(),
        leases: Leases::default(),
        link: None,
        nars: None,
        build_queues: Default::default(),
        finished: Default::default(),
        finished_set: HashSet::new(),
        recent: Default::default(),
        to_check: Vec::new(),
        checks_in_flight: 0,
        present_cache: HashMap::new(),
        checks_tx,
    };
    let mut leadership = loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            l = transport.lead("coordinator") => break l?,
            h = heartbeats.next() => {
                if let Ok(Some(d)) = h {
                    if let Message::Heartbeat(hb) = d.envelope.body { c.leases.heartbeat(hb) }
                }
            }
        }
    };
    info!("coordinator leading");
    if let Some(dir) = &c.config.nar_dir {
        match crate::nar_sink::NarSink::new(dir) {
            Ok(sink) => c.nars = Some(sink),
            Err(e) => warn!(dir = %dir.display(), error = %e, "cannot receive streamed outputs"),
        }
    }
    let mut jobs_sub = transport.subscribe(&Route::Jobs).await?;
    let mut drvs_sub = transport.subscribe(&Route::Derivations).await?;
    let mut ifd_sub = transport.subscribe(&Route::Ifd).await?;
    let mut events_sub = transport.subscribe(&Route::BuildEvents).await?;
    c.resume().await?;
    let mut lease_check = tokio::time::interval(Duration::from_millis(500));
    lease_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = leadership.lost() => return Err(CoordinatorError::LeadershipLost),
            d = ifd_sub.next() => c.delivered(d).await?,
            Some(results) = checks_rx.recv() => {
                c.checks_in_flight -= 1;
                for (drv, res) in results {
                    let fx = match res {
                        Ok(present) => c.graph.store_checked(&drv, present),
                        Err(e) => {
                            warn!(drv, error = %e, "store check failed; building");
                            c.graph.store_checked(&drv, false)
                        }
                    };
                    c.apply(fx).await?;
                }
            }
            h = heartbeats.next() => {
                if let Ok(Some(d)) = h {
                    if let Message::Heartbeat(hb) = d.envelope.body { c.leases.heartbeat(hb) }
                }
            }
            d = events_sub.next() => c.delivered(d).await?,
            d = drvs_sub.next() => c.delivered(d).await?,
            d = jobs_sub.next() => c.delivered(d).await?,
            _ = lease_check.tick() => {
                c.expire_leases().await?;
                metrics::gauge!("kiln_builders_connected").set(c.leases.live_builders() as f64);
                metrics::gauge!("kiln_jobs_active").set(c.jobs.len() as f64);
            }
        }
        c.flush_checks();
        c.stop_evaluations().await?;
        c.finish_jobs().await?;
    }
}

/// What a subscription gave: a delivery, the end, or a malformed message.
type Next = Result<Option<Delivery>, TransportError>;

impl Coordinator {
    async fn delivered(&mut self, next: Next) -> Result<(), CoordinatorError> {
        let delivery = match next {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Err(TransportError::Closed {
                    route: "coordinator inputs".into(),
                }
                .into())
            }
            Err(TransportError::Codec { route, source }) => {
                warn!(%route, error = %source, "dropped a malformed message");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let body = delivery.envelope.body.clone();
        self.handle(body).await?;
        // A failed acknowledgement (the connection dropped meanwhile) means
        // the message comes again; handlers are idempotent.
        if let Err(e) = delivery.ack().await {
            warn!(error = %e, "could not acknowledge a message");
        }
        Ok(())
    }

    async fn handle(&mut self, msg: Message) -> Result<(), CoordinatorError> {
        if let Message::EvalFinished(f) = &msg {
            if self.current_attempt(f.job_id, f.attempt) {
                if let Some(j) = self.jobs.get(&f.job_id).filter(|j| j.eval_done.is_none()) {
                    metrics::histogram!("kiln_evaluation_seconds")
                        .record(j.accepted.elapsed().as_secs_f64());
                }
            }
        }
        match msg {
            Message::SubmitJob(spec) => self.submit(spec).await?,
            Message::CancelJob { job_id } => {
                if let Some(j) = self.jobs.get_mut(&job_id) {
                    j.cancelled = true;
                    if j.eval_done.is_none() {
                        j.eval_done = Some(Some("job cancelled".into()));
                    }
                }
                let fx = self.graph.cancel_job(job_id);
                self.apply(fx).await?;
            }
            Message::Derivation(d) => {
                if !self.jobs.contains_key(&d.job_id) {
                    debug!(job = %d.job_id, "derivation for an unknown job");
                    return Ok(());
                }
                match DrvInfo::parse(&d.drv_path, &d.aterm) {
                    Ok(info) => {
                        let fx = self.graph.add_derivation(d.job_id, info);
                        self.apply(fx).await?;
                    }
                    Err(e) => self.eval_failed(d.job_id, e.to_string()).await?,
                }
            }
            Message::EvalRoot(root) => {
                if !self.current_attempt(root.job_id, root.attempt) {
                    return Ok(());
                }
                if let Some(j) = self.jobs.get_mut(&root.job_id) {
                    if j.roots
                        .iter()
                        .any(|r| r.attr_path == root.attr_path && r.drv_path == root.drv_path)
                    {
                        return Ok(());
                    }
                    j.roots.push(root.clone());
                    let ev = Event::Root {
                        attr_path: root.attr_path,
                        drv_path: root.drv_path,
                    };
                    self.emit(root.job_id, ev).await?;
                }
            }
            // The end of an evaluation this coordinator stopped: expected,
            // not an evaluation error of the job.
            Message::EvalFinished(f) if !self.current_attempt(f.job_id, f.attempt) => {
                debug!(job = %f.job_id, "end of an older evaluation attempt");
            }
            Message::EvalFinished(f)
                if self.jobs.get(&f.job_id).is_some_and(|j| j.eval_stopped) =>
            {
                if let Some(j) = self.jobs.get_mut(&f.job_id) {
                    j.eval_done.get_or_insert(None);
                }
            }
            Message::EvalFinished(f) => match f.error {
                None => {
                    match self.jobs.get_mut(&f.job_id) {
                        Some(j) if j.eval_done.is_none() => j.eval_done = Some(None),
                        _ => return Ok(()),
                    }
                    self.emit(f.job_id, Event::EvalFinished { error: None })
                        .await?;
                }
                Some(e) => self.eval_failed(f.job_id, e).await?,
            },
            Message::IfdRequest(r) => match DrvInfo::parse(&r.drv_path, &r.aterm) {
                Ok(info) => {
                    if !self.jobs.contains_key(&r.job_id) {
                        return Ok(());
                    }
                    let fx = self.graph.ifd_request(r.job_id, r.request_id, info);
                    self.apply(fx).await?;
                }
                Err(e) => {
                    let resp = IfdResponse {
                        job_id: r.job_id,
                        request_id: r.request_id,
                        result: Err(e.to_string()),
                    };
                    let route = self.reply_route(r.job_id);
                    self.publish(&route, Message::IfdResponse(resp), 9).await?;
                }
            },
            Message::BuildStarted(s) => {
                // Only the build a derivation waits for counts; a stale
                // attempt (redispatched meanwhile) is ignored.
                if let Some(wait) = self.leases.queue_wait(s.build_id) {
                    metrics::histogram!("kiln_build_queue_wait_seconds").record(wait.as_secs_f64());
                }
                if self.leases.started(s.build_id, &s.builder_id)
                    && self.graph.is_current_build(&s.drv_path, s.build_id)
                {
                    let fx = self.graph.started(&s.drv_path, &s.builder_id);
                    self.apply(fx).await?;
                }
            }
            Message::BuildParked(p) => {
                if self.leases.parked(p.build_id, p.reason.clone())
                    && self.graph.is_current_build(&p.drv_path, p.build_id)
                {
                    warn!(drv = %p.drv_path, builder = %p.builder_id, reason = %p.reason, "a build request was set aside among the dead letters");
                    // Queued again, under the same build id, once replayed.
                    self.graph.redispatched(&p.drv_path, p.build_id);
                }
            }
            Message::BuildLog(l) => {
                if self.graph.is_current_build(&l.drv_path, l.build_id) {
                    for line in l.lines {
                        let fx = self.graph.log(&l.drv_path, line);
                        self.apply(fx).await?;
                    }
                }
            }
            Message::BuildResult(mut r) => {
                self.leases.finished(r.build_id);
                metrics::histogram!("kiln_build_duration_seconds")
                    .record(r.duration_ms as f64 / 1000.0);
                let current = self.graph.is_current_build(&r.drv_path, r.build_id);
                if let BuildOutcome::Built { outputs } = &r.outcome {
                    if let Err(message) =
                        self.store_streamed(r.build_id, &r.drv_path, outputs).await
                    {
                        warn!(drv = %r.drv_path, error = %message, "a streamed output was refused");
                        r.outcome = BuildOutcome::Failed {
                            kind: kiln_protocol::FailureKind::Store,
                            message,
                            log_tail: Vec::new(),
                        };
                    }
                }
                if let Some(sink) = self.nars.as_mut() {
                    sink.discard(r.build_id);
                }
                let log_key = Some(log_key(&r.drv_path));
                let fx = match r.outcome {
                    // Outputs in the store are good whichever attempt
                    // built them.
                    BuildOutcome::Built { outputs }
                        if current || self.graph.awaiting_build(&r.drv_path) =>
                    {
                        metrics::counter!("kiln_builds_total", "result" => "built").increment(1);
                        let outs: BTreeMap<String, String> =
                            outputs.into_iter().map(|o| (o.name, o.path)).collect();
                        for p in outs.values() {
                            self.present_cache.insert(p.clone(), Instant::now());
                        }
                        self.graph.built(&r.drv_path, r.duration_ms, outs, log_key)
                    }
                    BuildOutcome::Failed {
                        kind,
                        message,
                        log_tail,
                    } if current => {
                        metrics::counter!("kiln_builds_total", "result" => "failed").increment(1);
                        self.graph.failed(
                            &r.drv_path,
                            r.duration_ms,
                            kind,
                            message,
                            log_tail,
                            log_key,
                        )
                    }
                    _ => {
                        debug!(build = %r.build_id, drv = %r.drv_path, "result of a build no longer waited for");
                        Vec::new()
                    }
                };
                self.apply(fx).await?;
            }
            Message::NarChunk(c) => match self.nars.as_mut() {
                Some(sink) => {
                    let build = c.build_id;
                    if let Err(e) = sink.chunk(c) {
                        warn!(%build, error = %e, "refused a streamed output chunk");
                    }
                }
                None => {
                    warn!(build = %c.build_id, "streamed outputs need a coordinator with store write access (--nar-dir); dropped");
                }
            },
            Message::Heartbeat(hb) => self.leases.heartbeat(hb),
            Message::StatusQuery(q) => {
                let jobs = match q.job_id {
                    Some(id) => self.status_of(id).into_iter().collect(),
                    None => {
                        let mut all: Vec<JobStatus> = self
                            .jobs
                            .keys()
                            .filter_map(|id| self.status_of(*id))
                            .collect();
                        all.sort_by_key(|j| std::cmp::Reverse(j.accepted_at_ms));
                        all.extend(self.recent.iter().rev().cloned());
                        all
                    }
                };
                let reply = StatusReply {
                    query_id: q.query_id,
                    jobs,
                };
                self.publish(&Route::Reply(q.query_id), Message::StatusReply(reply), 0)
                    .await?;
            }
            other => debug!(?other, "message not meant for the coordinator"),
        }
        Ok(())
    }

    async fn submit(&mut self, spec: JobSpec) -> Result<(), CoordinatorError> {
        let job = spec.job_id;
        if self.jobs.contains_key(&job) || self.finished_set.contains(&job) {
            debug!(%job, "submission delivered again; already known");
            return Ok(());
        }
        self.accept(spec.clone());
        // Durable before the submission is acknowledged: a coordinator
        // that takes over finds the job.
        self.save_jobs().await?;
        self.publish(&Route::Eval, Message::EvalRequest(spec), 0)
            .await
    }

    fn accept(&mut self, spec: JobSpec) {
        let job = spec.job_id;
        self.jobs.insert(
            job,
            JobEntry {
                accepted: Instant::now(),
                accepted_at_ms: unix_ms(),
                seq: 0,
                eval_done: None,
                roots: Vec::new(),
                cancelled: false,
                eval_stopped: false,
                options: spec.options.clone(),
                spec: spec.clone(),
            },
        );
        self.graph
            .add_job(job, spec.options.keep_going, spec.options.priority);
    }

    /// Records the active jobs for whichever coordinator leads next.
    async fn save_jobs(&self) -> Result<(), CoordinatorError> {
        let active: Vec<ActiveJob> = self
            .jobs
            .values()
            .map(|j| ActiveJob {
                spec: j.spec.clone(),
            })
            .collect();
        let bytes = serde_json::to_vec(&active).expect("jobs serialise");
        self.transport
            .save_state(&self.config.state_name, bytes)
            .await?;
        Ok(())
    }

    /// Takes over the jobs the previous leader left active: each is
    /// evaluated again under a new attempt (the derivations it had
    /// received are gone with it); what was built is found in the store,
    /// and builds still running are adopted from the builders' heartbeats.
    async fn resume(&mut self) -> Result<(), CoordinatorError> {
        let Some(bytes) = self.transport.load_state(&self.config.state_name).await? else {
            return Ok(());
        };
        let active: Vec<ActiveJob> = match serde_json::from_slice(&bytes) {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "the record of active jobs is unreadable; starting afresh");
                return Ok(());
            }
        };
        for ActiveJob { mut spec } in active {
            let job_id = spec.job_id;
            let attempt = uuid::Uuid::new_v4();
            spec.attempt = attempt;
            info!(job = %job_id, "resuming a job left by the previous coordinator");
            self.accept(spec.clone());
            self.publish(
                &Route::EvalControl,
                Message::CancelEval {
                    job_id,
                    keep: Some(attempt),
                },
                0,
            )
            .await?;
            self.publish(&Route::Eval, Message::EvalRequest(spec), 0)
                .await?;
        }
        self.save_jobs().await
    }

    /// Where the current evaluation of `job` waits for IFD answers.
    fn reply_route(&self, job: JobId) -> Route {
        let attempt = self
            .jobs
            .get(&job)
            .map_or(uuid::Uuid::nil(), |j| j.spec.attempt);
        Route::ifd_reply(job, attempt)
    }

    /// Whether a message of evaluation `attempt` counts for `job`.
    fn current_attempt(&self, job: JobId, attempt: uuid::Uuid) -> bool {
        self.jobs
            .get(&job)
            .is_some_and(|j| j.spec.attempt == attempt)
    }

    /// Stores the outputs of `build` that its builder streamed back,
    /// after checking each against the result's size and hash. Outputs
    /// not streamed were stored by the builder itself.
    async fn store_streamed(
        &mut self,
        build: uuid::Uuid,
        drv_path: &str,
        outputs: &[kiln_protocol::BuiltOutput],
    ) -> Result<(), String> {
        let Some(sink) = self.nars.as_mut() else {
            return Ok(());
        };
        if !sink.has_build(build) {
            return Ok(());
        }
        let Some(info) = self.graph.nodes.get(drv_path).and_then(|n| n.info.clone()) else {
            return Err(format!("'{drv_path}' is not known"));
        };
        for out in outputs {
            let received = sink.take(build, &out.name).ok_or_else(|| {
                format!(
                    "output '{}' of '{drv_path}' was not streamed whole",
                    out.name
                )
            })?;
            let result = if received.size != out.nar_size {
                Err(format!(
                    "output '{}' of '{drv_path}': received {} bytes, the builder reported {}",
                    out.name, received.size, out.nar_size
                ))
            } else if received.nar_hash.to_sri() != out.nar_hash {
                Err(format!(
                    "output '{}' of '{drv_path}': received NAR hash {}, the builder reported {}",
                    out.name,
                    received.nar_hash.to_sri(),
                    out.nar_hash
                ))
            } else {
                self.store.add_nar(&info, out, &received.file).await
            };
            let _ = std::fs::remove_file(&received.file);
            result?;
        }
        Ok(())
    }

    /// Builds whose builder fell silent go out again.
    ///
    /// A coordinator cut off from the broker hears nobody: while its link
    /// is down no builder's silence counts, and once it is back every
    /// builder has a full lease to be heard again.
    async fn expire_leases(&mut self) -> Result<(), CoordinatorError> {
        let Some(link) = self.transport.link() else {
            return Ok(());
        };
        if self.link.replace(link) != Some(link) {
            self.leases.heard_again();
            return Ok(());
        }
        for (build_id, build) in self.leases.expired() {
            if let Some(sink) = self.nars.as_mut() {
                sink.discard(build_id);
            }
            if !self.graph.is_current_build(&build.drv_path, build_id) {
                continue;
            }
            warn!(drv = %build.drv_path, builder = ?build.builder, "builder fell silent; dispatching its build again");
            metrics::counter!("kiln_builds_redispatched_total").increment(1);
            let priority = self
                .graph
                .nodes
                .get(&build.drv_path)
                .map_or(0, |n| n.priority);
            self.dispatch(&build.drv_path, priority).await?;
        }
        Ok(())
    }

    async fn eval_failed(&mut self, job: JobId, error: String) -> Result<(), CoordinatorError> {
        let Some(j) = self.jobs.get_mut(&job) else {
            return Ok(());
        };
        if j.eval_done.is_none() {
            j.eval_done = Some(Some(error.clone()));
        }
        self.emit(job, Event::EvalFinished { error: Some(error) })
            .await?;
        let fx = self.graph.cancel_job(job);
        self.apply(fx).await
    }

    async fn apply(&mut self, fx: Vec<Effect>) -> Result<(), CoordinatorError> {
        for e in fx {
            match e {
                Effect::CheckStore(drvs) => self.to_check.extend(drvs),
                Effect::Dispatch { drv_path, priority } => {
                    self.dispatch(&drv_path, priority).await?
                }
                Effect::CancelBuild { drv_path, build_id } => {
                    self.publish(
                        &Route::BuildControl,
                        Message::CancelBuild { build_id, drv_path },
                        0,
                    )
                    .await?
                }
                Effect::Emit(job, event) => self.emit(job, event).await?,
                Effect::IfdReply {
                    job_id,
                    request_id,
                    result,
                } => {
                    let resp = IfdResponse {
                        job_id,
                        request_id,
                        result,
                    };
                    let route = self.reply_route(job_id);
                    self.publish(&route, Message::IfdResponse(resp), 9).await?
                }
            }
        }
        Ok(())
    }

    async fn dispatch(&mut self, drv: &str, priority: i32) -> Result<(), CoordinatorError> {
        let Some(info) = self.graph.nodes.get(drv).and_then(|n| n.info.clone()) else {
            return Ok(());
        };
        let mut inputs: Vec<String> = info.input_srcs.clone();
        for (input, outs) in &info.input_drvs {
            if let Some(i) = self.graph.nodes.get(input).and_then(|n| n.info.as_ref()) {
                inputs.extend(outs.iter().filter_map(|o| i.outputs.get(o).cloned()));
            }
        }
        // A build a previous coordinator started still runs: adopt it.
        if let Some((build_id, builder)) = self.leases.running_elsewhere(drv) {
            if !self.leases.builds.contains_key(&build_id) {
                info!(drv, %builder, "adopting a running build");
                self.graph.dispatched(drv, build_id);
                self.leases.adopt(build_id, drv, builder.clone());
                let fx = self.graph.started(drv, &builder);
                return Box::pin(self.apply(fx)).await;
            }
        }
        let (timeout_secs, max_silent_secs) = self.limits_for(drv);
        let build_id = uuid::Uuid::new_v4();
        if !self.graph.redispatched(drv, build_id) {
            return Ok(());
        }
        self.leases.dispatched(build_id, drv);
        metrics::counter!("kiln_builds_dispatched_total").increment(1);
        let req = BuildRequest {
            build_id,
            drv_path: drv.to_string(),
            aterm: info.aterm.clone(),
            system: info.system.clone(),
            required_features: info.required_features.clone(),
            input_paths: inputs,
            priority,
            timeout_secs,
            max_silent_secs,
            upload: self.config.upload,
        };
        let height = self.graph.nodes.get(drv).map_or(0, |n| n.height);
        let route = Route::build(&info.system, &info.required_features);
        if self.build_queues.insert(route.name()) {
            let names: Vec<&String> = self.build_queues.iter().collect();
            let bytes = serde_json::to_vec(&names).expect("names serialise");
            self.transport
                .save_state(kiln_protocol::amqp::topology::BUILD_QUEUES_RECORD, bytes)
                .await?;
        }
        self.publish(
            &route,
            Message::BuildRequest(req),
            transport_priority(priority, height),
        )
        .await
    }

    /// The strictest limits among the jobs that want `drv`.
    fn limits_for(&self, drv: &str) -> (Option<u64>, Option<u64>) {
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        let Some(node) = self.graph.nodes.get(drv) else {
            return (None, None);
        };
        node.jobs
            .iter()
            .filter_map(|j| self.jobs.get(j))
            .fold((None, None), |(t, s), j| {
                (
                    min(t, j.options.timeout_secs),
                    min(s, j.options.max_silent_secs),
                )
            })
    }

    fn flush_checks(&mut self) {
        if self.to_check.is_empty() || self.checks_in_flight >= self.config.check_concurrency.max(1)
        {
            return;
        }
        let now = Instant::now();
        let ttl = self.config.positive_cache_ttl;
        self.present_cache
            .retain(|_, t| now.duration_since(*t) < ttl);
        let drvs: Vec<String> = std::mem::take(&mut self.to_check);
        for batch in drvs.chunks(self.config.check_batch.max(1)) {
            let mut query: Vec<String> = Vec::new();
            let mut per_drv: Vec<(String, Vec<String>)> = Vec::new();
            for d in batch {
                let outs: Vec<String> = self
                    .graph
                    .nodes
                    .get(d)
                    .and_then(|n| n.info.as_ref())
                    .map(|i| i.outputs.values().cloned().collect())
                    .unwrap_or_default();
                let unknown: Vec<String> = outs
                    .into_iter()
                    .filter(|o| !self.present_cache.contains_key(o))
                    .collect();
                query.extend(unknown.iter().cloned());
                per_drv.push((d.clone(), unknown));
            }
            let store = self.store.clone();
            let tx = self.checks_tx.clone();
            self.checks_in_flight += 1;
            tokio::spawn(async move {
                let asked = Instant::now();
                let answer = if query.is_empty() {
                    Ok(HashSet::new())
                } else {
                    store.valid_paths(&query).await.map(|v| {
                        metrics::histogram!("kiln_store_check_seconds")
                            .record(asked.elapsed().as_secs_f64());
                        query
                            .iter()
                            .zip(v)
                            .filter(|(_, ok)| *ok)
                            .map(|(p, _)| p.clone())
                            .collect::<HashSet<_>>()
                    })
                };
                let results = per_drv
                    .into_iter()
                    .map(|(d, outs)| {
                        let r = match &answer {
                            Ok(present) => Ok(outs.iter().all(|o| present.contains(o))),
                            Err(e) => Err(e.clone()),
                        };
                        (d, r)
                    })
                    .collect();
                let _ = tx.send(results);
            });
        }
    }

    async fn emit(&mut self, job: JobId, event: Event) -> Result<(), CoordinatorError> {
        let Some(j) = self.jobs.get_mut(&job) else {
            return Ok(());
        };
        j.seq += 1;
        let ev = JobEvent {
            job_id: job,
            seq: j.seq,
            at_ms: j.accepted.elapsed().as_millis() as u64,
            event,
        };
        self.publish(&Route::JobEvents(job), Message::JobEvent(ev), 0)
            .await
    }

    /// Tells the evaluators to stop jobs that stopped (fail-fast, cancel)
    /// while their evaluation still runs: nothing it would add gets built.
    async fn stop_evaluations(&mut self) -> Result<(), CoordinatorError> {
        let stop: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(id, j)| {
                // A cancelled job counts as evaluated already (so it can
                // finish), but its evaluator may still be running.
                (j.eval_done.is_none() || j.cancelled)
                    && !j.eval_stopped
                    && (j.cancelled || self.graph.jobs.get(id).is_some_and(|g| g.stopping))
            })
            .map(|(id, _)| *id)
            .collect();
        for job_id in stop {
            if let Some(j) = self.jobs.get_mut(&job_id) {
                j.eval_stopped = true;
            }
            self.publish(
                &Route::EvalControl,
                Message::CancelEval { job_id, keep: None },
                0,
            )
            .await?;
        }
        Ok(())
    }

    async fn finish_jobs(&mut self) -> Result<(), CoordinatorError> {
        let done: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(id, j)| j.eval_done.is_some() && self.graph.job_idle(**id))
            .map(|(id, _)| *id)
            .collect();
        for job in done {
            let summary = self.graph.summary(job);
            let failed = self.graph.jobs.get(&job).is_some_and(|j| j.failed);
            let entry = &self.jobs[&job];
            let success = !failed && !entry.cancelled && matches!(entry.eval_done, Some(None));
            let cancelled = entry.cancelled;
            let roots = entry.roots.clone();
            let state = if cancelled {
                JobState::Cancelled
            } else if success {
                JobState::Succeeded
            } else {
                JobState::Failed
            };
            if let Some(mut last) = self.status_of(job) {
                last.state = state;
                self.recent.push_back(last);
                if self.recent.len() > RECENT_REMEMBERED {
                    self.recent.pop_front();
                }
            }
            self.emit(
                job,
                Event::JobFinished {
                    success,
                    roots,
                    summary,
                    cancelled,
                },
            )
            .await?;
            self.graph.remove_job(job);
            self.jobs.remove(&job);
            self.finished.push_back(job);
            self.finished_set.insert(job);
            if self.finished.len() > FINISHED_REMEMBERED {
                if let Some(old) = self.finished.pop_front() {
                    self.finished_set.remove(&old);
                }
            }
            self.save_jobs().await?;
        }
        Ok(())
    }

    /// How a job in the graph stands now.
    fn status_of(&self, job: JobId) -> Option<JobStatus> {
        let Some(entry) = self.jobs.get(&job) else {
            return self.recent.iter().rev().find(|j| j.job_id == job).cloned();
        };
        let state = match &entry.eval_done {
            None => JobState::Evaluating,
            Some(_) => JobState::Building,
        };
        let facts = crate::status::JobFacts {
            job_id: job,
            state,
            what: describe(&entry.spec),
            accepted_at_ms: entry.accepted_at_ms,
            elapsed_ms: entry.accepted.elapsed().as_millis() as u64,
            roots: entry.roots.clone(),
            eval_error: entry.eval_done.clone().flatten(),
        };
        Some(crate::status::job_status(
            &self.graph,
            &self.leases,
            facts,
            Instant::now(),
        ))
    }

    async fn publish(
        &self,
        route: &Route,
        body: Message,
        priority: u8,
    ) -> Result<(), CoordinatorError> {
        self.transport
            .publish(route, &Envelope::new(body), priority)
            .await?;
        Ok(())
    }
}

/// Finished jobs whose last status is kept for `kiln jobs`/`kiln status`.
const RECENT_REMEMBERED: usize = 200;

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a job asked for, in a line: `FILE -A attr …` or `-E 'text'`.
fn describe(spec: &JobSpec) -> String {
    let mut s = match &spec.source {
        kiln_protocol::ExprSource::File { path } => path.clone(),
        kiln_protocol::ExprSource::Expr { text, .. } => {
            let one: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let short: String = one.chars().take(60).collect();
            format!(
                "-E '{short}{}'",
                if one.chars().count() > 60 { "…" } else { "" }
            )
        }
    };
    for a in &spec.attr_paths {
        s.push_str(" -A ");
        s.push_str(a);
    }
    s
}

/// The store key of a derivation's build log.
pub fn log_key(drv_path: &str) -> String {
    let base = drv_path.rsplit('/').next().unwrap_or(drv_path);
    format!("log/{base}")
}

/// Maps a scheduling priority and a derivation's height (the longest
/// chain of dependents above it) onto the transport's 0–9 scale: IFD is 9;
/// otherwise the job's priority plus one level per doubling of the
/// height, at most 8, so that a long chain is not starved by a wide layer
/// queued before it.
fn transport_priority(p: i32, height: u32) -> u8 {
    if p == i32::MAX {
        return 9;
    }
    let chain = (height + 1).ilog2() as i32;
    p.saturating_add(chain).clamp(0, 8) as u8
}

#[cfg(test)]
mod priority_tests {
    use super::transport_priority;

    #[test]
    fn long_chains_go_first_and_ifd_before_all() {
        assert_eq!(transport_priority(0, 0), 0);
        assert_eq!(transport_priority(0, 1), 1);
        assert_eq!(transport_priority(0, 3), 2);
        assert_eq!(transport_priority(0, 99), 6);
        assert_eq!(transport_priority(0, 1024), 8);
        assert_eq!(transport_priority(5, 99), 8);
        assert_eq!(transport_priority(-3, 3), 0);
        assert_eq!(transport_priority(i32::MAX, 0), 9);
    }
}
