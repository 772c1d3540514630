#!/usr/bin/env bash
# Run every `eval-okay` case of the Nix 2.8 language suite with one tool, the
# way Nix's own runner (tests/lang.sh) does; see nix-lang-tests/README.md.
# Used by bench/eval_bench.sh, which times whole loops of this script.
#
# Usage: lang_suite.sh SUITE_DIR RESULT_FILE TOOL [TOOL_ARGS...]
#   TOOL is called like nix-instantiate, e.g. `nix-instantiate` or
#   `target/release/kiln instantiate`.
#   RESULT_FILE "-": only run the cases, outputs discarded (for timing).
#   Otherwise compare each output with its `.exp` / `.exp.xml` and write
#   "PASSED TOTAL" to RESULT_FILE, and the names of failing cases, one per
#   line, to RESULT_FILE.failed.
# A failing case never stops the loop; the exit status is 0 unless the
# arguments are wrong.
set -uo pipefail

if [ $# -lt 3 ] || [ ! -d "$1" ]; then
  echo "usage: $0 SUITE_DIR RESULT_FILE TOOL [TOOL_ARGS...]" >&2
  exit 2
fi
SUITE=$(cd "$1" && pwd)
RESULT=$2
shift 2

# The cases' flags and NIX_PATH name the suite `lang/`, relative to the
# directory above it: recreate that layout with a symlink.
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kiln-lang.XXXXXX")
trap 'rm -rf "$RUN_DIR"' EXIT
ln -s "$SUITE" "$RUN_DIR/lang"
cd "$RUN_DIR" || exit 2
export TEST_VAR=foo NIX_PATH=lang/dir3:lang/dir4

passed=0 total=0
: > "$RUN_DIR/failed"
for nix_file in lang/eval-okay-*.nix; do
  name=${nix_file%.nix}
  flags=()
  if [ -f "$name.flags" ]; then
    read -r -a flags < "$name.flags"
  fi
  for kind in plain xml; do
    if [ "$kind" = plain ]; then
      exp="$name.exp"
      mode=(--eval --strict)
    else
      exp="$name.exp.xml"
      mode=(--eval --xml --no-location --strict)
    fi
    [ -f "$exp" ] || continue
    total=$((total + 1))
    if [ "$RESULT" = - ]; then
      "$@" "${flags[@]}" "${mode[@]}" "$nix_file" > /dev/null 2>&1
    elif "$@" "${flags[@]}" "${mode[@]}" "$nix_file" 2> /dev/null \
        | cmp -s - "$exp"; then
      passed=$((passed + 1))
    else
      echo "${exp#lang/}" >> "$RUN_DIR/failed"
    fi
  done
done

if [ "$RESULT" != - ]; then
  echo "$passed $total" > "$RESULT"
  cp "$RUN_DIR/failed" "$RESULT.failed"
fi
exit 0
