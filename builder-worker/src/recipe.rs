//! What the builder needs to know about a derivation: its outputs (with
//! fixed-output hashes), builder, arguments and environment.

use std::collections::BTreeMap;

use kiln_nix::derivation::{Derivation, DerivationOutput, FixedOutputHash};
use kiln_nix::store_path::FileIngestionMethod;

/// Errors in a derivation's output declarations.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// An output without a path (floating content-addressed derivations).
    #[error(
        "output '{0}' has no output path; floating content-addressed derivations are not supported"
    )]
    NoPath(String),
}

/// One output to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecipe {
    /// Its store path (`/nix/store/…`).
    pub path: String,
    /// The declared hash, for fixed-output derivations.
    pub fixed: Option<FixedOutputHash>,
}

impl OutputRecipe {
    /// Whether the declared hash is of the NAR (`outputHashMode = "recursive"`).
    pub fn is_recursive(&self) -> bool {
        self.fixed
            .as_ref()
            .is_some_and(|f| f.method == FileIngestionMethod::Recursive)
    }
}

/// A derivation as the builder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// Output name → what to produce.
    pub outputs: BTreeMap<String, OutputRecipe>,
    /// The program to run (a path inside the sandbox).
    pub builder: String,
    /// Its arguments (without `argv[0]`).
    pub args: Vec<String>,
    /// The derivation's environment attributes.
    pub env: BTreeMap<String, String>,
    /// The platform (`x86_64-linux`).
    pub system: String,
}

impl Recipe {
    /// The builder's view of a parsed derivation.
    pub fn from_derivation(drv: &Derivation) -> Result<Recipe, RecipeError> {
        let mut outputs = BTreeMap::new();
        for (name, out) in &drv.outputs {
            let (path, fixed) = match out {
                DerivationOutput::InputAddressed { path } => (path, None),
                DerivationOutput::Fixed { path, hash } => (path, Some(hash.clone())),
                DerivationOutput::Deferred => return Err(RecipeError::NoPath(name.clone())),
            };
            outputs.insert(
                name.clone(),
                OutputRecipe {
                    path: path.to_absolute_path(),
                    fixed,
                },
            );
        }
        Ok(Recipe {
            outputs,
            builder: drv.builder.clone(),
            args: drv.args.clone(),
            env: drv.env.clone(),
            system: drv.system.clone(),
        })
    }

    /// Whether this is a fixed-output derivation (network allowed, hash
    /// checked).
    pub fn is_fixed_output(&self) -> bool {
        self.outputs.values().any(|o| o.fixed.is_some())
    }

    /// Output name → path.
    pub fn output_paths(&self) -> BTreeMap<String, String> {
        self.outputs
            .iter()
            .map(|(k, o)| (k.clone(), o.path.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXED: &str = r#"Derive([("out","/nix/store/4wcg8hvlf3hgp4rbxvq6kxxwq29ffmkx-recursive","r:sha256","9bf8b8cc8247291b5aa4d9cfc0d5281689b464c1fb9c3429db5a9d68d4a35a2a")],[],[],"x86_64-linux","/bin/sh",["-c","x"],[("out","/nix/store/4wcg8hvlf3hgp4rbxvq6kxxwq29ffmkx-recursive")])"#;

    #[test]
    fn fixed_output_recipe() {
        let drv = Derivation::parse_aterm(FIXED.as_bytes()).unwrap();
        let r = Recipe::from_derivation(&drv).unwrap();
        assert!(r.is_fixed_output());
        assert!(r.outputs["out"].is_recursive());
        assert_eq!(
            r.output_paths()["out"],
            "/nix/store/4wcg8hvlf3hgp4rbxvq6kxxwq29ffmkx-recursive"
        );
        assert_eq!(r.args, ["-c", "x"]);
    }
}
