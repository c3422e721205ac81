"""A backward's products beside its BPTT against after it, on the CPU: whole training calls
(forward and backward) of one-direction layers, each case timed in one process with
FUSEDRNN_CPU_OVERLAP unset (the automatic choice: BackwardProducts in
csrc/kernels/cpu/rnn_cpu_impl.h) and =never (the products after the BPTT), alternating.
Every cell, and the LSTM with a projection (proj_size = H/2) and the GRU with
reset_after=False; T=100, input size = hidden size; float32.

    python bench/overlap.py                    # 2 threads, then 1; writes bench/results/<machine>/overlap.md
    python bench/overlap.py --threads 4 --out build/overlap
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # a clone without PYTHONPATH: the in-place build

import torch  # noqa: E402

import envinfo  # noqa: E402
import fusedrnn  # noqa: E402
from directions import paired  # noqa: E402

SWITCH = "FUSEDRNN_CPU_OVERLAP"
SIZES = [(1, 64), (16, 32), (16, 64), (64, 64), (256, 64), (64, 100), (64, 128)]
# cell, variant, constructor keywords (H: the hidden size)
CELLS = [("LSTM", "plain", lambda H: {}), ("LSTM", "proj", lambda H: {"proj_size": H // 2}),
         ("GRU", "plain", lambda H: {}), ("GRU", "reset_before", lambda H: {"reset_after": False}),
         ("RNN", "plain", lambda H: {})]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="2,1", help="comma list (default 2,1)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", help="folder for the .md and .json (default bench/results/<machine>)")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        for cell, variant, kw in CELLS:
            for N, H in SIZES:
                torch.manual_seed(0)
                m = getattr(fusedrnn, cell)(H, H, **kw(H))
                x = torch.randn(args.steps, N, H, requires_grad=True)
                g = torch.randn_like(m(x)[0])

                def training():
                    m(x)[0].backward(g)

                training()
                training()
                auto, never = paired(training, args.rounds, 5, SWITCH)
                row = {"threads": t, "cell": cell, "variant": variant, "N": N, "H": H,
                       "auto_ms": auto, "after_ms": never}
                rows.append(row)
                print(json.dumps(row), flush=True)

    lines = [
        f"`python bench/overlap.py --threads {args.threads}`: one layer, one direction, T={args.steps}, C=H "
        "(proj: proj_size = H/2), "
        f"float32, training (forward and backward); median ms of {args.rounds} interleaved rounds of 5 calls; "
        "`auto` is the automatic choice, `after` is FUSEDRNN_CPU_OVERLAP=never; ratio = auto / after "
        "(below 1: faster).", "",
        "| threads | cell | variant | N | H | auto ms | after ms | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['cell']} | {r['variant']} | {r['N']} | {r['H']} | "
                     f"{r['auto_ms']:.3f} | {r['after_ms']:.3f} | {r['auto_ms'] / r['after_ms']:.2f} |")
    stem = "overlap" if args.threads == "2,1" else f"overlap-{args.threads.replace(',', '-')}t"
    envinfo.write_results("cpu", args.out, stem, "A backward's products beside its BPTT against after it (CPU)",
                          {"rows": rows}, lines)


if __name__ == "__main__":
    main()
