//! Nix's `hashDerivationModulo`: the hash of a derivation "modulo" its
//! fixed-output inputs, so that changing how a fixed-output derivation
//! fetches its (unchanged) output does not change anything depending on it.

use std::collections::{BTreeMap, BTreeSet};

use super::{aterm, Derivation, DerivationError, DerivationKind, DerivationOutput};
use crate::hash::{Hash, HashAlgo};
use crate::store_path::StorePath;

/// The result of [`hash_derivation_modulo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrvHashModulo {
    /// An input-addressed (or deferred) derivation: one sha256 over its
    /// ATerm with input derivations replaced by their own modulo hashes.
    Regular(Hash),
    /// A fixed-output derivation: per output, the sha256 of
    /// `fixed:out:[r:]<algo>:<hex>:<output path>`.
    FixedOutput(BTreeMap<String, Hash>),
}

/// Computes Nix's `hashDerivationModulo(drv, mask_outputs)`.
///
/// A fixed-output derivation hashes to its expected output only. Any other
/// derivation is written as an ATerm in which each input derivation path is
/// replaced by the base-16 modulo hash that `lookup` gives for it (for a
/// fixed-output input, one entry per used output, each with output `out`),
/// and, with `mask_outputs`, output paths and the environment variables named
/// after outputs are blanked; the result is the sha256 of that text.
///
/// Output paths are computed from the masked hash; the hash dependents use
/// for this derivation (what `lookup` must return) is the unmasked one.
pub fn hash_derivation_modulo<F>(
    drv: &Derivation,
    mask_outputs: bool,
    mut lookup: F,
) -> Result<DrvHashModulo, DerivationError>
where
    F: FnMut(&StorePath) -> Option<DrvHashModulo>,
{
    if drv.kind()? == DerivationKind::FixedOutput {
        let mut hashes = BTreeMap::new();
        for (name, out) in &drv.outputs {
            if let DerivationOutput::Fixed { path, hash } = out {
                let s = format!(
                    "fixed:out:{}:{}:{}",
                    hash.method_algo(),
                    hash.hash.to_base16(),
                    path.to_absolute_path()
                );
                hashes.insert(name.clone(), Hash::of(HashAlgo::Sha256, s.as_bytes()));
            }
        }
        return Ok(DrvHashModulo::FixedOutput(hashes));
    }

    let mut inputs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, outputs) in &drv.input_drvs {
        match lookup(path).ok_or_else(|| DerivationError::UnknownInputDrv(path.clone()))? {
            DrvHashModulo::Regular(h) => {
                inputs.insert(h.to_base16(), outputs.clone());
            }
            DrvHashModulo::FixedOutput(hashes) => {
                for output in outputs {
                    let h =
                        hashes
                            .get(output)
                            .ok_or_else(|| DerivationError::MissingInputOutput {
                                drv: path.clone(),
                                output: output.clone(),
                            })?;
                    inputs.insert(h.to_base16(), BTreeSet::from(["out".to_string()]));
                }
            }
        }
    }
    // One buffer, hashed at once: cheaper than feeding the hasher the many
    // small pieces the writer produces.
    let mut buf = Vec::with_capacity(4096);
    aterm::write(drv, &mut buf, mask_outputs, Some(&inputs));
    Ok(DrvHashModulo::Regular(Hash::of(HashAlgo::Sha256, &buf)))
}
