"""Timing, memory and output checks for the candidates of one row.

Timing protocol (the same for every candidate of a row, all in one process):

1. Warm-up: each candidate runs until it has made at least two calls and spent
   ``warmup_s`` (first calls pay for allocation, weight packing, oneDNN primitive
   creation, cuDNN heuristics, OpenMP team start-up).
2. Calibration: the last warm-up call gives a time estimate t; a candidate's block is
   k = max(1, round(block_s / t)) back-to-back calls, so that timer resolution and the
   timer's own overhead do not matter.
3. Rounds: every round times one block of each candidate, in an order rotated by one at
   every round (round-robin), so that drift of the machine (other tenants, clock changes)
   falls on all candidates alike. The number of rounds fills ``budget_s`` (at least
   ``min_rounds``; a row that overruns ``cap_s`` stops after three rounds). The slow
   context baselines (cell loop, reference) may be limited to the first
   ``secondary_rounds`` rounds, and a candidate whose single call takes more than
   ``cap_s / 4`` to two rounds: their numbers are context, fused vs torch.nn is the
   comparison that needs the samples.
4. Statistics per candidate over its per-call block times: median, quartiles (IQR), min;
   on CPU also the minor page faults per call (getrusage), which show a candidate whose
   allocations go to the kernel every call.

Clocks: ``time.perf_counter`` on CPU; CUDA events on the current stream on GPU, with a
synchronisation before each block (so blocks never overlap). With ``graphs=True`` each
CUDA candidate is captured once into a CUDA graph and the timed call is a replay, which
removes the host's launch cost (for launch-bound shapes).

The Python garbage collector is off while a row is timed (as in ``timeit``).
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

try:
    import resource
except ImportError:  # not on Windows
    resource = None

import torch

from cases import Candidate, Row


@dataclass
class Timing:
    budget_s: float = 0.5
    min_rounds: int = 5
    max_rounds: int = 200
    warmup_s: float = 0.05
    block_s: float = 0.01
    cap_s: float = 8.0
    secondary_rounds: int = 0  # 0: secondary candidates run every round


@dataclass
class Stats:
    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    mean_ms: float
    n: int
    block: int
    samples_ms: List[float] = field(default_factory=list)
    faults_per_call: Optional[float] = None  # CPU: minor page faults per call (getrusage)

    @property
    def iqr_rel(self) -> float:
        return (self.q3_ms - self.q1_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["samples_ms"] = [round(s, 6) for s in self.samples_ms]
        if d["faults_per_call"] is not None:
            d["faults_per_call"] = round(d["faults_per_call"], 2)
        return d


def _quantile(sorted_xs: List[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_xs:
        return math.nan
    pos = (len(sorted_xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarize(samples_s: List[float], block: int) -> Stats:
    xs = sorted(s * 1e3 for s in samples_s)
    return Stats(
        median_ms=_quantile(xs, 0.5), q1_ms=_quantile(xs, 0.25), q3_ms=_quantile(xs, 0.75),
        min_ms=xs[0], mean_ms=sum(xs) / len(xs), n=len(xs), block=block, samples_ms=[s * 1e3 for s in samples_s],
    )


# ---------------------------------------------------------------- runners

class Runner:
    """One candidate in one mode: ``block(k)`` returns the seconds taken by k timed calls.

    inference  forward under torch.no_grad()
    training   forward + backward of sum(output * cot) (``output.backward(cot)``: the same
               gradients without the extra product and sum), gradients set to None first
    forward    forward with autograd recording (what training's forward costs)
    backward   backward alone: the forward runs before each timed call, untimed
    """

    def __init__(self, cand: Candidate, row: Row, mode: str, device: str):
        self.cand, self.row, self.mode, self.device = cand, row, mode, device
        self.cuda = device == "cuda"
        self._graph_replay: Optional[Callable[[], None]] = None
        self._y = None
        self.faults: Optional[int] = 0 if (resource is not None and not self.cuda) else None

    def _clear_grads(self):
        for p in self.cand.params:
            p.grad = None
        self.row.x.grad = None

    def _call(self):
        """One untimed-setup-free call of the mode (backward: setup + call)."""
        m = self.mode
        with self.cand.flags():
            if m == "inference":
                with torch.no_grad():
                    self.cand.forward()
            elif m == "training":
                self._clear_grads()
                self.cand.forward().backward(self.row.cot)
            elif m == "forward":
                self.cand.forward()
            else:
                self._setup()
                self._timed()

    def _setup(self):
        self._clear_grads()
        with self.cand.flags():
            self._y = self.cand.forward()

    def _timed(self):
        with self.cand.flags():
            self._y.backward(self.row.cot)
        self._y = None

    @property
    def needs_setup(self) -> bool:
        return self.mode == "backward"

    def once(self):
        self._call()

    def capture_graph(self) -> Optional[str]:
        """Captures the call into a CUDA graph; returns None or why it could not."""
        if not self.cuda or self.needs_setup:
            return "CUDA graphs: not for the backward mode" if self.cuda else None
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    self._call()
            torch.cuda.current_stream().wait_stream(s)
            self._clear_grads()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                self._call()
            torch.cuda.synchronize()
            self._graph_replay = g.replay
            self._graph = g
            return None
        except Exception as e:  # a candidate that syncs with the host cannot be captured
            torch.cuda.synchronize()
            return f"{self.cand.name}: CUDA graph capture failed ({type(e).__name__}: {str(e)[:120]}); timed eagerly"

    def block(self, k: int) -> float:
        call = self._graph_replay or self._call
        if self.needs_setup:
            total = 0.0
            for _ in range(k):
                self._setup()
                total += self._time(self._timed, 1)
            return total
        return self._time(call, k)

    def _time(self, fn, k: int) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(k):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt if self.faults is not None else 0
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        t = time.perf_counter() - t0
        if self.faults is not None:
            self.faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        return t


def measure(runners: Dict[str, Runner], cfg: Timing, secondary: Sequence[str] = ()) -> Dict[str, Stats]:
    """Interleaved timing of a row's candidates (see the module docstring). Candidates
    named in ``secondary`` (the slow context baselines: cell loop, reference) take part in
    the first ``cfg.secondary_rounds`` rounds only, when that is set; a candidate whose one
    call takes more than a quarter of ``cap_s`` is timed in two rounds."""
    names = list(runners)
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        est: Dict[str, float] = {}
        for name in names:
            r = runners[name]
            min_calls = 1 if (name in secondary and cfg.secondary_rounds) else 2
            t_start = time.perf_counter()
            calls = 0
            while True:
                t = r.block(1)
                calls += 1
                spent = time.perf_counter() - t_start
                if calls >= min_calls and spent >= cfg.warmup_s:
                    break
                if spent > cfg.cap_s / 4:  # a pathologically slow candidate: one call is warm-up enough
                    break
            est[name] = max(t, 1e-7)
            if r.faults is not None:
                r.faults = 0
        block = {n: max(1, round(cfg.block_s / est[n])) for n in names}
        cap = {n: cfg.max_rounds for n in names}
        for n in names:
            if n in secondary and cfg.secondary_rounds:
                cap[n] = cfg.secondary_rounds
            if est[n] > cfg.cap_s / 4:
                cap[n] = 2
        round_cost = sum(block[n] * est[n] for n in names if cap[n] == cfg.max_rounds) or 1e-9
        rounds = int(min(cfg.max_rounds, max(cfg.min_rounds, cfg.budget_s // round_cost)))
        samples: Dict[str, List[float]] = {n: [] for n in names}
        t0 = time.perf_counter()
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for n in order:
                if len(samples[n]) < cap[n]:
                    samples[n].append(runners[n].block(block[n]) / block[n])
            if r + 1 >= 3 and time.perf_counter() - t0 > cfg.cap_s:
                break
        out = {}
        for n in names:
            out[n] = summarize(samples[n], block[n])
            calls = block[n] * len(samples[n])
            out[n].faults_per_call = runners[n].faults / calls if runners[n].faults is not None else None
        return out
    finally:
        if gc_was:
            gc.enable()


# ---------------------------------------------------------------- memory

def activation_bytes(cand: Candidate, row: Row) -> int:
    """Bytes held by the autograd graph after a forward: the unique storages of every
    tensor saved for backward (torch.autograd.graph.saved_tensors_hooks sees the tensors
    saved by built-in ops, by Python autograd Functions and by C++ ones alike), except the
    parameters and the input, which exist without the graph."""
    exclude = {p.untyped_storage().data_ptr() for p in cand.params}
    exclude.add(row.x.untyped_storage().data_ptr())
    held: Dict[object, int] = {}

    def pack(t):
        try:
            s = t.untyped_storage()
            key, nbytes = s.data_ptr(), s.nbytes()
        except (RuntimeError, NotImplementedError):  # opaque layouts (e.g. mkldnn tensors)
            key, nbytes = ("id", id(t)), t.numel() * t.element_size()
        if key not in exclude:
            held[key] = max(held.get(key, 0), nbytes)
        return t

    for p in cand.params:
        p.grad = None
    with cand.flags(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = cand.forward()
    del y
    return int(sum(held.values()))


def cuda_peak_bytes(runner: Runner) -> int:
    """Peak bytes allocated by one call of the mode above what was allocated before it."""
    torch.cuda.synchronize()
    runner._clear_grads()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    runner.once()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


# ---------------------------------------------------------------- outputs

# Loose on purpose: this catches a broken kernel or a wrong baseline (errors of order 1), not
# rounding; the reference runs in the input dtype, so in fp16/bf16 it drifts over long T.
TOLERANCE = {"float64": 1e-8, "float32": 1e-3, "float16": 1e-1, "bfloat16": 2.5e-1}


def output_errors(row: Row) -> Dict[str, float]:
    """Max |y - y_fused| / max(1, max |y_fused|) of every candidate that shares the fused
    module's parameters, in inference: a benchmark of a wrong kernel is worthless."""
    errs: Dict[str, float] = {}
    with torch.no_grad():
        fused = next(c for c in row.candidates if c.name == "fused")
        with fused.flags():
            ref = fused.forward().double()
        scale = max(1.0, ref.abs().max().item())
        for c in row.candidates:
            if c.name in ("fused", "fused-plain"):
                continue
            with c.flags():
                y = c.forward().double()
            errs[c.name] = (y - ref).abs().max().item() / scale
    return errs
