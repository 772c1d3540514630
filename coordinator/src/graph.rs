//! The derivation graph shared by all jobs: a pure state machine.
//!
//! The async shell ([`crate::service`]) feeds it what arrives (derivations,
//! store answers, build results) and carries out the [`Effect`]s it returns.
//! Keeping the scheduling rules free of I/O makes them easy to test.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kiln_protocol::{DrvStatus, DrvSummary, Event, FailureKind, JobId};

use crate::drv::DrvInfo;

/// Where a derivation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// Known only as an input of something that arrived before it.
    Placeholder,
    /// Waiting for the store to say whether its outputs exist.
    Checking,
    /// Not in the store; waiting for `waiting_on` input derivations.
    Pending,
    /// Sent to the builders.
    Dispatched,
    /// A builder reported it started.
    Running,
    /// Outputs were already in the store.
    Cached,
    /// Built by Kiln.
    Built,
    /// The build failed.
    Failed,
    /// An input failed, so this cannot be built.
    DependencyFailed,
    /// Nobody wants it any more (fail-fast stop or cancellation).
    Cancelled,
}

impl NodeState {
    /// Realised: its outputs are usable by dependents.
    pub fn is_realised(&self) -> bool {
        matches!(self, NodeState::Cached | NodeState::Built)
    }

    /// Nothing more will happen to it.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            NodeState::Cached
                | NodeState::Built
                | NodeState::Failed
                | NodeState::DependencyFailed
                | NodeState::Cancelled
        )
    }
}

/// The highest [`Node::height`] recorded.
pub const MAX_HEIGHT: u32 = 1024;

/// One derivation in the graph.
#[derive(Debug)]
pub struct Node {
    pub info: Option<DrvInfo>,
    pub state: NodeState,
    /// Input derivations not yet realised.
    pub waiting_on: usize,
    pub dependents: Vec<String>,
    /// Jobs that want this derivation.
    pub jobs: BTreeSet<JobId>,
    /// IFD requests waiting for it: (job, request id).
    pub ifd_waiters: Vec<(JobId, uuid::Uuid)>,
    /// Scheduling priority; IFD raises it.
    pub priority: i32,
    /// The longest chain of known dependents above it (0 when nothing
    /// depends on it), at most [`MAX_HEIGHT`]: builds on a long chain go
    /// first, so that the chain does not wait behind wide layers.
    pub height: u32,
    pub build_id: Option<uuid::Uuid>,
    pub duration_ms: Option<u64>,
    pub failure: Option<String>,
    /// Why its build failed, when it did.
    pub failure_kind: Option<FailureKind>,
    pub log_key: Option<String>,
}

impl Node {
    fn new(info: Option<DrvInfo>, state: NodeState) -> Self {
        Node {
            info,
            state,
            waiting_on: 0,
            dependents: Vec::new(),
            jobs: BTreeSet::new(),
            ifd_waiters: Vec::new(),
            priority: 0,
            height: 0,
            build_id: None,
            duration_ms: None,
            failure: None,
            failure_kind: None,
            log_key: None,
        }
    }
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Ask the store whether these derivations' outputs exist.
    CheckStore(Vec<String>),
    /// Send this derivation to the builders.
    Dispatch { drv_path: String, priority: i32 },
    /// Stop a dispatched build.
    CancelBuild {
        drv_path: String,
        build_id: uuid::Uuid,
    },
    /// Tell a job something.
    Emit(JobId, Event),
    /// Answer an IFD request.
    IfdReply {
        job_id: JobId,
        request_id: uuid::Uuid,
        result: Result<BTreeMap<String, String>, String>,
    },
}

/// Per-job bookkeeping inside the graph.
#[derive(Debug, Default)]
pub struct JobState {
    pub keep_going: bool,
    pub priority: i32,
    /// Derivations of this job that are not terminal yet.
    pub outstanding: BTreeSet<String>,
    /// Every derivation the job touched, in arrival order.
    pub members: Vec<String>,
    pub failed: bool,
    /// Fail-fast tripped: schedule nothing more for this job.
    pub stopping: bool,
}

/// The graph of every job's derivations.
#[derive(Debug, Default)]
pub struct Graph {
    pub nodes: HashMap<String, Node>,
    pub jobs: HashMap<JobId, JobState>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a job.
    pub fn add_job(&mut self, job: JobId, keep_going: bool, priority: i32) {
        self.jobs.insert(
            job,
            JobState {
                keep_going,
                priority,
                ..JobState::default()
            },
        );
    }

    /// A derivation arrived for `job`.
    pub fn add_derivation(&mut self, job: JobId, info: DrvInfo) -> Vec<Effect> {
        let mut fx = Vec::new();
        let drv = info.drv_path.clone();
        let priority = self.jobs.get(&job).map_or(0, |j| j.priority);
        let known = self.nodes.get(&drv).map(|n| n.state.clone());
        match known {
            Some(NodeState::Placeholder) | None => {
                let inputs: Vec<String> = info.input_drvs.keys().cloned().collect();
                let mut node = Node::new(Some(info), NodeState::Checking);
                node.priority = priority;
                for input in &inputs {
                    let inode = self
                        .nodes
                        .entry(input.clone())
                        .or_insert_with(|| Node::new(None, NodeState::Placeholder));
                    inode.dependents.push(drv.clone());
                    if !inode.state.is_realised() {
                        node.waiting_on += 1;
                    }
                }
                if let Some(old) = self.nodes.remove(&drv) {
                    node.dependents = old.dependents;
                    node.jobs = old.jobs;
                    node.ifd_waiters = old.ifd_waiters;
                    node.priority = node.priority.max(old.priority);
                    node.height = old.height;
                }
                self.nodes.insert(drv.clone(), node);
                self.raise_heights(&drv);
                self.join(job, &drv, &mut fx);
                if !self.wanted(&drv) {
                    // It arrived for a job that already stopped (fail-fast),
                    // and no other job wants it.
                    self.set_terminal(&drv, NodeState::Cancelled, &mut fx);
                    return fx;
                }
                fx.push(Effect::CheckStore(vec![drv.clone()]));
                // An input that failed before we arrived fails us too.
                let failed_input = inputs.iter().find(|i| {
                    matches!(
                        self.nodes[*i].state,
                        NodeState::Failed | NodeState::DependencyFailed
                    )
                });
                if let Some(dep) = failed_input.cloned() {
                    self.set_terminal(&drv, NodeState::DependencyFailed, &mut fx);
                    self.emit_all(
                        &drv,
                        Event::DependencyFailed {
                            drv_path: drv.clone(),
                            dependency: dep,
                        },
                        &mut fx,
                    );
                }
            }
            Some(_) => {
                // Another job already has it: share the work.
                let state = self.revive(job, &drv, &mut fx);
                self.join(job, &drv, &mut fx);
                if state.is_terminal() {
                    self.report_terminal_to(job, &drv, &mut fx);
                }
            }
        }
        fx
    }

    /// A node cancelled because the jobs that wanted it stopped is wanted
    /// again by `job`: it goes back to the store check, waiting for the
    /// inputs that are not realised (they are revived as they arrive for
    /// `job` too). Returns the node's state afterwards.
    fn revive(&mut self, job: JobId, drv: &str, fx: &mut Vec<Effect>) -> NodeState {
        let state = self.nodes[drv].state.clone();
        let job_live = self.jobs.get(&job).is_some_and(|j| !j.stopping);
        if state != NodeState::Cancelled || !job_live {
            return state;
        }
        let inputs: Vec<String> = self.nodes[drv]
            .info
            .as_ref()
            .map(|i| i.input_drvs.keys().cloned().collect())
            .unwrap_or_default();
        let mut waiting_on = 0;
        let mut failed_input = None;
        for i in &inputs {
            match self.nodes.get(i).map(|n| &n.state) {
                Some(s) if s.is_realised() => {}
                Some(NodeState::Failed | NodeState::DependencyFailed) => {
                    failed_input.get_or_insert_with(|| i.clone());
                    waiting_on += 1;
                }
                _ => waiting_on += 1,
            }
        }
        let node = self.nodes.get_mut(drv).expect("node exists");
        node.waiting_on = waiting_on;
        node.build_id = None;
        if let Some(dep) = failed_input {
            node.state = NodeState::DependencyFailed;
            node.failure = Some(dep);
        } else {
            node.state = NodeState::Checking;
            fx.push(Effect::CheckStore(vec![drv.to_string()]));
        }
        // Jobs still registered for it are waiting on it again.
        let terminal = node.state.is_terminal();
        for j in node.jobs.clone() {
            if let Some(js) = self.jobs.get_mut(&j) {
                if !terminal && !js.stopping {
                    js.outstanding.insert(drv.to_string());
                }
            }
        }
        self.nodes[drv].state.clone()
    }

    /// Adds `job` to a node's interested jobs and announces it.
    fn join(&mut self, job: JobId, drv: &str, fx: &mut Vec<Effect>) {
        let node = self.nodes.get_mut(drv).expect("node exists");
        if !node.jobs.insert(job) {
            return;
        }
        let terminal = node.state.is_terminal();
        if let Some(j) = self.jobs.get_mut(&job) {
            j.members.push(drv.to_string());
            if !terminal {
                j.outstanding.insert(drv.to_string());
            }
            node.priority = node.priority.max(j.priority);
        }
        let inputs = node
            .info
            .as_ref()
            .map(|i| i.input_drvs.keys().cloned().collect())
            .unwrap_or_default();
        fx.push(Effect::Emit(
            job,
            Event::Discovered {
                drv_path: drv.to_string(),
                inputs,
            },
        ));
    }

    /// Tells a job that joined late how an already-finished node ended.
    fn report_terminal_to(&mut self, job: JobId, drv: &str, fx: &mut Vec<Effect>) {
        let node = &self.nodes[drv];
        let event = match node.state {
            NodeState::Cached | NodeState::Built => Event::Cached {
                drv_path: drv.to_string(),
            },
            NodeState::Failed => Event::Failed {
                drv_path: drv.to_string(),
                reason: node.failure.clone().unwrap_or_default(),
                log_tail: Vec::new(),
                kind: node.failure_kind,
            },
            NodeState::DependencyFailed => Event::DependencyFailed {
                drv_path: drv.to_string(),
                dependency: node.failure.clone().unwrap_or_default(),
            },
            _ => return,
        };
        let failed = matches!(node.state, NodeState::Failed | NodeState::DependencyFailed);
        fx.push(Effect::Emit(job, event));
        if failed {
            self.job_failed(job, fx);
        }
    }

    /// The store answered for `drv`: `present` when every output exists.
    pub fn store_checked(&mut self, drv: &str, present: bool) -> Vec<Effect> {
        let mut fx = Vec::new();
        let Some(node) = self.nodes.get_mut(drv) else {
            return fx;
        };
        if node.state != NodeState::Checking {
            return fx;
        }
        if present {
            self.set_terminal(drv, NodeState::Cached, &mut fx);
            self.emit_all(
                drv,
                Event::Cached {
                    drv_path: drv.to_string(),
                },
                &mut fx,
            );
            self.realised(drv, &mut fx);
        } else {
            node.state = NodeState::Pending;
            self.try_dispatch(drv, &mut fx);
        }
        fx
    }

    fn wanted(&self, drv: &str) -> bool {
        let node = &self.nodes[drv];
        !node.ifd_waiters.is_empty()
            || node
                .jobs
                .iter()
                .any(|j| self.jobs.get(j).is_some_and(|js| !js.stopping))
    }

    fn try_dispatch(&mut self, drv: &str, fx: &mut Vec<Effect>) {
        let wanted = self.wanted(drv);
        let node = self.nodes.get_mut(drv).expect("node exists");
        if node.state != NodeState::Pending {
            return;
        }
        if !wanted {
            self.set_terminal(drv, NodeState::Cancelled, fx);
            return;
        }
        if node.waiting_on > 0 {
            return;
        }
        node.state = NodeState::Dispatched;
        let priority = node.priority;
        fx.push(Effect::Dispatch {
            drv_path: drv.to_string(),
            priority,
        });
        self.emit_all(
            drv,
            Event::Queued {
                drv_path: drv.to_string(),
            },
            fx,
        );
    }

    /// The shell assigned a build id to a dispatched derivation.
    pub fn dispatched(&mut self, drv: &str, build_id: uuid::Uuid) {
        if let Some(n) = self.nodes.get_mut(drv) {
            n.build_id = Some(build_id);
        }
    }

    /// A builder started `drv`.
    pub fn started(&mut self, drv: &str, builder_id: &str) -> Vec<Effect> {
        let mut fx = Vec::new();
        if let Some(n) = self.nodes.get_mut(drv) {
            if n.state == NodeState::Dispatched {
                n.state = NodeState::Running;
                self.emit_all(
                    drv,
                    Event::Started {
                        drv_path: drv.to_string(),
                        builder_id: builder_id.to_string(),
                    },
                    &mut fx,
                );
            }
        }
        fx
    }

    /// A log line of `drv`.
    pub fn log(&mut self, drv: &str, line: String) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.nodes.contains_key(drv) {
            self.emit_all(
                drv,
                Event::Log {
                    drv_path: drv.to_string(),
                    line,
                },
                &mut fx,
            );
        }
        fx
    }

    /// `drv` was built.
    pub fn built(
        &mut self,
        drv: &str,
        duration_ms: u64,
        outputs: BTreeMap<String, String>,
        log_key: Option<String>,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        let Some(n) = self.nodes.get_mut(drv) else {
            return fx;
        };
        if n.state.is_terminal() && n.state != NodeState::Cancelled {
            return fx;
        }
        n.duration_ms = Some(duration_ms);
        n.log_key = log_key;
        self.set_terminal(drv, NodeState::Built, &mut fx);
        self.emit_all(
            drv,
            Event::Built {
                drv_path: drv.to_string(),
                duration_ms,
                outputs,
            },
            &mut fx,
        );
        self.realised(drv, &mut fx);
        fx
    }

    /// `drv` failed to build.
    pub fn failed(
        &mut self,
        drv: &str,
        duration_ms: u64,
        kind: FailureKind,
        reason: String,
        log_tail: Vec<String>,
        log_key: Option<String>,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        let Some(n) = self.nodes.get_mut(drv) else {
            return fx;
        };
        if n.state.is_terminal() {
            return fx;
        }
        n.duration_ms = Some(duration_ms);
        n.failure = Some(reason.clone());
        n.failure_kind = Some(kind);
        n.log_key = log_key;
        self.set_terminal(drv, NodeState::Failed, &mut fx);
        self.emit_all(
            drv,
            Event::Failed {
                drv_path: drv.to_string(),
                reason: reason.clone(),
                log_tail,
                kind: Some(kind),
            },
            &mut fx,
        );
        self.fail_ifd_waiters(drv, &reason, &mut fx);
        self.propagate_failure(drv, &mut fx);
        let jobs: Vec<JobId> = self.nodes[drv].jobs.iter().copied().collect();
        for job in jobs {
            self.job_failed(job, &mut fx);
        }
        fx
    }

    fn fail_ifd_waiters(&mut self, drv: &str, reason: &str, fx: &mut Vec<Effect>) {
        for (job_id, request_id) in
            std::mem::take(&mut self.nodes.get_mut(drv).unwrap().ifd_waiters)
        {
            fx.push(Effect::IfdReply {
                job_id,
                request_id,
                result: Err(format!(
                    "cannot build '{drv}' needed for import-from-derivation: {reason}"
                )),
            });
        }
    }

    fn propagate_failure(&mut self, failed: &str, fx: &mut Vec<Effect>) {
        let mut stack = vec![failed.to_string()];
        while let Some(cur) = stack.pop() {
            let deps = self.nodes[&cur].dependents.clone();
            for d in deps {
                let st = self.nodes[&d].state.clone();
                if st.is_terminal() || st == NodeState::Placeholder {
                    continue;
                }
                self.nodes.get_mut(&d).unwrap().failure = Some(failed.to_string());
                self.set_terminal(&d, NodeState::DependencyFailed, fx);
                self.emit_all(
                    &d,
                    Event::DependencyFailed {
                        drv_path: d.clone(),
                        dependency: failed.to_string(),
                    },
                    fx,
                );
                self.fail_ifd_waiters(&d, &format!("dependency '{failed}' failed"), fx);
                let jobs: Vec<JobId> = self.nodes[&d].jobs.iter().copied().collect();
                for job in jobs {
                    if let Some(j) = self.jobs.get_mut(&job) {
                        j.failed = true;
                    }
                }
                stack.push(d);
            }
        }
    }

    /// Marks a job failed; without keep-going it stops scheduling and its
    /// builds that no other job needs are cancelled.
    fn job_failed(&mut self, job: JobId, fx: &mut Vec<Effect>) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        j.failed = true;
        if j.keep_going || j.stopping {
            return;
        }
        j.stopping = true;
        self.stop_job_work(job, fx);
    }

    /// Cancels the job's non-terminal work that nobody else wants.
    pub fn stop_job_work(&mut self, job: JobId, fx: &mut Vec<Effect>) {
        let outstanding: Vec<String> = self.jobs[&job].outstanding.iter().cloned().collect();
        for drv in outstanding {
            // The job's evaluation must not wait for what it no longer builds.
            let node = self.nodes.get_mut(&drv).expect("node exists");
            let (mine, others) = std::mem::take(&mut node.ifd_waiters)
                .into_iter()
                .partition(|(j, _)| *j == job);
            node.ifd_waiters = others;
            for (job_id, request_id) in mine {
                fx.push(Effect::IfdReply {
                    job_id,
                    request_id,
                    result: Err(format!(
                        "cannot build '{drv}' needed for import-from-derivation: the job was stopped"
                    )),
                });
            }
            if self.wanted(&drv) {
                continue;
            }
            let node = &self.nodes[&drv];
            if let (NodeState::Dispatched | NodeState::Running, Some(build_id)) =
                (&node.state, node.build_id)
            {
                fx.push(Effect::CancelBuild {
                    drv_path: drv.clone(),
                    build_id,
                });
            }
            self.set_terminal(&drv, NodeState::Cancelled, fx);
        }
    }

    /// Cancels a job outright.
    pub fn cancel_job(&mut self, job: JobId) -> Vec<Effect> {
        let mut fx = Vec::new();
        if let Some(j) = self.jobs.get_mut(&job) {
            j.failed = true;
            j.stopping = true;
            self.stop_job_work(job, &mut fx);
        }
        fx
    }

    fn set_terminal(&mut self, drv: &str, state: NodeState, _fx: &mut [Effect]) {
        let node = self.nodes.get_mut(drv).expect("node exists");
        node.state = state;
        for job in node.jobs.iter() {
            if let Some(j) = self.jobs.get_mut(job) {
                j.outstanding.remove(drv);
            }
        }
    }

    fn emit_all(&self, drv: &str, event: Event, fx: &mut Vec<Effect>) {
        for job in &self.nodes[drv].jobs {
            fx.push(Effect::Emit(*job, event.clone()));
        }
    }

    /// `drv`'s outputs are usable: unblock dependents, answer IFD waiters.
    fn realised(&mut self, drv: &str, fx: &mut Vec<Effect>) {
        let outputs = self.nodes[drv]
            .info
            .as_ref()
            .map(|i| i.outputs.clone())
            .unwrap_or_default();
        for (job_id, request_id) in
            std::mem::take(&mut self.nodes.get_mut(drv).unwrap().ifd_waiters)
        {
            fx.push(Effect::IfdReply {
                job_id,
                request_id,
                result: Ok(outputs.clone()),
            });
        }
        for d in self.nodes[drv].dependents.clone() {
            let n = self.nodes.get_mut(&d).unwrap();
            if n.state == NodeState::Placeholder || n.state.is_terminal() {
                continue;
            }
            n.waiting_on = n.waiting_on.saturating_sub(1);
            if n.state == NodeState::Pending {
                self.try_dispatch(&d, fx);
            }
        }
    }

    /// IFD: evaluation of `job` waits for `drv`. Raises the priority of the
    /// derivation and of everything it waits for.
    pub fn ifd_request(
        &mut self,
        job: JobId,
        request_id: uuid::Uuid,
        info: DrvInfo,
    ) -> Vec<Effect> {
        let drv = info.drv_path.clone();
        let mut fx = Vec::new();
        if self.nodes.get(&drv).is_none_or(|n| n.info.is_none()) {
            fx.extend(self.add_derivation(job, info));
        } else {
            self.revive(job, &drv, &mut fx);
            self.join(job, &drv, &mut fx);
        }
        let node = self.nodes.get_mut(&drv).unwrap();
        match node.state {
            NodeState::Cached | NodeState::Built => {
                let outputs = node.info.as_ref().unwrap().outputs.clone();
                fx.push(Effect::IfdReply {
                    job_id: job,
                    request_id,
                    result: Ok(outputs),
                });
            }
            NodeState::Failed | NodeState::DependencyFailed | NodeState::Cancelled => {
                let why = node.failure.clone().unwrap_or_else(|| "cancelled".into());
                fx.push(Effect::IfdReply {
                    job_id: job,
                    request_id,
                    result: Err(format!(
                        "cannot build '{drv}' needed for import-from-derivation: {why}"
                    )),
                });
            }
            _ => {
                node.ifd_waiters.push((job, request_id));
                self.boost(&drv, i32::MAX);
            }
        }
        fx
    }

    fn boost(&mut self, drv: &str, priority: i32) {
        let mut stack = vec![drv.to_string()];
        while let Some(cur) = stack.pop() {
            let Some(n) = self.nodes.get_mut(&cur) else {
                continue;
            };
            if n.priority >= priority && cur != drv {
                continue;
            }
            n.priority = priority;
            if let Some(info) = &n.info {
                stack.extend(info.input_drvs.keys().cloned());
            }
        }
    }

    /// The job has nothing outstanding.
    pub fn job_idle(&self, job: JobId) -> bool {
        self.jobs.get(&job).is_none_or(|j| j.outstanding.is_empty())
    }

    /// Per-derivation summary of a job, in arrival order.
    pub fn summary(&self, job: JobId) -> Vec<DrvSummary> {
        let Some(j) = self.jobs.get(&job) else {
            return Vec::new();
        };
        j.members
            .iter()
            .map(|d| {
                let n = &self.nodes[d];
                DrvSummary {
                    drv_path: d.clone(),
                    status: match n.state {
                        NodeState::Cached => DrvStatus::Cached,
                        NodeState::Built => DrvStatus::Built,
                        NodeState::Failed => DrvStatus::Failed,
                        NodeState::DependencyFailed => DrvStatus::DependencyFailed,
                        NodeState::Cancelled => DrvStatus::Cancelled,
                        _ => DrvStatus::NotBuilt,
                    },
                    duration_ms: n.duration_ms,
                    log: n.log_key.clone(),
                }
            })
            .collect()
    }

    /// Forgets a finished job; nodes nobody wants any more are dropped once
    /// terminal (the store remembers what was built). A placeholder (a
    /// derivation named as an input but not arrived yet) belongs to no job
    /// itself: it goes only when every node waiting for it goes too, so
    /// another job's derivations never lose the input they wait for.
    pub fn remove_job(&mut self, job: JobId) {
        let Some(j) = self.jobs.remove(&job) else {
            return;
        };
        for d in j.members {
            if let Some(n) = self.nodes.get_mut(&d) {
                n.jobs.remove(&job);
            }
        }
        let mut dead: std::collections::HashSet<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.jobs.is_empty() && n.ifd_waiters.is_empty() && n.state.is_terminal())
            .map(|(k, _)| k.clone())
            .collect();
        let placeholders: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.state == NodeState::Placeholder
                    && n.ifd_waiters.is_empty()
                    && n.dependents.iter().all(|d| dead.contains(d))
            })
            .map(|(k, _)| k.clone())
            .collect();
        dead.extend(placeholders);
        for d in &dead {
            self.nodes.remove(d);
        }
        for n in self.nodes.values_mut() {
            n.dependents.retain(|d| !dead.contains(d));
        }
    }

    /// The build of `drv` is lost (its builder fell silent): it goes out
    /// again under `build_id`, as if just dispatched. False when `drv` is
    /// not waiting on a build any more.
    pub fn redispatched(&mut self, drv: &str, build_id: uuid::Uuid) -> bool {
        match self.nodes.get_mut(drv) {
            Some(n) if matches!(n.state, NodeState::Dispatched | NodeState::Running) => {
                n.state = NodeState::Dispatched;
                n.build_id = Some(build_id);
                true
            }
            _ => false,
        }
    }

    /// Makes every input of `drv`, transitively, at least one higher than
    /// what depends on it. A chain arriving input first costs its length
    /// squared over two steps; heights stop at [`MAX_HEIGHT`], which bounds
    /// the work on deep graphs.
    fn raise_heights(&mut self, drv: &str) {
        let mut todo = vec![drv.to_string()];
        while let Some(d) = todo.pop() {
            let Some(n) = self.nodes.get(&d) else {
                continue;
            };
            let h = (n.height + 1).min(MAX_HEIGHT);
            let inputs: Vec<String> = n
                .info
                .as_ref()
                .map(|i| i.input_drvs.keys().cloned().collect())
                .unwrap_or_default();
            for input in inputs {
                if let Some(i) = self.nodes.get_mut(&input) {
                    if i.height < h {
                        i.height = h;
                        todo.push(input);
                    }
                }
            }
        }
    }

    /// Whether `build_id` is the build `drv` currently waits for.
    pub fn is_current_build(&self, drv: &str, build_id: uuid::Uuid) -> bool {
        self.nodes
            .get(drv)
            .is_some_and(|n| n.build_id == Some(build_id) && !n.state.is_terminal())
    }

    /// Whether `drv` waits on a build (dispatched or running).
    pub fn awaiting_build(&self, drv: &str) -> bool {
        self.nodes
            .get(drv)
            .is_some_and(|n| matches!(n.state, NodeState::Dispatched | NodeState::Running))
    }
}
