"""Helpers shared by the test files: running a module forward and backward with
fixed cotangents, and comparisons that print their max and mean error before
asserting.

Legend: T steps, N batch, C input size, H hidden size, P projection size.
"""

import copy
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn

F64 = torch.float64
# float64 comparisons of two exact-in-spirit implementations: the only
# differences are the order of floating-point sums.
TIGHT = dict(atol=1e-12, rtol=1e-10)


def errors(got: torch.Tensor, want: torch.Tensor):
    """(max, mean) absolute difference, computed in float64."""
    if got.numel() == 0:
        return 0.0, 0.0
    d = (got.detach().double() - want.detach().double().to(got.device)).abs()
    return d.max().item(), d.mean().item()


def assert_close(name: str, got, want, atol: float = 0.0, rtol: float = 0.0) -> None:
    """|got - want| <= atol + rtol * max|want|, with the errors printed first."""
    assert got is not None and want is not None, f"{name}: got {got is not None}, want {want is not None}"
    assert tuple(got.shape) == tuple(want.shape), f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    mx, mean = errors(got, want)
    scale = want.detach().double().abs().max().item() if want.numel() else 0.0
    bound = atol + rtol * scale
    print(f"{name}: max error {mx:.3e}, mean error {mean:.3e} (bound {bound:.3e}, scale {scale:.3e})")
    assert mx <= bound, f"{name}: max error {mx:.3e} (mean {mean:.3e}) exceeds {bound:.3e}"


def assert_all_close(got: Dict[str, torch.Tensor], want: Dict[str, torch.Tensor], atol=0.0, rtol=0.0) -> None:
    assert list(got) == list(want), f"different results: {list(got)} vs {list(want)}"
    for name in got:
        if got[name] is None and want[name] is None:
            continue
        assert_close(name, got[name], want[name], atol, rtol)


def assert_within_ratio(got: Dict[str, torch.Tensor], ref64: Dict[str, torch.Tensor],
                        ref_low: Dict[str, torch.Tensor], factor: float, floor_ulps: float = 8.0) -> None:
    """Error-ratio oracle: err(got vs ref64) <= factor * err(ref_low vs ref64) +
    floor_ulps * eps(dtype of got) * max(1, max|ref64|), for every tensor."""
    assert list(got) == list(ref64) == list(ref_low)
    for name in got:
        g, r, low = got[name], ref64[name], ref_low[name]
        if g is None and r is None:
            continue
        assert tuple(g.shape) == tuple(r.shape), f"{name}: shape {tuple(g.shape)} != {tuple(r.shape)}"
        err, mean = errors(g, r)
        base, _ = errors(low, r)
        scale = max(1.0, r.detach().double().abs().max().item() if r.numel() else 0.0)
        bound = factor * base + floor_ulps * torch.finfo(g.dtype).eps * scale
        print(f"{name}: max error {err:.3e}, mean error {mean:.3e}; low-precision baseline {base:.3e}; "
              f"bound {bound:.3e}")
        assert err <= bound, (
            f"{name}: max error {err:.3e} (mean {mean:.3e}) exceeds {bound:.3e} = {factor} x baseline "
            f"{base:.3e} + floor"
        )


def held_bytes(m: nn.Module, x: torch.Tensor, hx=None) -> int:
    """Bytes of the storages autograd holds after a training forward of m on x
    (and hx where given), parameters and input excepted (what bench/ reports as
    activation memory)."""
    exclude = {p.untyped_storage().data_ptr() for p in m.parameters()} | {x.untyped_storage().data_ptr()}
    held = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in exclude:
            held[s.data_ptr()] = max(held.get(s.data_ptr(), 0), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x) if hx is None else m(x, hx)
    return sum(held.values())


def param_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def cotangents_for(outs: Dict[str, torch.Tensor], seed: int) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen, dtype=F64) for k, v in outs.items()}


def named_outputs(out, cell: bool = False) -> Dict[str, torch.Tensor]:
    """Flattens the return value of a recurrent module (or cell) into named tensors."""
    if cell:
        if isinstance(out, tuple):
            return {"h": out[0], "c": out[1]}
        return {"h": out}
    y, hidden = out
    if isinstance(y, PackedSequence):
        y = y.data
    if isinstance(hidden, tuple):
        return {"output": y, "h_n": hidden[0], "c_n": hidden[1]}
    return {"output": y, "h_n": hidden}


def run(module: nn.Module, build: Callable, leaves: Dict[str, Optional[torch.Tensor]], cell: bool = False,
        seed: int = 1, dtype: Optional[torch.dtype] = None, fn: Optional[Callable] = None) -> Dict[str, torch.Tensor]:
    """Runs module(*build(**leaves)) (or fn(*...) on the module's parameters, e.g.
    the reference) and backward with seeded random cotangents on every output.

    leaves: named float64 tensors (None allowed) copied, cast to `dtype` (the
    module's parameter dtype by default) and made to require grad;
    build(**copies) returns the module's forward arguments (a place to pack,
    slice or transpose). Returns the outputs, then 'grad <leaf>' and
    'grad <parameter name>' for every leaf and parameter.
    """
    dtype = dtype or param_dtype(module)
    copies = {k: (None if v is None else v.detach().to(dtype).requires_grad_()) for k, v in leaves.items()}
    outs = named_outputs((fn or module)(*build(**copies)), cell)
    cots = cotangents_for(outs, seed)
    loss = sum((outs[k] * cots[k].to(outs[k].dtype)).sum() for k in outs)
    wrt_names = [k for k, v in copies.items() if v is not None]
    wrt = [copies[k] for k in wrt_names]
    named_params = list(module.named_parameters())
    wrt += [p for _, p in named_params]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    result = {k: v.detach() for k, v in outs.items()}
    names = [f"grad {k}" for k in wrt_names] + [f"grad {n}" for n, _ in named_params]
    for n, g in zip(names, grads):
        result[n] = g
    return result


def rebuild_as(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    return copy.deepcopy(module).to(dtype)


def lstm_like(module: nn.Module) -> bool:
    return "LSTM" in type(module).__name__


def seq_leaves(module: nn.Module, T: int, N: int, C: int, hx: bool = True, non_contiguous: bool = False,
               seed: int = 1234) -> Dict[str, Optional[torch.Tensor]]:
    """Random float64 leaves for a sequence module, for seq_builder: x, and h0
    and c0 when hx.

    x is in the module's layout ([T, N, C], or [N, T, C] when batch_first); with
    non_contiguous, it is in the other layout with C + 3 columns, and
    seq_builder transposes and slices it: a view strided in two dimensions.
    """
    gen = torch.Generator().manual_seed(seed)
    batch_first = getattr(module, "batch_first", False)
    D = 2 if module.bidirectional else 1
    H = module.hidden_size
    P = getattr(module, "proj_size", 0) or H
    if non_contiguous:
        shape = (T, N, C + 3) if batch_first else (N, T, C + 3)
    else:
        shape = (N, T, C) if batch_first else (T, N, C)
    leaves = {"x": torch.randn(*shape, generator=gen, dtype=F64)}
    if hx:
        leaves["h0"] = torch.randn(module.num_layers * D, N, P, generator=gen, dtype=F64)
        if lstm_like(module):
            leaves["c0"] = torch.randn(module.num_layers * D, N, H, generator=gen, dtype=F64)
    return leaves


def seq_builder(module: nn.Module, C: int, lengths: Optional[Sequence[int]] = None,
                non_contiguous: bool = False, enforce_sorted: bool = False) -> Callable:
    """A build function for run() over the leaves of seq_leaves (same
    non_contiguous); lengths: the input is packed with pack_padded_sequence."""
    batch_first = getattr(module, "batch_first", False)

    def build(x, h0=None, c0=None):
        xin = x.transpose(0, 1)[..., 1 : C + 1] if non_contiguous else x
        if non_contiguous:
            assert not xin.is_contiguous()
        if lengths is not None:
            xin = pack_padded_sequence(xin, torch.tensor(lengths), batch_first=batch_first,
                                       enforce_sorted=enforce_sorted)
        if h0 is None:
            hx = None
        elif c0 is not None:
            hx = (h0, c0)
        else:
            hx = h0
        return xin, hx

    return build


def nn_twin(cls_name: str) -> type:
    return getattr(nn, cls_name)


def fused_twin(cls_name: str) -> type:
    return getattr(fusedrnn, cls_name)


def seq_variants(proj_size: int) -> Dict[str, tuple]:
    """Every stacked module and variant, by test id: (class name, keyword
    arguments), with projections to proj_size."""
    return {
        "lstm": ("LSTM", {}),
        "lstm_proj": ("LSTM", {"proj_size": proj_size}),
        "lstm_peephole": ("LSTM", {"peephole": True}),
        "lstm_coupled": ("LSTM", {"coupled_gates": True}),
        "lstm_peephole_coupled_proj": ("LSTM", {"peephole": True, "coupled_gates": True, "proj_size": proj_size}),
        "gru": ("GRU", {}),
        "gru_reset_before": ("GRU", {"reset_after": False}),
        "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
        "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
    }


# ---------------------------------------------------------------- TorchScript

def script(module):
    """torch.jit.script, without its deprecation warning (torch 2.13)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


# TorchScript needs the argument types: one holder per state and input kind.
class TwoStates(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None):
        return self.m(x, hx)


class TwoStatesPacked(TwoStates):
    def forward(self, x: PackedSequence, hx: Optional[Tuple[Tensor, Tensor]] = None):
        y, hidden = self.m(x, hx)
        return y.data, hidden


class OneState(TwoStates):
    def forward(self, x: Tensor, hx: Optional[Tensor] = None):
        return self.m(x, hx)


class OneStatePacked(TwoStates):
    def forward(self, x: PackedSequence, hx: Optional[Tensor] = None):
        y, hidden = self.m(x, hx)
        return y.data, hidden


def script_holder(m, packed: bool) -> nn.Module:
    """m in the holder TorchScript needs to call it (a stacked module's
    forward is overloaded): packed, the holder returns the output's data."""
    if isinstance(m, fusedrnn.LSTM) or isinstance(m, nn.LSTM):
        return TwoStatesPacked(m) if packed else TwoStates(m)
    return OneStatePacked(m) if packed else OneState(m)


# Every single-step cell and variant, by test id.
CELL_VARIANTS = {
    "lstm_cell": (fusedrnn.LSTMCell, {}),
    "lstm_cell_peephole": (fusedrnn.LSTMCell, {"peephole": True}),
    "lstm_cell_coupled": (fusedrnn.LSTMCell, {"coupled_gates": True}),
    "lstm_cell_peephole_coupled": (fusedrnn.LSTMCell, {"peephole": True, "coupled_gates": True}),
    "gru_cell": (fusedrnn.GRUCell, {}),
    "gru_cell_reset_before": (fusedrnn.GRUCell, {"reset_after": False}),
    "rnn_cell_tanh": (fusedrnn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_cell_relu": (fusedrnn.RNNCell, {"nonlinearity": "relu"}),
}


def cell_leaves(lstm: bool, batch: Optional[int], with_hx: bool, C: int, H: int,
                seed: int = 5) -> Dict[str, torch.Tensor]:
    """Random float64 leaves for a cell, for cell_build: x [batch, C] (or [C]
    when batch is None), and h (and c for an LSTM cell) when with_hx."""
    gen = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    leaves = {"x": torch.randn(*lead, C, generator=gen, dtype=F64)}
    if with_hx:
        leaves["h"] = torch.randn(*lead, H, generator=gen, dtype=F64)
        if lstm:
            leaves["c"] = torch.randn(*lead, H, generator=gen, dtype=F64)
    return leaves


def cell_build(x, h=None, c=None):
    """A build function for run() over the leaves of cell_leaves."""
    if h is None:
        return (x,)
    return (x, (h, c)) if c is not None else (x, h)


def penalty_grads(module: nn.Module, x, hx=None) -> Dict[str, torch.Tensor]:
    """A gradient penalty through a recurrent module (a double backward): the
    gradients of sum(|d weighted / d input|^2 + |d weighted / d hx|^2) +
    mean(outputs^2) with respect to the input (its data when packed), each
    distinct tensor of hx (leaves that require grad, given by the caller: the
    same tensor may be h0 and c0) and every parameter, where weighted =
    sum(outputs * sin(outputs)) over every differentiable output.
    Returns {"input", "hx0", ..., parameter names: gradient}."""
    packed = isinstance(x, PackedSequence)
    d = (x.data if packed else x).detach().clone().requires_grad_()
    xin = PackedSequence(d, x.batch_sizes, x.sorted_indices, x.unsorted_indices) if packed else d
    out = module(xin) if hx is None else module(xin, hx)
    if isinstance(out, torch.Tensor):
        outs = [out]
    else:
        y, hidden = out
        outs = [y.data if isinstance(y, PackedSequence) else y]
        outs += list(hidden) if isinstance(hidden, tuple) else [hidden]
    weighted = sum((o * o.detach().sin()).sum() for o in outs)
    states = [] if hx is None else list(dict.fromkeys(hx if isinstance(hx, tuple) else [hx]))
    gs = torch.autograd.grad(weighted, [d, *states], create_graph=True)
    loss = sum(g.pow(2).sum() for g in gs) + sum(o.pow(2).mean() for o in outs)
    params = list(module.named_parameters())
    grads = torch.autograd.grad(loss, [d, *states, *(t for _, t in params)])
    names = ["input"] + [f"hx{i}" for i in range(len(states))] + [n for n, _ in params]
    return dict(zip(names, grads))
