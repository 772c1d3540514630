//! Kiln's store: a Nix binary cache on local disk or S3, and the HTTP gateway that serves it.
//!
//! - [`backend`]: the [`Store`] trait (whole objects by [`Key`]) and its
//!   local directory, S3 and HTTP implementations;
//! - [`url`]: store URLs as Nix writes them;
//! - [`compression`]: streaming NAR compression and verification.

#![deny(missing_docs)]

pub mod backend;
pub mod cache;
mod closure;
pub mod compression;
pub mod copy;
pub mod error;
pub mod gateway;
pub mod ingest;
pub mod key;
pub mod realise;
pub mod url;

pub use backend::{ByteStream, Store};
pub use bytes::Bytes;
pub use error::{Result, StoreError};
pub use key::Key;
