//! The farm's commands for CI pipelines and operators, end to end: every
//! role a separate `kiln` process over the real RabbitMQ (a vhost per test)
//! and the real S3 (a prefix per test). JUnit reports and `/metrics` are
//! read with real parsers (Python's `junitparser` and
//! `prometheus_client`), queue counts are compared with `rabbitmqctl`.

use crate::farm;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::farm::Farm;

const LIMIT: Duration = Duration::from_secs(240);

/// Writes `{ busybox }: let mk = …; in BODY` into a directory of its own
/// (`kiln submit` ships the file's directory).
fn expr(farm: &Farm, tag: &str, body: &str) -> PathBuf {
    let lib = kiln_tests::shared_dir().join("conformance/build/lib.nix");
    let dir = farm.tmp.path().join(format!("expr-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("default.nix");
    std::fs::write(
        &file,
        format!(
            "{{ busybox }}:\nlet inherit (import {} {{ inherit busybox; }}) mk; in\n{body}\n",
            lib.display()
        ),
    )
    .unwrap();
    file
}

/// Runs `kiln ARGS` against the farm; its output.
fn kiln(farm: &Farm, args: &[&str]) -> std::process::Output {
    farm.kiln().args(args).output().unwrap()
}

/// `kiln ARGS --json`, which must succeed, parsed.
fn kiln_json(farm: &Farm, args: &[&str]) -> serde_json::Value {
    let out = farm.kiln().args(args).arg("--json").output().unwrap();
    assert!(
        out.status.success(),
        "kiln {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        farm.logs()
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kiln {args:?} --json: {e}: {:?}", out.stdout))
}

/// `kiln submit` without `--wait`: the job id it prints.
fn submit_detached(farm: &Farm, file: &Path, extra: &[&str]) -> String {
    let out = farm
        .kiln()
        .arg("submit")
        .arg(file)
        .args(["--arg", "busybox"])
        .arg(&farm.busybox)
        .args(["--no-out-link"])
        .args(extra)
        .current_dir(farm.tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The id of the job that runs a build, once one does (`kiln jobs`).
fn running_job(farm: &Farm) -> String {
    farm.poll("a job running its build", LIMIT, || {
        let jobs = kiln_json(farm, &["jobs"]);
        jobs.as_array()?
            .iter()
            .find(|j| j["counts"]["running"] == 1)
            .and_then(|j| j["job_id"].as_str().map(str::to_string))
    })
}

/// Runs a Python check script with the parser modules it imports.
fn python_check(modules: &[&str], script: &str, args: &[&Path]) -> Option<String> {
    let python = kiln_tests::python_with(modules)?;
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Python check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

const JUNIT_CHECK: &str = r#"
import sys
from junitparser import JUnitXml, Failure
xml = JUnitXml.fromfile(sys.argv[1])
cases = {c.name: c for suite in xml for c in suite}
assert set(cases) == {"ok1", "ok2", "broken"}, sorted(cases)
assert cases["ok1"].is_passed and cases["ok2"].is_passed, (cases["ok1"].result, cases["ok2"].result)
result = cases["broken"].result
assert len(result) == 1 and isinstance(result[0], Failure), result
assert "exit code 7" in result[0].message, result[0].message
assert "about to break" in (result[0].text or ""), result[0].text
assert xml.tests == 3 and xml.failures == 1 and xml.errors == 0, (xml.tests, xml.failures, xml.errors)
print("junit ok")
"#;

const METRICS_CHECK: &str = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
names = {}
for path in sys.argv[1:]:
    for family in text_string_to_metric_families(open(path).read()):
        names[family.name] = family.type
print(json.dumps(names))
"#;

#[test]
fn ci_gets_a_junit_report_distinct_exit_codes_and_parseable_metrics() {
    let Some(mut farm) = Farm::new("ci") else {
        return;
    };
    farm.start(1, 2);
    let file = expr(
        &farm,
        "ci",
        r#"{
  ok1 = mk { name = "ok-one"; script = "echo 1 > $out"; };
  ok2 = mk { name = "ok-two"; script = "echo 2 > $out"; };
  broken = mk { name = "broken"; script = "echo 'about to break' >&2; exit 7"; };
  bad = throw "no such package";
}"#,
    );
    let junit = farm.tmp.path().join("report.xml");
    let junit_arg = junit.to_str().unwrap().to_string();
    let run = farm.submit(
        &file,
        &[
            "-A",
            "ok1",
            "-A",
            "broken",
            "-A",
            "ok2",
            "--keep-going",
            "--junit",
            &junit_arg,
        ],
        LIMIT,
    );
    assert_eq!(
        run.code,
        Some(100),
        "a build failed: {}\n{}",
        run.stderr,
        farm.logs()
    );
    if let Some(out) = python_check(&["junitparser"], JUNIT_CHECK, &[&junit]) {
        assert!(out.contains("junit ok"), "{out}");
    }

    // Each outcome its own code: success, evaluation failure, unreachable.
    let ok = farm.submit(&file, &["-A", "ok1"], LIMIT);
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    let eval = farm.submit(&file, &["-A", "bad"], LIMIT);
    assert_eq!(eval.code, Some(1), "evaluation failed: {}", eval.stderr);
    assert!(eval.stderr.contains("no such package"), "{}", eval.stderr);
    let unreachable = farm
        .submit_cmd(&file, &["-A", "ok1"])
        .env("KILN_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    assert_eq!(
        unreachable.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&unreachable.stderr)
    );

    // /metrics of every role parses as Prometheus text and carries what
    // an operator alerts on.
    let mut files = Vec::new();
    for (i, label) in ["coordinator", "evaluator0", "builder0", "builder1"]
        .iter()
        .enumerate()
    {
        let p = farm.proc(farm.index_of(label).unwrap());
        let text = farm::http_get(p.metrics_port, "/metrics").unwrap();
        let path = farm.tmp.path().join(format!("metrics-{i}.txt"));
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    if let Some(out) = python_check(&["prometheus_client"], METRICS_CHECK, &refs) {
        let names: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        for (name, kind) in [
            ("kiln_build_queue_wait_seconds", "histogram"),
            ("kiln_build_duration_seconds", "histogram"),
            ("kiln_builds", "counter"),
            ("kiln_store_check_seconds", "histogram"),
            ("kiln_builders_connected", "gauge"),
            ("kiln_evaluation_seconds", "histogram"),
            ("kiln_redeliveries", "counter"),
            ("kiln_dead_letters", "counter"),
        ] {
            assert_eq!(
                names.get(name).and_then(|k| k.as_str()),
                Some(kind),
                "{name} in /metrics: {names}"
            );
        }
    }
}

#[test]
fn status_says_why_a_derivation_waits_and_jobs_and_cancel_see_the_job() {
    let Some(mut farm) = Farm::new("status") else {
        return;
    };
    farm.start(1, 1);
    let file = expr(
        &farm,
        "status",
        r#"mk { name = "elsewhere"; system = "riscv64-linux"; script = "echo > $out"; }"#,
    );
    let job = submit_detached(&farm, &file, &[]);
    let status = farm.poll("a waiting reason", LIMIT, || {
        let s = kiln_json(&farm, &["status", &job]);
        let waits = s["waiting"]
            .as_array()?
            .iter()
            .any(|w| w["reason"] == "no_builder" && w["system"] == "riscv64-linux");
        waits.then_some(s)
    });
    assert_eq!(status["counts"]["queued"], 1, "{status}");
    let text = kiln(&farm, &["status", &job]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("no builder offers system riscv64-linux"),
        "{text}"
    );
    let jobs = kiln_json(&farm, &["jobs"]);
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .any(|j| j["job_id"] == job.as_str() && j["state"] != "succeeded"),
        "{jobs}"
    );
    let cancel = kiln(&farm, &["cancel", &job]);
    assert!(
        cancel.status.success(),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    let after = kiln_json(&farm, &["status", &job]);
    assert_eq!(after["state"], "cancelled", "{after}");
    // An unknown job is an error that names it.
    let unknown = kiln(&farm, &["status", &uuid::Uuid::new_v4().to_string()]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("knows no job"));
}

/// Host processes whose command line is `sleep 601`.
fn sleepers() -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.len() >= 2 && args[0].ends_with(b"sleep") && args[1] == b"601" {
            found.push(pid);
        }
    }
    found
}

#[test]
fn cancel_kills_a_running_build_and_the_builder_takes_new_work() {
    let Some(mut farm) = Farm::new("cancel") else {
        return;
    };
    farm.start(1, 1);
    let file = expr(
        &farm,
        "cancel",
        r#"{
  long = mk { name = "long"; script = "sleep 601; echo > $out"; };
  quick = mk { name = "quick"; script = "echo quick > $out"; };
}"#,
    );
    let follower = farm.spawn_submit(&file, &["-A", "long"]);
    let job = running_job(&farm);
    farm.poll("the sleep 601 process", LIMIT, || {
        (!sleepers().is_empty()).then_some(())
    });
    let asked = Instant::now();
    let cancel = kiln(&farm, &["cancel", "--no-wait", &job]);
    assert!(
        cancel.status.success(),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    farm.poll("the build process gone", Duration::from_secs(5), || {
        sleepers().is_empty().then_some(())
    });
    eprintln!("build process gone {:?} after kiln cancel", asked.elapsed());
    let out = farm::wait_output(follower, LIMIT, &farm);
    assert_eq!(
        out.status.code(),
        Some(130),
        "cancelled: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(kiln_json(&farm, &["status", &job])["state"], "cancelled");
    let next = farm.submit(&file, &["-A", "quick"], LIMIT);
    assert_eq!(next.code, Some(0), "{}\n{}", next.stderr, farm.logs());
}

/// `rabbitmqctl list_queues` of the farm's vhost: name → (ready, unacked,
/// consumers).
fn broker_queues(farm: &Farm) -> std::collections::BTreeMap<String, (u64, u64, u64)> {
    let out = Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "-p", &farm.vhost])
        .args([
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ])
        .args(["--formatter", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|q| {
            let n = |k: &str| q[k].as_u64().unwrap_or(0);
            (
                q["name"].as_str().unwrap().to_string(),
                (
                    n("messages_ready"),
                    n("messages_unacknowledged"),
                    n("consumers"),
                ),
            )
        })
        .collect()
}

/// Differences between `kiln queues --json` rows and the broker's view.
fn queue_mismatches(
    rows: &serde_json::Value,
    broker: &std::collections::BTreeMap<String, (u64, u64, u64)>,
    with_unacked: bool,
) -> Vec<String> {
    let mut bad = Vec::new();
    for r in rows.as_array().unwrap() {
        let name = r["name"].as_str().unwrap();
        let Some(&(ready, unacked, consumers)) = broker.get(name) else {
            bad.push(format!("{name}: not on the broker"));
            continue;
        };
        let mine = (
            r["ready"].as_u64().unwrap(),
            r["unacked"].as_u64(),
            r["consumers"].as_u64().unwrap(),
        );
        let want = (ready, with_unacked.then_some(unacked), consumers);
        if mine != want {
            bad.push(format!("{name}: kiln {mine:?}, rabbitmqctl {want:?}"));
        }
    }
    bad
}

#[test]
fn queues_match_rabbitmqctl_with_and_without_the_management_api() {
    let Some(mut farm) = Farm::new("queues") else {
        return;
    };
    let management = "http://guest:guest@127.0.0.1:15672";
    if !kiln_tests::require_service(
        "RabbitMQ's management API at 127.0.0.1:15672 (rabbitmq-plugins enable rabbitmq_management)",
        kiln_tests::tcp_port_open("127.0.0.1:15672"),
    ) {
        return;
    }
    farm.start(1, 1);
    // A build no builder takes: one message ready on its queue.
    let file = expr(
        &farm,
        "queues",
        r#"mk { name = "stuck"; system = "riscv64-linux"; script = "echo > $out"; }"#,
    );
    let job = submit_detached(&farm, &file, &[]);
    farm.poll("the stuck build queued", LIMIT, || {
        let q = broker_queues(&farm);
        (q.get("kiln.build.riscv64-linux.-").map(|c| c.0) == Some(1)).then_some(())
    });
    // Passive declarations: ready and consumers of the queues Kiln knows.
    let rows = kiln_json(&farm, &["queues"]);
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for q in [
        "kiln.jobs",
        "kiln.drvs",
        "kiln.eval",
        "kiln.dead-letter",
        "kiln.build.riscv64-linux.-",
    ] {
        assert!(names.contains(&q), "{q} listed: {names:?}");
    }
    farm.poll(
        "kiln queues agreeing with rabbitmqctl",
        Duration::from_secs(20),
        || {
            let rows = kiln_json(&farm, &["queues"]);
            let bad = queue_mismatches(&rows, &broker_queues(&farm), false);
            if !bad.is_empty() {
                eprintln!("not yet: {bad:?}");
            }
            bad.is_empty().then_some(())
        },
    );
    // The management API: unacknowledged counts too, for every Kiln
    // queue (its statistics lag the broker by a few seconds).
    farm.poll(
        "kiln queues --management agreeing with rabbitmqctl",
        Duration::from_secs(40),
        || {
            let rows = kiln_json(&farm, &["queues", "--management", management]);
            let broker = broker_queues(&farm);
            let listed = rows.as_array().unwrap().len();
            let kiln_queues = broker.keys().filter(|k| k.starts_with("kiln.")).count();
            (queue_mismatches(&rows, &broker, true).is_empty() && listed == kiln_queues)
                .then_some(())
        },
    );
    let table = kiln(&farm, &["queues", "--management", management]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("PUB/S") && table.contains("kiln.build.riscv64-linux.-"),
        "{table}"
    );
    let _ = kiln(&farm, &["cancel", "--no-wait", &job]);
}

#[test]
fn a_build_set_aside_for_missing_inputs_completes_after_dlq_replay() {
    let Some(mut farm) = Farm::new("dlq") else {
        return;
    };
    farm.spawn("coordinator", "coordinator", &[]);
    farm.spawn("evaluator", "evaluator0", &[]);
    // A builder pointed at an empty store: the inputs it is sent for are
    // not there (a store not yet replicated, say).
    let empty = format!("{}-empty", farm.store.trim_end_matches('/'));
    let broken = farm.spawn("builder", "builder-empty", &["-j", "1", "--store", &empty]);
    let file = expr(
        &farm,
        "dlq",
        r#"mk { name = "parked"; script = "echo parked > $out"; }"#,
    );
    let follower = farm.spawn_submit(&file, &[]);
    let letters = farm.poll("the request among the dead letters", LIMIT, || {
        let l = kiln_json(&farm, &["dlq", "list"]);
        (!l.as_array()?.is_empty()).then_some(l)
    });
    let letter = &letters[0];
    assert!(
        letter["reason"]
            .as_str()
            .unwrap()
            .contains("inputs unavailable"),
        "{letter}"
    );
    assert!(
        letter["origin"]
            .as_str()
            .unwrap()
            .starts_with("kiln.build."),
        "{letter}"
    );
    let jobs = kiln_json(&farm, &["jobs"]);
    let job = jobs[0]["job_id"].as_str().unwrap().to_string();
    let status = kiln_json(&farm, &["status", &job]);
    assert!(
        status["waiting"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["reason"] == "dead_lettered"),
        "{status}"
    );
    // The store is whole again (a builder that sees it), and the operator
    // replays the request.
    farm.signal(broken, libc::SIGKILL);
    farm.spawn("builder", "builder-good", &["-j", "1"]);
    let replay = kiln(&farm, &["dlq", "replay"]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let out = farm::wait_output(follower, LIMIT, &farm);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        farm.logs()
    );
    assert!(kiln_json(&farm, &["dlq", "list"])
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn a_job_outlives_its_client_and_logs_and_status_pick_it_up() {
    let Some(mut farm) = Farm::new("detach") else {
        return;
    };
    farm.start(1, 1);
    let file = expr(
        &farm,
        "detach",
        r#"mk { name = "talker"; script = "echo hello-from-the-build; sleep 3; echo goodbye-from-the-build; echo > $out"; }"#,
    );
    let mut client = farm.spawn_submit(&file, &[]);
    let job = running_job(&farm);
    // The CI runner goes away; the job does not.
    client.kill().unwrap();
    client.wait().unwrap();
    let follower = farm
        .kiln()
        .args(["logs", &job, "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let followed = farm::wait_output(follower, LIMIT, &farm);
    let live = String::from_utf8_lossy(&followed.stdout);
    assert!(
        followed.status.success() && live.contains("goodbye-from-the-build"),
        "live: {live}\n{}",
        String::from_utf8_lossy(&followed.stderr)
    );
    let status = kiln_json(&farm, &["status", &job]);
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["counts"]["built"], 1, "{status}");
    // Afterwards the whole log comes from the store.
    let stored = kiln(&farm, &["logs", &job]);
    let stored = String::from_utf8_lossy(&stored.stdout);
    assert!(
        stored.contains("hello-from-the-build") && stored.contains("goodbye-from-the-build"),
        "stored: {stored}"
    );
}
