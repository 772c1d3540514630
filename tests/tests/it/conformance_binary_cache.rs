//! Checks `kiln_nix::narinfo` and `kiln_nix::signing` against the binary
//! caches Nix 2.8 wrote in `../shared/conformance/binary-cache/`: every
//! narinfo re-serialises identically, its signature verifies and is
//! reproduced by signing again, and its NAR file decompresses to the
//! advertised NAR hash and size.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use kiln_nix::hash::{HashAlgo, HashingWriter};
use kiln_nix::narinfo::{NarInfo, NixCacheInfo};
use kiln_nix::signing::{PublicKey, SecretKey, TrustedKeys};
use kiln_nix::store_path::STORE_DIR;

/// The caches and the compression each uses.
const CACHES: [(&str, &str); 3] = [
    ("cache-zstd", "zstd"),
    ("cache-xz", "xz"),
    ("cache-none", "none"),
];

/// Number of store paths `nix copy` put in each cache (see the corpus).
const PATHS_PER_CACHE: usize = 9;

fn corpus() -> PathBuf {
    kiln_tests::shared_dir().join("conformance/binary-cache")
}

/// The metadata that must not depend on the compression used.
type PathFacts = (String, u64, Vec<String>, Option<String>, BTreeSet<String>);

fn facts(info: &NarInfo) -> PathFacts {
    (
        info.nar_hash.to_nix_base32_prefixed(),
        info.nar_size,
        info.reference_base_names(),
        info.deriver.as_ref().map(|d| d.base_name()),
        info.sigs.clone(),
    )
}

/// Resolves a narinfo `URL` inside the cache, refusing escapes.
fn nar_file(cache: &Path, url: &str) -> PathBuf {
    let rel = Path::new(url);
    assert!(
        rel.components().all(|c| matches!(c, Component::Normal(_))),
        "URL '{url}' leaves the cache directory"
    );
    cache.join(rel)
}

/// Streams `reader` into a sha256 hasher; returns (base32 hash, size).
fn hash_stream(mut reader: impl Read) -> io::Result<(String, u64)> {
    let mut writer = HashingWriter::new(io::sink(), HashAlgo::Sha256);
    io::copy(&mut reader, &mut writer)?;
    let (_, hash, size) = writer.finish();
    Ok((hash.to_nix_base32_prefixed(), size))
}

fn decompressor(compression: &str, file: File) -> Box<dyn Read> {
    let file = BufReader::new(file);
    match compression {
        "zstd" => Box::new(zstd::stream::read::Decoder::with_buffer(file).expect("zstd decoder")),
        "xz" => Box::new(xz2::read::XzDecoder::new(file)),
        "none" => Box::new(file),
        other => panic!("unexpected compression '{other}'"),
    }
}

/// Checks one cache; returns its store paths and their facts.
fn check_cache(
    dir: &Path,
    compression: &str,
    trusted: &TrustedKeys,
    secret: &SecretKey,
) -> BTreeMap<String, PathFacts> {
    let info_path = dir.join("nix-cache-info");
    let text = std::fs::read_to_string(&info_path).unwrap();
    let cache_info = NixCacheInfo::parse(&text, &info_path.display().to_string()).unwrap();
    assert_eq!(cache_info.store_dir, STORE_DIR);
    assert_eq!(cache_info.to_cache_info_string(), text);

    let mut narinfos: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .collect();
    narinfos.sort();

    let mut seen = BTreeMap::new();
    for path in &narinfos {
        let whence = path.display().to_string();
        let text = std::fs::read_to_string(path).unwrap();
        let info = NarInfo::parse(&text, &whence).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            info.to_narinfo_string().unwrap(),
            text,
            "{whence} does not round-trip"
        );
        assert_eq!(
            path.file_stem().unwrap().to_str().unwrap(),
            info.store_path.hash_part(),
            "{whence} is not named after its store path"
        );
        assert_eq!(info.compression, compression, "{whence}");

        // Signatures: each verifies, and signing again reproduces it.
        assert!(!info.sigs.is_empty(), "{whence} is unsigned");
        let fingerprint = info.fingerprint().unwrap();
        for sig in &info.sigs {
            trusted
                .verify(fingerprint.as_bytes(), sig)
                .unwrap_or_else(|e| panic!("{whence}: {e}"));
        }
        assert_eq!(info.verify_signatures(trusted).unwrap(), info.sigs.len());
        let mut resigned = info.clone();
        resigned.sigs.clear();
        let sig = resigned.sign(secret).unwrap();
        assert_eq!(
            resigned.sigs, info.sigs,
            "{whence}: signing again gave {sig}"
        );

        // The compressed file matches FileHash/FileSize ...
        let file = nar_file(dir, &info.url);
        let (file_hash, file_size) = hash_stream(File::open(&file).unwrap()).unwrap();
        assert_eq!(
            Some(file_hash),
            info.file_hash.as_ref().map(|h| h.to_nix_base32_prefixed()),
            "{whence}"
        );
        assert_eq!(file_size, info.file_size, "{whence}");
        // ... and decompresses to the NAR of NarHash/NarSize.
        let (nar_hash, nar_size) =
            hash_stream(decompressor(compression, File::open(&file).unwrap()))
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(nar_hash, info.nar_hash.to_nix_base32_prefixed(), "{whence}");
        assert_eq!(nar_size, info.nar_size, "{whence}");

        // The NAR listing is JSON describing the root.
        let ls = path.with_extension("ls");
        let listing: serde_json::Value = serde_json::from_slice(&std::fs::read(&ls).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", ls.display()));
        assert_eq!(listing["version"], 1, "{}", ls.display());
        assert!(listing["root"]["type"].is_string(), "{}", ls.display());

        seen.insert(info.store_path.base_name(), facts(&info));
    }

    // Every NAR file in the cache belongs to one of the narinfos.
    let urls: BTreeSet<PathBuf> = narinfos
        .iter()
        .map(|p| NarInfo::parse(&std::fs::read_to_string(p).unwrap(), "").unwrap())
        .map(|i| nar_file(dir, &i.url))
        .collect();
    let nars: BTreeSet<PathBuf> = std::fs::read_dir(dir.join("nar"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        nars,
        urls,
        "{}: NAR files and narinfo URLs differ",
        dir.display()
    );

    // `nix copy` copies closures: every reference is in the cache too.
    for (path, (_, _, refs, _, _)) in &seen {
        for r in refs {
            assert!(
                seen.contains_key(r),
                "{}: {path} refers to {r}, absent",
                dir.display()
            );
        }
    }
    seen
}

#[test]
fn nix_binary_caches_conform() {
    let root = corpus();
    let public = PublicKey::from_file(root.join("public.key")).unwrap();
    let secret = SecretKey::from_file(root.join("secret.key")).unwrap();
    assert_eq!(secret.to_public(), public);
    let trusted: TrustedKeys = [public].into_iter().collect();

    let mut total = 0;
    let mut all = Vec::new();
    for (name, compression) in CACHES {
        let seen = check_cache(&root.join(name), compression, &trusted, &secret);
        assert_eq!(seen.len(), PATHS_PER_CACHE, "{name}");
        total += seen.len();
        all.push(seen);
    }
    assert_eq!(total, CACHES.len() * PATHS_PER_CACHE);
    // Only the compression differs between the caches.
    assert_eq!(all[0], all[1]);
    assert_eq!(all[0], all[2]);
}

#[test]
fn signatures_from_another_key_are_not_trusted() {
    let root = corpus();
    let other = SecretKey::generate("kiln-test-1").unwrap().to_public();
    let trusted: TrustedKeys = [other].into_iter().collect();
    let path = root.join("cache-none/j4289si033mf295fnsq5d6sc0m31d0hv.narinfo");
    let info = NarInfo::parse(&std::fs::read_to_string(&path).unwrap(), "j4289si0").unwrap();
    assert_eq!(info.verify_signatures(&trusted).unwrap(), 0);
}
