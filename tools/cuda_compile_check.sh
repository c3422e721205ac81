#!/usr/bin/env bash
# Compiles every CUDA kernel (csrc/kernels/cuda/*.cu) with nvcc for sm_80 and
# sm_90 through the CMake build in cmake-build/ (no GPU and no CUDA torch needed),
# then prints registers, stack and spills per kernel and architecture from the
# ptxas report. Fails on any compile error, and when a hot kernel spills: every
# *_kernel here runs once per time step, so a spill there is a bug to explain
# (and to list in HOT_SPILL_OK below with the reason, if it is ever accepted).
# Fails too when a persistent kernel's PTX loads through the non-coherent
# read-only path (ld.global.nc, ldu): its blocks exchange data within a launch.
# Then the host side of the CUDA build, csrc/torch/rnn_cuda.cpp, is syntax-checked
# against the installed torch (tools/check_cuda_host.sh --quick), which works with
# a CPU-only torch. Without nvcc it says so and succeeds.
#   BUILD_DIR=...          build directory (default cmake-build)
#   FUSEDRNN_CUDA_ARCHS=.. semicolon-separated sm numbers (default 80;90)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
build=${BUILD_DIR:-cmake-build}
archs=${FUSEDRNN_CUDA_ARCHS:-80;90}

nvcc=$(command -v nvcc || true)
[ -z "$nvcc" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] && nvcc=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
if [ -z "$nvcc" ]; then
  echo "cuda-check: nvcc not found (set CUDA_HOME), CUDA compile check skipped"
  exit 0
fi
if ! command -v cmake >/dev/null 2>&1; then
  echo "cuda-check: cmake not found" >&2
  exit 1
fi

generator=()
if [ ! -f "$build/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DFUSEDRNN_CUDA_CHECK=ON \
  "-DFUSEDRNN_CUDA_ARCHS=$archs" "-DFUSEDRNN_NVCC=$nvcc" >/dev/null
cmake --build "$build" --target cuda_kernels -j "${JOBS:-$(nproc 2>/dev/null || echo 2)}"

"$PYTHON" - "$build/cuda" "$archs" <<'PY'
import glob, os, re, shutil, subprocess, sys

logdir, archs = sys.argv[1], [a for a in sys.argv[2].split(";") if a]
sources = {os.path.basename(p)[:-3] for p in glob.glob("csrc/kernels/cuda/*.cu")}
# Hot kernels allowed to spill, with the reason: none.
HOT_SPILL_OK = {}

entries = []  # (file, arch, mangled, regs, stack, spill_stores, spill_loads)
for log in sorted(glob.glob(os.path.join(logdir, "*.log"))):
    parts = os.path.basename(log).split(".")
    stem = parts[0]
    # Only the logs of this build's sources (a removed .cu leaves its log) and targets.
    if len(parts) != 2 or stem not in sources or not os.path.exists(log[:-4] + ".o"):
        continue
    src = stem + ".cu"
    cur = None
    props = {}
    for line in open(log, errors="replace"):
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+\w*)'", line)
        if m:
            cur = (m.group(1), m.group(2))
            props[cur] = {"regs": None, "stack": 0, "st": 0, "ld": 0}
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            props[cur].update(stack=int(m.group(1)), st=int(m.group(2)), ld=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            props[cur]["regs"] = int(m.group(1))
    for (mangled, arch), p in props.items():
        if arch[3:] in archs:
            entries.append((src, arch, mangled, p["regs"], p["stack"], p["st"], p["ld"]))

if not entries:
    sys.exit(f"cuda-check: no ptxas report found in {logdir}")

names = [e[2] for e in entries]
demangled = names
if shutil.which("c++filt"):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    demangled = out.splitlines() if out else names

rows = []
for e, d in zip(entries, demangled):
    # Drop the return type, namespaces and parameters; keep the template arguments.
    base = d.replace("(anonymous namespace)::", "").split("(")[0]
    name = re.sub(r"^(?:void )?(?:\w+::)*", "", base)
    name = name.replace("__nv_bfloat16", "bf16").replace("__half", "half")
    rows.append((e[0], name, e[1], e[3], e[4], e[5], e[6]))
rows.sort(key=lambda r: (r[0], r[1], r[2]))

w = max(len(r[1]) for r in rows)
wf = max(len(r[0]) for r in rows)
print()
print(f"{'file':{wf}} {'kernel':{w}} {'arch':6} {'regs':>4} {'stack':>5} {'spill st':>8} {'spill ld':>8}")
for r in rows:
    print(f"{r[0]:{wf}} {r[1]:{w}} {r[2]:6} {r[3] if r[3] is not None else '?':>4} {r[4]:>5} {r[5]:>8} {r[6]:>8}")

found_archs = sorted({r[2] for r in rows})
missing = [a for a in archs if f"sm_{a}" not in found_archs]
kernels = {r[1] for r in rows}
print(f"\ncuda-check: {len(kernels)} kernels x {len(found_archs)} archs ({', '.join(found_archs)}); "
      f"max {max(r[3] or 0 for r in rows)} registers")
bad = [r for r in rows if (r[5] or r[6]) and r[1].split("<")[0].endswith("_kernel")
       and r[1].split("<")[0] not in HOT_SPILL_OK]
if missing:
    sys.exit(f"cuda-check: no report for sm_{', sm_'.join(missing)}")
if bad:
    for r in bad:
        print(f"cuda-check: hot kernel {r[1]} spills on {r[2]}: {r[5]} bytes stored, {r[6]} loaded")
    sys.exit("cuda-check: spills in hot kernels (see above)")
print("cuda-check: no spills")

# The persistent kernels exchange h, dG and dh between blocks inside a launch,
# each read after the grid barrier's acquire: a load of those through the
# non-coherent read-only path (ld.global.nc, ldu; what __ldg or a const
# __restrict__ pointer may give) could see a stale L1 line on a GPU, which the
# emulation, without caches, cannot show. No persistent kernel, and no function
# left out of line, may use one.
header = re.compile(r"^(?:\.(?:visible|weak|extern)\s+)*\.(entry|func)\b[^\n]*", re.M)
noncoherent = re.compile(r"\b(?:ld\.global\.nc|ldu\.global)\b")
checked = {}
offenders = []
for path in sorted(glob.glob(os.path.join(logdir, "*.ptx"))):
    stem, arch = os.path.basename(path).split(".")[:2]
    if stem not in sources or arch.split("_")[-1] not in archs:
        continue
    text = open(path, errors="replace").read()
    heads = list(header.finditer(text))
    for i, h in enumerate(heads):
        names = re.findall(r"([A-Za-z_$][\w$]*)\s*\(", h.group(0))
        name = names[-1] if names else "?"
        persistent = h.group(1) == "entry" and "persistent" in name
        if h.group(1) == "entry" and not persistent:
            continue
        checked[arch] = checked.get(arch, 0) + persistent
        body = text[h.end():heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        n = len(noncoherent.findall(body))
        if n:
            offenders.append((stem, arch, name, n))
missing = [a for a in archs if not checked.get(f"compute_{a}")]
if missing:
    sys.exit(f"cuda-check: no persistent kernel found in the PTX of compute_{', compute_'.join(missing)}")
for stem, arch, name, n in offenders:
    print(f"cuda-check: {stem}.cu ({arch}) {name}: {n} non-coherent loads")
if offenders:
    sys.exit("cuda-check: non-coherent loads in the persistent kernels (see above)")
print(f"cuda-check: no non-coherent loads in the persistent kernels "
      f"({', '.join(f'{v} on {k}' for k, v in sorted(checked.items()))})")
PY

if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  tools/check_cuda_host.sh --quick
else
  echo "cuda-check: torch not importable, host syntax check of rnn_cuda.cpp skipped"
fi
