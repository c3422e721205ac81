"""The per-step floor of the persistent path on this GPU: the latency of the
barrier the persistent kernels meet at between steps, by the number of blocks in
the launch: the cooperative-groups grid sync, and with one block the block
barrier that replaces it there (step_barrier in csrc/kernels/cuda/persistent.cuh).

Each point times one cooperative launch of `steps` barriers and one of none
(CUDA events, median of the repeats, after a warm-up) and reports the
difference per barrier. Writes bench/results/<machine>/persistent-floor.json
and .md and prints the table; bench/PERSISTENT.md uses these numbers.

    python bench/persistent_floor.py [--steps 4096] [--repeats 15] [--blocks 1,8,32,...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # a clone without PYTHONPATH: the in-place build

import torch  # noqa: E402

import envinfo  # noqa: E402
from fusedrnn import _C  # noqa: E402


def time_launch(blocks: int, steps: int, repeats: int) -> float:
    """Median milliseconds of one launch of `steps` barriers over `blocks` blocks."""
    for _ in range(3):
        _C._grid_barrier_probe(blocks, steps)
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        _C._grid_barrier_probe(blocks, steps)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4096, help="barriers per timed launch")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--blocks", default=None,
                    help="comma-separated block counts (default: 1, 8, 32, 64, 96, the SM count and twice it, "
                         "each where it fits on the device at once)")
    ap.add_argument("--out", default=None, help="results folder (default bench/results/<machine>)")
    args = ap.parse_args(argv)
    if not envinfo.cuda_only("persistent_floor"):
        return 1
    if not hasattr(_C, "_grid_barrier_probe"):
        print("persistent_floor: this build of fusedrnn has no CUDA kernels", file=sys.stderr)
        return 1
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    if args.blocks:
        counts = [int(b) for b in args.blocks.split(",")]
    else:
        counts = sorted({1, 8, 32, 64, 96, sms, 2 * sms})
    rows = []
    print(f"{'blocks':>7} {'launch, 0 barriers (us)':>24} {'per barrier (us)':>17}")
    for b in counts:
        try:
            t0 = time_launch(b, 0, args.repeats)
            t1 = time_launch(b, args.steps, args.repeats)
        except RuntimeError as e:  # more blocks than can be co-resident
            print(f"{b:>7} not run: {e}".splitlines()[0])
            continue
        per_us = (t1 - t0) / args.steps * 1e3
        rows.append({"blocks": b, "steps": args.steps, "launch_ms": t0, "launch_with_steps_ms": t1,
                     "per_barrier_us": per_us})
        print(f"{b:>7} {t0 * 1e3:>24.1f} {per_us:>17.3f}")
    lines = [f"One cooperative launch of {args.steps} step barriers minus one of none, per barrier "
             f"(a grid sync; with 1 block a block barrier); median of {args.repeats} launches "
             f"(bench/persistent_floor.py).", "",
             "| blocks | launch with no barrier (us) | per barrier (us) |", "|---|---|---|"]
    lines += [f"| {r['blocks']} | {r['launch_ms'] * 1e3:.1f} | {r['per_barrier_us']:.3f} |" for r in rows]
    envinfo.write_gpu_results(args.out, "persistent-floor", "Step barrier latency of the persistent kernels",
                              {"rows": rows}, lines)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
