#!/usr/bin/env bash
# Store benchmark: existence of 10,000 paths (batched vs one request per
# path) and 1 GiB NAR throughput through the store vs raw S3 requests.
# Needs the S3 settings of scripts/provision-services.sh (sourced from
# $KILN_CI_STATE/s3.env when not already in the environment).
# KILN_BENCH_NAR_MIB and KILN_BENCH_PATHS shrink the run; KILN_BENCH_ROUNDS
# (default 3) repeats the throughput comparison and reports the median
# ratios; KILN_BENCH_NAR_DATA picks the NAR's content: `random`
# (incompressible, the worst case for the store), `text` (compresses like
# source code) or `both` (the default: one run of each).
#
# KILN_BENCH_PIN (default `auto`): when the S3 server is the local Garage
# that provisioning started, it is pinned to the first CPU and the
# benchmark to the others for the run, as if the server were on another
# host (as S3 is in production). Unpinned on a 2-core machine, server and
# client threads land on the same core by turns and the figures measure the
# scheduler's placement more than either side. `0` leaves both unpinned.
set -euo pipefail
cd "$(dirname "$0")/.."
state="${KILN_CI_STATE:-/var/lib/kiln-ci}"
if [ -z "${KILN_S3_ENDPOINT:-}" ]; then
    set -a
    # shellcheck disable=SC1091
    . "$state/s3.env"
    set +a
fi
cargo build --release -p kiln-store --example store_bench
bench=(target/release/examples/store_bench)

pin=${KILN_BENCH_PIN:-auto}
garage_pid=$(cat "$state/garage/garage.pid" 2>/dev/null || true)
cpus=$(nproc)
case "$pin" in
auto)
    pin=0
    if [ -n "$garage_pid" ] && [ "$cpus" -ge 2 ] && kill -0 "$garage_pid" 2>/dev/null &&
        [[ "$KILN_S3_ENDPOINT" == http://127.0.0.1:* || "$KILN_S3_ENDPOINT" == http://localhost:* ]]; then
        pin=1
    fi
    ;;
0 | 1) ;;
*)
    echo "KILN_BENCH_PIN=$pin: auto, 0 or 1" >&2
    exit 2
    ;;
esac
if [ "$pin" = 1 ]; then
    [ -n "$garage_pid" ] || { echo "KILN_BENCH_PIN=1: no Garage pid in $state/garage" >&2; exit 2; }
    [ "$cpus" -ge 2 ] || { echo "KILN_BENCH_PIN=1: needs at least 2 CPUs" >&2; exit 2; }
    before=$(taskset -p -c "$garage_pid" | sed 's/.*: //')
    # Restore the server's CPUs however the run ends.
    trap 'taskset -a -p -c "$before" "$garage_pid" >/dev/null' EXIT
    trap 'exit 130' INT TERM
    taskset -a -p -c 0 "$garage_pid" >/dev/null
    bench=(taskset -c "1-$((cpus - 1))" "${bench[@]}")
    echo "pinned: Garage (pid $garage_pid) to CPU 0, the benchmark to CPUs 1-$((cpus - 1))"
else
    echo "not pinned: server and benchmark share all $cpus CPUs"
fi

data=${KILN_BENCH_NAR_DATA:-both}
case "$data" in
both) kinds=(random text) ;;
random | text) kinds=("$data") ;;
*)
    echo "KILN_BENCH_NAR_DATA=$data: random, text or both" >&2
    exit 2
    ;;
esac
first=1
for kind in "${kinds[@]}"; do
    echo "== NAR content: $kind"
    # The existence check does not depend on the NAR: run it once.
    KILN_BENCH_NAR_DATA=$kind KILN_BENCH_SKIP_EXISTS=$((1 - first)) "${bench[@]}"
    first=0
done
