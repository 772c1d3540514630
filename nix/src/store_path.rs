//! Store paths (`/nix/store/<hash>-<name>`) and the way Nix 2.8 computes
//! them (`makeStorePath` and its text, source, fixed-output and output
//! variants).
//!
//! A store path is 20 bytes of digest, printed as 32 Nix base32 characters,
//! a `-` and a name. Every path here is computed as
//! `compress(sha256("<type>:sha256:<hex>:/nix/store:<name>"), 20)`, where
//! `<type>` says what kind of object the path holds (see [`make_type`]).
//!
//! Name validation follows Nix 2.8 to the letter, as checked against the
//! `nix-bin` 2.8.0 oracle: names are 1 to 211 characters from
//! `[A-Za-z0-9+\-._?=]`. Nix 2.8 *accepts* names starting with `.` (even
//! `.` and `..`: `builtins.toFile ".foo" ""` works), so this module does too.
//! Parsing is stricter than Nix in one place only: the character after the
//! hash part must be `-` (Nix 2.8 does not look at it).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

use crate::hash::{compress_hash, Hash, HashAlgo};
use crate::nixbase32;

/// The only store directory Kiln supports.
pub const STORE_DIR: &str = "/nix/store";

/// Length of the printed hash part of a store path, in characters.
pub const HASH_PART_LEN: usize = 32;

/// Size of the digest behind the hash part, in bytes.
pub const DIGEST_LEN: usize = 20;

/// Longest name Nix accepts in a store path.
pub const MAX_NAME_LEN: usize = 211;

/// Why a store path could not be parsed or computed. Messages follow Nix's
/// wording and name the offending path.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StorePathError {
    #[error("path '{0}' is not in the Nix store")]
    NotInStore(String),
    #[error("'{0}' is too short to be a valid store path")]
    TooShort(String),
    #[error("store path '{path}' contains illegal base-32 character '{ch}'")]
    BadHashChar { path: String, ch: char },
    #[error("store path '{0}' lacks the '-' between its hash part and its name")]
    MissingDash(String),
    #[error("store path '{0}' has an empty name")]
    EmptyName(String),
    #[error("store path '{0}' has a name longer than {MAX_NAME_LEN} characters")]
    NameTooLong(String),
    #[error("store path '{path}' contains illegal character '{ch}'")]
    IllegalChar { path: String, ch: char },
    #[error("cannot compute the {what} path of '{name}' from a {algo} hash (sha256 is required)")]
    NotSha256 {
        what: &'static str,
        name: String,
        algo: HashAlgo,
    },
    #[error(
        "fixed-output path '{name}' cannot have references unless it is a recursive sha256 path"
    )]
    ReferencesNotAllowed { name: String },
}

/// How a file system object was turned into bytes to hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FileIngestionMethod {
    /// The hash is of the file's contents (a regular file only).
    Flat,
    /// The hash is of the NAR serialisation (`outputHashMode = "recursive"`).
    Recursive,
}

impl FileIngestionMethod {
    /// The prefix Nix puts before the algorithm name: `""` or `"r:"`.
    pub const fn prefix(self) -> &'static str {
        match self {
            FileIngestionMethod::Flat => "",
            FileIngestionMethod::Recursive => "r:",
        }
    }
}

/// A path in `/nix/store`: a 20-byte digest and a validated name.
///
/// Ordering is that of Nix (and of the printed paths): by hash part string,
/// then by name.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StorePath {
    digest: [u8; DIGEST_LEN],
    name: String,
}

impl StorePath {
    /// Builds a store path from its digest and name, validating the name.
    pub fn new(digest: [u8; DIGEST_LEN], name: &str) -> Result<Self, StorePathError> {
        let path = StorePath {
            digest,
            name: name.to_string(),
        };
        // The full base name is only needed for an error message.
        check_name(name, || path.base_name())?;
        Ok(path)
    }

    /// Parses `<hash>-<name>` (no directory).
    pub fn from_base_name(base: &str) -> Result<Self, StorePathError> {
        let bytes = base.as_bytes();
        if bytes.len() < HASH_PART_LEN + 1 {
            return Err(StorePathError::TooShort(base.to_string()));
        }
        if let Some(&c) = bytes[..HASH_PART_LEN]
            .iter()
            .find(|&&c| !nixbase32::is_valid_str(&[c]))
        {
            // Not necessarily a char boundary: report the whole char there.
            let ch = base
                .char_indices()
                .find(|(i, _)| *i <= HASH_PART_LEN && bytes[*i] == c)
                .map_or(c as char, |(_, ch)| ch);
            return Err(StorePathError::BadHashChar {
                path: base.to_string(),
                ch,
            });
        }
        if bytes[HASH_PART_LEN] != b'-' {
            return Err(StorePathError::MissingDash(base.to_string()));
        }
        // The first 33 bytes are ASCII, so slicing there is safe.
        let name = &base[HASH_PART_LEN + 1..];
        check_name(name, || base.to_string())?;
        let decoded =
            nixbase32::decode_exact(&bytes[..HASH_PART_LEN], DIGEST_LEN).map_err(|_| {
                StorePathError::BadHashChar {
                    path: base.to_string(),
                    ch: '?',
                }
            })?;
        let mut digest = [0u8; DIGEST_LEN];
        digest.copy_from_slice(&decoded);
        Ok(StorePath {
            digest,
            name: name.to_string(),
        })
    }

    /// Parses `/nix/store/<hash>-<name>` exactly (no trailing slash, no
    /// sub-path; see [`StorePath::from_absolute_path_prefix`] for those).
    pub fn from_absolute_path(path: &str) -> Result<Self, StorePathError> {
        let base = path
            .strip_prefix(STORE_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|base| !base.contains('/'))
            .ok_or_else(|| StorePathError::NotInStore(path.to_string()))?;
        Self::from_base_name(base)
    }

    /// Splits `/nix/store/<hash>-<name>[/rest]` into the store path and
    /// `/rest` (empty when the path is the store path itself).
    pub fn from_absolute_path_prefix(path: &str) -> Result<(Self, &str), StorePathError> {
        let after = path
            .strip_prefix(STORE_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(path.to_string()))?;
        let end = after.find('/').unwrap_or(after.len());
        Ok((Self::from_base_name(&after[..end])?, &after[end..]))
    }

    /// The 20-byte digest.
    pub fn digest(&self) -> &[u8; DIGEST_LEN] {
        &self.digest
    }

    /// The 32-character Nix base32 hash part.
    pub fn hash_part(&self) -> String {
        nixbase32::encode(&self.digest)
    }

    /// The name after the `-`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<hash>-<name>`, the file name in the store directory.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash_part(), self.name)
    }

    /// `/nix/store/<hash>-<name>`.
    pub fn to_absolute_path(&self) -> String {
        let mut s = String::with_capacity(STORE_DIR.len() + HASH_PART_LEN + 2 + self.name.len());
        self.write_absolute_path(&mut s);
        s
    }

    /// Appends `/nix/store/<hash>-<name>` to `out`.
    pub fn write_absolute_path(&self, out: &mut String) {
        out.push_str(STORE_DIR);
        out.push('/');
        out.push_str(&nixbase32::encode(&self.digest));
        out.push('-');
        out.push_str(&self.name);
    }
}

/// Validates a store path name the way Nix 2.8's `checkName` does; `path`
/// gives the whole path for the error message (only called on error).
fn check_name(name: &str, path: impl FnOnce() -> String) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName(path()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong(path()));
    }
    if let Some(ch) = name.chars().find(|&c| !is_name_char(c)) {
        return Err(StorePathError::IllegalChar { path: path(), ch });
    }
    Ok(())
}

/// True for the characters Nix allows in store path names.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_' | '?' | '=')
}

/// Checks a name on its own, as it would be checked inside a store path.
pub fn validate_name(name: &str) -> Result<(), StorePathError> {
    check_name(name, || format!("{}-{name}", "0".repeat(HASH_PART_LEN)))
}

impl Ord for StorePath {
    fn cmp(&self, other: &Self) -> Ordering {
        // Nix base32 prints the digest as a little-endian number, most
        // significant digit first, with an alphabet in ASCII order; so the
        // printed order is the order of the reversed bytes.
        self.digest
            .iter()
            .rev()
            .cmp(other.digest.iter().rev())
            .then_with(|| self.name.cmp(&other.name))
    }
}

impl PartialOrd for StorePath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}-{}", self.hash_part(), self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_absolute_path(s)
    }
}

impl Serialize for StorePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StorePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_absolute_path(&s).map_err(serde::de::Error::custom)
    }
}

/// Builds the type string of a path with references, as Nix's `makeType`:
/// `base`, then `:<absolute path>` per reference in order, then `:self`
/// when the object refers to itself. `text:/nix/store/…-a:/nix/store/…-b`.
pub fn make_type(base: &str, references: &BTreeSet<StorePath>, self_reference: bool) -> String {
    let mut s = String::with_capacity(base.len() + references.len() * 80 + 5);
    s.push_str(base);
    for r in references {
        s.push(':');
        r.write_absolute_path(&mut s);
    }
    if self_reference {
        s.push_str(":self");
    }
    s
}

/// Nix's `makeStorePath`: hashes `type:algo:<hex>:/nix/store:name` with
/// sha256 and compresses it to 20 bytes.
pub fn make_store_path(
    path_type: &str,
    hash: &Hash,
    name: &str,
) -> Result<StorePath, StorePathError> {
    let s = format!(
        "{path_type}:{}:{}:{STORE_DIR}:{name}",
        hash.algo(),
        hash.to_base16()
    );
    let h = Hash::of(HashAlgo::Sha256, s.as_bytes());
    let mut digest = [0u8; DIGEST_LEN];
    digest.copy_from_slice(&compress_hash(h.digest(), DIGEST_LEN));
    StorePath::new(digest, name)
}

fn require_sha256(what: &'static str, name: &str, hash: &Hash) -> Result<(), StorePathError> {
    if hash.algo() == HashAlgo::Sha256 {
        Ok(())
    } else {
        Err(StorePathError::NotSha256 {
            what,
            name: name.to_string(),
            algo: hash.algo(),
        })
    }
}

/// The path of a text object (`builtins.toFile`, `.drv` files) whose
/// contents have sha256 `content_sha256` and which refers to `references`.
pub fn make_text_path(
    name: &str,
    content_sha256: &Hash,
    references: &BTreeSet<StorePath>,
) -> Result<StorePath, StorePathError> {
    require_sha256("text", name, content_sha256)?;
    make_store_path(&make_type("text", references, false), content_sha256, name)
}

/// [`make_text_path`] for the given contents (Nix's `computeStorePathForText`).
pub fn compute_text_path(
    name: &str,
    contents: &[u8],
    references: &BTreeSet<StorePath>,
) -> Result<StorePath, StorePathError> {
    make_text_path(name, &Hash::of(HashAlgo::Sha256, contents), references)
}

/// The path of a source object added by NAR hash (`builtins.path`, path
/// interpolation): type `source`, references and optionally `self`.
pub fn make_source_path(
    name: &str,
    nar_sha256: &Hash,
    references: &BTreeSet<StorePath>,
    self_reference: bool,
) -> Result<StorePath, StorePathError> {
    require_sha256("source", name, nar_sha256)?;
    make_store_path(
        &make_type("source", references, self_reference),
        nar_sha256,
        name,
    )
}

/// Nix's `makeFixedOutputPath`. A recursive sha256 hash gives a `source`
/// path; anything else is `output:out` over
/// `sha256("fixed:out:[r:]<algo>:<hex>:")` and may not have references.
pub fn make_fixed_output_path(
    name: &str,
    method: FileIngestionMethod,
    hash: &Hash,
    references: &BTreeSet<StorePath>,
) -> Result<StorePath, StorePathError> {
    if method == FileIngestionMethod::Recursive && hash.algo() == HashAlgo::Sha256 {
        return make_source_path(name, hash, references, false);
    }
    if !references.is_empty() {
        return Err(StorePathError::ReferencesNotAllowed {
            name: name.to_string(),
        });
    }
    let inner = format!(
        "fixed:out:{}{}:{}:",
        method.prefix(),
        hash.algo(),
        hash.to_base16()
    );
    make_store_path(
        "output:out",
        &Hash::of(HashAlgo::Sha256, inner.as_bytes()),
        name,
    )
}

/// The name of output `output_name` of derivation `drv_name`: `drv_name`
/// for `out`, `drv_name-output_name` otherwise.
pub fn output_path_name(drv_name: &str, output_name: &str) -> String {
    if output_name == "out" {
        drv_name.to_string()
    } else {
        format!("{drv_name}-{output_name}")
    }
}

/// The path of an input-addressed output: type `output:<output_name>`, the
/// derivation's masked modulo hash, and [`output_path_name`].
pub fn make_output_path(
    drv_hash_modulo: &Hash,
    output_name: &str,
    drv_name: &str,
) -> Result<StorePath, StorePathError> {
    make_store_path(
        &format!("output:{output_name}"),
        drv_hash_modulo,
        &output_path_name(drv_name, output_name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sp(s: &str) -> StorePath {
        StorePath::from_absolute_path(s).unwrap()
    }

    #[test]
    fn parses_and_prints() {
        let s = "/nix/store/548a6rq39jc405w6j0l7m162vw46fsk3-dep.drv";
        let p = sp(s);
        assert_eq!(p.hash_part(), "548a6rq39jc405w6j0l7m162vw46fsk3");
        assert_eq!(p.name(), "dep.drv");
        assert_eq!(p.to_string(), s);
        assert_eq!(p.to_absolute_path(), s);
        assert_eq!(StorePath::from_base_name(&p.base_name()).unwrap(), p);
        assert_eq!(s.parse::<StorePath>().unwrap(), p);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<StorePath>(&json).unwrap(), p);
        let with_sub = format!("{s}/bin/sh");
        let (q, rest) = StorePath::from_absolute_path_prefix(&with_sub).unwrap();
        assert_eq!((q, rest), (p, "/bin/sh"));
    }

    #[test]
    fn rejects_bad_paths() {
        let h = "548a6rq39jc405w6j0l7m162vw46fsk3";
        let err = |s: &str| StorePath::from_absolute_path(s).unwrap_err();
        assert!(matches!(err("/nix/stor/x"), StorePathError::NotInStore(_)));
        assert!(matches!(
            err(&format!("/nix/store/{h}-a/b")),
            StorePathError::NotInStore(_)
        ));
        assert!(matches!(
            err(&format!("/nix/store/{h}")),
            StorePathError::TooShort(_)
        ));
        assert!(matches!(
            err(&format!("/nix/store/{h}-")),
            StorePathError::EmptyName(_)
        ));
        assert!(matches!(
            err(&format!("/nix/store/{h}Xa")),
            StorePathError::MissingDash(_)
        ));
        let e = err("/nix/store/e48a6rq39jc405w6j0l7m162vw46fsk3-a");
        assert_eq!(e.to_string(), "store path 'e48a6rq39jc405w6j0l7m162vw46fsk3-a' contains illegal base-32 character 'e'");
        assert!(matches!(
            err("/nix/store/é48a6rq39jc405w6j0l7m162vw46fsk-a"),
            StorePathError::BadHashChar { ch: 'é', .. }
        ));
        // The exact message Nix 2.8 prints for `builtins.toFile "a b" ""`.
        let e = err(&format!("/nix/store/{h}-a b"));
        assert_eq!(
            e.to_string(),
            format!("store path '{h}-a b' contains illegal character ' '")
        );
        assert!(matches!(
            err(&format!("/nix/store/{h}-a/")),
            StorePathError::NotInStore(_)
        ));
        let long = "a".repeat(MAX_NAME_LEN);
        assert!(StorePath::from_base_name(&format!("{h}-{long}")).is_ok());
        assert!(matches!(
            StorePath::from_base_name(&format!("{h}-{long}a")),
            Err(StorePathError::NameTooLong(_))
        ));
        assert!(validate_name("a.b-c_d+e?=f").is_ok());
        assert!(validate_name("ü").is_err());
    }

    #[test]
    fn accepts_leading_period_like_nix_2_8() {
        // `nix-instantiate --eval -E 'builtins.toFile ".foo" "x"'` with Nix 2.8.0.
        let p = compute_text_path(".foo", b"x", &BTreeSet::new()).unwrap();
        assert_eq!(
            p.to_string(),
            "/nix/store/q144f75swlv405pb69crqqkdwiza7nlk-.foo"
        );
        assert!(validate_name("..").is_ok());
    }

    #[test]
    fn text_paths_match_nix() {
        // eval/text.nix: builtins.toFile "script.sh" "echo hi > $out\n".
        let script = compute_text_path("script.sh", b"echo hi > $out\n", &BTreeSet::new()).unwrap();
        assert_eq!(
            script.to_string(),
            "/nix/store/f35acxm8ic638003611bkf494cq7108a-script.sh"
        );
        // fileWithRef = builtins.toFile "with-ref" "script is at ${script}\n".
        let contents = format!("script is at {script}\n");
        let refs = BTreeSet::from([script.clone()]);
        let with_ref = compute_text_path("with-ref", contents.as_bytes(), &refs).unwrap();
        assert_eq!(
            with_ref.to_string(),
            "/nix/store/1jkvj3qf8yyv32dd68b6ci4lz0z5i250-with-ref"
        );
        assert_eq!(
            make_type("text", &refs, false),
            "text:/nix/store/f35acxm8ic638003611bkf494cq7108a-script.sh"
        );
        assert_eq!(
            make_type("source", &refs, true),
            format!("source:{script}:self")
        );
        let md5 = Hash::of(HashAlgo::Md5, b"");
        assert!(matches!(
            make_text_path("x", &md5, &refs),
            Err(StorePathError::NotSha256 { .. })
        ));
    }

    #[test]
    fn fixed_output_paths_match_nix() {
        // eval/fixed.nix, from the .drv files Nix 2.8 wrote.
        let none = BTreeSet::new();
        let h =
            Hash::parse_any_prefixed("sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s")
                .unwrap();
        let p = make_fixed_output_path(
            "recursive-sha256",
            FileIngestionMethod::Recursive,
            &h,
            &none,
        )
        .unwrap();
        assert_eq!(
            p.to_string(),
            "/nix/store/clqickfgwlcwbwcphgs8s1jb94pb416g-recursive-sha256"
        );
        let sha1 = Hash::of(HashAlgo::Sha1, b"");
        let p =
            make_fixed_output_path("sha1-flat", FileIngestionMethod::Flat, &sha1, &none).unwrap();
        assert_eq!(
            p.to_string(),
            "/nix/store/kf12121c4b14fcyykdq1cz9xmp2pzvxm-sha1-flat"
        );
        let refs = BTreeSet::from([p]);
        assert!(matches!(
            make_fixed_output_path("x", FileIngestionMethod::Flat, &sha1, &refs),
            Err(StorePathError::ReferencesNotAllowed { .. })
        ));
    }

    #[test]
    fn output_names() {
        assert_eq!(output_path_name("foo", "out"), "foo");
        assert_eq!(output_path_name("foo", "dev"), "foo-dev");
        let h = Hash::of(HashAlgo::Sha256, b"");
        let long = "a".repeat(MAX_NAME_LEN);
        assert!(make_output_path(&h, "out", &long).is_ok());
        assert!(matches!(
            make_output_path(&h, "dev", &long),
            Err(StorePathError::NameTooLong(_))
        ));
    }

    proptest! {
        #[test]
        fn order_matches_printed_order(
            a in proptest::array::uniform20(any::<u8>()),
            b in proptest::array::uniform20(any::<u8>()),
            na in "[a-z]{1,3}", nb in "[a-z]{1,3}",
        ) {
            let pa = StorePath::new(a, &na).unwrap();
            let pb = StorePath::new(b, &nb).unwrap();
            prop_assert_eq!(pa.cmp(&pb), pa.base_name().cmp(&pb.base_name()));
            prop_assert_eq!(StorePath::from_base_name(&pa.base_name()).unwrap(), pa);
        }
    }
}
