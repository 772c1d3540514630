#!/usr/bin/env bash
# Benchmark (not a test): `kiln build` against Nix 2.8's
# `nix-build --option sandbox true --option substituters ''` on a generated
# graph of 1,000 trivial derivations (bench/build/graph.nix: fan-out layers
# and chains, each builder a static busybox running `echo … > $out`), both
# at the same max-jobs, from evaluation to the last build, in one run each.
#
# Every run starts from nothing: a fresh Kiln store (`--store DIR`) and a
# fresh ~/.cache/kiln (XDG_CACHE_HOME: realised outputs, evaluator work
# dir), and for Nix a fresh chroot store (`--store DIR`, so the host needs
# no /nix). Runs alternate between the tools; medians are reported.
#
# Prints per run and as medians:
#   - wall time of each tool and the ratio kiln/nix (goal: below 1.0);
#   - for kiln, the time until the first build starts relative to the whole
#     evaluation (`started` vs `eval_finished` in the `--json` event stream,
#     both from the job's own `at_ms` stamps, i.e. since the job was
#     accepted; goal: under 10%), plus the same from arrival stamps taken by
#     bench/build/kiln_events.py since the process was spawned;
#   - for context, Nix's evaluation alone: `nix-instantiate` of the same
#     root into a fresh store.
# Before timing it checks that both tools instantiate the same root .drv
# path and that its closure holds the expected number of derivations; after
# each run, that each tool built all of them and printed the same output.
#
# Each timed run starts after a `sync`, so neither tool pays for the
# write-back of the other's clean-up.
#
# Usage: bench/build_bench.sh [RUNS=3] [JOBS=2]   (env: KEEP=1 keeps the
# work directory and prints it). Needs python3, cargo, nix-build and
# nix-instantiate (Debian: nix-bin) and /bin/busybox (busybox-static); run
# as root like Nix's sandboxed builds need.
set -euo pipefail
RUNS=${1:-3}
JOBS=${2:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GRAPH="$ROOT/bench/build/graph.nix"
READER="$ROOT/bench/build/kiln_events.py"
EXPECTED_DRVS=1000

for tool in python3 cargo nix-build nix-instantiate nix-store; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required (nix-build: apt-get install nix-bin)" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "error: /bin/busybox is required (apt-get install busybox-static)" >&2; exit 1; }

echo "== building kiln (release; a no-op when up to date)"
(cd "$ROOT" && cargo build --release -q -p kiln-cli --bin kiln)
KILN="$(cd "${CARGO_TARGET_DIR:-$ROOT/target}" && pwd)/release/kiln"

T=$(mktemp -d "${TMPDIR:-/tmp}/kiln-build-bench.XXXXXX")
cleanup() { chmod -R u+w "$T" 2>/dev/null || true; rm -rf "$T"; }
if [ "${KEEP:-0}" = 1 ]; then echo "== work directory: $T"; else trap cleanup EXIT; fi
mkdir -p "$T/busybox/bin" && cp /bin/busybox "$T/busybox/bin/"
cd "$T"
ARGS=(--arg busybox "$T/busybox" "$GRAPH" -A root)

echo "== checking that both tools instantiate the same derivations"
NIX_DRV=$(nix-instantiate --store "$T/check-store" "${ARGS[@]}" 2>"$T/check.log") || { cat "$T/check.log"; exit 1; }
KILN_DRV=$(XDG_CACHE_HOME="$T/check-cache" "$KILN" instantiate "${ARGS[@]}") || exit 1
N_DRVS=$(nix-store --store "$T/check-store" -qR "$NIX_DRV" | grep -c '\.drv$')
echo "nix  root: $NIX_DRV ($N_DRVS derivations in its closure)"
echo "kiln root: $KILN_DRV"
[ "$NIX_DRV" = "$KILN_DRV" ] || { echo "error: the root .drv paths differ" >&2; exit 1; }
[ "$N_DRVS" = "$EXPECTED_DRVS" ] || { echo "error: expected $EXPECTED_DRVS derivations" >&2; exit 1; }

now() { echo "$EPOCHREALTIME"; }

run_nix() { # $1: run number; prints one JSON object
  local d="$T/nix-$1" start end eval_start eval_end planned out
  mkdir -p "$d"
  eval_start=$(now)
  nix-instantiate --store "$d/eval-store" "${ARGS[@]}" >/dev/null 2>"$d/eval.log" || { cat "$d/eval.log" >&2; return 1; }
  eval_end=$(now)
  start=$(now)
  out=$(nix-build --store "$d/store" --option sandbox true --option substituters '' \
    --max-jobs "$JOBS" --cores 1 --no-out-link "${ARGS[@]}" 2>"$d/build.log") || { tail "$d/build.log" >&2; return 1; }
  end=$(now)
  planned=$(sed -n 's/^these \([0-9]*\) derivations will be built:$/\1/p' "$d/build.log")
  python3 -c 'import json,sys; a=sys.argv; print(json.dumps({"wall_s": float(a[2])-float(a[1]), "eval_s": float(a[4])-float(a[3]), "planned": int(a[5] or 0), "output": a[6]}))' \
    "$start" "$end" "$eval_start" "$eval_end" "${planned:-0}" "$out"
  chmod -R u+w "$d"; rm -rf "$d"
}

run_kiln() { # $1: run number; prints one JSON object
  local d="$T/kiln-$1"
  mkdir -p "$d"
  XDG_CACHE_HOME="$d/cache" python3 "$READER" "$d/events" -- \
    "$KILN" build --store "$d/store" -j "$JOBS" --no-out-link --json "${ARGS[@]}" 2>"$d/stderr" \
    || { tail "$d/stderr" >&2; return 1; }
  [ "${KEEP:-0}" = 1 ] || rm -rf "$d"
}

: >"$T/results"
for r in $(seq 1 "$RUNS"); do
  if [ $((r % 2)) = 1 ]; then order="nix kiln"; else order="kiln nix"; fi
  for tool in $order; do
    echo "== run $r/$RUNS: $tool (-j $JOBS)"
    # Start every timed run on a quiet disk: the previous run's clean-up
    # (thousands of files deleted) must not be written back while this one
    # runs, whichever tool it is.
    sync
    line=$("run_$tool" "$r")
    echo "$tool $line" >>"$T/results"
  done
done

python3 - "$T/results" "$EXPECTED_DRVS" "$JOBS" <<'PY'
import json, statistics, sys
path, expected, jobs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
nix, kiln = [], []
for line in open(path):
    tool, js = line.split(" ", 1)
    (nix if tool == "nix" else kiln).append(json.loads(js))
ok = True
def check(cond, msg):
    global ok
    if not cond:
        ok = False
        print("error:", msg)
outputs = {n["output"] for n in nix} | {o for k in kiln for o in k["outputs"]}
check(len(outputs) == 1, f"the tools printed different outputs: {sorted(outputs)}")
for n in nix:
    check(n["planned"] == expected, f"nix planned {n['planned']} builds, not {expected}")
for k in kiln:
    c = k["counts"]
    check(k["exit_code"] == 0 and k["success"], "kiln build failed")
    check(c.get("built", 0) == expected and c.get("cached", 0) == 0,
          f"kiln built {c.get('built', 0)} and found {c.get('cached', 0)} cached, not {expected} built")
print(f"\n{'run':>4} {'nix s':>8} {'kiln s':>8} {'ratio':>6} {'1st build ms':>12} {'eval ms':>8} {'1st/eval':>8} "
      f"{'(arrival)':>9} {'started<eval':>12} {'nix eval s':>10}")
rows = []
for i, (n, k) in enumerate(zip(nix, kiln), 1):
    fs, ef = k["first_started"], k["eval_finished"]
    frac = fs["at_ms"] / ef["at_ms"] if ef["at_ms"] else float("nan")
    frac_arr = fs["arrival_s"] / ef["arrival_s"]
    rows.append((n["wall_s"], k["wall_s"], k["wall_s"] / n["wall_s"], fs["at_ms"], ef["at_ms"], frac, frac_arr,
                 k["started_before_eval_finished"], n["eval_s"], k["job_finished"]["at_ms"]))
    r = rows[-1]
    print(f"{i:>4} {r[0]:>8.3f} {r[1]:>8.3f} {r[2]:>6.3f} {r[3]:>12} {r[4]:>8} {r[5]:>8.1%} {r[6]:>9.1%} {r[7]:>12} {r[8]:>10.3f}")
med = [statistics.median(c) for c in zip(*rows)]
print(f"\nmedians over {len(rows)} runs, {expected} derivations, -j {jobs}:")
print(f"  nix-build wall      {med[0]:.3f} s   (nix-instantiate alone into a fresh store: {med[8]:.3f} s)")
print(f"  kiln build wall     {med[1]:.3f} s   (job accepted → finished: {med[9] / 1000:.3f} s)")
print(f"  ratio kiln/nix      {med[2]:.3f}   (goal < 1.0)")
print(f"  kiln first build    {med[3]:.0f} ms after the job was accepted; evaluation finished at {med[4]:.0f} ms")
print(f"  first build / eval  {med[5]:.1%}   (goal < 10%; from arrival stamps since spawn: {med[6]:.1%})")
print(f"  `started` events before `eval_finished`: {med[7]:.0f} (builds that got a slot while"
      " evaluation was still running)")
sys.exit(0 if ok else 1)
PY
