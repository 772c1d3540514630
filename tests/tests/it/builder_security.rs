//! What a build must not be able to do: read host files outside its inputs,
//! reach the host's loopback, write into its inputs, outlive itself, or see
//! another build; and `max-jobs` bounds parallelism.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_builder::builder::{BuildOptions, Builder, BuilderConfig};
use kiln_nix::derivation::{Derivation, DerivationOutput};
use kiln_nix::hash::{Hash, HashAlgo};
use kiln_nix::store_path::{make_text_path, StorePath};

const BUSYBOX: &str = "/nix/store/71fc7s32zl20dc955bhghy5dvalm7ndz-busybox";

struct Env {
    _dir: tempfile::TempDir,
    cache: PathBuf,
    inputs: BTreeMap<String, PathBuf>,
    builder: Builder,
}

/// A cache holding busybox (any static busybox will do here) and a
/// builder; `None` (skip) when busybox is missing outside CI.
fn setup(max_jobs: usize) -> Option<Env> {
    let host = Path::new("/bin/busybox");
    if !host.exists() {
        assert!(
            !kiln_tests::in_ci(),
            "CI=true but /bin/busybox is missing (apt-get install busybox-static)"
        );
        eprintln!("skipping: /bin/busybox is missing");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let bb = cache.join(BUSYBOX.rsplit('/').next().unwrap());
    std::fs::create_dir_all(bb.join("bin")).unwrap();
    std::fs::copy(host, bb.join("bin/busybox")).unwrap();
    let mut config = BuilderConfig::new(dir.path().join("scratch"));
    config.max_jobs = max_jobs;
    Some(Env {
        cache: cache.clone(),
        inputs: [(BUSYBOX.to_string(), bb)].into(),
        builder: Builder::new(config),
        _dir: dir,
    })
}

/// A derivation running `script` with busybox's applets on `PATH`.
fn mk(name: &str, script: &str) -> (String, Derivation) {
    let bb = format!("{BUSYBOX}/bin/busybox");
    let out = make_text_path(
        name,
        &Hash::of(HashAlgo::Sha256, script.as_bytes()),
        &BTreeSet::new(),
    )
    .unwrap();
    let full = format!("{bb} mkdir -p \"$TMPDIR/.bin\"\n{bb} --install -s \"$TMPDIR/.bin\"\nexport PATH=\"$TMPDIR/.bin\"\n{script}\n");
    let drv = Derivation {
        outputs: [(
            "out".to_string(),
            DerivationOutput::InputAddressed { path: out.clone() },
        )]
        .into(),
        input_drvs: BTreeMap::new(),
        input_srcs: [StorePath::from_absolute_path(BUSYBOX).unwrap()].into(),
        system: "x86_64-linux".into(),
        builder: bb.clone(),
        args: vec!["sh".into(), "-e".into(), "-c".into(), full],
        env: [
            ("out".to_string(), out.to_absolute_path()),
            ("name".into(), name.into()),
            ("builder".into(), bb),
            ("system".into(), "x86_64-linux".into()),
        ]
        .into(),
    };
    (drv.drv_path(name).unwrap().to_absolute_path(), drv)
}

impl Env {
    async fn run(&self, name: &str, script: &str) -> String {
        let (drv_path, drv) = mk(name, script);
        let opts = BuildOptions {
            out_dir: self.cache.clone(),
            ..Default::default()
        };
        let res = self
            .builder
            .build(&drv_path, &drv, &self.inputs, &opts)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        std::fs::read_to_string(&res.outputs["out"].location).unwrap()
    }
}

#[tokio::test]
async fn cannot_read_host_files_or_other_cache_paths() {
    let Some(env) = setup(1) else { return };
    let other = env.cache.join("0000000000000000000000000000000a-other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("secret"), "s3cret").unwrap();
    let script = format!(
        "r=\nl=$(ls /nix/store)\ncat /etc/shadow >/dev/null 2>&1 && r=\"$r shadow\"\nls /root >/dev/null 2>&1 && r=\"$r root\"\n\
         cat {o}/secret >/dev/null 2>&1 && r=\"$r cache\"\ncat /nix/store/{b}/secret >/dev/null 2>&1 && r=\"$r store\"\n\
         echo \"leaks:$r\" > $out; echo \"$l\" >> $out",
        o = other.display(),
        b = other.file_name().unwrap().to_string_lossy()
    );
    let out = env.run("read-host", &script).await;
    assert_eq!(
        out,
        format!("leaks:\n{}\n", BUSYBOX.rsplit('/').next().unwrap())
    );
}

#[tokio::test]
async fn cannot_reach_host_loopback() {
    let Some(env) = setup(1) else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!("if echo hi | nc -w 2 127.0.0.1 {port}; then echo reached > $out; else echo isolated > $out; fi");
    assert_eq!(env.run("loopback", &script).await, "isolated\n");
    assert!(
        listener.accept().is_err(),
        "the host listener got a connection"
    );
}

/// Started as root, a build runs as an unprivileged host user: it owns none
/// of the host's root-owned files it can reach (device nodes, `/proc/sys`,
/// its own root directory), so it cannot change them. Every probe here is
/// harmless even if it succeeded (`/dev/null` is already 0666).
#[tokio::test]
async fn cannot_act_as_host_root() {
    let Some(env) = setup(1) else { return };
    let root = unsafe { libc::geteuid() } == 0;
    let mut script = String::from(
        "r=\nchmod 666 /dev/null 2>/dev/null && r=\"$r chmod-dev\"\n\
         [ -w /proc/sysrq-trigger ] && r=\"$r sysrq\"\n\
         [ -w /proc/sys/kernel/core_pattern ] && r=\"$r sysctl\"\n\
         [ -w /etc/passwd ] && r=\"$r passwd\"\n",
    );
    if root {
        // Unprivileged, Kiln's own uid owns the root; as root it must not.
        script.push_str("chmod 755 /nix 2>/dev/null && r=\"$r nix-dir\"\n");
        script.push_str("chmod 755 / 2>/dev/null && r=\"$r root-dir\"\n");
    }
    script.push_str("echo \"privileges:$r\" > $out\nid -G >> $out");
    let out = env.run("host-root", &script).await;
    if root {
        // No supplementary group of root's survives either.
        assert_eq!(out, "privileges:\n100\n", "{out}");
    } else {
        assert!(out.starts_with("privileges:\n"), "{out}");
    }
}

/// The positive control of the loopback test: a fixed-output derivation
/// keeps the host's network, and the very same `nc` reaches the listener.
/// Its output is fixed to "reached\n", so the build fails unless it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_output_builds_keep_the_network() {
    use kiln_nix::derivation::FixedOutputHash;
    use kiln_nix::store_path::FileIngestionMethod;
    let Some(env) = setup(1) else { return };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut sock, _) = listener.accept().await.unwrap();
        sock.write_all(b"reached\n").await.unwrap();
    });
    // The same client as the loopback test (busybox's static wget crashes
    // in its NSS lookups on Debian, in and out of any sandbox).
    let script = format!("nc -w 5 127.0.0.1 {port} < /dev/null > $out");
    let (_, mut drv) = mk("fod-net", &script);
    let hash = FixedOutputHash {
        method: FileIngestionMethod::Flat,
        hash: Hash::of(HashAlgo::Sha256, b"reached\n"),
    };
    let out = DerivationOutput::fixed("fod-net", hash).unwrap();
    drv.env
        .insert("out".into(), out.path().unwrap().to_absolute_path());
    drv.outputs.insert("out".into(), out);
    let drv_path = drv.drv_path("fod-net").unwrap().to_absolute_path();
    let opts = BuildOptions {
        out_dir: env.cache.clone(),
        ..Default::default()
    };
    let res = env
        .builder
        .build(&drv_path, &drv, &env.inputs, &opts)
        .await
        .unwrap_or_else(|e| panic!("fixed-output build: {e}"));
    assert_eq!(
        std::fs::read_to_string(&res.outputs["out"].location).unwrap(),
        "reached\n"
    );
    accept.await.unwrap();
}

#[tokio::test]
async fn cannot_write_into_inputs() {
    let Some(env) = setup(1) else { return };
    let before = std::fs::read(env.inputs[BUSYBOX].join("bin/busybox")).unwrap();
    let script = format!(
        "r=\necho x > {BUSYBOX}/new 2>/dev/null && r=\"$r create\"\necho x >> {BUSYBOX}/bin/busybox 2>/dev/null && r=\"$r append\"\n\
         chmod 777 {BUSYBOX}/bin/busybox 2>/dev/null && r=\"$r chmod\"\nrm -f {BUSYBOX}/bin/busybox 2>/dev/null && r=\"$r rm\"\necho \"writes:$r\" > $out"
    );
    assert_eq!(env.run("write-inputs", &script).await, "writes:\n");
    assert_eq!(
        std::fs::read(env.inputs[BUSYBOX].join("bin/busybox")).unwrap(),
        before
    );
    assert!(!env.inputs[BUSYBOX].join("new").exists());
}

fn processes_with_arg(arg: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if cmd.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
                found.push(String::from_utf8_lossy(&cmd).replace('\0', " "));
            }
        }
    }
    found
}

#[tokio::test]
async fn daemons_die_with_the_build() {
    let Some(env) = setup(1) else { return };
    let marker = format!("{}", 100000 + std::process::id());
    let script = format!("(exec </dev/null >/dev/null 2>&1; setsid sleep {marker}) &\nsleep 0.2\necho started > $out");
    assert_eq!(env.run("daemon", &script).await, "started\n");
    assert_eq!(
        processes_with_arg(&marker),
        Vec::<String>::new(),
        "a process of the build is still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_builds_cannot_see_each_other() {
    let Some(env) = setup(2) else { return };
    let a = env.run("writer", "echo s3cret-a > /build/file-a; echo s3cret-a > /tmp/file-a; echo s3cret-a > /dev/shm/file-a; sleep 3; echo done > $out");
    let b = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        env.run("looker", "{ ls -a /build /tmp /dev/shm; cat /build/file-a /tmp/file-a /dev/shm/file-a 2>/dev/null; } > $out || true").await
    };
    let (a, b) = tokio::join!(a, b);
    assert_eq!(a, "done\n");
    assert!(!b.contains("file-a") && !b.contains("s3cret"), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_jobs_bounds_parallelism() {
    let Some(env) = setup(4) else { return };
    let env = Arc::new(env);
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (env, running, peak) = (env.clone(), running.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            let (drv_path, drv) = mk(
                &format!("sleeper-{i}"),
                "echo started; sleep 2; echo ok > $out",
            );
            let (tx, mut rx) = tokio::sync::mpsc::channel(16);
            let opts = BuildOptions {
                out_dir: env.cache.clone(),
                log_lines: Some(tx),
                ..Default::default()
            };
            let (running2, peak2) = (running.clone(), peak.clone());
            let watch = async move {
                // The builder is running once it has printed its first line.
                if rx.recv().await.is_some() {
                    let now = running2.fetch_add(1, Ordering::SeqCst) + 1;
                    peak2.fetch_max(now, Ordering::SeqCst);
                }
            };
            let (res, ()) = tokio::join!(
                env.builder.build(&drv_path, &drv, &env.inputs, &opts),
                watch
            );
            running.fetch_sub(1, Ordering::SeqCst);
            res.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let wall = start.elapsed();
    let peak = peak.load(Ordering::SeqCst);
    assert_eq!(peak, 4, "{peak} builds ran at once with max-jobs 4");
    assert!(
        wall >= Duration::from_secs(4),
        "8 two-second builds, 4 at a time, took only {wall:?}"
    );
    // Four at a time takes 4 s; two at a time would take 8 s.
    assert!(
        wall < Duration::from_secs(7),
        "8 two-second builds with max-jobs 4 took {wall:?}: not 4 at a time"
    );
}
