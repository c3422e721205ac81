"""Loads the compiled operators (fusedrnn._C) and registers their fake kernels.

Importing this module makes ``torch.ops.fusedrnn.*`` available. The fake
(meta) kernels give output shapes and dtypes without computing, for
torch.compile, torch.export and torch.library.opcheck.
"""

from __future__ import annotations

import functools
import inspect

import torch

from ._version import __version__


def _check_build(info: dict, running: str) -> None:
    """Raises a clear ImportError when _C was built against another torch."""
    built = info["torch_version"]
    running = running.split("+")[0]
    if built.split(".")[:2] != running.split(".")[:2]:
        raise ImportError(
            f"fusedrnn._C was built against torch {built} but torch {running} is installed; "
            "rebuild it: pip install --no-build-isolation --no-deps --force-reinstall -e ."
        )


def _load():
    try:
        from . import _C
    except ImportError as e:
        msg = str(e)
        hint = ""
        if "undefined symbol" in msg or "version" in msg.lower():
            hint = (
                f" fusedrnn._C does not match the installed torch {torch.__version__}: it was "
                "built against another torch. Rebuild it: "
                "pip install --no-build-isolation --no-deps --force-reinstall -e ."
            )
        raise ImportError(f"could not load fusedrnn's compiled operators (fusedrnn._C): {msg}.{hint}") from e
    _check_build(_C.build_info(), torch.__version__)
    return _C


_C = _load()
ops = torch.ops.fusedrnn


def _empty(like):
    return like.new_empty((0,))


def _seq_shapes(input, batch_sizes, h0, w_hh, G):
    packed = batch_sizes is not None
    R = input.shape[0] if packed else input.shape[0] * input.shape[1]
    N, P = h0.shape
    H = w_hh.shape[0] // G
    out_shape = (R, P) if packed else (input.shape[0], input.shape[1], P)
    return R, N, H, P, out_shape


def _grad_like(t, want):
    return t.new_empty(t.shape) if (want and t is not None) else None


def _or_empty(t, like):
    return t if t is not None else _empty(like)


def _fake(name: str):
    """Registers fn as the fake kernel of fusedrnn::<name>, after the device
    check the real kernels make (the words of csrc/torch/rnn_layer.cpp): a call
    mixing meta tensors with others dispatches here, and would otherwise return
    uninitialised tensors on the input's device as its result."""

    def wrap(fn):
        names = list(inspect.signature(fn).parameters)

        @functools.wraps(fn)
        def checked(*args, **kwargs):
            bound = {**dict(zip(names, args)), **kwargs}
            input = bound["input"]
            for n, t in bound.items():
                if isinstance(t, torch.Tensor) and t.device != input.device and n != "batch_sizes":
                    raise RuntimeError(f"fusedrnn::{name}: {n} is on {t.device} but input is on {input.device}")
            bs = bound.get("batch_sizes")
            if bs is not None and bs.device.type != "cpu":
                raise RuntimeError(f"fusedrnn::{name}: batch_sizes must be on the CPU, got {bs.device}")
            return fn(*args, **kwargs)

        torch.library.register_fake(f"fusedrnn::{name}")(checked)
        return fn

    return wrap


@torch.library.register_fake("fusedrnn::packed_batch_size")
def _(batch_sizes):
    return torch.library.get_ctx().new_dynamic_size()


@_fake("lstm_forward")
def _(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled, reverse, training):
    G = 3 if coupled else 4
    R, N, H, P, out_shape = _seq_shapes(input, batch_sizes, h0, w_hh, G)
    return (
        input.new_empty(out_shape),
        input.new_empty((N, P)),
        input.new_empty((N, H)),
        input.new_empty((R, G * H)) if training else _empty(input),
        input.new_empty((R, H)) if training else _empty(input),
        input.new_empty((R, H)) if training and w_hr is not None else _empty(input),
    )


@_fake("lstm_backward")
def _(grad_output, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr,
      output, gates, states, proj_in, coupled, reverse, need_input_grad, need_weight_grads):
    w = need_weight_grads
    return tuple(
        _or_empty(t, input)
        for t in (
            _grad_like(input, need_input_grad), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
            _grad_like(w_ih, w), _grad_like(w_hh, w), _grad_like(b_ih, w), _grad_like(b_hh, w),
            _grad_like(w_ch, w), _grad_like(w_hr, w),
        )
    )


@_fake("lstm_cell_forward")
def _(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, coupled, training):
    G = 3 if coupled else 4
    N, H = hx.shape
    return (
        input.new_empty((N, H)),
        input.new_empty((N, H)),
        input.new_empty((N, G * H)) if training else _empty(input),
    )


@_fake("lstm_cell_backward")
def _(grad_h, grad_c, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, h, c, gates, coupled,
      need_input_grad, need_weight_grads):
    w = need_weight_grads
    return tuple(
        _or_empty(t, input)
        for t in (
            _grad_like(input, need_input_grad), hx.new_empty(hx.shape), cx.new_empty(cx.shape),
            _grad_like(w_ih, w), _grad_like(w_hh, w), _grad_like(b_ih, w), _grad_like(b_hh, w),
            _grad_like(w_ch, w),
        )
    )


def _gru_saved(input, R, H, reset_after, training):
    gates = input.new_empty((R, (4 if reset_after else 3) * H)) if training else _empty(input)
    states = input.new_empty((R, H)) if training and not reset_after else _empty(input)
    return gates, states


@_fake("gru_forward")
def _(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reset_after, reverse, training):
    R, N, H, P, out_shape = _seq_shapes(input, batch_sizes, h0, w_hh, 3)
    return (input.new_empty(out_shape), input.new_empty((N, H)), *_gru_saved(input, R, H, reset_after, training))


def _simple_backward_fake(input, h0, w_ih, w_hh, b_ih, b_hh, need_input_grad, need_weight_grads):
    w = need_weight_grads
    return tuple(
        _or_empty(t, input)
        for t in (
            _grad_like(input, need_input_grad), h0.new_empty(h0.shape), _grad_like(w_ih, w),
            _grad_like(w_hh, w), _grad_like(b_ih, w), _grad_like(b_hh, w),
        )
    )


@_fake("gru_backward")
def _(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, output, gates, states,
      reset_after, reverse, need_input_grad, need_weight_grads):
    return _simple_backward_fake(input, h0, w_ih, w_hh, b_ih, b_hh, need_input_grad, need_weight_grads)


@_fake("gru_cell_forward")
def _(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after, training):
    N, H = hx.shape
    return (input.new_empty((N, H)), *_gru_saved(input, N, H, reset_after, training))


@_fake("gru_cell_backward")
def _(grad_h, input, hx, w_ih, w_hh, b_ih, b_hh, h, gates, states, reset_after, need_input_grad,
      need_weight_grads):
    return _simple_backward_fake(input, hx, w_ih, w_hh, b_ih, b_hh, need_input_grad, need_weight_grads)


@_fake("rnn_forward")
def _(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse):
    R, N, H, P, out_shape = _seq_shapes(input, batch_sizes, h0, w_hh, 1)
    return input.new_empty(out_shape), input.new_empty((N, H))


@_fake("rnn_backward")
def _(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, output, relu, reverse,
      need_input_grad, need_weight_grads):
    return _simple_backward_fake(input, h0, w_ih, w_hh, b_ih, b_hh, need_input_grad, need_weight_grads)


@_fake("rnn_cell_forward")
def _(input, hx, w_ih, w_hh, b_ih, b_hh, relu):
    return input.new_empty(hx.shape)


@_fake("rnn_cell_backward")
def _(grad_h, input, hx, w_ih, w_hh, b_ih, b_hh, h, relu, need_input_grad, need_weight_grads):
    return _simple_backward_fake(input, hx, w_ih, w_hh, b_ih, b_hh, need_input_grad, need_weight_grads)


def _bidirectional_shapes(name, input, batch_sizes, h0, w_hh, G):
    """Per direction (R, N, H, P) and the output's shape [.., 2P], after the
    kernel's check that h0 is [2, N, P]."""
    if h0.dim() != 3 or h0.shape[0] != 2:
        raise RuntimeError(
            f"fusedrnn::{name}: h0 must have shape [2, N, P], one state per direction, got {list(h0.shape)}")
    R, N, H, P, out_shape = _seq_shapes(input, batch_sizes, h0[0], w_hh, G)
    return R, N, H, P, (*out_shape[:-1], 2 * P)


@_fake("lstm_bidirectional_forward")
def _(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, w_ih_reverse, w_hh_reverse,
      b_ih_reverse, b_hh_reverse, w_ch_reverse, w_hr_reverse, coupled, training):
    G = 3 if coupled else 4
    R, N, H, P, out_shape = _bidirectional_shapes("lstm_bidirectional_forward", input, batch_sizes, h0, w_hh, G)

    def saved(w_hr):
        return (
            input.new_empty((R, G * H)) if training else _empty(input),
            input.new_empty((R, H)) if training else _empty(input),
            input.new_empty((R, H)) if training and w_hr is not None else _empty(input),
        )

    return (input.new_empty(out_shape), input.new_empty((2, N, P)), input.new_empty((2, N, H)),
            *saved(w_hr), *saved(w_hr_reverse))


@_fake("gru_bidirectional_forward")
def _(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, w_ih_reverse, w_hh_reverse, b_ih_reverse,
      b_hh_reverse, reset_after, training):
    R, N, H, P, out_shape = _bidirectional_shapes("gru_bidirectional_forward", input, batch_sizes, h0, w_hh, 3)
    return (input.new_empty(out_shape), input.new_empty((2, N, H)),
            *_gru_saved(input, R, H, reset_after, training), *_gru_saved(input, R, H, reset_after, training))


@_fake("rnn_bidirectional_forward")
def _(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, w_ih_reverse, w_hh_reverse, b_ih_reverse,
      b_hh_reverse, relu):
    R, N, H, P, out_shape = _bidirectional_shapes("rnn_bidirectional_forward", input, batch_sizes, h0, w_hh, 1)
    return input.new_empty(out_shape), input.new_empty((2, N, H))


def backend_info() -> dict:
    """What this build contains and what the machine offers at run time.

    Keys: version, torch (built against / running), cpu_isas_compiled, cpu_isa
    (the one in use), cpu_single_step_products (where cell calls on CPU take their
    products: "own" GEMMs, torch's BLAS "blas by shape" where it is MKL on an Intel
    CPU, or "blas" when FUSEDRNN_CPU_BLAS=always), cpu_bfloat16_products (where
    bfloat16 layers on CPU take their products, where the kernels run with AVX-512:
    "amx" tiles where the CPU has AMX-BF16, else "avx512-bf16" dot products where
    it has AVX512-BF16 (also with FUSEDRNN_CPU_AMX_TILES=never), unless
    FUSEDRNN_CPU_AMX=never; otherwise "float32"), cuda_compiled, cuda_archs,
    cuda_available, cuda_devices.
    """
    info = _C.build_info()
    return {
        "version": __version__,
        "torch_built": info["torch_version"],
        "torch_running": torch.__version__,
        "cpu_isas_compiled": info["cpu_isas_compiled"].split(","),
        "cpu_isa": info["cpu_isa"],
        "cpu_single_step_products": _C.cpu_single_step_products(),
        "cpu_bfloat16_products": _C.cpu_bfloat16_products(),
        "cuda_compiled": info["cuda"],
        "cuda_archs": [a for a in info["cuda_archs"].split(",") if a],
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
    }


def _bidirectional_backward_fake(input, h0, c0, params, params_reverse, need_input_grad, need_weight_grads,
                                 need_weight_grads_reverse):
    def weights(ps, want):
        return [_or_empty(_grad_like(p, want), input) for p in ps]

    states = [h0.new_empty(h0.shape)] + ([c0.new_empty(c0.shape)] if c0 is not None else [])
    return (_or_empty(_grad_like(input, need_input_grad), input), *states,
            *weights(params, need_weight_grads), *weights(params_reverse, need_weight_grads_reverse))


@_fake("lstm_bidirectional_backward")
def _(grad_output, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr,
      w_ih_reverse, w_hh_reverse, b_ih_reverse, b_hh_reverse, w_ch_reverse, w_hr_reverse, output, gates,
      states, proj_in, gates_reverse, states_reverse, proj_in_reverse, coupled, need_input_grad,
      need_weight_grads, need_weight_grads_reverse):
    _bidirectional_shapes("lstm_bidirectional_backward", input, batch_sizes, h0, w_hh, 3 if coupled else 4)
    return _bidirectional_backward_fake(
        input, h0, c0, (w_ih, w_hh, b_ih, b_hh, w_ch, w_hr),
        (w_ih_reverse, w_hh_reverse, b_ih_reverse, b_hh_reverse, w_ch_reverse, w_hr_reverse),
        need_input_grad, need_weight_grads, need_weight_grads_reverse)


@_fake("gru_bidirectional_backward")
def _(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, w_ih_reverse, w_hh_reverse,
      b_ih_reverse, b_hh_reverse, output, gates, states, gates_reverse, states_reverse, reset_after,
      need_input_grad, need_weight_grads, need_weight_grads_reverse):
    _bidirectional_shapes("gru_bidirectional_backward", input, batch_sizes, h0, w_hh, 3)
    return _bidirectional_backward_fake(
        input, h0, None, (w_ih, w_hh, b_ih, b_hh), (w_ih_reverse, w_hh_reverse, b_ih_reverse, b_hh_reverse),
        need_input_grad, need_weight_grads, need_weight_grads_reverse)


@_fake("rnn_bidirectional_backward")
def _(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, w_ih_reverse, w_hh_reverse,
      b_ih_reverse, b_hh_reverse, output, relu, need_input_grad, need_weight_grads, need_weight_grads_reverse):
    _bidirectional_shapes("rnn_bidirectional_backward", input, batch_sizes, h0, w_hh, 1)
    return _bidirectional_backward_fake(
        input, h0, None, (w_ih, w_hh, b_ih, b_hh), (w_ih_reverse, w_hh_reverse, b_ih_reverse, b_hh_reverse),
        need_input_grad, need_weight_grads, need_weight_grads_reverse)
