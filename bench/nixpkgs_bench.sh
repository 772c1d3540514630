#!/usr/bin/env bash
# Benchmark (not a test): `kiln instantiate` vs `nix-instantiate` (Nix 2.8)
# on real code, the nixpkgs tree of $KILN_SHARED/nixpkgs (issue 15), same
# machine, same run:
#   hello     nix-instantiate TREE -A hello   --arg config '{}' --arg overlays '[]'
#   firefox   nix-instantiate TREE -A firefox --arg config '{}' --arg overlays '[]'
#   nixos     nix-instantiate -I nixpkgs=TREE '<nixpkgs/nixos>' -A system
#             --arg configuration CONF  (the minimal system of expected-nix-2.8.json)
# Runs are interleaved (nix, kiln, nix, kiln, ...) after one warm-up each;
# prints the median wall time and median maximum RSS (GNU time -v) per tool,
# the ratios kiln/nix (< 1 means kiln is faster or smaller), and whether both
# printed the same .drv path (and whether it is the expected one).
#
# Usage: bench/nixpkgs_bench.sh   (env: RUNS=3 KEEP=1 CASES="hello firefox nixos",
#        KILN=path/to/kiln to use a binary already built instead of a release build)
# Needs nix-instantiate, python3, cargo, tar, GNU time (/usr/bin/time).
# Kiln writes its .drv files under $WORK/store; nix-instantiate to its store.
set -euo pipefail

RUNS=${RUNS:-3}
CASES=${CASES:-"hello firefox nixos"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${KILN_SHARED:-$ROOT/../shared}
CORPUS="$SHARED/nixpkgs"
EXPECTED="$CORPUS/expected-nix-2.8.json"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-nixpkgs-bench.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

for tool in python3 nix-instantiate cargo tar; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "error: /usr/bin/time is required (apt-get install -y time)" >&2; exit 1; }
[ -f "$EXPECTED" ] || { echo "error: $EXPECTED not found (set KILN_SHARED)" >&2; exit 1; }

if [ -n "${KILN:-}" ]; then
  echo "== using $KILN"
else
  echo "== building kiln (release)"
  (cd "$ROOT" && cargo build --release -p kiln-cli --bin kiln)
  KILN="$(cd "${CARGO_TARGET_DIR:-$ROOT/target}" && pwd)/release/kiln"
fi

echo "== unpacking the nixpkgs tree into $WORK"
tar -xJf "$CORPUS"/nixpkgs-*.tar.xz -C "$WORK"
TREE="$WORK/nixpkgs-20.09"
CONF=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nixos"][0]["configuration"])' "$EXPECTED")
expected() {
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); k=sys.argv[2]
print(d["nixos"][0]["system"] if k == "nixos" else d["attributes"][k])' "$EXPECTED" "$1"
}

# args CASE: the arguments both tools get.
args() {
  case "$1" in
    nixos) printf '%s\0' -I "nixpkgs=$TREE" '<nixpkgs/nixos>' -A system --arg configuration "$CONF" ;;
    *) printf '%s\0' "$TREE" -A "$1" --arg config '{}' --arg overlays '[]' ;;
  esac
}

# measure OUT TOOL... : runs once under GNU time; prints "wall_s rss_kb".
measure() {
  local out=$1; shift
  local a=()
  while IFS= read -r -d '' x; do a+=("$x"); done < <(args "$CASE")
  env -u NIX_PATH /usr/bin/time -v -o "$WORK/time" "$@" "${a[@]}" > "$out" 2> "$WORK/err" || {
    echo "FAILED: $* ($(head -c 300 "$WORK/err"))" >&2; echo "nan nan"; return; }
  python3 - "$WORK/time" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", t)
wall = int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
print(wall, rss)
EOF
}

median() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:] if x!="nan"]; print(statistics.median(v) if v else float("nan"))' "$@"; }

printf '\n%-8s %10s %10s %7s %11s %11s %7s  %s\n' case nix_s kiln_s wall× nix_rss_MB kiln_rss_MB rss× same_drv
for CASE in $CASES; do
  want=$(expected "$CASE")
  measure "$WORK/nix.out" nix-instantiate --option substituters '' > /dev/null
  measure "$WORK/kiln.out" "$KILN" instantiate --store-dir "$WORK/store" > /dev/null
  nw=(); nr=(); kw=(); kr=()
  for _ in $(seq "$RUNS"); do
    read -r w r < <(measure "$WORK/nix.out" nix-instantiate --option substituters ''); nw+=("$w"); nr+=("$r")
    read -r w r < <(measure "$WORK/kiln.out" "$KILN" instantiate --store-dir "$WORK/store"); kw+=("$w"); kr+=("$r")
  done
  same=no
  [ "$(cat "$WORK/kiln.out")" = "$(cat "$WORK/nix.out")" ] && same=yes
  [ "$(cat "$WORK/nix.out")" = "$want" ] || same="$same (nix printed $(cat "$WORK/nix.out"), expected $want)"
  python3 - "$CASE" "$(median "${nw[@]}")" "$(median "${kw[@]}")" "$(median "${nr[@]}")" "$(median "${kr[@]}")" "$same" <<'EOF'
import sys
case, nw, kw, nr, kr, same = sys.argv[1], *map(float, sys.argv[2:6]), sys.argv[6]
print(f"{case:<8} {nw:10.2f} {kw:10.2f} {kw/nw:7.2f} {nr/1024:11.0f} {kr/1024:11.0f} {kr/nr:7.2f}  {same}")
EOF
done
