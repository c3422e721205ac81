"""setup.py's guard against a second C++ runtime in the process: a compiler that
links libstdc++ statically would put a copy of it into fusedrnn._C beside the
libstdc++.so.6 torch runs with, and the two copies garble the numbers of every
error message (or crash on them, with two versions). The oracle is the symbol
table (nm) of shared objects linked the way the extension is, and the built
extension itself. Linux with GCC's runtime only."""

import importlib.util
import os
import stat
import sys
from pathlib import Path

import pytest

import fusedrnn._C as _C

ROOT = Path(__file__).resolve().parent.parent
CXX = os.environ.get("CXX", "c++").split()

# setup.py's guard reads /proc/self/maps and ELF symbol tables: it runs on Linux only.
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="setup.py checks this on Linux only")


def _setup_module():
    spec = importlib.util.spec_from_file_location("fusedrnn_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


setup = _setup_module()


@pytest.fixture
def static_cxx(tmp_path):
    """The C++ compiler with -static-libstdc++ in every link, as a toolchain
    without libstdc++.so (or with the flag in its specs) links. Needs the static
    libstdc++.a, which some distributions package apart (Fedora's libstdc++-static)."""
    wrapper = tmp_path / "static-c++"
    wrapper.write_text('#!/bin/sh\nexec ' + " ".join(CXX) + ' "$@" -static-libstdc++\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    if setup.probe_links_cxx_runtime([str(wrapper)]) is None:
        pytest.skip("the compiler cannot link libstdc++ statically here (no libstdc++.a)")
    return [str(wrapper)]


def test_the_extension_has_no_copy_of_libstdcxx():
    assert setup.defines_cxx_runtime(_C.__file__) is False


def test_this_machines_compiler_gets_the_runtime_torch_runs_with_only_if_it_needs_it():
    """Nothing added for a compiler that links libstdc++.so (most), the loaded
    runtime for one that links libstdc++.a."""
    static = setup.probe_links_cxx_runtime(CXX)
    assert static is not None, f"{CXX} could not link the probe, or nm could not read it"
    assert setup.loaded_cxx_runtime() is not None, "torch runs without libstdc++.so"
    assert setup.cxx_runtime_link_args(CXX) == ([setup.loaded_cxx_runtime()] if static else [])


def test_a_compiler_linking_libstdcxx_statically_gets_the_runtime_torch_runs_with(static_cxx, capsys):
    assert setup.probe_links_cxx_runtime(static_cxx) is True
    args = setup.cxx_runtime_link_args(static_cxx)
    assert args == [setup.loaded_cxx_runtime()]
    assert "links libstdc++ statically" in capsys.readouterr().out
    assert setup.probe_links_cxx_runtime(static_cxx, args) is False
