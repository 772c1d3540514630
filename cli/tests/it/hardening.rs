//! `kiln build` when things go wrong: killing it kills its builds (and the
//! build user is free again), `--timeout` and `--max-silent-time` stop
//! builds, two runs on one store leave it consistent with every local copy,
//! killed runs' work directories go on the next run, `--state-dir` keeps
//! everything in one place, outputs are not owned by the build user, errors
//! carry their cause once; and a gateway refuses a 2 GB `exists` body with
//! its memory bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn lib() -> PathBuf {
    kiln_tests::shared_dir().join("conformance/build/lib.nix")
}

/// A `kiln build` of `expr` (a function of `busybox`) with all state in
/// `state` and the store at `store`.
fn build_cmd(state: &Path, store: &Path, busybox: &Path, expr: &str, extra: &[&str]) -> Command {
    std::fs::create_dir_all(state).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(["build", "-E", expr, "--arg", "busybox"])
        .arg(busybox)
        .arg("--store")
        .arg(store)
        .arg("--state-dir")
        .arg(state)
        .args(["--no-out-link", "--json"])
        .args(extra)
        .env("XDG_CACHE_HOME", state.join("not-here"))
        .current_dir(state);
    c
}

fn expr_of(body: &str) -> String {
    format!(
        "{{ busybox }}: let inherit (import {} {{ inherit busybox; }}) mk; in {body}",
        lib().display()
    )
}

/// Pids and uids of the processes running `sleep SECS`.
fn sleeping(secs: &str) -> Vec<(i32, u32)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if !(args.len() >= 2 && args[0].ends_with(b"sleep") && args[1] == secs.as_bytes()) {
            continue;
        }
        let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|l| l.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(u32::MAX);
        found.push((pid, uid));
    }
    found
}

/// Processes (any command) running as `uid`.
fn processes_of_uid(uid: u32) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let holds = std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .is_some_and(|l| l.split_whitespace().any(|u| u == uid.to_string()))
        });
        if holds {
            found.push(pid);
        }
    }
    found
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a build of a derivation that sleeps; returns the child, once the
/// sleep runs, with the build's pid and uid.
fn start_sleeper(tmp: &Path, busybox: &Path, token: &str) -> (Child, Vec<(i32, u32)>) {
    let expr = expr_of(&format!(
        r#"mk {{ name = "sleeper-{token}"; script = "echo started; sleep {token}; echo > $out"; }}"#
    ));
    let child = build_cmd(&tmp.join("state"), &tmp.join("store"), busybox, &expr, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut procs = Vec::new();
    wait_for("the sleep to start", Duration::from_secs(60), || {
        procs = sleeping(token);
        !procs.is_empty()
    });
    (child, procs)
}

fn kill_of_kiln_build_kills_the_build(signal: i32, token: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = kiln_tests::host_busybox(tmp.path()) else {
        return;
    };
    let (mut child, procs) = start_sleeper(tmp.path(), &busybox, token);
    let build_uid = procs[0].1;
    unsafe { libc::kill(child.id() as i32, signal) };
    let _ = child.wait();
    wait_for(
        "the build's processes to go",
        Duration::from_secs(5),
        || sleeping(token).is_empty(),
    );
    // Run as root, the build had a user of its own: nothing of it is left.
    if build_uid != unsafe { libc::geteuid() } {
        wait_for(
            "the build user's processes to go",
            Duration::from_secs(5),
            || processes_of_uid(build_uid).is_empty(),
        );
    }
}

#[test]
fn sigkill_of_kiln_build_leaves_no_process_of_the_build() {
    kill_of_kiln_build_kills_the_build(libc::SIGKILL, "31337");
}

#[test]
fn sigterm_of_kiln_build_leaves_no_process_of_the_build() {
    kill_of_kiln_build_kills_the_build(libc::SIGTERM, "31338");
}

#[test]
fn work_directories_of_a_killed_run_go_on_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = kiln_tests::host_busybox(tmp.path()) else {
        return;
    };
    let (mut child, _) = start_sleeper(tmp.path(), &busybox, "31339");
    child.kill().unwrap();
    let _ = child.wait();
    let state = tmp.path().join("state");
    let scratch = state.join("realised/.scratch");
    let left = || std::fs::read_dir(&scratch).map_or(0, |d| d.count());
    assert!(left() > 0, "the killed build left its scratch directory");
    let expr = expr_of(r#"mk { name = "quick"; script = "echo hi > $out"; }"#);
    let out = build_cmd(&state, &tmp.path().join("store"), &busybox, &expr, &[])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(left(), 0, "leftovers in {}", scratch.display());
    // Everything lived under the state directory.
    assert!(!state.join("not-here").exists());
    assert!(state.join("realised").is_dir() && state.join("tmp").is_dir());
}

#[test]
fn timeout_and_max_silent_time_stop_builds() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = kiln_tests::host_busybox(tmp.path()) else {
        return;
    };
    for (flag, token, expect) in [
        ("--timeout", "31340", "timed out after 2 seconds"),
        (
            "--max-silent-time",
            "31341",
            "timed out after 2 seconds of silence",
        ),
    ] {
        let expr = expr_of(&format!(
            r#"mk {{ name = "slow-{token}"; script = "sleep {token}; echo > $out"; }}"#
        ));
        let started = Instant::now();
        let out = build_cmd(
            &tmp.path().join("state"),
            &tmp.path().join("store"),
            &busybox,
            &expr,
            &[flag, "2"],
        )
        .output()
        .unwrap();
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{flag}: the build succeeded");
        assert!(stderr.contains(expect), "{flag}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(60), "{flag}");
        assert!(sleeping(token).is_empty());
    }
}

/// The narinfos of a local store, parsed.
fn narinfos(store: &Path) -> Vec<kiln_nix::narinfo::NarInfo> {
    std::fs::read_dir(store)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "narinfo"))
        .map(|p| {
            let t = std::fs::read_to_string(&p).unwrap();
            kiln_nix::narinfo::NarInfo::parse(&t, &p.display().to_string()).unwrap()
        })
        .collect()
}

fn nar_hash_of_file(store: &Path, info: &kiln_nix::narinfo::NarInfo) -> kiln_nix::hash::Hash {
    let raw = std::fs::read(store.join(&info.url)).unwrap();
    let nar = match info.compression.as_str() {
        "zstd" => zstd::decode_all(&raw[..]).unwrap(),
        "none" => raw,
        other => panic!("compression {other}"),
    };
    kiln_nix::hash::Hash::of(kiln_nix::hash::HashAlgo::Sha256, &nar)
}

#[test]
fn two_concurrent_builds_on_one_store_agree_with_it_and_their_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = kiln_tests::host_busybox(tmp.path()) else {
        return;
    };
    // Every output differs from one build to the next.
    let expr = expr_of(
        r#"let chain = builtins.genList (i: mk {
             name = "random-${toString i}";
             prev = if i == 0 then "" else builtins.elemAt chain (i - 1);
             script = "cat /proc/sys/kernel/random/uuid > $out";
           }) 12; in chain"#,
    );
    let state = tmp.path().join("state");
    let store = tmp.path().join("store");
    let runs: Vec<Child> = (0..2)
        .map(|_| {
            build_cmd(&state, &store, &busybox, &expr, &["-j", "2"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for r in runs {
        let out = r.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let infos = narinfos(&store);
    assert!(infos.len() >= 12, "{} narinfos", infos.len());
    for info in &infos {
        assert_eq!(
            nar_hash_of_file(&store, info),
            info.nar_hash,
            "the NAR of {} is not what its narinfo says",
            info.store_path
        );
        let copy = state.join("realised").join(info.store_path.base_name());
        if copy.exists() {
            let (_, d) = kiln_nix::nar::dump_path(&copy, std::io::sink()).unwrap();
            assert_eq!(
                d.hash, info.nar_hash,
                "the cached copy of {} differs from the store",
                info.store_path
            );
            // Given to the builder's own user, not left to the build user.
            use std::os::unix::fs::MetadataExt;
            let md = std::fs::symlink_metadata(&copy).unwrap();
            assert_eq!(md.uid(), unsafe { libc::geteuid() }, "{}", copy.display());
        }
    }
}

#[test]
fn errors_name_their_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", "-E", "1", "--store", "/proc/nope"])
        .arg("--state-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
    assert!(stderr.contains("/proc/nope"), "{stderr}");
}

/// Kills the gateway when the test ends, however it ends.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_gateway(store: &Path, token: Option<&Path>) -> (Gateway, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(["store-gateway", "--store", store.to_str().unwrap()])
        .args(["--listen", &addr]);
    if let Some(t) = token {
        c.arg("--upload-token-file").arg(t);
    }
    let gateway = Gateway(
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the gateway to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    (gateway, addr)
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_2_gb_exists_body_is_refused_with_gateway_memory_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let (gw, addr) = start_gateway(&tmp.path().join("store"), None);
    let pid = gw.0.id();
    let before = vm_kib(pid, "VmRSS:");
    let total: u64 = 2 << 30;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut answer = Vec::new();
    {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            c,
            "POST /api/v1/exists HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .unwrap();
        let chunk = vec![b' '; 1 << 20];
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        while sent < total {
            if c.write_all(&framed).is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
        let _ = c.read_to_end(&mut answer);
    }
    let after = vm_kib(pid, "VmRSS:");
    let peak = vm_kib(pid, "VmHWM:");
    eprintln!(
        "gateway RSS {before} KiB before, {after} KiB after, peak {peak} KiB; \
         the client pushed {} MiB of 2048 in {:?}",
        sent >> 20,
        started.elapsed()
    );
    assert!(sent < total, "the gateway read the whole 2 GB body");
    assert!(sent < 256 << 20, "the gateway read {} MiB", sent >> 20);
    let answer = text(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 413"),
        "{answer:.300}"
    );
    assert!(
        peak < before + 64 * 1024,
        "peak RSS {peak} KiB from {before} KiB"
    );
    // And a declared 2 GB length is refused before a byte of it is read.
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        c,
        "POST /api/v1/exists HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {total}\r\n\r\n"
    )
    .unwrap();
    let mut head = String::new();
    BufReader::new(c).read_line(&mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

#[test]
fn a_build_against_a_read_only_gateway_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = kiln_tests::host_busybox(tmp.path()) else {
        return;
    };
    let store = tmp.path().join("store");
    // The sources (busybox) go in first, through a writable local store.
    let warm = expr_of(r#"mk { name = "warm"; script = "echo > $out"; }"#);
    let out = build_cmd(&tmp.path().join("s1"), &store, &busybox, &warm, &[])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_gw, addr) = start_gateway(&store, None);
    let url = format!("http://{addr}");
    let expr = expr_of(r#"mk { name = "needs-upload"; script = "echo new > $out"; }"#);
    let out = build_cmd(
        &tmp.path().join("s2"),
        Path::new(&url),
        &busybox,
        &expr,
        &[],
    )
    .output()
    .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("read-only"), "{stderr}");
}
