"""The persistent path's two plans against each other and cuDNN, on small layers around the
sizes where FUSEDRNN_PERSISTENT_GRID=auto switches from one block to slices of units over many
blocks (2^14 multiply-adds a step on CUDA cores, 2^20 on tensor cores; bench/PERSISTENT.md,
v5): `one` (every unit in one block, block barriers), `many` (slices, grid barriers), `auto`
(the default's pick) and cuDNN, interleaved, median of CUDA-event timings per call. Inference
(no grad) and training (forward and backward). Writes persistent-grid.json and .md under --out
(default bench/results/<machine>) and prints the table; a row where one plan cannot hold the
layer says so.

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

# (cell, dtype, N, H): float32 on CUDA cores (one block holds at most 2048 outputs, N x gates x
# units) and float16 on tensor cores, from well below the threshold to above it. T = 100.
CASES = [
    ("lstm", "float32", 1, 32), ("lstm", "float32", 1, 64), ("lstm", "float32", 1, 128),
    ("gru", "float32", 1, 64), ("rnn", "float32", 1, 64), ("rnn", "float32", 16, 64),
    ("rnn", "float32", 16, 128),
    ("lstm", "float16", 16, 64), ("lstm", "float16", 16, 128), ("gru", "float16", 16, 128),
    ("gru", "float16", 64, 128), ("rnn", "float16", 16, 256), ("rnn", "float16", 64, 256),
]
T = 100
PLANS = ("one", "many", "auto")


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


def measure(cell: str, dtype_name: str, N: int, H: int, training: bool, rounds: int) -> dict:
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    fused = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU, "rnn": fusedrnn.RNN}[cell](H, H).to("cuda", dtype)
    nn_mod = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](H, H).to("cuda", dtype)
    x = torch.randn(T, N, H, device="cuda", dtype=dtype).requires_grad_(training)
    calls, why = {}, {}
    for plan in PLANS:
        def run(plan=plan):
            os.environ["FUSEDRNN_PERSISTENT_GRID"] = plan
            _call(fused, x, training)
        try:
            run()
            calls[plan] = run
        except RuntimeError as e:  # the plan cannot hold the layer
            why[plan] = str(e).splitlines()[0]
    calls["cudnn"] = lambda: _call(nn_mod, x, training)
    times = {k: [] for k in calls}
    for _ in range(3):
        for fn in calls.values():
            fn()
    for _ in range(rounds):
        for k, fn in calls.items():
            times[k].append(_timed(fn))
    row = {"cell": cell, "dtype": dtype_name, "T": T, "N": N, "H": H, "training": training,
           "macs_per_step": N * _gates(cell) * H * H, "ms": {k: statistics.median(v) for k, v in times.items()},
           "not_run": why}
    return row


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
    rows = []
    head = f"{'case':<34} {'MACs':>8} " + " ".join(f"{k + ' ms':>10}" for k in PLANS + ("cudnn",))
    print(head)
    for cell, dtype_name, N, H in CASES:
        for training in (False, True):
            r = measure(cell, dtype_name, N, H, training, args.rounds)
            rows.append(r)
            name = f"{cell} {dtype_name} N{N} H{H} {'train' if training else 'inf'}"
            print(f"{name:<34} {r['macs_per_step']:>8} " +
                  " ".join(f"{r['ms'][k]:>10.3f}" if k in r["ms"] else f"{'-':>10}" for k in PLANS + ("cudnn",)))
    os.environ.pop("FUSEDRNN_PERSISTENT_GRID", None)
    os.environ.pop("FUSEDRNN_CUDA_PATH", None)
    machine = envinfo.machine_name("cuda")
    env = envinfo.environment(tf32=False)
    out = Path(args.out) if args.out else HERE / "results" / machine
    out.mkdir(parents=True, exist_ok=True)
    (out / "persistent-grid.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
    lines = ["# The persistent path in one block or in slices, against cuDNN", "", envinfo.stamp(env, machine), "",
             f"T={T}, input size = H; median of {args.rounds} interleaved rounds, CUDA events per call "
             "(bench/persistent_grid.py). `auto`: FUSEDRNN_PERSISTENT_GRID's default; `-`: the plan "
             "cannot hold the layer.", "",
             "| cell | dtype | N | H | mode | MACs a step | one ms | many ms | auto ms | cuDNN ms | one / many |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ms = r["ms"]
        fmt = lambda k: f"{ms[k]:.3f}" if k in ms else "-"  # noqa: E731
        ratio = f"{ms['one'] / ms['many']:.2f}" if "one" in ms and "many" in ms else "-"
        lines.append(f"| {r['cell']} | {r['dtype']} | {r['N']} | {r['H']} | "
                     f"{'train' if r['training'] else 'inf'} | {r['macs_per_step']} | {fmt('one')} | "
                     f"{fmt('many')} | {fmt('auto')} | {fmt('cudnn')} | {ratio} |")
    (out / "persistent-grid.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'persistent-grid.json'} and .md")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
