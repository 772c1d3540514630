//! A build farm for end-to-end tests: every role a separate `kiln`
//! process, on the real RabbitMQ (a vhost of its own per farm) and the real
//! S3 (a key prefix of its own per farm).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Farm {
    pub name: String,
    pub vhost: String,
    pub amqp: String,
    pub store: String,
    pub tmp: tempfile::TempDir,
    pub busybox: PathBuf,
    procs: Vec<Proc>,
    /// Held until the farm is gone (after its processes and vhost).
    _broker: BrokerUse,
}

/// Farms share the one broker; a test that stops it has it alone.
static BROKER: std::sync::RwLock<()> = std::sync::RwLock::new(());

enum BrokerUse {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

pub struct Proc {
    pub label: String,
    pub child: Child,
    pub log: PathBuf,
    pub metrics_port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rabbitmqctl(args: &[&str]) -> Output {
    Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("running rabbitmqctl")
}

/// The test store's settings, from the environment scripts/test.sh exports.
fn s3_url(prefix: &str) -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (bucket, endpoint) = (var("KILN_S3_BUCKET")?, var("KILN_S3_ENDPOINT")?);
    var("AWS_ACCESS_KEY_ID")?;
    let region = var("KILN_S3_REGION").unwrap_or_else(|| "garage".into());
    Some(format!(
        "s3://{bucket}?endpoint={endpoint}&region={region}&path-style=true&prefix={prefix}"
    ))
}

impl Farm {
    /// A farm named `name`, or `None` (the test is skipped) when RabbitMQ
    /// or S3 is missing outside CI; under `CI=true` a missing service fails.
    pub fn new(name: &str) -> Option<Farm> {
        Farm::create(name, false)
    }

    /// A farm that has the broker to itself while it lives (its test stops
    /// and starts the broker, which would disturb every other farm).
    pub fn alone(name: &str) -> Option<Farm> {
        Farm::create(name, true)
    }

    fn create(name: &str, alone: bool) -> Option<Farm> {
        // First: a farm that has the broker alone may be stopping it.
        let broker = if alone {
            BrokerUse::Alone(BROKER.write().unwrap_or_else(|e| e.into_inner()))
        } else {
            BrokerUse::Shared(BROKER.read().unwrap_or_else(|e| e.into_inner()))
        };
        if !kiln_tests::require_service(
            "RabbitMQ at 127.0.0.1:5672",
            kiln_tests::tcp_port_open("127.0.0.1:5672"),
        ) {
            return None;
        }
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let store = s3_url(&format!("farm-{name}-{suffix}"));
        if !kiln_tests::require_service(
            "S3 (KILN_S3_ENDPOINT, KILN_S3_BUCKET, AWS_ACCESS_KEY_ID; run scripts/test.sh)",
            store.is_some(),
        ) {
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let busybox = kiln_tests::host_busybox(tmp.path())?;
        let vhost = format!("kiln-test-{name}-{suffix}");
        let out = rabbitmqctl(&["add_vhost", &vhost]);
        assert!(out.status.success(), "add_vhost: {out:?}");
        let out = rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        assert!(out.status.success(), "set_permissions: {out:?}");
        let amqp = format!(
            "amqp://guest:guest@127.0.0.1:5672/{}",
            vhost.replace('/', "%2f")
        );
        Some(Farm {
            name: name.to_string(),
            vhost,
            amqp,
            store: store.unwrap(),
            tmp,
            busybox,
            procs: Vec::new(),
            _broker: broker,
        })
    }

    pub fn kiln(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.env("KILN_AMQP_URL", &self.amqp)
            .env("KILN_STORE_URL", &self.store)
            .env("XDG_CACHE_HOME", self.tmp.path().join("xdg-client"))
            .env_remove("KILN_LOG");
        c
    }

    /// Starts `kiln <role> <args>` as a process of its own; returns its
    /// index.
    pub fn spawn(&mut self, role: &str, label: &str, args: &[&str]) -> usize {
        let dir = self.tmp.path().join(label);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let port = free_port();
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.arg(role)
            .args(["--amqp", &self.amqp])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .env("KILN_STORE_URL", &self.store)
            .env("XDG_CACHE_HOME", dir.join("xdg"))
            .env(
                "KILN_LOG",
                std::env::var("KILN_TEST_LOG").unwrap_or("info,kiln_protocol=debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        match role {
            "builder" => {
                c.args(["--cache-dir", dir.join("cache").to_str().unwrap()])
                    .args(["--builder-id", label, "--heartbeat-interval", "0.5"]);
            }
            "evaluator" | "coordinator" => {
                c.args(["--work-dir", dir.join("work").to_str().unwrap()]);
            }
            _ => {}
        }
        c.args(args);
        let child = c.spawn().expect("starting kiln");
        self.procs.push(Proc {
            label: label.to_string(),
            child,
            log,
            metrics_port: port,
        });
        self.procs.len() - 1
    }

    /// The usual farm: one coordinator, `evaluators` evaluators and
    /// `builders` builders (one slot each).
    pub fn start(&mut self, evaluators: usize, builders: usize) {
        self.spawn("coordinator", "coordinator", &[]);
        for i in 0..evaluators {
            self.spawn("evaluator", &format!("evaluator{i}"), &[]);
        }
        for i in 0..builders {
            self.spawn("builder", &format!("builder{i}"), &["-j", "1"]);
        }
    }

    pub fn proc(&self, i: usize) -> &Proc {
        &self.procs[i]
    }

    pub fn index_of(&self, label: &str) -> Option<usize> {
        self.procs.iter().position(|p| p.label == label)
    }

    /// Sends `signal` to process `i`.
    pub fn signal(&mut self, i: usize, signal: i32) {
        unsafe {
            libc::kill(self.procs[i].child.id() as i32, signal);
        }
        if signal == libc::SIGKILL {
            let _ = self.procs[i].child.wait();
        }
    }

    /// Every process's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for p in &self.procs {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            s.push_str(&format!("---- {} ----\n", p.label));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// `kiln submit --wait --json --no-out-link` of `file` with the busybox
    /// argument; `extra` flags after.
    pub fn submit_cmd(&self, file: &Path, extra: &[&str]) -> Command {
        let mut c = self.kiln();
        c.arg("submit")
            .arg(file)
            .args(["--arg", "busybox"])
            .arg(&self.busybox)
            .args(["--wait", "--json", "--no-out-link"])
            .args(extra)
            .current_dir(self.tmp.path());
        c
    }

    /// Starts `kiln submit --wait --json` of `file` in the background, its
    /// output captured.
    pub fn spawn_submit(&self, file: &Path, extra: &[&str]) -> Child {
        self.submit_cmd(file, extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Calls `f` until it gives something, at most `limit`; fails with
    /// the farm's logs, saying what did not happen.
    pub fn poll<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = std::time::Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > limit {
                panic!("{what}: not within {limit:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits (at most two minutes) until the builders run `n` builds.
    pub fn wait_running(&self, n: f64) {
        self.poll("builds started", Duration::from_secs(120), || {
            (self.metric_sum("builder", "kiln_builder_running_builds") >= n).then_some(())
        });
    }

    /// Runs a submission to its end (at most `limit`).
    pub fn submit(&self, file: &Path, extra: &[&str], limit: Duration) -> Submitted {
        Submitted::wait(self.spawn_submit(file, extra), limit, self)
    }

    /// Sum of a metric over every process labelled `prefix*`.
    pub fn metric_sum(&self, prefix: &str, metric: &str) -> f64 {
        let mut total = 0.0;
        for p in self.procs.iter().filter(|p| p.label.starts_with(prefix)) {
            let Ok(text) = http_get(p.metrics_port, "/metrics") else {
                continue;
            };
            for line in text.lines() {
                if line.starts_with(metric) && !line.starts_with('#') {
                    let rest = &line[metric.len()..];
                    if rest.starts_with(' ') || rest.starts_with('{') {
                        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok())
                        {
                            total += v;
                        }
                    }
                }
            }
        }
        total
    }

    /// `kiln path-info --json` of `paths` in the farm's store.
    pub fn path_info(&self, paths: &[&str]) -> serde_json::Value {
        let out = self
            .kiln()
            .args(["path-info", "--json", "--store", &self.store])
            .args(paths)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "path-info: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        let _ = rabbitmqctl(&["delete_vhost", &self.vhost]);
        // KILN_TEST_KEEP=1 keeps every process's full log for a look.
        if std::env::var_os("KILN_TEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.tmp, tempfile::tempdir().unwrap()).keep();
            eprintln!("farm '{}' kept in {}", self.name, dir.display());
        }
    }
}

/// Waits for `child` at most `limit`, then kills it and fails with the
/// farm's logs.
pub fn wait_output(child: Child, limit: Duration, farm: &Farm) -> Output {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let client = rx
                .recv_timeout(Duration::from_secs(10))
                .ok()
                .and_then(|o| o.ok())
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            panic!(
                "kiln submit did not finish in {limit:?}\n---- kiln submit ----\n{client}\n{}",
                farm.logs()
            );
        }
    }
}

/// A plain HTTP GET on localhost.
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// A finished `kiln submit --wait --json`.
pub struct Submitted {
    pub code: Option<i32>,
    pub events: Vec<serde_json::Value>,
    pub stderr: String,
}

impl Submitted {
    fn wait(mut child: Child, limit: Duration, farm: &Farm) -> Submitted {
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + limit;
        let mut events = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => events.push(
                    serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not JSON {line:?}: {e}")),
                ),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(_) => {}
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "kiln submit did not finish in {limit:?}; events so far: {}\n{}",
                    events.len(),
                    farm.logs()
                );
            }
        }
        let status = child.wait().unwrap();
        Submitted {
            code: status.code(),
            events,
            stderr: err.join().unwrap(),
        }
    }

    pub fn finished(&self) -> Option<&serde_json::Value> {
        self.events
            .iter()
            .find(|e| e["event"]["event"] == "job_finished")
    }

    /// Events of `kind`.
    pub fn of(&self, kind: &str) -> Vec<&serde_json::Value> {
        self.events
            .iter()
            .map(|e| &e["event"])
            .filter(|e| e["event"] == kind)
            .collect()
    }
}

/// Checks every case of `conformance/build/<name>.expected.json` against
/// the farm's store and the job's events: the same outputs, narHash,
/// narSize and references as Nix, and failures where Nix fails. Returns
/// (outputs checked, failures checked, problems).
pub fn check_against_nix(
    farm: &Farm,
    expected_file: &Path,
    run: &Submitted,
) -> (usize, usize, Vec<String>) {
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(expected_file).unwrap()).unwrap();
    let name = expected_file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let mut problems = Vec::new();
    let (mut built, mut failed) = (0, 0);
    let cases = expected["cases"].as_object().unwrap();
    let nix_fails = cases.values().any(|c| c["buildFails"] == true);
    if (run.code == Some(0)) == nix_fails {
        problems.push(format!(
            "{name}: exit {:?} but Nix {}\n{}",
            run.code,
            if nix_fails { "fails" } else { "succeeds" },
            run.stderr
        ));
        return (0, 0, problems);
    }
    let Some(finished) = run.finished() else {
        problems.push(format!("{name}: no job_finished event\n{}", run.stderr));
        return (0, 0, problems);
    };
    for (case, c) in cases {
        let drv = c["drvPath"].as_str().unwrap();
        let rooted = finished["event"]["roots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["drv_path"] == drv);
        if !rooted {
            problems.push(format!(
                "{name}/{case}: no root with Nix's drvPath {drv} among {}",
                finished["event"]["roots"]
            ));
            continue;
        }
        if c["buildFails"] == true {
            let reported = run.of("failed").iter().any(|e| e["drv_path"] == drv)
                || run
                    .of("dependency_failed")
                    .iter()
                    .any(|e| e["drv_path"] == drv);
            if reported {
                failed += 1;
            } else {
                problems.push(format!("{name}/{case}: Nix fails, no failure reported"));
            }
            continue;
        }
        for (output, want) in c["built"].as_object().unwrap() {
            let path = c["outputs"][output].as_str().unwrap();
            let info = farm.path_info(&[path]);
            let got = info
                .as_array()
                .and_then(|a| a.first())
                .cloned()
                .unwrap_or_default();
            let mut refs: Vec<String> = got["references"]
                .as_array()
                .map(|a| a.iter().map(|r| r.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            refs.sort();
            let mut want_refs: Vec<String> = want["references"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect();
            want_refs.sort();
            if got["narHash"] != want["narHash"]
                || got["narSize"] != want["narSize"]
                || refs != want_refs
            {
                problems.push(format!(
                    "{name}/{case}/{output}: store has {got} but Nix {want}"
                ));
            } else {
                built += 1;
            }
        }
    }
    (built, failed, problems)
}

/// The conformance build corpus: (`.nix`, `.expected.json`) pairs.
pub fn build_corpus() -> Vec<(PathBuf, PathBuf)> {
    let corpus = kiln_tests::shared_dir().join("conformance/build");
    let mut files: Vec<(PathBuf, PathBuf)> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".expected.json"))
        .map(|p| {
            let nix = corpus.join(
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .replace(".expected.json", ".nix"),
            );
            (nix, p)
        })
        .collect();
    files.sort();
    files
}
