#!/usr/bin/env python3
"""Takes out each block and step barrier of the CUDA kernels in turn and says
which tests notice, under the host emulation (tools/cuda_emulate.sh; no GPU).

For every `__syncthreads();` and `step_barrier();` statement of the kernels
(the barrier probe and the definitions of the barriers themselves left out), in a
git worktree of HEAD: the line removed, the emulation rebuilt, then
  orders: test_results_do_not_depend_on_the_order_of_threads (the threads in
          several orders, the same bits required), and
  others: the other persistent tests, in the default order,
each with -x. One line a barrier; about an hour on 2 cores.

    python3 tools/barrier_mutations.py [--only FILE:LINE ...]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

FILES = ["gru_backward.cu", "gru_forward.cu", "rnn_backward.cu", "rnn_forward.cu", "lstm_backward.cuh",
         "lstm_forward.cuh", "persistent.cuh"]
BARRIERS = ("__syncthreads();", "step_barrier();")


def sites(root: pathlib.Path):
    for name in FILES:
        path = root / "csrc/kernels/cuda" / name
        lines = path.read_text().split("\n")
        for i, line in enumerate(lines):
            if line.strip() not in BARRIERS:
                continue
            # The barriers' own definitions (step_barrier, the trace's units mark) are not sites.
            if lines[i - 1].strip() in ("if (gridDim.x == 1)", "else", "if (block) {"):
                continue
            yield f"csrc/kernels/cuda/{name}", i


def pytest(root: pathlib.Path, expr: str):
    pkg = root / "build/cuda_emul/pkg"
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--rootdir", str(root),
           "-c", str(root / "pyproject.toml"), str(root / "tests/test_cuda.py"), "-k", expr]
    env = {"FUSEDRNN_CUDA_EMULATION": "1", "PYTHONPATH": str(pkg)}
    r = subprocess.run(cmd, cwd=pkg, capture_output=True, text=True, env={**os.environ, **env})
    failed = [line for line in r.stdout.split("\n") if line.startswith("FAILED")]
    return r.returncode != 0, (failed[:1] or [""])[0][:160]


def _verdict(result) -> str:
    return "fails" if result[0] else "passes"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", default=None, help="FILE:LINE sites (1-based), as this tool prints them")
    args = ap.parse_args()
    repo = pathlib.Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="barriers-") as tmp:
        root = pathlib.Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(root), "HEAD"], cwd=repo, check=True)
        try:
            todo = list(sites(root))
            if args.only is not None:
                todo = [(f, i) for f, i in todo if f"{f}:{i + 1}" in args.only]
            print(f"{len(todo)} barriers", flush=True)
            for f, i in todo:
                path = root / f
                original = path.read_text()
                lines = original.split("\n")
                lines[i] = ""
                path.write_text("\n".join(lines))
                t0 = time.time()
                subprocess.run(["tools/cuda_emulate.sh", "-q", "-k", "no_test_has_this_name"], cwd=root,
                               capture_output=True, text=True)
                orders = pytest(root, "order_of_threads")
                others = pytest(root, "persistent and not order_of_threads")
                path.write_text(original)
                print(f"{f}:{i + 1} orders {_verdict(orders)}, others {_verdict(others)} ({time.time() - t0:.0f} s)"
                      f" {orders[1] or others[1]}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(root)], cwd=repo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
