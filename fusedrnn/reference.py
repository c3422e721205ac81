"""Plain-PyTorch reference implementations, written from the equations.

Slow on purpose: one Python loop over time, one line per equation, no fusion.
They define what the fused kernels must compute and are pinned to ``torch.nn``
in the tests. Every function works with autograd, in any dtype; ``upcast=True``
(where offered) computes in float64.

Legend: T steps, N batch, C input size, H hidden size, P projection size.
Gate order is PyTorch's (LSTM i, f, g, o; coupled LSTM f, g, o; GRU r, z, n).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

__all__ = [
    "lstm_cell",
    "gru_cell",
    "rnn_cell",
    "layer",
    "forward",
    "cell_forward",
]


def _linear(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    y = x @ w.t()
    return y if b is None else y + b


def lstm_cell(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    w_ch: Optional[Tensor] = None,
    w_hr: Optional[Tensor] = None,
    coupled: bool = False,
) -> Tuple[Tensor, Tensor]:
    """One LSTM step. x [N, C], h [N, P], c [N, H] -> (h' [N, P], c' [N, H]).

    Peepholes (Gers & Schmidhuber 2000): w_ch holds the diagonal vectors of
    i, f, o (f, o when coupled); i and f look at c, o at c'.
    Coupled gates: i = 1 - f, and the gate blocks are f, g, o.
    Projection: h' = W_hr (o * tanh(c')).
    """
    return _lstm_step(_linear(x, w_ih, b_ih), h, c, w_hh, b_hh, w_ch, w_hr, coupled)


def _lstm_step(gx, h, c, w_hh, b_hh=None, w_ch=None, w_hr=None, coupled=False):
    """lstm_cell from the input's projection gx = W_ih x + b_ih."""
    gates = gx + _linear(h, w_hh, b_hh)
    if coupled:
        pf, pg, po = gates.chunk(3, dim=-1)
        pi = None
    else:
        pi, pf, pg, po = gates.chunk(4, dim=-1)
    if w_ch is not None:
        if coupled:
            wcf, wco = w_ch.chunk(2)
        else:
            wci, wcf, wco = w_ch.chunk(3)
            pi = pi + wci * c
        pf = pf + wcf * c
    f = torch.sigmoid(pf)
    i = 1 - f if coupled else torch.sigmoid(pi)
    g = torch.tanh(pg)
    c_new = f * c + i * g
    if w_ch is not None:
        po = po + wco * c_new
    o = torch.sigmoid(po)
    h_new = o * torch.tanh(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    return h_new, c_new


def gru_cell(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    reset_after: bool = True,
) -> Tensor:
    """One GRU step. x [N, C], h [N, H] -> h' [N, H].

    reset_after=True (PyTorch, cuDNN): n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    reset_after=False (Cho et al. 2014): n = tanh(W_in x + b_in + W_hn (r * h) + b_hn).
    """
    return _gru_step(_linear(x, w_ih, b_ih), h, w_hh, b_hh, reset_after)


def _gru_step(gx, h, w_hh, b_hh=None, reset_after=True):
    """gru_cell from the input's projection gx = W_ih x + b_ih."""
    xr, xz, xn = gx.chunk(3, dim=-1)
    w_hr, w_hz, w_hn = w_hh.chunk(3, dim=0)
    b_hr, b_hz, b_hn = b_hh.chunk(3) if b_hh is not None else (None, None, None)
    r = torch.sigmoid(xr + _linear(h, w_hr, b_hr))
    z = torch.sigmoid(xz + _linear(h, w_hz, b_hz))
    if reset_after:
        n = torch.tanh(xn + r * _linear(h, w_hn, b_hn))
    else:
        n = torch.tanh(xn + _linear(r * h, w_hn, b_hn))
    return (1 - z) * n + z * h


def rnn_cell(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    """One Elman step. h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu."""
    _check_nonlinearity(nonlinearity)
    return _rnn_step(_linear(x, w_ih, b_ih), h, w_hh, b_hh, nonlinearity)


def _rnn_step(gx, h, w_hh, b_hh=None, nonlinearity="tanh"):
    """rnn_cell from the input's projection gx = W_ih x + b_ih."""
    p = gx + _linear(h, w_hh, b_hh)
    return torch.tanh(p) if nonlinearity == "tanh" else torch.relu(p)


def _check_nonlinearity(nonlinearity: str) -> None:
    """Raises torch.nn.RNN's error for a nonlinearity other than tanh and relu."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")


def layer(
    step,
    x: Tensor,
    state: Tuple[Tensor, ...],
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """Runs ``step(x_t, *state) -> new state tuple`` over time, one direction.

    x: [T, N, C], or [R, C] packed with batch_sizes [T]. The output of a step is
    the first element of the state. Step t updates only its batch_sizes[t]
    active rows; the others keep their state (and, in reverse, start from the
    initial state at their last step). Returns (output, final state).
    """
    if batch_sizes is None:
        T, N = x.shape[0], x.shape[1]
        sizes = [N] * T
        rows = [x[t] for t in range(T)]
    else:
        sizes = [int(b) for b in batch_sizes]
        rows = list(torch.split(x, sizes))
    order = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    outs = [None] * len(sizes)
    for t in order:
        b = sizes[t]
        active = tuple(s[:b] for s in state)
        new = step(rows[t], *active)
        state = tuple(torch.cat([n, s[b:]]) if b < s.shape[0] else n for n, s in zip(new, state))
        outs[t] = new[0]
    if not outs:  # no steps: an empty output of a step's shape, and the state as it came
        return (state[0].unsqueeze(0) if batch_sizes is None else state[0])[:0], state
    y = torch.stack(outs) if batch_sizes is None else torch.cat(outs)
    return y, state


def _module_config(module) -> str:
    """The kind of a recurrent module, fusedrnn's or torch.nn's, subclasses,
    torch.compile's wrapper and torch.jit.script's modules included: its mode
    ('LSTM', 'GRU', 'RNN_TANH', 'RNN_RELU') for a stacked module, 'LSTMCELL',
    'GRUCELL' or 'RNNCELL' for a cell."""
    from torch import nn

    from . import modules

    module = getattr(module, "_orig_mod", module)  # torch.compile's OptimizedModule
    if isinstance(module, torch.jit.ScriptModule):
        mode = getattr(module, "mode", None)
        if isinstance(mode, str):
            return mode
        if module.original_name in ("LSTMCell", "GRUCell", "RNNCell"):
            return module.original_name.upper()
    for mode, classes in (("LSTMCELL", (nn.LSTMCell, modules.LSTMCell)), ("GRUCELL", (nn.GRUCell, modules.GRUCell)),
                          ("RNNCELL", (nn.RNNCell, modules.RNNCell))):
        if isinstance(module, classes):
            return mode
    if isinstance(module, (nn.RNNBase, modules.RNNBase)):
        return module.mode
    raise TypeError(
        "expected a recurrent module of fusedrnn or torch.nn (LSTM, GRU, RNN or one of their cells), "
        f"got {type(module).__name__}"
    )


def _states(hx, lstm: bool, op: str) -> Tuple[Tensor, ...]:
    """hx as a tuple of its states, checked to be what the module takes."""
    if lstm:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(h, Tensor) for h in hx):
            raise TypeError(f"{op}: hx must be a pair of Tensors (h, c), got {type(hx).__name__}")
        return tuple(hx)
    if not isinstance(hx, Tensor):
        raise TypeError(f"{op}: hx must be a Tensor, got {type(hx).__name__}")
    return (hx,)


def _check_sequence_args(module, mode: str, x: Tensor, packed: bool, hx) -> None:
    """torch.nn's checks of a stacked module's forward arguments, in its words;
    x is the input before any transposition (the packed data when packed)."""
    name = "LSTM" if mode == "LSTM" else "GRU" if mode == "GRU" else "RNN"
    if not packed and x.dim() not in (2, 3):
        tensor = " tensor" if name == "RNN" else ""
        raise ValueError(f"{name}: Expected input to be 2D or 3D, got {x.dim()}D{tensor} instead")
    if packed and x.dim() != 2:
        raise RuntimeError(f"input must have 2 dimensions, got {x.dim()}")
    if x.size(-1) != module.input_size:
        raise RuntimeError(
            f"input.size(-1) must be equal to input_size. Expected {module.input_size}, got {x.size(-1)}"
        )
    if hx is None:
        return
    lstm = mode == "LSTM"
    states = _states(hx, lstm, name)
    batched = packed or x.dim() == 3
    want = 3 if batched else 2
    if any(h.dim() != want for h in states):
        kind = "batched 3-D" if batched else "unbatched 2-D"
        if lstm:
            raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                               f"({states[0].dim()}-D, {states[1].dim()}-D) tensors")
        raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {states[0].dim()}-D tensor")


def _check_hidden_sizes(module, mode: str, states: Sequence[Tensor], batch: int) -> None:
    """torch.nn's check of the hidden state's sizes (batched; torch.nn checks a
    packed sequence's after taking its rows in the sequence's sorted order)."""
    layers = module.num_layers * (2 if module.bidirectional else 1)
    H = module.hidden_size
    P = getattr(module, "proj_size", 0) or H
    if mode == "LSTM":
        for k, (h, size) in enumerate(zip(states, (P, H))):
            if tuple(h.shape) != (layers, batch, size):
                raise RuntimeError(f"Expected hidden[{k}] size {(layers, batch, size)}, got {list(h.shape)}")
    elif tuple(states[0].shape) != (layers, batch, H):
        raise RuntimeError(f"Expected hidden size {(layers, batch, H)}, got {list(states[0].shape)}")


def _check_cell_args(module, mode: str, x: Tensor, hx) -> None:
    """torch.nn's (and ATen's) checks of a cell's forward arguments, in their words."""
    name = {"LSTM": "LSTMCell", "GRU": "GRUCell"}.get(mode, "RNNCell")
    if x.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {x.dim()}D instead")
    if x.size(-1) != module.input_size:
        raise RuntimeError(f"input has inconsistent input_size: got {x.size(-1)} expected {module.input_size}")
    if hx is None:
        return
    states = _states(hx, mode == "LSTM", name)
    for k, h in enumerate(states):
        if h.dim() not in (1, 2):
            what = f"hx[{k}]" if mode == "LSTM" else "hidden"
            raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {h.dim()}D instead")
        if h.dim() != x.dim():
            raise RuntimeError(f"{name}: input and hidden must both be batched (2D) or both unbatched (1D), "
                               f"got {x.dim()}D and {h.dim()}D")
        if x.dim() == 2 and h.size(0) != x.size(0):
            raise RuntimeError(f"Input batch size {x.size(0)} doesn't match hidden{k} batch size {h.size(0)}")
        if h.size(-1) != module.hidden_size:
            raise RuntimeError(
                f"hidden{k} has inconsistent hidden_size: got {h.size(-1)}, expected {module.hidden_size}"
            )


def forward(module, input, hx=None, upcast: bool = True, dtype: Optional[torch.dtype] = None):
    """Runs the reference on the parameters of a recurrent module.

    Accepts a fusedrnn or torch.nn LSTM/GRU/RNN (with fusedrnn's variant flags)
    and its forward arguments; returns what the module's forward returns, in
    the input's dtype. Computes in float64 when upcast (the default), in the
    input's own dtype otherwise, or in `dtype` when given. Dropout is not
    applied: the reference is the module in eval mode.
    """
    mode = _module_config(module)
    if mode.endswith("CELL"):
        raise TypeError(f"reference.forward takes LSTM, GRU or RNN modules; for {type(module).__name__} "
                        "use reference.cell_forward")
    if not isinstance(input, (Tensor, PackedSequence)):
        raise TypeError(f"input must be a Tensor or a PackedSequence, got {type(input).__name__}")
    dtype = dtype or (torch.float64 if upcast else None)

    def cast(t):
        return None if t is None else (t.to(dtype) if dtype is not None else t)

    packed = isinstance(input, PackedSequence)
    if packed:
        x, batch_sizes, sorted_idx, unsorted_idx = input
        max_batch = int(batch_sizes[0])
    else:
        batch_sizes = sorted_idx = unsorted_idx = None
        x = input
    _check_sequence_args(module, mode, x, packed, hx)
    unbatched = not packed and x.dim() == 2
    if unbatched:
        x = x.unsqueeze(1)
    elif not packed and module.batch_first:
        x = x.transpose(0, 1)
    if not packed:
        max_batch = x.shape[1]
    out_dtype = x.dtype
    x = cast(x)

    L, D = module.num_layers, 2 if module.bidirectional else 1
    H = module.hidden_size
    P = getattr(module, "proj_size", 0) or H
    lstm = mode.startswith("LSTM")
    if hx is None:
        zeros_h = x.new_zeros(L * D, max_batch, P)
        hx = (zeros_h, x.new_zeros(L * D, max_batch, H)) if lstm else zeros_h
    else:
        if unbatched:
            hx = tuple(h.unsqueeze(1) for h in hx) if lstm else hx.unsqueeze(1)
        if sorted_idx is not None:
            hx = tuple(h.index_select(1, sorted_idx) for h in hx) if lstm else hx.index_select(1, sorted_idx)
        _check_hidden_sizes(module, mode, hx if lstm else (hx,), max_batch)
        hx = tuple(cast(h) for h in hx) if lstm else cast(hx)

    def p(name):
        return cast(getattr(module, name, None))

    h_finals, c_finals = [], []
    layer_in = x
    for layer_idx in range(L):
        outs = []
        for d in range(D):
            sfx = f"_l{layer_idx}" + ("_reverse" if d == 1 else "")
            k = layer_idx * D + d
            w_ih, w_hh = p("weight_ih" + sfx), p("weight_hh" + sfx)
            b_ih, b_hh = p("bias_ih" + sfx), p("bias_hh" + sfx)
            if lstm:
                w_ch, w_hr = p("weight_ch" + sfx), p("weight_hr" + sfx)
                coupled = getattr(module, "coupled_gates", False)

                def step(x_t, h, c, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_ch=w_ch, w_hr=w_hr):
                    return lstm_cell(x_t, h, c, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled)

                state = (hx[0][k], hx[1][k])
            elif mode == "GRU":
                reset_after = getattr(module, "reset_after", True)

                def step(x_t, h, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh):
                    return (gru_cell(x_t, h, w_ih, w_hh, b_ih, b_hh, reset_after),)

                state = (hx[k],)
            else:
                nl = "tanh" if mode == "RNN_TANH" else "relu"

                def step(x_t, h, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh):
                    return (rnn_cell(x_t, h, w_ih, w_hh, b_ih, b_hh, nl),)

                state = (hx[k],)
            y, state = layer(step, layer_in, state, batch_sizes, reverse=(d == 1))
            outs.append(y)
            h_finals.append(state[0])
            if lstm:
                c_finals.append(state[1])
        layer_in = outs[0] if D == 1 else torch.cat(outs, dim=-1)

    out = layer_in.to(out_dtype)
    h_n = torch.stack(h_finals).to(out_dtype)
    c_n = torch.stack(c_finals).to(out_dtype) if lstm else None
    if unsorted_idx is not None:
        h_n = h_n.index_select(1, unsorted_idx)
        c_n = c_n.index_select(1, unsorted_idx) if lstm else None
    if packed:
        out = PackedSequence(out, batch_sizes, sorted_idx, unsorted_idx)
    elif unbatched:
        out = out.squeeze(1)
        h_n = h_n.squeeze(1)
        c_n = c_n.squeeze(1) if lstm else None
    elif module.batch_first:
        out = out.transpose(0, 1)
    return (out, (h_n, c_n)) if lstm else (out, h_n)


def cell_forward(module, input, hx=None, upcast: bool = True, dtype: Optional[torch.dtype] = None):
    """The reference for a single-step cell module (LSTMCell, GRUCell, RNNCell);
    upcast and dtype as for forward()."""
    config = _module_config(module)
    if not config.endswith("CELL"):
        raise TypeError(f"reference.cell_forward takes LSTMCell, GRUCell or RNNCell modules; for "
                        f"{type(module).__name__} use reference.forward")
    mode = config.replace("CELL", "")
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    _check_cell_args(module, mode, input, hx)
    dtype = dtype or (torch.float64 if upcast else input.dtype)
    out_dtype = input.dtype
    unbatched = input.dim() == 1
    x = (input.unsqueeze(0) if unbatched else input).to(dtype)
    N = x.shape[0]
    H = module.hidden_size
    lstm = mode.startswith("LSTM")
    if hx is None:
        z = x.new_zeros(N, H)
        hx = (z, z) if lstm else z
    else:
        if unbatched:
            hx = tuple(h.unsqueeze(0) for h in hx) if lstm else hx.unsqueeze(0)
        hx = tuple(h.to(dtype) for h in hx) if lstm else hx.to(dtype)

    def p(name):
        t = getattr(module, name, None)
        return None if t is None else t.to(dtype)

    w = (p("weight_ih"), p("weight_hh"), p("bias_ih"), p("bias_hh"))
    if lstm:
        h, c = lstm_cell(x, hx[0], hx[1], *w, w_ch=p("weight_ch"), coupled=getattr(module, "coupled_gates", False))
        out = (h.to(out_dtype), c.to(out_dtype))
        return tuple(t.squeeze(0) for t in out) if unbatched else out
    if mode == "GRU":
        h = gru_cell(x, hx, *w, reset_after=getattr(module, "reset_after", True))
    else:
        h = rnn_cell(x, hx, *w, nonlinearity=module.nonlinearity)
    h = h.to(out_dtype)
    return h.squeeze(0) if unbatched else h
