"""Builds the host emulation of the CUDA path (see tools/cuda_emulate.sh).

Copies csrc/ to <out>/src, turns every csrc/kernels/cuda/*.cu into a C++ file
that includes shim.h, replaces the one step-kernel launch (launch_step in
cuda_utils.cuh) by a loop over the grid and the one cooperative launch
(launch_persistent in persistent.cuh) by a run of fibers, and builds fusedrnn._C from the torch
layer (autograd, ops, rnn_layer, module, cpu_memory, rnn_cuda) plus glue.cpp, which sends
CPU tensors down the CUDA path; with FUSEDRNN_SANITIZE set, instrumented by those
sanitizers. Usage: build.py <out dir> <package dir>.
"""

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = Path(__file__).parent.resolve()
ROOT = HERE.parents[1]
LAUNCH = "kernel<<<shape.grid, shape.block, 0, stream>>>(p);"
EMULATED = "::frnn_emul::launch(shape.grid, shape.block, [&] { kernel(p); });"
COOP_LAUNCH = ("return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), "
               "dim3(plan.blocks), dim3(kPersistentThreads), params, plan.smem, stream);")
COOP_EMULATED = ("(void)params; if (const cudaError_t refused = ::frnn_emul::cooperative_refusal("
                 "plan.blocks, plan.smem, reinterpret_cast<const void*>(kernel))) return refused; "
                 "::frnn_emul::launch_cooperative(dim3(plan.blocks), "
                 "dim3(kPersistentThreads), plan.smem, [&] { kernel(a); }); return cudaSuccess;")


def write(path: Path, text: str) -> None:
    """Writes only what changed, so that ninja rebuilds only that."""
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# The csrc files whose launch the emulation replaces: name -> (launch, replacement).
REPLACED = {"cuda_utils.cuh": (LAUNCH, EMULATED), "persistent.cuh": (COOP_LAUNCH, COOP_EMULATED)}


def emulated(name: str, text: str) -> str:
    """The text of csrc file `name` in the emulation: its launch replaced."""
    if name not in REPLACED:
        return text
    launch, replacement = REPLACED[name]
    if text.count(launch) != 1:
        sys.exit(f"cuda_emulation: expected exactly one '{launch}' in {name}")
    return text.replace(launch, replacement)


def prepare(out: Path) -> list:
    src = out / "src"
    copied = set()
    for f in (ROOT / "csrc").rglob("*"):
        if f.is_file() and f.suffix in (".h", ".cuh", ".cpp"):
            write(src / f.relative_to(ROOT), emulated(f.name, f.read_text()))
            copied.add(f.name)
    if set(REPLACED) - copied:
        sys.exit(f"cuda_emulation: csrc lacks {sorted(set(REPLACED) - copied)}, whose launches it replaces")
    cuda = src / "csrc" / "kernels" / "cuda"
    write(cuda / "shim.h", (HERE / "shim.h").read_text())
    sources = []
    for cu in sorted((ROOT / "csrc" / "kernels" / "cuda").glob("*.cu")):
        cpp = cuda / (cu.stem + "_emul.cpp")
        write(cpp, '#include "shim.h"\n' + cu.read_text())
        sources.append(cpp)
    torch_dir = src / "csrc" / "torch"
    write(torch_dir / "emulation_glue.cpp", (HERE / "glue.cpp").read_text())
    for name in ("autograd.cpp", "ops.cpp", "rnn_layer.cpp", "module.cpp", "cpu_memory.cpp",
                 "rnn_cuda.cpp", "emulation_glue.cpp"):
        sources.append(torch_dir / name)
    return [str(s) for s in sources]


def main():
    out, pkg = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    sources = prepare(out)
    # FUSEDRNN_SANITIZE (e.g. address,undefined): the build instrumented as setup.py's is,
    # the reports' line tables without the full debug information, but at -O1 (setup.py's
    # at -O0): the emulation runs every thread of a kernel in turn, and -O0 was not
    # measured here.
    san = os.environ.get("FUSEDRNN_SANITIZE")
    san = [f"-fsanitize={san}", "-fno-omit-frame-pointer", "-g1", "-O1"] if san else []
    os.chdir(out)  # away from the project's pyproject.toml and its package discovery
    ext = CppExtension(
        "fusedrnn._C",
        sources,
        include_dirs=[str(HERE), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include")],
        define_macros=[("FUSEDRNN_WITH_CUDA", None)],
        extra_compile_args=["-O2", "-g0", "-fvisibility=hidden", "-Wall", "-Wno-unknown-pragmas"] + san,
        extra_link_args=san[:1],
    )
    setup(
        name="fusedrnn_cuda_emulation",
        packages=[],
        py_modules=[],
        ext_modules=[ext],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
        script_args=["-q", "build_ext", "--build-temp", str(out / "tmp"), "--build-lib", str(pkg)],
    )


if __name__ == "__main__":
    main()
