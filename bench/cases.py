"""The candidates of one row: fusedrnn and the baselines a user would pick instead.

Every candidate of a row computes the same thing on the same input; where a torch.nn twin
exists, all of them read the very same Parameter objects (``X.from_torch(nn_module)``, nn cells
re-pointed at the module's weights, the reference run on the fused module).

  fused        fusedrnn's module (a Python loop of fusedrnn cells for ``*_cell`` rows)
  nn-onednn    torch.nn on CPU with oneDNN enabled (LSTM only: GRU and RNN never use it)
  nn-native    torch.nn on CPU with oneDNN disabled: ATen's own time loop
  nn-cudnn     torch.nn on CUDA (cuDNN)
  cell-loop    a Python loop of torch.nn.*Cell steps over layers, directions and time
  reference    fusedrnn.reference on the fused module's parameters, in the input dtype
  fused-plain  variants only: the plain fused cell of the same size (variant/plain ratio)
  fused-persistent  CUDA sequence rows: fusedrnn's module forced onto the persistent path
               (FUSEDRNN_CUDA_PATH=persistent); left out, with the reason in the notes, where
               that path does not run the row
  fused-standard  CUDA sequence rows: fusedrnn's module forced onto the standard path
               (FUSEDRNN_CUDA_PATH=standard); with fused-persistent, what `fused` (the
               automatic choice between the two) is held to

For ``*_cell`` rows the nn baseline is itself a loop of nn cells, so there is no separate
cell-loop candidate.

Legend: T steps, N batch, C input size, H hidden size, L layers, D directions.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from torch import nn

import fusedrnn
from suites import Case, family, is_step_cell

NN_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
NN_CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}
FUSED_CLASSES = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU, "rnn": fusedrnn.RNN}
FUSED_CELLS = {"lstm": fusedrnn.LSTMCell, "gru": fusedrnn.GRUCell, "rnn": fusedrnn.RNNCell}

BASELINE_ORDER = ("fused-persistent", "fused-standard", "nn-onednn", "nn-native", "nn-cudnn", "cell-loop", "reference",
                  "fused-plain")
NN_NAMES = ("nn-onednn", "nn-native", "nn-cudnn")


@dataclass
class Candidate:
    """forward() runs the candidate's forward on the row's input and returns the output
    sequence [T, N, D*H] (grad mode as set by the caller). ``flags`` is a context manager
    factory put around every call (forward and backward), e.g. the oneDNN switch."""

    name: str
    forward: Callable[[], torch.Tensor]
    params: List[torch.Tensor]
    flags: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    note: str = ""


@dataclass
class Row:
    case: Case
    x: torch.Tensor
    cot: torch.Tensor
    candidates: List[Candidate]
    notes: List[str] = field(default_factory=list)


def _variant_kwargs(fam: str, variant: str) -> dict:
    return {
        "plain": {},
        "relu": {},
        "peephole": {"peephole": True},
        "coupled": {"coupled_gates": True},
        "peephole+coupled": {"peephole": True, "coupled_gates": True},
        "reset_before": {"reset_after": False},
    }[variant]


class _MkldnnFlag:
    """Sets torch's oneDNN switch for the duration of a call. torch.backends.mkldnn.flags()
    would also reset the TF32 and deterministic flags and warn on every call."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.prev = torch._C._get_mkldnn_enabled()
        torch._C._set_mkldnn_enabled(self.enabled)

    def __exit__(self, *exc):
        torch._C._set_mkldnn_enabled(self.prev)


def _graph_names(y: torch.Tensor) -> set:
    seen, stack, names = set(), [y.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(f for f, _ in node.next_functions)
    return names


@functools.lru_cache(maxsize=None)
def nn_paths(fam: str, device: str, dtype: str) -> tuple:
    """Which torch.nn implementations this machine actually runs for a family, found by
    looking at the autograd graph of a tiny forward (torch picks the path per call, from
    the oneDNN switch, the device and the dtype). Returns names from NN_NAMES."""
    dt = getattr(torch, dtype)
    m = NN_CLASSES[fam](8, 8, device=device, dtype=dt)
    x = torch.randn(3, 2, 8, device=device, dtype=dt, requires_grad=True)
    if device == "cuda":
        names = _graph_names(m(x)[0])
        return ("nn-cudnn",) if any("Cudnn" in n for n in names) else ("nn-native",)
    with _MkldnnFlag(True):
        on = any("Mkldnn" in n for n in _graph_names(m(x)[0]))
    with _MkldnnFlag(False):
        off = any("Mkldnn" in n for n in _graph_names(m(x)[0]))
    if on and not off:
        return ("nn-onednn", "nn-native")
    return ("nn-native",)


def _share_cells(nn_mod: nn.Module, fam: str, case: Case) -> List[nn.Module]:
    """nn cells (one per layer and direction) that hold the sequence module's Parameters."""
    cells = []
    for layer in range(case.L):
        for d in range(case.D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            in_size = case.C if layer == 0 else case.H * case.D
            kw = {"nonlinearity": nn_mod.nonlinearity} if fam == "rnn" else {}
            cell = NN_CELLS[fam](in_size, case.H, True, device="meta", **kw)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                setattr(cell, name, getattr(nn_mod, name + sfx))
            cells.append(cell)
    return cells


def _cell_loop_seq(cells, x, case: Case, lstm: bool) -> torch.Tensor:
    """The multi-layer, bidirectional sequence as a Python loop of single-step cells."""
    inp = x
    T = x.shape[0]
    for layer in range(case.L):
        outs = []
        for d in range(case.D):
            cell = cells[layer * case.D + d]
            state = None
            ys = [None] * T
            for t in (range(T - 1, -1, -1) if d else range(T)):
                state = cell(inp[t], state)
                ys[t] = state[0] if lstm else state
            outs.append(torch.stack(ys))
        inp = outs[0] if case.D == 1 else torch.cat(outs, dim=-1)
    return inp


def _step_loop(step, x, lstm: bool) -> torch.Tensor:
    """T steps of a single-step cell, outputs stacked: [T, N, H]."""
    state = None
    ys = []
    for x_t in x:
        state = step(x_t, state)
        ys.append(state[0] if lstm else state)
    return torch.stack(ys)


@contextlib.contextmanager
def env(**values: str):
    """The environment variables `values` (FUSEDRNN_CUDA_PATH, FUSEDRNN_PERSISTENT_GRID) set for
    the calls inside, as they were after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def applicable(case: Case) -> set:
    """The baselines (names of --baselines, "nn" included) that build() measures on a row
    when asked for all of them; fused-persistent may still decline the row at build time."""
    step_cell = is_step_cell(case.cell)
    names = {"reference"}
    if case.has_nn_twin:
        names |= {"nn", "nn-native"} if step_cell else {"nn", "cell-loop", *nn_paths(family(case.cell), case.device,
                                                                                    case.dtype)}
    else:
        names.add("fused-plain")
    if case.device == "cuda" and not step_cell:
        names |= {"fused-persistent", "fused-standard"}
    return names


def build(case: Case, baselines: Optional[set] = None, seed: int = 0) -> Row:
    """The candidates of a row, on shared parameters and one input."""
    fam = family(case.cell)
    step_cell = is_step_cell(case.cell)
    lstm = fam == "lstm"
    dev, dt = case.device, getattr(torch, case.dtype)
    factory = {"device": dev, "dtype": dt}
    want = (lambda name: True) if not baselines else (lambda name: name in baselines or name == "fused")
    vkw = _variant_kwargs(fam, case.variant)
    nl = {"nonlinearity": "relu" if case.variant == "relu" else "tanh"} if fam == "rnn" else {}
    torch.manual_seed(seed)
    training = case.mode != "inference"
    notes: List[str] = []
    cands: List[Candidate] = []

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if step_cell:
            if case.has_nn_twin:
                nn_mod = NN_CELLS[fam](case.C, case.H, True, **factory, **nl)
                fused = FUSED_CELLS[fam].from_torch(nn_mod)
            else:
                nn_mod = None
                fused = FUSED_CELLS[fam](case.C, case.H, True, **factory, **vkw)
        else:
            seq_kw = dict(num_layers=case.L, bidirectional=case.D == 2, **factory, **nl)
            if case.has_nn_twin:
                nn_mod = NN_CLASSES[fam](case.C, case.H, **seq_kw)
                fused = FUSED_CLASSES[fam].from_torch(nn_mod)
            else:
                nn_mod = None
                fused = FUSED_CLASSES[fam](case.C, case.H, **seq_kw, **vkw)
    params = [p for p in fused.parameters()]
    for p in params:
        p.requires_grad_(training)

    x = torch.randn(case.T, case.N, case.C, **factory).requires_grad_(training)
    out_h = case.H * (1 if step_cell else case.D)
    cot = torch.randn(case.T, case.N, out_h, **factory)

    if step_cell:
        cands.append(Candidate("fused", lambda: _step_loop(fused, x, lstm), params))
    else:
        cands.append(Candidate("fused", lambda: fused(x)[0], params))

    if nn_mod is not None:
        nn_params = list(nn_mod.parameters())
        if step_cell:
            # nn cells never use cuDNN or oneDNN: ATen's own cell kernels, on either device.
            name = "nn-native"
            if want("nn") or want(name):
                cands.append(Candidate(name, lambda: _step_loop(nn_mod, x, lstm), nn_params,
                                       note="Python loop of nn cells"))
        else:
            for name in nn_paths(fam, dev, case.dtype):
                if not (want("nn") or want(name)):
                    continue
                flags = contextlib.nullcontext
                if name == "nn-onednn":
                    flags = functools.partial(_MkldnnFlag, True)
                elif name == "nn-native" and dev == "cpu":
                    flags = functools.partial(_MkldnnFlag, False)
                cands.append(Candidate(name, lambda: nn_mod(x)[0], nn_params, flags))
            if want("cell-loop"):
                cells = _share_cells(nn_mod, fam, case)
                cands.append(Candidate("cell-loop", lambda: _cell_loop_seq(cells, x, case, lstm), nn_params))
    else:
        notes.append(f"{case.variant}: torch.nn has no twin; compared with the plain fused cell")

    if dev == "cuda" and not step_cell and want("fused-persistent"):
        try:
            with env(FUSEDRNN_CUDA_PATH="persistent"), torch.no_grad():
                fused(x)
        except RuntimeError as e:
            notes.append("persistent path: " + str(e).split("\n")[0])
        else:
            cands.append(Candidate("fused-persistent", lambda: fused(x)[0], params,
                                   functools.partial(env, FUSEDRNN_CUDA_PATH="persistent")))
    if dev == "cuda" and not step_cell and want("fused-standard"):
        cands.append(Candidate("fused-standard", lambda: fused(x)[0], params,
                               functools.partial(env, FUSEDRNN_CUDA_PATH="standard")))

    if want("reference"):
        if step_cell:
            def ref_step(x_t, state):
                return fusedrnn.reference.cell_forward(fused, x_t, state, upcast=False)

            cands.append(Candidate("reference", lambda: _step_loop(ref_step, x, lstm), params))
        else:
            cands.append(Candidate(
                "reference", lambda: fusedrnn.reference.forward(fused, x, upcast=False)[0], params))

    if not case.has_nn_twin and want("fused-plain"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if step_cell:
                plain = FUSED_CELLS[fam](case.C, case.H, True, **factory)
                fwd = lambda: _step_loop(plain, x, lstm)  # noqa: E731
            else:
                plain = FUSED_CLASSES[fam](case.C, case.H, **seq_kw)
                fwd = lambda: plain(x)[0]  # noqa: E731
        plain_params = list(plain.parameters())
        for p in plain_params:
            p.requires_grad_(training)
        cands.append(Candidate("fused-plain", fwd, plain_params))

    return Row(case, x, cot, cands, notes)
