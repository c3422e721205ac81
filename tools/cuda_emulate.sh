#!/usr/bin/env bash
# Runs the CUDA path (standard and persistent) without a GPU: the torch layer (csrc/torch/rnn_cuda.cpp)
# and the kernels (csrc/kernels/cuda/*.cu: a step kernel's blocks and threads run
# in turn on the host, a persistent kernel's threads as fibers with real block and
# grid barriers) are built by the host compiler into build/cuda_emul/, wired so that
# CPU tensors take that path, and tests/test_cuda.py runs against it with
# FUSEDRNN_CUDA_EMULATION=1 (the tests that need a real device skip). It checks
# the host logic, the indexing, the barriers and the cell math of the kernels,
# (shared memory starts as NaN bytes) reads of shared memory before its writes,
# (the tests fill every at::empty with NaN) reads of global memory that nothing wrote,
# and (the threads run in several orders: FRNN_EMUL_ORDER in
# tools/cuda_emulation/shim.h) races between threads of one barrier interval
# whose outcome depends on which runs first; not timing, streams or graphs.
# With FUSEDRNN_SANITIZE=address,undefined (make cuda-emulate-sanitize) the build is
# instrumented, into build/cuda_emul_san/, and the tests run under AddressSanitizer
# and UndefinedBehaviorSanitizer: a kernel's access outside a tensor or outside its
# block's shared memory, even one whose value it discards, and an access at an
# address its type may not take (each of which faults on a GPU) stop the run with
# the report.
# The normal in-place build is untouched.
# Extra arguments go to pytest (e.g. -k lstm).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
out=build/cuda_emul${FUSEDRNN_SANITIZE:+_san}
pkg=$out/pkg
rm -rf "$pkg"
mkdir -p "$pkg"
cp -r fusedrnn "$pkg/"
rm -rf "$pkg"/fusedrnn/_C*.so "$pkg"/fusedrnn/__pycache__
CUDA_INCLUDE=${CUDA_HOME:-/usr/local/cuda}/include
if [ ! -f "$CUDA_INCLUDE/cuda_runtime_api.h" ]; then
  echo "cuda-emulate: no CUDA headers in $CUDA_INCLUDE (set CUDA_HOME), skipped"
  exit 0
fi
if ! "$PYTHON" tools/cuda_emulation/build.py "$out" "$pkg" >"$out/build.log" 2>&1; then
  tail -50 "$out/build.log"
  echo "cuda_emulate: build failed (full log: $out/build.log)" >&2
  exit 1
fi
preload=
if [ -n "${FUSEDRNN_SANITIZE:-}" ]; then
  if ! nm -D --undefined-only "$pkg"/fusedrnn/_C*.so | grep __asan_init >/dev/null; then
    echo "cuda_emulate: the build is not instrumented" >&2
    exit 1
  fi
  # As tools/sanitize.sh: the runtimes preloaded into the uninstrumented interpreter.
  preload="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
  export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
  export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
fi
# From inside the package copy, so that `python -m pytest` (which puts the working
# directory first on sys.path) imports the emulation build, not the in-place one.
# --capture=sys: what the emulation or a sanitizer writes before it stops the
# process (the reason) reaches the log.
root=$PWD
cd "$pkg"
LD_PRELOAD="$preload" FUSEDRNN_CUDA_EMULATION=1 PYTHONPATH="$root/$pkg" "$PYTHON" -m pytest -q \
  --capture=sys -p no:cacheprovider --rootdir "$root" -c "$root/pyproject.toml" "$root/tests/test_cuda.py" "$@"
