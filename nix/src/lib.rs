//! Nix's data formats, byte-identical to Nix 2.8.
//!
//! One module per format: [`nixbase32`], [`hash`], [`store_path`],
//! [`derivation`], [`nar`], [`narinfo`], [`signing`] and [`refscan`].
//! Nothing here needs a runtime or a Nix installation.

pub mod cache_info;
pub mod content_address;
pub mod derivation;
pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod nixbase32;
pub mod refscan;
pub mod signing;
pub mod store_path;
