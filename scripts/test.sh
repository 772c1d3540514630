#!/usr/bin/env bash
# Kiln's test command: provision the services (scripts/provision-services.sh),
# export their settings, build once and run every test in the workspace.
# Exits non-zero when provisioning, the build or any test fails.
#
# Extra arguments are passed to `cargo test` (e.g. `-- --nocapture`).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=${KILN_CI_STATE:-/var/lib/kiln-ci}
LOG_DIR=${KILN_TEST_LOG_DIR:-$ROOT/target/test-logs}
cd "$ROOT"

log() { printf '[%s] test: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
T0=$SECONDS

log "provisioning services"
bash "$ROOT/scripts/provision-services.sh"

# Service settings for the tests.
set -a
# shellcheck disable=SC1091
. "$STATE_DIR/s3.env"
set +a
if [ -d "$ROOT/../shared" ]; then
    KILN_SHARED=$(cd "$ROOT/../shared" && pwd)
    export KILN_SHARED
else
    log "warning: $ROOT/../shared not found; conformance tests will not find their data"
fi
log "KILN_SHARED=${KILN_SHARED:-<unset>} S3=$KILN_S3_ENDPOINT/$KILN_S3_BUCKET CI=${CI:-<unset>}"

mkdir -p "$LOG_DIR"
# Python with the parsers some Rust tests check their output with (JUnit
# XML, Prometheus text), in the deployment tests' cached venv.
log "preparing the Python test venv"
KILN_VENV_ONLY=1 bash "$ROOT/scripts/chart-test.sh"
export KILN_PYTHON=${KILN_CHART_VENV:-/var/lib/kiln-ci/venv-chart}/bin/python
# Incremental artefacts only help repeated edits; in a one-shot run they
# double the target directory.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
disk() { df -h "$ROOT" 2>/dev/null | awk 'NR == 2 { print $4 " free on " $6 }'; }
log "disk: $(disk)"
BUILD_LOG="$LOG_DIR/build.log"
TEST_LOG="$LOG_DIR/test.log"

log "building all test targets (log: $BUILD_LOG)"
T1=$SECONDS
# A crate that does not compile is reported and excluded, so the tests of
# every other crate still run (the command still fails at the end).
EXCLUDE=()
BROKEN=()
for attempt in 1 2 3 4 5; do
    if cargo test --workspace "${EXCLUDE[@]}" --no-run "$@" >"$BUILD_LOG" 2>&1; then
        break
    fi
    grep -E '^error|^ *--> ' "$BUILD_LOG" | head -n 40 >&2 || true
    mapfile -t failed < <(sed -n 's/^error: could not compile `\([^`]*\)`.*/\1/p' "$BUILD_LOG" | sort -u)
    added=0
    for crate in "${failed[@]}"; do
        if [[ " ${BROKEN[*]} " != *" $crate "* ]]; then
            BROKEN+=("$crate")
            EXCLUDE+=(--exclude "$crate")
            added=1
        fi
    done
    if [ "$added" = 0 ] || [ "$attempt" = 5 ]; then
        log "FAILED: build did not compile after $((SECONDS - T1))s (full log: $BUILD_LOG; disk: $(disk))"
        exit 1
    fi
    log "does not compile: ${BROKEN[*]}; building the rest"
done
log "build done in $((SECONDS - T1))s (target: $(du -sh "$ROOT/target" 2>/dev/null | cut -f1); disk: $(disk))"

# Lints (the workspace's [workspace.lints], warnings as errors) and the
# declared minimum Rust version; a failure fails the run at the end, after
# the tests have run.
LINT_STATUS=0
log "clippy (log: $LOG_DIR/clippy.log) and the rust-version check"
T3=$SECONDS
if ! cargo clippy --workspace --all-targets --exclude rnix -- -D warnings >"$LOG_DIR/clippy.log" 2>&1; then
    grep -E '^(warning|error)' -A5 "$LOG_DIR/clippy.log" | head -n 60 >&2 || true
    log "clippy found problems"
    LINT_STATUS=1
fi
if ! bash "$ROOT/scripts/check-msrv.sh"; then
    LINT_STATUS=1
fi
log "lint checks took $((SECONDS - T3))s"

log "running tests (log: $TEST_LOG)"
T2=$SECONDS
set +e
cargo test --workspace "${EXCLUDE[@]}" --no-fail-fast "$@" 2>&1 | tee "$TEST_LOG"
STATUS=${PIPESTATUS[0]}
set -e

# The deployment files (Helm chart, Dockerfile, compose.yaml), checked with
# real Helm and the Kubernetes schemas, against the kiln binary just built.
log "checking the deployment files (scripts/chart-test.sh)"
set +e
KILN_BIN=${KILN_BIN:-$ROOT/target/debug/kiln} bash "$ROOT/scripts/chart-test.sh" -q 2>&1 | tee "$LOG_DIR/chart-test.log"
CHART_STATUS=${PIPESTATUS[0]}
set -e

# Summary: totals over every test binary, then each failing test by name.
awk '
    /^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i + 1) ~ /^passed;?$/) pass += $i
            if ($(i + 1) ~ /^failed;?$/) fail += $i
            if ($(i + 1) ~ /^ignored;?$/) ign += $i
        }
        bins++
    }
    END { printf "SUMMARY: %d passed, %d failed, %d ignored in %d test binaries\n", pass, fail, ign, bins }
' "$TEST_LOG" >&2
FAILED=$(grep -E '^test .* \.\.\. FAILED$' "$TEST_LOG" | sed -E 's/^test (.*) \.\.\. FAILED$/  \1/' || true)
if [ -n "$FAILED" ]; then
    log "failing tests:"
    printf '%s\n' "$FAILED" >&2
fi
# Cargo lists the test binaries that failed (or did not run) after "error:".
sed -n '/^error: \([0-9]* targets\? failed\|test failed\)/,$p' "$TEST_LOG" >&2
log "tests took $((SECONDS - T2))s; total $((SECONDS - T0))s"
if [ ${#BROKEN[@]} -gt 0 ]; then
    log "FAILED: crates that do not compile (their tests did not run): ${BROKEN[*]}"
    exit 1
fi
if [ "$STATUS" -ne 0 ]; then
    log "FAILED (cargo test exit status $STATUS)"
    exit "$STATUS"
fi
if [ "$LINT_STATUS" -ne 0 ]; then
    log "FAILED: clippy or the rust-version check (log: $LOG_DIR/clippy.log)"
    exit 1
fi
if [ "$CHART_STATUS" -ne 0 ]; then
    log "FAILED: the deployment files' tests (log: $LOG_DIR/chart-test.log)"
    exit "$CHART_STATUS"
fi
log "ALL TESTS PASSED"
