//! The evaluator worker: consumes evaluation requests from a transport,
//! evaluates each job on its own big-stack thread, and publishes every
//! derivation the moment it is instantiated, then the job's roots and the
//! end of evaluation. Sources copied to the store during evaluation are
//! uploaded to the binary cache so builders can fetch them.
//!
//! Import from derivation: when evaluation reads a derivation output, the
//! worker sends an [`IfdRequest`] (after the derivations it needs, on the
//! same forwarding channel), waits for the coordinator's answer on the job's
//! reply route, and realises the outputs from the store into the job's work
//! directory, where the evaluator reads them.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use kiln_nix::store_path::StorePath;
use kiln_protocol::{
    ArgValue, DerivationMsg, Envelope, EvalFinished, EvalRoot, ExprSource, IfdRequest, JobSpec,
    Message, Route, Subscription, Transport, TransportError,
};
use kiln_store::cache::{BinaryCache, PathMeta};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::run::{auto_args, roots, AutoArg};
use crate::store::{DerivationSink, DirStore, PathFilter, Realiser, Store, StoreError};
use crate::{Evaluator, Options, SearchPathEntry};

/// Settings of an evaluator worker.
#[derive(Debug, Clone)]
pub struct EvalWorkerConfig {
    /// Where sources and `toFile` texts are written while evaluating.
    pub work_dir: PathBuf,
}

/// Runs the worker until `shutdown` is cancelled.
pub async fn run(
    transport: Arc<dyn Transport>,
    cache: Arc<BinaryCache>,
    config: EvalWorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), TransportError> {
    let mut sub = transport.subscribe(&Route::Eval).await?;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            n = sub.next() => n,
        };
        let delivery = match next {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(()),
            Err(e) => {
                warn!(error = %e, "dropped a malformed evaluation request");
                continue;
            }
        };
        if let Message::EvalRequest(spec) = delivery.envelope.body.clone() {
            if !evaluate_job(&transport, &cache, &config, spec, &shutdown).await? {
                // Shut down mid-evaluation: the request goes back to the
                // queue for another evaluator.
                if let Err(e) = delivery.nack(true).await {
                    warn!(error = %e, "could not hand an evaluation back; the broker will");
                }
                return Ok(());
            }
        }
        if let Err(e) = delivery.ack().await {
            warn!(error = %e, "could not acknowledge an evaluation request");
        }
    }
}

/// Evaluates one job, streaming its messages to the coordinator. False
/// when `shutdown` stopped it before it ended (nothing more is published).
async fn evaluate_job(
    transport: &Arc<dyn Transport>,
    cache: &Arc<BinaryCache>,
    config: &EvalWorkerConfig,
    spec: JobSpec,
    shutdown: &CancellationToken,
) -> Result<bool, TransportError> {
    let job_id = spec.job_id;
    let attempt = spec.attempt;
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let handle = tokio::runtime::Handle::current();
    let cache = cache.clone();
    let work_dir = config.work_dir.clone();
    // Subscribed before evaluation starts, so no answer can be missed.
    let replies = transport
        .subscribe(&Route::ifd_reply(job_id, attempt))
        .await?;
    let mut control = transport.subscribe(&Route::EvalControl).await?;
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cancel_eval = cancel.clone();
    let eval = tokio::task::spawn_blocking(move || {
        crate::with_big_stack(move || {
            evaluate(spec, tx, cache, handle, replies, &work_dir, cancel_eval)
        })
        .unwrap_or_else(|_| Err("the evaluator crashed".to_string()))
    });
    // The evaluation thread sends `EvalFinished` itself, before it frees
    // the evaluation's values, so the job need not wait for that.
    let mut finished = false;
    let mut control_open = true;
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = shutdown.cancelled() => {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                return Ok(false);
            }
            c = control.next(), if control_open => {
                match c {
                    Ok(Some(d)) => {
                        if matches!(d.envelope.body, Message::CancelEval { job_id: j, keep } if j == job_id && keep != Some(attempt)) {
                            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        let _ = d.ack().await;
                    }
                    Ok(None) => control_open = false,
                    Err(e) => warn!(error = %e, "dropped a malformed control message"),
                }
                continue;
            }
        };
        let Some(msg) = msg else { break };
        finished = matches!(msg, Message::EvalFinished(_));
        // IFD requests jump the queue; everything else is the derivation
        // stream. Both go through this one channel, so a request always
        // follows the derivations it depends on.
        let (route, priority) = match msg {
            Message::IfdRequest(_) => (Route::Ifd, 9),
            _ => (Route::Derivations, 0),
        };
        transport
            .publish(&route, &Envelope::new(msg), priority)
            .await?;
        if finished {
            break;
        }
    }
    let outcome = eval.await;
    if finished {
        return Ok(true);
    }
    let error = match outcome {
        Ok(Ok(())) => Some("the evaluation ended without a result".to_string()),
        Ok(Err(e)) => Some(e),
        Err(e) => Some(format!("the evaluator crashed: {e}")),
    };
    let done = Message::EvalFinished(EvalFinished {
        job_id,
        attempt,
        error,
    });
    transport
        .publish(&Route::Derivations, &Envelope::new(done), 0)
        .await?;
    Ok(true)
}

/// Runs on the evaluation thread.
fn evaluate(
    mut spec: JobSpec,
    tx: mpsc::UnboundedSender<Message>,
    cache: Arc<BinaryCache>,
    handle: tokio::runtime::Handle,
    replies: Box<dyn Subscription>,
    work_dir: &Path,
    cancel: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), String> {
    let dir = work_dir.join(spec.job_id.to_string());
    let store = DirStore::new(&dir).map_err(|e| e.to_string())?;
    crate::shipped::materialise(&mut spec, &cache, &handle, &dir)?;
    let sink = Rc::new(ChannelSink {
        job_id: spec.job_id,
        attempt: spec.attempt,
        tx: tx.clone(),
        aterms: RefCell::default(),
    });
    let realiser = Rc::new(IfdRealiser {
        sink: sink.clone(),
        replies: RefCell::new(replies),
        cache: cache.clone(),
        handle: handle.clone(),
        dir: dir.clone(),
    });
    let store = Rc::new(CacheStore {
        dir: store,
        cache,
        handle,
        uploaded: RefCell::new(BTreeSet::new()),
    });
    let search_path = spec
        .search_path
        .iter()
        .map(|e| match &e.prefix {
            Some(p) => SearchPathEntry::parse(&format!("{p}={}", e.path)),
            None => SearchPathEntry::parse(&e.path),
        })
        .collect();
    let mut evr = Evaluator::new(Options {
        search_path,
        store: Some(store.clone()),
        cancel: Some(cancel),
        ..Default::default()
    });
    evr.ev.sink = Some(sink);
    evr.ev.realiser = Some(realiser);
    let result = evaluate_roots(&evr, &spec, &tx);
    let error = result.as_ref().err().cloned();
    let _ = tx.send(Message::EvalFinished(EvalFinished {
        job_id: spec.job_id,
        attempt: spec.attempt,
        error,
    }));
    drop(evr);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn evaluate_roots(
    evr: &Evaluator,
    spec: &JobSpec,
    tx: &mpsc::UnboundedSender<Message>,
) -> Result<(), String> {
    let fmt = |e: crate::Error| evr.format_error(&e, false);
    let (expr, cwd) = match &spec.source {
        ExprSource::File { path } => {
            let path = PathBuf::from(path);
            let cwd = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (evr.parse_file(&path).map_err(fmt)?, cwd)
        }
        ExprSource::Expr { text, base_dir } => {
            let cwd = PathBuf::from(base_dir);
            (evr.parse_string(text, &cwd).map_err(fmt)?, cwd)
        }
    };
    let args: Vec<(String, AutoArg)> = spec
        .args
        .iter()
        .map(|a| {
            let v = match &a.value {
                ArgValue::Expr(e) => AutoArg::Expr(e.clone()),
                ArgValue::Str(s) => AutoArg::Str(s.clone()),
            };
            (a.name.clone(), v)
        })
        .collect();
    let args = auto_args(evr, &args, &cwd).map_err(fmt)?;
    let root = evr.eval_expr(&expr).map_err(fmt)?;
    let paths = if spec.attr_paths.is_empty() {
        vec![String::new()]
    } else {
        spec.attr_paths.clone()
    };
    for p in paths {
        let v = evr.select_attr_path(&root, &p, &args).map_err(fmt)?;
        for r in roots(evr, &v, &args).map_err(fmt)? {
            let msg = Message::EvalRoot(EvalRoot {
                job_id: spec.job_id,
                attempt: spec.attempt,
                attr_path: p.clone(),
                drv_path: r.drv_path,
                outputs: [(r.output, r.out_path)].into_iter().collect(),
            });
            let _ = tx.send(msg);
        }
    }
    Ok(())
}

/// Hands each instantiated derivation to the forwarding task, and keeps
/// their ATerms for import-from-derivation requests.
struct ChannelSink {
    job_id: uuid::Uuid,
    attempt: uuid::Uuid,
    tx: mpsc::UnboundedSender<Message>,
    aterms: RefCell<std::collections::HashMap<String, String>>,
}

impl DerivationSink for ChannelSink {
    fn derivation(&self, drv_path: &str, aterm: &str) {
        self.aterms
            .borrow_mut()
            .insert(drv_path.to_string(), aterm.to_string());
        let _ = self.tx.send(Message::Derivation(DerivationMsg {
            job_id: self.job_id,
            attempt: self.attempt,
            drv_path: drv_path.to_string(),
            aterm: aterm.to_string(),
        }));
    }
}

/// Import from derivation over the transport: asks the coordinator to build
/// a derivation this job instantiated, waits for the answer, and realises
/// the outputs (with their closure) from the store into the job's directory,
/// where [`CacheStore::real_path`] finds them.
struct IfdRealiser {
    sink: Rc<ChannelSink>,
    replies: RefCell<Box<dyn Subscription>>,
    cache: Arc<BinaryCache>,
    handle: tokio::runtime::Handle,
    dir: PathBuf,
}

impl Realiser for IfdRealiser {
    fn realise(&self, drv_path: &str, outputs: &[String]) -> Result<Vec<PathBuf>, StoreError> {
        let fail = |why: String| StoreError::Realise(drv_path.to_string(), why);
        let aterm = self
            .sink
            .aterms
            .borrow()
            .get(drv_path)
            .cloned()
            .ok_or_else(|| fail("the derivation was not instantiated by this evaluation".into()))?;
        let request_id = uuid::Uuid::new_v4();
        self.sink
            .tx
            .send(Message::IfdRequest(IfdRequest {
                job_id: self.sink.job_id,
                request_id,
                drv_path: drv_path.to_string(),
                aterm,
                outputs: outputs.to_vec(),
            }))
            .map_err(|_| fail("the worker is shutting down".into()))?;
        let mut replies = self.replies.borrow_mut();
        let built = self.handle.block_on(async {
            loop {
                let delivery = match replies.next().await {
                    Ok(Some(d)) => d,
                    Ok(None) => return Err("the coordinator went away".to_string()),
                    Err(e) => {
                        warn!(error = %e, "dropped a malformed IFD reply");
                        continue;
                    }
                };
                let body = delivery.envelope.body.clone();
                let _ = delivery.ack().await;
                match body {
                    Message::IfdResponse(r) if r.request_id == request_id => return r.result,
                    _ => continue,
                }
            }
        });
        let built = built.map_err(fail)?;
        let mut paths = Vec::with_capacity(outputs.len());
        for output in outputs {
            let path = built
                .get(output)
                .ok_or_else(|| fail(format!("the build has no output '{output}'")))?;
            paths.push(
                StorePath::from_absolute_path(path)
                    .map_err(|e| fail(format!("bad output path '{path}': {e}")))?,
            );
        }
        self.handle
            .block_on(kiln_store::realise::realise(
                &self.cache,
                &paths,
                &self.dir,
                4,
            ))
            .map_err(|e| fail(e.to_string()))?;
        Ok(paths.iter().map(|p| self.dir.join(p.base_name())).collect())
    }
}

/// Writes what evaluation adds into a directory and uploads sources and
/// texts (not `.drv` files, which travel as messages) to the binary cache.
struct CacheStore {
    dir: DirStore,
    cache: Arc<BinaryCache>,
    handle: tokio::runtime::Handle,
    uploaded: RefCell<BTreeSet<StorePath>>,
}

impl CacheStore {
    fn upload(&self, path: &StorePath, refs: &BTreeSet<StorePath>) -> Result<(), StoreError> {
        if path.name().ends_with(".drv") || self.uploaded.borrow().contains(path) {
            return Ok(());
        }
        let local = self
            .dir
            .real_path(path)
            .ok_or_else(|| upload_error(path, "not written locally".into()))?;
        let cache = self.cache.clone();
        let meta = PathMeta {
            path: path.clone(),
            references: refs.clone(),
            deriver: None,
            system: None,
            ca: None,
            sigs: BTreeSet::new(),
            expected: None,
        };
        self.handle
            .block_on(upload_path(&cache, meta, local))
            .map_err(|e| upload_error(path, e.to_string()))?;
        self.uploaded.borrow_mut().insert(path.clone());
        Ok(())
    }
}

/// Uploads the local copy `local` of a source store path unless the store
/// has it already (also used by `kiln submit` to ship sources).
pub async fn upload_path(
    cache: &BinaryCache,
    meta: PathMeta,
    local: PathBuf,
) -> Result<(), kiln_store::StoreError> {
    if cache.has_paths(&[meta.path.hash_part()]).await?[0] {
        return Ok(());
    }
    let (reader, writer) = tokio::io::duplex(1 << 20);
    let dump = tokio::task::spawn_blocking(move || {
        let bridge = tokio_util::io::SyncIoBridge::new(writer);
        kiln_nix::nar::write_path(&local, bridge).map(|_| ())
    });
    let stored = cache.add_path(meta, reader).await;
    if let Ok(Err(e)) = dump.await {
        return Err(kiln_store::StoreError::Format {
            context: "serialising a source".into(),
            message: e.to_string(),
        });
    }
    stored.map(|_| ())
}

fn upload_error(path: &StorePath, message: String) -> StoreError {
    StoreError::Upload {
        path: path.to_absolute_path(),
        message,
    }
}

impl Store for CacheStore {
    fn add_path(
        &self,
        path: &Path,
        name: &str,
        filter: Option<&mut PathFilter<'_>>,
    ) -> Result<StorePath, StoreError> {
        let started = std::time::Instant::now();
        let sp = self.dir.add_path(path, name, filter)?;
        tracing::debug!(
            path = %sp,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "source added"
        );
        self.upload(&sp, &BTreeSet::new())?;
        Ok(sp)
    }

    fn add_flat(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        let sp = self.dir.add_flat(path, name)?;
        self.upload(&sp, &BTreeSet::new())?;
        Ok(sp)
    }

    fn add_text(
        &self,
        name: &str,
        text: &str,
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreError> {
        let sp = self.dir.add_text(name, text, refs)?;
        self.upload(&sp, refs)?;
        Ok(sp)
    }

    fn real_path(&self, path: &StorePath) -> Option<PathBuf> {
        self.dir.real_path(path)
    }
}
