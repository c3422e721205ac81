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
kernels do. Each first runs its operator's argument checks (the operator
fusedrnn::check_forward), so that a bad call gets the same error either way.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch._functorch import pyfunctorch
from torch.autograd import forward_ad

from . import reference
from ._ops import ops

_FUNCTIONALIZE = torch._C._functorch.TransformType.Functionalize


def wanted(*tensors: Optional[Tensor]) -> bool:
    """Whether a call must take the composition: inside a functorch transform that
    differentiates or batches (grad, jvp, vmap and what is built on them, also
    beneath functionalize; not inside functionalize alone, which takes the
    operators as they are), or with a forward-mode tangent on one of `tensors`."""
    if torch._C._are_functorch_transforms_active():
        top = torch._C._functorch.peek_interpreter_stack()
        # The whole stack is walked only under functionalize.
        if top is not None and (
            top.key() != _FUNCTIONALIZE
            or any(i.key() != _FUNCTIONALIZE for i in torch._C._functorch.get_interpreter_stack())
        ):
            return True
    if getattr(forward_ad, "_current_level", 0) < 0:  # no dual level is open
        return False
    return any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def _dtypes(input: Tensor) -> Tuple[torch.dtype, torch.dtype]:
    """(dtype of the outputs, dtype of the computation). Under autocast the
    outputs are in the autocast dtype, as the operators' autocast kernels give
    them; float16 and bfloat16 compute in float32."""
    dev = input.device.type
    out = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else input.dtype
    return out, torch.float32 if out in (torch.float16, torch.bfloat16) else out


def _computing(fn):
    """fn on its floating-point tensor arguments rounded to the output dtype and
    converted to the compute dtype, with autocast off inside; its results
    converted to the output dtype."""

    def run(input, *tensors, **kw):
        out, acc = _dtypes(input)
        with torch.autocast(input.device.type, enabled=False):
            args = [t.to(out).to(acc) if isinstance(t, Tensor) and t.is_floating_point() else t
                    for t in (input, *tensors)]
            res = fn(*args, **kw)
        return tuple(r.to(out) for r in res) if isinstance(res, tuple) else res.to(out)

    return run


def _stand_in(t, values: bool):
    """A plain tensor with t's logical shape, device and dtype (the autocast dtype
    where the operators' autocast kernel would cast t) and, for batch_sizes on
    the CPU, values, which the checks can read outside the functorch transforms."""
    if not isinstance(t, Tensor):
        return t
    if values and t.device.type == "cpu":
        return torch.tensor(t.tolist(), dtype=t.dtype)
    dtype, dev = t.dtype, t.device.type
    if t.is_floating_point() and dtype != torch.float64 and torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
    return torch.empty((), dtype=dtype, device=t.device).expand(t.shape)


def _with_checks(op: str, check_args):
    """fn after the checks of the operator `op`; check_args maps fn's arguments
    to check_forward's (input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh,
    w_ch, w_hr, flag)."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args):
            checked = [_stand_in(t, values=i == 1) for i, t in enumerate(check_args(*args))]
            with pyfunctorch.temporarily_clear_interpreter_stack():
                ops.check_forward(op, *checked)
            return fn(*args)

        return run

    return wrap


def _single_state_args(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, flag, reverse):
    return input, batch_sizes, h0, None, w_ih, w_hh, b_ih, b_hh, None, None, flag


def _cell_args(input, hx, w_ih, w_hh, b_ih, b_hh, flag):
    return input, None, hx, None, w_ih, w_hh, b_ih, b_hh, None, None, flag


# The layers take the input's projection for all steps in one product, as the
# operators do, and run the reference's steps from it.


@_with_checks("lstm_forward", lambda x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled, reverse: (
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled))
@_computing
def lstm(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled, reverse) -> Tuple[Tensor, Tensor, Tensor]:
    """lstm_forward's (output, h_n, c_n)."""

    def step(gx, h, c):
        return reference._lstm_step(gx, h, c, w_hh, b_hh, w_ch, w_hr, coupled)

    y, (h, c) = reference.layer(step, reference._linear(input, w_ih, b_ih), (h0, c0), batch_sizes, reverse)
    return y, h, c


def _single_state(step, input, batch_sizes, h0, reverse, w_ih, w_hh, b_ih, b_hh):
    gx = reference._linear(input, w_ih, b_ih)
    y, (h,) = reference.layer(lambda gx_t, h: (step(gx_t, h, w_hh, b_hh),), gx, (h0,), batch_sizes, reverse)
    return y, h


@_with_checks("gru_forward", _single_state_args)
@_computing
def gru(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reset_after, reverse) -> Tuple[Tensor, Tensor]:
    """gru_forward's (output, h_n)."""
    step = functools.partial(reference._gru_step, reset_after=reset_after)
    return _single_state(step, input, batch_sizes, h0, reverse, w_ih, w_hh, b_ih, b_hh)


@_with_checks("rnn_forward", _single_state_args)
@_computing
def rnn(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse) -> Tuple[Tensor, Tensor]:
    """rnn_forward's (output, h_n)."""
    step = functools.partial(reference._rnn_step, nonlinearity="relu" if relu else "tanh")
    return _single_state(step, input, batch_sizes, h0, reverse, w_ih, w_hh, b_ih, b_hh)


@_with_checks("lstm_cell_forward", lambda x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, coupled: (
    x, None, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, None, coupled))
@_computing
def lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, coupled) -> Tuple[Tensor, Tensor]:
    """lstm_cell_forward's (h, c)."""
    return reference.lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, coupled=coupled)


@_with_checks("gru_cell_forward", _cell_args)
@_computing
def gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after) -> Tensor:
    """gru_cell_forward's h."""
    return reference.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after=reset_after)


@_with_checks("rnn_cell_forward", _cell_args)
@_computing
def rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, relu) -> Tensor:
    """rnn_cell_forward's h."""
    return reference.rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity="relu" if relu else "tanh")


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
# Also under vmap (a batched double backward: is_grads_batched=True,
# jacobian(..., vectorize=True, create_graph=True)), where the decomposition of a
# CompositeImplicitAutograd operator that returns a list of tensors is not
# generated.
for _key in ("CompositeImplicitAutograd", "Batched", "FuncTorchBatched"):
    _lib.impl("differentiable_backward", _differentiable_backward, _key)
