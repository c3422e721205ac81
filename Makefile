# make bench   the main job: set-up if needed, build, run the default (quick) benchmark suite
# make test    set-up if needed, build, run every test (pytest, ctest, CUDA compile check,
#              the CUDA tests on the host emulation of the CUDA path, the sanitizer run
#              of the reliability and gradcheck tests)
PYTHON ?= python3
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export MAX_JOBS ?= $(JOBS)

SOURCES := $(shell find csrc -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh') setup.py
STAMP := build/.fusedrnn-built
# A step's wall time, printed at its end whatever its result (prefix of a recipe line).
TIMED = t0=$$(date +%s); trap 'echo "make $@: $$(( $$(date +%s) - t0 )) s"' EXIT;

.PHONY: all deps build bench test test-steps pytest ctest cuda-check cuda-emulate cuda-emulate-sanitize gpu-check gpu-session sanitize sanitize-ci clean

all: build

deps: build/.deps
build/.deps: tools/ensure_deps.py
	@mkdir -p build
	@$(TIMED) $(PYTHON) tools/ensure_deps.py
	@touch $@

build: $(STAMP)
$(STAMP): build/.deps $(SOURCES)
	@$(TIMED) $(PYTHON) setup.py -q build_ext --inplace
	@touch $@

bench: build
	$(PYTHON) bench/run.py --suite quick $(BENCH_ARGS)

# The steps run beside each other (JOBS at once, each one's output printed whole when it
# ends, every step run even when one fails): on 2 cores the one-core test runs then share
# the machine with the compiles (fresh clones, Intel Xeon with 2 vCPUs: 1017, 1032 and
# 1038 s, against 1199 s one after the other).
test:
	@$(MAKE) --no-print-directory -j$(JOBS) --keep-going --output-sync=target test-steps

test-steps: pytest ctest cuda-check cuda-emulate sanitize-ci

pytest: build
	@$(TIMED) $(PYTHON) -m pytest -q $(PYTEST_ARGS)

ctest: build/.deps
	@$(TIMED) if command -v cmake >/dev/null 2>&1 && [ -f CMakeLists.txt ]; then \
	  cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release -DFUSEDRNN_CUDA_CHECK=OFF >/dev/null && \
	  cmake --build build/cmake -j $(JOBS) && \
	  ctest --test-dir build/cmake --output-on-failure; \
	else echo "ctest: cmake not found, skipped"; fi

# Every CUDA kernel compiled for sm_80 and sm_90 with nvcc (no GPU needed), the
# register and spill report, and a syntax check of the CUDA host code.
cuda-check: build/.deps
	@$(TIMED) tools/cuda_compile_check.sh

# The CUDA host code and kernels built for the CPU and run by tests/test_cuda.py
# (step kernels: every block and thread in turn; persistent kernels: every
# thread a fiber, with real barriers): the logic and indexing, without a GPU.
cuda-emulate: build/.deps
	@$(TIMED) tools/cuda_emulate.sh $(PYTEST_ARGS)

# The same under ASan + UBSan (accesses out of bounds, misaligned loads). Its tests take
# about 3 times as long as the plain ones (245 s against 75 s on a Zen 4 core), and so
# does its build, so it is part of make sanitize, not of make test.
cuda-emulate-sanitize: build/.deps
	FUSEDRNN_SANITIZE=address,undefined tools/cuda_emulate.sh $(PYTEST_ARGS)

# On a GPU machine (offline is fine): CUDA build, CUDA tests, compute-sanitizer
# (memcheck, racecheck, initcheck, synccheck), the GPU benchmark, and a report.
# GPU_CHECK_BUDGET_S=S runs it in calls of S seconds, each going on where the last stopped.
gpu-check:
	tools/gpu_check.sh $(PYTEST_ARGS)

# A short GPU loan (one call of at most 10 minutes): build, CUDA tests, the persistent
# kernels' step trace, a torch.profiler
# breakdown of slow rows, the barrier latency, issue 6's goal rows against cuDNN, an Nsight
# Compute profile of case 1, the quick suite, racecheck and synccheck of the persistent
# kernels, within SESSION_BUDGET_S (GPU_SESSION_STEPS for later calls: memcheck, initcheck,
# the gpu suite in resumable parts);
# $$OUT gets summary.md and a tarball of every log and result (tools/gpu_session.sh).
gpu-session:
	tools/gpu_session.sh

clean:
	rm -rf build cmake-build fusedrnn/_C*.so

# AddressSanitizer + UndefinedBehaviorSanitizer build of the CPU extension, CPU tests under it;
# then the CUDA emulation under the same sanitizers (cuda-emulate-sanitize).
sanitize: build/.deps
	tools/sanitize.sh $(SANITIZE_ARGS)
	FUSEDRNN_SANITIZE=address,undefined tools/cuda_emulate.sh

# The part of the sanitizer run that fits CI: the fuzz, numerics, concurrency,
# gradcheck and bidirectional tests (directions run at once on 2 threads) under
# ASan + UBSan (about 4 minutes on 2 cores, build included).
# The 10,000-step sequence is left to `make sanitize`: under ASan it took 50 of
# the 124 s, nearly all in the Python reference it is checked against.
sanitize-ci: build/.deps
	@$(TIMED) tools/sanitize.sh tests/test_reliability.py tests/test_gradcheck.py tests/test_bidirectional.py \
	  --deselect tests/test_reliability.py::test_long_sequence_matches_reference_in_memory_proportional_to_T
