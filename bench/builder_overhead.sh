#!/usr/bin/env bash
# Per-build overhead of Kiln's builder against Nix 2.8's sandboxed builds:
# N trivial derivations (`echo i > $out` run by a static busybox), both at
# the same max-jobs. Prints both wall times, the ratio (goal: below 1.0) and
# Kiln's sandbox set-up time per build (aim: 5 ms).
#
# Usage: bench/builder_overhead.sh [N=500] [JOBS=2]
# Needs /bin/busybox (busybox-static); the Nix half needs nix-build on PATH
# and uses a throw-away chroot store, so the host needs no /nix.
set -euo pipefail
N=${1:-500}
JOBS=${2:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

cargo build --release -q -p kiln-builder --example builder_overhead
KILN_LINE=$("$ROOT/target/release/examples/builder_overhead" "$N" "$JOBS" /bin/busybox)
echo "$KILN_LINE"
KILN_WALL=$(sed -n 's/.*wall_s=\([0-9.]*\).*/\1/p' <<<"$KILN_LINE")

if ! command -v nix-build >/dev/null; then
  echo "nix-build not found: no comparison"; exit 0
fi
T=$(mktemp -d)
trap 'chmod -R u+w "$T" 2>/dev/null; rm -rf "$T"' EXIT
mkdir -p "$T/busybox/bin" && cp /bin/busybox "$T/busybox/bin/"
cat > "$T/trivial.nix" <<NIX
{ busybox, n }:
builtins.genList (i: derivation {
  name = "trivial-\${toString i}";
  system = "x86_64-linux";
  builder = "\${busybox}/bin/busybox";
  args = [ "sh" "-c" "echo \${toString i} > \$out" ];
}) n
NIX
STORE="$T/store"
# Instantiate first (not timed): only the builds are compared.
nix-instantiate --store "$STORE" --arg busybox "$T/busybox" --arg n "$N" "$T/trivial.nix" >"$T/drvs" 2>/dev/null
START=$(date +%s.%N)
xargs nix-build --store "$STORE" --no-out-link --option sandbox true --option substituters '' \
  --max-jobs "$JOBS" --cores 1 <"$T/drvs" >/dev/null 2>"$T/nix.log" || { tail "$T/nix.log"; exit 1; }
END=$(date +%s.%N)
NIX_WALL=$(echo "$END - $START" | bc -l)
printf 'nix  builds=%s max_jobs=%s wall_s=%.3f per_build_ms=%.3f\n' "$N" "$JOBS" "$NIX_WALL" "$(echo "$NIX_WALL * 1000 / $N" | bc -l)"
printf 'ratio kiln/nix = %.3f\n' "$(echo "$KILN_WALL / $NIX_WALL" | bc -l)"
