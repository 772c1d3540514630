//! Every role in one process over the in-memory transport and a local
//! store: a job for `conformance/build/basics.nix` is evaluated by the
//! evaluator worker, scheduled by the coordinator and built by the builder
//! worker; the store ends up with Nix's NAR hashes for every output. Jobs
//! that share derivations and run at the same time build each one once.

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
    let roles = Roles::start(tmp.path(), 2).await;
    let cache = roles.cache.clone();
    let corpus = kiln_tests::shared_dir().join("conformance/build");
    let mut seen = roles.run_job(&corpus.join("basics.nix"), &busybox).await;
    let Some(Event::JobFinished {
        success,
        roots,
        summary,
        ..
    }) = seen.pop()
    else {
        panic!("no JobFinished: {seen:#?}")
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

    roles.stop().await;
}

/// Every role over one in-memory transport and one local store.
struct Roles {
    transport: MemoryTransport,
    cache: Arc<kiln_store::cache::BinaryCache>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<Result<(), Box<dyn std::error::Error + Send + Sync>>>>,
}

impl Roles {
    async fn start(dir: &std::path::Path, max_jobs: usize) -> Roles {
        let cache = kiln_tests::local_cache(dir).await;
        let transport = MemoryTransport::new();
        let shutdown = CancellationToken::new();
        let t: Arc<dyn Transport> = Arc::new(transport.clone());
        let mut tasks = Vec::new();
        let (c, s) = (cache.clone(), shutdown.clone());
        let tt = t.clone();
        tasks.push(tokio::spawn(async move {
            kiln_coordinator::run(tt, c, CoordinatorConfig::default(), s)
                .await
                .map_err(Into::into)
        }));
        let (c, s) = (cache.clone(), shutdown.clone());
        let tt = t.clone();
        let work_dir = dir.join("eval");
        tasks.push(tokio::spawn(async move {
            kiln_evaluator::worker::run(
                tt,
                c,
                kiln_evaluator::worker::EvalWorkerConfig { work_dir },
                s,
            )
            .await
            .map_err(Into::into)
        }));
        let mut wc = kiln_builder::worker::WorkerConfig::new("test-builder", dir.join("cache"));
        wc.builder.max_jobs = max_jobs;
        let (c, s) = (cache.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            kiln_builder::worker::run(t, c, wc, s)
                .await
                .map_err(Into::into)
        }));
        Roles {
            transport,
            cache,
            shutdown,
            tasks,
        }
    }

    /// Submits a job for `file` with the busybox argument; returns its
    /// events up to and including `JobFinished`.
    async fn run_job(&self, file: &std::path::Path, busybox: &std::path::Path) -> Vec<Event> {
        let job_id = uuid::Uuid::new_v4();
        let mut events = self
            .transport
            .subscribe(&Route::JobEvents(job_id))
            .await
            .unwrap();
        let spec = JobSpec {
            job_id,
            source: ExprSource::File {
                path: file.display().to_string(),
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
            sources: Vec::new(),
            attempt: uuid::Uuid::nil(),
        };
        self.transport
            .publish(&Route::Jobs, &Envelope::new(Message::SubmitJob(spec)), 0)
            .await
            .unwrap();
        kiln_tests::job_events(&mut events, Duration::from_secs(180)).await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            t.await.unwrap().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_jobs_sharing_derivations_build_each_once() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = kiln_tests::host_busybox(tmp.path()) else {
        return;
    };
    let roles = Roles::start(tmp.path(), 2).await;
    let corpus = kiln_tests::shared_dir().join("conformance/build");
    // Two jobs over the same expression (every derivation shared), and a
    // third over another file, all submitted at once.
    let basics = corpus.join("basics.nix");
    let wide = corpus.join("wide.nix");
    let (a, b, c) = tokio::join!(
        roles.run_job(&basics, &busybox),
        roles.run_job(&basics, &busybox),
        roles.run_job(&wide, &busybox),
    );
    let mut drvs = std::collections::BTreeSet::new();
    for events in [&a, &b, &c] {
        let Some(Event::JobFinished {
            success, summary, ..
        }) = events.last()
        else {
            panic!("no JobFinished: {events:#?}")
        };
        assert!(success, "{events:#?}");
        assert!(
            summary
                .iter()
                .all(|s| matches!(s.status, DrvStatus::Built | DrvStatus::Cached)),
            "{summary:#?}"
        );
        drvs.extend(summary.iter().map(|s| s.drv_path.clone()));
    }
    // Both basics jobs were told about every build.
    let built = |events: &[Event]| {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Built { drv_path, .. } | Event::Cached { drv_path } => {
                    Some(drv_path.clone())
                }
                _ => None,
            })
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(built(&a), built(&b));
    // Every distinct derivation was dispatched to a builder exactly once.
    let dispatched = roles
        .transport
        .published(&Route::build("x86_64-linux", &[]));
    assert_eq!(dispatched as usize, drvs.len(), "one build per derivation");
    roles.stop().await;
}
