//! Helpers shared by Kiln's integration tests: where `../shared` is, and
//! whether a required service must be present (`CI=true`) or may be skipped.

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `../shared` beside the checkout (or `$KILN_SHARED`).
pub fn shared_dir() -> PathBuf {
    if let Ok(p) = std::env::var("KILN_SHARED") {
        return PathBuf::from(p);
    }
    workspace_root().parent().unwrap().join("shared")
}

/// True when running under CI, where a missing service is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Decides whether a test needing `service` runs: true when it is
/// `available`. When it is not, the test fails under CI (`CI=true`) with a
/// message naming what is missing, and otherwise prints a skip note and
/// returns false so the caller can return early.
///
/// ```no_run
/// let up = kiln_tests::tcp_port_open("127.0.0.1:5672");
/// if !kiln_tests::require_service("RabbitMQ at 127.0.0.1:5672", up) {
///     return;
/// }
/// ```
pub fn require_service(service: &str, available: bool) -> bool {
    match service_decision(service, available, in_ci()) {
        Ok(run) => run,
        Err(message) => panic!("{message}"),
    }
}

/// The pure rule behind [`require_service`]: `Ok(true)` to run, `Ok(false)`
/// to skip (after printing why), `Err` with the failure message under CI.
fn service_decision(service: &str, available: bool, ci: bool) -> Result<bool, String> {
    if available {
        Ok(true)
    } else if ci {
        Err(format!(
            "required service missing under CI=true: {service} (run scripts/test.sh to provision it)"
        ))
    } else {
        eprintln!("skipping: {service} is not available (set CI=true to make this a failure)");
        Ok(false)
    }
}

/// A Python interpreter that can import every one of `modules`:
/// `$KILN_PYTHON` (scripts/test.sh points it at the test venv), else
/// `python3`. `None` (skip) when there is none outside CI; under CI it
/// fails like a missing service.
pub fn python_with(modules: &[&str]) -> Option<PathBuf> {
    let python = std::env::var_os("KILN_PYTHON")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let check = format!("import {}", modules.join(", "));
    let ok = std::process::Command::new(&python)
        .args(["-c", &check])
        .output()
        .is_ok_and(|o| o.status.success());
    let what = format!(
        "Python ({}) with {} (scripts/test.sh installs them)",
        python.display(),
        modules.join(", ")
    );
    require_service(&what, ok).then_some(python)
}

/// Whether something accepts TCP connections at `addr` (`host:port`) within
/// two seconds.
pub fn tcp_port_open(addr: &str) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let Ok(addrs) = addr.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok())
}

/// The AMQP URI of the test broker: `$KILN_AMQP_URL`, or the local RabbitMQ
/// with the default guest account.
pub fn amqp_url() -> String {
    std::env::var("KILN_AMQP_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Where and how to reach the S3 test bucket, as provisioned by
/// `scripts/test.sh` (see `/var/lib/kiln-ci/s3.env`).
#[derive(Clone, PartialEq, Eq)]
pub struct S3Env {
    /// `KILN_S3_ENDPOINT`, e.g. `http://127.0.0.1:3900`.
    pub endpoint: String,
    /// `KILN_S3_REGION`, e.g. `garage`.
    pub region: String,
    /// `KILN_S3_BUCKET`, e.g. `kiln-test`.
    pub bucket: String,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Env")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// The environment variables [`S3Env`] is read from, in field order.
pub const S3_ENV_VARS: [&str; 5] = [
    "KILN_S3_ENDPOINT",
    "KILN_S3_REGION",
    "KILN_S3_BUCKET",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
];

impl S3Env {
    /// Reads the settings from the process environment; on failure returns
    /// the names of the variables that are unset or empty.
    pub fn from_env() -> Result<S3Env, Vec<&'static str>> {
        S3Env::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (variable name to value); on
    /// failure returns the names of the variables that are unset or empty.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<S3Env, Vec<&'static str>> {
        let mut missing = Vec::new();
        let mut values = S3_ENV_VARS.map(|name| match lookup(name) {
            Some(v) if !v.trim().is_empty() => v.trim().to_owned(),
            _ => {
                missing.push(name);
                String::new()
            }
        });
        if !missing.is_empty() {
            return Err(missing);
        }
        let mut take = |i: usize| std::mem::take(&mut values[i]);
        Ok(S3Env {
            endpoint: take(0),
            region: take(1),
            bucket: take(2),
            access_key_id: take(3),
            secret_access_key: take(4),
        })
    }

    /// `host:port` of the endpoint URL, for a reachability probe.
    pub fn endpoint_authority(&self) -> Option<&str> {
        let rest = self
            .endpoint
            .split_once("://")
            .map_or(&*self.endpoint, |(_, r)| r);
        let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
        authority.contains(':').then_some(authority)
    }

    /// An S3 client for this endpoint: static credentials, the configured
    /// region and path-style addressing (what Garage expects).
    pub async fn client(&self) -> aws_sdk_s3::Client {
        use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
        let credentials = Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            None,
            None,
            "kiln-tests",
        );
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .credentials_provider(credentials)
            .load()
            .await;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

/// The S3 test settings when all of [`S3_ENV_VARS`] are set. When some are
/// missing this applies the [`require_service`] rule: it fails under CI
/// naming the missing variables, else prints a skip note and returns `None`.
pub fn s3_config() -> Option<S3Env> {
    match S3Env::from_env() {
        Ok(env) => Some(env),
        Err(missing) => {
            let what = format!("S3 test bucket (unset: {})", missing.join(", "));
            require_service(&what, false);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const FULL: [(&str, &str); 5] = [
        ("KILN_S3_ENDPOINT", "http://127.0.0.1:3900"),
        ("KILN_S3_REGION", "garage"),
        ("KILN_S3_BUCKET", "kiln-test"),
        ("AWS_ACCESS_KEY_ID", "GK0123"),
        ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
    ];

    #[test]
    fn s3_env_reads_every_field() {
        let env = S3Env::from_lookup(lookup(&FULL)).unwrap();
        assert_eq!(env.endpoint, "http://127.0.0.1:3900");
        assert_eq!(env.region, "garage");
        assert_eq!(env.bucket, "kiln-test");
        assert_eq!(env.access_key_id, "GK0123");
        assert_eq!(env.secret_access_key, "s3cr3t");
        assert_eq!(env.endpoint_authority(), Some("127.0.0.1:3900"));
        assert!(!format!("{env:?}").contains("s3cr3t"));
    }

    #[test]
    fn s3_env_names_missing_and_empty_vars() {
        let mut pairs = FULL.to_vec();
        pairs.retain(|(k, _)| *k != "KILN_S3_BUCKET");
        pairs[0].1 = "  ";
        let err = S3Env::from_lookup(lookup(&pairs)).unwrap_err();
        assert_eq!(err, vec!["KILN_S3_ENDPOINT", "KILN_S3_BUCKET"]);
        assert_eq!(
            S3Env::from_lookup(|_| None).unwrap_err(),
            S3_ENV_VARS.to_vec()
        );
    }

    #[test]
    fn endpoint_authority_needs_a_port() {
        let mut env = S3Env::from_lookup(lookup(&FULL)).unwrap();
        env.endpoint = "https://s3.example.org".into();
        assert_eq!(env.endpoint_authority(), None);
        env.endpoint = "localhost:9000/".into();
        assert_eq!(env.endpoint_authority(), Some("localhost:9000"));
    }

    #[test]
    fn service_rule_fails_only_under_ci() {
        assert_eq!(service_decision("x", true, true), Ok(true));
        assert_eq!(service_decision("x", true, false), Ok(true));
        assert_eq!(service_decision("x", false, false), Ok(false));
        let err = service_decision("RabbitMQ at 127.0.0.1:5672", false, true).unwrap_err();
        assert!(err.contains("RabbitMQ at 127.0.0.1:5672"), "{err}");
    }

    #[test]
    fn port_probe_sees_a_listener_and_its_absence() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert!(tcp_port_open(&addr));
        drop(listener);
        assert!(!tcp_port_open(&addr));
        assert!(!tcp_port_open("not an address"));
    }
}

/// Copies the host's static busybox to `<parent>/busybox/bin/busybox`, the
/// layout the build corpus expects. `None` (a skip, or a failure under
/// `CI=true`) when `/bin/busybox` is missing.
pub fn host_busybox(parent: &std::path::Path) -> Option<PathBuf> {
    let host = std::path::Path::new("/bin/busybox");
    if !require_service(
        "busybox (/bin/busybox, apt-get install busybox-static)",
        host.is_file(),
    ) {
        return None;
    }
    let dir = parent.join("busybox");
    std::fs::create_dir_all(dir.join("bin")).expect("creating the busybox directory");
    std::fs::copy(host, dir.join("bin/busybox")).expect("copying /bin/busybox");
    Some(dir)
}

/// Store paths, NARs and path metadata for store tests.
pub mod store_fixtures {
    use std::collections::BTreeSet;
    use std::hash::{BuildHasher, Hasher as _};

    use kiln_nix::nar::NarWriter;
    use kiln_nix::store_path::StorePath;
    use kiln_store::cache::PathMeta;

    /// A random 20-byte digest, different on every call.
    pub fn random_digest() -> [u8; 20] {
        let mut out = [0u8; 20];
        for chunk in out.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos(),
            );
            chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
        }
        out
    }

    /// A fresh store path named `name`.
    pub fn new_path(name: &str) -> StorePath {
        StorePath::new(random_digest(), name).unwrap()
    }

    /// A NAR of a directory holding one file (and a symlink to `refers_to`).
    pub fn make_nar(content: &[u8], refers_to: Option<&StorePath>) -> Vec<u8> {
        let mut w = NarWriter::new(Vec::new()).unwrap();
        w.start_directory(None).unwrap();
        w.file(
            Some(b"data"),
            false,
            content.len() as u64,
            &mut &content[..],
        )
        .unwrap();
        if let Some(r) = refers_to {
            w.symlink(Some(b"dep"), r.to_absolute_path().as_bytes())
                .unwrap();
        }
        w.end_directory().unwrap();
        w.finish().unwrap()
    }

    /// Metadata of `path` with `refs`, for `system`.
    pub fn meta(path: &StorePath, refs: &[&StorePath], system: Option<&str>) -> PathMeta {
        PathMeta {
            path: path.clone(),
            references: refs.iter().map(|r| (*r).clone()).collect(),
            deriver: None,
            system: system.map(str::to_string),
            ca: None,
            sigs: BTreeSet::new(),
            expected: None,
        }
    }
}

/// A binary cache over a fresh local store in `dir/store`, staging in `dir`.
pub async fn local_cache(dir: &std::path::Path) -> std::sync::Arc<kiln_store::cache::BinaryCache> {
    let store = kiln_store::backend::local::LocalStore::open(dir.join("store"))
        .await
        .expect("opening a local store");
    std::sync::Arc::new(kiln_store::cache::BinaryCache::new(
        std::sync::Arc::new(store),
        kiln_store::cache::CacheOptions {
            temp_dir: dir.to_path_buf(),
            ..kiln_store::cache::CacheOptions::default()
        },
    ))
}

/// A job's events from its subscription, up to and including `JobFinished`;
/// panics if the job does not finish within `limit`.
pub async fn job_events(
    events: &mut Box<dyn kiln_protocol::Subscription>,
    limit: std::time::Duration,
) -> Vec<kiln_protocol::Event> {
    let mut seen = Vec::new();
    loop {
        let d = tokio::time::timeout(limit, events.next())
            .await
            .expect("job finished in time")
            .unwrap()
            .expect("the event stream stayed open");
        let kiln_protocol::Message::JobEvent(ev) = d.envelope.body else {
            panic!("not an event: {:?}", d.envelope.body)
        };
        let done = matches!(ev.event, kiln_protocol::Event::JobFinished { .. });
        seen.push(ev.event);
        if done {
            return seen;
        }
    }
}

/// Plays the CLI and takes the evaluator's part of the hand-off: subscribes
/// to the job's events, submits `spec` and acknowledges the `EvalRequest`
/// the coordinator sends for it. The caller then sends the derivation
/// stream itself. Returns the job's event subscription.
pub async fn submit_job(
    transport: &dyn kiln_protocol::Transport,
    spec: kiln_protocol::JobSpec,
) -> Box<dyn kiln_protocol::Subscription> {
    use kiln_protocol::{Envelope, Message, Route};
    let job_id = spec.job_id;
    let events = transport
        .subscribe(&Route::JobEvents(job_id))
        .await
        .unwrap();
    let mut eval = transport.subscribe(&Route::Eval).await.unwrap();
    transport
        .publish(&Route::Jobs, &Envelope::new(Message::SubmitJob(spec)), 0)
        .await
        .unwrap();
    let req = eval.next().await.unwrap().unwrap();
    assert!(matches!(req.envelope.body, Message::EvalRequest(ref s) if s.job_id == job_id));
    req.ack().await.unwrap();
    events
}
