//! The `kiln` command's integration tests, linked into one test binary
//! (one link instead of ten keeps CI fast and its target directory small):
//! the embedded commands against `../shared`'s conformance data, and the
//! farm (every role a separate `kiln` process over the real RabbitMQ and
//! S3; [`farm`] is its harness).

mod broker_restart;
mod build;
mod cli_nar_hash;
mod conformance_build;
mod distributed;
mod farm;
mod hardening;
mod instantiate;
mod operators;
mod store_commands;
mod streaming;
