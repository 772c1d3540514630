#!/usr/bin/env bash
# Store benchmark: existence of 10,000 paths (batched vs one request per
# path) and 1 GiB NAR throughput through the store vs raw S3 requests.
# Needs the S3 settings of scripts/provision-services.sh (sourced from
# $KILN_CI_STATE/s3.env when not already in the environment).
# KILN_BENCH_NAR_MIB and KILN_BENCH_PATHS shrink the run; KILN_BENCH_ROUNDS
# (default 3) repeats the throughput comparison and reports the median
# ratios; KILN_BENCH_NAR_DATA=text uploads a compressible NAR instead of
# random (incompressible) bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${KILN_S3_ENDPOINT:-}" ]; then
    set -a
    # shellcheck disable=SC1091
    . "${KILN_CI_STATE:-/var/lib/kiln-ci}/s3.env"
    set +a
fi
exec cargo run --release -p kiln-store --example store_bench
