//! Kiln's builder: realises derivations in a Linux-namespace sandbox that reproduces Nix's.
//!
//! - [`sandbox`]: namespaces, mounts and `execve` of the builder;
//! - [`rootfs`]: the root file system Nix shows a builder;
//! - [`env`]: the environment, `passAsFile` and structured attributes;
//! - [`canonicalise`]: output permissions, times and file types.

pub mod canonicalise;
pub mod env;
pub mod rootfs;
pub mod sandbox;
