//! Every build case of `../shared/conformance/build` (except `ifd.nix`, which
//! needs the evaluator) built by Kiln's builder: the same `narHash`,
//! `narSize` and `references` per output as `nix-build --option sandbox
//! true`, or a failure where Nix fails, with Nix's reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kiln_builder::builder::{BuildOptions, Builder, BuilderConfig};
use kiln_nix::derivation::{Derivation, DerivationOutput, DrvHashModulo};
use kiln_nix::hash::{Hash, HashAlgo};
use kiln_nix::nar::dump_path;
use kiln_nix::store_path::{make_source_path, StorePath};
use serde_json::Value;

/// Cases in the corpus this test must check (ifd.nix excluded).
const EXPECTED_CASES: usize = 22;
const BUSYBOX_PATH: &str = "/nix/store/71fc7s32zl20dc955bhghy5dvalm7ndz-busybox";

struct Case {
    label: String,
    drv: Derivation,
    expected: Value,
}

/// Places the host's static busybox in the cache as Nix's source path, after
/// checking it is the binary the corpus was made with.
fn materialise_busybox(cache: &Path, corpus_sha: &str) -> Option<PathBuf> {
    let host = Path::new("/bin/busybox");
    if !host.exists() {
        assert!(
            !kiln_tests::in_ci(),
            "CI=true but /bin/busybox is missing (apt-get install busybox-static)"
        );
        eprintln!("skipping: /bin/busybox is missing (apt-get install busybox-static)");
        return None;
    }
    let bytes = std::fs::read(host).unwrap();
    let sha = Hash::of(HashAlgo::Sha256, &bytes).to_base16();
    assert_eq!(
        sha, corpus_sha,
        "the host's /bin/busybox (sha256 {sha}) is not the busybox the corpus was made with (busyboxSha256 {corpus_sha}); \
         the expected hashes only hold for that binary (Debian bookworm's busybox-static)"
    );
    let dir = cache.join("busybox");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy(host, dir.join("bin/busybox")).unwrap();
    let (_, nar) = dump_path(&dir, std::io::sink()).unwrap();
    let path = make_source_path("busybox", &nar.hash, &BTreeSet::new(), false).unwrap();
    assert_eq!(
        path.to_absolute_path(),
        BUSYBOX_PATH,
        "busybox source path computed from its NAR hash"
    );
    let dest = cache.join(path.base_name());
    std::fs::rename(&dir, &dest).unwrap();
    Some(dest)
}

fn drv_name(drv_path: &str) -> &str {
    let base = drv_path.rsplit('/').next().unwrap_or_default();
    base.split_once('-')
        .map_or(base, |(_, n)| n)
        .trim_end_matches(".drv")
}

/// Loads every case; also checks each ATerm hashes to its recorded path.
fn load_cases(dir: &Path) -> (BTreeMap<String, Case>, String) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.to_string_lossy().ends_with(".expected.json") && !p.ends_with("ifd.expected.json")
        })
        .collect();
    files.sort();
    let mut cases = BTreeMap::new();
    let mut sha = String::new();
    for f in files {
        let json: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        sha = json["busyboxSha256"].as_str().unwrap().to_string();
        let file = f
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".expected.json", "");
        for (name, case) in json["cases"].as_object().unwrap() {
            let drv_path = case["drvPath"].as_str().unwrap().to_string();
            let drv = Derivation::parse_aterm(case["aterm"].as_str().unwrap().as_bytes()).unwrap();
            assert_eq!(
                drv.drv_path(drv_name(&drv_path))
                    .unwrap()
                    .to_absolute_path(),
                drv_path
            );
            cases.insert(
                drv_path,
                Case {
                    label: format!("{file}.{name}"),
                    drv,
                    expected: case.clone(),
                },
            );
        }
    }
    (cases, sha)
}

/// The layers of `wide.nix` are not cases themselves: rebuild their
/// derivations from the expression's template and check they hash to the
/// paths `wide-top` refers to.
fn wide_layers(cases: &BTreeMap<String, Case>) -> BTreeMap<String, Derivation> {
    let bb = format!("{BUSYBOX_PATH}/bin/busybox");
    let mut extra = BTreeMap::new();
    let mut hashes: BTreeMap<StorePath, DrvHashModulo> = BTreeMap::new();
    let mut prev: Vec<(StorePath, String)> = Vec::new();
    for layer in 0..3 {
        let mut this = Vec::new();
        for i in 0..8 {
            let name = format!("w{layer}-{i}");
            let refs: Vec<&str> = prev.iter().map(|(_, out)| out.as_str()).collect();
            let script = format!("echo {i} {} > $out", refs.join(" "));
            let args = vec![
                "sh".into(),
                "-e".into(),
                "-c".into(),
                format!("{bb} mkdir -p \"$TMPDIR/.bin\"\n{bb} --install -s \"$TMPDIR/.bin\"\nexport PATH=\"$TMPDIR/.bin\"\n{script}\n"),
            ];
            let env: BTreeMap<String, String> = [
                ("builder", bb.as_str()),
                ("name", name.as_str()),
                ("out", ""),
                ("system", "x86_64-linux"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let mut drv = Derivation {
                outputs: [("out".to_string(), DerivationOutput::Deferred)].into(),
                input_drvs: prev
                    .iter()
                    .map(|(d, _)| (d.clone(), ["out".to_string()].into()))
                    .collect(),
                input_srcs: [StorePath::from_absolute_path(BUSYBOX_PATH).unwrap()].into(),
                system: "x86_64-linux".into(),
                builder: bb.clone(),
                args,
                env,
            };
            drv.fill_output_paths(&name, |p| hashes.get(p).cloned())
                .unwrap();
            let drv_path = drv.drv_path(&name).unwrap();
            hashes.insert(
                drv_path.clone(),
                drv.hash_modulo(false, |p| hashes.get(p).cloned()).unwrap(),
            );
            this.push((drv_path.clone(), drv.env["out"].clone()));
            extra.insert(drv_path.to_absolute_path(), drv);
        }
        prev = this;
    }
    let top = cases
        .values()
        .find(|c| c.label == "wide.top")
        .expect("wide.top case");
    let wanted: BTreeSet<&StorePath> = top.drv.input_drvs.keys().collect();
    let got: BTreeSet<&StorePath> = prev.iter().map(|(d, _)| d).collect();
    assert_eq!(
        got, wanted,
        "reconstructed wide.nix layer 2 must be the derivations wide-top depends on"
    );
    extra
}

/// The closure of `paths` over the recorded references.
fn closure(
    start: impl IntoIterator<Item = String>,
    realised: &BTreeMap<String, (PathBuf, BTreeSet<String>)>,
) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut todo: Vec<String> = start.into_iter().collect();
    while let Some(p) = todo.pop() {
        if out.contains_key(&p) {
            continue;
        }
        let (loc, refs) = &realised[&p];
        out.insert(p.clone(), loc.clone());
        todo.extend(refs.iter().cloned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_build_case_matches_nix() {
    let corpus = kiln_tests::shared_dir().join("conformance/build");
    let (cases, busybox_sha) = load_cases(&corpus);
    assert_eq!(
        cases.len(),
        EXPECTED_CASES,
        "cases found in {}",
        corpus.display()
    );
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let Some(bb) = materialise_busybox(&cache, &busybox_sha) else {
        return;
    };
    let extra = wide_layers(&cases);

    let mut config = BuilderConfig::new(t.path().join("scratch"));
    config.max_jobs = 2;
    let builder = Builder::new(config);
    let mut realised: BTreeMap<String, (PathBuf, BTreeSet<String>)> =
        [(BUSYBOX_PATH.to_string(), (bb, BTreeSet::new()))].into();
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let all: BTreeMap<&String, &Derivation> = cases
        .iter()
        .map(|(k, c)| (k, &c.drv))
        .chain(extra.iter())
        .collect();
    let mut checked = 0;
    // Build in dependency order, one ready derivation at a time.
    while done.len() < all.len() {
        let (drv_path, drv) = all
            .iter()
            .find(|(p, d)| {
                !done.contains(**p)
                    && d.input_drvs
                        .keys()
                        .all(|i| done.contains(&i.to_absolute_path()))
            })
            .map(|(p, d)| ((*p).clone(), *d))
            .expect("a derivation whose inputs are all built");
        done.insert(drv_path.clone());
        let failed_inputs: Vec<String> = drv
            .input_drvs
            .keys()
            .map(|p| p.to_absolute_path())
            .filter(|p| failed.contains_key(p))
            .collect();
        let result: Result<BTreeMap<String, Value>, Vec<String>> = if !failed_inputs.is_empty() {
            let mut lines: Vec<String> = failed_inputs.iter().map(|p| failed[p].clone()).collect();
            lines.push(format!(
                "error: {} dependencies of derivation '{drv_path}' failed to build",
                failed_inputs.len()
            ));
            Err(lines)
        } else {
            let mut start: Vec<String> = drv
                .input_srcs
                .iter()
                .map(|p| p.to_absolute_path())
                .collect();
            for (input, outs) in &drv.input_drvs {
                let input_drv = all[&input.to_absolute_path()];
                for o in outs {
                    start.push(input_drv.outputs[o].path().unwrap().to_absolute_path());
                }
            }
            let inputs = closure(start, &realised);
            let options = BuildOptions {
                out_dir: cache.clone(),
                ..Default::default()
            };
            match builder.build(&drv_path, drv, &inputs, &options).await {
                Ok(res) => {
                    let mut outs = BTreeMap::new();
                    for (name, o) in res.outputs {
                        realised.insert(o.path.clone(), (o.location.clone(), o.references.clone()));
                        outs.insert(
                            name,
                            serde_json::json!({ "narHash": o.nar_hash.to_sri(), "narSize": o.nar_size, "references": o.references.iter().collect::<Vec<_>>() }),
                        );
                    }
                    Ok(outs)
                }
                Err(e) => {
                    let line = format!("error: {e}")
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    failed.insert(drv_path.clone(), line.clone());
                    Err(vec![line])
                }
            }
        };
        let Some(case) = cases.get(&drv_path) else {
            assert!(
                result.is_ok(),
                "wide.nix layer {drv_path} failed: {result:?}"
            );
            continue;
        };
        checked += 1;
        let label = &case.label;
        if case.expected["buildFails"].as_bool() == Some(true) {
            let want: Vec<&str> = case.expected["nixError"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            let got = result.expect_err(&format!("{label} must fail as it does with Nix"));
            assert_eq!(got.len(), want.len(), "{label}: {got:?} vs {want:?}");
            for (g, w) in got.iter().zip(&want) {
                // Nix names its own chroot directory for a missing output.
                let (g, w) = match (g.split_once(" at '"), w.split_once(" at '")) {
                    (Some((g, _)), Some((w, _))) => (g, w),
                    _ => (g.as_str(), *w),
                };
                assert_eq!(g, w, "{label}");
            }
        } else {
            let got = result.unwrap_or_else(|e| panic!("{label} failed: {e:?}"));
            let want: BTreeMap<String, Value> =
                serde_json::from_value(case.expected["built"].clone()).unwrap();
            assert_eq!(got, want, "{label}");
        }
    }
    assert_eq!(checked, EXPECTED_CASES);
    kiln_builder::rootfs::remove_tree(t.path()).unwrap();
}
