//! The store's integration tests, linked into one test binary: the
//! gateway under hostile requests, streaming to the real S3 (Garage), and
//! write-once semantics on every backend. [`common`] holds their helpers.

mod common;
mod gateway_hardening;
mod s3_streaming;
mod write_once;
