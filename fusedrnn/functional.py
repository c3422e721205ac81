"""The multi-layer functions the modules call, over the fused operators.

The operators are differentiable: their autograd (csrc/torch/autograd.cpp)
saves the inputs and the tensors the kernel saved, and the backward calls the
matching ``*_backward`` operator, asking only for the gradients that
``needs_input_grad`` wants. A forward runs with ``training=True`` (saving what
backward needs) exactly when autograd will need it. Under a functorch transform
or with forward-mode tangents, the functions compute through the compositions of
fusedrnn._composite instead, which those differentiate.

Legend: T steps, N batch, C input size, H hidden size, P projection size,
L layers, D directions. Sequences are time-major; ``batch_first`` is handled by
the modules.
"""

from __future__ import annotations

import sys
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _composite, _onnx, reference
from ._ops import ops

__all__ = ["lstm", "gru", "rnn", "lstm_cell", "gru_cell", "rnn_cell"]


# ------------------------------------------------------- multi-layer

@torch.compiler.assume_constant_result
def _tracing() -> bool:
    """torch.jit.is_tracing without its TorchScript test (54 ns a call against
    75), which torch.compile cannot trace: it takes the value instead."""
    return torch._C._is_tracing()


def _exporting() -> bool:
    """Whether torch.export is capturing the caller: the flag that
    torch.compiler.is_exporting (torch 2.7 on) returns, read directly, since
    Dynamo before torch 2.14 answers that function with True under torch.compile
    too (pytorch#176347), where the flag itself is False."""
    return getattr(torch.compiler, "_is_exporting_flag", False)


def _needs_grad(*tensors) -> bool:
    # A trace or an exported program keeps the flag as a constant: it is taken
    # saving, so that what was captured under no_grad (the trace's check run, an
    # export for inference) still trains and compiles in grad mode, as torch.nn's does.
    if _tracing() or _exporting():
        return True
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in tensors)


def _flat(weights):
    return [t for w in weights for t in w if t is not None]


def _checked_stack(name: str, weights, width: int, hx: Sequence[Tensor], num_layers: int, bidirectional: bool,
             dropout: float) -> List[Tuple[Optional[Tensor], ...]]:
    """Checks what the operators cannot see (the stack's shape, dropout) and
    returns the weight tuples padded with None to `width` entries."""
    if num_layers < 1:
        raise ValueError(f"{name}: num_layers must be at least 1, got {num_layers}")
    if not 0 <= dropout <= 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {dropout}")
    LD = num_layers * (2 if bidirectional else 1)
    if len(weights) != LD:
        raise ValueError(f"{name}: expected num_layers * directions = {LD} weight tuples, got {len(weights)}")
    full = True
    for k, w in enumerate(weights):
        if not 2 <= len(w) <= width:
            raise ValueError(f"{name}: weight tuple {k} must hold 2 to {width} entries, got {len(w)}")
        full = full and len(w) == width
    for h in () if torch.jit.is_tracing() else hx:
        if h.dim() == 0 or h.size(0) != LD:
            raise RuntimeError(
                f"{name}: the initial states must hold num_layers * directions = {LD} layers in their "
                f"first dimension, got shape {list(h.shape)}"
            )
    return weights if full else [tuple(w) + (None,) * (width - len(w)) for w in weights]


# Cells run once a step: they test for an ONNX export inline, where torch.onnx
# was never imported at the cost of a dictionary lookup.
_ONNX = "torch.onnx"


def _is_relu(nonlinearity: str, cell: bool) -> bool:
    if nonlinearity != "relu" and nonlinearity != "tanh":
        if cell:
            raise RuntimeError(f"Unknown nonlinearity: {nonlinearity}")
        reference._check_nonlinearity(nonlinearity)  # torch.nn.RNN's error
    return nonlinearity == "relu"


def _stack(run_layer, input: Tensor, num_layers: int, bidirectional: bool, dropout: float, train: bool,
           run_both=None):
    """Runs run_layer(layer_input, layer, direction) -> output over layers and
    directions, or run_both(layer_input, layer) -> output for both directions of
    a bidirectional layer where given, with dropout between layers when training."""
    D = 2 if bidirectional else 1
    x = input
    for layer in range(num_layers):
        if D == 2 and run_both is not None:
            x = run_both(x, layer)
        else:
            outs = [run_layer(x, layer, d) for d in range(D)]
            x = outs[0] if D == 1 else torch.cat(outs, dim=-1)
        if dropout != 0 and train and layer < num_layers - 1:
            # ATen's dropout, as torch.nn's stacks call it: a probability set out
            # of range after construction gets torch.nn's RuntimeError.
            x = torch.dropout(x, dropout, True)
    return x


def lstm(
    input: Tensor,
    hx: Tuple[Tensor, Tensor],
    weights: Sequence[Tuple[Optional[Tensor], ...]],
    num_layers: int,
    bidirectional: bool = False,
    batch_sizes: Optional[Tensor] = None,
    dropout: float = 0.0,
    train: bool = False,
    coupled: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Multi-layer LSTM, time-major.

    input [T, N, C] or packed [R, C] with batch_sizes [T]; hx = (h0 [L*D, N, P],
    c0 [L*D, N, H]); weights[l*D + d] = (w_ih, w_hh, b_ih, b_hh, w_ch, w_hr), the
    trailing ones may be left out or None. Returns (output, h_n [L*D, N, P],
    c_n [L*D, N, H]).
    """
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"lstm: hx must be a pair (h0, c0), got {type(hx).__name__}")
    weights = _checked_stack("lstm", weights, 6, hx, num_layers, bidirectional, dropout)
    return _lstm(input, hx, weights, num_layers, bidirectional, batch_sizes, dropout, train, coupled)


# The modules, which have checked their arguments, call these directly.


def _lstm(input, hx, weights, num_layers, bidirectional, batch_sizes, dropout, train, coupled):
    h0, c0 = hx
    training = _needs_grad(input, h0, c0, *_flat(weights))
    composite = _composite.wanted(input, h0, c0, *_flat(weights))
    onnx = _onnx.exporting()
    D = 2 if bidirectional else 1
    h_n: List[Tensor] = []
    c_n: List[Tensor] = []

    def run(x, layer, d):
        k = layer * D + d
        args = (x, batch_sizes, h0[k], c0[k], *weights[k], coupled, d == 1)
        if composite:
            y, h, c = _composite.lstm(*args)
        elif onnx:
            y, h, c = _onnx.lstm(*args, (ops.lstm_forward, args + (training,)))
        else:
            y, h, c, *_ = ops.lstm_forward(*args, training)
        h_n.append(h)
        c_n.append(c)
        return y

    # Both directions in one operator: their output is saved once, and on the
    # CPU they run at once where a direction's steps use one thread.
    def run_both(x, layer):
        k = 2 * layer
        y, h, c, *_ = ops.lstm_bidirectional_forward(
            x, batch_sizes, h0[k : k + 2], c0[k : k + 2], *weights[k], *weights[k + 1], coupled, training
        )
        h_n.extend(h.unbind(0))
        c_n.extend(c.unbind(0))
        return y

    fused = not (composite or onnx)
    out = _stack(run, input, num_layers, bidirectional, dropout, train, run_both if fused else None)
    return out, torch.stack(h_n), torch.stack(c_n)


def gru(
    input: Tensor,
    hx: Tensor,
    weights: Sequence[Tuple[Optional[Tensor], ...]],
    num_layers: int,
    bidirectional: bool = False,
    batch_sizes: Optional[Tensor] = None,
    dropout: float = 0.0,
    train: bool = False,
    reset_after: bool = True,
) -> Tuple[Tensor, Tensor]:
    """Multi-layer GRU, time-major; weights[l*D + d] = (w_ih, w_hh, b_ih, b_hh), the
    biases may be left out or None."""
    if not isinstance(hx, Tensor):
        raise TypeError(f"gru: hx must be a Tensor h0, got {type(hx).__name__}")
    weights = _checked_stack("gru", weights, 4, (hx,), num_layers, bidirectional, dropout)
    return _gru(input, hx, weights, num_layers, bidirectional, batch_sizes, dropout, train, reset_after)


def _gru(input, hx, weights, num_layers, bidirectional, batch_sizes, dropout, train, reset_after):
    training = _needs_grad(input, hx, *_flat(weights))
    composite = _composite.wanted(input, hx, *_flat(weights))
    onnx = _onnx.exporting()
    D = 2 if bidirectional else 1
    h_n: List[Tensor] = []

    def run(x, layer, d):
        k = layer * D + d
        args = (x, batch_sizes, hx[k], *weights[k], reset_after, d == 1)
        if composite:
            y, h = _composite.gru(*args)
        elif onnx:
            y, h = _onnx.gru(*args, (ops.gru_forward, args + (training,)))
        else:
            y, h, *_ = ops.gru_forward(*args, training)
        h_n.append(h)
        return y

    def run_both(x, layer):
        k = 2 * layer
        y, h, *_ = ops.gru_bidirectional_forward(
            x, batch_sizes, hx[k : k + 2], *weights[k], *weights[k + 1], reset_after, training
        )
        h_n.extend(h.unbind(0))
        return y

    fused = not (composite or onnx)
    out = _stack(run, input, num_layers, bidirectional, dropout, train, run_both if fused else None)
    return out, torch.stack(h_n)


def rnn(
    input: Tensor,
    hx: Tensor,
    weights: Sequence[Tuple[Optional[Tensor], ...]],
    num_layers: int,
    bidirectional: bool = False,
    batch_sizes: Optional[Tensor] = None,
    dropout: float = 0.0,
    train: bool = False,
    nonlinearity: str = "tanh",
) -> Tuple[Tensor, Tensor]:
    """Multi-layer Elman RNN, time-major; weights[l*D + d] = (w_ih, w_hh, b_ih, b_hh),
    the biases may be left out or None."""
    _is_relu(nonlinearity, cell=False)
    if not isinstance(hx, Tensor):
        raise TypeError(f"rnn: hx must be a Tensor h0, got {type(hx).__name__}")
    weights = _checked_stack("rnn", weights, 4, (hx,), num_layers, bidirectional, dropout)
    return _rnn(input, hx, weights, num_layers, bidirectional, batch_sizes, dropout, train, nonlinearity)


def _rnn(input, hx, weights, num_layers, bidirectional, batch_sizes, dropout, train, nonlinearity):
    relu = nonlinearity == "relu"
    D = 2 if bidirectional else 1
    forward = _composite.rnn if _composite.wanted(input, hx, *_flat(weights)) else ops.rnn_forward
    onnx = forward is ops.rnn_forward and _onnx.exporting()
    h_n: List[Tensor] = []

    def run(x, layer, d):
        k = layer * D + d
        args = (x, batch_sizes, hx[k], *weights[k], relu, d == 1)
        y, h = _onnx.rnn(*args, (forward, args)) if onnx else forward(*args)
        h_n.append(h)
        return y

    def run_both(x, layer):
        k = 2 * layer
        y, h = ops.rnn_bidirectional_forward(x, batch_sizes, hx[k : k + 2], *weights[k], *weights[k + 1], relu)
        h_n.extend(h.unbind(0))
        return y

    fused = forward is ops.rnn_forward and not onnx
    out = _stack(run, input, num_layers, bidirectional, dropout, train, run_both if fused else None)
    return out, torch.stack(h_n)


def lstm_cell(
    input: Tensor,
    hx: Tensor,
    cx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    w_ch: Optional[Tensor] = None,
    coupled: bool = False,
) -> Tuple[Tensor, Tensor]:
    """One LSTM step: input [N, C], hx [N, H], cx [N, H] -> (h', c')."""
    if _composite.wanted(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch):
        return _composite.lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, coupled)
    training = _needs_grad(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch)
    if _ONNX in sys.modules and _onnx.exporting():
        args = (input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, coupled)
        return _onnx.lstm_cell(*args, (ops.lstm_cell_forward, args + (training,)))
    h, c, _ = ops.lstm_cell_forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, coupled, training)
    return h, c


def gru_cell(
    input: Tensor,
    hx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    reset_after: bool = True,
) -> Tensor:
    """One GRU step: input [N, C], hx [N, H] -> h'."""
    if _composite.wanted(input, hx, w_ih, w_hh, b_ih, b_hh):
        return _composite.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after)
    training = _needs_grad(input, hx, w_ih, w_hh, b_ih, b_hh)
    if _ONNX in sys.modules and _onnx.exporting():
        args = (input, hx, w_ih, w_hh, b_ih, b_hh, reset_after)
        return _onnx.gru_cell(*args, (ops.gru_cell_forward, args + (training,)))
    return ops.gru_cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after, training)[0]


def rnn_cell(
    input: Tensor,
    hx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    """One Elman step: input [N, C], hx [N, H] -> h'."""
    relu = _is_relu(nonlinearity, cell=True)
    if _composite.wanted(input, hx, w_ih, w_hh, b_ih, b_hh):
        return _composite.rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, relu)
    if _ONNX in sys.modules and _onnx.exporting():
        args = (input, hx, w_ih, w_hh, b_ih, b_hh, relu)
        return _onnx.rnn_cell(*args, (ops.rnn_cell_forward, args))
    return ops.rnn_cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, relu)
