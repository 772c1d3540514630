//! The builder's control and output checks: exit codes, timeouts, silence,
//! cancellation, log streaming, scratch clean-up, canonicalisation, missing
//! outputs, unsupported file types and fixed-output hashes.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_builder::builder::{BuildError, BuildOptions, Builder, BuilderConfig};
use kiln_builder::recipe::{OutputRecipe, Recipe};
use kiln_builder::run::CancelToken;
use kiln_nix::derivation::FixedOutputHash;
use kiln_nix::hash::{Hash, HashAlgo};
use kiln_nix::store_path::FileIngestionMethod;

const BUSYBOX: &str = "/nix/store/00000000000000000000000000000000-busybox";
const OUT: &str = "/nix/store/11111111111111111111111111111111-out";
const DRV: &str = "/nix/store/22222222222222222222222222222222-test.drv";

struct Env {
    dir: tempfile::TempDir,
    inputs: BTreeMap<String, PathBuf>,
    builder: Builder,
}

fn setup() -> Option<Env> {
    let host = Path::new("/bin/busybox");
    if !host.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but /bin/busybox is missing"
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let bb = dir.path().join("busybox");
    std::fs::create_dir_all(bb.join("bin")).unwrap();
    std::fs::copy(host, bb.join("bin/busybox")).unwrap();
    let builder = Builder::new(BuilderConfig::new(dir.path().join("scratch")));
    Some(Env {
        inputs: [(BUSYBOX.to_string(), bb)].into(),
        builder,
        dir,
    })
}

fn recipe(script: &str) -> Recipe {
    let bb = format!("{BUSYBOX}/bin/busybox");
    Recipe {
        outputs: [(
            "out".to_string(),
            OutputRecipe {
                path: OUT.into(),
                fixed: None,
            },
        )]
        .into(),
        builder: bb.clone(),
        args: vec![
            "sh".into(),
            "-e".into(),
            "-c".into(),
            format!("{bb} --install -s /tmp; export PATH=/tmp\n{script}"),
        ],
        env: [("out".to_string(), OUT.to_string())].into(),
        system: "x86_64-linux".into(),
    }
}

impl Env {
    fn options(&self) -> BuildOptions {
        BuildOptions {
            out_dir: self.dir.path().join("out"),
            ..Default::default()
        }
    }

    async fn build(
        &self,
        r: &Recipe,
        o: &BuildOptions,
    ) -> Result<kiln_builder::builder::BuildOutputs, BuildError> {
        let res = self.builder.build_recipe(DRV, r, &self.inputs, o).await;
        let left: Vec<_> = std::fs::read_dir(self.dir.path().join("scratch"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "scratch directory left behind: {left:?}");
        res
    }
}

#[tokio::test]
async fn non_zero_exit_is_reported_like_nix() {
    let Some(env) = setup() else { return };
    let err = env
        .build(&recipe("echo about to fail >&2; exit 3"), &env.options())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("builder for '{DRV}' failed with exit code 3")
    );
    let BuildError::BuilderFailed { log, .. } = err else {
        panic!()
    };
    assert_eq!(log, b"about to fail\n");
}

#[tokio::test]
async fn log_is_streamed_line_by_line_and_kept() {
    let Some(env) = setup() else { return };
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let opts = BuildOptions {
        log_lines: Some(tx),
        ..env.options()
    };
    let res = env
        .build(
            &recipe("echo one; echo two >&2; printf three; echo x > $out"),
            &opts,
        )
        .await
        .unwrap();
    drop(opts);
    let mut lines = Vec::new();
    while let Some(l) = rx.recv().await {
        lines.push(l);
    }
    assert_eq!(lines, ["one", "two", "three"]);
    assert_eq!(res.log, b"one\ntwo\nthree");
    assert!(res.setup_time < Duration::from_secs(1));
}

#[tokio::test]
async fn timeout_and_silence_kill_the_build() {
    let Some(env) = setup() else { return };
    let t = Instant::now();
    let opts = BuildOptions {
        timeout: Some(Duration::from_secs(1)),
        ..env.options()
    };
    let err = env
        .build(&recipe("while true; do echo tick; sleep 0.1; done"), &opts)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("building of '{DRV}' timed out after 1 seconds")
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    let opts = BuildOptions {
        max_silent_time: Some(Duration::from_secs(1)),
        ..env.options()
    };
    let err = env
        .build(&recipe("echo hi; sleep 30"), &opts)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("building of '{DRV}' timed out after 1 seconds of silence")
    );
}

#[tokio::test]
async fn cancellation_kills_the_process_tree() {
    let Some(env) = setup() else { return };
    let cancel = CancelToken::new();
    let opts = BuildOptions {
        cancel: Some(cancel.clone()),
        ..env.options()
    };
    let marker = format!("{}", 200000 + std::process::id());
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c2.cancel();
    });
    let t = Instant::now();
    let err = env
        .build(&recipe(&format!("sleep {marker} & sleep {marker}")), &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Cancelled { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        assert!(
            !cmd.split(|b| *b == 0).any(|a| a == marker.as_bytes()),
            "process left: {}",
            String::from_utf8_lossy(&cmd)
        );
    }
}

#[tokio::test]
async fn outputs_are_canonicalised() {
    let Some(env) = setup() else { return };
    let res = env
        .build(
            &recipe(
                "mkdir $out; echo x > $out/f; chmod 1777 $out/f; echo y > $out/g; chmod 600 $out/g",
            ),
            &env.options(),
        )
        .await
        .unwrap();
    let loc = &res.outputs["out"].location;
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(loc), 0o555);
    assert_eq!(mode(&loc.join("f")), 0o555);
    assert_eq!(mode(&loc.join("g")), 0o444);
    assert!(res.outputs["out"].references.is_empty());
}

/// Nix's system-call filter: setuid and setgid bits are refused with
/// EPERM; ordinary modes still work. (busybox has no `setfattr`; the
/// filter's xattr rule is checked in `kiln_builder::seccomp`'s tests.)
#[tokio::test]
async fn setuid_bits_and_xattrs_are_refused_like_nix() {
    let Some(env) = setup() else { return };
    let script = "mkdir $out; touch $out/f\n\
        chmod 4755 $out/f 2>/dev/null && echo setuid >> $out/r\n\
        chmod 2755 $out/f 2>/dev/null && echo setgid >> $out/r\n\
        chmod 755 $out/f && echo plain >> $out/r\n\
        true";
    let res = env.build(&recipe(script), &env.options()).await.unwrap();
    let loc = &res.outputs["out"].location;
    assert_eq!(std::fs::read_to_string(loc.join("r")).unwrap(), "plain\n");
}

#[tokio::test]
async fn missing_output_and_fifo_fail_like_nix() {
    let Some(env) = setup() else { return };
    let err = env
        .build(&recipe("true"), &env.options())
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "builder for '{DRV}' failed to produce output path for output 'out' at '"
        )),
        "{err}"
    );
    let err = env
        .build(&recipe("mkdir $out; mkfifo $out/pipe"), &env.options())
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("file '")
            && err.to_string().ends_with("/pipe' has an unsupported type"),
        "{err}"
    );
}

fn fixed(r: &mut Recipe, method: FileIngestionMethod, hash: Hash) {
    if let Some(o) = r.outputs.get_mut("out") {
        o.fixed = Some(FixedOutputHash { method, hash });
    }
}

#[tokio::test]
async fn fixed_output_hashes_are_verified() {
    let Some(env) = setup() else { return };
    for algo in [HashAlgo::Sha1, HashAlgo::Sha256, HashAlgo::Sha512] {
        let mut r = recipe("echo hello > $out");
        fixed(
            &mut r,
            FileIngestionMethod::Flat,
            Hash::of(algo, b"hello\n"),
        );
        env.build(&r, &env.options())
            .await
            .unwrap_or_else(|e| panic!("{algo:?}: {e}: {e:?}"));
    }
    // Recursive sha1: the hash of the NAR of a one-file directory.
    let mut r = recipe("echo hello > $out");
    let ok = env.build(&r, &env.options()).await.unwrap();
    let nar = {
        let mut v = Vec::new();
        kiln_nix::nar::write_path(&ok.outputs["out"].location, &mut v).unwrap();
        v
    };
    fixed(
        &mut r,
        FileIngestionMethod::Recursive,
        Hash::of(HashAlgo::Sha1, &nar),
    );
    env.build(&r, &env.options()).await.unwrap();
    // A mismatch names both hashes.
    let mut r = recipe("echo not matching > $out");
    let wanted = Hash::of(HashAlgo::Sha256, b"something else");
    fixed(&mut r, FileIngestionMethod::Flat, wanted.clone());
    let err = env.build(&r, &env.options()).await.unwrap_err().to_string();
    let got = Hash::of(HashAlgo::Sha256, b"not matching\n");
    assert_eq!(
        err,
        format!(
            "hash mismatch in fixed-output derivation '{DRV}':\n  specified: {}\n  got:       {}",
            wanted.to_sri(),
            got.to_sri()
        )
    );
}
