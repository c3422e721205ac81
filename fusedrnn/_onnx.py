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

One mapping serves two backends. Exporting a module, the forward (through
fusedrnn.functional) puts the weights into ONNX's gate order (LSTM i, o, f, c;
GRU z, r, h) by torch operations, which both exporters fold into constants, and
emits the node through ``torch.onnx.ops.symbolic_multi_out`` under the dynamo
exporter (``dynamo=True``, the default), or through the ``symbolic`` of an
autograd.Function under the TorchScript exporter (``dynamo=False``), whose
forward returns the fused operators' results, which the trace needs. A program
captured before the export holds the fused operators themselves:
translation_table() gives their translations in ONNX Script operations.

ONNX has no LSTM with a projection and its operators take padded sequences:
``proj_size > 0`` and ``PackedSequence`` inputs raise an error.
"""

from __future__ import annotations

import sys
from typing import Sequence, Tuple

import torch

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


def _regroup(b, t, blocks: Sequence[Tuple[int, int]], parts: int):
    """t's `parts` gate blocks along dim 0, in the order and with the signs of
    `blocks`, through backend b."""
    if t is None:
        return None
    # Rows cut by narrow, not chunk: the dynamo exporter folds these into the
    # weights' constants, where it keeps a chunk as a Split node, in opset 18's
    # form even at lower opsets.
    n = b.rows(t) // parts
    rows = [b.narrow(t, i * n, n) for i, _ in blocks]
    return b.cat([r if sign > 0 else b.neg(r) for r, (_, sign) in zip(rows, blocks)])


def _bias(b, b_ih, b_hh, blocks, parts: int):
    if b_ih is None and b_hh is None:
        return None
    wb = _regroup(b, b_ih, blocks, parts)
    rb = _regroup(b, b_hh, blocks, parts)
    wb = b.zeros_like(rb) if wb is None else wb
    rb = b.zeros_like(wb) if rb is None else rb
    return b.unsqueeze0(b.cat([wb, rb]))


def _unsupported_packed(batch_sizes) -> None:
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


class _Torch:
    """Backend of the modules' forward under torch.onnx.export: torch operations,
    and the node from torch.onnx.ops.symbolic_multi_out (dynamo) or from
    _TorchScriptNode. fused = (fn, args): fn(*args) runs the fused operators,
    whose results (y, h_n[, c_n]) the TorchScript trace needs."""

    def __init__(self, fused):
        self.fused = fused

    rows = staticmethod(lambda t: t.shape[0])
    narrow = staticmethod(lambda t, start, n: t.narrow(0, start, n))
    neg = staticmethod(torch.neg)
    cat = staticmethod(lambda ts: torch.cat(ts, dim=0))
    zeros_like = staticmethod(torch.zeros_like)
    unsqueeze0 = staticmethod(lambda t: t.unsqueeze(0))
    squeeze = staticmethod(lambda t, dim: t.squeeze(dim))

    def node(self, op_type, inputs, attrs, x, h0):
        T, N, H = x.shape[0], x.shape[1], h0.shape[-1]
        shapes = [[T, 1, N, H]] + [[1, N, H]] * (2 if op_type == "LSTM" else 1)
        fn, args = self.fused
        if torch.jit.is_tracing():
            def onnx_shaped(*args):
                y, *states = fn(*args)[:len(shapes)]
                return [y.unsqueeze(1)] + [s.unsqueeze(0) for s in states]

            return _TorchScriptNode.apply(op_type, tuple(attrs.items()), len(inputs), onnx_shaped, *inputs, *args)
        symbolic = getattr(getattr(torch.onnx, "ops", None), "symbolic_multi_out", None)
        if symbolic is None:
            raise RuntimeError(
                f"fusedrnn: ONNX export with the dynamo exporter needs torch.onnx.ops.symbolic_multi_out, which "
                f"torch {torch.__version__} lacks; export with torch.onnx.export(..., dynamo=False)"
            )
        return symbolic(op_type, list(inputs), attrs, dtypes=[x.dtype] * len(shapes), shapes=shapes)


class _Script:
    """Backend of the operators' translations (translation_table): ONNX Script
    operations on the exporter's symbolic tensors."""

    def __init__(self):
        from onnxscript import opset18

        self.op = opset18

    def _ints(self, *v):
        return self.op.Constant(value_ints=list(v))

    def rows(self, t):
        return t.shape[0]

    def narrow(self, t, start, n):
        return self.op.Slice(t, self._ints(start), self._ints(start + n), self._ints(0))

    def neg(self, t):
        return self.op.Neg(t)

    def cat(self, ts):
        return self.op.Concat(*ts, axis=0)

    def zeros_like(self, t):
        return self.op.CastLike(self.op.ConstantOfShape(self.op.Shape(t)), t)

    def unsqueeze0(self, t):
        return self.op.Unsqueeze(t, self._ints(0))

    def squeeze(self, t, dim):
        return self.op.Squeeze(t, self._ints(dim))

    def node(self, op_type, inputs, attrs, x, h0):
        return getattr(self.op, op_type)(*inputs, **attrs)

    def empty(self, like):
        return self.op.CastLike(self.op.Constant(value_floats=[]), like)

    def select0(self, t, i):
        return self.op.Gather(t, self.op.Constant(value_int=i), axis=0)

    def cat_last(self, ts):
        return self.op.Concat(*ts, axis=-1)

    def stack0(self, ts):
        return self.op.Concat(*(self.unsqueeze0(t) for t in ts), axis=0)


def _run(b, op_type, x, h0, c0, w, r, bias, p, attrs, hidden):
    """One node over x [T, N, C] from h0 (and c0 for the LSTM) [N, H]; returns
    (y [T, N, H], h_n [N, H](, c_n))."""
    inputs = [x, b.unsqueeze0(w), b.unsqueeze0(r), bias, None, b.unsqueeze0(h0)]
    if c0 is not None:
        inputs += [b.unsqueeze0(c0), None if p is None else b.unsqueeze0(p)]
    outs = b.node(op_type, inputs, dict(attrs, hidden_size=int(hidden)), x, h0)
    return (b.squeeze(outs[0], 1),) + tuple(b.squeeze(o, 0) for o in outs[1:])


def _direction(reverse: bool) -> dict:
    return {"direction": "reverse" if reverse else "forward"}


def _lstm(b, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled, reverse):
    _unsupported_packed(batch_sizes)
    if w_hr is not None:
        raise RuntimeError(
            "fusedrnn: an LSTM with a projection (proj_size > 0) has no ONNX form: the ONNX LSTM operator "
            "has no projection"
        )
    blocks, parts = (_LSTM_COUPLED, 3) if coupled else (_LSTM, 4)
    peephole = _PEEPHOLE_COUPLED if coupled else _PEEPHOLE
    return _run(
        b, "LSTM", x, h0, c0, _regroup(b, w_ih, blocks, parts), _regroup(b, w_hh, blocks, parts),
        _bias(b, b_ih, b_hh, blocks, parts), _regroup(b, w_ch, peephole, parts - 1), _direction(reverse),
        w_hh.shape[1],
    )


def _gru(b, x, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reset_after, reverse):
    _unsupported_packed(batch_sizes)
    attrs = dict(_direction(reverse), linear_before_reset=int(reset_after))
    return _run(
        b, "GRU", x, h0, None, _regroup(b, w_ih, _GRU, 3), _regroup(b, w_hh, _GRU, 3),
        _bias(b, b_ih, b_hh, _GRU, 3), None, attrs, w_hh.shape[1],
    )


def _rnn(b, x, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse):
    _unsupported_packed(batch_sizes)
    attrs = dict(_direction(reverse), activations=["Relu" if relu else "Tanh"])
    return _run(b, "RNN", x, h0, None, w_ih, w_hh, _bias(b, b_ih, b_hh, ((0, 1),), 1), None, attrs, w_hh.shape[1])


# The modules' forward under torch.onnx.export (fusedrnn.functional): the same
# arguments as the operators, and fused = (operator, its arguments).


def lstm(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled, reverse, fused):
    """One LSTM layer and direction as an ONNX LSTM node."""
    return _lstm(_Torch(fused), x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled, reverse)


def gru(x, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reset_after, reverse, fused):
    """One GRU layer and direction as an ONNX GRU node."""
    return _gru(_Torch(fused), x, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reset_after, reverse)


def rnn(x, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, fused):
    """One Elman RNN layer and direction as an ONNX RNN node."""
    return _rnn(_Torch(fused), x, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse)


def _step(fn):
    """fn(*args) -> (h', ...) of a cell operator, as a one-step layer's (y, h')."""
    return lambda *args: (lambda h, *rest: (h.unsqueeze(0), h) + tuple(rest))(*fn(*args))


def lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, coupled, fused):
    """One LSTM step as a one-step ONNX LSTM node; returns (h', c')."""
    fn, args = fused
    b = _Torch((_step(fn), args))
    return _lstm(b, b.unsqueeze0(input), None, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, None, coupled, False)[1:]


def gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after, fused):
    """One GRU step as a one-step ONNX GRU node; returns h'."""
    fn, args = fused
    b = _Torch((_step(fn), args))
    return _gru(b, b.unsqueeze0(input), None, hx, w_ih, w_hh, b_ih, b_hh, reset_after, False)[1]


def rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, relu, fused):
    """One Elman step as a one-step ONNX RNN node; returns h'."""
    fn, args = fused
    b = _Torch((_step(lambda *a: (fn(*a),)), args))
    return _rnn(b, b.unsqueeze0(input), None, hx, w_ih, w_hh, b_ih, b_hh, relu, False)[1]


# The operators' translations, for a program captured before the export.


def _translate_lstm(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled, reverse, training):
    b = _Script()
    y, h, c = _lstm(b, input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled, reverse)
    return y, h, c, b.empty(input), b.empty(input), b.empty(input)


def _translate_gru(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reset_after, reverse, training):
    b = _Script()
    y, h = _gru(b, input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reset_after, reverse)
    return y, h, b.empty(input), b.empty(input)


def _translate_rnn(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse):
    return _rnn(_Script(), input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse)


def _translate_lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, coupled, training):
    b = _Script()
    _, h, c = _lstm(b, b.unsqueeze0(input), None, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, None, coupled, False)
    return h, c, b.empty(input)


def _translate_gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after, training):
    b = _Script()
    h = _gru(b, b.unsqueeze0(input), None, hx, w_ih, w_hh, b_ih, b_hh, reset_after, False)[1]
    return h, b.empty(input), b.empty(input)


def _translate_rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, relu):
    b = _Script()
    return _rnn(b, b.unsqueeze0(input), None, hx, w_ih, w_hh, b_ih, b_hh, relu, False)[1]


def _both(b, one, states, params, params_reverse):
    """A bidirectional operator as its two directions, one(b, states of the
    direction, its parameters, reverse) -> (y, h_n(, c_n)) each: y side by
    side, the states stacked."""
    outs = [one(b, [b.select0(s, d) for s in states], p, d == 1) for d, p in enumerate((params, params_reverse))]
    return (b.cat_last([o[0] for o in outs]),) + tuple(b.stack0([o[k] for o in outs]) for k in range(1, len(outs[0])))


def _translate_lstm_bidirectional(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, w_ih_reverse,
                                  w_hh_reverse, b_ih_reverse, b_hh_reverse, w_ch_reverse, w_hr_reverse, coupled,
                                  training):
    b = _Script()
    y, h, c = _both(
        b, lambda b, st, p, rev: _lstm(b, input, batch_sizes, *st, *p, coupled, rev), (h0, c0),
        (w_ih, w_hh, b_ih, b_hh, w_ch, w_hr),
        (w_ih_reverse, w_hh_reverse, b_ih_reverse, b_hh_reverse, w_ch_reverse, w_hr_reverse))
    return (y, h, c) + tuple(b.empty(input) for _ in range(6))


def _translate_gru_bidirectional(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, w_ih_reverse, w_hh_reverse,
                                 b_ih_reverse, b_hh_reverse, reset_after, training):
    b = _Script()
    y, h = _both(b, lambda b, st, p, rev: _gru(b, input, batch_sizes, *st, *p, reset_after, rev), (h0,),
                 (w_ih, w_hh, b_ih, b_hh), (w_ih_reverse, w_hh_reverse, b_ih_reverse, b_hh_reverse))
    return (y, h) + tuple(b.empty(input) for _ in range(4))


def _translate_rnn_bidirectional(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, w_ih_reverse, w_hh_reverse,
                                 b_ih_reverse, b_hh_reverse, relu):
    return _both(_Script(), lambda b, st, p, rev: _rnn(b, input, batch_sizes, *st, *p, relu, rev), (h0,),
                 (w_ih, w_hh, b_ih, b_hh), (w_ih_reverse, w_hh_reverse, b_ih_reverse, b_hh_reverse))


def translation_table() -> dict:
    """The ONNX translations of the forward operators, for
    ``torch.onnx.export(program, custom_translation_table=...)``: what a
    program captured before the export (``torch.export.export``) needs, as it
    holds the fused operators. A module exported directly needs none."""
    ops = torch.ops.fusedrnn
    return {
        ops.lstm_forward.default: _translate_lstm,
        ops.gru_forward.default: _translate_gru,
        ops.rnn_forward.default: _translate_rnn,
        ops.lstm_cell_forward.default: _translate_lstm_cell,
        ops.gru_cell_forward.default: _translate_gru_cell,
        ops.rnn_cell_forward.default: _translate_rnn_cell,
        ops.lstm_bidirectional_forward.default: _translate_lstm_bidirectional,
        ops.gru_bidirectional_forward.default: _translate_gru_bidirectional,
        ops.rnn_bidirectional_forward.default: _translate_rnn_bidirectional,
    }
