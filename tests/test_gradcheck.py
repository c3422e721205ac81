"""Gradients against finite differences (torch.autograd.gradcheck, float64, tiny
sizes) for every cell and flag, through the modules (fusedrnn.testing.gradcheck)
and directly on the operators, packed and reverse included; and
torch.library.opcheck on all eighteen operators.

Legend: T steps, N batch, C input size, H hidden size, P projection size,
G gate blocks, R packed rows.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.autograd import gradcheck
from torch.nn.utils.rnn import pack_sequence

import fusedrnn
from helpers import CELL_VARIANTS
from fusedrnn import testing

ops = torch.ops.fusedrnn
F64 = torch.float64
T, N, C, H, P = 3, 3, 3, 2, 1
BATCH_SIZES = [3, 2, 2, 1]  # packed: R = 8 rows, T = 4 steps
R = sum(BATCH_SIZES)


def _randn(*shape, gen, requires_grad=True, dtype=F64):
    return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_(requires_grad)


# ------------------------------------------------------ through the modules

SEQ_VARIANTS = {
    "lstm": (fusedrnn.LSTM, {}),
    "lstm_nobias": (fusedrnn.LSTM, {"bias": False}),
    "lstm_proj": (fusedrnn.LSTM, {"proj_size": P}),
    "lstm_peephole": (fusedrnn.LSTM, {"peephole": True}),
    "lstm_coupled": (fusedrnn.LSTM, {"coupled_gates": True}),
    "lstm_peephole_coupled": (fusedrnn.LSTM, {"peephole": True, "coupled_gates": True}),
    "lstm_peephole_coupled_proj_nobias": (
        fusedrnn.LSTM, {"peephole": True, "coupled_gates": True, "proj_size": P, "bias": False}),
    "gru": (fusedrnn.GRU, {}),
    "gru_nobias": (fusedrnn.GRU, {"bias": False}),
    "gru_reset_before": (fusedrnn.GRU, {"reset_after": False}),
    "rnn_tanh": (fusedrnn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (fusedrnn.RNN, {"nonlinearity": "relu"}),
}


def _hx(module, batch, gen):
    D = 2 if module.bidirectional else 1
    Pp = getattr(module, "proj_size", 0) or module.hidden_size
    h = torch.randn(module.num_layers * D, batch, Pp, generator=gen, dtype=F64)
    if isinstance(module, fusedrnn.LSTM):
        return h, torch.randn(module.num_layers * D, batch, module.hidden_size, generator=gen, dtype=F64)
    return h


@pytest.mark.parametrize("input_kind", ["padded_L2bi_bfirst", "packed_L1bi", "unbatched_L1"])
@pytest.mark.parametrize("variant", list(SEQ_VARIANTS))
def test_module_gradcheck(variant, input_kind):
    cls, kw = SEQ_VARIANTS[variant]
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if input_kind == "padded_L2bi_bfirst":
        m = cls(C, H, num_layers=2, bidirectional=True, batch_first=True, **kw)
        x = torch.randn(N, T, C, generator=gen, dtype=F64)
        hx = _hx(m, N, gen)
    elif input_kind == "packed_L1bi":
        m = cls(C, H, bidirectional=True, **kw)
        x = pack_sequence([torch.randn(L, C, generator=gen, dtype=F64) for L in (2, 4, 1)], enforce_sorted=False)
        hx = _hx(m, 3, gen)
    else:
        m = cls(C, H, **kw)
        x = torch.randn(T, C, generator=gen, dtype=F64)
        hx = _hx(m, 1, gen)
        hx = tuple(h.squeeze(1) for h in hx) if isinstance(hx, tuple) else hx.squeeze(1)
    assert testing.gradcheck(m, x, hx)


def test_module_gradcheck_without_hx():
    """hx=None: the zero initial state is created inside, gradients w.r.t. the
    input and the parameters only."""
    torch.manual_seed(0)
    m = fusedrnn.LSTM(C, H, num_layers=2, bidirectional=True, peephole=True)
    assert testing.gradcheck(m, torch.randn(T, N, C, dtype=F64))




@pytest.mark.parametrize("shape", ["batched", "unbatched", "hx_none"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("variant", list(CELL_VARIANTS))
def test_cell_gradcheck(variant, bias, shape):
    cls, kw = CELL_VARIANTS[variant]
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    cell = cls(C, H, bias=bias, **kw)
    lead = () if shape == "unbatched" else (N,)
    x = torch.randn(*lead, C, generator=gen, dtype=F64)
    hx = None
    if shape != "hx_none":
        hx = torch.randn(*lead, H, generator=gen, dtype=F64)
        if cls is fusedrnn.LSTMCell:
            hx = (hx, torch.randn(*lead, H, generator=gen, dtype=F64))
    assert testing.gradcheck(cell, x, hx)


# ------------------------------------------------------ on the operators


def _seq_input(packed, gen, requires_grad=True):
    if packed:
        return _randn(R, C, gen=gen, requires_grad=requires_grad), torch.tensor(BATCH_SIZES), BATCH_SIZES[0]
    return _randn(T, N, C, gen=gen, requires_grad=requires_grad), None, N


def lstm_args(gen, bias=True, peephole=False, coupled=False, proj=False, packed=False, reverse=False,
              training=True, requires_grad=True):
    """Arguments of fusedrnn::lstm_forward (small random values)."""
    G = 3 if coupled else 4
    Pp = P if proj else H
    rg = requires_grad
    x, bs, n = _seq_input(packed, gen, rg)
    r = lambda *s: _randn(*s, gen=gen, requires_grad=rg)  # noqa: E731
    return [x, bs, r(n, Pp), r(n, H), r(G * H, C), r(G * H, Pp), r(G * H) if bias else None,
            r(G * H) if bias else None, r((G - 1) * H) if peephole else None, r(P, H) if proj else None,
            coupled, reverse, training]


def gru_args(gen, bias=True, reset_after=True, packed=False, reverse=False, training=True, requires_grad=True):
    rg = requires_grad
    x, bs, n = _seq_input(packed, gen, rg)
    r = lambda *s: _randn(*s, gen=gen, requires_grad=rg)  # noqa: E731
    return [x, bs, r(n, H), r(3 * H, C), r(3 * H, H), r(3 * H) if bias else None, r(3 * H) if bias else None,
            reset_after, reverse, training]


def rnn_args(gen, bias=True, relu=False, packed=False, reverse=False, requires_grad=True):
    rg = requires_grad
    x, bs, n = _seq_input(packed, gen, rg)
    r = lambda *s: _randn(*s, gen=gen, requires_grad=rg)  # noqa: E731
    return [x, bs, r(n, H), r(H, C), r(H, H), r(H) if bias else None, r(H) if bias else None, relu, reverse]


def lstm_cell_args(gen, bias=True, peephole=False, coupled=False, training=True, requires_grad=True):
    G = 3 if coupled else 4
    r = lambda *s: _randn(*s, gen=gen, requires_grad=requires_grad)  # noqa: E731
    return [r(N, C), r(N, H), r(N, H), r(G * H, C), r(G * H, H), r(G * H) if bias else None,
            r(G * H) if bias else None, r((G - 1) * H) if peephole else None, coupled, training]


def gru_cell_args(gen, bias=True, reset_after=True, training=True, requires_grad=True):
    r = lambda *s: _randn(*s, gen=gen, requires_grad=requires_grad)  # noqa: E731
    return [r(N, C), r(N, H), r(3 * H, C), r(3 * H, H), r(3 * H) if bias else None, r(3 * H) if bias else None,
            reset_after, training]


def rnn_cell_args(gen, bias=True, relu=False, requires_grad=True):
    r = lambda *s: _randn(*s, gen=gen, requires_grad=requires_grad)  # noqa: E731
    return [r(N, C), r(N, H), r(H, C), r(H, H), r(H) if bias else None, r(H) if bias else None, relu]


# How many leading outputs of each forward operator are differentiable.
DIFF_OUTPUTS = {"lstm_forward": 3, "gru_forward": 2, "rnn_forward": 2, "lstm_cell_forward": 2,
                "gru_cell_forward": 1, "rnn_cell_forward": 1, "lstm_bidirectional_forward": 3,
                "gru_bidirectional_forward": 2, "rnn_bidirectional_forward": 2}


def bidirectional_args(family, gen, requires_grad=True, training=True, **kw):
    """Arguments of fusedrnn::<family>_bidirectional_forward: the input, the two
    directions' states stacked, the forward direction's parameters, then the
    reverse's (each direction's as its one-direction operator takes them)."""
    make = {"lstm": lstm_args, "gru": gru_args, "rnn": rnn_args}[family]
    fwd = make(gen, requires_grad=requires_grad, **kw)
    rev = make(gen, requires_grad=requires_grad, **kw)
    rev[0] = fwd[0]
    states = 2 if family == "lstm" else 1
    stacked = [torch.stack([a.detach(), b.detach()]).requires_grad_(requires_grad)
               for a, b in zip(fwd[2:2 + states], rev[2:2 + states])]
    params = 6 if family == "lstm" else 4
    p0 = 2 + states
    flag = fwd[p0 + params]  # coupled, reset_after or relu
    training_arg = [training] if family != "rnn" else []
    return [fwd[0], fwd[1], *stacked, *fwd[p0:p0 + params], *rev[p0:p0 + params], flag, *training_arg]


def _gradcheck_op(name, args):
    """gradcheck of op(*args)'s differentiable outputs with respect to every
    tensor argument that requires grad (the others stay fixed)."""
    op = getattr(ops, name)
    slots = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    k = DIFF_OUTPUTS[name]

    def f(*tensors):
        full = list(args)
        for i, t in zip(slots, tensors):
            full[i] = t
        out = op(*full)
        return out[:k] if isinstance(out, tuple) else out

    assert gradcheck(f, tuple(args[i] for i in slots))


FLAGS2 = list(itertools.product([False, True], repeat=2))


@pytest.mark.parametrize("packed,reverse", FLAGS2, ids=["padded-fwd", "padded-rev", "packed-fwd", "packed-rev"])
@pytest.mark.parametrize("proj", [False, True], ids=["noproj", "proj"])
@pytest.mark.parametrize("peephole,coupled", FLAGS2, ids=["plain", "coupled", "peephole", "peephole_coupled"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_lstm_forward_op_gradcheck(bias, peephole, coupled, proj, packed, reverse):
    gen = torch.Generator().manual_seed(2)
    _gradcheck_op("lstm_forward", lstm_args(gen, bias, peephole, coupled, proj, packed, reverse))


@pytest.mark.parametrize("packed,reverse", FLAGS2, ids=["padded-fwd", "padded-rev", "packed-fwd", "packed-rev"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gru_forward_op_gradcheck(bias, reset_after, packed, reverse):
    gen = torch.Generator().manual_seed(3)
    _gradcheck_op("gru_forward", gru_args(gen, bias, reset_after, packed, reverse))


@pytest.mark.parametrize("packed,reverse", FLAGS2, ids=["padded-fwd", "padded-rev", "packed-fwd", "packed-rev"])
@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_rnn_forward_op_gradcheck(bias, relu, packed, reverse):
    gen = torch.Generator().manual_seed(4)
    _gradcheck_op("rnn_forward", rnn_args(gen, bias, relu, packed, reverse))


BIDIRECTIONAL_CONFIGS = [
    ("lstm", dict()), ("lstm", dict(peephole=True, coupled=True, proj=True, packed=True)),
    ("lstm", dict(bias=False, proj=True)), ("gru", dict()), ("gru", dict(reset_after=False, packed=True)),
    ("gru", dict(bias=False)), ("rnn", dict()), ("rnn", dict(relu=True, packed=True)), ("rnn", dict(bias=False)),
]


@pytest.mark.parametrize("family,kw", BIDIRECTIONAL_CONFIGS)
def test_bidirectional_forward_op_gradcheck(family, kw):
    gen = torch.Generator().manual_seed(7)
    _gradcheck_op(f"{family}_bidirectional_forward", bidirectional_args(family, gen, **kw))


@pytest.mark.parametrize("peephole,coupled", FLAGS2, ids=["plain", "coupled", "peephole", "peephole_coupled"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_lstm_cell_forward_op_gradcheck(bias, peephole, coupled):
    gen = torch.Generator().manual_seed(5)
    _gradcheck_op("lstm_cell_forward", lstm_cell_args(gen, bias, peephole, coupled))


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gru_cell_forward_op_gradcheck(bias, reset_after):
    gen = torch.Generator().manual_seed(6)
    _gradcheck_op("gru_cell_forward", gru_cell_args(gen, bias, reset_after))


@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_rnn_cell_forward_op_gradcheck(bias, relu):
    gen = torch.Generator().manual_seed(7)
    _gradcheck_op("rnn_cell_forward", rnn_cell_args(gen, bias, relu))


def _all_forward_args(name, gen, requires_grad=True):
    """Representative arguments of every forward operator: the widest flags."""
    return {
        "lstm_forward": lambda: lstm_args(gen, peephole=True, proj=True, packed=True, reverse=True,
                                          requires_grad=requires_grad),
        "gru_forward": lambda: gru_args(gen, reset_after=False, packed=True, reverse=True,
                                        requires_grad=requires_grad),
        "rnn_forward": lambda: rnn_args(gen, relu=False, packed=True, reverse=True, requires_grad=requires_grad),
        "lstm_cell_forward": lambda: lstm_cell_args(gen, peephole=True, requires_grad=requires_grad),
        "gru_cell_forward": lambda: gru_cell_args(gen, reset_after=False, requires_grad=requires_grad),
        "rnn_cell_forward": lambda: rnn_cell_args(gen, requires_grad=requires_grad),
        "lstm_bidirectional_forward": lambda: bidirectional_args(
            "lstm", gen, requires_grad=requires_grad, peephole=True, proj=True, packed=True),
        "gru_bidirectional_forward": lambda: bidirectional_args(
            "gru", gen, requires_grad=requires_grad, reset_after=False, packed=True),
        "rnn_bidirectional_forward": lambda: bidirectional_args("rnn", gen, requires_grad=requires_grad, packed=True),
    }[name]()


@pytest.mark.parametrize("wanted", ["input_and_states", "weights", "one_weight"])
@pytest.mark.parametrize("name", list(DIFF_OUTPUTS))
def test_op_gradcheck_with_partial_requires_grad(name, wanted):
    """needs_input_grad honoured: the backward asked for only some gradients
    still gets those right (gradcheck also fails if a gradient is returned for
    a tensor that does not require one)."""
    gen = torch.Generator().manual_seed(8)
    args = _all_forward_args(name, gen)
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]
    cell = "cell" in name
    n_state = {"lstm_forward": 2, "lstm_cell_forward": 2, "lstm_bidirectional_forward": 2}.get(name, 1)
    first_weight = 1 + n_state + (0 if cell else 1)  # input, [batch_sizes], states
    # One weight: w_hh; of the reverse direction for the bidirectional operators,
    # whose reverse parameters follow the forward direction's.
    params = (6 if name.startswith("lstm") else 4) if "bidirectional" in name else 0
    keep = {
        "input_and_states": set(range(0, first_weight)),
        "weights": set(range(first_weight, len(args))),
        "one_weight": {first_weight + params + 1},
    }[wanted]
    for i in tensors:
        args[i].requires_grad_(i in keep)
    _gradcheck_op(name, args)


def test_op_gradients_of_some_outputs_only():
    """Backward with undefined gradients for some outputs (only h_n used): the
    operator treats the missing ones as zeros."""
    gen = torch.Generator().manual_seed(9)
    args = lstm_args(gen, peephole=True, packed=True)
    slots = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

    def only_h(*tensors):
        full = list(args)
        for i, t in zip(slots, tensors):
            full[i] = t
        return ops.lstm_forward(*full)[1]

    assert gradcheck(only_h, tuple(args[i] for i in slots))


# ------------------------------------------------------------- opcheck

# torch.library.opcheck's default checks: schema, autograd registration, fake
# tensor kernel, AOT dispatch (dynamic shapes).

FORWARD_OPS = ["lstm_forward", "gru_forward", "rnn_forward", "lstm_cell_forward", "gru_cell_forward",
               "rnn_cell_forward"]
HAS_TRAINING = {"lstm_forward", "gru_forward", "lstm_cell_forward", "gru_cell_forward"}


def _set_training(name, args, training):
    if name in HAS_TRAINING:
        args[-1] = training
    return args


FORWARD_CONFIGS = {
    "lstm_forward": [
        dict(), dict(peephole=True, proj=True, packed=True, reverse=True),
        dict(bias=False, coupled=True, packed=False, reverse=True),
    ],
    "gru_forward": [dict(), dict(reset_after=False, packed=True, reverse=True), dict(bias=False)],
    "rnn_forward": [dict(), dict(relu=True, packed=True, reverse=True), dict(bias=False)],
    "lstm_cell_forward": [dict(), dict(peephole=True, coupled=True), dict(bias=False, peephole=True)],
    "gru_cell_forward": [dict(), dict(reset_after=False), dict(bias=False)],
    "rnn_cell_forward": [dict(), dict(relu=True), dict(bias=False)],
}
ARG_MAKERS = {"lstm_forward": lstm_args, "gru_forward": gru_args, "rnn_forward": rnn_args,
              "lstm_cell_forward": lstm_cell_args, "gru_cell_forward": gru_cell_args,
              "rnn_cell_forward": rnn_cell_args}


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("config", [0, 1, 2])
@pytest.mark.parametrize("name", FORWARD_OPS)
def test_opcheck_forward(name, config, training):
    """training=True with inputs that require grad (autograd is exercised);
    training=False as inference calls it: no input requires grad. The rnn
    operators have no training flag (they save nothing): there the two cases
    differ only in requires_grad."""
    gen = torch.Generator().manual_seed(10 + config)
    kw = dict(FORWARD_CONFIGS[name][config])
    args = ARG_MAKERS[name](gen, requires_grad=training, **kw)
    args = _set_training(name, args, training)
    torch.library.opcheck(getattr(ops, name), tuple(args))


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("family,kw", BIDIRECTIONAL_CONFIGS)
def test_opcheck_bidirectional(family, kw, training):
    gen = torch.Generator().manual_seed(30)
    args = bidirectional_args(family, gen, requires_grad=training, training=training, **kw)
    torch.library.opcheck(getattr(ops, f"{family}_bidirectional_forward"), tuple(args))


def _detached(args):
    return [a.detach() if isinstance(a, torch.Tensor) else a for a in args]


def _grads_like(outs, gen, which):
    return [torch.randn(o.shape, generator=gen, dtype=o.dtype) if w else None for o, w in zip(outs, which)]


def backward_args(name, config, gen, need_input_grad=True, need_weight_grads=True, all_grads=True):
    """Arguments of a *_backward operator, its saved tensors produced by the
    matching forward with training=True."""
    fwd = name.replace("backward", "forward")
    kw = dict(FORWARD_CONFIGS[fwd][config])
    args = _detached(ARG_MAKERS[fwd](gen, requires_grad=False, **kw))
    args = _set_training(fwd, args, True)
    out = getattr(ops, fwd)(*args)
    out = out if isinstance(out, tuple) else (out,)
    flags = [need_input_grad, need_weight_grads]
    if fwd == "lstm_forward":
        x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled, reverse, _ = args
        y, h_n, c_n, gates, states, proj_in = out
        dy, dh, dc = _grads_like([y, h_n, c_n], gen, [True, all_grads, all_grads])
        return [dy, dh, dc, x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, y, gates, states, proj_in,
                coupled, reverse, *flags]
    if fwd == "gru_forward":
        x, bs, h0, w_ih, w_hh, b_ih, b_hh, reset_after, reverse, _ = args
        y, h_n, gates, states = out
        dy, dh = _grads_like([y, h_n], gen, [True, all_grads])
        return [dy, dh, x, bs, h0, w_ih, w_hh, b_ih, b_hh, y, gates, states, reset_after, reverse, *flags]
    if fwd == "rnn_forward":
        x, bs, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse = args
        y, h_n = out
        dy, dh = _grads_like([y, h_n], gen, [True, all_grads])
        return [dy, dh, x, bs, h0, w_ih, w_hh, b_ih, b_hh, y, relu, reverse, *flags]
    if fwd == "lstm_cell_forward":
        x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, coupled, _ = args
        h, c, gates = out
        dh, dc = _grads_like([h, c], gen, [True, all_grads])
        return [dh, dc, x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_ch, h, c, gates, coupled, *flags]
    if fwd == "gru_cell_forward":
        x, hx, w_ih, w_hh, b_ih, b_hh, reset_after, _ = args
        h, gates, states = out
        (dh,) = _grads_like([h], gen, [True])
        return [dh, x, hx, w_ih, w_hh, b_ih, b_hh, h, gates, states, reset_after, *flags]
    x, hx, w_ih, w_hh, b_ih, b_hh, relu = args
    (h,) = out
    (dh,) = _grads_like([h], gen, [True])
    return [dh, x, hx, w_ih, w_hh, b_ih, b_hh, h, relu, *flags]


BACKWARD_OPS = [n.replace("forward", "backward") for n in FORWARD_OPS]


@pytest.mark.parametrize("needs", ["all", "input_only", "weights_only", "no_state_grads"])
@pytest.mark.parametrize("config", [0, 1, 2])
@pytest.mark.parametrize("name", BACKWARD_OPS)
def test_opcheck_backward(name, config, needs):
    gen = torch.Generator().manual_seed(20 + config)
    args = backward_args(
        name, config, gen, need_input_grad=needs != "weights_only", need_weight_grads=needs != "input_only",
        all_grads=needs != "no_state_grads",
    )
    torch.library.opcheck(getattr(ops, name), tuple(args))


def bidirectional_backward_args(family, kw, gen, need_input_grad, need_weight_grads, need_weight_grads_reverse,
                                all_grads):
    """Arguments of fusedrnn::<family>_bidirectional_backward, its saved tensors
    produced by the bidirectional forward with training=True."""
    args = _detached(bidirectional_args(family, gen, requires_grad=False, training=True, **kw))
    out = getattr(ops, f"{family}_bidirectional_forward")(*args)
    states = 2 if family == "lstm" else 1
    inputs = args[:2 + states + (12 if family == "lstm" else 8)]
    grads = _grads_like(out[:1 + states], gen, [True] + [all_grads] * states)
    flag = args[len(inputs)]
    return [*grads, *inputs, out[0], *out[1 + states:], flag, need_input_grad, need_weight_grads,
            need_weight_grads_reverse]


@pytest.mark.parametrize("needs", ["all", "input_only", "reverse_weights_only", "no_state_grads"])
@pytest.mark.parametrize("family,kw", BIDIRECTIONAL_CONFIGS)
def test_opcheck_bidirectional_backward(family, kw, needs):
    gen = torch.Generator().manual_seed(40)
    args = bidirectional_backward_args(
        family, kw, gen, need_input_grad=needs != "reverse_weights_only",
        need_weight_grads=needs in ("all", "no_state_grads"), need_weight_grads_reverse=needs != "input_only",
        all_grads=needs != "no_state_grads")
    torch.library.opcheck(getattr(ops, f"{family}_bidirectional_backward"), tuple(args))


@pytest.mark.parametrize("config", [0, 1, 2])
@pytest.mark.parametrize("name", BACKWARD_OPS)
def test_backward_op_matches_autograd(name, config):
    """What the backward operator returns when called directly equals the
    gradients autograd gets through the forward operator (whose correctness
    gradcheck establishes above); the gradients not asked for are empty."""
    gen = torch.Generator().manual_seed(30 + config)
    fwd = name.replace("backward", "forward")
    args = ARG_MAKERS[fwd](gen, **FORWARD_CONFIGS[fwd][config])
    slots = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    out = getattr(ops, fwd)(*args)
    out = out if isinstance(out, tuple) else (out,)
    k = DIFF_OUTPUTS[fwd]
    cot = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in out[:k]]
    want = torch.autograd.grad(sum((o * c).sum() for o, c in zip(out[:k], cot)), [args[i] for i in slots])

    # The same call, by hand.
    b = backward_args(name, config, torch.Generator().manual_seed(30 + config))
    b[: len(cot)] = cot  # the cotangents used above, in place of backward_args' own
    got = getattr(ops, name)(*b)
    got = [g for g in got if g.numel() > 0]
    want = list(want)
    # Order: input, states, then weights in argument order; batch_sizes is not differentiable.
    assert len(got) == len(want), f"{len(got)} gradients returned, {len(want)} expected"
    for i, (g, w) in enumerate(zip(got, want)):
        err = (g - w).abs().max().item()
        print(f"gradient {i}: max error {err:.3e}, mean error {(g - w).abs().mean().item():.3e}")
        assert err <= 1e-12, f"gradient {i}: max error {err:.3e}"
