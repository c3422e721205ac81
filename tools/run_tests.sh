#!/usr/bin/env bash
# make test: every test, with the compile-bound steps beside the test runs that
# use about one core, so that a 2-core machine stays busy:
#   cuda-check (nvcc)                beside  pytest, then ctest
#   sanitize-ci (ASan build, tests)  beside  cuda-emulate
# A step that runs beside another writes to build/test-logs/<step>.log, printed
# when it ends. Exits non-zero if any step failed, naming them.
set -uo pipefail
cd "$(dirname "$0")/.."
MAKE=${MAKE:-make}
logs=build/test-logs
mkdir -p "$logs"
"$MAKE" --no-print-directory deps || exit 1
failed=()

beside() {  # beside STEP: starts `make STEP` in the background, its pid in $bg
  "$MAKE" --no-print-directory "$1" >"$logs/$1.log" 2>&1 &
  bg=$!
}
finish() {  # finish STEP PID: waits for it and prints its log
  local rc=0
  wait "$2" || rc=$?
  echo "== $1 (run beside the tests above; log $logs/$1.log)"
  cat "$logs/$1.log"
  [ $rc -eq 0 ] || failed+=("$1")
}
run() {  # run STEP
  echo "== $1"
  "$MAKE" --no-print-directory "$1" || failed+=("$1")
}

beside cuda-check
cc=$bg
run pytest
run ctest
finish cuda-check "$cc"
beside sanitize-ci
sz=$bg
run cuda-emulate
finish sanitize-ci "$sz"

if [ ${#failed[@]} -gt 0 ]; then
  echo "make test: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "make test: every step passed (pytest, ctest, cuda-check, cuda-emulate, sanitize-ci)"
