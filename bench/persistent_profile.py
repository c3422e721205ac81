"""Issue 6's case 1 on the persistent path, for a profiler: an LSTM in float16,
T=1024, N=16, C=H=768, a few calls of the inference forward (with --backward,
of the training forward and the backward). `make gpu-session` runs it under
Nsight Compute:

    ncu --clock-control none -k regex:lstm_persistent -c 3 ... python bench/persistent_profile.py --backward
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a clone without PYTHONPATH

import torch  # noqa: E402

import fusedrnn  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backward", action="store_true", help="also run the backward")
    p.add_argument("--calls", type=int, default=3)
    args = p.parse_args()
    os.environ["FUSEDRNN_CUDA_PATH"] = "persistent"
    torch.manual_seed(0)
    m = fusedrnn.LSTM(768, 768).to("cuda", torch.float16)
    x = torch.randn(1024, 16, 768, device="cuda", dtype=torch.float16, requires_grad=args.backward)
    for _ in range(args.calls):
        with torch.set_grad_enabled(args.backward):
            y, _ = m(x)
        if args.backward:
            y.backward(torch.randn_like(y))
    torch.cuda.synchronize()
    print(f"ran {args.calls} calls of LSTM float16 T=1024 N=16 H=768 on the persistent path"
          f"{' with the backward' if args.backward else ''}")


if __name__ == "__main__":
    main()
