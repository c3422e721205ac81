#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (make gpu-check): the CUDA tests
# (tests/test_cuda.py, every test marked cuda), then a subset of them under
# compute-sanitizer's memcheck (out-of-bounds and misaligned accesses, launch
# errors), where the toolkit has it. Extra arguments go to the first pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu-check: no CUDA device visible to torch" >&2
  exit 1
fi
if ! "$PYTHON" -c "import sys, fusedrnn; sys.exit(0 if fusedrnn.backend_info()['cuda_compiled'] else 1)"; then
  echo "gpu-check: fusedrnn._C was built without CUDA (torch with CUDA and nvcc needed at build time)" >&2
  exit 1
fi
"$PYTHON" -c "import fusedrnn, json; print(json.dumps(fusedrnn.backend_info()))"
"$PYTHON" -m pytest -q -m cuda tests "$@"

sanitizer=$(command -v compute-sanitizer || true)
[ -z "$sanitizer" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ] && \
  sanitizer=${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer
if [ -z "$sanitizer" ]; then
  echo "gpu-check: compute-sanitizer not found, memcheck skipped"
  exit 0
fi
# One dtype per family, packed and padded, cells, chunks and the grid-stride
# case: every kernel and every indexing path, at a size the sanitizer can afford.
# PYTORCH_NO_CUDA_MEMORY_CACHING makes each buffer its own allocation, so an
# access past a buffer's end is caught instead of landing in a neighbour.
PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --error-exitcode 1 --target-processes all \
  "$PYTHON" -m pytest -q -x -m cuda tests/test_cuda.py \
  -k "(matches_reference and (float32 or float16) and not bidirectional) or packed_sequence or chunks or operators_match_cpu"
