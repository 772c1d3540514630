//! Object keys of a Nix binary cache, validated before they reach a backend.
//!
//! Every name a client may ask for is checked here once: the gateway turns a
//! request path into a [`Key`] and refuses anything else, so `../`, overlong
//! names and hashes of the wrong length never touch a backend.

use std::fmt;

use thiserror::Error;

/// Length of a store path hash part (`<hash>.narinfo`).
pub const STORE_HASH_LEN: usize = 32;
/// Length of a Nix base32 sha256 (`nar/<filehash>.nar…`).
pub const FILE_HASH_LEN: usize = 52;
/// Longest store path name Nix accepts.
const MAX_NAME_LEN: usize = 211;

/// Why a key was refused.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum KeyError {
    /// The key is not one of the forms a binary cache holds.
    #[error("'{key}' is not a binary cache key: {reason}")]
    Invalid {
        /// The refused key (shortened when very long).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// What a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// `nix-cache-info`.
    CacheInfo,
    /// `<hash>.narinfo`.
    NarInfo,
    /// `<hash>.ls`, a NAR listing.
    Listing,
    /// `nar/<filehash>.nar[.xz|.zst]`.
    Nar,
    /// `log/<drv>`.
    Log,
}

/// A validated object key relative to the cache root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

fn invalid(key: &str, reason: &'static str) -> KeyError {
    let mut shown: String = key.chars().take(120).collect();
    if shown.len() < key.len() {
        shown.push('…');
    }
    KeyError::Invalid { key: shown, reason }
}

fn is_nixbase32(s: &str) -> bool {
    kiln_nix::nixbase32::is_valid_str(s.as_bytes())
}

/// Checks a store path base name `<hash>-<name>` the way Nix does.
pub fn is_valid_store_base_name(s: &str) -> bool {
    if s.len() < STORE_HASH_LEN + 2 || !s.is_char_boundary(STORE_HASH_LEN) {
        return false;
    }
    let (hash, rest) = s.split_at(STORE_HASH_LEN);
    let Some(name) = rest.strip_prefix('-') else {
        return false;
    };
    is_nixbase32(hash)
        && !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
}

impl Key {
    /// Parses and validates a key.
    pub fn parse(key: &str) -> Result<Key, KeyError> {
        Self::classify(key)?;
        Ok(Key(key.to_string()))
    }

    fn classify(key: &str) -> Result<KeyKind, KeyError> {
        if key.len() > 300 {
            return Err(invalid(key, "name too long"));
        }
        if key == "nix-cache-info" {
            return Ok(KeyKind::CacheInfo);
        }
        if let Some(rest) = key.strip_prefix("nar/") {
            let hash = rest
                .strip_suffix(".nar")
                .or_else(|| rest.strip_suffix(".nar.xz"))
                .or_else(|| rest.strip_suffix(".nar.zst"))
                .ok_or_else(|| invalid(key, "a NAR must end in .nar, .nar.xz or .nar.zst"))?;
            if hash.len() != FILE_HASH_LEN || !is_nixbase32(hash) {
                return Err(invalid(key, "a NAR file hash is 52 Nix base32 characters"));
            }
            return Ok(KeyKind::Nar);
        }
        if let Some(drv) = key.strip_prefix("log/") {
            if !drv.ends_with(".drv") || !is_valid_store_base_name(drv) {
                return Err(invalid(
                    key,
                    "a log is named after a derivation's store path",
                ));
            }
            return Ok(KeyKind::Log);
        }
        let (hash, kind) = if let Some(h) = key.strip_suffix(".narinfo") {
            (h, KeyKind::NarInfo)
        } else if let Some(h) = key.strip_suffix(".ls") {
            (h, KeyKind::Listing)
        } else {
            return Err(invalid(key, "unknown kind of object"));
        };
        if hash.len() != STORE_HASH_LEN || !is_nixbase32(hash) {
            return Err(invalid(
                key,
                "a store path hash is 32 Nix base32 characters",
            ));
        }
        Ok(kind)
    }

    /// The key of `nix-cache-info`.
    pub fn cache_info() -> Key {
        Key("nix-cache-info".into())
    }

    /// The narinfo key for a store path hash part.
    pub fn narinfo(hash_part: &str) -> Result<Key, KeyError> {
        Key::parse(&format!("{hash_part}.narinfo"))
    }

    /// The listing key for a store path hash part.
    pub fn listing(hash_part: &str) -> Result<Key, KeyError> {
        Key::parse(&format!("{hash_part}.ls"))
    }

    /// The log key for a derivation base name (`<hash>-<name>.drv`).
    pub fn log(drv_base_name: &str) -> Result<Key, KeyError> {
        Key::parse(&format!("log/{drv_base_name}"))
    }

    /// What this key names.
    pub fn kind(&self) -> KeyKind {
        // Only validated strings are ever stored, so this cannot fail.
        Self::classify(&self.0).unwrap_or(KeyKind::Log)
    }

    /// The key as a relative path string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The HTTP content type Nix's stores use for this key.
    pub fn content_type(&self) -> &'static str {
        self.kind().content_type()
    }
}

impl KeyKind {
    /// The HTTP content type Nix's stores use for keys of this kind.
    pub fn content_type(self) -> &'static str {
        match self {
            KeyKind::CacheInfo | KeyKind::NarInfo => "text/x-nix-narinfo",
            KeyKind::Listing => "application/json",
            KeyKind::Nar => "application/x-nix-nar",
            KeyKind::Log => "text/plain; charset=utf-8",
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H32: &str = "1sy2203698px76lmf1hr7rfiijmdd40i";
    const H52: &str = "08vchix2s03ss6ngy675xhi61airp1h8pfi838p0nhp4bsnyf7pg";

    #[test]
    fn accepts_cache_layout() {
        assert_eq!(
            Key::parse("nix-cache-info").unwrap().kind(),
            KeyKind::CacheInfo
        );
        assert_eq!(Key::narinfo(H32).unwrap().kind(), KeyKind::NarInfo);
        assert_eq!(Key::listing(H32).unwrap().kind(), KeyKind::Listing);
        for ext in [".nar", ".nar.xz", ".nar.zst"] {
            assert_eq!(
                Key::parse(&format!("nar/{H52}{ext}")).unwrap().kind(),
                KeyKind::Nar
            );
        }
        assert_eq!(
            Key::log(&format!("{H32}-hello.drv")).unwrap().kind(),
            KeyKind::Log
        );
    }

    #[test]
    fn refuses_hostile_names() {
        for bad in [
            "../etc/passwd",
            "nar/../../x.nar",
            &format!("{}.narinfo", &H32[..31]),
            &format!("{H32}e.narinfo"),
            "log/../../x.drv",
            &format!("log/{H32}-.drv"),
            &format!("nar/{H52}.nar.gz"),
            &format!("nar/{}.nar", "e".repeat(52)),
            &"a".repeat(400),
            "",
            "/nix-cache-info",
        ] {
            assert!(Key::parse(bad).is_err(), "{bad} accepted");
        }
    }

    proptest! {
        #[test]
        fn valid_keys_never_escape(s in "[a-z0-9./-]{0,80}") {
            if let Ok(k) = Key::parse(&s) {
                prop_assert!(k.as_str().split('/').all(|seg| !seg.is_empty() && seg != "." && seg != ".."));
            }
        }
    }
}
