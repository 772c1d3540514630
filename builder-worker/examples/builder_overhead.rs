//! Benchmark: builds N trivial derivations (`echo i > $out` with a static
//! busybox) with Kiln's builder at a given max-jobs, and prints the wall
//! time, the per-build cost and the mean sandbox set-up time.
//!
//! `cargo run --release -p kiln-builder --example builder_overhead -- [N] [JOBS] [BUSYBOX]`

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_builder::builder::{BuildOptions, Builder, BuilderConfig};
use kiln_nix::derivation::{Derivation, DerivationOutput};
use kiln_nix::nar::dump_path;
use kiln_nix::store_path::{make_source_path, StorePath};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(Ok(500), |s| s.parse())?;
    let jobs: usize = args.get(2).map_or(Ok(2), |s| s.parse())?;
    let host_bb = PathBuf::from(args.get(3).map_or("/bin/busybox", |s| s.as_str()));

    let tmp = std::env::temp_dir().join(format!("kiln-bench-{}", std::process::id()));
    let bbdir = tmp.join("busybox");
    std::fs::create_dir_all(bbdir.join("bin"))?;
    std::fs::copy(&host_bb, bbdir.join("bin/busybox"))?;
    let (_, nar) = dump_path(&bbdir, std::io::sink())?;
    let bb_path = make_source_path("busybox", &nar.hash, &BTreeSet::new(), false)?;
    let bb_store = bb_path.to_absolute_path();
    let inputs: BTreeMap<String, PathBuf> = [(bb_store.clone(), bbdir.clone())].into();

    let bb = format!("{bb_store}/bin/busybox");
    let mut drvs = Vec::new();
    for i in 0..n {
        let name = format!("trivial-{i}");
        let mut drv = Derivation {
            outputs: [("out".to_string(), DerivationOutput::Deferred)].into(),
            input_drvs: BTreeMap::new(),
            input_srcs: [StorePath::from_absolute_path(&bb_store)?].into(),
            system: "x86_64-linux".into(),
            builder: bb.clone(),
            args: vec!["sh".into(), "-c".into(), format!("echo {i} > $out")],
            env: [
                ("builder", bb.as_str()),
                ("name", name.as_str()),
                ("out", ""),
                ("system", "x86_64-linux"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        drv.fill_output_paths(&name, |_| None)?;
        let path = drv.drv_path(&name)?.to_absolute_path();
        drvs.push((path, drv));
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut config = BuilderConfig::new(tmp.join("scratch"));
    config.max_jobs = jobs;
    let builder = Arc::new(Builder::new(config));
    let inputs = Arc::new(inputs);
    let out_dir = tmp.join("out");
    let start = Instant::now();
    let setups: Vec<Duration> = rt.block_on(async {
        let mut tasks = Vec::new();
        for (path, drv) in drvs {
            let (b, inputs, out_dir) = (builder.clone(), inputs.clone(), out_dir.clone());
            tasks.push(tokio::spawn(async move {
                let opts = BuildOptions {
                    out_dir,
                    ..Default::default()
                };
                b.build(&path, &drv, &inputs, &opts)
                    .await
                    .map(|r| r.setup_time)
            }));
        }
        let mut v = Vec::new();
        for t in tasks {
            match t.await {
                Ok(Ok(s)) => v.push(s),
                Ok(Err(e)) => eprintln!("build failed: {e}"),
                Err(e) => eprintln!("task failed: {e}"),
            }
        }
        v
    });
    let wall = start.elapsed();
    let ok = setups.len();
    let mean_setup = setups.iter().sum::<Duration>() / ok.max(1) as u32;
    let mut sorted = setups.clone();
    sorted.sort();
    let median = sorted.get(ok / 2).copied().unwrap_or_default();
    println!("kiln builds={n} ok={ok} max_jobs={jobs} wall_s={:.3} per_build_ms={:.3} setup_mean_ms={:.3} setup_median_ms={:.3}",
        wall.as_secs_f64(), wall.as_secs_f64() * 1000.0 / n as f64, mean_setup.as_secs_f64() * 1000.0, median.as_secs_f64() * 1000.0);
    kiln_builder::rootfs::remove_tree(&tmp)?;
    Ok(())
}
