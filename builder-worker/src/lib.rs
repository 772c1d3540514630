//! Kiln's builder: realises derivations in a Linux-namespace sandbox that reproduces Nix's.
