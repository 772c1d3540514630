#!/usr/bin/env bash
# Benchmark (not a test): `kiln instantiate` vs `nix-instantiate` (Nix 2.8),
# same machine, same run, on
#   (a)  a generated Nixpkgs-style set of COUNT (10,000) derivations,
#        instantiated by one call (`-A all`), .drv files written;
#   (a') the same set evaluated with `--eval --strict` to the list of all
#        `drvPath`s (evaluation and derivation hashing, no .drv written);
#   (b)  `fib 27` written in Nix, `--eval`;
#   (c)  the Nix 2.8 language suite (every eval-okay case with a .exp or
#        .exp.xml), timed as a loop over the files, one process per case.
# Prints the median wall time of interleaved kiln and nix runs, the peak RSS
# per tool and the ratios kiln/nix (< 1 means kiln is faster or smaller),
# whether both printed the same output
# and, for (c), how many cases each tool passes. A part that kiln cannot run
# yet is reported as failed with its first error line; the rest still runs.
#
# Usage: bench/eval_bench.sh      (env: RUNS=5 COUNT=10000 FIB=27 KEEP=1)
# Needs python3, nix-instantiate, cargo and GNU time (/usr/bin/time,
# apt-get install -y time); uses hyperfine when installed
# (apt-get install -y hyperfine), else repeated `date +%s%N`. The golden
# suite is $KILN_SHARED/nix-lang-tests (default ../shared). As root,
# nix-instantiate writes its .drv files to /nix/store.
set -euo pipefail

RUNS=${RUNS:-5}
COUNT=${COUNT:-10000}
FIB=${FIB:-27}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${KILN_SHARED:-$ROOT/../shared}
SUITE="$SHARED/nix-lang-tests"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-eval-bench.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

for tool in python3 nix-instantiate cargo; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "error: /usr/bin/time is required (apt-get install -y time)" >&2; exit 1; }
[ -d "$SUITE" ] || { echo "error: $SUITE not found (set KILN_SHARED)" >&2; exit 1; }

echo "== building kiln (release)"
(cd "$ROOT" && cargo build --release -p kiln-cli --bin kiln)
KILN="$(cd "${CARGO_TARGET_DIR:-$ROOT/target}" && pwd)/release/kiln"

echo "== generating $COUNT packages in $WORK/pkgs"
python3 "$ROOT/bench/eval/gen_pkgset.py" "$WORK/pkgs" "$COUNT"
printf 'let fib = n: if n < 2 then n else fib (n - 1) + fib (n - 2); in fib %d\n' "$FIB" > "$WORK/fib.nix"
DRV_PATHS="map (d: d.drvPath) (import $WORK/pkgs { }).all"
LANG_SUITE="$ROOT/bench/eval/lang_suite.sh"

# Each case: a label and, per tool, the command (a shell string run from
# $WORK, output to stdout). `q` quotes an argument for that string.
q() { printf '%q' "$1"; }
NAMES=(a a2 b c)
declare -A LABEL CMD_NIX CMD_KILN
LABEL[a]="(a) $COUNT drvs, instantiate"
CMD_NIX[a]="nix-instantiate pkgs -A all"
CMD_KILN[a]="$(q "$KILN") instantiate pkgs -A all"
LABEL[a2]="(a') $COUNT drvPaths, --eval"
CMD_NIX[a2]="nix-instantiate --eval --strict -E $(q "$DRV_PATHS")"
CMD_KILN[a2]="$(q "$KILN") instantiate --eval --strict -E $(q "$DRV_PATHS")"
LABEL[b]="(b) fib $FIB, --eval"
CMD_NIX[b]="nix-instantiate --eval fib.nix"
CMD_KILN[b]="$(q "$KILN") instantiate --eval fib.nix"
LABEL[c]="(c) lang suite, loop"
CMD_NIX[c]="bash $(q "$LANG_SUITE") $(q "$SUITE") - nix-instantiate"
CMD_KILN[c]="bash $(q "$LANG_SUITE") $(q "$SUITE") - $(q "$KILN") instantiate"

cd "$WORK"

# Mean wall time in seconds of a shell command over $RUNS runs, after one
# warm-up run (page cache filled, .drv files already written).
mean_secs() {
  if command -v hyperfine >/dev/null; then
    hyperfine --style none --ignore-failure --warmup 1 --runs "$RUNS" --export-json "$WORK/h.json" \
      "$1 > /dev/null 2>&1" > /dev/null
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["mean"])' "$WORK/h.json"
  else
    sh -c "$1" > /dev/null 2>&1
    local total=0 start end
    for _ in $(seq "$RUNS"); do
      start=$(date +%s%N); sh -c "$1" > /dev/null 2>&1; end=$(date +%s%N)
      total=$((total + end - start))
    done
    awk -v t="$total" -v n="$RUNS" 'BEGIN { printf "%.4f\n", t / n / 1e9 }'
  fi
}

# Median wall times in seconds of two shell commands ("NIX KILN" on one
# line), run interleaved: one warm-up each, then $RUNS rounds that run both,
# the one going first alternating. This machine's speed drifts over
# minutes; interleaving gives both tools the same conditions, and the
# median is robust to the occasional slow run.
pair_secs() {
  sh -c "$1" > /dev/null 2>&1 || true
  sh -c "$2" > /dev/null 2>&1 || true
  local i start end first second
  : > "$WORK/pair.nix"; : > "$WORK/pair.kiln"
  for i in $(seq "$RUNS"); do
    if [ $((i % 2)) = 1 ]; then first=nix; second=kiln; else first=kiln; second=nix; fi
    for side in "$first" "$second"; do
      if [ "$side" = nix ]; then cmd=$1; else cmd=$2; fi
      start=$(date +%s%N); sh -c "$cmd" > /dev/null 2>&1 || true; end=$(date +%s%N)
      echo $((end - start)) >> "$WORK/pair.$side"
    done
  done
  python3 -c 'import statistics,sys; print(" ".join("%.4f" % (statistics.median(int(l) for l in open(f)) / 1e9) for f in sys.argv[1:]))' \
    "$WORK/pair.nix" "$WORK/pair.kiln"
}

# Peak RSS in KiB of one run (for a loop: the largest process in it).
peak_kib() {
  /usr/bin/time -f %M -o "$WORK/rss" sh -c "$1" > /dev/null 2>&1
  tail -n 1 "$WORK/rss"
}

declare -A T_NIX T_KILN M_NIX M_KILN SAME NOTE
for n in "${NAMES[@]}"; do
  echo "== ${LABEL[$n]}"
  # One checked run per tool: exit status and output.
  if ! sh -c "${CMD_NIX[$n]}" > "$WORK/$n.nix.out" 2> "$WORK/$n.nix.err"; then
    NOTE[$n]="nix failed: $(grep -m1 . "$WORK/$n.nix.err" || true)"
    echo "   ${NOTE[$n]}"
    continue
  fi
  if ! sh -c "${CMD_KILN[$n]}" > "$WORK/$n.kiln.out" 2> "$WORK/$n.kiln.err"; then
    NOTE[$n]="kiln failed: $(grep -m1 . "$WORK/$n.kiln.err" || true)"
    echo "   ${NOTE[$n]}"
    T_NIX[$n]=$(mean_secs "${CMD_NIX[$n]}")
    M_NIX[$n]=$(peak_kib "${CMD_NIX[$n]}")
    continue
  fi
  # The loop (c) prints nothing; its outputs are checked below.
  if [ "$n" != c ]; then
    if cmp -s "$WORK/$n.nix.out" "$WORK/$n.kiln.out"; then SAME[$n]=yes; else SAME[$n]=NO; fi
  fi
  read -r T_NIX[$n] T_KILN[$n] < <(pair_secs "${CMD_NIX[$n]}" "${CMD_KILN[$n]}")
  M_NIX[$n]=$(peak_kib "${CMD_NIX[$n]}")
  M_KILN[$n]=$(peak_kib "${CMD_KILN[$n]}")
done

echo "== (c) correctness: cases whose output equals the .exp"
bash "$LANG_SUITE" "$SUITE" "$WORK/c.nix.res" nix-instantiate
bash "$LANG_SUITE" "$SUITE" "$WORK/c.kiln.res" "$KILN" instantiate
read -r pass_nix total < "$WORK/c.nix.res"
read -r pass_kiln _ < "$WORK/c.kiln.res"
echo "   nix-instantiate: $pass_nix/$total   kiln: $pass_kiln/$total"
if [ -s "$WORK/c.kiln.res.failed" ]; then
  echo "   kiln fails: $(tr '\n' ' ' < "$WORK/c.kiln.res.failed")"
fi
NOTE[c]="${NOTE[c]:-pass: nix $pass_nix/$total, kiln $pass_kiln/$total}"

echo "== results ($RUNS interleaved runs each, median wall time; peak RSS of one run)"
printf '%-32s %9s %9s %7s %9s %9s %7s  %s\n' \
  case "nix s" "kiln s" ratio "nix MiB" "kiln MiB" ratio "same output / notes"
for n in "${NAMES[@]}"; do
  awk -v label="${LABEL[$n]}" -v tn="${T_NIX[$n]:-}" -v tk="${T_KILN[$n]:-}" \
      -v mn="${M_NIX[$n]:-}" -v mk="${M_KILN[$n]:-}" \
      -v same="${SAME[$n]:-}" -v note="${NOTE[$n]:-}" '
    function num(x, fmt) { return x == "" ? "-" : sprintf(fmt, x) }
    function ratio(k, b) { return (k == "" || b == "" || b == 0) ? "-" : sprintf("%.2f", k / b) }
    BEGIN {
      printf "%-32s %9s %9s %7s %9s %9s %7s  %s\n", label,
        num(tn, "%.3f"), num(tk, "%.3f"), ratio(tk, tn),
        num(mn == "" ? "" : mn / 1024, "%.1f"), num(mk == "" ? "" : mk / 1024, "%.1f"), ratio(mk, mn),
        (same == "" ? "" : "same: " same) (same != "" && note != "" ? "; " : "") note
    }'
done
