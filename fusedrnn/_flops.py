"""FLOP counts of the operators for torch.utils.flop_counter.FlopCounterMode.

FlopCounterMode counts the matrix products of the aten operations it sees
(2 FLOPs a multiply-add) and nothing for operations it has no formula for. The
fused operators are registered here with the products they compute, counted the
same way, so that a model's count is the same whether its recurrent layers are
fusedrnn's or the composite ``fusedrnn.reference`` (pointwise work, like the
activations, is not counted, as FlopCounterMode counts none), but for the initial
state's gradient: the kernels always compute it, the reference only where h0
requires grad. A bidirectional operator counts both directions, each as the
one-direction operator would (its backward with each direction's
need_weight_grads).

Per call, with R rows (T*N padded, the packed rows, N for a cell), the gate
width G*H, input width C, state width P (H without projection):
  forward   X W_ih^T (R x G*H x C), H W_hh^T (R x G*H x P), projection (R x P x H)
  backward  dh through W_hh (R x G*H x P) and, with a projection, through W_hr
            (R x P x H), for every step down to the initial state (the kernels
            always return its gradient); dx through W_ih (R x G*H x C) when
            need_input_grad; the weight gradients, one product of each
            forward size, when need_weight_grads.
"""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

_FORWARD = ("lstm_forward", "lstm_cell_forward", "gru_forward", "gru_cell_forward",
            "rnn_forward", "rnn_cell_forward")
_BIDIRECTIONAL = ("lstm_bidirectional_forward", "gru_bidirectional_forward", "rnn_bidirectional_forward")
_BACKWARD = ("lstm_backward", "lstm_cell_backward", "gru_backward", "gru_cell_backward",
             "rnn_backward", "rnn_cell_backward")
_BIDIRECTIONAL_BACKWARD = ("lstm_bidirectional_backward", "gru_bidirectional_backward",
                           "rnn_bidirectional_backward")


def _products(a):
    """Multiply-adds of the forward's three products: (input, recurrent, projection)."""
    rows = math.prod(a["input"][:-1])
    gates, C = a["w_ih"]
    P = a["w_hh"][1]
    w_hr = a.get("w_hr")
    return rows * gates * C, rows * gates * P, (rows * w_hr[0] * w_hr[1] if w_hr is not None else 0)


def _forward_flops(a):
    return 2 * sum(_products(a))


def _reverse(a):
    """The reverse direction's arguments, as a one-direction operator takes them."""
    names = ("w_ih", "w_hh", "w_hr", "need_weight_grads")
    return {**a, **{k: a[f"{k}_reverse"] for k in names if f"{k}_reverse" in a}}


def _bidirectional_flops(a):
    return _forward_flops(a) + _forward_flops(_reverse(a))


def _backward_flops(a):
    ih, hh, hr = _products(a)
    madds = hh + hr
    if a["need_input_grad"]:
        madds += ih
    if a["need_weight_grads"]:
        madds += ih + hh + hr
    return 2 * madds


def _bidirectional_backward_flops(a):
    return _backward_flops(a) + _backward_flops(_reverse(a))


def _formula(op, count):
    names = [arg.name for arg in op.default._schema.arguments]

    def flops(*args, out_shape=None, **kwargs):
        bound = dict(zip(names, args))
        bound.update(kwargs)
        return count(bound)

    return flops


def _register():
    ops = torch.ops.fusedrnn
    for names, count in ((_FORWARD, _forward_flops), (_BIDIRECTIONAL, _bidirectional_flops),
                         (_BACKWARD, _backward_flops),
                         (_BIDIRECTIONAL_BACKWARD, _bidirectional_backward_flops)):
        for name in names:
            op = getattr(ops, name)
            if op not in flop_registry:  # a reload of this module registers nothing twice
                register_flop_formula(op)(_formula(op, count))


_register()
