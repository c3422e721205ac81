"""The operators as compositions of differentiable torch operations.

The fused operators' autograd (csrc/torch/autograd.cpp) computes first
derivatives, in reverse mode, with the backward kernels. What it cannot serve
goes through these compositions of the reference's equations
(fusedrnn.reference), which every derivative machinery of torch differentiates,
to any order:

- functorch transforms (torch.func.grad, vjp, jvp, jacrev, hessian, vmap) and
  forward-mode AD (torch.autograd.forward_ad): fusedrnn.functional calls the
  compositions instead of the operators (``wanted``);
- a backward with create_graph=True (double backward: gradient penalties,
  Hessian-vector products, meta-learning): the fused backward calls the
  operator fusedrnn::differentiable_backward, implemented here, whose
  gradients are themselves differentiable.

This is what torch.nn's native CPU path does for all of them: its recurrences
are compositions too. Each function takes an operator's arguments and returns
its differentiable outputs; float16 and bfloat16 compute in float32, as the
kernels do.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd import forward_ad

from . import reference


def wanted(*tensors: Optional[Tensor]) -> bool:
    """Whether a call must take the composition: under a functorch transform, or
    with a forward-mode tangent on one of `tensors`."""
    if torch._C._are_functorch_transforms_active():
        return True
    if getattr(forward_ad, "_current_level", 0) < 0:  # no dual level is open
        return False
    return any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _to(dtype, *tensors):
    return [None if t is None else t.to(dtype) for t in tensors]


def lstm(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled, reverse) -> Tuple[Tensor, Tensor, Tensor]:
    """lstm_forward's (output, h_n, c_n)."""
    a = _compute_dtype(input.dtype)
    x, h0, c0, *w = _to(a, input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr)

    def step(x_t, h, c):
        return reference.lstm_cell(x_t, h, c, *w, coupled=coupled)

    y, (h, c) = reference.layer(step, x, (h0, c0), batch_sizes, reverse)
    return y.to(input.dtype), h.to(input.dtype), c.to(input.dtype)


def gru(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reset_after, reverse) -> Tuple[Tensor, Tensor]:
    """gru_forward's (output, h_n)."""
    a = _compute_dtype(input.dtype)
    x, h0, *w = _to(a, input, h0, w_ih, w_hh, b_ih, b_hh)

    def step(x_t, h):
        return (reference.gru_cell(x_t, h, *w, reset_after=reset_after),)

    y, (h,) = reference.layer(step, x, (h0,), batch_sizes, reverse)
    return y.to(input.dtype), h.to(input.dtype)


def rnn(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse) -> Tuple[Tensor, Tensor]:
    """rnn_forward's (output, h_n)."""
    a = _compute_dtype(input.dtype)
    x, h0, *w = _to(a, input, h0, w_ih, w_hh, b_ih, b_hh)
    nonlinearity = "relu" if relu else "tanh"

    def step(x_t, h):
        return (reference.rnn_cell(x_t, h, *w, nonlinearity=nonlinearity),)

    y, (h,) = reference.layer(step, x, (h0,), batch_sizes, reverse)
    return y.to(input.dtype), h.to(input.dtype)


def lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, coupled) -> Tuple[Tensor, Tensor]:
    """lstm_cell_forward's (h, c)."""
    a = _compute_dtype(input.dtype)
    h, c = reference.lstm_cell(*_to(a, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch), coupled=coupled)
    return h.to(input.dtype), c.to(input.dtype)


def gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after) -> Tensor:
    """gru_cell_forward's h."""
    a = _compute_dtype(input.dtype)
    return reference.gru_cell(*_to(a, input, hx, w_ih, w_hh, b_ih, b_hh), reset_after=reset_after).to(input.dtype)


def rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, relu) -> Tensor:
    """rnn_cell_forward's h."""
    a = _compute_dtype(input.dtype)
    h = reference.rnn_cell(*_to(a, input, hx, w_ih, w_hh, b_ih, b_hh), nonlinearity="relu" if relu else "tanh")
    return h.to(input.dtype)


# The operator of a call, as autograd.cpp encodes it: op << 3 | flag << 2 |
# reverse << 1 | training, with op in the order of its enum Op.
def _outputs(call: int, input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr):
    op, flag, reverse = call >> 3, bool(call >> 2 & 1), bool(call >> 1 & 1)
    if op == 0:
        return lstm(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, flag, reverse)
    if op == 1:
        return gru(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, flag, reverse)
    if op == 2:
        return rnn(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, flag, reverse)
    if op == 3:
        return lstm_cell(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, flag)
    if op == 4:
        return (gru_cell(input, h0, w_ih, w_hh, b_ih, b_hh, flag),)
    if op == 5:
        return (rnn_cell(input, h0, w_ih, w_hh, b_ih, b_hh, flag),)
    raise ValueError(f"fusedrnn::differentiable_backward: unknown operator code {op}")


def _differentiable_backward(call, need, grad_y, grad_h, grad_c, *args):
    """The gradients of the arguments selected by the bit mask `need` (bit i:
    argument i of input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch,
    w_hr), given the gradients of the forward's differentiable outputs (None
    where an output was not used), as differentiable tensors."""
    args = list(args)
    picked = [i for i in range(len(args)) if need >> i & 1]
    # Each wanted argument through an alias of its own: an argument passed in two
    # places (h0 is c0) gets the gradient of each place, as the operator's
    # autograd returns them, not their sum twice.
    for i in picked:
        args[i] = args[i].view_as(args[i])
    inputs = [args[i] for i in picked]
    with torch.enable_grad():
        outs = _outputs(call, *args)
        pairs = [(o, g) for o, g in zip(outs, (grad_y, grad_h, grad_c)) if g is not None]
        if not pairs:
            return [torch.zeros_like(t) for t in inputs]
        grads = torch.autograd.grad(
            [o for o, _ in pairs], inputs, [g for _, g in pairs], create_graph=True, allow_unused=True
        )
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]


_lib = torch.library.Library("fusedrnn", "IMPL")
_lib.impl("differentiable_backward", _differentiable_backward, "CompositeImplicitAutograd")
