//! The distributed mode end to end: every role a separate `kiln` process,
//! over the real RabbitMQ (a vhost per test) with the store in the real S3
//! (a prefix per test), jobs submitted with `kiln submit --wait`.

use crate::farm;

use std::time::{Duration, Instant};

use crate::farm::{build_corpus, check_against_nix, Farm};

const LIMIT: Duration = Duration::from_secs(300);

/// Builds the whole conformance corpus through `farm` and checks it.
fn build_corpus_on(farm: &Farm) {
    let (mut built, mut failed, mut problems) = (0, 0, Vec::new());
    for (nix, expected) in build_corpus() {
        let run = farm.submit(&nix, &["--keep-going"], LIMIT);
        let (b, f, p) = check_against_nix(farm, &expected, &run);
        built += b;
        failed += f;
        problems.extend(p);
    }
    assert!(
        problems.is_empty(),
        "{}\n{}",
        problems.join("\n"),
        farm.logs()
    );
    assert!(built >= 20, "only {built} outputs checked");
    assert!(failed >= 4, "only {failed} failures checked");
    eprintln!("{built} outputs identical to Nix, {failed} failures where Nix fails");
}

#[test]
fn one_coordinator_two_evaluators_three_builders_build_the_corpus() {
    let Some(mut farm) = Farm::new("corpus") else {
        return;
    };
    farm.start(2, 3);
    build_corpus_on(&farm);
}

#[test]
fn a_builder_without_store_credentials_streams_identical_outputs() {
    let Some(mut farm) = Farm::new("via") else {
        return;
    };
    farm.spawn("coordinator", "coordinator", &[]);
    farm.spawn("evaluator", "evaluator0", &[]);
    // The only builder: it may read the store, but streams what it builds
    // back to the coordinator, which checks and stores it.
    farm.spawn(
        "builder",
        "builder0",
        &["-j", "2", "--upload", "via-coordinator"],
    );
    build_corpus_on(&farm);
    assert!(
        farm.metric_sum("builder", "kiln_builder_builds_total") >= 10.0,
        "the streaming builder built: {}",
        farm.logs()
    );
}

/// An expression of `n` independent `sleep`ing derivations and one that
/// depends on all of them.
fn sleepers(dir: &std::path::Path, n: usize, secs: f64, tag: &str) -> std::path::PathBuf {
    let corpus = kiln_tests::shared_dir().join("conformance/build");
    let text = format!(
        r#"{{ busybox }}:
let
  inherit (import {corpus}/lib.nix {{ inherit busybox; }}) mk;
  one = i: mk {{ name = "sleep-{tag}-${{toString i}}"; script = "sleep {secs}; echo ${{toString i}} > $out"; }};
  all = builtins.genList one {n};
in mk {{ name = "sleepers-{tag}"; script = "cat ${{builtins.concatStringsSep " " all}} > $out"; }}
"#,
        corpus = corpus.display()
    );
    // A directory of its own: `kiln submit` ships the file's directory.
    let dir = dir.join(format!("expr-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sleepers.nix");
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn a_killed_builder_s_build_is_done_by_another() {
    let Some(mut farm) = Farm::new("killbuilder") else {
        return;
    };
    farm.start(1, 2);
    let file = sleepers(farm.tmp.path(), 2, 4.0, "kb");
    let child = farm.spawn_submit(&file, &[]);
    // Wait until both builders run a build, then kill one mid-build.
    farm.wait_running(2.0);
    let victim = farm.index_of("builder0").unwrap();
    farm.signal(victim, libc::SIGKILL);
    let out = farm::wait_output(child, Duration::from_secs(240), &farm);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{}", farm.logs());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let finished: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"]["event"] == "job_finished")
        .expect("job_finished");
    assert_eq!(finished["event"]["success"], true);
    let coordinator = std::fs::read_to_string(&farm.proc(0).log).unwrap();
    assert!(
        coordinator.contains("dispatching its build again"),
        "the lost build was redispatched:\n{coordinator}"
    );
}

#[test]
fn the_standby_coordinator_finishes_the_job_of_a_killed_one() {
    let Some(mut farm) = Farm::new("failover") else {
        return;
    };
    farm.spawn("coordinator", "coordinator", &[]);
    // Give the first coordinator the leadership before the standby starts.
    std::thread::sleep(Duration::from_secs(2));
    farm.spawn("coordinator", "coordinator-standby", &[]);
    farm.spawn("evaluator", "evaluator0", &[]);
    farm.spawn("builder", "builder0", &["-j", "2"]);
    farm.spawn("builder", "builder1", &["-j", "2"]);
    let file = sleepers(farm.tmp.path(), 6, 1.5, "fo");
    let child = farm.spawn_submit(&file, &[]);
    farm.wait_running(1.0);
    farm.signal(0, libc::SIGKILL);
    let out = farm::wait_output(child, Duration::from_secs(240), &farm);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{}", farm.logs());
    let standby = std::fs::read_to_string(&farm.proc(1).log).unwrap();
    assert!(standby.contains("coordinator leading"), "{standby}");
    assert!(standby.contains("resuming a job"), "{standby}");
}

#[test]
fn dropped_connections_are_survived() {
    let Some(mut farm) = Farm::new("reconnect") else {
        return;
    };
    farm.start(1, 2);
    let file = sleepers(farm.tmp.path(), 4, 1.0, "rc");
    let child = farm.spawn_submit(&file, &[]);
    farm.wait_running(1.0);
    let out = std::process::Command::new("rabbitmqctl")
        .args(["close_all_connections", "-p", &farm.vhost, "kiln test"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = farm::wait_output(child, Duration::from_secs(240), &farm);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{}", farm.logs());
    let logs = farm.logs();
    assert!(logs.contains("reconnected to the broker"), "{logs}");
}

#[test]
fn two_submissions_sharing_derivations_build_each_once() {
    let Some(mut farm) = Farm::new("shared") else {
        return;
    };
    farm.start(2, 2);
    let file = sleepers(farm.tmp.path(), 5, 0.5, "sh");
    let spawn = || {
        farm.submit_cmd(&file, &[])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for c in [a, b] {
        let out = farm::wait_output(c, Duration::from_secs(240), &farm);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            farm.logs()
        );
    }
    // 5 sleepers and the one that gathers them: six builds in all.
    let builds = farm.metric_sum("builder", "kiln_builder_builds_total");
    assert_eq!(builds, 6.0, "builds done: {builds}\n{}", farm.logs());
}

#[test]
fn garbage_and_future_messages_are_dead_lettered() {
    let Some(mut farm) = Farm::new("garbage") else {
        return;
    };
    farm.start(1, 1);
    std::thread::sleep(Duration::from_secs(2));
    // Future protocol version: a valid envelope, but version 999.
    let future = {
        #[derive(serde::Serialize)]
        struct Env {
            version: u16,
            id: uuid::Uuid,
            body: serde_json::Value,
        }
        rmp_serde::to_vec_named(&Env {
            version: 999,
            id: uuid::Uuid::new_v4(),
            body: serde_json::json!({"type": "CancelJob", "job_id": uuid::Uuid::new_v4()}),
        })
        .unwrap()
    };
    let queues = [
        "kiln.jobs",
        "kiln.eval",
        "kiln.drvs",
        "kiln.ifd",
        "kiln.build-events",
        "kiln.build.x86_64-linux.-",
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use lapin::options::BasicPublishOptions;
        let conn = lapin::Connection::connect(&farm.amqp, Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        for q in queues {
            for payload in [b"\x93garbage bytes".to_vec(), future.clone()] {
                ch.basic_publish(
                    "".into(),
                    q.into(),
                    BasicPublishOptions::default(),
                    &payload,
                    Default::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            }
        }
    });
    // Every bad message reaches the dead letters, each with its reason.
    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let out = farm
            .kiln()
            .args(["dlq", "list", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if listed.as_array().unwrap().len() >= 2 * queues.len() || Instant::now() > deadline {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let letters = listed.as_array().unwrap();
    assert_eq!(
        letters.len(),
        2 * queues.len(),
        "{listed:#}\n{}",
        farm.logs()
    );
    for q in queues {
        let from_q: Vec<_> = letters.iter().filter(|l| l["origin"] == q).collect();
        assert_eq!(from_q.len(), 2, "{q}: {listed:#}");
        assert!(from_q.iter().any(|l| l["reason"]
            .as_str()
            .unwrap()
            .contains("protocol version 999")));
        assert!(from_q
            .iter()
            .any(|l| l["reason"].as_str().unwrap().contains("malformed")));
    }
    // The farm still works.
    let file = sleepers(farm.tmp.path(), 1, 0.1, "after");
    let run = farm.submit(&file, &[], LIMIT);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stderr, farm.logs());
}
