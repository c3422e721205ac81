#!/usr/bin/env bash
# Runs the CUDA standard path without a GPU: the torch layer (csrc/torch/rnn_cuda.cpp)
# and the step kernels (csrc/kernels/cuda/*.cu, every block and thread run in turn
# on the host) are built by the host compiler into build/cuda_emul/, wired so that
# CPU tensors take that path, and tests/test_cuda.py runs against it with
# FUSEDRNN_CUDA_EMULATION=1 (the tests that need a real device skip). It checks
# the host logic, the indexing and the cell math of the kernels; not timing,
# streams, graphs or races. The normal in-place build is untouched.
# Extra arguments go to pytest (e.g. -k lstm).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
out=build/cuda_emul
pkg=$out/pkg
rm -rf "$pkg"
mkdir -p "$pkg"
cp -r fusedrnn "$pkg/"
rm -rf "$pkg"/fusedrnn/_C*.so "$pkg"/fusedrnn/__pycache__
CUDA_INCLUDE=${CUDA_HOME:-/usr/local/cuda}/include
[ -f "$CUDA_INCLUDE/cuda_runtime_api.h" ] || { echo "cuda_emulate: no CUDA headers in $CUDA_INCLUDE"; exit 1; }
if ! "$PYTHON" tools/cuda_emulation/build.py "$out" "$pkg" >"$out/build.log" 2>&1; then
  tail -50 "$out/build.log"
  echo "cuda_emulate: build failed (full log: $out/build.log)" >&2
  exit 1
fi
# From inside the package copy, so that `python -m pytest` (which puts the working
# directory first on sys.path) imports the emulation build, not the in-place one.
root=$PWD
cd "$pkg"
FUSEDRNN_CUDA_EMULATION=1 PYTHONPATH="$root/$pkg" "$PYTHON" -m pytest -q -p no:cacheprovider \
  --rootdir "$root" -c "$root/pyproject.toml" "$root/tests/test_cuda.py" "$@"
