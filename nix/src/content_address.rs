//! Content addresses (the narinfo `CA` field): how a content-addressed
//! store path was hashed, parsed and printed as Nix 2.8 does
//! (`text:sha256:<base32>`, `fixed:[r:]<algo>:<base32>`).

use std::fmt;

use crate::hash::{Hash, HashAlgo};
use crate::store_path::FileIngestionMethod;

/// How a content-addressed path was hashed (the narinfo `CA` field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentAddress {
    /// `text:sha256:<base32>`: a text file added with `builtins.toFile` or
    /// a `.drv`; always sha256.
    Text(Hash),
    /// `fixed:[r:]<algo>:<base32>`: a fixed-output path, hashed flat or
    /// (with `r:`) as a NAR.
    Fixed {
        method: FileIngestionMethod,
        hash: Hash,
    },
}

impl ContentAddress {
    /// Parses a content address the way Nix 2.8's `parseContentAddress`
    /// does; the digest may be base16, base32 or base64 but carries no
    /// algorithm of its own.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (prefix, rest) = s
            .split_once(':')
            .ok_or("not of the form '<prefix>:<rest>'")?;
        let split_algo = |rest: &str| -> Result<(HashAlgo, String), String> {
            let (algo, digest) = rest
                .split_once(':')
                .ok_or("hash not of the form '<algo>:<hash>'")?;
            let algo = HashAlgo::from_name(algo).map_err(|e| e.to_string())?;
            Ok((algo, digest.to_string()))
        };
        match prefix {
            "text" => {
                let (algo, digest) = split_algo(rest)?;
                if algo != HashAlgo::Sha256 {
                    return Err(format!("text content address must use sha256, not {algo}"));
                }
                let hash =
                    Hash::parse_non_sri_unprefixed(&digest, algo).map_err(|e| e.to_string())?;
                Ok(ContentAddress::Text(hash))
            }
            "fixed" => {
                let (method, rest) = match rest.strip_prefix("r:") {
                    Some(r) => (FileIngestionMethod::Recursive, r),
                    None => (FileIngestionMethod::Flat, rest),
                };
                let (algo, digest) = split_algo(rest)?;
                let hash =
                    Hash::parse_non_sri_unprefixed(&digest, algo).map_err(|e| e.to_string())?;
                Ok(ContentAddress::Fixed { method, hash })
            }
            other => Err(format!(
                "unknown prefix '{other}' (expected 'text' or 'fixed')"
            )),
        }
    }

    /// The hash inside.
    pub fn hash(&self) -> &Hash {
        match self {
            ContentAddress::Text(h) | ContentAddress::Fixed { hash: h, .. } => h,
        }
    }
}

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentAddress::Text(h) => write!(f, "text:{}", h.to_nix_base32_prefixed()),
            ContentAddress::Fixed { method, hash } => {
                write!(
                    f,
                    "fixed:{}{}",
                    method.prefix(),
                    hash.to_nix_base32_prefixed()
                )
            }
        }
    }
}
