//! NAR conformance against archives written by Nix 2.8 (`conformance/nar/`):
//! every good archive parses, re-serialises to the same bytes, restores and
//! dumps back to the same bytes, with the recorded hash and size; every
//! hostile archive in `bad/` is refused for the right reason and leaves
//! nothing behind outside (or inside) the target.

use kiln_nix::hash::{Hash, HashAlgo};
use kiln_nix::nar::{self, CopyError, ReadError, UnpackError};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

fn nar_dir() -> PathBuf {
    kiln_tests::shared_dir().join("conformance/nar")
}

fn read_json(path: &Path) -> serde_json::Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Every file and symlink below `dir`, relative to it, including symlinks.
fn listing(dir: &Path) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = fs::symlink_metadata(&p).unwrap();
            out.push((
                p.strip_prefix(dir).unwrap().to_path_buf(),
                meta.file_type().is_symlink(),
            ));
            if meta.is_dir() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn good_archives_round_trip_with_recorded_hashes() {
    let dir = nar_dir();
    let expected = read_json(&dir.join("expected.json"));
    let expected = expected.as_object().expect("expected.json is an object");
    let mut on_disk: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".nar"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = expected.keys().cloned().collect();
    listed.sort();
    assert_eq!(on_disk, listed, "expected.json must describe every .nar");
    assert!(!listed.is_empty());

    let tmp = tempfile::tempdir().unwrap();
    for (name, exp) in expected {
        let bytes = fs::read(dir.join(name)).unwrap();
        let want_hash = Hash::parse_any_prefixed(exp["narHash"].as_str().unwrap()).unwrap();
        let want_sri = Hash::parse_any_prefixed(exp["narHashSRI"].as_str().unwrap()).unwrap();
        assert_eq!(
            want_hash, want_sri,
            "{name}: expected.json disagrees with itself"
        );
        let want_size = exp["narSize"].as_u64().unwrap();
        assert_eq!(bytes.len() as u64, want_size, "{name}: size");
        assert_eq!(
            Hash::of(HashAlgo::Sha256, &bytes),
            want_hash,
            "{name}: hash of the file"
        );

        // Parse and re-serialise.
        let copied = nar::copy(&bytes[..], Vec::new()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(copied == bytes, "{name}: re-serialised bytes differ");

        // Restore, then dump again.
        let out = tmp.path().join(name.trim_end_matches(".nar"));
        nar::unpack(&bytes[..], &out).unwrap_or_else(|e| panic!("{name}: restoring: {e}"));
        let (dumped, digest) = nar::dump_path(&out, Vec::new()).unwrap();
        assert!(dumped == bytes, "{name}: restore then dump differs");
        assert_eq!(digest.hash, want_hash, "{name}: dump hash");
        assert_eq!(digest.size, want_size, "{name}: dump size");
    }
}

/// Why each hostile archive must be refused.
fn refused_for_the_right_reason(name: &str, e: &ReadError) -> bool {
    use ReadError as E;
    match name {
        "bad-magic.nar" => matches!(e, E::BadMagic),
        "dot-entry.nar" | "dotdot-entry.nar" | "empty-name.nar" | "nul-in-name.nar"
        | "slash-in-name.nar" => {
            matches!(e, E::Name { .. })
        }
        "duplicate.nar" | "unsorted.nar" => matches!(e, E::Unsorted { .. }),
        "executable-on-symlink.nar" => {
            matches!(e, E::Unexpected { found, .. } if found == "'executable'")
        }
        "huge-length.nar" | "truncated.nar" => matches!(e, E::Truncated { .. } | E::TooLong { .. }),
        "nonzero-padding.nar" => matches!(e, E::Padding { .. } | E::Unexpected { .. }),
        "trailing-garbage.nar" => matches!(e, E::Trailing { .. }),
        "unknown-type.nar" => matches!(e, E::UnknownType { .. }),
        other => panic!("no expectation recorded for bad/{other}; add one"),
    }
}

#[test]
fn bad_archives_are_refused_and_leave_nothing() {
    let bad = nar_dir().join("bad");
    let index = read_json(&bad.join("index.json"));
    let index: BTreeMap<String, serde_json::Value> =
        index.as_object().unwrap().clone().into_iter().collect();
    assert!(index.len() >= 14);
    for (name, why) in &index {
        let bytes = fs::read(bad.join(name)).unwrap();

        match nar::copy(&bytes[..], Vec::new()) {
            Ok(_) => panic!("{name} ({why}) was accepted by copy"),
            Err(CopyError::Read(e)) => {
                assert!(
                    refused_for_the_right_reason(name, &e),
                    "{name} ({why}): wrong error: {e}"
                );
                assert!(
                    e.to_string().contains("at byte "),
                    "{name}: no offset in '{e}'"
                );
            }
            Err(e) => panic!("{name}: not a read error: {e}"),
        }

        // Restore into parent/out beside a sentinel; the sandbox is the
        // temporary directory around parent.
        let sandbox = tempfile::tempdir().unwrap();
        let parent = sandbox.path().join("parent");
        fs::create_dir(&parent).unwrap();
        fs::write(parent.join("sentinel"), b"keep").unwrap();
        let before = listing(sandbox.path());
        let target = parent.join("out");
        match nar::unpack(&bytes[..], &target) {
            Ok(()) => panic!("{name} ({why}) was restored"),
            Err(UnpackError::Read(e)) => {
                assert!(
                    refused_for_the_right_reason(name, &e),
                    "{name} ({why}): wrong error: {e}"
                )
            }
            Err(e) => panic!("{name}: unexpected error: {e}"),
        }
        let after = listing(sandbox.path());
        assert_eq!(before, after, "{name}: restore left something behind");
        assert!(
            after.iter().all(|(_, is_link)| !is_link),
            "{name}: a symlink was created"
        );
        assert_eq!(fs::read(parent.join("sentinel")).unwrap(), b"keep");

        // Same with an existing empty target directory: it stays, empty.
        fs::create_dir(&target).unwrap();
        assert!(
            nar::unpack(&bytes[..], &target).is_err(),
            "{name}: restored into empty dir"
        );
        assert_eq!(
            fs::read_dir(&target).unwrap().count(),
            0,
            "{name}: left files in the target"
        );
        let mut with_target = before.clone();
        with_target.push((PathBuf::from("parent/out"), false));
        with_target.sort();
        assert_eq!(
            listing(sandbox.path()),
            with_target,
            "{name}: wrote outside the target"
        );
    }
}
