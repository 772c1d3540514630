#!/usr/bin/env bash
# Benchmark (not a test) of the distributed mode on this machine: every
# role a separate `kiln` process over the local RabbitMQ (a fresh vhost per
# run) with the store in the local Garage (a fresh prefix per run, so
# nothing is cached), jobs submitted with `kiln submit --wait`.
#
#   1. Dispatch throughput: bench/build/graph.nix with 2,000 trivial
#      derivations, builds per second end to end (submit to finish), with
#      1 and with 4 builder processes (one slot each). Goal: 200 builds/s
#      with 4.
#   2. Scaling efficiency: bench/farm/sleepers.nix, 200 derivations of
#      `sleep 0.5` over 8 slots (4 builders × 2); ideal 200 × 0.5 / 8 =
#      12.5 s. Goal: within 10%.
#   3. How cost grows: graphs of 1,000, 5,000 and 20,000 derivations (4
#      builders): coordinator peak RSS per derivation, builds per second,
#      and broker messages published per build (RabbitMQ's management API,
#      enabled here if it is not).
#   4. The same 1,000-derivation graph embedded (`kiln build -j 4`) and
#      distributed (4 builders): the ratio of wall times.
#
# Usage: bench/farm_bench.sh [SIZES="1000 5000 20000"]  (env: SKIP="1 2 3 4"
# to skip parts, KEEP=1 keeps logs). Needs the services of
# scripts/provision-services.sh, /bin/busybox, python3; run as root.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZES=${1:-"1000 5000 20000"}
SKIP=${SKIP:-}
STATE_DIR=${KILN_CI_STATE:-/var/lib/kiln-ci}
GRAPH="$ROOT/bench/build/graph.nix"
SLEEPERS="$ROOT/bench/farm/sleepers.nix"

set -a
# shellcheck disable=SC1091
. "$STATE_DIR/s3.env"
set +a
echo "== building kiln (release)"
(cd "$ROOT" && cargo build --release -q -p kiln-cli --bin kiln)
KILN="$(cd "${CARGO_TARGET_DIR:-$ROOT/target}" && pwd)/release/kiln"
rabbitmq-plugins enable rabbitmq_management >/dev/null 2>&1 || true

T=$(mktemp -d "${TMPDIR:-/tmp}/kiln-farm-bench.XXXXXX")
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}
cleanup() {
  stop_all
  if [ "${KEEP:-0}" = 1 ]; then echo "== logs in $T"; else chmod -R u+w "$T" 2>/dev/null; rm -rf "$T"; fi
}
trap cleanup EXIT
mkdir -p "$T/busybox/bin" && cp /bin/busybox "$T/busybox/bin/"

RUN=0
# farm BUILDERS SLOTS: a fresh vhost and store prefix; starts the roles.
farm() {
  stop_all
  RUN=$((RUN + 1))
  VHOST="kiln-bench-$RUN-$$"
  rabbitmqctl add_vhost "$VHOST" >/dev/null
  rabbitmqctl set_permissions -p "$VHOST" guest '.*' '.*' '.*' >/dev/null
  export KILN_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$VHOST"
  export KILN_STORE_URL="s3://$KILN_S3_BUCKET?endpoint=$KILN_S3_ENDPOINT&region=$KILN_S3_REGION&path-style=true&prefix=bench-$RUN-$$"
  local d="$T/run$RUN" port=19100
  mkdir -p "$d"
  XDG_CACHE_HOME="$d/c" "$KILN" coordinator --metrics-addr "127.0.0.1:$port" --work-dir "$d/coord" 2>"$d/coordinator.log" &
  COORD_PID=$!
  PIDS+=("$COORD_PID")
  XDG_CACHE_HOME="$d/e" "$KILN" evaluator --metrics-addr "127.0.0.1:$((port + 1))" --work-dir "$d/eval" 2>"$d/evaluator.log" &
  PIDS+=($!)
  local i
  for i in $(seq 1 "$1"); do
    XDG_CACHE_HOME="$d/b$i" "$KILN" builder -j "$2" --metrics-addr "127.0.0.1:$((port + 1 + i))" \
      --cache-dir "$d/b$i/cache" --builder-id "b$i" 2>"$d/builder$i.log" &
    PIDS+=($!)
  done
  sleep 1
}

published() {
  python3 - "$VHOST" <<'EOF'
import base64, json, sys, urllib.request, urllib.parse
vh = urllib.parse.quote(sys.argv[1], safe="")
req = urllib.request.Request(f"http://127.0.0.1:15672/api/vhosts/{vh}")
req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
try:
    d = json.load(urllib.request.urlopen(req, timeout=5))
    print(d.get("message_stats", {}).get("publish", "n/a"))
except Exception as e:
    print("n/a")
EOF
}

# submit FILE ARGS...: prints wall seconds; fails when the job fails.
submit() {
  local t0 t1
  t0=$(date +%s.%N)
  "$KILN" submit "$@" --arg busybox "$T/busybox" --wait --no-out-link >"$T/out.txt" 2>"$T/submit.log" ||
    { tail -20 "$T/submit.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}

coord_rss_kb() { awk '/VmHWM/ { print $2 }' "/proc/$COORD_PID/status"; }
rate() { python3 -c "print(f'{$1 / $2:.1f}')"; }

# graph_args N: graph.nix arguments for N derivations: the 4 chains of 100,
# the seed and the root stay; the rest is split over the fan layers as in
# the default graph (1/2, 1/3, 1/6), so that every fan node is an input of
# the next layer (fan1 >= fan0/3, fan2 >= fan1/4) and the root needs all.
# The last fan layer stays at most 1,500 nodes: the root names each in its
# one builder argument, and Linux refuses an argument over 128 KiB (E2BIG,
# for Nix as for Kiln).
graph_args() {
  local r=$(($1 - 402))
  local f2=$((r / 6)); [ "$f2" -gt 1500 ] && f2=1500
  local f1=$((r / 3)); [ "$f1" -gt $((4 * f2)) ] && f1=$((4 * f2))
  echo "--arg fan0 $((r - f1 - f2)) --arg fan1 $f1 --arg fan2 $f2"
}

# built: derivations the coordinator saw built in this farm (its /metrics).
built() {
  curl -s http://127.0.0.1:19100/metrics |
    awk '/^kiln_builds_total\{result="built"\}/ { print $2 }'
}

if [[ " $SKIP " != *" 1 "* ]]; then
  echo "== 1. dispatch throughput, 2,000 trivial derivations"
  for b in 1 4; do
    farm "$b" 1
    # shellcheck disable=SC2046
    w=$(submit "$GRAPH" -A root $(graph_args 2000))
    n=$(built)
    echo "   $b builder(s): ${w}s, $n built, $(rate "$n" "$w") builds/s"
  done
fi

if [[ " $SKIP " != *" 2 "* ]]; then
  echo "== 2. scaling: 200 × sleep 0.5 over 8 slots (4 builders × 2)"
  farm 4 2
  w=$(submit "$SLEEPERS" --argstr tag "r$RUN")
  echo "   ${w}s against the ideal 12.5s: $(python3 -c "print(f'{$w / 12.5:.3f}')") of ideal"
fi

if [[ " $SKIP " != *" 3 "* ]]; then
  echo "== 3. cost by size (4 builders)"
  for n in $SIZES; do
    farm 4 1
    # shellcheck disable=SC2046
    w=$(submit "$GRAPH" -A root $(graph_args "$n"))
    rss=$(coord_rss_kb)
    sleep 6 # the management API samples every 5 s
    pub=$(published)
    [ "$(built)" = "$n" ] || echo "   (the coordinator built $(built), not $n)"
    echo "   $n: ${w}s, $(rate "$n" "$w") builds/s, coordinator peak RSS $((rss / 1024)) MiB ($(python3 -c "print(f'{$rss * 1024 / $n / 1024:.1f}')") KiB/derivation), $pub messages published ($( [ "$pub" = n/a ] && echo n/a || rate "$pub" "$n") per build)"
  done
fi

if [[ " $SKIP " != *" 4 "* ]]; then
  echo "== 4. embedded against distributed, 1,000 derivations, 4 slots"
  stop_all
  t0=$(date +%s.%N)
  XDG_CACHE_HOME="$T/emb" "$KILN" build "$GRAPH" -A root --arg busybox "$T/busybox" -j 4 \
    --store "$T/emb-store" --no-out-link >/dev/null 2>"$T/emb.log" || { tail "$T/emb.log"; exit 1; }
  t1=$(date +%s.%N)
  emb=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
  farm 4 1
  dist=$(submit "$GRAPH" -A root)
  echo "   embedded ${emb}s, distributed ${dist}s: distributed/embedded $(python3 -c "print(f'{$dist / $emb:.2f}')")"
fi
stop_all
for v in $(rabbitmqctl list_vhosts -q 2>/dev/null | grep "^kiln-bench-.*-$$\$"); do rabbitmqctl delete_vhost "$v" >/dev/null; done
