"""ONNX export of the layers and cells.

Under ``torch.onnx.export`` each layer and direction, and each cell step,
becomes one standard ONNX ``LSTM``, ``GRU`` or ``RNN`` node, which any ONNX
runtime runs. Every variant maps onto the standard operators exactly:

- peepholes are the LSTM's ``P`` input;
- coupled gates (i = 1 - f) are a standard LSTM whose input gate has the forget
  gate's weights, biases and peephole negated, as sigmoid(-a) = 1 - sigmoid(a).
  The ``input_forget`` attribute is not used: the ONNX specification does not
  say what it computes, and the ONNX reference implementation ignores it;
- the GRU's reset placements are ``linear_before_reset`` 1 (after, as torch.nn)
  and 0 (before);
- the RNN's nonlinearity is the node's activation.

The weights are put into ONNX's gate order (LSTM i, o, f, c; GRU z, r, h) by
torch operations on the parameters, which both exporters fold into constants.
The node itself comes from ``torch.onnx.ops.symbolic_multi_out`` under the
dynamo exporter (``dynamo=True``, the default), and from the ``symbolic`` of an
autograd.Function under the TorchScript exporter (``dynamo=False``); the
latter's forward returns the results of the fused operators, which the trace
needs for its shapes.

ONNX has no LSTM with a projection and its operators take padded sequences:
``proj_size > 0`` and ``PackedSequence`` inputs raise an error.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

# Gate blocks of the ONNX operators, as (block of fusedrnn's layout, sign).
_LSTM = ((0, 1), (3, 1), (1, 1), (2, 1))  # i f g o -> i o f c
_LSTM_COUPLED = ((0, -1), (2, 1), (0, 1), (1, 1))  # f g o -> i = -f, o, f, c
_PEEPHOLE = ((0, 1), (2, 1), (1, 1))  # i f o -> i o f
_PEEPHOLE_COUPLED = ((0, -1), (1, 1), (0, 1))  # f o -> i = -f, o, f
_GRU = ((1, 1), (0, 1), (2, 1))  # r z n -> z r h


@torch.compiler.assume_constant_result
def exporting() -> bool:
    """Whether torch.onnx.export is tracing the caller. A cell runs it once a
    step, so it reads the exporters' flags itself, in about 75 ns, where
    torch.onnx.is_in_onnx_export, which imports them on every call, takes 0.9 us
    (the cells of fusedrnn.functional look for torch.onnx in sys.modules first,
    28 ns, as it is not imported until torch.compile or an export is used).
    torch.compile takes the value it has when the graph is traced."""
    return _export_flags()


def _until_imported() -> bool:
    """_export_flags until torch.onnx is imported; then it installs the reader."""
    if "torch.onnx" not in sys.modules:
        return False
    global _export_flags
    _export_flags = _flags_reader()
    return _export_flags()


_export_flags = _until_imported


def _flags_reader():
    """What torch.onnx.is_in_onnx_export reads, as a function; that function
    itself where this torch keeps its flags elsewhere."""
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:
        return torch.onnx.is_in_onnx_export
    if not (hasattr(_flags, "_is_onnx_exporting") and hasattr(GLOBALS, "in_onnx_export")):
        return torch.onnx.is_in_onnx_export
    return lambda: _flags._is_onnx_exporting or GLOBALS.in_onnx_export


def _regroup(t: Optional[Tensor], blocks: Sequence[Tuple[int, int]], parts: int) -> Optional[Tensor]:
    if t is None:
        return None
    # narrow, not chunk: the dynamo exporter folds these into the weights' constants,
    # where it keeps a chunk as a Split node, in opset 18's form even at lower opsets.
    n = t.shape[0] // parts
    rows = [t.narrow(0, b * n, n) for b, _ in blocks]
    return torch.cat([r if sign > 0 else -r for r, (_, sign) in zip(rows, blocks)], dim=0)


def _bias(b_ih: Optional[Tensor], b_hh: Optional[Tensor], blocks, parts: int) -> Optional[Tensor]:
    if b_ih is None and b_hh is None:
        return None
    wb = _regroup(b_ih, blocks, parts)
    rb = _regroup(b_hh, blocks, parts)
    wb = torch.zeros_like(rb) if wb is None else wb
    rb = torch.zeros_like(wb) if rb is None else rb
    return torch.cat([wb, rb]).unsqueeze(0)


def _unsupported_packed(batch_sizes: Optional[Tensor]) -> None:
    if batch_sizes is not None:
        raise RuntimeError(
            "fusedrnn: ONNX export takes padded sequences; a PackedSequence input has no ONNX form here "
            "(pass the padded tensor, e.g. from torch.nn.utils.rnn.pad_packed_sequence)"
        )


class _TorchScriptNode(torch.autograd.Function):
    """One ONNX node under the TorchScript exporter: forward runs the fused
    operators, fn(*args), whose results the trace needs; symbolic emits the node
    from the first n inputs."""

    @staticmethod
    def forward(ctx, op_type, attrs, n, fn, *inputs):
        return tuple(fn(*inputs[n:]))

    @staticmethod
    def symbolic(g, op_type, attrs, n, fn, *inputs):
        kwargs = {}
        for key, value in attrs:
            kwargs[f"{key}_{'i' if isinstance(value, int) else 's'}"] = value  # ints, strings or lists of strings
        args = [_torchscript_none(g) if t is None else t for t in inputs[:n]]
        return g.op(op_type, *args, outputs=3 if op_type == "LSTM" else 2, **kwargs)


def _torchscript_none(g):
    none = g.op("prim::Constant")
    none.setType(torch._C.OptionalType.ofTensor())
    return none


def _node(op_type: str, inputs, attrs: dict, shapes, dtype, fused) -> Sequence[Tensor]:
    """Emits the ONNX node op_type with outputs of the given shapes. fused =
    (fn, args): fn(*args) runs the fused operators and returns their results in
    those shapes, which the TorchScript trace needs."""
    if torch.jit.is_tracing():
        fn, args = fused
        return _TorchScriptNode.apply(op_type, tuple(attrs.items()), len(inputs), fn, *inputs, *args)
    symbolic = getattr(getattr(torch.onnx, "ops", None), "symbolic_multi_out", None)
    if symbolic is None:
        raise RuntimeError(
            f"fusedrnn: ONNX export with the dynamo exporter needs torch.onnx.ops.symbolic_multi_out, which "
            f"torch {torch.__version__} lacks; export with torch.onnx.export(..., dynamo=False)"
        )
    return symbolic(op_type, list(inputs), attrs, dtypes=[dtype] * len(shapes), shapes=shapes)


def _run(op_type, x, h0, c0, w, r, b, p, attrs, fused):
    """One node over x [T, N, C] from h0 (and c0 for the LSTM) [N, H]; fused()
    returns the fused operators' (y [T, N, H], h_n [N, H] (, c_n)). Returns
    the same from the node."""
    T, N, H = x.shape[0], x.shape[1], h0.shape[-1]
    lstm = c0 is not None
    inputs = [x, w.unsqueeze(0), r.unsqueeze(0), b, None, h0.unsqueeze(0)]
    if lstm:
        inputs += [c0.unsqueeze(0), None if p is None else p.unsqueeze(0)]
    shapes = [[T, 1, N, H], [1, N, H]] + ([[1, N, H]] if lstm else [])

    fn, args = fused

    def onnx_shaped(*args):
        y, *states = fn(*args)[:len(shapes)]
        return [y.unsqueeze(1)] + [s.unsqueeze(0) for s in states]

    outs = _node(op_type, inputs, dict(attrs, hidden_size=int(H)), shapes, x.dtype, (onnx_shaped, args))
    return (outs[0].squeeze(1),) + tuple(o.squeeze(0) for o in outs[1:])


def _direction(reverse: bool) -> dict:
    return {"direction": "reverse" if reverse else "forward"}


def lstm(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled, reverse, fused):
    """One LSTM layer and direction as an ONNX LSTM node."""
    _unsupported_packed(batch_sizes)
    if w_hr is not None:
        raise RuntimeError(
            "fusedrnn: an LSTM with a projection (proj_size > 0) has no ONNX form: the ONNX LSTM operator "
            "has no projection"
        )
    blocks, parts = (_LSTM_COUPLED, 3) if coupled else (_LSTM, 4)
    peephole = _PEEPHOLE_COUPLED if coupled else _PEEPHOLE
    return _run(
        "LSTM", x, h0, c0, _regroup(w_ih, blocks, parts), _regroup(w_hh, blocks, parts),
        _bias(b_ih, b_hh, blocks, parts), _regroup(w_ch, peephole, parts - 1), _direction(reverse), fused,
    )


def gru(x, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reset_after, reverse, fused):
    """One GRU layer and direction as an ONNX GRU node."""
    _unsupported_packed(batch_sizes)
    attrs = dict(_direction(reverse), linear_before_reset=int(reset_after))
    return _run(
        "GRU", x, h0, None, _regroup(w_ih, _GRU, 3), _regroup(w_hh, _GRU, 3), _bias(b_ih, b_hh, _GRU, 3),
        None, attrs, fused,
    )


def rnn(x, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, fused):
    """One Elman RNN layer and direction as an ONNX RNN node."""
    _unsupported_packed(batch_sizes)
    attrs = dict(_direction(reverse), activations=["Relu" if relu else "Tanh"])
    return _run("RNN", x, h0, None, w_ih, w_hh, _bias(b_ih, b_hh, ((0, 1),), 1), None, attrs, fused)


def _step(fn):
    """fn(*args) -> (h', ...) of a cell operator, as a one-step layer's (y, h')."""
    return lambda *args: (lambda h, *rest: (h.unsqueeze(0), h) + tuple(rest))(*fn(*args))


def lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, coupled, fused):
    """One LSTM step as a one-step ONNX LSTM node; returns (h', c')."""
    fn, args = fused
    return lstm(input.unsqueeze(0), None, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, None, coupled, False,
                (_step(fn), args))[1:]


def gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after, fused):
    """One GRU step as a one-step ONNX GRU node; returns h'."""
    fn, args = fused
    return gru(input.unsqueeze(0), None, hx, w_ih, w_hh, b_ih, b_hh, reset_after, False, (_step(fn), args))[1]


def rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, relu, fused):
    """One Elman step as a one-step ONNX RNN node; returns h'."""
    fn, args = fused
    return rnn(input.unsqueeze(0), None, hx, w_ih, w_hh, b_ih, b_hh, relu, False,
               (_step(lambda *a: (fn(*a),)), args))[1]
