"""Where a step of the persistent kernels spends its time, from the kernels' own step trace
(FUSEDRNN_PERSISTENT_TRACE=1): block 0's clock at four points of every step (TracePoint in
csrc/kernels/cuda/rnn_cuda.h), turned into the time of each phase of a step:

    product   from the step's start to its recurrent product in shared memory (the prefetch
              and row loads it issues, the loads of h or dG from L2, the product, its reduction)
    units     the unit functor's cell math and writes (with two barriers a step: also the
              middle barrier and the second product)
    barrier   the step's last barrier: its latency, and the wait for the slowest block
    gap       from the barrier to the next step's start (the loop's own work)

and, per launch, the prologue (weights into shared memory) and the epilogue. Medians and 90th
percentiles over the steps of one call, per kernel; the launch's duration from the global timer.
Runs issue 6's goal rows and the small float32 rows of the quick suite on the persistent path
(the plan auto picks, or --grid), inference and training; the 16-bit rows twice, with the
tensor-core product's other operand staged in shared memory and loaded from global memory
(FUSEDRNN_PERSISTENT_STAGE=1 and 0). Writes persistent-trace.json and .md
under --out (default bench/results/<machine>) and prints the tables.

    python bench/persistent_trace.py [--out DIR] [--grid auto|one|many|<units>]

`make gpu-session` runs it (its `trace` step). Needs CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import sys
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # a clone without PYTHONPATH: the in-place build

PHASES = ("product", "units", "barrier", "gap")
# (cell, dtype, T, N, H): issue 6's case 1 and its bfloat16 GRU row, and the two float32 rows of
# the quick suite where the persistent path was furthest behind cuDNN (bench/PERSISTENT.md, v5).
TRACE_CASES = [("lstm", "float16", 1024, 16, 768), ("gru", "bfloat16", 1024, 16, 768),
               ("lstm", "float32", 100, 1, 64), ("rnn", "float32", 100, 16, 256)]


def _quantile(xs: List[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def phases(record: dict) -> dict:
    """One launch's record (fusedrnn._C._persistent_traces) as times in ns: per step, the
    duration of each phase of PHASES (gap: none after the last step), and the launch's
    prologue, epilogue and duration. Clocks become ns at the rate the header measured (the
    global timer's ns over the clock's cycles across the launch)."""
    h, k, v = record["header"], record["points"], record["values"]
    ns0, c0, ns1, c1 = v[:h]
    rate = (ns1 - ns0) / (c1 - c0) if c1 > c0 else 1.0
    steps = [v[h + i * k:h + (i + 1) * k] for i in range((len(v) - h) // k)]
    out = {p: [] for p in PHASES}
    for i, (begin, product, units, end) in enumerate(steps):
        out["product"].append((product - begin) * rate)
        out["units"].append((units - product) * rate)
        out["barrier"].append((end - units) * rate)
        if i + 1 < len(steps):
            out["gap"].append((steps[i + 1][0] - end) * rate)
    out["prologue"] = (steps[0][0] - c0) * rate if steps else 0.0
    out["epilogue"] = (c1 - steps[-1][3]) * rate if steps else 0.0
    out["launch"] = float(ns1 - ns0)
    out["steps"] = len(steps)
    return out


def summarize(records: List[dict]) -> Dict[str, dict]:
    """Per kernel, over every step of its launches in `records`: the median and 90th
    percentile of each phase (ns), the median step (ns), and the launches' total duration,
    prologues and epilogues (us)."""
    by_kernel: Dict[str, List[dict]] = {}
    for r in records:
        by_kernel.setdefault(r["kernel"], []).append(r)
    out = {}
    for kernel, recs in by_kernel.items():
        ph = [phases(r) for r in recs]
        per = {p: [x for q in ph for x in q[p]] for p in PHASES}
        steps = [sum(q[p][i] for p in ("product", "units", "barrier")) for q in ph for i in range(q["steps"])]
        out[kernel] = {
            "launches": len(recs), "steps": sum(q["steps"] for q in ph),
            "blocks": recs[0]["blocks"], "units": recs[0]["units"], "tensor_cores": recs[0]["tensor_cores"],
            "staged": recs[0].get("staged", False),
            "median_ns": {p: statistics.median(xs) if xs else 0.0 for p, xs in per.items()},
            "p90_ns": {p: _quantile(xs, 0.9) if xs else 0.0 for p, xs in per.items()},
            "step_median_ns": statistics.median(steps) if steps else 0.0,
            "launch_us": sum(q["launch"] for q in ph) / 1e3,
            "prologue_us": sum(q["prologue"] for q in ph) / 1e3,
            "epilogue_us": sum(q["epilogue"] for q in ph) / 1e3,
        }
    return out


def _product(s: dict) -> str:
    """The plan's product: on tensor cores, with its other operand staged in shared memory or
    loaded from global memory; or on CUDA cores."""
    if not s["tensor_cores"]:
        return "no"
    return "yes, staged" if s.get("staged") else "yes, direct"


def table(rows: List[dict]) -> List[str]:
    lines = ["| cell | dtype | T | N | H | mode | kernel | blocks x units | tensor cores | "
             + " | ".join(f"{p} ns (p90)" for p in PHASES) + " | step ns | launches us | prologue us |",
             "|---|---|---:|---:|---:|---|---|---:|---|" + "---:|" * (len(PHASES) + 3)]
    for r in rows:
        for kernel, s in r["kernels"].items():
            cells = [f"{s['median_ns'][p]:.0f} ({s['p90_ns'][p]:.0f})" for p in PHASES]
            lines.append(f"| {r['cell']} | {r['dtype']} | {r['T']} | {r['N']} | {r['H']} | {r['mode']} | "
                         f"{kernel.replace('_persistent_', ' ').replace('_kernel', '')} | "
                         f"{s['blocks']} x {s['units']} | {_product(s)} | "
                         + " | ".join(cells) + f" | {s['step_median_ns']:.0f} | {s['launch_us']:.1f} | "
                         f"{s['prologue_us']:.1f} |")
    return lines


def trace_row(spec, mode: str, grid: str, stage: str = "1") -> dict:
    """One call of the row of bench/cases.py on the persistent path with the trace on (after
    two calls whose traces are let go), summarized per kernel."""
    import cases
    from measure import Runner
    from suites import Case
    from fusedrnn import _C

    cell, dtype, T, N, H = spec
    row = cases.build(Case(device="cuda", cell=cell, T=T, N=N, C=H, H=H, dtype=dtype, mode=mode),
                      baselines={"fused"})
    fused = next(c for c in row.candidates if c.name == "fused")
    runner = Runner(dataclasses.replace(fused, flags=functools.partial(
        cases.env, FUSEDRNN_CUDA_PATH="persistent", FUSEDRNN_PERSISTENT_GRID=grid,
        FUSEDRNN_PERSISTENT_STAGE=stage, FUSEDRNN_PERSISTENT_TRACE="1")),
        row, mode, "cuda")
    runner.once()
    runner.once()
    _C._persistent_traces()
    runner.once()
    records = _C._persistent_traces()["records"]
    return {"cell": cell, "dtype": dtype, "T": T, "N": N, "H": H, "mode": mode, "grid": grid,
            "stage": stage, "kernels": summarize(records)}


def main(argv=None) -> int:
    import envinfo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="results folder (default bench/results/<machine>)")
    ap.add_argument("--grid", default="auto", help="FUSEDRNN_PERSISTENT_GRID for every row (default auto)")
    args = ap.parse_args(argv)
    if not envinfo.cuda_only("persistent_trace"):
        return 1
    rows = []
    for spec in TRACE_CASES:
        for mode, stage in [(m, s) for m in ("inference", "training")
                            for s in (("1", "0") if spec[1] in ("float16", "bfloat16") else ("1",))]:
            try:
                rows.append(trace_row(spec, mode, args.grid, stage))
            except RuntimeError as e:
                if "the persistent path does not run this layer" not in str(e):
                    raise
                print(f"{spec} {mode}: {str(e).splitlines()[0]}")
                continue
            print("\n".join(table([rows[-1]])[2:]))
    lines = ["Input size = H; one call (after two warm-up calls) with FUSEDRNN_PERSISTENT_TRACE=1, "
             f"FUSEDRNN_PERSISTENT_GRID={args.grid}: block 0's clock at four points of every step "
             "(bench/persistent_trace.py has the phases). Median over the steps, 90th percentile in "
             "brackets; launches: the launches' total duration by the global timer.", ""]
    envinfo.write_gpu_results(args.out, "persistent-trace", "Where a step of the persistent kernels spends its time",
                              {"rows": rows}, lines + table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
