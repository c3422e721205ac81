"""FLOP counts under torch.utils.flop_counter.FlopCounterMode.

The oracle is the composite reference (fusedrnn.reference), whose matrix
products FlopCounterMode counts as aten.mm, and the products written out from
the equations. Legend: T steps, N batch, C input size, H hidden size, P
projection size, L layers, D directions.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.flop_counter import FlopCounterMode

import fusedrnn

F64 = torch.float64
T, N, C, H = 5, 3, 4, 6

SEQUENCE = [
    ("lstm", dict()),
    ("lstm", dict(peephole=True)),
    ("lstm", dict(coupled_gates=True, peephole=True)),
    ("lstm", dict(proj_size=2)),
    ("gru", dict()),
    ("gru", dict(reset_after=False)),
    ("rnn", dict()),
    ("rnn", dict(nonlinearity="relu")),
]
CLASSES = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU, "rnn": fusedrnn.RNN}
CELLS = {"lstm": fusedrnn.LSTMCell, "gru": fusedrnn.GRUCell, "rnn": fusedrnn.RNNCell}


def counted(fn):
    """(total FLOPs, {operator name: FLOPs}) of fn()."""
    with FlopCounterMode(display=False) as mode:
        fn()
    return mode.get_total_flops(), {str(k): v for k, v in mode.get_flop_counts()["Global"].items()}


def sequence_inputs(cell, module, packed):
    D = 2 if module.bidirectional else 1
    P = getattr(module, "proj_size", 0) or H
    x = torch.randn(T, N, C, dtype=F64, requires_grad=True)
    h0 = torch.randn(module.num_layers * D, N, P, dtype=F64, requires_grad=True)
    hx = (h0, torch.randn(module.num_layers * D, N, H, dtype=F64, requires_grad=True)) if cell == "lstm" else h0
    if packed:
        seq = pack_padded_sequence(x.detach(), torch.tensor([T, T - 2, 1]), enforce_sorted=False)
        return seq._replace(data=seq.data.requires_grad_()), hx
    return x, hx


def first(out):
    out = out[0] if isinstance(out, tuple) else out
    return out.data if hasattr(out, "batch_sizes") else out


@pytest.mark.parametrize("cell,kwargs", SEQUENCE)
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("packed", [False, True])
def test_sequence_counts_match_the_reference(cell, kwargs, layers, bidirectional, packed):
    torch.manual_seed(0)
    m = CLASSES[cell](C, H, num_layers=layers, bidirectional=bidirectional, **kwargs).double()
    x, hx = sequence_inputs(cell, m, packed)

    kind = "bidirectional_" if bidirectional else ""
    forward_op, backward_op = f"fusedrnn.{cell}_{kind}forward", f"fusedrnn.{cell}_{kind}backward"
    fwd, per_op = counted(lambda: m(x, hx))
    ref_fwd, _ = counted(lambda: fusedrnn.reference.forward(m, x, hx))
    assert fwd == ref_fwd > 0
    assert set(per_op) == {forward_op}

    both, per_op = counted(lambda: first(m(x, hx)).sum().backward())
    ref_both, _ = counted(lambda: first(fusedrnn.reference.forward(m, x, hx)).sum().backward())
    # Each forward product has two in the backward: the gradient of either operand.
    assert both == ref_both == 3 * fwd
    assert per_op == {forward_op: fwd, backward_op: 2 * fwd}


@pytest.mark.parametrize("cell,kwargs", [c for c in SEQUENCE if "proj_size" not in c[1]])
def test_cell_counts_match_the_reference(cell, kwargs):
    torch.manual_seed(0)
    m = CELLS[cell](C, H, **kwargs).double()
    x = torch.randn(N, C, dtype=F64, requires_grad=True)
    h = torch.randn(N, H, dtype=F64, requires_grad=True)
    hx = (h, torch.randn(N, H, dtype=F64, requires_grad=True)) if cell == "lstm" else h

    fwd, _ = counted(lambda: m(x, hx))
    ref_fwd, _ = counted(lambda: fusedrnn.reference.cell_forward(m, x, hx))
    assert fwd == ref_fwd == 2 * N * m.weight_ih.shape[0] * (C + H)

    both, per_op = counted(lambda: first(m(x, hx)).sum().backward())
    ref_both, _ = counted(lambda: first(fusedrnn.reference.cell_forward(m, x, hx)).sum().backward())
    assert both == ref_both == 3 * fwd
    assert per_op[f"fusedrnn.{cell}_cell_backward"] == 2 * fwd


def test_counts_follow_the_equations_and_the_gradients_wanted():
    # An LSTM with projection P: gates 4H wide; forward X W_ih^T, h W_hh^T and
    # the projection (o * tanh c) W_hr^T over all T*N rows.
    P = 2
    m = fusedrnn.LSTM(C, H, proj_size=P).double()
    x = torch.randn(T, N, C, dtype=F64)
    rows = T * N
    ih, hh, hr = rows * 4 * H * C, rows * 4 * H * P, rows * P * H

    fwd, _ = counted(lambda: m(x))
    assert fwd == 2 * (ih + hh + hr)

    # Input without grad: no dx. The kernels always return dh0, so dh runs
    # through every step and the projection.
    _, per_op = counted(lambda: m(x)[0].sum().backward())
    assert per_op["fusedrnn.lstm_backward"] == 2 * (hh + hr + ih + hh + hr)

    # Frozen weights, input with grad: dx and dh, no weight gradients.
    for p in m.parameters():
        p.requires_grad_(False)
    xg = x.clone().requires_grad_()
    _, per_op = counted(lambda: m(xg)[0].sum().backward())
    assert per_op["fusedrnn.lstm_backward"] == 2 * (hh + hr + ih)


def test_the_operators_count_when_called_directly_with_keywords():
    w_ih = torch.randn(3 * H, C, dtype=F64)
    w_hh = torch.randn(3 * H, H, dtype=F64)
    x = torch.randn(T, N, C, dtype=F64)
    h0 = torch.zeros(N, H, dtype=F64)
    fwd, _ = counted(lambda: torch.ops.fusedrnn.gru_forward(
        input=x, batch_sizes=None, h0=h0, w_ih=w_ih, w_hh=w_hh, b_ih=None, b_hh=None,
        reset_after=True, reverse=False, training=False))
    assert fwd == 2 * T * N * 3 * H * (C + H)
