"""Benchmark cases and the named suites.

A case is one row of the results: a cell (and variant), a shape, a dtype, a
device, a mode and (on CPU) a thread count. Every candidate of a row (fusedrnn
and the baselines) runs that same case, interleaved, in the same process.

Legend: T steps, N batch, C input size, H hidden size, L layers, D directions.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Dict, Iterable, List, Optional, Sequence

# Sequence modules and single-step cells, by family.
CELLS = ("lstm", "gru", "rnn", "lstm_cell", "gru_cell", "rnn_cell")

# Variants per family. "plain" is torch.nn's cell; "relu" is nn.RNN(nonlinearity="relu").
# The others have no torch.nn twin: their rows report the variant/plain ratio against the
# plain fused cell of the same size, and the reference.
VARIANTS: Dict[str, Sequence[str]] = {
    "lstm": ("plain", "peephole", "coupled", "peephole+coupled"),
    "gru": ("plain", "reset_before"),
    "rnn": ("plain", "relu"),
}
NN_TWIN = {"plain", "relu"}

MODES = ("inference", "training", "forward", "backward")
MODE_SHORT = {"inference": "inf", "training": "train", "forward": "fwd", "backward": "bwd"}
DTYPES = ("float32", "float16", "bfloat16", "float64")
DTYPE_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}


def family(cell: str) -> str:
    return cell.replace("_cell", "")


def is_step_cell(cell: str) -> bool:
    return cell.endswith("_cell")


@dataclass(frozen=True, order=True)
class Case:
    """One row. For single-step cells (``*_cell``) a row times T steps of the cell in a
    Python loop (how cells are used), and L = D = 1."""

    device: str = "cpu"
    threads: int = 1  # CPU intra-op threads (torch.set_num_threads); on CUDA, the host's
    cell: str = "lstm"
    variant: str = "plain"
    T: int = 100
    N: int = 16
    C: int = 256
    H: int = 256
    L: int = 1
    D: int = 1
    dtype: str = "float32"
    mode: str = "inference"

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose from {', '.join(CELLS)}")
        if self.variant not in VARIANTS[family(self.cell)]:
            raise ValueError(
                f"{self.cell} has no variant {self.variant!r}; choose from {', '.join(VARIANTS[family(self.cell)])}"
            )
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        if min(self.T, self.N, self.C, self.H) <= 0 or self.L not in (1, 2, 3, 4, 5, 6, 7, 8) or self.D not in (1, 2):
            raise ValueError(f"bad shape T={self.T} N={self.N} C={self.C} H={self.H} L={self.L} D={self.D}")
        if is_step_cell(self.cell) and (self.L != 1 or self.D != 1):
            raise ValueError(f"{self.cell} is a single-step cell: layers and directions must be 1")

    @property
    def has_nn_twin(self) -> bool:
        return self.variant in NN_TWIN

    def key(self) -> str:
        """Stable identity of a row, used to match rows in --check."""
        return (
            f"{self.device}/t{self.threads}/{self.cell}/{self.variant}/T{self.T}/N{self.N}/C{self.C}/H{self.H}"
            f"/L{self.L}/D{self.D}/{self.dtype}/{self.mode}"
        )

    def shape(self) -> str:
        s = f"T={self.T} N={self.N} C={self.C} H={self.H}"
        if self.L != 1 or self.D != 1:
            s += f" L={self.L} D={self.D}"
        return s

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------- the suites

SEQ_PLAIN = [("lstm", "plain"), ("gru", "plain"), ("rnn", "plain"), ("rnn", "relu")]
CELL_PLAIN = [("lstm_cell", "plain"), ("gru_cell", "plain"), ("rnn_cell", "plain"), ("rnn_cell", "relu")]
ALL_VARIANTS_NO_TWIN = [
    (cell, v) for cell in CELLS for v in VARIANTS[family(cell)] if v not in NN_TWIN
]


def _grid(cells, shapes, modes, threads, device="cpu", dtypes=("float32",), LD=((1, 1),)) -> List[Case]:
    out = []
    for (cell, variant), (T, N, C, H), mode, thr, dtype, (L, D) in itertools.product(
        cells, shapes, modes, threads, dtypes, LD
    ):
        if is_step_cell(cell) and (L, D) != (1, 1):
            continue
        out.append(Case(device, thr, cell, variant, T, N, C, H, L, D, dtype, mode))
    return out


# Issue 2's shapes: a latency-bound one (N=1, H=64) and a throughput one (N=16, H=256).
QUICK_SHAPES = [(100, 1, 64, 64), (100, 16, 256, 256)]
# Issue 4's GPU shapes (T, N, C=H, H).
GPU_SHAPES = [(1024, 16, 768, 768), (100, 64, 512, 512), (25, 128, 1024, 1024)]


def cpu_threads() -> List[int]:
    """1 thread and every core this process may use (at least 2, the reference machine)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return sorted({1, max(2, n) if n >= 2 else 1})


def quick(device: str) -> List[Case]:
    """About two minutes on a 2-core machine or on a GPU."""
    if device == "cuda":
        modes = ("inference", "training")
        cases = _grid(SEQ_PLAIN[:3], QUICK_SHAPES, modes, (1,), "cuda")
        cases += _grid(SEQ_PLAIN[:3], GPU_SHAPES, modes, (1,), "cuda", ("bfloat16",))
        cases += _grid(SEQ_PLAIN[:1], GPU_SHAPES, modes, (1,), "cuda", ("float32",))
        cases += _grid(ALL_VARIANTS_NO_TWIN[:4], [GPU_SHAPES[1]], modes, (1,), "cuda")
        cases += _grid([("lstm", "plain")], [(T, 64, 512, 512) for T in (25, 400)], modes, (1,), "cuda")
        return cases
    thr = (1, 2)
    modes = ("inference", "training")
    cases = _grid(SEQ_PLAIN + CELL_PLAIN, QUICK_SHAPES, modes, thr)
    # Variants without a torch.nn twin: one thread, against the plain fused cell.
    cases += _grid(ALL_VARIANTS_NO_TWIN, QUICK_SHAPES, modes, (1,))
    # Time vs T (the latency-bound shape, where per-step overheads show).
    cases += _grid([("lstm", "plain")], [(T, 1, 64, 64) for T in (10, 30, 300)], modes, (1,))
    return cases


def cpu() -> List[Case]:
    """The CPU suite: every cell and variant over a grid of shapes, layers, directions
    and thread counts (about 17-18 minutes on 2 cores)."""
    thr = tuple(cpu_threads())
    modes = ("inference", "training")
    shapes = [(100, 1, 64, 64), (100, 16, 256, 256), (100, 64, 512, 512), (25, 128, 256, 256), (400, 8, 128, 128)]
    cases = _grid(SEQ_PLAIN + CELL_PLAIN, shapes, modes, thr)
    cases += _grid(ALL_VARIANTS_NO_TWIN, shapes[:3], modes, thr)
    cases += _grid(SEQ_PLAIN[:3], [(100, 16, 256, 256)], modes, thr, LD=((2, 1), (1, 2), (2, 2)))
    for cell in ("lstm", "gru", "rnn"):
        cases += _grid([(cell, "plain")], [(T, 16, 256, 256) for T in (10, 30, 300, 1000)], modes, thr)
    cases += _grid(SEQ_PLAIN[:3], [(100, 16, 256, 256)], ("forward", "backward"), thr)
    return cases


def gpu() -> List[Case]:
    """Issue 4: each cell in fp16, bf16, fp32, inference and training, at the three GPU
    shapes, 1 and 2 layers, 1 and 2 directions; plus variants and single-step cells."""
    modes = ("inference", "training")
    dtypes = ("float16", "bfloat16", "float32")
    LD = ((1, 1), (2, 1), (1, 2), (2, 2))
    cases = _grid(SEQ_PLAIN[:3], GPU_SHAPES, modes, (1,), "cuda", dtypes, LD)
    cases += _grid(CELL_PLAIN[:3], GPU_SHAPES, modes, (1,), "cuda", ("bfloat16", "float32"))
    cases += _grid(ALL_VARIANTS_NO_TWIN, GPU_SHAPES[1:2], modes, (1,), "cuda", ("bfloat16", "float32"))
    for cell in ("lstm", "gru", "rnn"):
        cases += _grid([(cell, "plain")], [(T, 64, 512, 512) for T in (16, 64, 256, 1024)], modes, (1,), "cuda",
                       ("bfloat16", "float32"))
    cases += _grid(SEQ_PLAIN[:3], GPU_SHAPES[1:2], ("forward", "backward"), (1,), "cuda", ("bfloat16", "float32"))
    return cases


def full(cuda_available: bool) -> List[Case]:
    cases = cpu()
    cases += _grid(SEQ_PLAIN[:3] + CELL_PLAIN[:3], [(100, 16, 256, 256)], ("forward", "backward"),
                   tuple(cpu_threads()))
    cases += _grid([("lstm", "plain")], [(100, 16, 256, 256)], ("inference", "training"), tuple(cpu_threads()),
                   dtypes=("bfloat16",))
    if cuda_available:
        cases += gpu()
    return cases


SUITES = {
    "quick": "default; about two minutes. CPU: every cell and variant at T=100, N=1, H=64 and N=16, H=256, "
             "inference and training, 1 and 2 threads, plus a T sweep. "
             "GPU: LSTM/GRU/RNN at those shapes (fp32) and at (1024,16,768), (100,64,512), (25,128,1024) "
             "(bf16; LSTM also fp32), LSTM variants, a T sweep.",
    "cpu": "every cell and variant over five shapes, 1/2 layers and directions, T sweeps, 1 and all threads, "
           "forward and backward separately (about 17-18 minutes on 2 cores)",
    "gpu": "each cell in fp16/bf16/fp32, inference and training, at (1024,16,768), (100,64,512), "
           "(25,128,1024), 1-2 layers, 1-2 directions, vs cuDNN and a loop of nn cells; plus T sweeps (needs CUDA)",
    "full": "cpu + gpu (where CUDA is present) + forward/backward for every cell + bf16 on CPU",
}


def suite(name: str, device: Optional[str], cuda_available: bool) -> List[Case]:
    if name == "quick":
        cases = quick(device or ("cuda" if cuda_available else "cpu"))
    elif name == "cpu":
        cases = cpu()
    elif name == "gpu":
        cases = gpu()
    elif name == "full":
        cases = full(cuda_available)
    else:
        raise SystemExit(f"unknown suite {name!r}; choose from {', '.join(SUITES)} (see --list)")
    return dedupe(cases)


def dedupe(cases: Iterable[Case]) -> List[Case]:
    """Drops repeats, and orders rows so that the thread count changes rarely (each
    change re-forms the OpenMP team)."""
    seen, out = set(), []
    for c in cases:
        if c not in seen:
            seen.add(c)
            out.append(c)
    order = {c: i for i, c in enumerate(out)}
    return sorted(out, key=lambda c: (c.device, c.threads, order[c]))


def custom(axes: dict, cuda_available: bool) -> List[Case]:
    """The cross product of the axes given on the command line, with defaults for the rest
    (cell: lstm, or the families of the variants asked for where the LSTM has none of them)."""
    device = axes.get("device") or ["cuda" if cuda_available else "cpu"]
    wanted = set(axes.get("variant") or ["plain"])
    cells = axes.get("cell") or (["lstm"] if wanted & set(VARIANTS["lstm"])
                                 else [f for f in VARIANTS if wanted & set(VARIANTS[f])] or ["lstm"])
    out = []
    for dev in device:
        threads = axes.get("threads") or ([1] if dev == "cuda" else cpu_threads())
        for cell in cells:
            variants = axes.get("variant") or ["plain"]
            variants = [v for v in variants if v in VARIANTS[family(cell)]]
            H = axes.get("H") or [256]
            for variant, T, N, h, L, D, dtype, mode, thr in itertools.product(
                variants, axes.get("T") or [100], axes.get("N") or [16], H,
                axes.get("layers") or [1], axes.get("dirs") or [1], axes.get("dtype") or ["float32"],
                axes.get("mode") or ["inference", "training"], threads,
            ):
                for C in axes.get("C") or [h]:
                    if is_step_cell(cell) and (L, D) != (1, 1):
                        continue
                    out.append(Case(dev, thr, cell, variant, T, N, C, h, L, D, dtype, mode))
    return dedupe(out)


def filter_cases(cases: List[Case], axes: dict) -> List[Case]:
    """Keeps the rows of a suite that match every axis given."""
    attr = {"layers": "L", "dirs": "D"}
    out = []
    for c in cases:
        ok = True
        for name, values in axes.items():
            if values and getattr(c, attr.get(name, name)) not in values:
                ok = False
                break
        if ok:
            out.append(c)
    return out


def with_threads(case: Case, threads: int) -> Case:
    return replace(case, threads=threads)
