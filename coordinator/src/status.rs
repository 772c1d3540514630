//! How a job stands, as `kiln status` and `kiln jobs` show it: counts by
//! state, the builds running, and for every derivation not started yet the
//! reason it waits (its inputs, no builder for its system or features, or
//! the builds queued before it).

use std::collections::HashMap;
use std::time::Instant;

use kiln_protocol::{
    JobCounts, JobId, JobState, JobStatus, RunningDrv, WaitReason, WaitingDrv, MAX_WAITING_LISTED,
};

use crate::graph::{Graph, NodeState};
use crate::leases::Leases;

/// What the service knows of a job beyond the graph.
pub struct JobFacts {
    pub job_id: JobId,
    pub state: JobState,
    pub what: String,
    pub accepted_at_ms: u64,
    pub elapsed_ms: u64,
    pub roots: Vec<kiln_protocol::EvalRoot>,
    pub eval_error: Option<String>,
}

/// The status of a job still in the graph.
pub fn job_status(graph: &Graph, leases: &Leases, facts: JobFacts, now: Instant) -> JobStatus {
    let mut counts = JobCounts::default();
    let mut running = Vec::new();
    let mut waiting = Vec::new();
    let mut ended = Vec::new();
    let queues = QueuePositions::new(graph, leases);
    let summary = graph.summary(facts.job_id);
    let members = graph
        .jobs
        .get(&facts.job_id)
        .map(|j| j.members.as_slice())
        .unwrap_or_default();
    for (drv, s) in members.iter().zip(summary) {
        let Some(node) = graph.nodes.get(drv) else {
            continue;
        };
        counts.total += 1;
        match node.state {
            NodeState::Placeholder | NodeState::Checking | NodeState::Pending => {
                counts.waiting += 1;
                if waiting.len() < MAX_WAITING_LISTED {
                    let why = if node.state == NodeState::Pending {
                        inputs_reason(graph, drv)
                    } else {
                        WaitReason::CheckingStore
                    };
                    waiting.push(WaitingDrv {
                        drv_path: drv.clone(),
                        why,
                    });
                }
            }
            NodeState::Dispatched => {
                counts.queued += 1;
                if waiting.len() < MAX_WAITING_LISTED {
                    waiting.push(WaitingDrv {
                        drv_path: drv.clone(),
                        why: queues.reason(graph, leases, drv),
                    });
                }
            }
            NodeState::Running => {
                counts.running += 1;
                let build = node.build_id.and_then(|b| leases.builds.get(&b));
                running.push(RunningDrv {
                    drv_path: drv.clone(),
                    builder_id: build.and_then(|b| b.builder.clone()).unwrap_or_default(),
                    running_ms: build
                        .and_then(|b| b.started_at)
                        .map_or(0, |t| now.saturating_duration_since(t).as_millis() as u64),
                });
            }
            NodeState::Built => counts.built += 1,
            NodeState::Cached => counts.cached += 1,
            NodeState::Failed => counts.failed += 1,
            NodeState::DependencyFailed => counts.dependency_failed += 1,
            NodeState::Cancelled => counts.cancelled += 1,
        }
        if node.state.is_terminal() && ended.len() < MAX_WAITING_LISTED {
            ended.push(s);
        }
    }
    JobStatus {
        job_id: facts.job_id,
        state: facts.state,
        what: facts.what,
        accepted_at_ms: facts.accepted_at_ms,
        elapsed_ms: facts.elapsed_ms,
        counts,
        roots: facts.roots,
        eval_error: facts.eval_error,
        running,
        waiting,
        ended,
    }
}

/// A pending derivation waits for the inputs not realised yet.
fn inputs_reason(graph: &Graph, drv: &str) -> WaitReason {
    let node = &graph.nodes[drv];
    let unrealised: Vec<&String> = node
        .info
        .as_ref()
        .map(|i| {
            i.input_drvs
                .keys()
                .filter(|d| !graph.nodes.get(*d).is_some_and(|n| n.state.is_realised()))
                .collect()
        })
        .unwrap_or_default();
    WaitReason::Inputs {
        missing: unrealised.len() as u64,
        first: unrealised.first().map(|s| (*s).clone()).unwrap_or_default(),
    }
}

/// Builds sent to the builders and not started, per build queue, in the
/// order the queue hands them out (priority, then age).
struct QueuePositions {
    queued: HashMap<String, Vec<(i32, Instant)>>,
}

impl QueuePositions {
    fn new(graph: &Graph, leases: &Leases) -> Self {
        let mut queued: HashMap<String, Vec<(i32, Instant)>> = HashMap::new();
        for b in leases
            .builds
            .values()
            .filter(|b| b.builder.is_none() && b.parked.is_none())
        {
            if let Some((queue, priority)) = queue_of(graph, &b.drv_path) {
                queued
                    .entry(queue)
                    .or_default()
                    .push((priority, b.dispatched_at));
            }
        }
        QueuePositions { queued }
    }

    /// Why a dispatched derivation has not started: no live builder can
    /// take it, or the builds ahead of it on its queue.
    fn reason(&self, graph: &Graph, leases: &Leases, drv: &str) -> WaitReason {
        let node = &graph.nodes[drv];
        let Some(info) = node.info.as_ref() else {
            return WaitReason::CheckingStore;
        };
        if let Some(reason) = node
            .build_id
            .and_then(|b| leases.builds.get(&b))
            .and_then(|b| b.parked.clone())
        {
            return WaitReason::DeadLettered { message: reason };
        }
        if !leases.builders.values().any(|b| {
            !b.last.stopping
                && b.last.systems.contains(&info.system)
                && info
                    .required_features
                    .iter()
                    .all(|f| b.last.features.contains(f))
        }) {
            return WaitReason::NoBuilder {
                system: info.system.clone(),
                features: info.required_features.clone(),
            };
        }
        let (queue, priority) = queue_of(graph, drv).unwrap_or_default();
        let mine = node
            .build_id
            .and_then(|b| leases.builds.get(&b))
            .map(|b| b.dispatched_at);
        let ahead = self.queued.get(&queue).map_or(0, |q| {
            q.iter()
                .filter(|(p, at)| {
                    *p > priority || (*p == priority && mine.is_some_and(|m| *at < m))
                })
                .count()
        });
        WaitReason::QueuedBehind {
            ahead: ahead as u64,
            queue,
        }
    }
}

/// The build queue and priority of a derivation.
fn queue_of(graph: &Graph, drv: &str) -> Option<(String, i32)> {
    let node = graph.nodes.get(drv)?;
    let info = node.info.as_ref()?;
    Some((
        kiln_protocol::Route::build(&info.system, &info.required_features).name(),
        node.priority,
    ))
}
