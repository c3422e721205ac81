"""The persistent path's plans against each other and cuDNN: on small layers around the sizes
where FUSEDRNN_PERSISTENT_GRID=auto switches from one block to slices of units over many blocks
(2^14 multiply-adds a step on CUDA cores, 2^20 on tensor cores; bench/PERSISTENT.md, v5), `one`
(every unit in one block, block barriers), `many` (slices, grid barriers) and `auto` (the
default's pick); on issue 6's case 1 and its bfloat16 GRU row, 8, 16 and 32 units a block.
Interleaved with cuDNN, median of CUDA-event timings per call, inference (no grad) and training
(forward and backward). Writes persistent-grid.json and .md under --out (default
bench/results/<machine>) and prints the tables; a plan that cannot hold a layer shows `-`.

    python bench/persistent_grid.py [--rounds 15] [--out DIR]

`make gpu-session` runs it (its `grid` step). Needs CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # a clone without PYTHONPATH: the in-place build

import torch  # noqa: E402

import envinfo  # noqa: E402
import fusedrnn  # noqa: E402

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


def _gates(cell: str) -> int:
    return {"lstm": 4, "gru": 3, "rnn": 1}[cell]


def _call(m, x, training: bool) -> None:
    with torch.set_grad_enabled(training):
        y, _ = m(x)
    if training:
        y.backward(torch.ones_like(y))


def _timed(fn) -> float:
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop)


def measure(case, training: bool, plans, rounds: int) -> dict:
    """Median ms per call of the persistent path under each FUSEDRNN_PERSISTENT_GRID value of
    `plans` and of cuDNN, interleaved; a plan that cannot hold the layer goes to not_run."""
    cell, dtype_name, T, N, H = case
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    fused = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU, "rnn": fusedrnn.RNN}[cell](H, H).to("cuda", dtype)
    nn_mod = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](H, H).to("cuda", dtype)
    x = torch.randn(T, N, H, device="cuda", dtype=dtype).requires_grad_(training)
    calls, why = {}, {}
    for plan in plans:
        def run(plan=plan):
            os.environ["FUSEDRNN_PERSISTENT_GRID"] = plan
            _call(fused, x, training)
        try:
            run()
            calls[plan] = run
        except RuntimeError as e:
            if "the persistent path does not run this layer" not in str(e):
                raise
            why[plan] = str(e).splitlines()[0].split("): ", 1)[-1]
    calls["cudnn"] = lambda: _call(nn_mod, x, training)
    times = {k: [] for k in calls}
    for _ in range(2):
        for fn in calls.values():
            fn()
    for _ in range(rounds):
        for k, fn in calls.items():
            times[k].append(_timed(fn))
    return {"cell": cell, "dtype": dtype_name, "T": T, "N": N, "H": H, "training": training,
            "macs_per_step": N * _gates(cell) * H * H, "ms": {k: statistics.median(v) for k, v in times.items()},
            "not_run": why}


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
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=None, help="results folder (default bench/results/<machine>)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("persistent_grid: needs a CUDA device", file=sys.stderr)
        return 1
    os.environ["FUSEDRNN_CUDA_PATH"] = "persistent"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = {}
    for key, cases, plans in (("grid", GRID_CASES, GRID_PLANS), ("units", UNIT_CASES, UNIT_PLANS)):
        results[key] = []
        print(f"{'case':<38} {'MACs':>9} " + " ".join(f"{p + ' ms':>10}" for p in plans + ("cudnn",)))
        for case in cases:
            for training in (False, True):
                r = measure(case, training, plans, args.rounds)
                results[key].append(r)
                name = f"{case[0]} {case[1]} T{case[2]} N{case[3]} H{case[4]} {'train' if training else 'inf'}"
                print(f"{name:<38} {r['macs_per_step']:>9} " +
                      " ".join(f"{r['ms'][p]:>10.3f}" if p in r["ms"] else f"{'-':>10}" for p in plans + ("cudnn",)))
    os.environ.pop("FUSEDRNN_PERSISTENT_GRID", None)
    os.environ.pop("FUSEDRNN_CUDA_PATH", None)
    machine = envinfo.machine_name("cuda")
    env = envinfo.environment(tf32=False)
    out = Path(args.out) if args.out else HERE / "results" / machine
    out.mkdir(parents=True, exist_ok=True)
    (out / "persistent-grid.json").write_text(json.dumps({"env": env, **results}, indent=1) + "\n")
    lines = ["# The persistent path's plans against each other and cuDNN", "", envinfo.stamp(env, machine), "",
             f"Input size = H; median of {args.rounds} interleaved rounds, CUDA events per call "
             "(bench/persistent_grid.py); the columns are FUSEDRNN_PERSISTENT_GRID's values (auto: the "
             "default's pick; a number: that many hidden units a block); `-`: the plan cannot hold the "
             "layer.", ""]
    lines += _table(results["grid"], GRID_PLANS, "## One block or slices over many blocks")
    lines += _table(results["units"], UNIT_PLANS, "## Units per block, issue 6's case 1 and its GRU row")
    (out / "persistent-grid.md").write_text("\n".join(lines))
    print(f"wrote {out / 'persistent-grid.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
