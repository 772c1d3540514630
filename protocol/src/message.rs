//! The messages. Every type is plain data: paths are strings, derivations
//! travel as their exact ATerm text, hashes as SRI strings.
//!
//! Compatibility rule: within one [`crate::PROTOCOL_VERSION`], fields may be
//! added only with `#[serde(default)]`; anything else bumps the version.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Identifies a job (one `kiln build` invocation).
pub type JobId = Uuid;
/// Identifies one build attempt of one derivation.
pub type BuildId = Uuid;

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Message {
    /// CLI → coordinator: start a job.
    SubmitJob(JobSpec),
    /// CLI → coordinator: stop a job's pending and running builds.
    CancelJob { job_id: JobId },
    /// Coordinator → evaluators: evaluate a job's expression.
    EvalRequest(JobSpec),
    /// Coordinator → evaluators: stop evaluating a job (it stopped: fail-fast
    /// or cancelled); the evaluator ends it with an `EvalFinished` error.
    /// With `keep`, the evaluation attempt `keep` goes on and only older
    /// attempts stop (a coordinator that took over restarts evaluations).
    CancelEval {
        job_id: JobId,
        #[serde(default)]
        keep: Option<Uuid>,
    },
    /// Evaluator → coordinator: one derivation, as soon as it is instantiated.
    Derivation(DerivationMsg),
    /// Evaluator → coordinator: a root attribute evaluated to this derivation.
    EvalRoot(EvalRoot),
    /// Evaluator → coordinator: evaluation of a job ended.
    EvalFinished(EvalFinished),
    /// Evaluator → coordinator: evaluation needs these outputs (IFD).
    IfdRequest(IfdRequest),
    /// Coordinator → the waiting evaluator: the answer to an [`IfdRequest`].
    IfdResponse(IfdResponse),
    /// Coordinator → builders: build one derivation.
    BuildRequest(BuildRequest),
    /// Coordinator → builders: stop a build, whether queued or running.
    CancelBuild { build_id: BuildId, drv_path: String },
    /// Builder → coordinator: a build began.
    BuildStarted(BuildStarted),
    /// Builder → coordinator: a batch of log lines.
    BuildLog(BuildLog),
    /// Builder → coordinator: outputs streamed back by a builder without
    /// store credentials.
    NarChunk(NarChunk),
    /// Builder → coordinator: a build ended.
    BuildResult(BuildResult),
    /// Builder → coordinator: a build request was set aside among the
    /// dead letters (its inputs could not be fetched); it waits for an
    /// operator to replay it.
    BuildParked(BuildParked),
    /// Coordinator → CLIs: one event of a job.
    JobEvent(JobEvent),
    /// Builder → coordinator: liveness and capacity.
    Heartbeat(Heartbeat),
    /// CLI → coordinator: how a job (or every recent job) stands; answered
    /// on [`crate::Route::Reply`] with the query's id.
    StatusQuery(StatusQuery),
    /// Coordinator → the asking CLI: the answer to a [`StatusQuery`].
    StatusReply(StatusReply),
}

/// Where a job's expression comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExprSource {
    /// A file the evaluator can read (embedded mode, or a shared checkout).
    File { path: String },
    /// An expression given inline (`-E`), resolved relative to `base_dir`.
    Expr { text: String, base_dir: String },
}

/// `--arg NAME EXPR` or `--argstr NAME STRING`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoArg {
    pub name: String,
    pub value: ArgValue,
}

/// The value of an [`AutoArg`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum ArgValue {
    Expr(String),
    Str(String),
}

/// One `-I [PREFIX=]PATH` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchPathEntry {
    pub prefix: Option<String>,
    pub path: String,
}

/// How a job treats failures and how hard it may push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOptions {
    /// Build everything buildable after a failure (`--keep-going`).
    pub keep_going: bool,
    /// Builds of this job that may run at once.
    pub max_jobs: u32,
    /// Higher runs first when builders are contended.
    pub priority: i32,
    /// Wall-clock limit per build, seconds.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Limit on time without log output per build, seconds.
    #[serde(default)]
    pub max_silent_secs: Option<u64>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            keep_going: false,
            max_jobs: 1,
            priority: 0,
            timeout_secs: None,
            max_silent_secs: None,
        }
    }
}

/// A job as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub job_id: JobId,
    pub source: ExprSource,
    /// `-A` attribute paths; empty means the whole value.
    pub attr_paths: Vec<String>,
    pub args: Vec<AutoArg>,
    pub search_path: Vec<SearchPathEntry>,
    pub options: JobOptions,
    /// Local paths of the submitter's machine (the expression tree, paths
    /// named on the command line) shipped into the store as sources: an
    /// evaluator unpacks each and reads it where the submitter named it.
    #[serde(default)]
    pub sources: Vec<ShippedSource>,
    /// Which evaluation of the job this is: nil for the first; a
    /// coordinator that takes a job over evaluates it again under a new
    /// attempt, and ignores the roots and ends of older attempts.
    #[serde(default)]
    pub attempt: Uuid,
}

/// A local path shipped with a job; see [`JobSpec::sources`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShippedSource {
    /// The absolute path on the submitter's machine.
    pub local: String,
    /// The store path holding its contents.
    pub store_path: String,
}

/// A derivation as instantiated by an evaluator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DerivationMsg {
    pub job_id: JobId,
    /// The evaluation attempt ([`JobSpec::attempt`]) that produced it.
    #[serde(default)]
    pub attempt: Uuid,
    pub drv_path: String,
    /// The exact `.drv` bytes (ATerm).
    pub aterm: String,
}

/// A root of the job: an attribute that evaluated to a derivation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRoot {
    pub job_id: JobId,
    /// The evaluation attempt ([`JobSpec::attempt`]) that produced it.
    #[serde(default)]
    pub attempt: Uuid,
    pub attr_path: String,
    pub drv_path: String,
    /// The outputs `kiln build` should realise and link (name → path).
    pub outputs: BTreeMap<String, String>,
}

/// The end of a job's evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalFinished {
    pub job_id: JobId,
    /// The evaluation attempt ([`JobSpec::attempt`]) that ended.
    #[serde(default)]
    pub attempt: Uuid,
    /// `None` on success, else the evaluation error as Nix would print it.
    pub error: Option<String>,
}

/// Import-from-derivation: the evaluator waits for these outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IfdRequest {
    pub job_id: JobId,
    pub request_id: Uuid,
    pub drv_path: String,
    pub aterm: String,
    pub outputs: Vec<String>,
}

/// The answer to an [`IfdRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IfdResponse {
    pub job_id: JobId,
    pub request_id: Uuid,
    /// Output name → realised path, or why it could not be built.
    pub result: Result<BTreeMap<String, String>, String>,
}

/// Where a builder puts what it built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadMode {
    /// The builder has store credentials and writes outputs itself.
    Direct,
    /// The builder streams outputs back as [`NarChunk`]s.
    ViaCoordinator,
}

/// One build, routed by `system` and `required_features`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRequest {
    pub build_id: BuildId,
    pub drv_path: String,
    pub aterm: String,
    pub system: String,
    pub required_features: Vec<String>,
    /// The realised input closure the builder must fetch.
    pub input_paths: Vec<String>,
    pub priority: i32,
    pub timeout_secs: Option<u64>,
    pub max_silent_secs: Option<u64>,
    pub upload: UploadMode,
}

/// A build began on `builder_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildStarted {
    pub build_id: BuildId,
    pub drv_path: String,
    pub builder_id: String,
}

/// Log lines of a running build, in order, batched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildLog {
    pub build_id: BuildId,
    pub drv_path: String,
    pub lines: Vec<String>,
}

/// Largest payload of one [`NarChunk`].
pub const MAX_NAR_CHUNK: usize = 1 << 20;

/// A piece of an output's NAR for the coordinator to store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NarChunk {
    pub build_id: BuildId,
    pub output: String,
    pub offset: u64,
    #[serde(with = "serde_bytes_compat")]
    pub data: Vec<u8>,
    pub last: bool,
}

/// One realised output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuiltOutput {
    pub name: String,
    pub path: String,
    /// SRI, e.g. `sha256-…`.
    pub nar_hash: String,
    pub nar_size: u64,
    pub references: Vec<String>,
}

/// Why a build failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    BuilderExit,
    OutputMissing,
    HashMismatch,
    ReferenceCycle,
    Timeout,
    SilentTimeout,
    Cancelled,
    Sandbox,
    Store,
    Unsupported,
    Internal,
}

/// How a build ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum BuildOutcome {
    Built {
        outputs: Vec<BuiltOutput>,
    },
    Failed {
        kind: FailureKind,
        message: String,
        log_tail: Vec<String>,
    },
}

/// A build ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildResult {
    pub build_id: BuildId,
    pub drv_path: String,
    pub builder_id: String,
    pub duration_ms: u64,
    pub outcome: BuildOutcome,
}

/// A build request set aside among the dead letters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildParked {
    pub build_id: BuildId,
    pub drv_path: String,
    pub builder_id: String,
    pub reason: String,
}

/// The final state of one derivation within a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrvStatus {
    Built,
    Cached,
    Failed,
    DependencyFailed,
    Cancelled,
    NotBuilt,
}

/// One line of a job's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrvSummary {
    pub drv_path: String,
    pub status: DrvStatus,
    pub duration_ms: Option<u64>,
    /// Store key of the log (`log/<drv basename>`), when one was kept.
    pub log: Option<String>,
}

/// Something that happened in a job; every front end renders from these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Discovered {
        drv_path: String,
        /// Its input derivations, so front ends can show dependency paths.
        #[serde(default)]
        inputs: Vec<String>,
    },
    /// A root attribute of the job evaluated to this derivation.
    Root {
        attr_path: String,
        drv_path: String,
    },
    Cached {
        drv_path: String,
    },
    Queued {
        drv_path: String,
    },
    Started {
        drv_path: String,
        builder_id: String,
    },
    Log {
        drv_path: String,
        line: String,
    },
    Built {
        drv_path: String,
        duration_ms: u64,
        outputs: BTreeMap<String, String>,
    },
    Failed {
        drv_path: String,
        reason: String,
        log_tail: Vec<String>,
        /// Why it failed (a timeout, a hash mismatch, …), when known.
        #[serde(default)]
        kind: Option<FailureKind>,
    },
    DependencyFailed {
        drv_path: String,
        dependency: String,
    },
    EvalFinished {
        error: Option<String>,
    },
    JobFinished {
        success: bool,
        roots: Vec<EvalRoot>,
        summary: Vec<DrvSummary>,
        /// The job ended because it was cancelled (`kiln cancel`, Ctrl-C).
        #[serde(default)]
        cancelled: bool,
    },
}

/// An [`Event`] of one job, numbered so a front end can spot gaps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: JobId,
    pub seq: u64,
    /// Milliseconds since the job was accepted.
    pub at_ms: u64,
    pub event: Event,
}

/// A builder's periodic announcement. It renews the builder's lease on
/// the builds it runs: a builder that falls silent for three intervals
/// has its builds dispatched again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub builder_id: String,
    pub systems: Vec<String>,
    pub features: Vec<String>,
    pub max_jobs: u32,
    pub running: u32,
    /// The machine it runs on.
    #[serde(default)]
    pub host: String,
    /// The builds it runs now.
    #[serde(default)]
    pub running_builds: Vec<RunningBuild>,
    /// One-minute load average of its machine.
    #[serde(default)]
    pub load: f64,
    /// Milliseconds between its heartbeats.
    #[serde(default)]
    pub interval_ms: u64,
    /// Set in its last heartbeat, sent as it shuts down.
    #[serde(default)]
    pub stopping: bool,
}

/// A build a builder is running, as its heartbeat lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningBuild {
    pub build_id: BuildId,
    pub drv_path: String,
}

/// Asks the coordinator how jobs stand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusQuery {
    /// The reply goes to `Route::Reply(query_id)`.
    pub query_id: Uuid,
    /// One job in detail; `None` lists every running and recent job.
    pub job_id: Option<JobId>,
}

/// The coordinator's answer to a [`StatusQuery`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub query_id: Uuid,
    /// The job asked for (none when it is unknown), or every running job
    /// and the recently finished ones, newest first.
    pub jobs: Vec<JobStatus>,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Its expression is still being evaluated (builds may run already).
    Evaluating,
    /// Evaluation ended; builds remain.
    Building,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    /// Nothing more will happen to the job.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// Derivations of a job by where they stand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCounts {
    pub total: u64,
    /// Waiting for inputs, or for the store check.
    pub waiting: u64,
    /// Sent to the builders, not started.
    pub queued: u64,
    pub running: u64,
    pub built: u64,
    pub cached: u64,
    pub failed: u64,
    pub dependency_failed: u64,
    pub cancelled: u64,
}

/// Why a derivation of a job has not started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum WaitReason {
    /// The store is being asked whether its outputs exist.
    CheckingStore,
    /// `missing` of its input derivations are not built yet, `first` one
    /// of them.
    Inputs { missing: u64, first: String },
    /// No live builder offers its system with all its required features.
    NoBuilder {
        system: String,
        features: Vec<String>,
    },
    /// On its build queue with `ahead` builds before it.
    QueuedBehind { ahead: u64, queue: String },
    /// Its build request is among the dead letters (`kiln dlq replay`
    /// puts it back).
    DeadLettered { message: String },
}

/// A derivation that waits, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingDrv {
    pub drv_path: String,
    #[serde(flatten)]
    pub why: WaitReason,
}

/// A build that runs now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningDrv {
    pub drv_path: String,
    pub builder_id: String,
    /// Milliseconds since it started.
    pub running_ms: u64,
}

/// One job as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub job_id: JobId,
    pub state: JobState,
    /// What was asked for: the file or expression and the attributes.
    pub what: String,
    /// Milliseconds since the Unix epoch when the coordinator accepted it.
    pub accepted_at_ms: u64,
    /// Milliseconds it has run (until it finished, for a finished job).
    pub elapsed_ms: u64,
    pub counts: JobCounts,
    pub roots: Vec<EvalRoot>,
    pub eval_error: Option<String>,
    pub running: Vec<RunningDrv>,
    /// Why each derivation not yet started waits (at most
    /// [`MAX_WAITING_LISTED`]; `counts` has them all).
    pub waiting: Vec<WaitingDrv>,
    /// Every derivation that ended, with its log's store key (for `kiln
    /// logs`), at most [`MAX_WAITING_LISTED`] of them.
    pub ended: Vec<DrvSummary>,
}

/// The most derivations a [`JobStatus`] lists one by one.
pub const MAX_WAITING_LISTED: usize = 1000;

/// MessagePack `bin` encoding for byte buffers (instead of an array of ints).
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(data)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte buffer")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                if v.len() > super::MAX_NAR_CHUNK {
                    return Err(E::custom(format!(
                        "NAR chunk of {} bytes exceeds {}",
                        v.len(),
                        super::MAX_NAR_CHUNK
                    )));
                }
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                self.visit_bytes(&v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}
