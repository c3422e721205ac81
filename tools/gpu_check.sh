#!/usr/bin/env bash
# make gpu-check, on a machine with an NVIDIA GPU (offline is fine: torch with
# CUDA, nvcc and ninja must already be there):
#   1. builds the extension with CUDA (TORCH_CUDA_ARCH_LIST defaults to the GPU's),
#   2. runs the CUDA tests (every test marked cuda),
#   3. runs compute-sanitizer's memcheck, racecheck, initcheck and synccheck over
#      a subset of them that reaches every kernel and indexing path, with the
#      caching allocator off,
#   4. measures the grid barrier latency of the persistent kernels,
#   5. runs the GPU benchmark suite,
# and writes a short report to bench/results/<machine>/gpu-check-<date>.md with
# the device, the versions, the date and the outcome of each step. Exits non-zero
# if any step failed. Extra arguments go to the CUDA test run.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu-check: no CUDA device visible to torch" >&2
  exit 1
fi
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  export TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}

machine=$("$PYTHON" -c "import torch, re; print(re.sub('[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
stamp=$(date -u +%Y-%m-%dT%H%MZ)
outdir=bench/results/$machine
mkdir -p "$outdir"
report=$outdir/gpu-check-$stamp.md
logdir=build/gpu-check
mkdir -p "$logdir"
declare -a results=()
status=0

step() {  # step NAME LOGFILE COMMAND...
  local name=$1 log=$2
  shift 2
  local t0=$SECONDS
  echo "== gpu-check: $name"
  if "$@" >"$log" 2>&1; then
    results+=("| $name | passed | $((SECONDS - t0)) s | \`$log\` |")
  else
    results+=("| $name | FAILED | $((SECONDS - t0)) s | \`$log\` |")
    status=1
  fi
  tail -n 5 "$log"
}

step "build (FUSEDRNN_CUDA=1, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)" "$logdir/build.log" \
  env FUSEDRNN_CUDA=1 "$PYTHON" setup.py build_ext --inplace
step "CUDA tests" "$logdir/tests.log" "$PYTHON" -m pytest -q -m cuda tests "$@"

sanitizer=$(command -v compute-sanitizer || true)
[ -z "$sanitizer" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ] && \
  sanitizer=${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer
# One dtype per family, packed and padded, cells, chunks, the grid-stride case
# and the tensor-core products: every kernel and every indexing path, at a size
# the sanitizer can afford.
subset="(matches_reference and (float32 or float16) and not bidirectional) or packed_sequence or chunks or operators_match_cpu or tensor_core_tiles or tf32_where_allowed or grid_barrier_probe"
if [ -n "$sanitizer" ]; then
  for tool in memcheck racecheck initcheck synccheck; do
    step "compute-sanitizer $tool" "$logdir/sanitizer-$tool.log" \
      env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool "$tool" --error-exitcode 1 \
      --target-processes all "$PYTHON" -m pytest -q -x -m cuda tests/test_cuda.py -k "$subset"
  done
else
  results+=("| compute-sanitizer | not found | | |")
  status=1
fi

step "grid barrier latency (bench/persistent_floor.py)" "$logdir/persistent-floor.log" \
  "$PYTHON" bench/persistent_floor.py

if [ -f bench/run.py ]; then
  step "GPU benchmark suite" "$logdir/bench.log" "$PYTHON" bench/run.py --suite gpu --update-readme
else
  results+=("| GPU benchmark suite | bench/run.py missing | | |")
  status=1
fi

{
  echo "# gpu-check on $machine, $stamp"
  echo
  echo '```'
  "$PYTHON" - <<'PY'
import json, platform, torch, fusedrnn
info = fusedrnn.backend_info()
print("device:", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
print("python", platform.python_version(), "fusedrnn", fusedrnn.__version__)
print("build:", json.dumps(info))
PY
  echo '```'
  echo
  echo "| step | result | time | log |"
  echo "|---|---|---|---|"
  printf '%s\n' "${results[@]}"
  echo
  echo "Logs are under $logdir (not committed); the benchmark's own records are in $outdir."
} >"$report"
cat "$report"
exit $status
