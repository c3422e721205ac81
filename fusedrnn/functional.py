"""Autograd for the fused operators, and the multi-layer functions the modules call.

Each forward operator gets its backward through ``torch.library.register_autograd``
(an autograd Function underneath, so torch.compile and opcheck see it): the
forward saves its inputs and the tensors the kernel saved (``save_for_backward``),
and the backward calls the matching ``*_backward`` operator, asking only for the
gradients that ``ctx.needs_input_grad`` wants.

Legend: T steps, N batch, C input size, H hidden size, P projection size,
L layers, D directions. Sequences are time-major; ``batch_first`` is handled by
the modules.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._ops import ops

__all__ = ["lstm", "gru", "rnn", "lstm_cell", "gru_cell", "rnn_cell"]


def _pick(grads: Sequence[Tensor], needs: Sequence[bool]):
    return tuple(g if need and g.numel() > 0 else None for g, need in zip(grads, needs))


def _require_saved(training: bool, op: str):
    if not training:
        raise RuntimeError(
            f"fusedrnn::{op} ran with training=False, so it saved nothing for backward; "
            "call it with training=True when gradients are needed"
        )


def _grad(d: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if d is None else d


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fusedrnn does not support double backward (gradients of gradients)")


def _nothing_to_save(ctx, inputs, output):
    pass


# ---------------------------------------------------------------- LSTM

def _lstm_setup(ctx, inputs, output):
    input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled, reverse, training = inputs
    out, _, _, gates, states, proj_in = output
    ctx.save_for_backward(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, out, gates, states, proj_in)
    ctx.flags = (coupled, reverse, training)


def _lstm_backward(ctx, d_out, d_hn, d_cn, *_):
    input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, out, gates, states, proj_in = ctx.saved_tensors
    coupled, reverse, training = ctx.flags
    _require_saved(training, "lstm_forward")
    n = ctx.needs_input_grad
    g = ops.lstm_backward(
        _grad(d_out, out), d_hn, d_cn, input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr,
        out, gates, states, proj_in, coupled, reverse, n[0], any(n[4:10]),
    )
    gx, gh0, gc0, *gw = g
    return (*_pick((gx,), n[:1]), None, *_pick((gh0, gc0), n[2:4]), *_pick(gw, n[4:10]), None, None, None)


def _lstm_cell_setup(ctx, inputs, output):
    input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, coupled, training = inputs
    h, c, gates = output
    ctx.save_for_backward(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, h, c, gates)
    ctx.flags = (coupled, training)


def _lstm_cell_backward(ctx, d_h, d_c, _):
    input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, h, c, gates = ctx.saved_tensors
    coupled, training = ctx.flags
    _require_saved(training, "lstm_cell_forward")
    n = ctx.needs_input_grad
    g = ops.lstm_cell_backward(
        _grad(d_h, h), d_c, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, h, c, gates, coupled, n[0], any(n[3:8])
    )
    return (*_pick(g, n[:8]), None, None)


# ----------------------------------------------------------------- GRU

def _gru_setup(ctx, inputs, output):
    input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reset_after, reverse, training = inputs
    out, _, gates, states = output
    ctx.save_for_backward(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, out, gates, states)
    ctx.flags = (reset_after, reverse, training)


def _gru_backward(ctx, d_out, d_hn, *_):
    input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, out, gates, states = ctx.saved_tensors
    reset_after, reverse, training = ctx.flags
    _require_saved(training, "gru_forward")
    n = ctx.needs_input_grad
    g = ops.gru_backward(
        _grad(d_out, out), d_hn, input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, out, gates, states,
        reset_after, reverse, n[0], any(n[3:7]),
    )
    gx, gh0, *gw = g
    return (*_pick((gx,), n[:1]), None, *_pick((gh0,), n[2:3]), *_pick(gw, n[3:7]), None, None, None)


def _gru_cell_setup(ctx, inputs, output):
    input, hx, w_ih, w_hh, b_ih, b_hh, reset_after, training = inputs
    h, gates, states = output
    ctx.save_for_backward(input, hx, w_ih, w_hh, b_ih, b_hh, h, gates, states)
    ctx.flags = (reset_after, training)


def _gru_cell_backward(ctx, d_h, *_):
    input, hx, w_ih, w_hh, b_ih, b_hh, h, gates, states = ctx.saved_tensors
    reset_after, training = ctx.flags
    _require_saved(training, "gru_cell_forward")
    n = ctx.needs_input_grad
    g = ops.gru_cell_backward(
        _grad(d_h, h), input, hx, w_ih, w_hh, b_ih, b_hh, h, gates, states, reset_after, n[0], any(n[2:6])
    )
    return (*_pick(g, n[:6]), None, None)


# ----------------------------------------------------------------- RNN

def _rnn_setup(ctx, inputs, output):
    input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse = inputs
    out, _ = output
    ctx.save_for_backward(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, out)
    ctx.flags = (relu, reverse)


def _rnn_backward(ctx, d_out, d_hn):
    input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, out = ctx.saved_tensors
    relu, reverse = ctx.flags
    n = ctx.needs_input_grad
    g = ops.rnn_backward(
        _grad(d_out, out), d_hn, input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, out, relu, reverse,
        n[0], any(n[3:7]),
    )
    gx, gh0, *gw = g
    return (*_pick((gx,), n[:1]), None, *_pick((gh0,), n[2:3]), *_pick(gw, n[3:7]), None, None)


def _rnn_cell_setup(ctx, inputs, output):
    input, hx, w_ih, w_hh, b_ih, b_hh, relu = inputs
    ctx.save_for_backward(input, hx, w_ih, w_hh, b_ih, b_hh, output)
    ctx.relu = relu


def _rnn_cell_backward(ctx, d_h):
    input, hx, w_ih, w_hh, b_ih, b_hh, h = ctx.saved_tensors
    n = ctx.needs_input_grad
    g = ops.rnn_cell_backward(_grad(d_h, h), input, hx, w_ih, w_hh, b_ih, b_hh, h, ctx.relu, n[0], any(n[2:6]))
    return (*_pick(g, n[:6]), None)


for _name, _bwd, _setup in (
    ("lstm_forward", _lstm_backward, _lstm_setup),
    ("lstm_cell_forward", _lstm_cell_backward, _lstm_cell_setup),
    ("gru_forward", _gru_backward, _gru_setup),
    ("gru_cell_forward", _gru_cell_backward, _gru_cell_setup),
    ("rnn_forward", _rnn_backward, _rnn_setup),
    ("rnn_cell_forward", _rnn_cell_backward, _rnn_cell_setup),
):
    torch.library.register_autograd(f"fusedrnn::{_name}", _bwd, setup_context=_setup)
    torch.library.register_autograd(
        f"fusedrnn::{_name.replace('forward', 'backward')}", _no_double_backward, setup_context=_nothing_to_save
    )


# ------------------------------------------------------- multi-layer

def _needs_grad(*tensors) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in tensors)


def _flat(weights):
    return [t for w in weights for t in w if t is not None]


def _stack(run_layer, input: Tensor, num_layers: int, bidirectional: bool, dropout: float, train: bool):
    """Runs run_layer(layer_input, layer, direction) -> output over layers and
    directions, with dropout between layers when training."""
    D = 2 if bidirectional else 1
    x = input
    for layer in range(num_layers):
        outs = [run_layer(x, layer, d) for d in range(D)]
        x = outs[0] if D == 1 else torch.cat(outs, dim=-1)
        if dropout > 0 and train and layer < num_layers - 1:
            x = F.dropout(x, p=dropout, training=True)
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
    c0 [L*D, N, H]); weights[l*D + d] = (w_ih, w_hh, b_ih, b_hh, w_ch, w_hr), any
    of the last four None. Returns (output, h_n [L*D, N, P], c_n [L*D, N, H]).
    """
    h0, c0 = hx
    training = _needs_grad(input, h0, c0, *_flat(weights))
    D = 2 if bidirectional else 1
    h_n: List[Tensor] = []
    c_n: List[Tensor] = []

    def run(x, layer, d):
        k = layer * D + d
        w_ih, w_hh, b_ih, b_hh, w_ch, w_hr = weights[k]
        y, h, c, *_ = ops.lstm_forward(
            x, batch_sizes, h0[k], c0[k], w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled, d == 1, training
        )
        h_n.append(h)
        c_n.append(c)
        return y

    out = _stack(run, input, num_layers, bidirectional, dropout, train)
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
    """Multi-layer GRU, time-major; weights[l*D + d] = (w_ih, w_hh, b_ih, b_hh)."""
    training = _needs_grad(input, hx, *_flat(weights))
    D = 2 if bidirectional else 1
    h_n: List[Tensor] = []

    def run(x, layer, d):
        k = layer * D + d
        y, h, *_ = ops.gru_forward(x, batch_sizes, hx[k], *weights[k], reset_after, d == 1, training)
        h_n.append(h)
        return y

    out = _stack(run, input, num_layers, bidirectional, dropout, train)
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
    """Multi-layer Elman RNN, time-major; weights[l*D + d] = (w_ih, w_hh, b_ih, b_hh)."""
    D = 2 if bidirectional else 1
    relu = nonlinearity == "relu"
    h_n: List[Tensor] = []

    def run(x, layer, d):
        k = layer * D + d
        y, h = ops.rnn_forward(x, batch_sizes, hx[k], *weights[k], relu, d == 1)
        h_n.append(h)
        return y

    out = _stack(run, input, num_layers, bidirectional, dropout, train)
    return out, torch.stack(h_n)


def lstm_cell(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, w_ch=None, coupled=False):
    """One LSTM step: input [N, C], hx [N, H], cx [N, H] -> (h', c')."""
    training = _needs_grad(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch)
    h, c, _ = ops.lstm_cell_forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, coupled, training)
    return h, c


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, reset_after=True):
    """One GRU step: input [N, C], hx [N, H] -> h'."""
    training = _needs_grad(input, hx, w_ih, w_hh, b_ih, b_hh)
    return ops.gru_cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after, training)[0]


def rnn_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    """One Elman step: input [N, C], hx [N, H] -> h'."""
    return ops.rnn_cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity == "relu")
