"""Checks for your own test suite: gradients and agreement with the reference.

``gradcheck(module, input, hx=None)`` runs ``torch.autograd.gradcheck`` in
float64 on a copy of a recurrent module (fusedrnn or torch.nn), with respect to
the input, the initial state and every parameter; ``gradgradcheck`` runs
``torch.autograd.gradgradcheck`` (second derivatives) the same way.

``assert_matches_reference(module, input, hx=None, rtol=None, atol=None)`` runs
the module forward and backward and compares every output and every gradient
with ``fusedrnn.reference`` computed in float64. Without tolerances it uses the
error-ratio oracle: the module's error against float64 may be at most twice the
error of the reference computed in the module's own dtype (the larger of two
runs: at the given values, and at inputs and parameters moved by one rounding
step), plus a floor of a few units in the last place. With ``rtol``/``atol`` it uses
``|a - ref| <= atol + rtol * |ref|`` elementwise.

All raise ``AssertionError`` naming the tensor and the error.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.gradcheck import GradcheckError
from torch.nn.utils.rnn import PackedSequence

from . import reference

__all__ = ["gradcheck", "gradgradcheck", "assert_matches_reference"]

# Error floor, in units of the dtype's epsilon times the larger of 1 and the
# reference's largest magnitude: a difference this small is rounding, whatever
# the reference's own error happens to be. Not of the magnitude alone: a value
# summed from terms that cancel carries rounding of the size of its terms (a
# float64 LSTM's weight_hr gradient of a few hundredths, off by 7e-16, beyond
# both the magnitude's floor and the float64 baseline scaled from float32).
_FLOOR_ULPS = 8.0
_RATIO = 2.0


def _is_cell(module) -> bool:
    return reference._module_config(module).endswith("CELL")


def _lstm_like(module) -> bool:
    return reference._module_config(module).startswith("LSTM")


def _copy(module: nn.Module) -> nn.Module:
    """copy.deepcopy of a module whose attributes may hold tensors computed in its
    last forward (torch.nn's flat weights under a parametrization, the weight of
    torch.nn.utils.weight_norm's hook), which deepcopy refuses: those are copied
    detached, as the module recomputes them at its next forward."""
    memo = {}
    for m in module.modules():
        for value in vars(m).values():
            for t in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(t, Tensor) and not t.is_leaf:
                    memo[id(t)] = t.detach().clone()
    return copy.deepcopy(module, memo)


def _param_items(module) -> List[Tuple[str, Tensor]]:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def _split_input(input):
    """(tensor to differentiate, rebuild(tensor) -> module input)."""
    if not isinstance(input, (Tensor, PackedSequence)):
        raise TypeError(f"input must be a Tensor or a PackedSequence, got {type(input).__name__}")
    if isinstance(input, PackedSequence):
        data, bs, si, ui = input

        def rebuild(t):
            return PackedSequence(t, bs, si, ui)

        return data, rebuild
    return input, (lambda t: t)


def _hx_list(hx, module) -> List[Tensor]:
    if hx is None:
        return []
    if _lstm_like(module):
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"hx of {type(module).__name__} must be a pair (h, c), got {type(hx).__name__}")
        return list(hx)
    if not isinstance(hx, Tensor):
        raise TypeError(f"hx of {type(module).__name__} must be a Tensor, got {type(hx).__name__}")
    return [hx]


def _hx_rebuild(hx_list, module):
    if not hx_list:
        return None
    return tuple(hx_list) if _lstm_like(module) else hx_list[0]


def _outputs(module, out) -> List[Tuple[str, Tensor]]:
    if _is_cell(module):
        if isinstance(out, tuple):
            return [("h", out[0]), ("c", out[1])]
        return [("h", out)]
    y, hidden = out
    if isinstance(y, PackedSequence):
        y = y.data
    if isinstance(hidden, tuple):
        return [("output", y), ("h_n", hidden[0]), ("c_n", hidden[1])]
    return [("output", y), ("h_n", hidden)]


def gradcheck(module: nn.Module, input, hx=None, **kwargs) -> bool:
    """torch.autograd.gradcheck of a recurrent module in float64.

    Works on a float64 copy in eval mode (no dropout), with respect to the
    input, hx and every parameter that requires grad. Extra keyword arguments
    go to torch.autograd.gradcheck. Returns True or raises AssertionError that
    names the output and the tensor whose gradient is wrong.
    """
    return _check(torch.autograd.gradcheck, module, input, hx, kwargs)


def gradgradcheck(module: nn.Module, input, hx=None, **kwargs) -> bool:
    """torch.autograd.gradgradcheck of a recurrent module in float64: the second
    derivatives (a backward with create_graph=True, differentiated again)
    against finite differences of the first ones. As gradcheck otherwise; the
    AssertionError names the gradient whose derivative is wrong, and the
    tensor it is taken with respect to.
    """
    return _check(torch.autograd.gradgradcheck, module, input, hx, kwargs)


def _check(checker, module: nn.Module, input, hx, kwargs) -> bool:
    reference._module_config(module)
    x, rebuild = _split_input(input)
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got {x.dtype}")
    m = _copy(module).double().eval()
    # Copies: gradcheck moves each element in place, and the input and the states
    # may share memory (hx = (z, z)).
    x = x.detach().to(torch.float64, copy=True).requires_grad_()
    hx_list = [h.detach().to(torch.float64, copy=True).requires_grad_() for h in _hx_list(hx, module)]
    params = _param_items(m)
    names = ["input"] + [f"hx[{i}]" for i in range(len(hx_list))] + [n for n, _ in params]

    def fn(xi, *args):
        hs = list(args[: len(hx_list)])
        state = {n: p for (n, _), p in zip(params, args[len(hx_list) :])}
        out = torch.func.functional_call(m, state, (rebuild(xi), _hx_rebuild(hs, m)))
        return _outputs(m, out)

    inputs = [x] + hx_list + [p for _, p in params]
    out_names = [n for n, _ in fn(*inputs)]
    what = "gradient"
    if checker is torch.autograd.gradgradcheck:
        # What gradgradcheck differentiates: the gradients of the inputs, as
        # functions of the inputs and of the gradients of the outputs.
        out_names, names = [f"the gradient of {n}" for n in names], names + [f"the gradient of {n}" for n in out_names]
        what = "derivative"

    def fn_tensors(*args):
        return tuple(t for _, t in fn(*args))

    kwargs.setdefault("atol", 1e-6)
    kwargs.setdefault("rtol", 1e-4)
    try:
        return checker(fn_tensors, tuple(inputs), **kwargs)
    except GradcheckError as e:
        msg = str(e)
        m_out = re.search(r"output (\d+)", msg)
        m_in = re.search(r"input (\d+)", msg)
        out_name = out_names[int(m_out.group(1))] if m_out else "an output"
        in_name = names[int(m_in.group(1))] if m_in else "an input"
        raise AssertionError(f"{checker.__name__}: {what} of {out_name} with respect to {in_name} is wrong: {msg}") from None


def _forward_backward(fn, module, x, rebuild, hx_list, params, cotangents=None, dtype=None):
    """Runs fn (module or reference), returns {name: tensor} for outputs and grads."""
    xs = x.detach().clone().requires_grad_(x.is_floating_point())
    hs = [h.detach().clone().requires_grad_() for h in hx_list]
    out = fn(rebuild(xs), _hx_rebuild(hs, module))
    outs = _outputs(module, out)
    if cotangents is None:
        gen = torch.Generator().manual_seed(0)
        cotangents = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for _, t in outs]
    loss = sum((t * c.to(device=t.device, dtype=t.dtype)).sum() for (_, t), c in zip(outs, cotangents))
    wrt = ([xs] if xs.requires_grad else []) + hs + [p for _, p in params]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    result: Dict[str, Tensor] = {n: t.detach() for n, t in outs}
    names = (["grad input"] if xs.requires_grad else []) + [f"grad hx[{i}]" for i in range(len(hs))]
    names += [f"grad {n}" for n, _ in params]
    for n, g in zip(names, grads):
        result[n] = g.detach() if g is not None else None
    return result, cotangents


def _nudge(t: Tensor, eps: float, gen: torch.Generator) -> Tensor:
    """t with every element moved by a relative eps (one or two ulps at that
    precision), up or down at random."""
    if not t.is_floating_point():
        return t
    sign = torch.randint(0, 2, t.shape, generator=gen).to(device=t.device, dtype=torch.float64) * 2 - 1
    return (t.detach().double() * (1 + sign * eps)).to(t.dtype)


def _abs_diff(a64: Tensor, r64: Tensor) -> Tensor:
    """|a - r| elementwise, 0 where both are the same infinity or both NaN, and
    inf where only one of them is NaN or infinite."""
    same = (a64 == r64) | (a64.isnan() & r64.isnan())
    return torch.where(same, 0.0, (a64 - r64).abs()).nan_to_num(nan=math.inf, posinf=math.inf)


def _max_error(a: Optional[Tensor], r64: Tensor) -> float:
    if a is None or r64.numel() == 0:
        return 0.0
    return _abs_diff(a.double().to(r64.device), r64).max().item()


def assert_matches_reference(module: nn.Module, input, hx=None, rtol: Optional[float] = None,
                             atol: Optional[float] = None, check_grads: bool = True) -> None:
    """Compares a module's outputs and gradients with fusedrnn.reference.

    The module runs in eval mode (no dropout) and is restored afterwards.
    Raises AssertionError naming the first tensor that disagrees, with its
    maximum error and the bound it broke. check_grads=False compares the
    outputs only.
    """
    reference._module_config(module)
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number or None, got {type(value).__name__}")
        if not value >= 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
    was_training = module.training
    module.eval()
    try:
        x, rebuild = _split_input(input)
        hx_list = _hx_list(hx, module)
        params = _param_items(module)
        ref_fn = reference.cell_forward if _is_cell(module) else reference.forward
        got, cot = _forward_backward(lambda i, h: module(i, h), module, x, rebuild, hx_list, params)
        ref64, _ = _forward_backward(lambda i, h: ref_fn(module, i, h, upcast=True), module, x, rebuild,
                                     hx_list, params, cot)
        use_ratio = rtol is None and atol is None
        ref_same = None
        base_scale = 1.0
        if use_ratio:
            # The reference in the module's dtype; for float64, in float32 (see above).
            low = x.dtype if x.dtype != torch.float64 else torch.float32
            if x.dtype == torch.float64:
                base_scale = torch.finfo(torch.float64).eps / torch.finfo(torch.float32).eps
            ref_same, _ = _forward_backward(lambda i, h: ref_fn(module, i, h, dtype=low), module, x,
                                            rebuild, hx_list, params, cot)
            # The same at inputs and parameters moved by one rounding step: the
            # error of a computation that is exact up to rounding of its inputs.
            # One run's error can land far below that by luck (a 1x1 weight
            # gradient summed from terms that cancel), and twice a lucky error
            # is no bound.
            moved = _copy(module)
            gen = torch.Generator().manual_seed(1)
            eps_low = torch.finfo(low).eps
            with torch.no_grad():
                for p in moved.parameters():
                    p.copy_(_nudge(p, eps_low, gen))
            ref_moved, _ = _forward_backward(lambda i, h: ref_fn(moved, i, h, dtype=low), moved,
                                             _nudge(x, eps_low, gen), rebuild,
                                             [_nudge(h, eps_low, gen) for h in hx_list],
                                             _param_items(moved), cot)
        for name, a in got.items():
            if not check_grads and name.startswith("grad "):
                continue
            r = ref64[name]
            if a is None and r is None:
                continue
            if a is None or r is None:
                raise AssertionError(f"{name}: {'missing' if a is None else 'unexpected'} gradient")
            a64, r64 = a.double(), r.double().to(a.device)
            diff = _abs_diff(a64, r64)
            err = diff.max().item() if diff.numel() else 0.0
            if use_ratio:
                eps = torch.finfo(a.dtype).eps
                finite = r64[r64.isfinite()].abs()
                scale = max(1.0, finite.max().item() if finite.numel() else 0.0)
                base = max(_max_error(ref_same[name], r64), _max_error(ref_moved[name], r64)) * base_scale
                bound = _RATIO * base + _FLOOR_ULPS * eps * scale
                if not err <= bound:
                    raise AssertionError(
                        f"{name}: max error {err:.3e} against the float64 reference exceeds {bound:.3e} "
                        f"({_RATIO:g} x the {a.dtype} reference's own error {base:.3e} + rounding floor); "
                        f"mean error {diff.mean().item():.3e}"
                    )
            else:
                tol = (atol or 0.0) + (rtol or 0.0) * r64.abs().nan_to_num(nan=0.0, posinf=0.0)
                bad = diff > tol
                if bad.any():
                    raise AssertionError(
                        f"{name}: max error {err:.3e} exceeds atol={atol} rtol={rtol} at "
                        f"{int(bad.sum())} of {diff.numel()} elements; mean error {diff.mean().item():.3e}"
                    )
    finally:
        module.train(was_training)
