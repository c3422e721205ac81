"""What `pip install` of a source distribution builds from: the sdist must hold
every file under csrc/ (the build compiles the .cpp and .cu files and they
include the headers), the package, the build files, the licence and the README.
The oracle is the source tree itself."""

import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_source_distribution_holds_every_file_the_build_reads(tmp_path):
    # A fresh egg-info: sdist otherwise goes by the file list of an earlier one.
    egg_base, dist = tmp_path / "egg", tmp_path / "dist"
    egg_base.mkdir()
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(egg_base),
                    "sdist", "-d", str(dist)], cwd=ROOT, check=True, capture_output=True)
    (archive,) = dist.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        held = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").rglob("*") if p.is_file()}
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fusedrnn").glob("*.py")}
    assert any(s.endswith(".h") for s in sources) and any(s.endswith(".cu") for s in sources)
    wanted = sources | package | {"setup.py", "pyproject.toml", "LICENSE", "README.md"}
    missing = sorted(wanted - held)
    assert not missing, f"the sdist lacks {missing} (MANIFEST.in)"


def test_a_build_without_torch_says_how_to_build():
    """pip's default isolated build has no torch: setup.py says so instead of a traceback."""
    blocked = ("import sys, runpy; sys.modules['torch'] = None; sys.argv = ['setup.py', 'build_ext']; "
               "runpy.run_path('setup.py', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", blocked], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0
    assert "install torch first, then build with `pip install --no-build-isolation" in r.stderr
    assert "Traceback" not in r.stderr
