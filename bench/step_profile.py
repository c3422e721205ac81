"""Where the time of a GPU call goes, by torch.profiler (CUPTI): for each case, fusedrnn on a
forced path (standard, persistent) and cuDNN, the wall time per call, the GPU's busy time per
call (the sum of its kernels) and the kernels behind it (launches per call, mean duration), and
the host time of the ATen calls per call. A wall time far above the busy time is a host-bound
loop (launches, ATen dispatch); a busy time close to the wall time names the kernels to work on.

    python bench/step_profile.py --out build/gpu-session        # writes step-profile.md and .json

`make gpu-session` runs it (its `steps` step). Needs CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # a clone without PYTHONPATH: the in-place build

import torch  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import cases  # noqa: E402
from measure import Runner  # noqa: E402
from suites import Case  # noqa: E402

# (cell, dtype, T, N, H, training): issue 4's shapes where the standard path was slower than
# cuDNN on the H200 (2026-12-04), and issue 6's case 1, where cuDNN has its persistent kernel.
CASES = [
    ("lstm", "float32", 1024, 16, 768, False),
    ("lstm", "bfloat16", 1024, 16, 768, False),
    ("lstm", "float32", 100, 64, 512, False),
    ("lstm", "float32", 100, 64, 512, True),
    ("gru", "bfloat16", 100, 64, 512, False),
    ("lstm", "float16", 1024, 16, 768, False),
    ("lstm", "float16", 1024, 16, 768, True),
]
CANDIDATES = ("standard", "persistent", "cudnn")


def _runner(cell, dtype_name, T, N, H, training, impl) -> Runner:
    """One call of the case, as the benchmark makes it (bench/cases.py, bench/measure.py):
    cuDNN, or fusedrnn on a forced path."""
    mode = "training" if training else "inference"
    row = cases.build(Case(device="cuda", cell=cell, T=T, N=N, C=H, H=H, dtype=dtype_name, mode=mode),
                      baselines={"nn-cudnn"})
    if impl == "cudnn":
        cand = next(c for c in row.candidates if c.name == "nn-cudnn")
    else:
        cand = dataclasses.replace(next(c for c in row.candidates if c.name == "fused"), name=impl,
                                   flags=functools.partial(cases.env, FUSEDRNN_CUDA_PATH=impl))
    return Runner(cand, row, mode, "cuda")


def profile_case(cell, dtype_name, T, N, H, training, impl, calls):
    call = _runner(cell, dtype_name, T, N, H, training, impl).once
    try:
        for _ in range(2):
            call()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) / calls * 1e3
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                call()
            torch.cuda.synchronize()
    except RuntimeError as e:
        return {"error": str(e).splitlines()[0][:200]}
    kernels, host = {}, {}
    for a in prof.key_averages():
        if getattr(a, "is_user_annotation", False):
            continue
        if a.device_type != DeviceType.CPU:  # a kernel, memcpy or memset on the device
            dev_us = getattr(a, "self_device_time_total", None)
            kernels[a.key] = (a.count, dev_us if dev_us is not None else a.self_cuda_time_total)
        elif a.key.startswith(("aten::", "fusedrnn", "cuda")):
            # Host ops also carry the device time of the kernels they launched: not counted here.
            host[a.key] = (a.count, a.cpu_time_total)
    busy_ms = sum(v[1] for v in kernels.values()) / calls / 1e3
    top = sorted(kernels.items(), key=lambda kv: -kv[1][1])[:8]
    host_top = sorted(host.items(), key=lambda kv: -kv[1][1])[:8]
    return {
        "wall_ms": round(wall_ms, 4), "busy_ms": round(busy_ms, 4),
        "kernels": [{"name": n[:120], "per_call": round(c / calls, 2), "mean_us": round(t / c, 3),
                     "ms_per_call": round(t / calls / 1e3, 4)} for n, (c, t) in top],
        "host": [{"name": n[:80], "per_call": round(c / calls, 2), "ms_per_call": round(t / calls / 1e3, 4)}
                 for n, (c, t) in host_top],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("build"), help="folder for step-profile.md and .json")
    p.add_argument("--calls", type=int, default=2)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("step_profile: needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = []
    lines = [f"# Where a call's time goes (torch.profiler), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "", f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
             f"{torch.backends.cudnn.version()}, TF32 off; {args.calls} calls per candidate after 2 warm-up calls. "
             "wall: per call, timed without the profiler; busy: the kernels' summed duration per call.", ""]
    for case in CASES:
        cell, dt, T, N, H, training = case
        title = f"{cell} {dt} T={T} N={N} H={H} {'training' if training else 'inference'}"
        lines += [f"## {title}", ""]
        for impl in CANDIDATES:
            r = profile_case(*case, impl, args.calls)
            results.append({"case": list(case), "impl": impl, **r})
            if "error" in r:
                lines += [f"**{impl}**: not run ({r['error']})", ""]
                continue
            lines += [f"**{impl}**: wall {r['wall_ms']:.3f} ms, busy {r['busy_ms']:.3f} ms "
                      f"({r['busy_ms'] / r['wall_ms']:.0%} of the wall time)", "",
                      "| kernel | per call | mean us | ms per call |", "|---|---:|---:|---:|"]
            lines += [f"| `{k['name']}` | {k['per_call']} | {k['mean_us']} | {k['ms_per_call']} |"
                      for k in r["kernels"]]
            lines += ["", "| host op | per call | ms per call |", "|---|---:|---:|"]
            lines += [f"| `{h['name']}` | {h['per_call']} | {h['ms_per_call']} |" for h in r["host"]]
            lines.append("")
        # After every case, so that a run stopped by its time limit keeps the cases it did.
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "step-profile.md").write_text("\n".join(lines) + "\n")
        (args.out / "step-profile.json").write_text(json.dumps(results, indent=1) + "\n")
        print(f"step_profile: {title} done, {args.out / 'step-profile.md'} written", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
