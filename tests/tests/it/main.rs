//! Kiln's integration and conformance tests, linked into one test binary
//! (one link instead of a dozen keeps CI fast and its target directory small).

mod builder_conformance;
mod builder_security;
mod conformance_binary_cache;
mod conformance_eval;
mod conformance_instantiate;
mod conformance_nar;
mod coordinator_batching;
mod embedded_build;
mod embedded_drv_stream;
mod nix_lang;
mod nixpkgs_corpus;
mod services;
mod store_gateway;
mod store_suite;
mod transport_contract;
mod tvix_suite;
