#!/usr/bin/env bash
# Checks the workspace's declared minimum Rust version (`rust-version` in
# Cargo.toml) against what can be checked on this machine's one toolchain:
#   - every Kiln crate inherits it;
#   - no dependency that Cargo.lock resolves for Linux asks for a newer
#     Rust (cargo would refuse the declared version);
#   - the toolchain here is not older than it.
# Kiln's own code is held to it by clippy's `incompatible_msrv` lint (on by
# default), which flags std APIs stabilised after the declared version;
# scripts/test.sh runs clippy with -D warnings.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
cargo metadata --format-version 1 --locked --filter-platform x86_64-unknown-linux-gnu |
    python3 "$ROOT/scripts/check_msrv.py"
