#!/usr/bin/env bash
# Tests of the deployment files: the Helm chart (charts/kiln), the
# Dockerfile, .dockerignore and compose.yaml (tests/chart/). Installs their
# PyPI dependencies into a cached virtualenv, then runs pytest.
#
#   bash scripts/chart-test.sh                   # everything
#   bash scripts/chart-test.sh -m 'not kiln_cli' # all but the kiln command-line checks
#   bash scripts/chart-test.sh -k keda -x        # any pytest arguments
#
# The command-line checks run the kiln binary named by KILN_BIN, else
# $CARGO_TARGET_DIR (or target)/release/kiln, else .../debug/kiln. Under
# CI=true a missing dependency (the binary, a Garage for the compose init
# script, a Python package) fails the run instead of skipping a test.
#
# Environment: KILN_CHART_VENV (default /var/lib/kiln-ci/venv-chart);
# KILN_VENV_ONLY=1 only prepares the venv.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${KILN_CHART_VENV:-/var/lib/kiln-ci/venv-chart}
REQUIREMENTS="$ROOT/tests/chart/requirements.txt"
STAMP="$VENV/.kiln-requirements"

log() { printf '[%s] chart-test: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

PYTHON=$(command -v python3 || true)
if [ -z "$PYTHON" ]; then
    log "python3 not found (3.11 or newer is needed)"
    exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    log "$("$PYTHON" --version) is too old: 3.11 or newer is needed (tomllib)"
    exit 1
fi

# The venv is rebuilt when requirements.txt changes.
if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQUIREMENTS" "$STAMP"; then
    log "installing $(grep -c '^[a-z]' "$REQUIREMENTS") packages into $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv --clear "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    cp "$REQUIREMENTS" "$STAMP"
fi
# KILN_VENV_ONLY=1: prepare the venv (scripts/test.sh does, for the Rust
# tests that parse with Python) and stop.
if [ -n "${KILN_VENV_ONLY:-}" ]; then
    exit 0
fi

if [ -z "${KILN_BIN:-}" ]; then
    target=${CARGO_TARGET_DIR:-$ROOT/target}
    for candidate in "$target/release/kiln" "$target/debug/kiln"; do
        if [ -x "$candidate" ]; then
            KILN_BIN=$candidate
            break
        fi
    done
fi
if [ -n "${KILN_BIN:-}" ]; then
    export KILN_BIN
    log "kiln binary: $KILN_BIN"
else
    log "no kiln binary (set KILN_BIN or build it); the command-line checks will say so"
fi

cd "$ROOT"
exec "$VENV/bin/python" -m pytest tests/chart -p no:cacheprovider --strict-markers -ra "$@"
