//! The coordinator checks the store in batches: a burst of derivations from
//! a fast evaluator costs a few store requests, not one per derivation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kiln_coordinator::{CoordinatorConfig, OutputStore};
use kiln_nix::derivation::{Derivation, DerivationOutput};
use kiln_nix::hash::{Hash, HashAlgo};
use kiln_nix::store_path::make_text_path;
use kiln_protocol::memory::MemoryTransport;
use kiln_protocol::{
    DerivationMsg, DrvStatus, Envelope, EvalFinished, Event, ExprSource, JobOptions, JobSpec,
    Message, Route, Transport,
};
use tokio_util::sync::CancellationToken;

/// A store holding every path, answering slowly, counting its requests.
struct SlowStore {
    requests: AtomicUsize,
    paths: AtomicUsize,
}

#[async_trait]
impl OutputStore for SlowStore {
    async fn valid_paths(&self, paths: &[String]) -> Result<Vec<bool>, String> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.paths.fetch_add(paths.len(), Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(vec![true; paths.len()])
    }

    async fn add_nar(
        &self,
        _drv: &kiln_coordinator::DrvInfo,
        output: &kiln_protocol::BuiltOutput,
        _file: &std::path::Path,
    ) -> Result<(), String> {
        Err(format!("{} was not expected to be streamed", output.path))
    }
}

fn derivation(i: usize) -> (String, String) {
    let name = format!("d{i}");
    let out = make_text_path(
        &name,
        &Hash::of(HashAlgo::Sha256, name.as_bytes()),
        &BTreeSet::new(),
    )
    .unwrap();
    let drv = Derivation {
        outputs: [(
            "out".to_string(),
            DerivationOutput::InputAddressed { path: out.clone() },
        )]
        .into(),
        input_drvs: BTreeMap::new(),
        input_srcs: BTreeSet::new(),
        system: "x86_64-linux".into(),
        builder: "/bin/sh".into(),
        args: vec![],
        env: [("out".to_string(), out.to_absolute_path())].into(),
    };
    (
        drv.drv_path(&name).unwrap().to_absolute_path(),
        drv.to_aterm(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_derivations_is_checked_in_few_requests() {
    const N: usize = 300;
    let transport = MemoryTransport::new();
    let store = Arc::new(SlowStore {
        requests: AtomicUsize::new(0),
        paths: AtomicUsize::new(0),
    });
    let shutdown = CancellationToken::new();
    let coordinator = tokio::spawn(kiln_coordinator::run(
        Arc::new(transport.clone()),
        store.clone(),
        CoordinatorConfig::default(),
        shutdown.clone(),
    ));
    let job_id = uuid::Uuid::new_v4();
    let spec = JobSpec {
        job_id,
        source: ExprSource::File {
            path: "burst.nix".into(),
        },
        attr_paths: vec![],
        args: vec![],
        search_path: vec![],
        options: JobOptions::default(),
        sources: Vec::new(),
        attempt: uuid::Uuid::nil(),
    };
    let mut events = kiln_tests::submit_job(&transport, spec).await;
    for i in 0..N {
        let (drv_path, aterm) = derivation(i);
        let msg = Message::Derivation(DerivationMsg {
            job_id,
            drv_path,
            aterm,
            attempt: uuid::Uuid::nil(),
        });
        transport
            .publish(&Route::Derivations, &Envelope::new(msg), 0)
            .await
            .unwrap();
    }
    let fin = Message::EvalFinished(EvalFinished {
        job_id,
        error: None,
        attempt: uuid::Uuid::nil(),
    });
    transport
        .publish(&Route::Derivations, &Envelope::new(fin), 0)
        .await
        .unwrap();
    let evs = kiln_tests::job_events(&mut events, Duration::from_secs(60)).await;
    let Some(Event::JobFinished {
        success, summary, ..
    }) = evs.last()
    else {
        panic!("no JobFinished: {evs:?}")
    };
    assert!(success);
    assert_eq!(summary.len(), N);
    assert!(summary.iter().all(|s| s.status == DrvStatus::Cached));
    let requests = store.requests.load(Ordering::SeqCst);
    assert_eq!(
        store.paths.load(Ordering::SeqCst),
        N,
        "each output checked once"
    );
    assert!(
        requests <= N / 10,
        "{requests} store requests for {N} derivations"
    );
    eprintln!("{N} derivations checked in {requests} store requests");
    shutdown.cancel();
    coordinator.await.unwrap().unwrap();
}
