//! `.narinfo` files of binary caches, read and written exactly as Nix 2.8
//! does. (`nix-cache-info` is in [`crate::cache_info`], the `CA` field's
//! content addresses in [`crate::content_address`]; both are re-exported
//! here.)
//!
//! A narinfo is a list of `Field: value` lines, each ending in `\n`. Nix 2.8
//! writes the fields in this order:
//!
//! ```text
//! StorePath: /nix/store/<hash>-<name>
//! URL: nar/<filehash>.nar.xz
//! Compression: xz
//! FileHash: sha256:<base32>
//! FileSize: <decimal>
//! NarHash: sha256:<base32>
//! NarSize: <decimal>
//! References: <base name> <base name> ...     (sorted, may be empty)
//! Deriver: <base name>                        (only when known)
//! System: <system>                            (only when non-empty)
//! Sig: <name>:<base64>                        (one per signature, sorted)
//! CA: <content address>                       (only for content-addressed paths)
//! ```
//!
//! Parsing follows Nix: unknown fields are ignored; a missing `Compression`
//! means `bzip2`; `Deriver: unknown-deriver` means no deriver; a repeated
//! `Sig` adds a signature; a repeated `References` (after a non-empty one) or
//! `CA` is refused; any other repeated field takes the last value. The file
//! is refused without `StorePath`, `NarHash`, a non-empty `URL` or a non-zero
//! `NarSize`. Hashes may be in any encoding Nix accepts but are written in
//! Nix base32, so only Nix-written files round-trip byte for byte (which is
//! all Nix itself promises). Kiln is stricter than Nix in one respect: every
//! line must be `Field: value` (Nix misreads other lines in odd ways).

use std::collections::BTreeSet;

use thiserror::Error;

use crate::hash::{Hash, HashAlgo, HashError};
use crate::signing::{self, SecretKey, SigningError, TrustedKeys};
use crate::store_path::{self, FileIngestionMethod, StorePath, StorePathError};

pub use crate::cache_info::NixCacheInfo;
pub use crate::content_address::ContentAddress;

/// Why a narinfo or `nix-cache-info` file was refused, or a narinfo cannot
/// be written. `whence` is the name given to the parser (a file or URL).
#[derive(Debug, Error)]
pub enum NarInfoError {
    /// A line is not `Field: value`.
    #[error(
        "NAR info file '{whence}' is corrupt: line {line} is not of the form '<field>: <value>'"
    )]
    Syntax { whence: String, line: usize },
    /// The last line has no terminating newline.
    #[error("NAR info file '{whence}' is corrupt: line {line} does not end with a newline")]
    MissingNewline { whence: String, line: usize },
    /// A hash field does not hold a valid hash.
    #[error("NAR info file '{whence}' is corrupt: line {line}: bad {field} '{value}': {source}")]
    BadHash {
        whence: String,
        line: usize,
        field: &'static str,
        value: String,
        #[source]
        source: HashError,
    },
    /// A size field is not a decimal 64-bit unsigned number.
    #[error("NAR info file '{whence}' is corrupt: line {line}: bad {field} '{value}': not an unsigned 64-bit decimal number")]
    BadNumber {
        whence: String,
        line: usize,
        field: &'static str,
        value: String,
    },
    /// A path field does not hold a valid store path.
    #[error("NAR info file '{whence}' is corrupt: line {line}: bad {field} '{value}': {source}")]
    BadStorePath {
        whence: String,
        line: usize,
        field: &'static str,
        value: String,
        #[source]
        source: StorePathError,
    },
    /// The `CA` field is not a valid content address.
    #[error("NAR info file '{whence}' is corrupt: line {line}: bad CA '{value}': {reason}")]
    BadContentAddress {
        whence: String,
        line: usize,
        value: String,
        reason: String,
    },
    /// A field Nix refuses to see twice (`References`, `CA`) is repeated.
    #[error("NAR info file '{whence}' is corrupt: line {line}: extra {field}")]
    Duplicate {
        whence: String,
        line: usize,
        field: &'static str,
    },
    /// A required field is absent (or, for `URL`, empty).
    #[error("NAR info file '{whence}' is corrupt: {field} missing")]
    Missing { whence: String, field: &'static str },
    /// `NarSize` is absent or zero.
    #[error("NAR info file '{whence}' is corrupt: NarSize missing or zero")]
    MissingNarSize { whence: String },
    /// A narinfo cannot be written because a field would break the format.
    #[error("cannot write NAR info for '{path}': {field} {reason}")]
    Unwritable {
        path: String,
        field: &'static str,
        reason: &'static str,
    },
    /// A `nix-cache-info` field is malformed.
    #[error("nix-cache-info '{whence}' is corrupt: line {line}: bad {field} '{value}'")]
    BadCacheInfo {
        whence: String,
        line: usize,
        field: &'static str,
        value: String,
    },
    /// Fingerprinting or signing failed.
    #[error(transparent)]
    Signing(#[from] SigningError),
}

/// One `.narinfo` file: where a store path's NAR is in a binary cache, and
/// the path's metadata and signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// `StorePath`: the store path described.
    pub store_path: StorePath,
    /// `URL`: where the (compressed) NAR is, relative to the cache root.
    pub url: String,
    /// `Compression`: `none`, `xz`, `zstd`, `bzip2`, `br`, … (Nix's default
    /// when absent is `bzip2`).
    pub compression: String,
    /// `FileHash`: hash of the compressed file. Nix always writes it; when
    /// `None` Kiln omits the line.
    pub file_hash: Option<Hash>,
    /// `FileSize`: size of the compressed file (0 when unknown; always
    /// written, as Nix does).
    pub file_size: u64,
    /// `NarHash`: hash of the uncompressed NAR (sha256 in practice).
    pub nar_hash: Hash,
    /// `NarSize`: size of the uncompressed NAR; never zero.
    pub nar_size: u64,
    /// `References`: the store paths this one refers to, possibly itself.
    /// Written as base names sorted by base name.
    pub references: BTreeSet<StorePath>,
    /// `Deriver`: the `.drv` that built the path, if known.
    pub deriver: Option<StorePath>,
    /// `System`: written only when `Some` and non-empty.
    pub system: Option<String>,
    /// `Sig`: signatures `name:base64`, kept as Nix keeps them (a sorted
    /// set of unvalidated strings); see [`NarInfo::verify_signatures`].
    pub sigs: BTreeSet<String>,
    /// `CA`: the content address, for content-addressed paths.
    pub ca: Option<ContentAddress>,
}

// Names of the required fields, shared by parsing and its errors.
const F_STORE_PATH: &str = "StorePath";
const F_NAR_HASH: &str = "NarHash";
const F_URL: &str = "URL";
const F_NAR_SIZE: &str = "NarSize";

impl NarInfo {
    /// Parses a narinfo. `whence` names the file (or URL) in errors, which
    /// also give the 1-based line and the field involved.
    pub fn parse(text: &str, whence: &str) -> Result<Self, NarInfoError> {
        let w = || whence.to_string();
        let mut store_path = None;
        let mut url = String::new();
        let mut compression = String::new();
        let mut file_hash = None;
        let mut file_size = 0u64;
        let mut nar_hash = None;
        let mut nar_size = 0u64;
        let mut references = BTreeSet::new();
        let mut deriver = None;
        let mut system = None;
        let mut sigs = BTreeSet::new();
        let mut ca: Option<ContentAddress> = None;

        for (idx, (key, value)) in fields(text, whence)?.into_iter().enumerate() {
            let line = idx + 1;
            let hash = |field: &'static str| {
                Hash::parse_any_prefixed(value).map_err(|source| NarInfoError::BadHash {
                    whence: w(),
                    line,
                    field,
                    value: value.to_string(),
                    source,
                })
            };
            let number = |field: &'static str| {
                parse_u64(value).ok_or_else(|| NarInfoError::BadNumber {
                    whence: w(),
                    line,
                    field,
                    value: value.to_string(),
                })
            };
            let path = |field: &'static str, v: &str, absolute: bool| {
                let parsed = if absolute {
                    StorePath::from_absolute_path(v)
                } else {
                    StorePath::from_base_name(v)
                };
                parsed.map_err(|source| NarInfoError::BadStorePath {
                    whence: w(),
                    line,
                    field,
                    value: v.to_string(),
                    source,
                })
            };
            match key {
                "StorePath" => store_path = Some(path(F_STORE_PATH, value, true)?),
                "URL" => url = value.to_string(),
                "Compression" => compression = value.to_string(),
                "FileHash" => file_hash = Some(hash("FileHash")?),
                "FileSize" => file_size = number("FileSize")?,
                "NarHash" => nar_hash = Some(hash(F_NAR_HASH)?),
                "NarSize" => nar_size = number(F_NAR_SIZE)?,
                "References" => {
                    if !references.is_empty() {
                        return Err(NarInfoError::Duplicate {
                            whence: w(),
                            line,
                            field: "References",
                        });
                    }
                    for r in value.split(' ').filter(|r| !r.is_empty()) {
                        references.insert(path("References", r, false)?);
                    }
                }
                "Deriver" => {
                    deriver = if value == "unknown-deriver" {
                        None
                    } else {
                        Some(path("Deriver", value, false)?)
                    }
                }
                "System" => system = Some(value.to_string()).filter(|s| !s.is_empty()),
                "Sig" => {
                    sigs.insert(value.to_string());
                }
                "CA" => {
                    if ca.is_some() {
                        return Err(NarInfoError::Duplicate {
                            whence: w(),
                            line,
                            field: "CA",
                        });
                    }
                    if !value.is_empty() {
                        let parsed = ContentAddress::parse(value).map_err(|reason| {
                            NarInfoError::BadContentAddress {
                                whence: w(),
                                line,
                                value: value.to_string(),
                                reason,
                            }
                        })?;
                        ca = Some(parsed);
                    }
                }
                _ => {} // Nix ignores fields it does not know.
            }
        }

        let missing = |field| NarInfoError::Missing { whence: w(), field };
        let store_path = store_path.ok_or_else(|| missing(F_STORE_PATH))?;
        let nar_hash = nar_hash.ok_or_else(|| missing(F_NAR_HASH))?;
        if url.is_empty() {
            return Err(missing(F_URL));
        }
        if nar_size == 0 {
            return Err(NarInfoError::MissingNarSize { whence: w() });
        }
        if compression.is_empty() {
            compression = "bzip2".to_string();
        }
        Ok(NarInfo {
            store_path,
            url,
            compression,
            file_hash,
            file_size,
            nar_hash,
            nar_size,
            references,
            deriver,
            system,
            sigs,
            ca,
        })
    }

    /// Writes the narinfo exactly as Nix 2.8's `NarInfo::to_string` does.
    ///
    /// Fails (instead of writing something unparseable or ambiguous) when a
    /// text field contains a newline, `URL` or `Compression` is empty, or
    /// `NarSize` is zero.
    pub fn to_narinfo_string(&self) -> Result<String, NarInfoError> {
        let bad = |field, reason| NarInfoError::Unwritable {
            path: self.store_path.to_absolute_path(),
            field,
            reason,
        };
        let no_newline = |field, v: &str| {
            if v.contains('\n') {
                Err(bad(field, "contains a newline"))
            } else {
                Ok(())
            }
        };
        no_newline("URL", &self.url)?;
        no_newline("Compression", &self.compression)?;
        if let Some(s) = &self.system {
            no_newline("System", s)?;
        }
        for s in &self.sigs {
            no_newline("Sig", s)?;
        }
        if self.url.is_empty() {
            return Err(bad("URL", "is empty"));
        }
        if self.compression.is_empty() {
            return Err(bad("Compression", "is empty"));
        }
        if self.nar_size == 0 {
            return Err(bad("NarSize", "is zero"));
        }

        let mut out = String::with_capacity(512);
        out.push_str(&format!(
            "StorePath: {}\n",
            self.store_path.to_absolute_path()
        ));
        out.push_str(&format!("URL: {}\n", self.url));
        out.push_str(&format!("Compression: {}\n", self.compression));
        if let Some(h) = &self.file_hash {
            out.push_str(&format!("FileHash: {}\n", h.to_nix_base32_prefixed()));
        }
        out.push_str(&format!("FileSize: {}\n", self.file_size));
        out.push_str(&format!(
            "NarHash: {}\n",
            self.nar_hash.to_nix_base32_prefixed()
        ));
        out.push_str(&format!("NarSize: {}\n", self.nar_size));
        out.push_str(&format!(
            "References: {}\n",
            self.reference_base_names().join(" ")
        ));
        if let Some(d) = &self.deriver {
            out.push_str(&format!("Deriver: {}\n", d.base_name()));
        }
        if let Some(s) = self.system.as_deref().filter(|s| !s.is_empty()) {
            out.push_str(&format!("System: {s}\n"));
        }
        for s in &self.sigs {
            out.push_str(&format!("Sig: {s}\n"));
        }
        if let Some(ca) = &self.ca {
            out.push_str(&format!("CA: {ca}\n"));
        }
        Ok(out)
    }

    /// The references' base names, in Nix's order (that of [`StorePath`]'s
    /// `Ord`, which is the order of the printed names).
    pub fn reference_base_names(&self) -> Vec<String> {
        self.references.iter().map(StorePath::base_name).collect()
    }

    /// The string signatures are made over (see [`signing::fingerprint`]).
    pub fn fingerprint(&self) -> Result<String, NarInfoError> {
        Ok(signing::fingerprint(
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )?)
    }

    /// Signs the fingerprint with `key` and adds the signature to `sigs`
    /// (a no-op if that exact signature is already there). Returns the
    /// signature.
    pub fn sign(&mut self, key: &SecretKey) -> Result<String, NarInfoError> {
        let sig = key.sign(self.fingerprint()?.as_bytes());
        self.sigs.insert(sig.clone());
        Ok(sig)
    }

    /// How many of `sigs` are valid signatures by `trusted` keys. Unlike
    /// Nix's `checkSignatures` this does not treat content-addressed paths
    /// as trusted; callers wanting Nix's rule also accept
    /// [`NarInfo::is_content_addressed`] paths.
    pub fn verify_signatures(&self, trusted: &TrustedKeys) -> Result<usize, NarInfoError> {
        let fp = self.fingerprint()?;
        Ok(trusted.count_valid(fp.as_bytes(), self.sigs.iter().map(String::as_str)))
    }

    /// True when `CA` is set and really yields `store_path` (with these
    /// references), as Nix's `isContentAddressed` checks: such a path needs
    /// no signature, since its name proves its content.
    pub fn is_content_addressed(&self) -> bool {
        let name = self.store_path.name();
        let computed = match &self.ca {
            None => return false,
            Some(ContentAddress::Text(hash)) => {
                store_path::make_text_path(name, hash, &self.references)
            }
            Some(ContentAddress::Fixed { method, hash }) => {
                let mut refs = self.references.clone();
                let self_ref = refs.remove(&self.store_path);
                if *method == FileIngestionMethod::Recursive && hash.algo() == HashAlgo::Sha256 {
                    store_path::make_source_path(name, hash, &refs, self_ref)
                } else if self_ref {
                    return false;
                } else {
                    store_path::make_fixed_output_path(name, *method, hash, &refs)
                }
            }
        };
        computed.is_ok_and(|p| p == self.store_path)
    }
}

/// Splits text into `(field, value)` pairs, one per `\n`-terminated line.
fn fields<'a>(text: &'a str, whence: &str) -> Result<Vec<(&'a str, &'a str)>, NarInfoError> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut line = 0;
    while !rest.is_empty() {
        line += 1;
        let (l, tail) = rest
            .split_once('\n')
            .ok_or_else(|| NarInfoError::MissingNewline {
                whence: whence.to_string(),
                line,
            })?;
        let kv = l.split_once(": ").ok_or_else(|| NarInfoError::Syntax {
            whence: whence.to_string(),
            line,
        })?;
        out.push(kv);
        rest = tail;
    }
    Ok(out)
}

/// Parses a decimal `u64` as Nix does: digits with an optional leading `+`;
/// no sign, space or overflow otherwise.
fn parse_u64(s: &str) -> Option<u64> {
    let digits = s.strip_prefix('+').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::PublicKey;
    use proptest::prelude::*;

    // Written by Nix 2.8 (`nix copy --to file://…`), signed by two keys.
    const CA_TEXT: &str = "StorePath: /nix/store/9gz0m5kka3amb4g3263rlxx9j5518j5z-hello.txt
URL: nar/00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil.nar
Compression: none
FileHash: sha256:00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil
FileSize: 128
NarHash: sha256:00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil
NarSize: 128
References: 
Sig: kiln-test-1:GaY243gz03qXJ7y2GLuiV83CaodOhCFpFGaaBMNREyNL3+w71qkH9fUdcY1C8ktD6P/JzfYswwJRS7C3V49kDw==
Sig: other-key-2:ys0cZUHUKM07rQ16yXW//rIUPjwpA2E0zfIBGGFiA0ithkHMRIPciWN9Wkl5maXXfSgknkYNAdpgqZr7bGSDCg==
CA: text:sha256:0ix4jahrkll5zg01wandq78jw3ab30q4nscph67rniqg5x7r0j59
";
    const CA_FIXED_R: &str = "StorePath: /nix/store/hh0jwqmsbfc93z2prvb2x6qin9ir4mj1-d
URL: nar/1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k.nar
Compression: none
FileHash: sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k
FileSize: 288
NarHash: sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k
NarSize: 288
References: 
CA: fixed:r:sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k
";
    const CA_FIXED_FLAT: &str = "StorePath: /nix/store/38clv6a2grhiakmlcsvqjb7s19p4xkz8-flat.txt
URL: nar/1hz895vkrd9mfbmk89rj4i3ax1g1m3sbr4pqdwfa84bzbij5l27n.nar
Compression: none
FileHash: sha256:1hz895vkrd9mfbmk89rj4i3ax1g1m3sbr4pqdwfa84bzbij5l27n
FileSize: 120
NarHash: sha256:1hz895vkrd9mfbmk89rj4i3ax1g1m3sbr4pqdwfa84bzbij5l27n
NarSize: 120
References: 
CA: fixed:sha1:pplp5izjnj9j7sbk2hwv7dkbswqf61yj
";
    const WITH_REFS: &str = "StorePath: /nix/store/k2481v91rai5l0z77kxpwnll68mwn9p7-deep-chain
URL: nar/1q5aghk2niiivbbghni54vx7m1b8xcg59r0yzp4rr1bz7q86vj9q.nar.zst
Compression: zstd
FileHash: sha256:1q5aghk2niiivbbghni54vx7m1b8xcg59r0yzp4rr1bz7q86vj9q
FileSize: 175
NarHash: sha256:0avzkr8iswd3mfbv1prr3qr2nyb7s68nhknzxjaxksxfmqpd4iph
NarSize: 232
References: 1sy2203698px76lmf1hr7rfiijmdd40i-uses-multi-dev ylahbzyi238ixwhayzv301a66zf4bb61-refers-to-input
Deriver: hpmkvsh24m9cf8vpayni7bm4xwa0yjff-deep-chain.drv
Sig: kiln-test-1:5QkOLZoqCrB2liLyNUtfnd6eWjmtVEqOeVHBOmZYZMKSQXRbWIxCPRxuuGUbknpKubfA8zrxZjwfCtn6vp4NBQ==
";
    const SK1: &str = "kiln-test-1:t01lzHJ2BsQ/t3iSjAcf7uOYBk1kBcxJrPQG+gwFKrD6Gi4b6ann+qxX6YR3oa6EPB/HucEQPl7xBPtejCZ/2g==";
    const PK1: &str = "kiln-test-1:+houG+mp5/qsV+mEd6GuhDwfx7nBED5e8QT7Xowmf9o=";
    const PK2: &str = "other-key-2:r9UucY+HGPyQ3I43J8yMmGJHATaPH3o3elSA5dkILkw=";

    fn parse(text: &str) -> Result<NarInfo, NarInfoError> {
        NarInfo::parse(text, "test.narinfo")
    }

    #[test]
    fn nix_written_files_round_trip() {
        for text in [CA_TEXT, CA_FIXED_R, CA_FIXED_FLAT, WITH_REFS] {
            let info = parse(text).unwrap();
            assert_eq!(info.to_narinfo_string().unwrap(), text);
        }
        let info = parse(WITH_REFS).unwrap();
        assert_eq!(info.compression, "zstd");
        assert_eq!(info.file_size, 175);
        assert_eq!(info.nar_size, 232);
        assert_eq!(info.references.len(), 2);
        assert_eq!(info.deriver.as_ref().unwrap().name(), "deep-chain.drv");
        assert_eq!(info.ca, None);
        let ca = parse(CA_FIXED_R).unwrap().ca.unwrap();
        assert!(matches!(
            ca,
            ContentAddress::Fixed {
                method: FileIngestionMethod::Recursive,
                ..
            }
        ));
        assert_eq!(
            parse(CA_FIXED_FLAT).unwrap().ca.unwrap().hash().algo(),
            HashAlgo::Sha1
        );
    }

    #[test]
    fn signatures_verify_and_sign_again_identically() {
        let keys = TrustedKeys::parse_list(&format!("{PK1} {PK2}")).unwrap();
        assert_eq!(parse(CA_TEXT).unwrap().verify_signatures(&keys).unwrap(), 2);
        let only1: TrustedKeys = [PublicKey::parse(PK1).unwrap()].into_iter().collect();
        assert_eq!(
            parse(CA_TEXT).unwrap().verify_signatures(&only1).unwrap(),
            1
        );
        let mut info = parse(WITH_REFS).unwrap();
        assert_eq!(info.verify_signatures(&keys).unwrap(), 1);
        let before = info.sigs.clone();
        let sig = info.sign(&SecretKey::parse(SK1).unwrap()).unwrap();
        assert!(before.contains(&sig));
        assert_eq!(info.sigs, before);
        // Any change to what the fingerprint covers invalidates it.
        info.nar_size += 1;
        assert_eq!(info.verify_signatures(&keys).unwrap(), 0);
        let mut info = parse(WITH_REFS).unwrap();
        info.references.pop_first();
        assert_eq!(info.verify_signatures(&keys).unwrap(), 0);
    }

    #[test]
    fn content_addressed_paths_are_recognised() {
        assert!(parse(CA_TEXT).unwrap().is_content_addressed());
        assert!(parse(CA_FIXED_R).unwrap().is_content_addressed());
        assert!(parse(CA_FIXED_FLAT).unwrap().is_content_addressed());
        assert!(!parse(WITH_REFS).unwrap().is_content_addressed());
        // A CA claim that does not produce the path is not believed.
        let lie = CA_FIXED_FLAT.replace("fixed:sha1:pplp", "fixed:sha1:pplq");
        assert!(!parse(&lie).unwrap().is_content_addressed());
    }

    #[test]
    fn follows_nix_parsing_rules() {
        // Unknown fields are ignored, missing Compression means bzip2,
        // unknown-deriver means none, other repeats take the last value.
        let text = CA_FIXED_R
            .replace("Compression: none\n", "Foo: bar\n")
            .replace(
                "References: \n",
                "References: \nDeriver: unknown-deriver\nFileSize: +7\nFileSize: 9\n",
            );
        let info = parse(&text).unwrap();
        assert_eq!(info.compression, "bzip2");
        assert_eq!(info.deriver, None);
        assert_eq!(info.file_size, 9);
        // References may be unsorted and spaced oddly; they are written sorted.
        let shuffled = WITH_REFS.replace(
            "References: 1sy2203698px76lmf1hr7rfiijmdd40i-uses-multi-dev ylahbzyi238ixwhayzv301a66zf4bb61-refers-to-input",
            "References:  ylahbzyi238ixwhayzv301a66zf4bb61-refers-to-input 1sy2203698px76lmf1hr7rfiijmdd40i-uses-multi-dev ",
        );
        assert_eq!(
            parse(&shuffled).unwrap().to_narinfo_string().unwrap(),
            WITH_REFS
        );
        // Hashes in other encodings are accepted and written in base32.
        let sri = WITH_REFS.replace(
            "NarHash: sha256:0avzkr8iswd3mfbv1prr3qr2nyb7s68nhknzxjaxksxfmqpd4iph",
            &format!("NarHash: {}", parse(WITH_REFS).unwrap().nar_hash.to_sri()),
        );
        assert_eq!(parse(&sri).unwrap().to_narinfo_string().unwrap(), WITH_REFS);
        // Repeated Sig lines collapse; an empty References may be repeated.
        let sig_line = WITH_REFS.lines().find(|l| l.starts_with("Sig: ")).unwrap();
        let twice = format!("{WITH_REFS}{sig_line}\n");
        assert_eq!(parse(&twice).unwrap().sigs.len(), 1);
        let refs_twice = format!("{CA_TEXT}References: \nReferences: \n");
        assert_eq!(
            parse(&refs_twice).unwrap().to_narinfo_string().unwrap(),
            CA_TEXT
        );
        let with_system = format!("{WITH_REFS}System: x86_64-linux\n");
        let out = parse(&with_system).unwrap().to_narinfo_string().unwrap();
        assert!(out.contains(
            "Deriver: hpmkvsh24m9cf8vpayni7bm4xwa0yjff-deep-chain.drv\nSystem: x86_64-linux\nSig: "
        ));
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = err(&CA_TEXT.replace("NarSize: 128", "NarSize: 12x"));
        assert!(
            e.contains("line 7") && e.contains("NarSize") && e.contains("12x"),
            "{e}"
        );
        let e = err(&CA_TEXT.replace("NarSize: 128", "NarSize: -1"));
        assert!(e.contains("NarSize"), "{e}");
        let e = err(&CA_TEXT.replace("NarSize: 128", "NarSize: 18446744073709551616"));
        assert!(e.contains("NarSize"), "{e}");
        let e = err(&CA_TEXT.replace("FileHash: sha256:00z", "FileHash: sha256:e0z"));
        assert!(e.contains("line 4") && e.contains("FileHash"), "{e}");
        let e = err(&CA_TEXT.replace("NarHash: sha256:", "NarHash: "));
        assert!(e.contains("line 6") && e.contains("NarHash"), "{e}");
        let e = err(&CA_TEXT.replace("StorePath: /nix/store/", "StorePath: /gnu/store/"));
        assert!(e.contains("line 1") && e.contains("StorePath"), "{e}");
        let e = err(&WITH_REFS.replace("-uses-multi-dev", "-uses/multi-dev"));
        assert!(e.contains("line 8") && e.contains("References"), "{e}");
        let e = err(&WITH_REFS.replace("Deriver: hpmk", "Deriver: /nix/store/hpmk"));
        assert!(e.contains("line 9") && e.contains("Deriver"), "{e}");
        let e = err(&CA_TEXT.replace("CA: text:", "CA: txt:"));
        assert!(e.contains("line 11") && e.contains("CA"), "{e}");
        let e = err(&CA_TEXT.replace("CA: text:sha256:", "CA: text:sha1:"));
        assert!(e.contains("CA"), "{e}");
        let e = err(&format!(
            "{WITH_REFS}References: 1sy2203698px76lmf1hr7rfiijmdd40i-uses-multi-dev\n"
        ));
        assert!(
            e.contains("line 11") && e.contains("extra References"),
            "{e}"
        );
        let e = err(&format!(
            "{CA_TEXT}CA: text:sha256:0ix4jahrkll5zg01wandq78jw3ab30q4nscph67rniqg5x7r0j59\n"
        ));
        assert!(e.contains("line 12") && e.contains("extra CA"), "{e}");
        let e = err(&CA_TEXT.replace("URL: nar/", "URL:nar/"));
        assert!(e.contains("line 2") && e.contains("test.narinfo"), "{e}");
        let e = err(&CA_TEXT.replace("References: \n", "\n"));
        assert!(e.contains("line 8"), "{e}");
        let e = err(CA_TEXT.trim_end());
        assert!(e.contains("line 11") && e.contains("newline"), "{e}");
        for (field, needle) in [
            ("StorePath", "StorePath: "),
            ("NarHash", "NarHash: "),
            ("URL", "URL: "),
            ("NarSize", "NarSize: "),
        ] {
            let text: String = CA_TEXT
                .lines()
                .filter(|l| !l.starts_with(needle))
                .map(|l| format!("{l}\n"))
                .collect();
            let e = err(&text);
            assert!(e.contains(&format!("{field} missing")), "{e}");
        }
        let e = err(&CA_TEXT.replace("NarSize: 128", "NarSize: 0"));
        assert!(e.contains("NarSize missing or zero"), "{e}");
        let e = err(&CA_TEXT.replace(
            "URL: nar/00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil.nar",
            "URL: ",
        ));
        assert!(e.contains("URL missing"), "{e}");
        assert!(err("").contains("StorePath missing"));
    }

    #[test]
    fn refuses_to_write_broken_files() {
        let mut info = parse(WITH_REFS).unwrap();
        info.system = Some("x86_64-linux\nStorePath: /nix/store/evil".into());
        let e = info.to_narinfo_string().unwrap_err().to_string();
        assert!(e.contains("System") && e.contains("deep-chain"), "{e}");
        let mut info = parse(WITH_REFS).unwrap();
        info.sigs.insert("a:b\nc".into());
        assert!(info.to_narinfo_string().is_err());
        let mut info = parse(WITH_REFS).unwrap();
        info.nar_size = 0;
        assert!(info.to_narinfo_string().is_err());
        assert!(info.fingerprint().is_err());
        let mut info = parse(WITH_REFS).unwrap();
        info.url.clear();
        assert!(info.to_narinfo_string().is_err());
    }

    fn arb_store_path() -> impl Strategy<Value = StorePath> {
        (any::<[u8; 20]>(), "[a-zA-Z0-9+._?=-]{1,40}")
            .prop_map(|(digest, name)| StorePath::new(digest, &name).unwrap())
    }

    fn arb_hash() -> impl Strategy<Value = Hash> {
        any::<[u8; 32]>().prop_map(|d| Hash::new(HashAlgo::Sha256, &d))
    }

    fn arb_ca() -> impl Strategy<Value = Option<ContentAddress>> {
        prop_oneof![
            Just(None),
            arb_hash().prop_map(|h| Some(ContentAddress::Text(h))),
            (any::<bool>(), arb_hash(), any::<[u8; 20]>()).prop_map(|(r, h, d)| {
                let method = if r {
                    FileIngestionMethod::Recursive
                } else {
                    FileIngestionMethod::Flat
                };
                let hash = if r { h } else { Hash::new(HashAlgo::Sha1, &d) };
                Some(ContentAddress::Fixed { method, hash })
            }),
        ]
    }

    fn arb_narinfo() -> impl Strategy<Value = NarInfo> {
        (
            (
                arb_store_path(),
                "[!-~]{1,30}",
                "[a-z0-9]{1,8}",
                proptest::option::of(arb_hash()),
            ),
            (any::<u64>(), arb_hash(), 1..=u64::MAX),
            (
                proptest::collection::btree_set(arb_store_path(), 0..5),
                proptest::option::of(arb_store_path()),
                proptest::option::of("[ -~]{1,20}"),
            ),
            (
                proptest::collection::btree_set("[ -~]{0,40}", 0..4),
                arb_ca(),
            ),
        )
            .prop_map(
                |(
                    (store_path, url, compression, file_hash),
                    (file_size, nar_hash, nar_size),
                    (references, deriver, system),
                    (sigs, ca),
                )| NarInfo {
                    store_path,
                    url,
                    compression,
                    file_hash,
                    file_size,
                    nar_hash,
                    nar_size,
                    references,
                    deriver,
                    system,
                    sigs,
                    ca,
                },
            )
    }

    proptest! {
        #[test]
        fn narinfo_round_trips(info in arb_narinfo()) {
            let text = info.to_narinfo_string().unwrap();
            let back = NarInfo::parse(&text, "prop").unwrap();
            prop_assert_eq!(&back, &info);
            prop_assert_eq!(back.to_narinfo_string().unwrap(), text);
        }

        #[test]
        fn parser_never_panics(text in "[ -~\n]{0,300}") {
            let _ = NarInfo::parse(&text, "fuzz");
            let _ = NixCacheInfo::parse(&text, "fuzz");
        }

        #[test]
        fn cache_info_round_trips(store in "/[a-z/]{1,20}", w in proptest::option::of(any::<bool>()), p in proptest::option::of(any::<i32>())) {
            let info = NixCacheInfo { store_dir: store, want_mass_query: w, priority: p };
            prop_assert_eq!(NixCacheInfo::parse(&info.to_cache_info_string(), "prop").unwrap(), info);
        }
    }
}
