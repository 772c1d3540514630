//! Kiln's coordinator: it assembles the derivation graph incrementally as
//! derivations stream in from evaluators, skips outputs already in the
//! store, dispatches each build as soon as its inputs are realised,
//! deduplicates work across jobs, serves IFD requests first, decides what a
//! failure means for each job, and publishes a per-job event stream.
//!
//! [`graph`] holds the scheduling rules as a pure state machine;
//! [`service`] runs it against a [`kiln_protocol::Transport`] and a store.

pub mod drv;
pub mod graph;
pub mod leases;
pub mod nar_sink;
pub mod service;
pub mod status;

pub use drv::DrvInfo;
pub use service::{run, CoordinatorConfig, CoordinatorError, OutputStore};

#[cfg(test)]
mod graph_tests;
