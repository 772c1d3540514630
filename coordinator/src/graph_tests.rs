//! Scheduling rules of [`crate::graph::Graph`].

use std::collections::{BTreeMap, BTreeSet};

use kiln_protocol::{DrvStatus, Event, FailureKind};
use uuid::Uuid;

use crate::drv::DrvInfo;
use crate::graph::{Effect, Graph, NodeState};

fn drv(name: &str, inputs: &[&str]) -> DrvInfo {
    DrvInfo {
        drv_path: format!("/nix/store/{name}.drv"),
        aterm: String::new(),
        system: "x86_64-linux".into(),
        required_features: vec![],
        outputs: BTreeMap::from([("out".to_string(), format!("/nix/store/{name}"))]),
        input_drvs: inputs
            .iter()
            .map(|i| {
                (
                    format!("/nix/store/{i}.drv"),
                    BTreeSet::from(["out".to_string()]),
                )
            })
            .collect(),
        input_srcs: vec![],
    }
}

fn p(name: &str) -> String {
    format!("/nix/store/{name}.drv")
}

fn dispatched(fx: &[Effect]) -> Vec<String> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Dispatch { drv_path, .. } => Some(drv_path.clone()),
            _ => None,
        })
        .collect()
}

fn events(fx: &[Effect], job: Uuid) -> Vec<Event> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Emit(j, ev) if *j == job => Some(ev.clone()),
            _ => None,
        })
        .collect()
}

/// a ← b ← c (c depends on b depends on a).
fn chain(g: &mut Graph, job: Uuid) {
    g.add_derivation(job, drv("a", &[]));
    g.add_derivation(job, drv("b", &["a"]));
    g.add_derivation(job, drv("c", &["b"]));
}

#[test]
fn dispatches_in_dependency_order_as_inputs_are_realised() {
    let mut g = Graph::new();
    let job = Uuid::new_v4();
    g.add_job(job, false, 0);
    chain(&mut g, job);
    // c's store check comes back first: it must wait for b.
    assert!(dispatched(&g.store_checked(&p("c"), false)).is_empty());
    assert!(dispatched(&g.store_checked(&p("b"), false)).is_empty());
    assert_eq!(dispatched(&g.store_checked(&p("a"), false)), vec![p("a")]);
    let fx = g.built(&p("a"), 5, BTreeMap::new(), None);
    assert_eq!(dispatched(&fx), vec![p("b")]);
    let fx = g.built(&p("b"), 5, BTreeMap::new(), None);
    assert_eq!(dispatched(&fx), vec![p("c")]);
    assert!(!g.job_idle(job));
    g.built(&p("c"), 5, BTreeMap::new(), None);
    assert!(g.job_idle(job));
    let s = g.summary(job);
    assert_eq!(s.len(), 3);
    assert!(s.iter().all(|d| d.status == DrvStatus::Built));
}

#[test]
fn cached_outputs_are_never_built() {
    let mut g = Graph::new();
    let job = Uuid::new_v4();
    g.add_job(job, false, 0);
    chain(&mut g, job);
    let mut all = Vec::new();
    all.extend(g.store_checked(&p("a"), true));
    all.extend(g.store_checked(&p("b"), true));
    all.extend(g.store_checked(&p("c"), false));
    assert_eq!(dispatched(&all), vec![p("c")]);
    assert!(events(&all, job).contains(&Event::Cached { drv_path: p("a") }));
}

#[test]
fn failure_marks_dependents_and_fail_fast_stops_the_job() {
    let mut g = Graph::new();
    let job = Uuid::new_v4();
    g.add_job(job, false, 0);
    chain(&mut g, job);
    g.add_derivation(job, drv("other", &[]));
    for d in ["a", "b", "c"] {
        g.store_checked(&p(d), false);
    }
    // "other" is dispatched too, then a fails.
    let fx = g.store_checked(&p("other"), false);
    assert_eq!(dispatched(&fx), vec![p("other")]);
    g.dispatched(&p("other"), Uuid::new_v4());
    let fx = g.failed(
        &p("a"),
        1,
        FailureKind::BuilderExit,
        "builder failed with exit code 1".into(),
        vec![],
        None,
    );
    let ev = events(&fx, job);
    assert!(ev.contains(&Event::DependencyFailed {
        drv_path: p("b"),
        dependency: p("a")
    }));
    assert!(ev.contains(&Event::DependencyFailed {
        drv_path: p("c"),
        dependency: p("a")
    }));
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::CancelBuild { drv_path, .. } if *drv_path == p("other"))));
    assert_eq!(g.nodes[&p("other")].state, NodeState::Cancelled);
    assert!(g.job_idle(job));
}

#[test]
fn keep_going_builds_everything_it_can() {
    let mut g = Graph::new();
    let job = Uuid::new_v4();
    g.add_job(job, true, 0);
    chain(&mut g, job);
    g.add_derivation(job, drv("other", &[]));
    for d in ["a", "b", "c", "other"] {
        g.store_checked(&p(d), false);
    }
    let fx = g.failed(
        &p("a"),
        1,
        FailureKind::BuilderExit,
        "boom".into(),
        vec![],
        None,
    );
    assert!(!fx.iter().any(|e| matches!(e, Effect::CancelBuild { .. })));
    assert_eq!(g.nodes[&p("other")].state, NodeState::Dispatched);
    g.built(&p("other"), 1, BTreeMap::new(), None);
    assert!(g.job_idle(job));
    assert!(g.jobs[&job].failed);
}

#[test]
fn shared_derivations_are_built_once_for_every_job() {
    let mut g = Graph::new();
    let (j1, j2) = (Uuid::new_v4(), Uuid::new_v4());
    g.add_job(j1, false, 0);
    g.add_job(j2, false, 0);
    let mut fx = g.add_derivation(j1, drv("shared", &[]));
    fx.extend(g.store_checked(&p("shared"), false));
    let fx2 = g.add_derivation(j2, drv("shared", &[]));
    assert!(
        !fx2.iter().any(|e| matches!(e, Effect::CheckStore(_))),
        "no second check"
    );
    assert_eq!(dispatched(&fx).len() + dispatched(&fx2).len(), 1);
    let fx = g.built(&p("shared"), 3, BTreeMap::new(), None);
    for j in [j1, j2] {
        assert!(events(&fx, j)
            .iter()
            .any(|e| matches!(e, Event::Built { .. })));
        assert!(g.job_idle(j));
    }
    // A job arriving after the build hears it is done, without a rebuild.
    let j3 = Uuid::new_v4();
    g.add_job(j3, false, 0);
    let fx = g.add_derivation(j3, drv("shared", &[]));
    assert!(dispatched(&fx).is_empty());
    assert!(events(&fx, j3).contains(&Event::Cached {
        drv_path: p("shared")
    }));
}

#[test]
fn one_jobs_fail_fast_does_not_cancel_anothers_build() {
    let mut g = Graph::new();
    let (j1, j2) = (Uuid::new_v4(), Uuid::new_v4());
    g.add_job(j1, false, 0);
    g.add_job(j2, false, 0);
    g.add_derivation(j1, drv("bad", &[]));
    g.add_derivation(j1, drv("shared", &[]));
    g.add_derivation(j2, drv("shared", &[]));
    g.store_checked(&p("bad"), false);
    g.store_checked(&p("shared"), false);
    g.dispatched(&p("shared"), Uuid::new_v4());
    let fx = g.failed(
        &p("bad"),
        1,
        FailureKind::BuilderExit,
        "x".into(),
        vec![],
        None,
    );
    assert!(!fx.iter().any(|e| matches!(e, Effect::CancelBuild { .. })));
    assert_eq!(g.nodes[&p("shared")].state, NodeState::Dispatched);
}

#[test]
fn ifd_is_answered_and_boosted() {
    let mut g = Graph::new();
    let job = Uuid::new_v4();
    g.add_job(job, false, 0);
    g.add_derivation(job, drv("dep", &[]));
    let req = Uuid::new_v4();
    let fx = g.ifd_request(job, req, drv("gen", &["dep"]));
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::CheckStore(v) if v == &vec![p("gen")])));
    assert_eq!(g.nodes[&p("dep")].priority, i32::MAX);
    let fx = g.store_checked(&p("dep"), false);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Dispatch {
            priority: i32::MAX,
            ..
        }
    )));
    g.store_checked(&p("gen"), false);
    g.built(&p("dep"), 1, BTreeMap::new(), None);
    let fx = g.built(&p("gen"), 1, BTreeMap::new(), None);
    let reply = fx.iter().find_map(|e| match e {
        Effect::IfdReply {
            request_id, result, ..
        } if *request_id == req => Some(result.clone()),
        _ => None,
    });
    assert_eq!(
        reply,
        Some(Ok(BTreeMap::from([(
            "out".to_string(),
            "/nix/store/gen".to_string()
        )])))
    );
}

#[test]
fn cancelling_a_job_cancels_its_builds() {
    let mut g = Graph::new();
    let job = Uuid::new_v4();
    g.add_job(job, true, 0);
    chain(&mut g, job);
    for d in ["a", "b", "c"] {
        g.store_checked(&p(d), false);
    }
    g.dispatched(&p("a"), Uuid::new_v4());
    let fx = g.cancel_job(job);
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::CancelBuild { drv_path, .. } if *drv_path == p("a"))));
    assert!(g.job_idle(job));
    g.remove_job(job);
    assert!(g.nodes.is_empty());
}

#[test]
fn cancelling_a_job_answers_its_waiting_ifd_requests() {
    let mut g = Graph::new();
    let job = Uuid::new_v4();
    g.add_job(job, false, 0);
    let req = Uuid::new_v4();
    g.ifd_request(job, req, drv("gen", &[]));
    g.store_checked(&p("gen"), false);
    let fx = g.cancel_job(job);
    let reply = fx.iter().find_map(|e| match e {
        Effect::IfdReply {
            request_id, result, ..
        } if *request_id == req => Some(result.clone()),
        _ => None,
    });
    assert!(
        matches!(&reply, Some(Err(why)) if why.contains("stopped")),
        "{reply:?}"
    );
}

#[test]
fn derivations_arriving_after_a_fail_fast_stop_do_not_keep_the_job_open() {
    let mut g = Graph::new();
    let job = Uuid::new_v4();
    g.add_job(job, false, 0);
    g.add_derivation(job, drv("bad", &[]));
    g.add_derivation(job, drv("slow", &[]));
    g.store_checked(&p("bad"), false);
    g.failed(
        &p("bad"),
        1,
        FailureKind::BuilderExit,
        "x".into(),
        vec![],
        None,
    );
    // "slow" was still being checked: cancelled, its check answer ignored.
    assert_eq!(g.nodes[&p("slow")].state, NodeState::Cancelled);
    assert!(dispatched(&g.store_checked(&p("slow"), false)).is_empty());
    // Evaluation goes on: a late derivation on the cancelled one, and one on
    // nothing, are neither checked nor built, and the job can finish.
    let fx = g.add_derivation(job, drv("late", &["slow"]));
    assert!(!fx.iter().any(|e| matches!(e, Effect::CheckStore(_))));
    let fx = g.add_derivation(job, drv("late2", &[]));
    assert!(!fx.iter().any(|e| matches!(e, Effect::CheckStore(_))));
    assert!(g.job_idle(job), "{:?}", g.jobs[&job].outstanding);
    let s = g.summary(job);
    assert_eq!(
        s.iter()
            .filter(|d| d.status == DrvStatus::Cancelled)
            .count(),
        3
    );
}

#[test]
fn a_stopped_jobs_cancelled_work_is_revived_for_another_job() {
    let mut g = Graph::new();
    let (j1, j2) = (Uuid::new_v4(), Uuid::new_v4());
    g.add_job(j1, false, 0);
    g.add_derivation(j1, drv("bad", &[]));
    g.add_derivation(j1, drv("lib", &[]));
    g.add_derivation(j1, drv("app", &["lib"]));
    g.store_checked(&p("bad"), false);
    g.failed(
        &p("bad"),
        1,
        FailureKind::BuilderExit,
        "x".into(),
        vec![],
        None,
    );
    assert_eq!(g.nodes[&p("lib")].state, NodeState::Cancelled);
    assert_eq!(g.nodes[&p("app")].state, NodeState::Cancelled);

    // j1 has not finished yet when j2 asks for the same derivations.
    g.add_job(j2, false, 0);
    let fx = g.add_derivation(j2, drv("lib", &[]));
    assert!(fx.iter().any(|e| matches!(e, Effect::CheckStore(_))));
    assert!(!events(&fx, j2)
        .iter()
        .any(|e| matches!(e, Event::DependencyFailed { .. })));
    let fx = g.add_derivation(j2, drv("app", &["lib"]));
    assert!(fx.iter().any(|e| matches!(e, Effect::CheckStore(_))));
    assert!(!g.job_idle(j2));
    assert!(dispatched(&g.store_checked(&p("app"), false)).is_empty());
    assert_eq!(
        dispatched(&g.store_checked(&p("lib"), false)),
        vec![p("lib")]
    );
    let fx = g.built(&p("lib"), 1, BTreeMap::new(), None);
    assert_eq!(dispatched(&fx), vec![p("app")]);
    g.built(&p("app"), 1, BTreeMap::new(), None);
    assert!(g.job_idle(j2));
    assert!(g.summary(j2).iter().all(|d| d.status == DrvStatus::Built));
}

/// Job A finishing must not drop the placeholder of an input that job B's
/// derivation still waits for (it used to, and B waited for ever).
#[test]
fn finishing_one_job_keeps_another_jobs_placeholders() {
    let mut g = Graph::new();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    g.add_job(a, false, 0);
    g.add_job(b, false, 0);
    g.add_derivation(a, drv("solo", &[]));
    g.store_checked(&p("solo"), true);
    // B's top arrives before its input (evaluators stream in any order).
    g.add_derivation(b, drv("top", &["dep"]));
    g.store_checked(&p("top"), false);
    assert_eq!(g.nodes[&p("dep")].state, NodeState::Placeholder);
    assert!(g.job_idle(a));
    g.remove_job(a);
    assert!(
        g.nodes.contains_key(&p("dep")),
        "B's placeholder was dropped"
    );
    g.add_derivation(b, drv("dep", &[]));
    let fx = g.store_checked(&p("dep"), false);
    assert_eq!(dispatched(&fx), vec![p("dep")]);
    let id = Uuid::new_v4();
    g.dispatched(&p("dep"), id);
    let fx = g.built(&p("dep"), 1, BTreeMap::new(), None);
    assert_eq!(dispatched(&fx), vec![p("top")], "top must follow its input");
}

/// A lost build goes out again under a new id; the old id no longer counts.
#[test]
fn a_redispatched_build_answers_only_to_its_new_id() {
    let mut g = Graph::new();
    let job = Uuid::new_v4();
    g.add_job(job, false, 0);
    g.add_derivation(job, drv("x", &[]));
    g.store_checked(&p("x"), false);
    let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
    g.dispatched(&p("x"), old);
    g.started(&p("x"), "b1");
    assert!(g.redispatched(&p("x"), new));
    assert!(!g.is_current_build(&p("x"), old));
    assert!(g.is_current_build(&p("x"), new));
    assert_eq!(g.nodes[&p("x")].state, NodeState::Dispatched);
}

#[test]
fn heights_follow_the_longest_chain_of_dependents_in_any_arrival_order() {
    let mut g = Graph::new();
    let job = Uuid::new_v4();
    g.add_job(job, false, 0);
    // Inputs first (as an evaluator sends them): a ← b ← c, and a ← d.
    chain(&mut g, job);
    g.add_derivation(job, drv("d", &["a"]));
    let h = |g: &Graph, n: &str| g.nodes[&p(n)].height;
    assert_eq!(
        (h(&g, "a"), h(&g, "b"), h(&g, "c"), h(&g, "d")),
        (2, 1, 0, 0)
    );
    // A dependent arriving before its input: the placeholder keeps the
    // height and passes it on once the input arrives.
    g.add_derivation(job, drv("y", &["x"]));
    g.add_derivation(job, drv("z", &["y"]));
    g.add_derivation(job, drv("x", &["w"]));
    g.add_derivation(job, drv("w", &[]));
    assert_eq!(
        (h(&g, "w"), h(&g, "x"), h(&g, "y"), h(&g, "z")),
        (3, 2, 1, 0)
    );
}

#[test]
fn heights_stop_at_the_cap_on_very_deep_graphs() {
    let mut g = Graph::new();
    let job = Uuid::new_v4();
    g.add_job(job, false, 0);
    let n = crate::graph::MAX_HEIGHT as usize + 50;
    g.add_derivation(job, drv("l0", &[]));
    for i in 1..n {
        g.add_derivation(job, drv(&format!("l{i}"), &[&format!("l{}", i - 1)]));
    }
    assert_eq!(g.nodes[&p("l0")].height, crate::graph::MAX_HEIGHT);
    assert_eq!(g.nodes[&p(&format!("l{}", n - 1))].height, 0);
}
