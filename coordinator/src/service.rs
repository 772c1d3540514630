//! The coordinator service: runs the [`Graph`] against a transport and a
//! store, until its shutdown token is cancelled.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kiln_protocol::{
    BuildOutcome, BuildRequest, Delivery, Envelope, EvalRoot, Event, IfdResponse, JobEvent, JobId,
    JobSpec, Message, Route, Transport, TransportError, UploadMode,
};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::drv::DrvInfo;
use crate::graph::{Effect, Graph};

/// The coordinator's view of the store: which output paths are valid.
#[async_trait]
pub trait OutputStore: Send + Sync + 'static {
    /// For each absolute store path, whether it is in the store.
    async fn valid_paths(&self, paths: &[String]) -> Result<Vec<bool>, String>;
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
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            upload: UploadMode::Direct,
            positive_cache_ttl: Duration::from_secs(30),
            check_batch: 512,
            check_concurrency: 2,
        }
    }
}

/// Why the coordinator stopped.
#[derive(Debug, Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Transport(#[from] TransportError),
}

struct JobEntry {
    accepted: Instant,
    seq: u64,
    eval_done: Option<Option<String>>,
    roots: Vec<EvalRoot>,
    cancelled: bool,
    /// `CancelEval` was sent for the job.
    eval_stopped: bool,
    options: kiln_protocol::JobOptions,
}

struct Coordinator {
    transport: Arc<dyn Transport>,
    store: Arc<dyn OutputStore>,
    config: CoordinatorConfig,
    graph: Graph,
    jobs: HashMap<JobId, JobEntry>,
    builds: HashMap<uuid::Uuid, String>,
    to_check: Vec<String>,
    checks_in_flight: usize,
    present_cache: HashMap<String, Instant>,
    checks_tx: mpsc::UnboundedSender<Vec<(String, Result<bool, String>)>>,
}

/// Runs the coordinator until `shutdown` is cancelled.
pub async fn run(
    transport: Arc<dyn Transport>,
    store: Arc<dyn OutputStore>,
    config: CoordinatorConfig,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let mut jobs_sub = transport.subscribe(&Route::Jobs).await?;
    let mut drvs_sub = transport.subscribe(&Route::Derivations).await?;
    let mut ifd_sub = transport.subscribe(&Route::Ifd).await?;
    let mut events_sub = transport.subscribe(&Route::BuildEvents).await?;
    let (checks_tx, mut checks_rx) = mpsc::unbounded_channel();
    let mut c = Coordinator {
        transport,
        store,
        config,
        graph: Graph::new(),
        jobs: HashMap::new(),
        builds: HashMap::new(),
        to_check: Vec::new(),
        checks_in_flight: 0,
        present_cache: HashMap::new(),
        checks_tx,
    };
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
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
            d = events_sub.next() => c.delivered(d).await?,
            d = drvs_sub.next() => c.delivered(d).await?,
            d = jobs_sub.next() => c.delivered(d).await?,
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
        delivery.ack().await?;
        Ok(())
    }

    async fn handle(&mut self, msg: Message) -> Result<(), CoordinatorError> {
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
                if let Some(j) = self.jobs.get_mut(&root.job_id) {
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
            Message::EvalFinished(f)
                if self.jobs.get(&f.job_id).is_some_and(|j| j.eval_stopped) =>
            {
                if let Some(j) = self.jobs.get_mut(&f.job_id) {
                    j.eval_done.get_or_insert(None);
                }
            }
            Message::EvalFinished(f) => match f.error {
                None => {
                    if let Some(j) = self.jobs.get_mut(&f.job_id) {
                        j.eval_done = Some(None);
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
                    self.publish(&Route::IfdReply(r.job_id), Message::IfdResponse(resp), 9)
                        .await?;
                }
            },
            Message::BuildStarted(s) => {
                let fx = self.graph.started(&s.drv_path, &s.builder_id);
                self.apply(fx).await?;
            }
            Message::BuildLog(l) => {
                for line in l.lines {
                    let fx = self.graph.log(&l.drv_path, line);
                    self.apply(fx).await?;
                }
            }
            Message::BuildResult(r) => {
                self.builds.remove(&r.build_id);
                let log_key = Some(log_key(&r.drv_path));
                let fx = match r.outcome {
                    BuildOutcome::Built { outputs } => {
                        let outs: BTreeMap<String, String> =
                            outputs.into_iter().map(|o| (o.name, o.path)).collect();
                        for p in outs.values() {
                            self.present_cache.insert(p.clone(), Instant::now());
                        }
                        self.graph.built(&r.drv_path, r.duration_ms, outs, log_key)
                    }
                    BuildOutcome::Failed {
                        message, log_tail, ..
                    } => self
                        .graph
                        .failed(&r.drv_path, r.duration_ms, message, log_tail, log_key),
                };
                self.apply(fx).await?;
            }
            Message::NarChunk(c) => {
                warn!(build = %c.build_id, "NAR chunks need a coordinator with store write access; dropped");
            }
            Message::Heartbeat(_) => {}
            other => debug!(?other, "message not meant for the coordinator"),
        }
        Ok(())
    }

    async fn submit(&mut self, spec: JobSpec) -> Result<(), CoordinatorError> {
        let job = spec.job_id;
        self.jobs.insert(
            job,
            JobEntry {
                accepted: Instant::now(),
                seq: 0,
                eval_done: None,
                roots: Vec::new(),
                cancelled: false,
                eval_stopped: false,
                options: spec.options.clone(),
            },
        );
        self.graph
            .add_job(job, spec.options.keep_going, spec.options.priority);
        self.publish(&Route::Eval, Message::EvalRequest(spec), 0)
            .await
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
                    self.publish(&Route::IfdReply(job_id), Message::IfdResponse(resp), 9)
                        .await?
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
        let (timeout_secs, max_silent_secs) = self.limits_for(drv);
        let build_id = uuid::Uuid::new_v4();
        self.graph.dispatched(drv, build_id);
        self.builds.insert(build_id, drv.to_string());
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
        let route = Route::build(&info.system, &info.required_features);
        self.publish(
            &route,
            Message::BuildRequest(req),
            transport_priority(priority),
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
                let answer = if query.is_empty() {
                    Ok(HashSet::new())
                } else {
                    store.valid_paths(&query).await.map(|v| {
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
            self.publish(&Route::EvalControl, Message::CancelEval { job_id }, 0)
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
            let roots = entry.roots.clone();
            self.emit(
                job,
                Event::JobFinished {
                    success,
                    roots,
                    summary,
                },
            )
            .await?;
            self.graph.remove_job(job);
            self.jobs.remove(&job);
        }
        Ok(())
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

/// The store key of a derivation's build log.
pub fn log_key(drv_path: &str) -> String {
    let base = drv_path.rsplit('/').next().unwrap_or(drv_path);
    format!("log/{base}")
}

/// Maps a scheduling priority onto the transport's 0–9 scale; IFD is 9.
fn transport_priority(p: i32) -> u8 {
    if p == i32::MAX {
        9
    } else {
        p.clamp(0, 8) as u8
    }
}
