#!/usr/bin/env bash
# Syntax check of the CUDA build's host C++ without a CUDA torch: compiles
# csrc/torch/rnn_cuda.cpp (and the files with FUSEDRNN_WITH_CUDA branches,
# rnn_layer.cpp and module.cpp) with -fsyntax-only against the installed torch's
# headers and the CUDA toolkit's headers, as setup.py would with a CUDA torch.
# This works because rnn_cuda.cpp includes only ATen/c10 headers that need no
# cuBLAS (never ATen/cuda/CUDAContext.h). A CPU-only torch wheel lacks the
# generated c10/cuda/impl/cuda_cmake_macros.h, so C10_CUDA_NO_CMAKE_CONFIGURE_FILE
# is defined when it is missing. Fails on an error, or on a warning in csrc/.
# Both C++17 (older torch builds extensions with it) and C++20 (torch 2.13).
# --quick: rnn_cuda.cpp alone (what tools/cuda_compile_check.sh runs).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CXX=${CXX:-g++}
cuda=${CUDA_HOME:-/usr/local/cuda}
if [ ! -f "$cuda/include/cuda_runtime_api.h" ]; then
  echo "check_cuda_host: no CUDA headers in $cuda/include (set CUDA_HOME)" >&2
  exit 1
fi
read -r -a torch_inc <<<"$("$PYTHON" -c 'import torch.utils.cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths()))')"
py_inc=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
defines=(-DFUSEDRNN_WITH_CUDA -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C)
if ! "$PYTHON" - <<'PY'
import os, sys, torch.utils.cpp_extension as c
sys.exit(0 if any(os.path.exists(os.path.join(p, "c10/cuda/impl/cuda_cmake_macros.h")) for p in c.include_paths()) else 1)
PY
then
  defines+=(-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE)
fi

sources=(csrc/torch/rnn_cuda.cpp csrc/torch/rnn_layer.cpp csrc/torch/module.cpp)
[ "${1:-}" = "--quick" ] && sources=(csrc/torch/rnn_cuda.cpp)

# One check per standard and source, side by side (each is a single-threaded
# compile of the torch headers); the reports in order.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
checks=()
i=0
for std in c++17 c++20; do
  for src in "${sources[@]}"; do
    cmd=("$CXX" "-std=$std" -fsyntax-only -Wall -Wextra -Wno-unused-parameter "${defines[@]}"
         "${torch_inc[@]}" "-I$py_inc" "-I$cuda/include" "$src")
    ( "${cmd[@]}" >"$tmp/$i.out" 2>&1; echo $? >"$tmp/$i.rc" ) &
    checks+=("$std $src")
    i=$((i + 1))
  done
done
wait

status=0
for i in "${!checks[@]}"; do
  read -r std src <<<"${checks[$i]}"
  out=$(cat "$tmp/$i.out")
  if [ "$(cat "$tmp/$i.rc")" != 0 ]; then
    echo "$out"
    echo "check_cuda_host: $src ($std): errors" >&2
    status=1
  elif grep -q "^csrc/.*warning:" <<<"$out"; then
    grep -A3 "^csrc/.*warning:" <<<"$out"
    echo "check_cuda_host: $src ($std): warnings in our code" >&2
    status=1
  else
    echo "check_cuda_host: $src ($std) ok"
  fi
done
[ $status -eq 0 ] && echo "check_cuda_host: command: ${cmd[*]}"
exit $status
