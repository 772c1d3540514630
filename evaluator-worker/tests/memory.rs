//! A long-lived evaluator worker keeps its memory flat: 200 jobs evaluated
//! one after another by `worker::run` (in-memory transport, local binary
//! cache: the embedded default) end with the resident set within 10% of
//! what it was after warm-up.
//!
//! The jobs evaluate a Nixpkgs-style package set: `rec` sets, `let`, a
//! `lib.fix` fixed point with overlays, `callPackage` through
//! `functionArgs`/`intersectAttrs`, `makeOverridable` and `override`,
//! recursive functions, imports and a source copied to the store. All of
//! these make reference cycles between environments and thunks, which the
//! evaluator must release when a job ends.
//!
//! Only test in this binary, so nothing else allocates in the process while
//! it measures.

use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::memory::MemoryTransport;
use kiln_protocol::{Envelope, ExprSource, JobOptions, JobSpec, Message, Route, Transport};
use tokio_util::sync::CancellationToken;

const JOBS: usize = 200;
const WARM_UP: usize = 20;
const PACKAGES: usize = 150;

const LIB: &str = r#"rec {
  fix = f: let x = f x; in x;
  extends = overlay: f: self: let super = f self; in super // overlay self super;
  composeOverlays = overlays: f: builtins.foldl' (acc: o: extends o acc) f overlays;
  makeOverridable = f: args:
    let result = f args; in
    result // { override = newArgs: makeOverridable f (args // newArgs); };
  callPackageWith = scope: fn: args:
    let
      f = if builtins.isFunction fn then fn else import fn;
      auto = builtins.intersectAttrs (builtins.functionArgs f) scope;
    in makeOverridable f (auto // args);
  concatMapStringsSep = sep: f: list: builtins.concatStringsSep sep (map f list);
  hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
  makeSearchPath = sub: concatMapStringsSep ":" (d: "${d}/${sub}");
  range = a: b: if a > b then [ ] else [ a ] ++ range (a + 1) b;
  mod = a: b: a - (a / b) * b;
}
"#;

const MK_DERIVATION: &str = r#"{ lib }:
{ pname, version, buildInputs ? [ ], meta ? { }, ... }@args:
let
  name = "${pname}-${version}";
  flags = rec { prefix = "--prefix=${placeholder "out"}"; all = [ prefix "--enable-${pname}" ]; };
in
derivation (removeAttrs args [ "meta" ] // {
  inherit name buildInputs;
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "echo building ${name}; exit 1" ];
  configureFlags = builtins.concatStringsSep " " flags.all;
  NIX_LDFLAGS = lib.concatMapStringsSep " " (d: "-L${d}/lib -rpath ${d}/lib") buildInputs;
  PKG_CONFIG_PATH = lib.makeSearchPath "lib/pkgconfig" buildInputs;
  description = meta.description or "";
})
"#;

const TOOL: &str = r#"{ mkDerivation, lib, pkg-1, pkg-2 }:
mkDerivation {
  pname = "tool";
  version = "0.1";
  src = ./tool-src;
  buildInputs = [ pkg-1 pkg-2 ];
  script = builtins.toFile "tool.sh" "echo tool";
}
"#;

const DEFAULT: &str = r#"{ count }:
let
  lib = import ./lib.nix;
  name = i: "pkg-${toString i}";
  package = i: { mkDerivation, lib, deps }: mkDerivation {
    pname = name i;
    version = "1.${toString (lib.mod i 7)}";
    buildInputs = deps;
    meta.description = "package number ${toString i}";
  };
  depsOf = i: map (j: i - j) (lib.range 1 (if i < 4 then i else 4));
  base = self: builtins.listToAttrs (map (i: {
    name = name i;
    value = self.callPackage (package i) { deps = map (j: self.${name j}) (depsOf i); };
  }) (lib.range 0 (count - 1))) // {
    inherit lib;
    callPackage = lib.callPackageWith self;
    mkDerivation = import ./mk-derivation.nix { inherit lib; };
  };
  overlays = [
    (self: super: { pkg-3 = super.pkg-3.override { deps = [ self.pkg-1 ]; }; })
    (self: super: rec {
      tool = self.callPackage ./tool.nix { };
      tools = { recurseForDerivations = true; inherit tool; };
    })
  ];
  pkgs = lib.fix (lib.composeOverlays overlays base);
in
{
  all = map (n: pkgs.${n}) (builtins.filter (lib.hasPrefix "pkg-") (builtins.attrNames pkgs));
  inherit (pkgs) tools;
}
"#;

/// The resident set size of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_over_200_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("set");
    std::fs::create_dir_all(set.join("tool-src")).unwrap();
    for (file, text) in [
        ("lib.nix", LIB),
        ("mk-derivation.nix", MK_DERIVATION),
        ("tool.nix", TOOL),
        ("default.nix", DEFAULT),
        ("tool-src/build.sh", "echo tool\n"),
    ] {
        std::fs::write(set.join(file), text).unwrap();
    }
    let store = kiln_store::backend::local::LocalStore::open(tmp.path().join("store"))
        .await
        .unwrap();
    let cache = Arc::new(kiln_store::cache::BinaryCache::new(
        Arc::new(store),
        kiln_store::cache::CacheOptions {
            temp_dir: tmp.path().to_path_buf(),
            ..Default::default()
        },
    ));

    let transport = MemoryTransport::new();
    let t: Arc<dyn Transport> = Arc::new(transport.clone());
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(kiln_evaluator::worker::run(
        t.clone(),
        cache,
        kiln_evaluator::worker::EvalWorkerConfig {
            work_dir: tmp.path().join("eval"),
        },
        shutdown.clone(),
    ));
    let mut out = transport.subscribe(&Route::Derivations).await.unwrap();

    let mut rss = Vec::with_capacity(JOBS);
    for n in 0..JOBS {
        let job_id = uuid::Uuid::new_v4();
        let spec = JobSpec {
            job_id,
            source: ExprSource::Expr {
                text: format!("import ./. {{ count = {PACKAGES}; }}"),
                base_dir: set.display().to_string(),
            },
            attr_paths: vec!["all".into(), "tools".into()],
            args: vec![],
            search_path: vec![],
            options: JobOptions::default(),
            sources: Vec::new(),
            attempt: uuid::Uuid::nil(),
        };
        t.publish(&Route::Eval, &Envelope::new(Message::EvalRequest(spec)), 0)
            .await
            .unwrap();
        let (mut drvs, mut roots) = (0, 0);
        loop {
            let d = tokio::time::timeout(Duration::from_secs(60), out.next())
                .await
                .unwrap_or_else(|_| panic!("job {n} finished in time"))
                .unwrap()
                .expect("the derivation route stays open");
            let body = d.envelope.body.clone();
            d.ack().await.unwrap();
            match body {
                Message::Derivation(m) if m.job_id == job_id => drvs += 1,
                Message::EvalRoot(r) if r.job_id == job_id => roots += 1,
                Message::EvalFinished(f) if f.job_id == job_id => {
                    assert_eq!(f.error, None, "job {n} failed");
                    break;
                }
                other => panic!("unexpected message {other:?}"),
            }
        }
        // Every package (one of them overridden) and the tool.
        assert_eq!(roots, PACKAGES + 1, "roots of job {n}");
        assert_eq!(drvs, PACKAGES + 1, "derivations of job {n}");
        rss.push(rss_kib());
    }
    shutdown.cancel();
    worker.await.unwrap().unwrap();

    let (warm, last) = (rss[WARM_UP - 1], rss[JOBS - 1]);
    let every_20: Vec<u64> = rss.iter().skip(WARM_UP - 1).step_by(20).copied().collect();
    eprintln!(
        "RSS after job 1: {} KiB, job {WARM_UP}: {warm} KiB, job {JOBS}: {last} KiB; \
         every 20 jobs from job {WARM_UP}: {every_20:?}",
        rss[0]
    );
    assert!(
        last * 10 <= warm * 11,
        "RSS grew from {warm} KiB after job {WARM_UP} to {last} KiB after job {JOBS}, \
         more than 10%"
    );
}
