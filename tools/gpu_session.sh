#!/usr/bin/env bash
# The checks of a short GPU loan (make gpu-session), for a session with minutes of device
# time where `make gpu-check` (the whole CUDA suite, four sanitizer passes, the full GPU
# benchmark suite) does not fit one call. Steps, most valuable first:
#   build      build with CUDA for this GPU, in place (no network),
#   tests      the CUDA tests (tests/test_cuda.py),
#   trace      where a step of the persistent kernels spends its time, from their own step
#              trace (bench/persistent_trace.py): issue 6's goal rows (the tensor-core
#              product's operand staged and direct) and the small float32 rows,
#   steps      where a call's time goes, by torch.profiler (bench/step_profile.py): wall time
#              against the GPU's busy time and the kernels, standard path, persistent path
#              and cuDNN, on the shapes where the standard path was slower than cuDNN,
#   floor      the grid barrier latency (bench/persistent_floor.py),
#   goals      the rows of issue 6's goals, fused (standard and persistent) against cuDNN,
#   variants   issue 6's variant rows at the goal shape,
#   profile    Nsight Compute on issue 6's case 1 (bench/persistent_profile.py): the
#              persistent LSTM kernels, forward and backward,
#   grid       the persistent path in one block against slices over many blocks and cuDNN, on
#              small layers around auto's switch between them, and staged against direct
#              (bench/persistent_grid.py),
#   quick      the quick benchmark suite on the GPU,
#   racecheck  compute-sanitizer racecheck over the persistent kernels (one small case per
#              kernel: tensor-core tiles, the projection), and
#   synccheck  synccheck over more of them (TF32, packed sequences, the barrier probe).
# Not in the default list, for later calls:
#   memcheck, initcheck  those two tools over the same subset as synccheck, and
#   suite      the `gpu` benchmark suite, stopped in time (--time-limit) and resumed by the next
#              call (--resume build/gpu-session/gpu-<source digest>.json) until it has every row.
# GPU_SESSION_STEPS (comma list) picks steps; a later call on the same (still warm) machine
# finds the build in place, e.g. GPU_SESSION_STEPS=memcheck,initcheck,suite.
#
# The whole run keeps to SESSION_BUDGET_S seconds (default 540, for a 600-second call): each
# step's time limit is cut to what is left, and a step that cannot start in time is skipped.
# The device tool returns at most 8 files from $OUT, so everything (logs, JSON, markdown,
# plots) is written under build/gpu-session and, after every step, $OUT receives just two
# files: summary.md and gpu-session.tar.gz (all of build/gpu-session). A run killed at its
# limit still returns what the finished steps wrote.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=build/gpu-session
out=${OUT:-build/gpu-session-out}
budget=${SESSION_BUDGET_S:-540}
steps=${GPU_SESSION_STEPS:-build,tests,trace,steps,floor,goals,variants,profile,grid,quick,racecheck,synccheck}
mkdir -p "$work" "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 8)}
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" \
    2>/dev/null) || {
    echo "gpu-session: no CUDA device visible to torch" >&2
    exit 1
  }
  export TORCH_CUDA_ARCH_LIST
fi
summary=$work/summary.md
echo "# gpu-session $(date -u +%Y-%m-%dT%H:%MZ), TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, steps $steps, budget ${budget} s" >"$summary"
"$PYTHON" -c "import torch; print('- torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', \
torch.backends.cudnn.version(), 'device', torch.cuda.get_device_name())" >>"$summary" 2>&1
status=0

publish() {  # summary.md and the tarball of everything into $OUT
  cp "$summary" "$out/summary.md"
  tar -czf "$out/gpu-session.tar.gz.part" -C "$(dirname "$work")" "$(basename "$work")" &&
    mv "$out/gpu-session.tar.gz.part" "$out/gpu-session.tar.gz"
}

wanted() { [[ ",$steps," == *",$1,"* ]]; }

step() {  # step KEY NAME SECONDS LOG COMMAND...
  local key=$1 name=$2 limit=$3 log=$4
  shift 4
  wanted "$key" || return 0
  local left=$((budget - SECONDS - 10))
  if [ "$left" -lt 20 ]; then
    echo "- $name: skipped (${left} s of the budget left)" >>"$summary"
    publish
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS rc=0
  echo "== gpu-session: $name (limit ${limit} s)"
  timeout -k 5 "$limit" "$@" >"$work/$log" 2>&1 || rc=$?
  tail -n 4 "$work/$log"
  local result=passed
  if [ "$key" = suite ] && [ $rc -eq 3 ]; then
    result="incomplete (its time limit; the next call with this step resumes it)"
    rc=0
  elif [ $rc -ne 0 ]; then
    result="FAILED (exit $rc$([ $rc -eq 124 ] && echo ', time limit'))"
  fi
  echo "- $name: $result in $((SECONDS - t0)) s, log $log" >>"$summary"
  [ $rc -eq 0 ] || status=1
  publish
  return $rc
}

step build "build" 420 build.log env FUSEDRNN_CUDA=1 "$PYTHON" setup.py build_ext --inplace || {
  cat "$summary"
  exit 1
}
# With pytest-xdist (on the lent machines) the tests run in 8 processes, and a test that
# crashes its process fails alone instead of ending the run.
parallel=()
"$PYTHON" -c "import xdist" 2>/dev/null && parallel=(-n 8)
step tests "CUDA tests" 300 tests.log "$PYTHON" -m pytest -q -rfE ${parallel[@]+"${parallel[@]}"} -m cuda \
  tests/test_cuda.py
step trace "persistent kernels' step trace" 120 persistent-trace.log "$PYTHON" bench/persistent_trace.py \
  --out "$work"
step steps "where a call's time goes (torch.profiler)" 150 step-profile.log "$PYTHON" bench/step_profile.py \
  --out "$work"
step floor "grid barrier latency" 120 persistent-floor.log "$PYTHON" bench/persistent_floor.py --out "$work"
step goals "issue 6 goal rows vs cuDNN" 300 goals.log "$PYTHON" bench/run.py --device cuda --cell lstm,gru \
  --dtype float16,bfloat16 -T 1024 -N 16 -H 768 --mode inference,training --layers 1,2 --dirs 1,2 \
  --baselines nn-cudnn,fused-persistent,fused-standard --budget 0.2 --out "$work" --name goals --no-plots
step variants "issue 6 variant rows" 150 variants.log "$PYTHON" bench/run.py --device cuda --cell lstm,gru \
  --variant plain,peephole,coupled,peephole+coupled,reset_before --dtype float16 -T 1024 -N 16 -H 768 \
  --mode inference,training --layers 1 --dirs 1 --baselines nn-cudnn,fused-persistent,fused-standard --budget 0.2 \
  --out "$work" --name goal-variants --no-plots
# Case 1's forward is two launches (chunks of its input projection), then the backward:
# -c 3 profiles the first call's three.
ncu=$(command -v ncu || echo "${CUDA_HOME:-/usr/local/cuda}/bin/ncu")
step profile "Nsight Compute, case 1 on the persistent path" 150 profile.log \
  "$ncu" --clock-control none -k regex:lstm_persistent -c 3 --import-source yes \
  --section SpeedOfLight --section LaunchStats --section Occupancy --section ComputeWorkloadAnalysis \
  --section MemoryWorkloadAnalysis --section SchedulerStats --section WarpStateStats \
  --section SourceCounters -o "$work/case1" -f "$PYTHON" bench/persistent_profile.py --calls 2 --backward
wanted profile && [ -f "$work/case1.ncu-rep" ] && "$ncu" --import "$work/case1.ncu-rep" --print-summary none \
  >"$work/profile.txt" 2>&1 && publish
step grid "one block against many (persistent path)" 90 persistent-grid.log "$PYTHON" bench/persistent_grid.py \
  --out "$work"
step quick "quick suite on the GPU" 300 quick.log "$PYTHON" bench/run.py --suite quick --device cuda \
  --out "$work" --name quick-gpu
# racecheck costs about 40 s a test on the packed multi-layer cases (seen on an H200), so it
# gets one small case per kernel, 16-bit on tensor cores (direct and staged) and float32 on
# CUDA cores;
# synccheck, fast, gets the wider subset (and memcheck, initcheck, when asked for).
# --durations sizes the next run's subsets.
sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
race_subset="persistent and ((tensor_core_tiles and 33-71 and not bfloat16) or (projection_wider and padded) \
or (hidden_and_batch_sizes and 3-70 and float32) or (staged_operand and 33-72))"
sync_subset="persistent and (tensor_core_tiles or tf32_where_allowed or projection_wider or staged_operand \
or (packed_multilayer and float16)) or grid_barrier_probe"
for tool in racecheck synccheck memcheck initcheck; do
  subset=$sync_subset
  [ "$tool" = racecheck ] && subset=$race_subset
  step "$tool" "compute-sanitizer $tool (persistent kernels)" 240 "sanitizer-$tool.log" \
    env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool "$tool" --error-exitcode 1 \
    --target-processes all "$PYTHON" -m pytest -q -x --durations=0 -m cuda tests/test_cuda.py -k "$subset"
done
# The gpu suite in parts: each call starts rows until 90 s before its budget ends (a T=1024
# row takes up to about 30 s with the reference and the cell loop, and the set-up, the save and
# the step's own margin take the rest), then the next call resumes. The record is this code's
# (tools/source_digest.sh: other code starts its own).
if wanted suite; then
  record=$work/gpu-$(tools/source_digest.sh).json
  resume=()
  [ -f "$record" ] && resume=(--resume "$record")
  left=$((budget - SECONDS - 90))
  if [ "$left" -ge 30 ]; then
    step suite "gpu benchmark suite (resumable)" $((left + 80)) suite.log "$PYTHON" bench/run.py --suite gpu \
      --out "$work" --name "$(basename "$record" .json)" --time-limit "$left" ${resume[@]+"${resume[@]}"}
  else
    echo "- gpu benchmark suite: skipped (${left} s of the budget left)" >>"$summary"
  fi
  if [ -f "$record" ]; then
    "$PYTHON" - "$record" >>"$summary" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
i = r.get("incomplete")
print(f"- gpu suite record: {len(r['rows'])} rows" + (f" of {i['total']}, incomplete" if i else ", complete"))
PY
    publish
  fi
fi
echo "gpu-session: summary ($summary; in \$OUT: summary.md, gpu-session.tar.gz)"
cat "$summary"
exit $status
