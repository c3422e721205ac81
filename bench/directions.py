"""The two directions of a bidirectional layer at once against in turn, on the CPU: each case
timed in one process with FUSEDRNN_CPU_DIRECTIONS_AT_ONCE unset (the automatic choice,
cpu_directions_at_once in csrc/torch/cpu_layer.cpp) and =never (in turn), alternating, so that
the machine's drift falls on both alike. One layer, T=100, input size = hidden size.

    python bench/directions.py                 # 2 threads; writes bench/results/<machine>/directions-at-once.md
    python bench/directions.py --threads 4 --out build/directions
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # a clone without PYTHONPATH: the in-place build

import torch  # noqa: E402

import envinfo  # noqa: E402
import fusedrnn  # noqa: E402

SWITCH = "FUSEDRNN_CPU_DIRECTIONS_AT_ONCE"
SIZES = [(1, 64), (16, 64), (64, 64), (16, 128), (16, 256), (64, 256), (16, 512)]


def median_ms(f, n):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def paired(f, rounds, n, switch=SWITCH):
    """Median ms of f with the environment switch `switch` at auto and at never,
    interleaved."""
    got = {"auto": [], "never": []}
    for r in range(rounds):
        for mode in ("auto", "never") if r % 2 == 0 else ("never", "auto"):
            os.environ[switch] = mode
            got[mode].append(median_ms(f, n))
    os.environ.pop(switch, None)
    return statistics.median(got["auto"]), statistics.median(got["never"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", help="folder for the .md and .json (default bench/results/<machine>)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for cell in ("LSTM", "GRU", "RNN"):
            for N, H in SIZES:
                m = getattr(fusedrnn, cell)(H, H, bidirectional=True).to(dtype)
                x = torch.randn(args.steps, N, H, dtype=dtype, requires_grad=True)
                g = torch.randn(args.steps, N, 2 * H, dtype=dtype)

                def inference():
                    with torch.no_grad():
                        m(x)

                def training():
                    m(x)[0].backward(g)

                row = {"dtype": str(dtype).replace("torch.", ""), "cell": cell, "N": N, "H": H}
                for name, f in (("inference", inference), ("training", training)):
                    f()
                    f()
                    auto, never = paired(f, args.rounds, 5)
                    row[name] = {"auto_ms": auto, "in_turn_ms": never}
                rows.append(row)
                print(json.dumps(row), flush=True)

    lines = [
        f"`python bench/directions.py --threads {args.threads}`: one layer, T={args.steps}, C=H, "
        f"{args.threads} threads; median ms of {args.rounds} interleaved rounds of 5 calls each; `auto` is "
        "the automatic choice, `in turn` is FUSEDRNN_CPU_DIRECTIONS_AT_ONCE=never; ratio = auto / in turn "
        "(below 1: faster). Training = forward and backward.", "",
        "| dtype | cell | N | H | inference auto | in turn | ratio | training auto | in turn | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        i, t = r["inference"], r["training"]
        lines.append(f"| {r['dtype']} | {r['cell']} | {r['N']} | {r['H']} | {i['auto_ms']:.3f} | {i['in_turn_ms']:.3f} "
                     f"| {i['auto_ms'] / i['in_turn_ms']:.2f} | {t['auto_ms']:.3f} | {t['in_turn_ms']:.3f} "
                     f"| {t['auto_ms'] / t['in_turn_ms']:.2f} |")
    stem = "directions-at-once" if args.threads == 2 else f"directions-at-once-{args.threads}t"
    envinfo.write_results("cpu", args.out, stem, "Bidirectional layers on the CPU: directions at once against in turn",
                          {"threads": args.threads, "rows": rows}, lines)


if __name__ == "__main__":
    main()
