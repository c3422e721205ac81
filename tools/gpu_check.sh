#!/usr/bin/env bash
# make gpu-check, on a machine with an NVIDIA GPU (offline is fine: torch with
# CUDA, nvcc and ninja must already be there):
#   build      builds the extension with CUDA (TORCH_CUDA_ARCH_LIST defaults to the GPU's),
#   tests      runs the CUDA tests (every test marked cuda; in 8 processes with pytest-xdist),
#   memcheck, racecheck, initcheck, synccheck
#              compute-sanitizer over a subset of them that reaches every kernel and indexing
#              path, with the caching allocator off,
#   floor      measures the grid barrier latency of the persistent kernels,
#   suite      runs the GPU benchmark suite (bench/run.py --suite gpu),
#   publish    writes its complete record, plots and README table (bench/results/<machine>/gpu.*),
# and writes a short report to bench/results/<machine>/gpu-check-<date>.md with the device,
# the versions, the date and the outcome of each step. Exits non-zero unless every step has
# passed. Extra arguments go to the CUDA test run.
#
# In parts, for machines lent for minutes: GPU_CHECK_BUDGET_S=S stops starting steps (and
# benchmark rows) S seconds after the call began; the next call on the same machine, with the same
# code, skips the steps that passed, resumes the suite where it stopped, and rewrites the same
# report with every step so far. GPU_CHECK_STEPS (comma list) picks steps. The state is in
# build/gpu-check/<tools/source_digest.sh>/ (a call on other code starts over); the
# suite's record is kept there until it is complete, then written to bench/results/<machine>/
# and the README.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu-check: no CUDA device visible to torch" >&2
  exit 1
fi
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  export TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}
budget=${GPU_CHECK_BUDGET_S:-0}
steps=${GPU_CHECK_STEPS:-build,tests,memcheck,racecheck,initcheck,synccheck,floor,suite,publish}

# The folder bench/run.py names for this machine (gpu-<device>).
machine=$("$PYTHON" -c "import sys; sys.path.insert(0, 'bench'); import envinfo; print(envinfo.machine_name('cuda'))")
outdir=bench/results/$machine
logdir=build/gpu-check/$(tools/source_digest.sh)
mkdir -p "$outdir" "$logdir"
state=$logdir/steps.tsv  # one line per finished step: key, result, seconds, log
[ -f "$logdir/stamp" ] || date -u +%Y-%m-%dT%H%MZ >"$logdir/stamp"
stamp=$(cat "$logdir/stamp")
report=$outdir/gpu-check-$stamp.md
touch "$state"

wanted() { [[ ",$steps," == *",$1,"* ]]; }
passed() { grep -q "^$1	passed	" "$state"; }
record() {  # record KEY RESULT SECONDS LOG: the step's latest outcome replaces any earlier one
  grep -v "^$1	" "$state" >"$state.new"
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$state.new"
  mv "$state.new" "$state"
}
left() { [ "$budget" -gt 0 ] && echo $((budget - SECONDS)) || echo 1000000; }

step() {  # step KEY LOGFILE COMMAND...
  local key=$1 log=$2
  shift 2
  wanted "$key" || return 0
  if passed "$key"; then
    echo "== gpu-check: $key passed in an earlier call, skipped"
    return 0
  fi
  if [ "$(left)" -lt 30 ]; then
    echo "== gpu-check: $key not started ($(left) s of GPU_CHECK_BUDGET_S left)"
    return 0
  fi
  local t0=$SECONDS rc=0 lim=()
  [ "$budget" -gt 0 ] && lim=(timeout -k 5 "$(left)")
  echo "== gpu-check: $key"
  ${lim[@]+"${lim[@]}"} "$@" >"$log" 2>&1 || rc=$?
  tail -n 5 "$log"
  local result=passed
  if [ "$key" = suite ] && [ $rc -eq 3 ]; then
    result="incomplete (time limit; the next call resumes it)"
  elif [ $rc -eq 124 ]; then
    result="FAILED (GPU_CHECK_BUDGET_S ran out)"
  elif [ $rc -ne 0 ]; then
    result="FAILED (exit $rc)"
  fi
  record "$key" "$result" $((SECONDS - t0)) "$log"
}

step build "$logdir/build.log" env FUSEDRNN_CUDA=1 "$PYTHON" setup.py build_ext --inplace
parallel=()
"$PYTHON" -c "import xdist" 2>/dev/null && parallel=(-n 8)
step tests "$logdir/tests.log" "$PYTHON" -m pytest -q -rfE ${parallel[@]+"${parallel[@]}"} -m cuda tests "$@"

sanitizer=$(command -v compute-sanitizer || true)
[ -z "$sanitizer" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ] && \
  sanitizer=${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer
# One dtype per family, packed and padded, cells, chunks, the grid-stride case
# and the tensor-core products: every kernel and every indexing path, at a size
# the sanitizer can afford.
subset="(matches_reference and (float32 or float16) and not bidirectional) or packed_sequence or chunks or operators_match_cpu or tensor_core_tiles or tf32_where_allowed or grid_barrier_probe"
for tool in memcheck racecheck initcheck synccheck; do
  if [ -n "$sanitizer" ]; then
    step "$tool" "$logdir/sanitizer-$tool.log" \
      env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool "$tool" --error-exitcode 1 \
      --target-processes all "$PYTHON" -m pytest -q -x --durations=20 -m cuda tests/test_cuda.py -k "$subset"
  elif wanted "$tool"; then
    record "$tool" "FAILED (compute-sanitizer not found)" 0 -
  fi
done

step floor "$logdir/persistent-floor.log" "$PYTHON" bench/persistent_floor.py

# The suite's record stays in $logdir until it has every row; an earlier call of this check at
# this commit left it there when it stopped at its time limit.
resume=()
[ -f "$logdir/gpu.json" ] && resume=(--resume "$logdir/gpu.json")
suite_limit=()
if [ "$budget" -gt 0 ]; then
  # Rows start until 90 s before the budget ends (a row takes up to about 30 s; set-up and
  # saving take the rest).
  suite_limit=(--time-limit $(($(left) - 90)))
  [ "$(left)" -lt 120 ] && steps=${steps//suite/suite-not-now}
fi
step suite "$logdir/bench.log" "$PYTHON" bench/run.py --suite gpu --out "$logdir" --name gpu --no-plots \
  ${suite_limit[@]+"${suite_limit[@]}"} ${resume[@]+"${resume[@]}"}
# The complete record, rendered with its plots where the results live, and into the README.
passed suite || steps=${steps//publish/publish-not-yet}
step publish "$logdir/publish.log" "$PYTHON" bench/run.py --resume "$logdir/gpu.json" --out "$outdir" \
  --update-readme

all="build tests memcheck racecheck initcheck synccheck floor suite publish"
status=0
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
  for key in $all; do
    line=$(grep "^$key	" "$state" || true)
    if [ -z "$line" ]; then
      echo "| $key | not run | | |"
      status=1
    else
      IFS=$'\t' read -r _ result secs log <<<"$line"
      echo "| $key | $result | $secs s | \`$log\` |"
      [ "$result" = passed ] || status=1
    fi
  done
  echo
  echo "Logs are under $logdir (not committed); the benchmark's own records are in $outdir."
  [ $status -eq 0 ] && echo "Every step passed." || echo "Not every step has passed (yet)."
} >"$report"
cat "$report"
exit $status
