//! Ed25519 signatures over store path fingerprints, as Nix 2.8's binary
//! caches use them.
//!
//! Key files are what `nix-store --generate-binary-cache-key NAME SK PK`
//! writes:
//! - a secret key file holds `NAME:BASE64` where the base64 decodes to the
//!   64-byte ed25519 keypair (32-byte seed then 32-byte public key);
//! - a public key file holds `NAME:BASE64` of the 32-byte public key.
//!
//! A signature is written `NAME:BASE64` of the 64-byte detached signature,
//! `NAME` being the name of the key that made it. Verification looks the key
//! up *by name* among a set of trusted keys ([`TrustedKeys`]), exactly like
//! Nix's `trusted-public-keys`.
//!
//! What gets signed is a store path's *fingerprint*
//! (see [`fingerprint`]):
//! `1;<store path>;<narHash as algo:base32>;<narSize>;<references>`, the
//! references being absolute store paths in sorted order, comma separated.
//!
//! Ed25519 is deterministic, so signing the same fingerprint with the same key
//! always gives the same signature, byte for byte.
//!
//! Error messages never contain secret key material.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::hash::Hash;
use crate::store_path::StorePath;

/// Length of a Nix secret key (seed and public key), in bytes.
pub const SECRET_KEY_BYTES: usize = 64;
/// Length of a public key, in bytes.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Length of a detached signature, in bytes.
pub const SIGNATURE_BYTES: usize = 64;

/// Which kind of `NAME:BASE64` string a [`SigningError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A secret key (`NAME:BASE64(64 bytes)`).
    Secret,
    /// A public key (`NAME:BASE64(32 bytes)`).
    Public,
    /// A signature (`NAME:BASE64(64 bytes)`).
    Signature,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Secret => "secret key",
            KeyKind::Public => "public key",
            KeyKind::Signature => "signature",
        })
    }
}

/// Why a key, key file or signature was refused.
#[derive(Debug, Error)]
pub enum SigningError {
    /// The string is not `NAME:BASE64` with both parts non-empty.
    #[error("{kind} is corrupt: expected '<name>:<base64>' with a non-empty name and key")]
    NotNameColonKey { kind: KeyKind },
    /// The part after the colon is not valid base64.
    #[error("{kind} '{name}' is corrupt: invalid base64 ({reason})")]
    BadBase64 {
        kind: KeyKind,
        name: String,
        reason: String,
    },
    /// The base64 decodes to the wrong number of bytes.
    #[error("{kind} '{name}' is not valid: it has {got} bytes, expected {expected}")]
    WrongLength {
        kind: KeyKind,
        name: String,
        got: usize,
        expected: usize,
    },
    /// The public half of a secret key does not belong to its seed.
    #[error("secret key '{name}' is not valid: its public half does not match its seed")]
    InconsistentSecretKey { name: String },
    /// The 32 bytes of a public key are not an ed25519 curve point.
    #[error("public key '{name}' is not a valid ed25519 point")]
    InvalidPublicKey { name: String },
    /// A key file could not be read.
    #[error("cannot read key file '{}': {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A key file is far larger than any key.
    #[error("key file '{}' is too large ({size} bytes) to be a key", path.display())]
    FileTooLarge { path: PathBuf, size: u64 },
    /// A key file was read but its content is bad.
    #[error("key file '{}': {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<SigningError>,
    },
    /// No trusted key has the name a signature carries.
    #[error("signature is by key '{name}', which is not trusted")]
    UntrustedKey { name: String },
    /// The signature does not verify with the trusted key of its name.
    #[error("signature by key '{name}' does not match the data")]
    BadSignature { name: String },
    /// A fingerprint needs the NAR size, and it is zero (unknown).
    #[error("cannot calculate the fingerprint of '{path}' because its NAR size is not known")]
    UnknownNarSize { path: String },
    /// The operating system's random number generator failed.
    #[error("cannot generate a key: random number generator failed: {0}")]
    Random(String),
}

/// Splits `NAME:BASE64` (at the first colon) and decodes the key part.
fn split_and_decode(s: &str, kind: KeyKind) -> Result<(String, Vec<u8>), SigningError> {
    let s = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let (name, key) = match s.split_once(':') {
        Some((n, k)) if !n.is_empty() && !k.is_empty() => (n, k),
        _ => return Err(SigningError::NotNameColonKey { kind }),
    };
    // Bound the allocation: nothing we accept is longer than 64 bytes.
    if key.len() > 4 * SECRET_KEY_BYTES.div_ceil(3) + 4 {
        return Err(SigningError::WrongLength {
            kind,
            name: name.to_string(),
            got: key.len() / 4 * 3,
            expected: expected_len(kind),
        });
    }
    let bytes = B64.decode(key).map_err(|e| SigningError::BadBase64 {
        kind,
        name: name.to_string(),
        reason: e.to_string(),
    })?;
    if bytes.len() != expected_len(kind) {
        return Err(SigningError::WrongLength {
            kind,
            name: name.to_string(),
            got: bytes.len(),
            expected: expected_len(kind),
        });
    }
    Ok((name.to_string(), bytes))
}

fn expected_len(kind: KeyKind) -> usize {
    match kind {
        KeyKind::Secret => SECRET_KEY_BYTES,
        KeyKind::Public => PUBLIC_KEY_BYTES,
        KeyKind::Signature => SIGNATURE_BYTES,
    }
}

fn read_key_file<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, SigningError>,
) -> Result<T, SigningError> {
    // Key files are about 100 bytes; refuse anything absurd before reading.
    let meta = std::fs::metadata(path).map_err(|source| SigningError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.len() > 4096 {
        return Err(SigningError::FileTooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| SigningError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|e| SigningError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// An ed25519 secret key with its Nix key name.
///
/// `Debug` does not print the key material.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    /// Parses the content of a Nix secret key file, `NAME:BASE64(64 bytes)`.
    /// Surrounding whitespace (a trailing newline) is ignored.
    pub fn parse(s: &str) -> Result<Self, SigningError> {
        let (name, bytes) = split_and_decode(s, KeyKind::Secret)?;
        let mut pair = [0u8; SECRET_KEY_BYTES];
        pair.copy_from_slice(&bytes);
        let key = SigningKey::from_keypair_bytes(&pair)
            .map_err(|_| SigningError::InconsistentSecretKey { name: name.clone() })?;
        pair.fill(0);
        Ok(SecretKey { name, key })
    }

    /// Reads and parses a secret key file; errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SigningError> {
        read_key_file(path.as_ref(), Self::parse)
    }

    /// Makes a new key named `name` from the operating system's randomness.
    pub fn generate(name: &str) -> Result<Self, SigningError> {
        if name.is_empty() || name.contains(':') {
            return Err(SigningError::NotNameColonKey {
                kind: KeyKind::Secret,
            });
        }
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| SigningError::Random(e.to_string()))?;
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(SecretKey {
            name: name.to_string(),
            key,
        })
    }

    /// The key's name (the part before the colon).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key, with the same name.
    pub fn to_public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The secret key file content, `NAME:BASE64(64 bytes)` (no newline), as
    /// `nix-store --generate-binary-cache-key` writes it.
    pub fn to_key_file_string(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.to_keypair_bytes()))
    }

    /// Signs `data` (normally a [`fingerprint`]) and returns the signature
    /// as Nix writes it in a `Sig:` line: `NAME:BASE64(64 bytes)`.
    pub fn sign(&self, data: &[u8]) -> String {
        let sig = self.key.sign(data);
        format!("{}:{}", self.name, B64.encode(sig.to_bytes()))
    }
}

/// An ed25519 public key with its Nix key name.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl fmt::Display for PublicKey {
    /// `NAME:BASE64(32 bytes)`, the public key file content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }
}

impl PublicKey {
    /// Parses `NAME:BASE64(32 bytes)`, the content of a public key file or
    /// one entry of `trusted-public-keys`. Surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<Self, SigningError> {
        let (name, bytes) = split_and_decode(s, KeyKind::Public)?;
        let mut raw = [0u8; PUBLIC_KEY_BYTES];
        raw.copy_from_slice(&bytes);
        let key = VerifyingKey::from_bytes(&raw)
            .map_err(|_| SigningError::InvalidPublicKey { name: name.clone() })?;
        Ok(PublicKey { name, key })
    }

    /// Reads and parses a public key file; errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SigningError> {
        read_key_file(path.as_ref(), Self::parse)
    }

    /// The key's name (the part before the colon).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks a parsed signature against this key, ignoring the signature's
    /// key name. Uses strict verification (no small-order keys or points,
    /// canonical scalars), as libsodium does.
    pub fn verify(&self, data: &[u8], sig: &Signature) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(&sig.bytes);
        self.key.verify_strict(data, &sig).is_ok()
    }
}

/// A parsed `NAME:BASE64(64 bytes)` signature.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    key_name: String,
    bytes: [u8; SIGNATURE_BYTES],
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl fmt::Display for Signature {
    /// `NAME:BASE64(64 bytes)`, as in a narinfo `Sig:` line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_name, B64.encode(self.bytes))
    }
}

impl Signature {
    /// Parses a `Sig:` value.
    pub fn parse(s: &str) -> Result<Self, SigningError> {
        let (key_name, raw) = split_and_decode(s, KeyKind::Signature)?;
        let mut bytes = [0u8; SIGNATURE_BYTES];
        bytes.copy_from_slice(&raw);
        Ok(Signature { key_name, bytes })
    }

    /// The name of the key that made this signature.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The 64 raw signature bytes.
    pub fn bytes(&self) -> &[u8; SIGNATURE_BYTES] {
        &self.bytes
    }
}

/// A set of trusted public keys, looked up by name (Nix's
/// `trusted-public-keys`). At most one key per name: the first one added
/// wins, as in Nix.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<String, PublicKey>,
}

impl TrustedKeys {
    /// An empty set: nothing verifies.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a whitespace-separated list of `NAME:BASE64` public keys, the
    /// syntax of the `trusted-public-keys` setting.
    pub fn parse_list(s: &str) -> Result<Self, SigningError> {
        let mut keys = Self::new();
        for word in s.split_ascii_whitespace() {
            keys.insert(PublicKey::parse(word)?);
        }
        Ok(keys)
    }

    /// Adds a key. Returns false (and keeps the existing key) when a key of
    /// that name is already trusted.
    pub fn insert(&mut self, key: PublicKey) -> bool {
        if self.keys.contains_key(&key.name) {
            return false;
        }
        self.keys.insert(key.name.clone(), key);
        true
    }

    /// The trusted key of that name, if any.
    pub fn get(&self, name: &str) -> Option<&PublicKey> {
        self.keys.get(name)
    }

    /// Number of trusted keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies a `NAME:BASE64` signature over `data` with the trusted key
    /// called `NAME`. Errors say whether the signature is malformed, its key
    /// untrusted, or it does not match.
    pub fn verify(&self, data: &[u8], sig: &str) -> Result<(), SigningError> {
        let sig = Signature::parse(sig)?;
        let key = self
            .keys
            .get(&sig.key_name)
            .ok_or_else(|| SigningError::UntrustedKey {
                name: sig.key_name.clone(),
            })?;
        if key.verify(data, &sig) {
            Ok(())
        } else {
            Err(SigningError::BadSignature { name: sig.key_name })
        }
    }

    /// How many of `sigs` are valid signatures of `data` by trusted keys
    /// (malformed and untrusted ones count as invalid), like Nix's
    /// `checkSignatures`.
    pub fn count_valid<'a>(&self, data: &[u8], sigs: impl IntoIterator<Item = &'a str>) -> usize {
        sigs.into_iter()
            .filter(|s| self.verify(data, s).is_ok())
            .count()
    }
}

impl FromIterator<PublicKey> for TrustedKeys {
    fn from_iter<I: IntoIterator<Item = PublicKey>>(iter: I) -> Self {
        let mut keys = Self::new();
        for k in iter {
            keys.insert(k);
        }
        keys
    }
}

/// The string Nix signs for a store path:
/// `1;<path>;<narHash as algo:base32>;<narSize>;<refs>` where `<refs>` are
/// the absolute reference paths, sorted and comma separated.
///
/// Fails when `nar_size` is zero, which Nix treats as "unknown".
pub fn fingerprint<'a>(
    path: &StorePath,
    nar_hash: &Hash,
    nar_size: u64,
    references: impl IntoIterator<Item = &'a StorePath>,
) -> Result<String, SigningError> {
    if nar_size == 0 {
        return Err(SigningError::UnknownNarSize {
            path: path.to_absolute_path(),
        });
    }
    let mut refs: Vec<String> = references
        .into_iter()
        .map(StorePath::to_absolute_path)
        .collect();
    refs.sort_unstable();
    refs.dedup();
    Ok(format!(
        "1;{};{};{};{}",
        path.to_absolute_path(),
        nar_hash.to_nix_base32_prefixed(),
        nar_size,
        refs.join(",")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashAlgo;

    // A throw-away pair made by `nix-store --generate-binary-cache-key`.
    const SK1: &str = "kiln-test-1:t01lzHJ2BsQ/t3iSjAcf7uOYBk1kBcxJrPQG+gwFKrD6Gi4b6ann+qxX6YR3oa6EPB/HucEQPl7xBPtejCZ/2g==";
    const PK1: &str = "kiln-test-1:+houG+mp5/qsV+mEd6GuhDwfx7nBED5e8QT7Xowmf9o=";
    const SK2: &str = "other-key-2:RSWt3S+g1776pGFGw9C+uUj8lVV1VKae40+orrZXPQWv1S5xj4cY/JDcjjcnzIyYYkcBNo8fejd6VIDl2QguTA==";
    const PK2: &str = "other-key-2:r9UucY+HGPyQ3I43J8yMmGJHATaPH3o3elSA5dkILkw=";

    // Fingerprints and the signatures Nix 2.8 made over them.
    const FP_NO_REFS: &str = "1;/nix/store/9gz0m5kka3amb4g3263rlxx9j5518j5z-hello.txt;\
        sha256:00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil;128;";
    const SIG1_NO_REFS: &str = "kiln-test-1:GaY243gz03qXJ7y2GLuiV83CaodOhCFpFGaaBMNREyNL3+w71qkH9fUdcY1C8ktD6P/JzfYswwJRS7C3V49kDw==";
    const SIG2_NO_REFS: &str = "other-key-2:ys0cZUHUKM07rQ16yXW//rIUPjwpA2E0zfIBGGFiA0ithkHMRIPciWN9Wkl5maXXfSgknkYNAdpgqZr7bGSDCg==";
    const FP_TWO_REFS: &str = "1;/nix/store/k2481v91rai5l0z77kxpwnll68mwn9p7-deep-chain;\
        sha256:0avzkr8iswd3mfbv1prr3qr2nyb7s68nhknzxjaxksxfmqpd4iph;232;\
        /nix/store/1sy2203698px76lmf1hr7rfiijmdd40i-uses-multi-dev,\
        /nix/store/ylahbzyi238ixwhayzv301a66zf4bb61-refers-to-input";
    const SIG1_TWO_REFS: &str = "kiln-test-1:5QkOLZoqCrB2liLyNUtfnd6eWjmtVEqOeVHBOmZYZMKSQXRbWIxCPRxuuGUbknpKubfA8zrxZjwfCtn6vp4NBQ==";

    fn trusted() -> TrustedKeys {
        TrustedKeys::parse_list(&format!("{PK1}\n {PK2} ")).unwrap()
    }

    #[test]
    fn key_files_round_trip_and_match() {
        let sk = SecretKey::parse(SK1).unwrap();
        assert_eq!(sk.name(), "kiln-test-1");
        assert_eq!(sk.to_key_file_string(), SK1);
        assert_eq!(sk.to_public().to_string(), PK1);
        assert_eq!(
            SecretKey::parse(SK2).unwrap().to_public(),
            PublicKey::parse(PK2).unwrap()
        );
        assert_eq!(
            PublicKey::parse(&format!("{PK1}\n")).unwrap().to_string(),
            PK1
        );
        assert!(
            !format!("{sk:?}").contains("t01lz"),
            "Debug must not leak the key"
        );
    }

    #[test]
    fn signs_like_nix() {
        let sk1 = SecretKey::parse(SK1).unwrap();
        let sk2 = SecretKey::parse(SK2).unwrap();
        assert_eq!(sk1.sign(FP_NO_REFS.as_bytes()), SIG1_NO_REFS);
        assert_eq!(sk2.sign(FP_NO_REFS.as_bytes()), SIG2_NO_REFS);
        assert_eq!(sk1.sign(FP_TWO_REFS.as_bytes()), SIG1_TWO_REFS);
    }

    #[test]
    fn verifies_by_key_name() {
        let keys = trusted();
        assert_eq!(keys.len(), 2);
        keys.verify(FP_NO_REFS.as_bytes(), SIG1_NO_REFS).unwrap();
        keys.verify(FP_NO_REFS.as_bytes(), SIG2_NO_REFS).unwrap();
        keys.verify(FP_TWO_REFS.as_bytes(), SIG1_TWO_REFS).unwrap();
        // Right key, wrong data.
        assert!(matches!(
            keys.verify(FP_TWO_REFS.as_bytes(), SIG1_NO_REFS),
            Err(SigningError::BadSignature { name }) if name == "kiln-test-1"
        ));
        // A valid signature relabelled with the other key's name fails.
        let relabelled = SIG1_NO_REFS.replace("kiln-test-1", "other-key-2");
        assert!(keys.verify(FP_NO_REFS.as_bytes(), &relabelled).is_err());
        // Only one key trusted: the other signature is untrusted, not bad.
        let only1: TrustedKeys = [PublicKey::parse(PK1).unwrap()].into_iter().collect();
        assert!(matches!(
            only1.verify(FP_NO_REFS.as_bytes(), SIG2_NO_REFS),
            Err(SigningError::UntrustedKey { name }) if name == "other-key-2"
        ));
        let sigs = [SIG1_NO_REFS, SIG2_NO_REFS, "garbage", "x:AAAA"];
        assert_eq!(keys.count_valid(FP_NO_REFS.as_bytes(), sigs), 2);
        assert_eq!(only1.count_valid(FP_NO_REFS.as_bytes(), sigs), 1);
        assert_eq!(
            TrustedKeys::new().count_valid(FP_NO_REFS.as_bytes(), sigs),
            0
        );
    }

    #[test]
    fn first_key_of_a_name_wins() {
        let mut keys = TrustedKeys::new();
        assert!(keys.insert(PublicKey::parse(PK1).unwrap()));
        let impostor = SecretKey::parse(SK2).unwrap().to_public().to_string();
        let impostor = PublicKey::parse(&impostor.replace("other-key-2", "kiln-test-1")).unwrap();
        assert!(!keys.insert(impostor));
        assert_eq!(keys.get("kiln-test-1").unwrap().to_string(), PK1);
    }

    #[test]
    fn refuses_bad_keys_and_signatures() {
        for s in ["", "no-colon", ":AAAA", "name:", "  \n"] {
            assert!(
                matches!(
                    SecretKey::parse(s),
                    Err(SigningError::NotNameColonKey { .. })
                ),
                "{s:?}"
            );
            assert!(
                matches!(
                    PublicKey::parse(s),
                    Err(SigningError::NotNameColonKey { .. })
                ),
                "{s:?}"
            );
            assert!(
                matches!(
                    Signature::parse(s),
                    Err(SigningError::NotNameColonKey { .. })
                ),
                "{s:?}"
            );
        }
        let e = SecretKey::parse("k:not*base64").unwrap_err();
        assert!(matches!(
            e,
            SigningError::BadBase64 {
                kind: KeyKind::Secret,
                ..
            }
        ));
        assert!(e.to_string().contains("secret key 'k'"), "{e}");
        // A public key where a secret key is expected, and vice versa.
        let e = SecretKey::parse(PK1).unwrap_err();
        assert!(
            matches!(
                e,
                SigningError::WrongLength {
                    got: 32,
                    expected: 64,
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(
            PublicKey::parse(SK1),
            Err(SigningError::WrongLength { got: 64, .. })
        ));
        // Very long input is refused without decoding it.
        let long = format!("k:{}", "A".repeat(100_000));
        assert!(matches!(
            Signature::parse(&long),
            Err(SigningError::WrongLength { .. })
        ));
        // A keypair whose public half belongs to another seed.
        let mut pair = SecretKey::parse(SK1).unwrap().key.to_keypair_bytes();
        pair[32..].copy_from_slice(
            SecretKey::parse(SK2)
                .unwrap()
                .key
                .verifying_key()
                .as_bytes(),
        );
        let e = SecretKey::parse(&format!("mixed:{}", B64.encode(pair))).unwrap_err();
        assert!(matches!(e, SigningError::InconsistentSecretKey { ref name } if name == "mixed"));
        assert!(!e.to_string().contains(&B64.encode(pair)[..20]));
        // 32 bytes that are not a curve point (y = 2 has no x).
        let mut not_point = [0u8; 32];
        not_point[0] = 2;
        let e = PublicKey::parse(&format!("np:{}", B64.encode(not_point))).unwrap_err();
        assert!(matches!(e, SigningError::InvalidPublicKey { .. }), "{e}");
    }

    #[test]
    fn key_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let sk_path = dir.path().join("secret.key");
        std::fs::write(&sk_path, format!("{SK1}\n")).unwrap();
        assert_eq!(
            SecretKey::from_file(&sk_path).unwrap().to_key_file_string(),
            SK1
        );
        let pk_path = dir.path().join("public.key");
        std::fs::write(&pk_path, "kiln-test-1:tooshort").unwrap();
        let e = PublicKey::from_file(&pk_path).unwrap_err();
        assert!(e.to_string().contains("public.key"), "{e}");
        let missing = dir.path().join("absent.key");
        let e = SecretKey::from_file(&missing).unwrap_err();
        assert!(matches!(e, SigningError::Io { .. }));
        assert!(e.to_string().contains("absent.key"), "{e}");
        let big = dir.path().join("big.key");
        std::fs::write(&big, vec![b'A'; 10_000]).unwrap();
        assert!(matches!(
            SecretKey::from_file(&big),
            Err(SigningError::FileTooLarge { size: 10_000, .. })
        ));
    }

    #[test]
    fn generated_keys_work() {
        let a = SecretKey::generate("gen-1").unwrap();
        let b = SecretKey::generate("gen-1").unwrap();
        assert_ne!(a.to_key_file_string(), b.to_key_file_string());
        let reparsed = SecretKey::parse(&a.to_key_file_string()).unwrap();
        let sig = reparsed.sign(b"data");
        assert!(sig.starts_with("gen-1:"));
        let keys: TrustedKeys = [a.to_public()].into_iter().collect();
        keys.verify(b"data", &sig).unwrap();
        assert!(keys.verify(b"data", &b.sign(b"data")).is_err());
        assert!(SecretKey::generate("").is_err());
        assert!(SecretKey::generate("a:b").is_err());
    }

    #[test]
    fn fingerprints_like_nix() {
        let p = |s: &str| StorePath::from_absolute_path(s).unwrap();
        let hash = |s: &str| Hash::parse_any(s, Some(HashAlgo::Sha256)).unwrap();
        let refs = [
            p("/nix/store/ylahbzyi238ixwhayzv301a66zf4bb61-refers-to-input"),
            p("/nix/store/1sy2203698px76lmf1hr7rfiijmdd40i-uses-multi-dev"),
        ];
        let fp = fingerprint(
            &p("/nix/store/k2481v91rai5l0z77kxpwnll68mwn9p7-deep-chain"),
            &hash("0avzkr8iswd3mfbv1prr3qr2nyb7s68nhknzxjaxksxfmqpd4iph"),
            232,
            &refs,
        )
        .unwrap();
        assert_eq!(fp, FP_TWO_REFS);
        let path = p("/nix/store/9gz0m5kka3amb4g3263rlxx9j5518j5z-hello.txt");
        let h = hash("00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil");
        assert_eq!(fingerprint(&path, &h, 128, []).unwrap(), FP_NO_REFS);
        let e = fingerprint(&path, &h, 0, []).unwrap_err();
        assert!(
            e.to_string()
                .contains("9gz0m5kka3amb4g3263rlxx9j5518j5z-hello.txt"),
            "{e}"
        );
    }
}
