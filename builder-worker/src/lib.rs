//! Kiln's builder: realises derivations in a Linux-namespace sandbox that reproduces Nix's.
//!
//! - [`builder`]: the [`Builder`](builder::Builder) (max-jobs, options, errors);
//! - [`sandbox`]: namespaces, mounts and `execve` of the builder;
//! - [`rootfs`]: the root file system Nix shows a builder;
//! - [`env`]: the environment, `passAsFile` and structured attributes;
//! - [`run`]: supervising a running builder (log, limits, cancellation);
//! - [`canonicalise`]: output permissions, times and file types;
//! - [`outputs`]: NAR hashing, references, cycles and fixed-output checks;
//! - [`recipe`]: what the builder needs to know about a derivation;
//! - [`seccomp`]: Nix's system-call filter (no setuid/setgid, no xattrs);
//! - [`userpool`]: unprivileged host users for builds started as root;
//! - [`worker`]: the service loop serving build requests from a transport.

pub mod builder;
pub mod canonicalise;
pub mod env;
pub mod outputs;
pub mod recipe;
pub mod rootfs;
pub mod run;
pub mod sandbox;
pub mod seccomp;
mod spawner;
pub mod userpool;
pub mod worker;

pub use builder::{BuildError, BuildOptions, BuildOutputs, Builder, BuilderConfig};
pub use outputs::BuiltOutput;
pub use run::CancelToken;
