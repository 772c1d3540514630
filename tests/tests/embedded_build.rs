//! Every role in one process over the in-memory transport and a local
//! store: a job for `conformance/build/basics.nix` is evaluated by the
//! evaluator worker, scheduled by the coordinator and built by the builder
//! worker; the store ends up with Nix's NAR hashes for every output.

use std::sync::Arc;
use std::time::Duration;

use kiln_coordinator::CoordinatorConfig;
use kiln_nix::store_path::StorePath;
use kiln_protocol::memory::MemoryTransport;
use kiln_protocol::{
    ArgValue, AutoArg, DrvStatus, Envelope, Event, ExprSource, JobOptions, JobSpec, Message, Route,
    Transport,
};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_evaluated_scheduled_and_built_like_nix() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = kiln_tests::host_busybox(tmp.path()) else {
        return;
    };
    let cache = kiln_tests::local_cache(tmp.path()).await;
    let transport = MemoryTransport::new();
    let shutdown = CancellationToken::new();
    let t: Arc<dyn Transport> = Arc::new(transport.clone());
    let coordinator = tokio::spawn(kiln_coordinator::run(
        t.clone(),
        cache.clone(),
        CoordinatorConfig::default(),
        shutdown.clone(),
    ));
    let evaluator = tokio::spawn(kiln_evaluator::worker::run(
        t.clone(),
        cache.clone(),
        kiln_evaluator::worker::EvalWorkerConfig {
            work_dir: tmp.path().join("eval"),
        },
        shutdown.clone(),
    ));
    let mut wc = kiln_builder::worker::WorkerConfig::new("test-builder", tmp.path().join("cache"));
    wc.builder.max_jobs = 2;
    let builder = tokio::spawn(kiln_builder::worker::run(
        t.clone(),
        cache.clone(),
        wc,
        shutdown.clone(),
    ));

    let corpus = kiln_tests::shared_dir().join("conformance/build");
    let job_id = uuid::Uuid::new_v4();
    let mut events = transport
        .subscribe(&Route::JobEvents(job_id))
        .await
        .unwrap();
    let spec = JobSpec {
        job_id,
        source: ExprSource::File {
            path: corpus.join("basics.nix").display().to_string(),
        },
        attr_paths: vec![],
        args: vec![AutoArg {
            name: "busybox".into(),
            value: ArgValue::Expr(busybox.display().to_string()),
        }],
        search_path: vec![],
        options: JobOptions {
            max_jobs: 2,
            ..JobOptions::default()
        },
    };
    transport
        .publish(&Route::Jobs, &Envelope::new(Message::SubmitJob(spec)), 0)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let (success, roots, summary) = loop {
        let d = tokio::time::timeout(Duration::from_secs(180), events.next())
            .await
            .expect("job finished in time")
            .unwrap()
            .unwrap();
        let Message::JobEvent(ev) = d.envelope.body else {
            panic!("not an event")
        };
        if let Event::JobFinished {
            success,
            roots,
            summary,
        } = ev.event
        {
            break (success, roots, summary);
        }
        seen.push(ev.event);
    };
    assert!(success, "job failed: {seen:#?}");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(corpus.join("basics.expected.json")).unwrap())
            .unwrap();
    let cases = expected["cases"].as_object().unwrap();
    assert_eq!(
        roots.len(),
        cases.len(),
        "one root per attribute: {roots:#?}"
    );
    assert!(
        summary.iter().all(|s| s.status == DrvStatus::Built),
        "{summary:#?}"
    );
    let mut checked = 0;
    for (name, case) in cases {
        let root = roots
            .iter()
            .find(|r| r.drv_path == case["drvPath"].as_str().unwrap())
            .unwrap_or_else(|| panic!("root {name} has Nix's drvPath"));
        assert_eq!(root.attr_path, "");
        for (output, want) in case["built"].as_object().unwrap() {
            let path =
                StorePath::from_absolute_path(case["outputs"][output].as_str().unwrap()).unwrap();
            let info = cache
                .path_info(&path)
                .await
                .unwrap()
                .expect("output stored");
            assert_eq!(
                info.nar_hash.to_sri(),
                want["narHash"].as_str().unwrap(),
                "{name}.{output}"
            );
            assert_eq!(
                info.nar_size,
                want["narSize"].as_u64().unwrap(),
                "{name}.{output}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 10, "outputs checked");
    // Evaluation streamed derivations before it finished: the first build
    // was queued before the end of evaluation was announced.
    let queued = seen
        .iter()
        .position(|e| matches!(e, Event::Queued { .. }))
        .unwrap();
    let eval_done = seen
        .iter()
        .position(|e| matches!(e, Event::EvalFinished { .. }))
        .unwrap();
    eprintln!("first build queued at event {queued}, evaluation finished at event {eval_done}");

    shutdown.cancel();
    coordinator.await.unwrap().unwrap();
    evaluator.await.unwrap().unwrap();
    builder.await.unwrap().unwrap();
}
