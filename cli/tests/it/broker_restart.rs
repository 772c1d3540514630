//! A broker stop and start in the middle of a job: every role reconnects,
//! declares its topology again and the job completes. Its farm has the
//! broker alone ([`Farm::alone`]): stopping it would disturb every other.

use crate::farm;

use std::process::Command;
use std::time::Duration;

use crate::farm::Farm;

#[test]
fn a_broker_restart_mid_job_is_survived() {
    let Some(mut farm) = Farm::alone("restart") else {
        return;
    };
    farm.start(1, 2);
    let corpus = kiln_tests::shared_dir().join("conformance/build");
    let dir = farm.tmp.path().join("expr");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sleepers.nix");
    std::fs::write(
        &file,
        format!(
            r#"{{ busybox }}:
let
  inherit (import {}/lib.nix {{ inherit busybox; }}) mk;
  one = i: mk {{ name = "restart-${{toString i}}"; script = "sleep 2; echo ${{toString i}} > $out"; }};
in builtins.listToAttrs (builtins.genList (i: {{ name = "s${{toString i}}"; value = one i; }}) 6)
"#,
            corpus.display()
        ),
    )
    .unwrap();
    let child = farm.spawn_submit(&file, &[]);
    farm.wait_running(1.0);
    let stop = Command::new("rabbitmqctl")
        .arg("stop_app")
        .output()
        .unwrap();
    assert!(stop.status.success(), "{stop:?}");
    std::thread::sleep(Duration::from_secs(3));
    let start = Command::new("rabbitmqctl")
        .arg("start_app")
        .output()
        .unwrap();
    assert!(start.status.success(), "{start:?}");
    let out = farm::wait_output(child, Duration::from_secs(240), &farm);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{}", farm.logs());
    assert!(
        farm.logs().contains("reconnected to the broker"),
        "{}",
        farm.logs()
    );
    // The coordinator heard nobody while the broker was down; the builder
    // kept its builds, and none was dispatched twice.
    assert_eq!(
        farm.metric_sum("coordinator", "kiln_builds_redispatched_total"),
        0.0,
        "{}",
        farm.logs()
    );
}
