//! Derivation conformance against Nix 2.8.0: every `kind: "derivation"` case
//! of `conformance/eval/*.expected.json` and `conformance/build/*.expected.json`
//! must parse, re-serialise to identical bytes, and give back Nix's `.drv`
//! path and output paths. Input derivations' modulo hashes come from the
//! other cases of the corpus.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use kiln_nix::derivation::{hash_derivation_modulo, Derivation, DerivationOutput, DrvHashModulo};
use kiln_nix::store_path::StorePath;
use serde_json::Value;

/// One derivation case as Nix recorded it.
struct Case {
    id: String,
    aterm: String,
    drv_path: StorePath,
    outputs: BTreeMap<String, StorePath>,
    drv: Derivation,
}

impl Case {
    /// The derivation name, which Nix takes from the `.drv` file name.
    fn name(&self) -> &str {
        self.drv_path
            .name()
            .strip_suffix(".drv")
            .unwrap_or(self.drv_path.name())
    }
}

fn load_dir(dir: &Path, cases: &mut Vec<Case>) -> usize {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".expected.json"))
        .collect();
    files.sort();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let json: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let stem = file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".expected.json", "");
        let entries = json["cases"]
            .as_object()
            .unwrap_or_else(|| panic!("{}: no cases", file.display()));
        for (name, case) in entries {
            if case["kind"] != "derivation" {
                continue;
            }
            let id = format!(
                "{}/{stem}:{name}",
                dir.file_name().unwrap().to_string_lossy()
            );
            let aterm = case["aterm"]
                .as_str()
                .unwrap_or_else(|| panic!("{id}: no aterm"))
                .to_string();
            let drv_path = StorePath::from_absolute_path(case["drvPath"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{id}: {e}"));
            let outputs = case["outputs"]
                .as_object()
                .unwrap_or_else(|| panic!("{id}: no outputs"))
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        StorePath::from_absolute_path(v.as_str().unwrap()).unwrap(),
                    )
                })
                .collect();
            let drv =
                Derivation::parse_aterm(aterm.as_bytes()).unwrap_or_else(|e| panic!("{id}: {e}"));
            cases.push(Case {
                id,
                aterm,
                drv_path,
                outputs,
                drv,
            });
        }
    }
    files.len()
}

/// Modulo hash of `path` (unmasked, as dependents use it), computing its
/// inputs first; `None` when it is not in `drvs`.
fn modulo(
    path: &StorePath,
    drvs: &BTreeMap<StorePath, Derivation>,
    memo: &mut BTreeMap<StorePath, DrvHashModulo>,
) -> Option<DrvHashModulo> {
    if let Some(h) = memo.get(path) {
        return Some(h.clone());
    }
    let drv = drvs.get(path)?;
    for input in drv.input_drvs.keys() {
        modulo(input, drvs, memo)?;
    }
    let h = hash_derivation_modulo(drv, false, |p| memo.get(p).cloned())
        .unwrap_or_else(|e| panic!("hashing {path}: {e}"));
    memo.insert(path.clone(), h.clone());
    Some(h)
}

/// Rebuilds the layered derivations of `build/wide.nix` (`lib.nix`'s `mk`)
/// from the shape of `wide-top`, whose inputs the corpus does not record.
fn rebuild_wide_layers(top: &Derivation, drvs: &mut BTreeMap<StorePath, Derivation>) -> usize {
    let script = &top.args[3];
    let prefix = &script[..script.find("\ncat ").expect("wide-top runs cat") + 1];
    let mut prev: Vec<(StorePath, StorePath)> = Vec::new();
    let mut memo = BTreeMap::new();
    let mut added = 0;
    for layer in 0..3 {
        let mut this = Vec::new();
        for i in 0..8 {
            let name = format!("w{layer}-{i}");
            let outs: Vec<String> = prev.iter().map(|(_, out)| out.to_string()).collect();
            let mut drv = Derivation {
                input_srcs: top.input_srcs.clone(),
                system: top.system.clone(),
                builder: top.builder.clone(),
                args: top.args[..3].to_vec(),
                ..Derivation::default()
            };
            drv.args
                .push(format!("{prefix}echo {i} {} > $out\n", outs.join(" ")));
            drv.outputs.insert("out".into(), DerivationOutput::Deferred);
            for (k, v) in [
                ("builder", &top.builder),
                ("name", &name),
                ("system", &top.system),
            ] {
                drv.env.insert(k.to_string(), v.clone());
            }
            for (drv_path, _) in &prev {
                drv.input_drvs
                    .insert(drv_path.clone(), BTreeSet::from(["out".to_string()]));
            }
            drv.fill_output_paths(&name, |p| modulo(p, drvs, &mut memo))
                .unwrap();
            let drv_path = drv.drv_path(&name).unwrap();
            let out = drv.outputs["out"].path().unwrap().clone();
            drvs.insert(drv_path.clone(), drv);
            added += 1;
            this.push((drv_path, out));
        }
        prev = this;
    }
    added
}

#[test]
fn derivations_match_nix() {
    let root = kiln_tests::shared_dir().join("conformance");
    let mut cases = Vec::new();
    let files =
        load_dir(&root.join("eval"), &mut cases) + load_dir(&root.join("build"), &mut cases);
    assert!(
        files >= 2,
        "no expected.json files under {}",
        root.display()
    );

    let mut drvs: BTreeMap<StorePath, Derivation> = BTreeMap::new();
    for case in &cases {
        // Byte-identical round trip and the .drv path.
        assert_eq!(
            case.drv.to_aterm(),
            case.aterm,
            "{}: ATerm round trip",
            case.id
        );
        let drv_path = case
            .drv
            .drv_path(case.name())
            .unwrap_or_else(|e| panic!("{}: {e}", case.id));
        assert_eq!(drv_path, case.drv_path, "{}: .drv path", case.id);
        let recorded: BTreeMap<_, _> = case
            .drv
            .outputs
            .iter()
            .map(|(k, v)| (k.clone(), v.path().cloned().unwrap()))
            .collect();
        assert_eq!(recorded, case.outputs, "{}: outputs in the ATerm", case.id);
        drvs.insert(case.drv_path.clone(), case.drv.clone());
    }

    // Inputs the corpus lacks: wide-top's layers, rebuilt and checked below
    // by the top's own output path.
    let missing: BTreeSet<_> = cases
        .iter()
        .flat_map(|c| c.drv.input_drvs.keys())
        .filter(|p| !drvs.contains_key(*p))
        .cloned()
        .collect();
    if let Some(top) = cases.iter().find(|c| c.drv_path.name() == "wide-top.drv") {
        let added = rebuild_wide_layers(&top.drv, &mut drvs);
        assert_eq!(added, 24);
    }
    for p in &missing {
        assert!(
            drvs.contains_key(p),
            "input {p} is neither in the corpus nor rebuilt"
        );
    }

    let mut memo = BTreeMap::new();
    let mut outputs_checked = 0;
    for case in &cases {
        for input in case.drv.input_drvs.keys() {
            modulo(input, &drvs, &mut memo).unwrap();
        }
        let computed = case
            .drv
            .compute_output_paths(case.name(), |p| memo.get(p).cloned())
            .unwrap_or_else(|e| panic!("{}: {e}", case.id));
        assert_eq!(computed, case.outputs, "{}: output paths", case.id);

        // And instantiating from scratch gives the very same derivation.
        let mut fresh = case.drv.clone();
        for (name, out) in fresh.outputs.iter_mut() {
            if matches!(out, DerivationOutput::InputAddressed { .. }) {
                *out = DerivationOutput::Deferred;
            }
            fresh.env.remove(name);
        }
        fresh
            .fill_output_paths(case.name(), |p| memo.get(p).cloned())
            .unwrap_or_else(|e| panic!("{}: {e}", case.id));
        assert_eq!(fresh, case.drv, "{}: instantiation", case.id);
        outputs_checked += 1;
    }

    println!(
        "{} derivation cases from {files} files: ATerm, .drv path and output paths all equal Nix's \
         ({} inputs rebuilt)",
        cases.len(),
        missing.len()
    );
    assert_eq!(outputs_checked, cases.len());
    // The corpus has 51 derivation cases today; refuse a silent shrink.
    assert!(
        cases.len() >= 51,
        "only {} derivation cases found",
        cases.len()
    );
}
