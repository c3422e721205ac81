#!/usr/bin/env bash
# Builds the CPU extension with AddressSanitizer and UndefinedBehaviorSanitizer
# into build/sanitize/ (the normal in-place build is untouched) and runs the CPU
# tests against it. Extra arguments go to pytest (e.g. -k lstm).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
out=build/sanitize
pkg=$out/pkg
rm -rf "$pkg"
mkdir -p "$pkg"
cp -r fusedrnn "$pkg/"
rm -rf "$pkg"/fusedrnn/_C*.so "$pkg"/fusedrnn/__pycache__
# Only the instruction set this machine runs is built: the tests here exercise
# no other (those that set ATEN_CPU_CAPABILITY are in test_ecosystem.py).
isa=$("$PYTHON" -c "import torch; print(torch.backends.cpu.get_cpu_capability().lower())")
case "$isa" in avx2 | avx512) ;; *) isa=default ;; esac
FUSEDRNN_CPU_ISAS="$isa" FUSEDRNN_CUDA=0 FUSEDRNN_SANITIZE=address,undefined "$PYTHON" setup.py -q build_ext \
  --build-temp "$out/tmp" --build-lib "$pkg"
runtime="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
# Leak detection is off: the Python interpreter itself does not free everything
# at exit; leaks of fusedrnn's own memory are covered by tests/test_reliability.py.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_init_order=1:check_initialization_order=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# The resident-memory test is left to the normal build: ASan keeps freed blocks
# in quarantine, so resident memory grows by design under it.
# --capture=sys: a report that stops the process reaches the log.
LD_PRELOAD="$runtime" PYTHONPATH="$PWD/$pkg" "$PYTHON" -m pytest -q --capture=sys -p no:cacheprovider \
  -m "not cuda and not slow" --deselect tests/test_reliability.py::test_no_leak_over_2000_iterations \
  "${@:-tests}"
