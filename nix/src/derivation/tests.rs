//! Unit tests for derivations. Expected paths and bytes come from Nix 2.8.0.

use super::*;
use proptest::prelude::*;

/// Builds what the evaluator would before `fill_output_paths`.
fn skeleton(
    name: &str,
    system: &str,
    builder: &str,
    args: &[&str],
    outputs: &[&str],
) -> Derivation {
    let mut drv = Derivation {
        system: system.into(),
        builder: builder.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Derivation::default()
    };
    for o in outputs {
        drv.outputs
            .insert(o.to_string(), DerivationOutput::Deferred);
    }
    for (k, v) in [("builder", builder), ("name", name), ("system", system)] {
        drv.env.insert(k.into(), v.into());
    }
    drv
}

fn no_inputs(_: &StorePath) -> Option<DrvHashModulo> {
    None
}

// eval/basic.nix `minimal`.
const MINIMAL: &str = r#"Derive([("out","/nix/store/s5nvav9b8g8kczqzrn1n1npbvs31hgs4-minimal","","")],[],[],"x86_64-linux","/bin/sh",[],[("builder","/bin/sh"),("name","minimal"),("out","/nix/store/s5nvav9b8g8kczqzrn1n1npbvs31hgs4-minimal"),("system","x86_64-linux")])"#;

#[test]
fn instantiates_like_nix() {
    let mut drv = skeleton("minimal", "x86_64-linux", "/bin/sh", &[], &["out"]);
    drv.fill_output_paths("minimal", no_inputs).unwrap();
    assert_eq!(drv.to_aterm(), MINIMAL);
    assert_eq!(Derivation::parse_aterm(MINIMAL.as_bytes()).unwrap(), drv);
    assert_eq!(
        drv.drv_path("minimal").unwrap().to_string(),
        "/nix/store/v1x7ylvsiz9y106ac08pngsy82l2igb7-minimal.drv"
    );
    let mut streamed = Vec::new();
    drv.write_aterm(&mut streamed).unwrap();
    assert_eq!(streamed, MINIMAL.as_bytes());
}

#[test]
fn writes_raw_fields_unescaped_like_nix() {
    // `nix-instantiate -E 'derivation { name = "foo"; system = "x\"y\tz\\";
    // builder = "/bin/sh\t\\\"é"; outputs = ["out" "dev"]; }'` with Nix 2.8.0
    // wrote these bytes (the system is not escaped, so Nix cannot read the
    // file back either).
    let expected = concat!(
        r#"Derive([("dev","/nix/store/xi8a5j68mrn9amqlqkvhlnyljb5xy8rl-foo-dev","",""),"#,
        r#"("out","/nix/store/ip4q4v52dcq138qwgbhjlg6i3rb7xl0z-foo","","")],[],[],"#,
        "\"x\"y\tz\\\",\"/bin/sh\\t\\\\\\\"é\",[],[(\"builder\",\"/bin/sh\\t\\\\\\\"é\"),",
        r#"("dev","/nix/store/xi8a5j68mrn9amqlqkvhlnyljb5xy8rl-foo-dev"),("name","foo"),"#,
        r#"("out","/nix/store/ip4q4v52dcq138qwgbhjlg6i3rb7xl0z-foo"),("outputs","out dev"),"#,
        "(\"system\",\"x\\\"y\\tz\\\\\")])"
    );
    let mut drv = skeleton("foo", "x\"y\tz\\", "/bin/sh\t\\\"é", &[], &["out", "dev"]);
    drv.env.insert("outputs".into(), "out dev".into());
    drv.fill_output_paths("foo", no_inputs).unwrap();
    assert_eq!(drv.to_aterm(), expected);
    assert_eq!(
        drv.drv_path("foo").unwrap().to_string(),
        "/nix/store/5wxfrzryxbbfv5zv574dgmz0n3bm5hii-foo.drv"
    );
    assert!(matches!(
        Derivation::parse_aterm(expected.as_bytes()),
        Err(DerivationError::Syntax { .. })
    ));
}

#[test]
fn fixed_output_inputs_hash_modulo() {
    // eval/fixed.nix `fodA` and `dependsOnA`.
    let h = Hash::parse_any_prefixed("sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s")
        .unwrap();
    let fixed = FixedOutputHash {
        method: FileIngestionMethod::Recursive,
        hash: h,
    };
    assert_eq!(fixed.method_algo(), "r:sha256");
    let mut fod = skeleton("fod", "x86_64-linux", "/bin/sh", &["a"], &[]);
    fod.outputs
        .insert("out".into(), DerivationOutput::fixed("fod", fixed).unwrap());
    for (k, v) in [
        (
            "outputHash",
            "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
        ),
        ("outputHashAlgo", "sha256"),
        ("outputHashMode", "recursive"),
    ] {
        fod.env.insert(k.into(), v.into());
    }
    fod.fill_output_paths("fod", no_inputs).unwrap();
    let fod_out = "/nix/store/lnpgaw3h64fdzcy9g0afhzkr8wappy4b-fod";
    assert_eq!(fod.env["out"], fod_out);
    let fod_path = fod.drv_path("fod").unwrap();
    assert_eq!(
        fod_path.to_string(),
        "/nix/store/58yh5adkh52983fvayykccy1viq8br66-fod.drv"
    );
    let fod_hash = fod.hash_modulo(false, no_inputs).unwrap();
    assert!(matches!(&fod_hash, DrvHashModulo::FixedOutput(m) if m.len() == 1));

    let mut dep = skeleton("depends", "x86_64-linux", "/bin/sh", &[], &["out"]);
    dep.env.insert("src".into(), fod_out.into());
    dep.input_drvs
        .insert(fod_path.clone(), BTreeSet::from(["out".to_string()]));
    let lookup = |p: &StorePath| (p == &fod_path).then(|| fod_hash.clone());
    dep.fill_output_paths("depends", lookup).unwrap();
    assert_eq!(
        dep.env["out"],
        "/nix/store/vgam69gq3gkmn6vi15z9iyvm5wmwh4is-depends"
    );
    assert_eq!(
        dep.drv_path("depends").unwrap().to_string(),
        "/nix/store/rllzfz7b1y4vjrpcwxc34xirmqnp6q9q-depends.drv"
    );

    // A missing input, or a missing output of a fixed-output input, is an error.
    assert!(matches!(
        dep.compute_output_paths("depends", no_inputs),
        Err(DerivationError::UnknownInputDrv(_))
    ));
    dep.input_drvs
        .insert(fod_path.clone(), BTreeSet::from(["dev".to_string()]));
    assert!(matches!(
        dep.compute_output_paths("depends", lookup),
        Err(DerivationError::MissingInputOutput { .. })
    ));
}

#[test]
fn refuses_unsupported_derivations() {
    let mut drv = skeleton("ca", "x86_64-linux", "/bin/sh", &[], &["out"]);
    drv.env.insert("__contentAddressed".into(), "1".into());
    assert!(matches!(
        drv.fill_output_paths("ca", no_inputs),
        Err(DerivationError::FloatingCa { .. })
    ));
    let floating = r#"Derive([("out","","r:sha256","")],[],[],"x","/bin/sh",[],[])"#;
    let err = Derivation::parse_aterm(floating.as_bytes()).unwrap_err();
    assert!(matches!(err, DerivationError::FloatingCa { .. }), "{err}");
    assert!(err.to_string().contains("__contentAddressed"));

    let none = skeleton("x", "x", "/bin/sh", &[], &[]);
    assert_eq!(none.kind(), Err(DerivationError::NoOutputs));
    let mut mixed = skeleton("x", "x", "/bin/sh", &[], &["out"]);
    let flat = FixedOutputHash {
        method: FileIngestionMethod::Flat,
        hash: Hash::of(crate::hash::HashAlgo::Sha1, b""),
    };
    mixed.outputs.insert(
        "dev".into(),
        DerivationOutput::fixed("x", flat.clone()).unwrap(),
    );
    assert_eq!(mixed.kind(), Err(DerivationError::MixedOutputs));
    mixed
        .outputs
        .insert("out".into(), DerivationOutput::fixed("x", flat).unwrap());
    assert!(matches!(
        mixed.kind(),
        Err(DerivationError::BadFixedOutputs { .. })
    ));
}

/// Parses `text`, which must fail.
fn parse_err(text: &str) -> DerivationError {
    Derivation::parse_aterm(text.as_bytes()).unwrap_err()
}

#[test]
fn parse_errors_say_where_and_what() {
    let trailing = format!("{MINIMAL}\n");
    assert_eq!(
        parse_err(&trailing),
        DerivationError::TrailingData {
            offset: MINIMAL.len()
        }
    );

    let e = parse_err(r#"Derive([],[],[],"x","/bin/sh",[]"#);
    assert_eq!(
        e.to_string(),
        "derivation ATerm, byte 32: expected ',', found end of input"
    );
    let e = parse_err(r#"Derive([]  ,[],[],"x","/bin/sh",[],[])"#);
    assert!(
        matches!(e, DerivationError::Syntax { offset: 9, ref expected, .. } if expected == "','"),
        "{e}"
    );
    let e = parse_err(r#"Derive([],[],[],"x","/bin/\a",[],[])"#);
    assert_eq!(
        e,
        DerivationError::BadEscape {
            offset: 26,
            ch: 'a'
        }
    );
    let e = parse_err("Derive([],[],[],\"x\",\"/bin/\n\",[],[])");
    assert!(
        matches!(
            e,
            DerivationError::RawControlChar {
                offset: 26,
                ch: '\n',
                ..
            }
        ),
        "{e}"
    );
    let e = parse_err(r#"Derive([],[],[],"x\y","/bin/sh",[],[])"#);
    assert!(
        matches!(e, DerivationError::BackslashInRawField { offset: 18, .. }),
        "{e}"
    );
    let e = parse_err(r#"Derive([],[],[],"x","b",[],[("b","1"),("a","2")])"#);
    assert!(
        matches!(e, DerivationError::Unsorted { offset: 39, ref key, .. } if key == "a"),
        "{e}"
    );
    let e = parse_err(r#"Derive([],[],[],"x","b",[,"a"],[])"#);
    assert!(
        matches!(e, DerivationError::Syntax { offset: 25, .. }),
        "{e}"
    );
    let e = parse_err(r#"Derive([],[],["/nix/store/x"],"x","b",[],[])"#);
    assert!(
        matches!(e, DerivationError::BadStorePath { offset: 14, .. }),
        "{e}"
    );
    let e = parse_err(r#"Derive([("out","","","00")],[],[],"x","b",[],[])"#);
    assert!(
        matches!(e, DerivationError::BadOutput { offset: 9, .. }),
        "{e}"
    );
    // Nix would accept a base-32 hash here but write it back in base 16.
    let e = parse_err(concat!(
        r#"Derive([("out","/nix/store/ppcfbc2vaybk8j3zvkl9qr9z3mjkqas9-sri-hash","sha256","#,
        r#""0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73")],[],[],"x","b",[],[])"#
    ));
    assert!(matches!(e, DerivationError::BadOutput { .. }), "{e}");
    assert!(matches!(
        Derivation::parse_aterm(b"Derive(\xff"),
        Err(DerivationError::BadUtf8 { offset: 7 })
    ));
}

#[test]
fn serde_round_trip() {
    let drv = Derivation::parse_aterm(MINIMAL.as_bytes()).unwrap();
    let json = serde_json::to_string(&drv).unwrap();
    assert!(json.contains("\"inputAddressed\""), "{json}");
    assert_eq!(serde_json::from_str::<Derivation>(&json).unwrap(), drv);
    // eval/fixed.nix `dependsOnA`: store paths as map keys.
    let depends = concat!(
        r#"Derive([("out","/nix/store/vgam69gq3gkmn6vi15z9iyvm5wmwh4is-depends","","")],"#,
        r#"[("/nix/store/58yh5adkh52983fvayykccy1viq8br66-fod.drv",["out"])],[],"x86_64-linux","/bin/sh",[],"#,
        r#"[("builder","/bin/sh"),("name","depends"),("out","/nix/store/vgam69gq3gkmn6vi15z9iyvm5wmwh4is-depends"),"#,
        r#"("src","/nix/store/lnpgaw3h64fdzcy9g0afhzkr8wappy4b-fod"),("system","x86_64-linux")])"#
    );
    let drv = Derivation::parse_aterm(depends.as_bytes()).unwrap();
    assert_eq!(drv.to_aterm(), depends);
    let json = serde_json::to_string(&drv).unwrap();
    assert!(
        json.contains(r#""/nix/store/58yh5adkh52983fvayykccy1viq8br66-fod.drv":["out"]"#),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<Derivation>(&json).unwrap(), drv);
    let fixed = DerivationOutput::fixed(
        "x",
        FixedOutputHash {
            method: FileIngestionMethod::Flat,
            hash: Hash::of(crate::hash::HashAlgo::Sha512, b""),
        },
    )
    .unwrap();
    let json = serde_json::to_string(&fixed).unwrap();
    assert!(json.contains("sha512:cf83e1357eefb8bd"), "{json}");
    assert_eq!(
        serde_json::from_str::<DerivationOutput>(&json).unwrap(),
        fixed
    );
}

fn arb_path() -> impl Strategy<Value = StorePath> {
    (
        proptest::array::uniform20(any::<u8>()),
        "[a-zA-Z0-9+._?=-]{1,20}",
    )
        .prop_map(|(d, n)| StorePath::new(d, &n).unwrap())
}

fn arb_output() -> impl Strategy<Value = DerivationOutput> {
    let algo = prop_oneof![
        Just(crate::hash::HashAlgo::Md5),
        Just(crate::hash::HashAlgo::Sha1),
        Just(crate::hash::HashAlgo::Sha256),
        Just(crate::hash::HashAlgo::Sha512),
    ];
    prop_oneof![
        Just(DerivationOutput::Deferred),
        arb_path().prop_map(|path| DerivationOutput::InputAddressed { path }),
        (arb_path(), algo, any::<bool>(), any::<Vec<u8>>()).prop_map(|(path, algo, rec, data)| {
            let method = if rec {
                FileIngestionMethod::Recursive
            } else {
                FileIngestionMethod::Flat
            };
            let hash = FixedOutputHash {
                method,
                hash: Hash::of(algo, &data),
            };
            DerivationOutput::Fixed { path, hash }
        }),
    ]
}

/// Strings Nix writes raw must not hold `"` or `\`.
const RAW: &str = "[^\"\\\\]{0,12}";

prop_compose! {
    fn arb_drv()(
        outputs in proptest::collection::btree_map(RAW, arb_output(), 0..4),
        input_drvs in proptest::collection::btree_map(
            arb_path(), proptest::collection::btree_set(RAW, 0..3), 0..4),
        input_srcs in proptest::collection::btree_set(arb_path(), 0..4),
        system in RAW,
        builder in any::<String>(),
        args in proptest::collection::vec(any::<String>(), 0..4),
        env in proptest::collection::btree_map(any::<String>(), any::<String>(), 0..5),
    ) -> Derivation {
        Derivation { outputs, input_drvs, input_srcs, system, builder, args, env }
    }
}

proptest! {
    #[test]
    fn aterm_round_trip(drv in arb_drv()) {
        let text = drv.to_aterm();
        let parsed = Derivation::parse_aterm(text.as_bytes());
        prop_assert_eq!(parsed.as_ref(), Ok(&drv), "{}", text);
        prop_assert_eq!(parsed.unwrap().to_aterm(), text);
    }

    #[test]
    fn parser_never_panics(drv in arb_drv(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = drv.to_aterm().into_bytes();
        let i = cut.index(bytes.len());
        bytes[i] = byte;
        if let Ok(d) = Derivation::parse_aterm(&bytes) {
            // Whatever is accepted is written back to the same bytes.
            let text = d.to_aterm();
            prop_assert_eq!(text.as_bytes(), &bytes[..]);
        }
        let _ = Derivation::parse_aterm(&bytes[..i]);
    }
}
