//! Nix's data formats, byte-identical to Nix 2.8.
//!
//! One module per format: [`nixbase32`], [`hash`], [`store_path`],
//! [`derivation`], [`nar`], [`narinfo`], [`signing`] and [`refscan`].
//! Nothing here needs a runtime or a Nix installation.

pub mod derivation;
pub mod hash;
pub mod nixbase32;
pub mod store_path;
pub mod signing;
pub mod narinfo;
pub mod nar;
pub mod refscan;
