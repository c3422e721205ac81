"""Builds fusedrnn._C with torch.utils.cpp_extension (ninja).

C++ sources always. The CPU kernels (csrc/kernels/cpu/isa_*.cpp) are compiled
once per instruction set with that set's flags only, and the best one the
machine supports is picked at run time, so a wheel runs on any x86-64 and uses
AVX-512 where it exists. CUDA sources are added when torch was built with CUDA
and nvcc is found; FUSEDRNN_CUDA=0/1 overrides the detection.
"""

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import setuptools
from setuptools import find_packages, setup

ROOT = Path(__file__).parent.resolve()


def read_version():
    text = (ROOT / "fusedrnn" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def want_cuda(torch):
    env = os.environ.get("FUSEDRNN_CUDA")
    if env is not None:
        if env not in ("0", "1"):
            sys.exit(f"FUSEDRNN_CUDA must be 0 or 1, got {env!r}")
        if env == "1" and torch.version.cuda is None:
            sys.exit("FUSEDRNN_CUDA=1 but this torch was built without CUDA")
        return env == "1"
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None


# Flags per instruction set, as ATen uses them for its own CPU kernels.
ISA_FLAGS = {
    "default": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"],
    "avx2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
    "avx512": [
        "-DCPU_CAPABILITY=AVX512",
        "-DCPU_CAPABILITY_AVX512",
        "-mavx512f",
        "-mavx512bw",
        "-mavx512vl",
        "-mavx512dq",
        "-mavx2",
        "-mfma",
        "-mf16c",
    ],
}


# The bfloat16 products (csrc/kernels/cpu/amx_bf16.cpp: AMX tiles, or AVX512-BF16
# dot products) need these on top of AVX-512; the file checks at run time which
# the CPU has. Built without them (no AVX-512 kernels in the build), that file
# gives best() == Engine::kNone.
ISA_FLAGS["amx"] = ISA_FLAGS["avx512"][2:] + ["-mavx512bf16", "-mamx-tile", "-mamx-bf16"]
AMX_SOURCE = "amx_bf16.cpp"
BUILD_AMX = False


AMX_PROBE = """
#include <immintrin.h>
void probe(const float* x, void* y) {
  _tile_release();
  const __m512bh v = (__m512bh)_mm512_loadu_si512(x);
  *(__m512*)y = _mm512_dpbf16_ps(_mm512_loadu_ps(x), v, v);
  *(__m256bh*)y = _mm512_cvtneps_pbh(_mm512_loadu_ps(x));
}
"""


def compiler_has_amx():
    """Whether the C++ compiler takes the AMX and AVX512-BF16 flags and intrinsics
    (GCC 11 and later, recent clang); without, amx_bf16.cpp builds as its stub."""
    cxx = os.environ.get("CXX", "c++").split()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write(AMX_PROBE)
        cmd = cxx + ISA_FLAGS["amx"] + ["-c", src, "-o", os.path.join(tmp, "probe.o")]
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return False


# One C++ runtime per process. A compiler that links libstdc++ statically (a
# toolchain without libstdc++.so, or -static-libstdc++ in its specs) puts a second
# copy of it into the extension, beside the libstdc++.so.6 that torch runs with.
# The two copies share the locale's global data but not its code: numbers written
# into a stream, as every error message with a size in it is, come out empty with
# two copies of one version and crash the process with two versions. The probe
# links a small shared object the way the extension is linked and looks for
# std::ostream::_M_insert<long> among the symbols it defines.
CXX_RUNTIME_PROBE = """
#include <sstream>
#include <string>
std::string fusedrnn_probe(long x) { std::ostringstream s; s << x; return s.str(); }
"""
CXX_RUNTIME_SYMBOL = "_ZNSo9_M_insertIlEERSoT_"


def defines_cxx_runtime(path):
    """Whether the shared object at path carries its own copy of libstdc++; None
    when nm cannot tell."""
    tables = []
    for args in (["-D"], []):
        try:
            out = subprocess.run(["nm", *args, "--defined-only", str(path)], capture_output=True, text=True)
        except OSError:
            return None
        if out.returncode == 0:
            tables.append(out.stdout)
    if not tables:
        return None
    return any(line.split()[-1:] == [CXX_RUNTIME_SYMBOL] for t in tables for line in t.splitlines())


def loaded_cxx_runtime():
    """The path of the libstdc++ this process runs with (torch loads it), or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "/libstdc++.so" in path:
                    return path
    except OSError:
        pass
    return None


def probe_links_cxx_runtime(cxx, extra=()):
    """Whether the C++ compiler command cxx, linking a shared object (with the
    arguments extra), puts a copy of libstdc++ into it; None when that cannot be
    found out."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        out = os.path.join(tmp, "probe.so")
        with open(src, "w") as f:
            f.write(CXX_RUNTIME_PROBE)
        cmd = list(cxx) + ["-shared", "-fPIC", src, "-o", out, *extra]
        try:
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                return None
        except OSError:
            return None
        return defines_cxx_runtime(out)


def cxx_runtime_link_args(cxx):
    """Link arguments that keep libstdc++ out of the extension: none for a compiler
    that links it as a shared library, the path of the libstdc++.so that torch
    loaded for one that would link it statically. Exits when neither works."""
    if sys.platform != "linux" or not probe_links_cxx_runtime(cxx):
        return []
    shown = cxx[0]
    runtime = loaded_cxx_runtime()
    if runtime is not None and probe_links_cxx_runtime(cxx, [runtime]) is False:
        print(f"fusedrnn: {shown} links libstdc++ statically; the extension links {runtime}, "
              "the C++ runtime torch runs with, so that the process has one copy of it")
        return [runtime]
    sys.exit(f"fusedrnn: {shown} links libstdc++ statically into shared objects, and linking "
             f"the C++ runtime torch runs with ({runtime or 'not found'}) does not stop it. Two copies "
             "of libstdc++ in one process garble or crash on error messages; build with a compiler "
             "that links libstdc++.so (set CXX and CC).")


def isa_of(source):
    if str(source).endswith(AMX_SOURCE):
        return "amx" if BUILD_AMX else None
    m = re.search(r"isa_(\w+)\.cpp$", str(source))
    return m.group(1) if m else None


def make_extension():
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    x86 = platform.machine().lower() in ("x86_64", "amd64")
    isas = ["default"] + (["avx2", "avx512"] if x86 and os.name != "nt" else [])
    if os.environ.get("FUSEDRNN_CPU_ISAS"):
        # Only these, for quick special builds (the sanitizer's, for the machine that
        # builds it); on a CPU that runs none of them the kernels say so.
        wanted = {w.strip().lower() for w in os.environ["FUSEDRNN_CPU_ISAS"].split(",")} - {""}
        if not wanted or not wanted <= set(isas):
            sys.exit(f"FUSEDRNN_CPU_ISAS must name some of {', '.join(isas)}, got {os.environ['FUSEDRNN_CPU_ISAS']!r}")
        isas = [isa for isa in isas if isa in wanted]
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "torch").glob("*.cpp"))
    sources = [s for s in sources if not s.endswith("_cuda.cpp")]
    sources += [f"csrc/kernels/cpu/isa_{isa}.cpp" for isa in isas]
    sources += [f"csrc/kernels/cpu/{AMX_SOURCE}"]
    global BUILD_AMX
    BUILD_AMX = "avx512" in isas and compiler_has_amx()

    cxx = ["-O3", "-fopenmp", "-fvisibility=hidden", "-Wall", "-Wno-unknown-pragmas", "-Wno-maybe-uninitialized"]
    # Python's own CFLAGS usually carry -g, which the extension build inherits: full
    # debug information made the torch layer's files compile 1.7x as long and the
    # library 49 MB. It changes no generated code; FUSEDRNN_DEBUG_INFO=1 keeps it.
    cxx.append("-g" if os.environ.get("FUSEDRNN_DEBUG_INFO") == "1" else "-g0")
    if os.environ.get("FUSEDRNN_SANITIZE"):
        san = os.environ["FUSEDRNN_SANITIZE"]
        # -g1: the function names and line tables of the reports, without the full
        # debug information (which doubles the compile time of the torch layer).
        # -O0: no access optimised away before it is checked, and the AVX-512
        # kernels under ASan + UBSan compiled in 70 s instead of 306 at -O1 (AMD
        # Zen 4), while the tests of make sanitize-ci took as long (128 s, 124).
        cxx += [f"-fsanitize={san}", "-fno-omit-frame-pointer", "-g1", "-O0"]
    macros = [(f"FUSEDRNN_CPU_{isa.upper()}", None) for isa in isas]
    link = ["-fopenmp"]
    if os.environ.get("FUSEDRNN_SANITIZE"):
        link += [f"-fsanitize={os.environ['FUSEDRNN_SANITIZE']}"]

    use_cuda = want_cuda(torch)
    if use_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "torch").glob("*_cuda.cpp"))
        sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "kernels" / "cuda").glob("*.cu"))
        macros += [("FUSEDRNN_WITH_CUDA", None)]
        nvcc = ["-O3", "--use_fast_math" if os.environ.get("FUSEDRNN_FAST_MATH") else "-DFUSEDRNN_PRECISE",
                "-lineinfo", "--expt-relaxed-constexpr"]
        ext = CUDAExtension(
            "fusedrnn._C",
            sources,
            define_macros=macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
        )
    else:
        ext = CppExtension(
            "fusedrnn._C", sources, define_macros=macros, extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )

    class Build(BuildExtension):
        """Compiles each isa_<name>.cpp with that instruction set's flags only."""

        def build_extension(self, ext):
            compile_fn = self.compiler.compile

            def compile_by_isa(sources, output_dir=None, *args, extra_postargs=None, **kwargs):
                groups = {}
                for s in sources:
                    groups.setdefault(isa_of(s), []).append(s)

                def compile_group(isa, group):
                    post, out = extra_postargs, output_dir
                    if isa is not None:
                        flags = ISA_FLAGS[isa]
                        if isinstance(post, dict):
                            post = dict(post, cxx=list(post.get("cxx", [])) + flags)
                        else:
                            post = list(post or []) + flags
                        # A build directory per group: its own build.ninja.
                        out = os.path.join(output_dir or ".", f"isa_{isa}")
                    return compile_fn(group, out, *args, extra_postargs=post, **kwargs)

                # The groups build side by side: one after the other, each single
                # instruction-set file would compile alone on one core.
                with ThreadPoolExecutor(len(groups)) as pool:
                    futures = [pool.submit(compile_group, isa, g) for isa, g in groups.items()]
                    return [o for f in futures for o in f.result()]

            self.compiler.compile = compile_by_isa
            cxx = getattr(self.compiler, "compiler_cxx", None) or os.environ.get("CXX", "c++").split()
            ext.extra_link_args = list(ext.extra_link_args) + cxx_runtime_link_args(cxx)
            try:
                super().build_extension(ext)
            finally:
                self.compiler.compile = compile_fn
            built = self.get_ext_fullpath(ext.name)
            if sys.platform == "linux" and defines_cxx_runtime(built):
                os.remove(built)
                sys.exit(f"fusedrnn: {built} carries its own copy of libstdc++ "
                         "beside the one torch runs with; two copies in one process garble or crash on "
                         "error messages. Build with a compiler that links libstdc++.so (set CXX and CC).")

    return ext, Build


# The commands that compile (setup.py's own and those of pip's build hooks); the
# others (sdist, egg_info, dist_info) need no torch.
BUILD_COMMANDS = {"build", "build_ext", "bdist", "bdist_wheel", "bdist_egg", "install", "develop",
                  "editable_wheel"}


def has_torch():
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        return False
    return True


def licence():
    """The licence as setuptools 77 and later write it (the SPDX License-Expression)
    or, before, as the License field: pyproject.toml's `license` would take a table
    before 77 and a string from 77 on (tables unsupported from 2027)."""
    version = int(setuptools.__version__.split(".")[0])
    return {"license_expression" if version >= 77 else "license": "BSD-3-Clause", "license_files": ["LICENSE"]}


def main():
    build_args = {}
    if has_torch():
        ext, build = make_extension()
        build_args = {"ext_modules": [ext],
                      "cmdclass": {"build_ext": build.with_options(use_ninja=shutil.which("ninja") is not None)}}
    elif BUILD_COMMANDS & set(sys.argv[1:]):
        sys.exit("fusedrnn builds against the torch it will run with, and this Python has none: "
                 "install torch first, then build with `pip install --no-build-isolation ...` "
                 "(pip's isolated build environment has no torch)")
    setup(
        name="fusedrnn",
        version=read_version(),
        packages=find_packages(include=["fusedrnn", "fusedrnn.*"]),
        zip_safe=False,
        **build_args,
        **licence(),
    )


if __name__ == "__main__":
    main()
