"""Installs what `make` needs and is missing, never a CUDA torch on a machine without a GPU.

torch: if missing, `pip install torch==$FUSEDRNN_TORCH_VERSION` (default 2.13.0) when no
NVIDIA GPU is visible; with a GPU, plain `pip install torch`. Set FUSEDRNN_PIP_ARGS to pass
an index URL or other options to pip. Everything else comes from the ordinary registry.
"""

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys

REQUIRED = {"ninja": "ninja", "numpy": "numpy", "pytest": "pytest", "hypothesis": "hypothesis",
            "setuptools": "setuptools", "wheel": "wheel"}
# Without these, the benchmark's plots are missing, or the ONNX export tests
# skip (tests/test_onnx.py: onnx, the dynamo exporter's onnxscript, and
# onnxruntime, which runs the exported models).
OPTIONAL = {"matplotlib": "matplotlib", "onnx": "onnx", "onnxscript": "onnxscript", "onnxruntime": "onnxruntime"}


def pip(*args):
    extra = shlex.split(os.environ.get("FUSEDRNN_PIP_ARGS", ""))
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", *extra, *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def main():
    if importlib.util.find_spec("torch") is None:
        if shutil.which("nvidia-smi"):
            pip("torch")
        else:
            pip(f"torch=={os.environ.get('FUSEDRNN_TORCH_VERSION', '2.13.0')}")
    missing = [pkg for mod, pkg in REQUIRED.items() if importlib.util.find_spec(mod) is None]
    if shutil.which("ninja") is None and "ninja" not in missing:
        missing.append("ninja")
    if missing:
        pip(*missing)
    for mod, pkg in OPTIONAL.items():
        if importlib.util.find_spec(mod) is None:
            try:
                pip(pkg)
            except subprocess.CalledProcessError:
                print(f"ensure_deps: could not install {pkg}; what needs it is skipped", flush=True)


if __name__ == "__main__":
    main()
