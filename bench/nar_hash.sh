#!/usr/bin/env bash
# Benchmark (not a test): `kiln nar dump` vs `nix-store --dump` and
# `kiln hash path` vs `nix hash path` on a deterministic 1 GiB tree of mixed
# small and large files. Prints mean times and kiln/nix ratios (< 1 means
# kiln is faster).
#
# Usage: bench/nar_hash.sh [SIZE_MIB]   (default 1024; KEEP=1 keeps the tree)
# Needs python3, nix (nix-store, nix) and cargo; uses hyperfine when
# installed (apt-get install -y hyperfine), else repeated `date +%s%N`.
set -euo pipefail

SIZE_MIB=${1:-1024}
RUNS=${RUNS:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-nar-bench.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
TREE="$WORK/tree"

for tool in python3 nix nix-store cargo; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done

echo "== building kiln (release)"
(cd "$ROOT" && cargo build --release -p kiln-cli --bin kiln)
KILN="${CARGO_TARGET_DIR:-$ROOT/target}/release/kiln"

echo "== generating a ${SIZE_MIB} MiB tree in $TREE"
# Three quarters in six large files, one quarter in small files of 1 byte to
# 32 KiB spread over 128 directories, some executable, plus symlinks. The
# contents come from a seeded PRNG, so every run hashes the same bytes.
python3 - "$TREE" "$SIZE_MIB" <<'PY'
import os, random, sys
root, size = sys.argv[1], int(sys.argv[2]) << 20
rng = random.Random(20261125)
os.makedirs(root)
large = size * 3 // 4 // 6
for i in range(6):
    with open(os.path.join(root, f"large-{i}.bin"), "wb") as f:
        left = large
        while left:
            n = min(left, 8 << 20)
            f.write(rng.randbytes(n))
            left -= n
small_budget, k = size - 6 * large, 0
while small_budget > 0:
    d = os.path.join(root, "small", f"d{k % 128:03d}")
    os.makedirs(d, exist_ok=True)
    n = min(small_budget, rng.randint(1, 32 << 10))
    p = os.path.join(d, f"f{k:06d}")
    with open(p, "wb") as f:
        f.write(rng.randbytes(n))
    if k % 17 == 0:
        os.chmod(p, 0o755)
    if k % 97 == 0:
        os.symlink(f"f{k:06d}", p + ".link")
    small_budget -= n
    k += 1
print(f"{k} small files, 6 large files of {large >> 20} MiB")
PY
du -sh "$TREE"

echo "== checking that both tools agree"
a=$("$KILN" hash path "$TREE")
b=$(nix --extra-experimental-features nix-command hash path "$TREE")
echo "kiln: $a"; echo "nix:  $b"
[ "$a" = "$b" ] || { echo "error: hashes differ" >&2; exit 1; }

DUMP_KILN="$KILN nar dump $TREE > /dev/null"
DUMP_NIX="nix-store --dump $TREE > /dev/null"
HASH_KILN="$KILN hash path $TREE > /dev/null"
HASH_NIX="nix hash path --extra-experimental-features nix-command $TREE > /dev/null"

# Mean wall time of a shell command in seconds, over $RUNS runs after a
# warm-up run (so both tools read from the page cache).
mean_secs() {
  sh -c "$1"
  local total=0 start end
  for _ in $(seq "$RUNS"); do
    start=$(date +%s%N); sh -c "$1"; end=$(date +%s%N)
    total=$((total + end - start))
  done
  awk -v t="$total" -v n="$RUNS" 'BEGIN { printf "%.3f", t / n / 1e9 }'
}

if command -v hyperfine >/dev/null; then
  echo "== timing with hyperfine ($RUNS runs each)"
  hyperfine --warmup 1 --runs "$RUNS" --export-json "$WORK/dump.json" \
    -n "kiln nar dump" "$DUMP_KILN" -n "nix-store --dump" "$DUMP_NIX"
  hyperfine --warmup 1 --runs "$RUNS" --export-json "$WORK/hash.json" \
    -n "kiln hash path" "$HASH_KILN" -n "nix hash path" "$HASH_NIX"
  read -r dk dn < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"]; print(r[0]["mean"], r[1]["mean"])' "$WORK/dump.json")
  read -r hk hn < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"]; print(r[0]["mean"], r[1]["mean"])' "$WORK/hash.json")
else
  echo "== timing with date +%s%N ($RUNS runs each, mean)"
  dk=$(mean_secs "$DUMP_KILN"); dn=$(mean_secs "$DUMP_NIX")
  hk=$(mean_secs "$HASH_KILN"); hn=$(mean_secs "$HASH_NIX")
fi

echo "== results (${SIZE_MIB} MiB)"
awk -v dk="$dk" -v dn="$dn" -v hk="$hk" -v hn="$hn" -v mib="$SIZE_MIB" 'BEGIN {
  printf "nar dump : kiln %.3fs (%.0f MiB/s)  nix %.3fs (%.0f MiB/s)  kiln/nix = %.2f\n", dk, mib/dk, dn, mib/dn, dk/dn
  printf "hash path: kiln %.3fs (%.0f MiB/s)  nix %.3fs (%.0f MiB/s)  kiln/nix = %.2f\n", hk, mib/hk, hn, mib/hn, hk/hn
}'
