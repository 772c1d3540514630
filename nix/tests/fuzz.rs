//! Fuzzing the parsers that read untrusted bytes: the NAR reader, the
//! narinfo parser and the ATerm (`.drv`) parser must answer every input with
//! a value or an error, never a panic, and never accept a NAR the writer
//! would not produce.
//!
//! Inputs are valid documents mutated (bytes flipped, cut, inserted,
//! repeated, removed) plus plain random bytes. CI runs a fixed seed; a
//! longer run takes a seed and a count from proptest's variables, e.g.
//! `PROPTEST_CASES=200000 PROPTEST_RNG_SEED=$RANDOM cargo test --release -p kiln-nix --test fuzz`
//! (see docs/fuzzing.md).

use kiln_nix::derivation::Derivation;
use kiln_nix::nar::{NarReader, NarWriter};
use kiln_nix::narinfo::NarInfo;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// The seed CI uses when none is given.
const SEED: u64 = 0x6b69_6c6e_6675_7a7a;

fn config() -> Config {
    let mut c = Config::default();
    if matches!(c.rng_seed, RngSeed::Random) {
        c.rng_seed = RngSeed::Fixed(SEED);
    }
    c.failure_persistence = None;
    c
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
    Repeat(usize, usize),
    Remove(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Edit::Flip(i, x)),
        any::<usize>().prop_map(Edit::Cut),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1..64usize).prop_map(|(i, n)| Edit::Repeat(i, n)),
        (any::<usize>(), 1..64usize).prop_map(|(i, n)| Edit::Remove(i, n)),
    ]
}

fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = b.len().max(1);
        match e {
            Edit::Flip(i, x) => {
                if !b.is_empty() {
                    let i = i % b.len();
                    b[i] ^= x;
                }
            }
            Edit::Cut(i) => b.truncate(i % len),
            Edit::Insert(i, bytes) => {
                let i = i % (b.len() + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            Edit::Repeat(i, n) => {
                let i = (i % len).min(b.len());
                let end = (i + n).min(b.len());
                let piece = b[i..end].to_vec();
                b.splice(end..end, piece);
            }
            Edit::Remove(i, n) => {
                let i = (i % len).min(b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
        }
    }
    b
}

/// A small file tree, written as a NAR.
#[derive(Debug, Clone)]
enum Node {
    File(bool, Vec<u8>),
    Link(Vec<u8>),
    Dir(Vec<(Vec<u8>, Node)>),
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(x, c)| Node::File(x, c)),
        "[a-z/.]{1,20}".prop_map(|t| Node::Link(t.into_bytes())),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        proptest::collection::btree_map("[a-zA-Z0-9._-]{1,8}", inner, 0..5).prop_map(|m| {
            Node::Dir(
                m.into_iter()
                    .filter(|(k, _)| k != "." && k != "..")
                    .map(|(k, v)| (k.into_bytes(), v))
                    .collect(),
            )
        })
    })
}

fn write(w: &mut NarWriter<Vec<u8>>, name: Option<&[u8]>, n: &Node) {
    match n {
        Node::File(x, c) => w.file(name, *x, c.len() as u64, &mut &c[..]).unwrap(),
        Node::Link(t) => w.symlink(name, t).unwrap(),
        Node::Dir(entries) => {
            w.start_directory(name).unwrap();
            for (k, v) in entries {
                write(w, Some(k), v);
            }
            w.end_directory().unwrap();
        }
    }
}

fn nar_of(n: &Node) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new()).unwrap();
    write(&mut w, None, n);
    w.finish().unwrap()
}

/// Reads a NAR to its end through the strict reader.
fn read_all(bytes: &[u8]) -> Result<(), kiln_nix::nar::ReadError> {
    let mut r = NarReader::new(bytes);
    while let Some(ev) = r.next()? {
        if let kiln_nix::nar::Event::File { mut contents, .. } = ev {
            std::io::copy(&mut contents, &mut std::io::sink())
                .map_err(|e| kiln_nix::nar::ReadError::from_contents_error(e, contents.offset()))?;
        }
    }
    Ok(())
}

const NARINFO: &str = "StorePath: /nix/store/s5nvav9b8g8kczqzrn1n1npbvs31hgs4-hello-2.12\n\
URL: nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz\n\
Compression: xz\n\
FileHash: sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3\n\
FileSize: 50088\n\
NarHash: sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3\n\
NarSize: 226560\n\
References: s5nvav9b8g8kczqzrn1n1npbvs31hgs4-hello-2.12 xi8a5j68mrn9amqlqkvhlnyljb5xy8rl-foo-dev\n\
Deriver: xi8a5j68mrn9amqlqkvhlnyljb5xy8rl-hello-2.12.drv\n\
Sig: cache.nixos.org-1:aaaa\n\
CA: fixed:r:sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3\n";

const ATERM: &str = r#"Derive([("dev","/nix/store/xi8a5j68mrn9amqlqkvhlnyljb5xy8rl-foo-dev","",""),("out","/nix/store/s5nvav9b8g8kczqzrn1n1npbvs31hgs4-foo","","")],[("/nix/store/s5nvav9b8g8kczqzrn1n1npbvs31hgs4-dep.drv",["out"])],["/nix/store/xi8a5j68mrn9amqlqkvhlnyljb5xy8rl-src"],"x86_64-linux","/bin/sh",["-c","echo \"a\\nb\" > $out"],[("builder","/bin/sh"),("name","foo"),("out","/nix/store/s5nvav9b8g8kczqzrn1n1npbvs31hgs4-foo"),("system","x86_64-linux")])"#;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn nar_reader_accepts_exactly_what_the_writer_writes(tree in node(), edits in proptest::collection::vec(edit(), 0..4)) {
        let nar = nar_of(&tree);
        prop_assert!(read_all(&nar).is_ok());
        let mutated = apply(nar, &edits);
        // Whatever the reader accepts is canonical: copying it through the
        // writer gives the same bytes.
        if let Ok(copy) = kiln_nix::nar::copy(&mutated[..], Vec::new()) {
            prop_assert_eq!(copy, mutated.clone());
        }
        let _ = read_all(&mutated);
    }

    #[test]
    fn nar_reader_survives_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut with_magic = b"\x0d\x00\x00\x00\x00\x00\x00\x00nix-archive-1\x00\x00\x00".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = read_all(&bytes);
        let _ = read_all(&with_magic);
        let _ = kiln_nix::nar::copy(&with_magic[..], Vec::new());
    }

    #[test]
    fn narinfo_parser_never_panics(edits in proptest::collection::vec(edit(), 0..6)) {
        let text = apply(NARINFO.as_bytes().to_vec(), &edits);
        let text = String::from_utf8_lossy(&text);
        if let Ok(info) = NarInfo::parse(&text, "fuzz") {
            // What parses can be written again and parses the same.
            if let Ok(again) = info.to_narinfo_string() {
                prop_assert_eq!(NarInfo::parse(&again, "fuzz").ok(), Some(info));
            }
        }
    }

    #[test]
    fn narinfo_parser_survives_random_text(text in "\\PC{0,300}") {
        let _ = NarInfo::parse(&text, "fuzz");
    }

    #[test]
    fn aterm_parser_never_panics(edits in proptest::collection::vec(edit(), 0..6)) {
        let bytes = apply(ATERM.as_bytes().to_vec(), &edits);
        if let Ok(drv) = Derivation::parse_aterm(&bytes) {
            let _ = drv.to_aterm();
        }
    }

    #[test]
    fn aterm_parser_survives_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut b = b"Derive(".to_vec();
        b.extend_from_slice(&bytes);
        let _ = Derivation::parse_aterm(&bytes);
        let _ = Derivation::parse_aterm(&b);
    }
}

#[test]
fn the_seed_documents_parse() {
    NarInfo::parse(NARINFO, "seed").unwrap();
    Derivation::parse_aterm(ATERM.as_bytes()).unwrap();
}
