//! What the coordinator needs to know about a derivation, read from its
//! exact ATerm as it arrives on the derivation stream.

use std::collections::{BTreeMap, BTreeSet};

use kiln_nix::derivation::{Derivation, DerivationError};
use kiln_nix::store_path::StorePath;
use thiserror::Error;

/// A derivation from the stream could not be used.
#[derive(Debug, Error)]
pub enum DrvError {
    #[error("derivation '{drv_path}': {source}")]
    Parse {
        drv_path: String,
        #[source]
        source: DerivationError,
    },
    #[error("derivation '{drv_path}': output '{output}' has no path (floating content-addressed derivations are not supported)")]
    Deferred { drv_path: String, output: String },
    #[error("'{0}' is not a store path of a derivation")]
    BadPath(String),
}

/// A parsed derivation with the fields scheduling uses.
#[derive(Debug, Clone, PartialEq)]
pub struct DrvInfo {
    pub drv_path: String,
    pub aterm: String,
    pub system: String,
    pub required_features: Vec<String>,
    /// Output name → absolute output path.
    pub outputs: BTreeMap<String, String>,
    /// Input derivation path → the outputs of it that are used.
    pub input_drvs: BTreeMap<String, BTreeSet<String>>,
    pub input_srcs: Vec<String>,
}

impl DrvInfo {
    /// Parses a derivation received as `drv_path` with its ATerm text.
    pub fn parse(drv_path: &str, aterm: &str) -> Result<Self, DrvError> {
        let sp = StorePath::from_absolute_path(drv_path)
            .map_err(|_| DrvError::BadPath(drv_path.to_string()))?;
        if !sp.name().ends_with(".drv") {
            return Err(DrvError::BadPath(drv_path.to_string()));
        }
        let drv = Derivation::parse_aterm(aterm.as_bytes()).map_err(|source| DrvError::Parse {
            drv_path: drv_path.to_string(),
            source,
        })?;
        let mut outputs = BTreeMap::new();
        for (name, out) in &drv.outputs {
            let path = out.path().ok_or_else(|| DrvError::Deferred {
                drv_path: drv_path.to_string(),
                output: name.clone(),
            })?;
            outputs.insert(name.clone(), path.to_absolute_path());
        }
        Ok(DrvInfo {
            drv_path: drv_path.to_string(),
            aterm: aterm.to_string(),
            system: drv.system.clone(),
            required_features: required_features(&drv),
            outputs,
            input_drvs: drv
                .input_drvs
                .iter()
                .map(|(p, outs)| (p.to_absolute_path(), outs.clone()))
                .collect(),
            input_srcs: drv
                .input_srcs
                .iter()
                .map(|p| p.to_absolute_path())
                .collect(),
        })
    }
}

/// `requiredSystemFeatures`, from the environment or from structured attrs.
fn required_features(drv: &Derivation) -> Vec<String> {
    if let Some(v) = drv.env.get("requiredSystemFeatures") {
        return v.split_whitespace().map(str::to_string).collect();
    }
    if let Some(json) = drv.env.get("__json") {
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(json)
        {
            if let Some(serde_json::Value::Array(items)) = map.get("requiredSystemFeatures") {
                return items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect();
            }
        }
    }
    Vec::new()
}
