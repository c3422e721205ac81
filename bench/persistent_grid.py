"""The persistent path's plans against each other and cuDNN: on small layers around the sizes
where FUSEDRNN_PERSISTENT_GRID=auto switches from one block to slices of units over many blocks
(2^14 multiply-adds a step on CUDA cores, 2^20 on tensor cores; bench/PERSISTENT.md, v5), `one`
(every unit in one block, block barriers), `many` (slices, grid barriers) and `auto` (the
default's pick); on issue 6's case 1 and its bfloat16 GRU row, 8, 16 and 32 units a block, and
the tensor-core product with its other operand staged in shared memory or loaded from global
memory (FUSEDRNN_PERSISTENT_STAGE=1, the default, or 0).
Interleaved with cuDNN by the harness's own timing (bench/measure.py, the quick suite's
settings), on the rows of bench/cases.py, inference and training. Writes persistent-grid.json
and .md under --out (default bench/results/<machine>) and prints the tables; a plan that cannot
hold a layer shows `-`.

    python bench/persistent_grid.py [--out DIR]

`make gpu-session` runs it (its `grid` step). Needs CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # a clone without PYTHONPATH: the in-place build

import cases  # noqa: E402
import envinfo  # noqa: E402
from measure import Runner, measure  # noqa: E402
from run import TIMING  # noqa: E402
from suites import Case  # noqa: E402

# (cell, dtype, T, N, H): float32 on CUDA cores (one block holds at most 2048 outputs, N x gates
# x units) and float16 on tensor cores, from well below auto's threshold to above it; timed with
# one block, slices (many) and auto's pick.
GRID_CASES = [
    ("lstm", "float32", 100, 1, 32), ("lstm", "float32", 100, 1, 64), ("lstm", "float32", 100, 1, 128),
    ("gru", "float32", 100, 1, 64), ("rnn", "float32", 100, 1, 64), ("rnn", "float32", 100, 16, 64),
    ("rnn", "float32", 100, 16, 128),
    ("lstm", "float16", 100, 16, 64), ("lstm", "float16", 100, 16, 128), ("gru", "float16", 100, 16, 128),
    ("gru", "float16", 100, 64, 128), ("rnn", "float16", 100, 16, 256), ("rnn", "float16", 100, 64, 256),
]
GRID_PLANS = ("one", "many", "auto")
# Issue 6's case 1 and its bfloat16 GRU row, with 8 (what auto picks on 132 multiprocessors),
# 16 and 32 units a block: fewer blocks read h from L2 each step, each multiplies more.
UNIT_CASES = [("lstm", "float16", 1024, 16, 768), ("gru", "bfloat16", 1024, 16, 768)]
UNIT_PLANS = ("auto", "8", "16", "32")
# The same two rows and a quick-suite row, staged (1) or direct (0).
STAGE_CASES = UNIT_CASES + [("lstm", "bfloat16", 100, 64, 512)]
STAGE_PLANS = ("1", "0")


def measure_row(spec, mode: str, plans, variable: str = "FUSEDRNN_PERSISTENT_GRID") -> dict:
    """The row of bench/cases.py (fusedrnn and cuDNN on shared parameters and one input) with
    fusedrnn's candidate on the persistent path under each value of the environment variable
    `variable` in `plans`, timed interleaved by bench/measure.py (the quick suite's timing); a
    plan that cannot hold the layer goes to not_run with the reason."""
    cell, dtype, T, N, H = spec
    row = cases.build(Case(device="cuda", cell=cell, T=T, N=N, C=H, H=H, dtype=dtype, mode=mode),
                      baselines={"nn-cudnn"})
    fused = next(c for c in row.candidates if c.name == "fused")
    runners, why = {}, {}
    for plan in plans:
        cand = dataclasses.replace(fused, name=plan, flags=functools.partial(
            cases.env, FUSEDRNN_CUDA_PATH="persistent", **{variable: plan}))
        runner = Runner(cand, row, mode, "cuda")
        try:
            runner.once()
        except RuntimeError as e:
            if "the persistent path does not run this layer" not in str(e):
                raise
            why[plan] = str(e).splitlines()[0].split("): ", 1)[-1]
            continue
        runners[plan] = runner
    runners["cudnn"] = Runner(next(c for c in row.candidates if c.name == "nn-cudnn"), row, mode, "cuda")
    stats = measure(runners, TIMING["quick"])
    return {"cell": cell, "dtype": dtype, "T": T, "N": N, "H": H, "training": mode == "training",
            "macs_per_step": N * {"lstm": 4, "gru": 3, "rnn": 1}[cell] * H * H,
            "ms": {k: v.median_ms for k, v in stats.items()}, "not_run": why}


def _table(rows, plans, first: str) -> list:
    cols = list(plans) + ["cudnn"]
    lines = ["| cell | dtype | T | N | H | mode | MACs a step | " + " | ".join(f"{c} ms" for c in cols) +
             " | best / cuDNN |", "|---|---|---:|---:|---:|---|---:|" + "---:|" * (len(cols) + 1)]
    for r in rows:
        ms = r["ms"]
        cells = [f"{ms[c]:.3f}" if c in ms else "-" for c in cols]
        best = min(ms[p] for p in plans if p in ms) if any(p in ms for p in plans) else None
        ratio = f"{best / ms['cudnn']:.2f}" if best is not None else "-"
        lines.append(f"| {r['cell']} | {r['dtype']} | {r['T']} | {r['N']} | {r['H']} | "
                     f"{'train' if r['training'] else 'inf'} | {r['macs_per_step']} | " + " | ".join(cells) +
                     f" | {ratio} |")
    notes = [f"- {r['cell']} {r['dtype']} T{r['T']} N{r['N']} H{r['H']} "
             f"{'train' if r['training'] else 'inf'}, {p}: {reason}"
             for r in rows for p, reason in r["not_run"].items()]
    return [first, ""] + lines + ([""] + notes if notes else []) + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="results folder (default bench/results/<machine>)")
    args = ap.parse_args(argv)
    if not envinfo.cuda_only("persistent_grid"):
        return 1
    results = {}
    for key, specs, plans, variable in (
            ("grid", GRID_CASES, GRID_PLANS, "FUSEDRNN_PERSISTENT_GRID"),
            ("units", UNIT_CASES, UNIT_PLANS, "FUSEDRNN_PERSISTENT_GRID"),
            ("stage", STAGE_CASES, STAGE_PLANS, "FUSEDRNN_PERSISTENT_STAGE")):
        results[key] = []
        print(f"{'case':<38} {'MACs':>9} " + " ".join(f"{p + ' ms':>10}" for p in plans + ("cudnn",)))
        for spec in specs:
            for mode in ("inference", "training"):
                r = measure_row(spec, mode, plans, variable)
                results[key].append(r)
                name = f"{spec[0]} {spec[1]} T{spec[2]} N{spec[3]} H{spec[4]} {mode}"
                print(f"{name:<38} {r['macs_per_step']:>9} " +
                      " ".join(f"{r['ms'][p]:>10.3f}" if p in r["ms"] else f"{'-':>10}" for p in plans + ("cudnn",)))
    lines = ["Input size = H; median ms per call, candidates interleaved with the quick suite's "
             "timing (bench/measure.py; bench/persistent_grid.py); the columns are FUSEDRNN_PERSISTENT_GRID's values (auto: the "
             "default's pick; a number: that many hidden units a block); `-`: the plan cannot hold the "
             "layer.", ""]
    lines += _table(results["grid"], GRID_PLANS, "## One block or slices over many blocks")
    lines += _table(results["units"], UNIT_PLANS, "## Units per block, issue 6's case 1 and its GRU row")
    lines += _table(results["stage"], STAGE_PLANS,
                    "## The tensor-core product's other operand staged in shared memory (1) or loaded "
                    "from global memory (0): FUSEDRNN_PERSISTENT_STAGE")
    envinfo.write_gpu_results(args.out, "persistent-grid", "The persistent path's plans against each other and cuDNN",
                              results, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
