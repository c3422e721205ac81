#!/usr/bin/env bash
# The checks of a short GPU loan in one command (make gpu-session; about 8 minutes on an
# H100/H200 with 16 cores), for a session with minutes of device time where `make gpu-check`
# (the whole CUDA suite, four sanitizer passes, the full GPU benchmark suite) does not fit:
#   1. build with CUDA for this GPU, in place (no network),
#   2. the CUDA tests (tests/test_cuda.py),
#   3. compute-sanitizer racecheck and synccheck over the persistent kernels (tensor-core
#      and TF32 products, projection, packed sequences, the barrier probe),
#   4. the grid barrier latency (bench/persistent_floor.py),
#   5. the rows of issue 6's goals (and its variants at the goal shape), fused (standard and
#      persistent) against cuDNN,
#   6. the quick benchmark suite on the GPU.
# Everything goes to $OUT (default build/gpu-session): logs, JSON, markdown; a summary at
# the end. Each step has its own time limit, so one slow step cannot eat the session.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
out=${OUT:-build/gpu-session}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 8)}
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" \
    2>/dev/null) || {
    echo "gpu-session: no CUDA device visible to torch" >&2
    exit 1
  }
  export TORCH_CUDA_ARCH_LIST
fi
summary=$out/summary.md
echo "# gpu-session $(date -u +%Y-%m-%dT%H:%MZ), TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST" >"$summary"
status=0

step() {  # step NAME SECONDS LOG COMMAND...
  local name=$1 limit=$2 log=$3
  shift 3
  local t0=$SECONDS rc=0
  echo "== gpu-session: $name (limit ${limit} s)"
  timeout "$limit" "$@" >"$out/$log" 2>&1 || rc=$?
  tail -n 4 "$out/$log"
  echo "- $name: $([ $rc -eq 0 ] && echo passed || echo "FAILED (exit $rc)") in $((SECONDS - t0)) s, log $log" >>"$summary"
  [ $rc -eq 0 ] || status=1
  return $rc
}

step "build" 420 build.log env FUSEDRNN_CUDA=1 "$PYTHON" setup.py build_ext --inplace || {
  cat "$summary"
  exit 1
}
step "CUDA tests" 300 tests.log "$PYTHON" -m pytest -q -m cuda tests/test_cuda.py
sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
subset="persistent and (tensor_core_tiles or tf32_where_allowed or projection_wider or (packed_multilayer and float16)) or grid_barrier_probe"
for tool in racecheck synccheck; do
  step "compute-sanitizer $tool (persistent kernels)" 240 "sanitizer-$tool.log" \
    env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool "$tool" --error-exitcode 1 \
    --target-processes all "$PYTHON" -m pytest -q -x -m cuda tests/test_cuda.py -k "$subset"
done
step "grid barrier latency" 120 persistent-floor.log "$PYTHON" bench/persistent_floor.py --out "$out"
step "issue 6 goal rows vs cuDNN" 300 goals.log "$PYTHON" bench/run.py --device cuda --cell lstm,gru \
  --dtype float16,bfloat16 -T 1024 -N 16 -H 768 --mode inference,training --layers 1,2 --dirs 1,2 \
  --baselines nn-cudnn,fused-persistent --budget 0.2 --out "$out" --name goals --no-plots
step "issue 6 variant rows" 150 variants.log "$PYTHON" bench/run.py --device cuda --cell lstm,gru \
  --variant plain,peephole,coupled,peephole+coupled,reset_before --dtype float16 -T 1024 -N 16 -H 768 \
  --mode inference,training --layers 1 --dirs 1 --baselines nn-cudnn,fused-persistent --budget 0.2 \
  --out "$out" --name goal-variants --no-plots
step "quick suite on the GPU" 300 quick.log "$PYTHON" bench/run.py --suite quick --device cuda --out "$out" \
  --name quick-gpu
echo "gpu-session: summary ($summary)"
cat "$summary"
exit $status
