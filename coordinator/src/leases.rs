//! Builds in flight and the builders that run them.
//!
//! A builder acknowledges a build request when it starts the build (so a
//! build may run longer than the broker's consumer timeout); from then on
//! its heartbeats are the build's lease. A builder silent for three of its
//! heartbeat intervals has lost its builds, and they are dispatched again.
//! A coordinator that takes over learns from the same heartbeats which
//! builds are already running, and adopts them instead of starting them
//! twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kiln_protocol::{BuildId, Heartbeat};

/// The shortest lease, whatever a builder's interval.
const MIN_LEASE: Duration = Duration::from_secs(3);
/// How long builders have to reconnect after the coordinator's own link
/// to them came back (a role's reconnection backoff is at most 5 s).
const RECONNECT_GRACE: Duration = Duration::from_secs(10);
/// Heartbeat intervals a builder may miss before its builds are lost.
const MISSED_BEATS: u32 = 3;

/// One build this coordinator dispatched or adopted.
#[derive(Debug, Clone)]
pub struct Build {
    pub drv_path: String,
    /// When the request went out.
    pub dispatched_at: Instant,
    /// The builder running it, once started.
    pub builder: Option<String>,
    /// When it started.
    pub started_at: Option<Instant>,
    /// Why it sits among the dead letters, when a builder set it aside.
    pub parked: Option<String>,
}

/// A builder as its heartbeats describe it.
#[derive(Debug, Clone)]
pub struct BuilderView {
    pub last: Heartbeat,
    pub seen: Instant,
}

impl BuilderView {
    fn lease(&self) -> Duration {
        let interval = Duration::from_millis(self.last.interval_ms.max(1));
        (interval * MISSED_BEATS).max(MIN_LEASE)
    }

    /// Whether its lease ran out at `now`.
    pub fn silent(&self, now: Instant) -> bool {
        now.duration_since(self.seen) > self.lease()
    }
}

/// Builds in flight, by build id, and the live builders.
#[derive(Debug, Default)]
pub struct Leases {
    pub builds: HashMap<BuildId, Build>,
    pub builders: HashMap<String, BuilderView>,
}

impl Leases {
    /// A build request went out.
    pub fn dispatched(&mut self, build_id: BuildId, drv_path: &str) {
        self.builds.insert(
            build_id,
            Build {
                drv_path: drv_path.to_string(),
                dispatched_at: Instant::now(),
                builder: None,
                started_at: None,
                parked: None,
            },
        );
    }

    /// A builder reported it started `build_id`; false for a build this
    /// coordinator does not track (a stale or foreign one).
    pub fn started(&mut self, build_id: BuildId, builder: &str) -> bool {
        match self.builds.get_mut(&build_id) {
            Some(b) => {
                if b.builder.is_none() {
                    b.started_at = Some(Instant::now());
                }
                b.parked = None;
                b.builder = Some(builder.to_string());
                // A start is as good as a heartbeat for the lease.
                if let Some(v) = self.builders.get_mut(builder) {
                    v.seen = Instant::now();
                }
                true
            }
            None => false,
        }
    }

    /// How long `build_id` waited between dispatch and start (first start
    /// only).
    pub fn queue_wait(&self, build_id: BuildId) -> Option<Duration> {
        self.builds
            .get(&build_id)
            .filter(|b| b.builder.is_none())
            .map(|b| b.dispatched_at.elapsed())
    }

    /// A builder set `build_id` aside among the dead letters: it is
    /// queued again (by whoever replays it), with no builder.
    pub fn parked(&mut self, build_id: BuildId, reason: String) -> bool {
        match self.builds.get_mut(&build_id) {
            Some(b) => {
                b.builder = None;
                b.started_at = None;
                b.parked = Some(reason);
                true
            }
            None => false,
        }
    }

    /// A build ended (or was abandoned); its lease goes.
    pub fn finished(&mut self, build_id: BuildId) -> Option<Build> {
        self.builds.remove(&build_id)
    }

    /// Records a heartbeat; a builder saying goodbye is forgotten at once
    /// (it finishes or hands back its builds itself).
    pub fn heartbeat(&mut self, hb: Heartbeat) {
        if hb.stopping && hb.running_builds.is_empty() {
            self.builders.remove(&hb.builder_id);
            return;
        }
        let id = hb.builder_id.clone();
        self.builders.insert(
            id,
            BuilderView {
                last: hb,
                seen: Instant::now(),
            },
        );
    }

    /// A build of `drv_path` that a live builder runs now, by its own
    /// heartbeat (run for a previous coordinator): (build id, builder).
    pub fn running_elsewhere(&self, drv_path: &str) -> Option<(BuildId, String)> {
        let now = Instant::now();
        self.builders
            .values()
            .filter(|v| !v.silent(now))
            .find_map(|v| {
                v.last
                    .running_builds
                    .iter()
                    .find(|r| r.drv_path == drv_path)
                    .map(|r| (r.build_id, v.last.builder_id.clone()))
            })
    }

    /// Adopts a build found with [`Leases::running_elsewhere`].
    pub fn adopt(&mut self, build_id: BuildId, drv_path: &str, builder: String) {
        self.builds.insert(
            build_id,
            Build {
                drv_path: drv_path.to_string(),
                dispatched_at: Instant::now(),
                builder: Some(builder),
                started_at: Some(Instant::now()),
                parked: None,
            },
        );
    }

    /// Builds whose builder fell silent, removed from the leases; silent
    /// builders are forgotten.
    pub fn expired(&mut self) -> Vec<(BuildId, Build)> {
        let now = Instant::now();
        let silent: Vec<String> = self
            .builders
            .iter()
            .filter(|(_, v)| v.silent(now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut lost = Vec::new();
        for b in &silent {
            self.builders.remove(b);
        }
        let ids: Vec<BuildId> = self
            .builds
            .iter()
            .filter(|(_, b)| {
                b.builder
                    .as_ref()
                    .is_some_and(|owner| !self.builders.contains_key(owner))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(b) = self.builds.remove(&id) {
                lost.push((id, b));
            }
        }
        lost
    }

    /// Starts every builder's lease afresh, with time to reconnect on top:
    /// after this coordinator could not hear them, their silence meant
    /// nothing, and they too may still be reconnecting.
    pub fn heard_again(&mut self) {
        let from = Instant::now() + RECONNECT_GRACE;
        for v in self.builders.values_mut() {
            v.seen = from;
        }
    }

    /// Live builders, by id.
    pub fn live_builders(&self) -> usize {
        let now = Instant::now();
        self.builders.values().filter(|v| !v.silent(now)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::RunningBuild;

    fn hb(id: &str, running: Vec<RunningBuild>) -> Heartbeat {
        Heartbeat {
            builder_id: id.into(),
            systems: vec!["x86_64-linux".into()],
            features: vec![],
            max_jobs: 1,
            running: running.len() as u32,
            host: "h".into(),
            running_builds: running,
            load: 0.0,
            interval_ms: 1,
            stopping: false,
        }
    }

    #[test]
    fn a_silent_builder_loses_its_builds() {
        let mut l = Leases::default();
        let id = uuid::Uuid::new_v4();
        l.heartbeat(hb("b1", vec![]));
        l.dispatched(id, "/nix/store/x.drv");
        assert!(l.started(id, "b1"));
        assert!(l.expired().is_empty());
        l.builders.get_mut("b1").unwrap().seen -= Duration::from_secs(10);
        let lost = l.expired();
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].0, id);
        assert!(l.builds.is_empty());
    }

    #[test]
    fn builders_unheard_while_the_coordinator_was_cut_off_keep_their_builds() {
        let mut l = Leases::default();
        let id = uuid::Uuid::new_v4();
        l.heartbeat(hb("b1", vec![]));
        l.dispatched(id, "/nix/store/x.drv");
        assert!(l.started(id, "b1"));
        l.builders.get_mut("b1").unwrap().seen -= Duration::from_secs(10);
        l.heard_again();
        assert!(l.expired().is_empty());
        assert_eq!(l.builds.len(), 1);
        assert_eq!(l.live_builders(), 1);
    }

    #[test]
    fn running_builds_are_found_for_adoption() {
        let mut l = Leases::default();
        let id = uuid::Uuid::new_v4();
        l.heartbeat(hb(
            "b2",
            vec![RunningBuild {
                build_id: id,
                drv_path: "/nix/store/y.drv".into(),
            }],
        ));
        assert_eq!(
            l.running_elsewhere("/nix/store/y.drv"),
            Some((id, "b2".to_string()))
        );
        assert_eq!(l.running_elsewhere("/nix/store/z.drv"), None);
        assert!(!l.started(uuid::Uuid::new_v4(), "b2"));
    }
}
