//! Store derivations (`.drv` files) exactly as Nix 2.8 reads, writes and
//! hashes them.
//!
//! A [`Derivation`] is the parsed `Derive(...)` ATerm. The pieces:
//! - [`Derivation::parse_aterm`] / [`Derivation::to_aterm`]: the file format,
//!   with an exact round trip (the parser accepts only what Nix's writer
//!   can produce);
//! - [`hash_derivation_modulo`]: Nix's `hashDerivationModulo`, the hash that
//!   output paths and dependents' hashes are computed from;
//! - [`Derivation::fill_output_paths`]: what the evaluator calls when it
//!   instantiates a derivation, to compute and record every output path;
//! - [`Derivation::drv_path`]: where the `.drv` file goes in the store.
//!
//! Floating content-addressed derivations (`__contentAddressed`, an output
//! with a hash algorithm but no hash) are refused: Nix 2.8 only builds them
//! behind an experimental feature, and Kiln does not support them.

mod aterm;
mod hash_modulo;

pub use hash_modulo::{hash_derivation_modulo, DrvHashModulo};

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use thiserror::Error;

use crate::hash::{Hash, HashAlgo};
use crate::store_path::{
    make_fixed_output_path, make_output_path, make_text_path, FileIngestionMethod, StorePath,
    StorePathError,
};

/// Everything that can go wrong reading, hashing or completing a derivation.
/// Parse errors carry the byte offset in the ATerm where they were found.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DerivationError {
    #[error("derivation ATerm, byte {offset}: expected {expected}, found {found}")]
    Syntax {
        offset: usize,
        expected: String,
        found: String,
    },
    #[error("derivation ATerm, byte {offset}: invalid UTF-8")]
    BadUtf8 { offset: usize },
    #[error("derivation ATerm, byte {offset}: unknown escape '\\{ch}' (Nix only writes \\\" \\\\ \\n \\r \\t)")]
    BadEscape { offset: usize, ch: char },
    #[error(
        "derivation ATerm, byte {offset}: raw {ch:?} in {field}, which Nix always writes escaped"
    )]
    RawControlChar {
        offset: usize,
        ch: char,
        field: &'static str,
    },
    #[error("derivation ATerm, byte {offset}: backslash in {field}, which Nix writes unescaped")]
    BackslashInRawField { offset: usize, field: &'static str },
    #[error("derivation ATerm, byte {offset}: trailing data after the closing ')'")]
    TrailingData { offset: usize },
    #[error("derivation ATerm, byte {offset}: {what} '{key}' is duplicated or out of order (Nix writes them sorted)")]
    Unsorted {
        offset: usize,
        what: &'static str,
        key: String,
    },
    #[error("derivation ATerm, byte {offset}: bad {field}: {source}")]
    BadStorePath {
        offset: usize,
        field: &'static str,
        source: StorePathError,
    },
    #[error("derivation ATerm, byte {offset}: output '{output}': {reason}")]
    BadOutput {
        offset: usize,
        output: String,
        reason: String,
    },
    #[error("output '{output}' is floating content-addressed (__contentAddressed / ca-derivations), which Kiln does not support")]
    FloatingCa { output: String },
    #[error("derivation has no outputs")]
    NoOutputs,
    #[error("derivation mixes input-addressed, deferred and fixed-output outputs")]
    MixedOutputs,
    #[error(
        "a fixed-output derivation must have exactly one output, named 'out' (it has: {outputs})"
    )]
    BadFixedOutputs { outputs: String },
    #[error("input derivation '{0}' has no known hash (instantiate it first)")]
    UnknownInputDrv(StorePath),
    #[error("input derivation '{drv}' has no output '{output}'")]
    MissingInputOutput { drv: StorePath, output: String },
    #[error("computing {what} of derivation '{drv_name}': {source}")]
    Path {
        what: String,
        drv_name: String,
        source: StorePathError,
    },
}

/// The hash of a fixed-output derivation's output and how it is computed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FixedOutputHash {
    /// Flat file hash or NAR hash (`outputHashMode`).
    pub method: FileIngestionMethod,
    /// The expected hash (`outputHash`, `outputHashAlgo`).
    #[serde(with = "hash_serde")]
    pub hash: Hash,
}

impl FixedOutputHash {
    /// The `hashAlgo` field of the ATerm: `[r:]<algo>`.
    pub fn method_algo(&self) -> String {
        format!("{}{}", self.method.prefix(), self.hash.algo())
    }

    /// The output path of a fixed-output derivation named `drv_name`.
    pub fn output_path(&self, drv_name: &str) -> Result<StorePath, StorePathError> {
        make_fixed_output_path(drv_name, self.method, &self.hash, &BTreeSet::new())
    }
}

/// One output of a derivation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DerivationOutput {
    /// A path computed from the derivation's masked modulo hash.
    InputAddressed { path: StorePath },
    /// A path computed from the expected hash of the output.
    Fixed {
        path: StorePath,
        hash: FixedOutputHash,
    },
    /// An input-addressed output whose path is not computed yet (written as
    /// empty strings, as during hashing).
    Deferred,
}

impl DerivationOutput {
    /// A fixed output of the derivation named `drv_name`, path computed.
    pub fn fixed(drv_name: &str, hash: FixedOutputHash) -> Result<Self, DerivationError> {
        let path = hash
            .output_path(drv_name)
            .map_err(|source| DerivationError::Path {
                what: "the fixed output path".into(),
                drv_name: drv_name.into(),
                source,
            })?;
        Ok(DerivationOutput::Fixed { path, hash })
    }

    /// The output's path, unless it is deferred.
    pub fn path(&self) -> Option<&StorePath> {
        match self {
            DerivationOutput::InputAddressed { path } | DerivationOutput::Fixed { path, .. } => {
                Some(path)
            }
            DerivationOutput::Deferred => None,
        }
    }
}

/// Which kind of derivation the outputs make this (Nix's `DerivationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerivationKind {
    /// Every output is input-addressed.
    InputAddressed,
    /// Every output is deferred (paths not yet computed).
    Deferred,
    /// A single fixed output named `out`.
    FixedOutput,
}

/// A store derivation. Maps and sets are sorted the way Nix sorts them, so
/// [`Derivation::to_aterm`] writes them in Nix's order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Derivation {
    /// Output name → output.
    pub outputs: BTreeMap<String, DerivationOutput>,
    /// Input `.drv` path → the names of the outputs used.
    pub input_drvs: BTreeMap<StorePath, BTreeSet<String>>,
    /// Input sources (paths that are not outputs of a derivation).
    pub input_srcs: BTreeSet<StorePath>,
    /// The platform (`system`), e.g. `x86_64-linux`.
    pub system: String,
    /// The program to run.
    pub builder: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The builder's environment.
    pub env: BTreeMap<String, String>,
}

impl Derivation {
    /// Parses the contents of a `.drv` file; see the module docs for how
    /// strict this is.
    pub fn parse_aterm(bytes: &[u8]) -> Result<Self, DerivationError> {
        aterm::parse(bytes)
    }

    /// The `.drv` file contents, byte-identical to Nix's.
    pub fn to_aterm(&self) -> String {
        let mut out = Vec::with_capacity(1024);
        aterm::write(self, &mut out, false, None);
        // Every piece written is a `String` or ASCII, so this cannot fail;
        // fall back to a lossy copy rather than panicking.
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Streams the `.drv` file contents to `w`.
    pub fn write_aterm<W: io::Write>(&self, w: W) -> io::Result<()> {
        let mut sink = aterm::IoSink { w, err: None };
        aterm::write(self, &mut sink, false, None);
        sink.err.map_or(Ok(()), Err)
    }

    /// Classifies the derivation by its outputs, as Nix's `type()` does.
    pub fn kind(&self) -> Result<DerivationKind, DerivationError> {
        let (mut ia, mut fixed, mut deferred) = (0, 0, 0);
        for out in self.outputs.values() {
            match out {
                DerivationOutput::InputAddressed { .. } => ia += 1,
                DerivationOutput::Fixed { .. } => fixed += 1,
                DerivationOutput::Deferred => deferred += 1,
            }
        }
        match (ia, fixed, deferred) {
            (0, 0, 0) => Err(DerivationError::NoOutputs),
            (_, 0, 0) => Ok(DerivationKind::InputAddressed),
            (0, 0, _) => Ok(DerivationKind::Deferred),
            (0, 1, 0) if self.outputs.contains_key("out") => Ok(DerivationKind::FixedOutput),
            (0, _, 0) => Err(DerivationError::BadFixedOutputs {
                outputs: self.outputs.keys().cloned().collect::<Vec<_>>().join(", "),
            }),
            _ => Err(DerivationError::MixedOutputs),
        }
    }

    /// The store paths the `.drv` file refers to: input sources and input
    /// derivations (outputs are not references).
    pub fn references(&self) -> BTreeSet<StorePath> {
        let mut refs = self.input_srcs.clone();
        refs.extend(self.input_drvs.keys().cloned());
        refs
    }

    /// The path of this derivation's `.drv` file, for derivation name
    /// `drv_name` (the `name` attribute): a text path over the ATerm.
    pub fn drv_path(&self, drv_name: &str) -> Result<StorePath, DerivationError> {
        let mut buf = Vec::with_capacity(4096);
        aterm::write(self, &mut buf, false, None);
        let name = format!("{drv_name}.drv");
        make_text_path(&name, &Hash::of(HashAlgo::Sha256, &buf), &self.references()).map_err(
            |source| DerivationError::Path {
                what: "the .drv path".into(),
                drv_name: drv_name.into(),
                source,
            },
        )
    }

    /// Nix's `hashDerivationModulo` for this derivation; see
    /// [`hash_derivation_modulo`].
    pub fn hash_modulo<F>(
        &self,
        mask_outputs: bool,
        lookup: F,
    ) -> Result<DrvHashModulo, DerivationError>
    where
        F: FnMut(&StorePath) -> Option<DrvHashModulo>,
    {
        hash_derivation_modulo(self, mask_outputs, lookup)
    }

    /// Computes every output path of a derivation named `drv_name`, as Nix
    /// does when instantiating: fixed outputs from their hash, other outputs
    /// from the masked modulo hash (output paths and output environment
    /// variables blanked). `lookup` gives the modulo hash of each input
    /// derivation (computed with `mask_outputs = false`).
    pub fn compute_output_paths<F>(
        &self,
        drv_name: &str,
        lookup: F,
    ) -> Result<BTreeMap<String, StorePath>, DerivationError>
    where
        F: FnMut(&StorePath) -> Option<DrvHashModulo>,
    {
        let kind = self.kind()?;
        if kind != DerivationKind::FixedOutput
            && self.env.get("__contentAddressed").is_some_and(|v| v == "1")
        {
            return Err(DerivationError::FloatingCa {
                output: self.outputs.keys().next().cloned().unwrap_or_default(),
            });
        }
        let path_err = |output: &str, source| DerivationError::Path {
            what: format!("the path of output '{output}'"),
            drv_name: drv_name.to_string(),
            source,
        };
        let mut paths = BTreeMap::new();
        if kind == DerivationKind::FixedOutput {
            for (name, out) in &self.outputs {
                if let DerivationOutput::Fixed { hash, .. } = out {
                    paths.insert(
                        name.clone(),
                        hash.output_path(drv_name).map_err(|e| path_err(name, e))?,
                    );
                }
            }
            return Ok(paths);
        }
        // As Nix does, hash with every output variable present but empty
        // (the masked writer blanks the values of those present already).
        let masked;
        let to_hash = if self.outputs.keys().all(|o| self.env.contains_key(o)) {
            self
        } else {
            let mut m = self.clone();
            for name in self.outputs.keys() {
                m.env.entry(name.clone()).or_default();
            }
            masked = m;
            &masked
        };
        let DrvHashModulo::Regular(h) = hash_derivation_modulo(to_hash, true, lookup)? else {
            return Err(DerivationError::MixedOutputs);
        };
        for name in self.outputs.keys() {
            paths.insert(
                name.clone(),
                make_output_path(&h, name, drv_name).map_err(|e| path_err(name, e))?,
            );
        }
        Ok(paths)
    }

    /// [`Derivation::compute_output_paths`], then records each path in
    /// `outputs` (input-addressed or fixed) and in the environment variable
    /// named after the output. This is the last step of instantiation:
    /// build the derivation with [`DerivationOutput::Deferred`] for normal
    /// outputs (or [`DerivationOutput::fixed`]), then call this, then
    /// [`Derivation::drv_path`].
    pub fn fill_output_paths<F>(&mut self, drv_name: &str, lookup: F) -> Result<(), DerivationError>
    where
        F: FnMut(&StorePath) -> Option<DrvHashModulo>,
    {
        // Every output variable is set below; adding them now (empty, as
        // hashing wants them) spares `compute_output_paths` a copy.
        for name in self.outputs.keys() {
            self.env.entry(name.clone()).or_default();
        }
        let paths = self.compute_output_paths(drv_name, lookup)?;
        for (name, path) in paths {
            self.env.insert(name.clone(), path.to_absolute_path());
            if let Some(out) = self.outputs.get_mut(&name) {
                match out {
                    DerivationOutput::Fixed { path: p, .. } => *p = path,
                    other => *other = DerivationOutput::InputAddressed { path },
                }
            }
        }
        Ok(())
    }
}

/// Serialises a [`Hash`] as `algo:base16`.
mod hash_serde {
    use crate::hash::{Encoding, Hash};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&h.encode(Encoding::Base16, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = String::deserialize(d)?;
        Hash::parse_any_prefixed(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
