//! The coordinator and a builder worker, in one process over the in-memory
//! transport and a local store, fed the derivation stream of
//! `conformance/build/basics` as an evaluator would send it: every
//! derivation is built in dependency order with Nix's NAR hashes, the store
//! ends up with Nix's narinfo data and logs, and a second job over the same
//! derivations builds nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_coordinator::CoordinatorConfig;
use kiln_nix::derivation::Derivation;
use kiln_nix::store_path::{make_source_path, StorePath};
use kiln_protocol::memory::MemoryTransport;
use kiln_protocol::{
    DerivationMsg, DrvStatus, Envelope, EvalFinished, EvalRoot, Event, ExprSource, JobOptions,
    JobSpec, Message, Route, Transport,
};
use kiln_store::cache::{BinaryCache, PathMeta};
use tokio_util::sync::CancellationToken;

struct Case {
    drv_path: String,
    aterm: String,
    built: serde_json::Value,
}

/// The corpus cases, inputs before the derivations that use them.
fn cases() -> Vec<Case> {
    let file = kiln_tests::shared_dir().join("conformance/build/basics.expected.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let mut pending: Vec<Case> = json["cases"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| Case {
            drv_path: c["drvPath"].as_str().unwrap().to_string(),
            aterm: c["aterm"].as_str().unwrap().to_string(),
            built: c["built"].clone(),
        })
        .collect();
    let mut ordered: Vec<Case> = Vec::new();
    while !pending.is_empty() {
        let (ready, rest): (Vec<Case>, Vec<Case>) = pending.into_iter().partition(|c| {
            let drv = Derivation::parse_aterm(c.aterm.as_bytes()).unwrap();
            drv.input_drvs
                .keys()
                .all(|i| ordered.iter().any(|o| o.drv_path == i.to_absolute_path()))
        });
        assert!(!ready.is_empty(), "corpus inputs are not all cases");
        ordered.extend(ready);
        pending = rest;
    }
    ordered
}

async fn add_busybox(cache: &BinaryCache, dir: &std::path::Path) {
    let mut nar = Vec::new();
    let (_, digest) = kiln_nix::nar::dump_path(dir, &mut nar).unwrap();
    let path = make_source_path("busybox", &digest.hash, &Default::default(), false).unwrap();
    assert_eq!(
        path.to_absolute_path(),
        "/nix/store/71fc7s32zl20dc955bhghy5dvalm7ndz-busybox"
    );
    let meta = PathMeta {
        path,
        references: Default::default(),
        deriver: None,
        system: None,
        ca: None,
        sigs: Default::default(),
        expected: None,
    };
    cache.add_path(meta, &nar[..]).await.unwrap();
}

/// Submits a job, plays the evaluator for it, and collects its events.
async fn run_job(transport: &MemoryTransport, cases: &[Case]) -> Vec<Event> {
    let job_id = uuid::Uuid::new_v4();
    let spec = JobSpec {
        job_id,
        source: ExprSource::File {
            path: "basics.nix".into(),
        },
        attr_paths: vec![],
        args: vec![],
        search_path: vec![],
        options: JobOptions {
            keep_going: true,
            max_jobs: 2,
            ..JobOptions::default()
        },
        sources: Vec::new(),
        attempt: uuid::Uuid::nil(),
    };
    let send = |m: Message| async move {
        transport
            .publish(&Route::Derivations, &Envelope::new(m), 0)
            .await
            .unwrap()
    };
    let mut events = kiln_tests::submit_job(transport, spec).await;
    for c in cases {
        send(Message::Derivation(DerivationMsg {
            job_id,
            drv_path: c.drv_path.clone(),
            aterm: c.aterm.clone(),
            attempt: uuid::Uuid::nil(),
        }))
        .await;
    }
    let last = cases.last().unwrap();
    let drv = Derivation::parse_aterm(last.aterm.as_bytes()).unwrap();
    send(Message::EvalRoot(EvalRoot {
        job_id,
        attr_path: "deepChain".into(),
        drv_path: last.drv_path.clone(),
        outputs: drv
            .outputs
            .iter()
            .map(|(n, o)| (n.clone(), o.path().unwrap().to_absolute_path()))
            .collect(),
        attempt: uuid::Uuid::nil(),
    }))
    .await;
    send(Message::EvalFinished(EvalFinished {
        job_id,
        error: None,
        attempt: uuid::Uuid::nil(),
    }))
    .await;
    kiln_tests::job_events(&mut events, Duration::from_secs(120)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_derivations_build_like_nix_and_second_run_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = kiln_tests::host_busybox(tmp.path()) else {
        return;
    };
    let cache = kiln_tests::local_cache(tmp.path()).await;
    add_busybox(&cache, &busybox).await;

    let transport = MemoryTransport::new();
    let shutdown = CancellationToken::new();
    let coordinator = tokio::spawn(kiln_coordinator::run(
        Arc::new(transport.clone()),
        cache.clone(),
        CoordinatorConfig::default(),
        shutdown.clone(),
    ));
    let mut wc = kiln_builder::worker::WorkerConfig::new("test-builder", tmp.path().join("cache"));
    wc.builder.max_jobs = 2;
    let worker = tokio::spawn(kiln_builder::worker::run(
        Arc::new(transport.clone()),
        cache.clone(),
        wc,
        shutdown.clone(),
    ));

    let cases = cases();
    assert_eq!(cases.len(), 8);
    let t0 = Instant::now();
    let first = run_job(&transport, &cases).await;
    let first_time = t0.elapsed();
    let Some(Event::JobFinished {
        success,
        summary,
        roots,
        ..
    }) = first.last()
    else {
        unreachable!()
    };
    assert!(success, "first job failed: {first:#?}");
    assert_eq!(roots.len(), 1);
    assert_eq!(summary.len(), 8);
    assert!(
        summary.iter().all(|s| s.status == DrvStatus::Built),
        "{summary:#?}"
    );
    // Every derivation started only after its inputs were built.
    let position = |pred: &dyn Fn(&Event) -> bool| first.iter().position(pred).unwrap();
    for c in &cases {
        let drv = Derivation::parse_aterm(c.aterm.as_bytes()).unwrap();
        let started =
            position(&|e| matches!(e, Event::Started { drv_path, .. } if *drv_path == c.drv_path));
        for input in drv.input_drvs.keys() {
            let input = input.to_absolute_path();
            let built =
                position(&|e| matches!(e, Event::Built { drv_path, .. } if *drv_path == input));
            assert!(
                built < started,
                "{} started before its input {input} was built",
                c.drv_path
            );
        }
    }
    // The store holds Nix's NAR hashes, sizes and references, and the logs.
    for c in &cases {
        let drv = Derivation::parse_aterm(c.aterm.as_bytes()).unwrap();
        for (name, out) in &drv.outputs {
            let path = out.path().unwrap();
            let info = cache.path_info(path).await.unwrap().expect("output stored");
            let want = &c.built[name];
            assert_eq!(
                info.nar_hash.to_sri(),
                want["narHash"].as_str().unwrap(),
                "{path}"
            );
            assert_eq!(info.nar_size, want["narSize"].as_u64().unwrap(), "{path}");
            let refs: Vec<String> = info
                .references
                .iter()
                .map(StorePath::to_absolute_path)
                .collect();
            let want_refs: Vec<String> =
                serde_json::from_value(want["references"].clone()).unwrap();
            assert_eq!(refs, want_refs, "{path}");
            assert_eq!(
                info.deriver.as_ref().map(|d| d.to_absolute_path()),
                Some(c.drv_path.clone())
            );
        }
        let log = cache
            .get_log(&StorePath::from_absolute_path(&c.drv_path).unwrap())
            .await
            .unwrap();
        assert!(log.is_some(), "log of {} stored", c.drv_path);
    }

    // Same derivations again: nothing is built.
    let t1 = Instant::now();
    let second = run_job(&transport, &cases).await;
    let second_time = t1.elapsed();
    let Some(Event::JobFinished {
        success, summary, ..
    }) = second.last()
    else {
        unreachable!()
    };
    assert!(success);
    assert!(
        summary.iter().all(|s| s.status == DrvStatus::Cached),
        "{summary:#?}"
    );
    assert!(!second.iter().any(|e| matches!(e, Event::Started { .. })));
    let counts: BTreeMap<&str, usize> = second.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(match e {
            Event::Cached { .. } => "cached",
            Event::Started { .. } => "started",
            _ => "other",
        })
        .or_default() += 1;
        m
    });
    assert_eq!(counts.get("cached"), Some(&8), "{counts:?}");
    eprintln!("first run {first_time:?}, second run {second_time:?}");
    assert!(
        second_time < first_time / 10,
        "second run {second_time:?} vs first {first_time:?}"
    );

    shutdown.cancel();
    coordinator.await.unwrap().unwrap();
    worker.await.unwrap().unwrap();
}
