"""The bottom of the testing pyramid: fusedrnn.reference pinned to torch.nn in
float64 (outputs, final states and every gradient), and its variants (peephole,
coupled gates, reset-before GRU) pinned to equations written independently in
this file from the table in DESIGN.md, with a hand-derived backward for the
peephole LSTM step.

Legend: T steps, N batch, C input size, H hidden size, P projection size.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import reference
from helpers import F64, TIGHT, cell_build, cell_leaves, assert_all_close, assert_close, run, seq_builder, seq_leaves

T, N, C, H, P = 5, 4, 3, 5, 2
LENGTHS = [3, 5, 1, 4]  # unsorted on purpose; the longest is T

NN_SEQ = {
    "lstm": (nn.LSTM, {}),
    "lstm_proj": (nn.LSTM, {"proj_size": P}),
    "gru": (nn.GRU, {}),
    "rnn_tanh": (nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNN, {"nonlinearity": "relu"}),
}
INPUT_KINDS = ["padded", "packed_sorted", "packed_unsorted", "unbatched"]


def _reference_of(module):
    return lambda x, hx=None: reference.forward(module, x, hx)


def _sequence_case(kind, layers, bidirectional, batch_first, seed=0, **extra):
    cls, kw = NN_SEQ[kind]
    torch.manual_seed(seed)
    m = cls(C, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, **kw, **extra).to(F64)
    return m


# ------------------------------------------------------- pinned to torch.nn


@pytest.mark.parametrize("input_kind", INPUT_KINDS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (1, True), (2, False), (2, True)],
                         ids=["L1", "L1bi", "L2", "L2bi"])
@pytest.mark.parametrize("kind", list(NN_SEQ))
def test_sequence_reference_matches_torch_nn(kind, layers, bidirectional, batch_first, input_kind):
    m = _sequence_case(kind, layers, bidirectional, batch_first)
    print(m, input_kind)
    if input_kind == "unbatched":
        leaves = seq_leaves(m, T, 1, C)
        x = leaves["x"].squeeze(0 if batch_first else 1)
        leaves = {"x": x, **{k: v.squeeze(1) for k, v in leaves.items() if k != "x"}}
        build = seq_builder(m, C)
    elif input_kind == "padded":
        leaves = seq_leaves(m, T, N, C)
        build = seq_builder(m, C)
    else:
        lengths = sorted(LENGTHS, reverse=True) if input_kind == "packed_sorted" else LENGTHS
        leaves = seq_leaves(m, T, N, C)
        build = seq_builder(m, C, lengths=lengths, enforce_sorted=input_kind == "packed_sorted")
    got = run(m, build, leaves, fn=_reference_of(m))
    want = run(m, build, leaves)
    assert_all_close(got, want, **TIGHT)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", list(NN_SEQ))
def test_sequence_reference_without_hx_matches_torch_nn(kind, packed):
    m = _sequence_case(kind, 2, True, False)
    leaves = seq_leaves(m, T, N, C, hx=False)
    build = seq_builder(m, C, lengths=LENGTHS if packed else None)
    assert_all_close(run(m, build, leaves, fn=_reference_of(m)), run(m, build, leaves), **TIGHT)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", list(NN_SEQ))
def test_sequence_reference_without_bias_matches_torch_nn(kind, bias):
    m = _sequence_case(kind, 2, True, False, bias=bias)
    leaves = seq_leaves(m, T, N, C)
    build = seq_builder(m, C)
    assert_all_close(run(m, build, leaves, fn=_reference_of(m)), run(m, build, leaves), **TIGHT)


NN_CELLS = {
    "lstm_cell": (nn.LSTMCell, {}),
    "gru_cell": (nn.GRUCell, {}),
    "rnn_cell_tanh": (nn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_cell_relu": (nn.RNNCell, {"nonlinearity": "relu"}),
}


def _cell_leaves(cell, batch, with_hx, seed=5):
    return cell_leaves(isinstance(cell, (nn.LSTMCell, fusedrnn.LSTMCell)), batch, with_hx, C, H, seed)


@pytest.mark.parametrize("shape", ["batched", "unbatched", "hx_none"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", list(NN_CELLS))
def test_cell_reference_matches_torch_nn(kind, bias, shape):
    cls, kw = NN_CELLS[kind]
    cell = cls(C, H, bias=bias, **kw).to(F64)
    leaves = _cell_leaves(cell, None if shape == "unbatched" else N, shape != "hx_none")

    def ref(*args):
        return reference.cell_forward(cell, *args)

    got = run(cell, cell_build, leaves, cell=True, fn=ref)
    want = run(cell, cell_build, leaves, cell=True)
    assert_all_close(got, want, **TIGHT)


# ---------------------------------------------- variants against equations
#
# Written from DESIGN.md without looking at reference.py's structure: every gate
# has its own weight slice and its own einsum.


def _affine(x, h, w_ih, w_hh, b_ih, b_hh, k, Hs):
    """Pre-activation of gate block k: W_k x + b_ik + U_k h + b_hk."""
    rows = slice(k * Hs, (k + 1) * Hs)
    a = torch.einsum("nc,jc->nj", x, w_ih[rows]) + torch.einsum("np,jp->nj", h, w_hh[rows])
    if b_ih is not None:
        a = a + b_ih[rows]
    if b_hh is not None:
        a = a + b_hh[rows]
    return a


def eq_lstm_step(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, w_ch=None, w_hr=None, coupled=False):
    """DESIGN.md: c' = f*c + i*g, h' = o*tanh(c') [then W_hr h'];
    peepholes i = σ(.. + w_ci*c), f = σ(.. + w_cf*c), o = σ(.. + w_co*c');
    coupled: blocks f, g, o and i = 1 - f."""
    Hs = c.shape[-1]
    names = ["f", "g", "o"] if coupled else ["i", "f", "g", "o"]
    a = {name: _affine(x, h, w_ih, w_hh, b_ih, b_hh, k, Hs) for k, name in enumerate(names)}
    peep = {}
    if w_ch is not None:
        sig_names = ["f", "o"] if coupled else ["i", "f", "o"]
        peep = {name: w_ch[k * Hs : (k + 1) * Hs] for k, name in enumerate(sig_names)}
    f = torch.sigmoid(a["f"] + (peep["f"] * c if "f" in peep else 0))
    if coupled:
        i = 1 - f
    else:
        i = torch.sigmoid(a["i"] + (peep["i"] * c if "i" in peep else 0))
    g = torch.tanh(a["g"])
    c_new = f * c + i * g
    o = torch.sigmoid(a["o"] + (peep["o"] * c_new if "o" in peep else 0))
    m = o * torch.tanh(c_new)
    h_new = torch.einsum("nh,ph->np", m, w_hr) if w_hr is not None else m
    return h_new, c_new


def eq_lstm_step_backward(dh_new, dc_new, x, h, c, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled):
    """The same step's gradients, derived by hand (no autograd): returns a dict
    of dx, dh, dc, dw_ih, dw_hh, db (= db_ih = db_hh), dw_ch, dw_hr."""
    Hs = c.shape[-1]
    names = ["f", "g", "o"] if coupled else ["i", "f", "g", "o"]
    a = {name: _affine(x, h, w_ih, w_hh, b_ih, b_hh, k, Hs) for k, name in enumerate(names)}
    zero = torch.zeros(Hs, dtype=x.dtype)
    if w_ch is None:
        w_ci = w_cf = w_co = zero
    elif coupled:
        w_ci, (w_cf, w_co) = zero, w_ch.split(Hs)
    else:
        w_ci, w_cf, w_co = w_ch.split(Hs)
    f = torch.sigmoid(a["f"] + w_cf * c)
    i = 1 - f if coupled else torch.sigmoid(a["i"] + w_ci * c)
    g = torch.tanh(a["g"])
    c_new = f * c + i * g
    o = torch.sigmoid(a["o"] + w_co * c_new)
    tc = torch.tanh(c_new)
    m = o * tc

    dm = dh_new @ w_hr if w_hr is not None else dh_new
    dw_hr = dh_new.t() @ m if w_hr is not None else None
    dp_o = dm * tc * o * (1 - o)
    dc_tot = dc_new + dm * o * (1 - tc * tc) + dp_o * w_co
    d_f = dc_tot * c
    d_i = dc_tot * g
    d_g = dc_tot * i
    if coupled:
        dp_f = (d_f - d_i) * f * (1 - f)  # i = 1 - f
        dp_i = torch.zeros_like(dp_f)
    else:
        dp_f = d_f * f * (1 - f)
        dp_i = d_i * i * (1 - i)
    dp_g = d_g * (1 - g * g)
    dc = dc_tot * f + dp_f * w_cf + dp_i * w_ci
    blocks = [dp_f, dp_g, dp_o] if coupled else [dp_i, dp_f, dp_g, dp_o]
    da = torch.cat(blocks, dim=1)
    out = {
        "dx": da @ w_ih,
        "dh": da @ w_hh,
        "dc": dc,
        "dw_ih": da.t() @ x,
        "dw_hh": da.t() @ h,
        "db": da.sum(0),
        "dw_hr": dw_hr,
    }
    if w_ch is not None:
        parts = [(dp_f * c).sum(0), (dp_o * c_new).sum(0)]
        if not coupled:
            parts.insert(0, (dp_i * c).sum(0))
        out["dw_ch"] = torch.cat(parts)
    return out


def eq_gru_step(x, h, w_ih, w_hh, b_ih=None, b_hh=None, reset_after=True):
    """DESIGN.md: gates r, z, n; h' = (1-z)*n + z*h;
    reset_after: n = tanh(W_in x + b_in + r*(W_hn h + b_hn));
    reset before (Cho et al.): n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)."""
    Hs = h.shape[-1]
    r = torch.sigmoid(_affine(x, h, w_ih, w_hh, b_ih, b_hh, 0, Hs))
    z = torch.sigmoid(_affine(x, h, w_ih, w_hh, b_ih, b_hh, 1, Hs))
    rows = slice(2 * Hs, 3 * Hs)
    xn = torch.einsum("nc,jc->nj", x, w_ih[rows]) + (b_ih[rows] if b_ih is not None else 0)
    b_hn = b_hh[rows] if b_hh is not None else 0
    if reset_after:
        n = torch.tanh(xn + r * (torch.einsum("nh,jh->nj", h, w_hh[rows]) + b_hn))
    else:
        n = torch.tanh(xn + torch.einsum("nh,jh->nj", r * h, w_hh[rows]) + b_hn)
    return (1 - z) * n + z * h


LSTM_VARIANTS = {
    "plain": {},
    "peephole": {"peephole": True},
    "coupled": {"coupled": True},
    "peephole_coupled": {"peephole": True, "coupled": True},
}


def _lstm_params(peephole, coupled, proj, bias, seed=11):
    gen = torch.Generator().manual_seed(seed)
    G = 3 if coupled else 4
    Pp = P if proj else H

    def r(*s):
        return (torch.randn(*s, generator=gen, dtype=F64) * 0.6).requires_grad_()

    p = {
        "w_ih": r(G * H, C),
        "w_hh": r(G * H, Pp),
        "b_ih": r(G * H) if bias else None,
        "b_hh": r(G * H) if bias else None,
        "w_ch": r((G - 1) * H) if peephole else None,
        "w_hr": r(P, H) if proj else None,
    }
    state = {"x": r(N, C), "h": r(N, Pp), "c": r(N, H)}
    return p, state


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("proj", [False, True], ids=["noproj", "proj"])
@pytest.mark.parametrize("variant", list(LSTM_VARIANTS))
def test_lstm_cell_reference_matches_equations(variant, proj, bias):
    flags = LSTM_VARIANTS[variant]
    p, s = _lstm_params(flags.get("peephole", False), flags.get("coupled", False), proj, bias)
    coupled = flags.get("coupled", False)
    h_ref, c_ref = reference.lstm_cell(s["x"], s["h"], s["c"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                       p["w_ch"], p["w_hr"], coupled)
    h_eq, c_eq = eq_lstm_step(s["x"], s["h"], s["c"], **p, coupled=coupled)
    assert_close("h'", h_ref, h_eq, **TIGHT)
    assert_close("c'", c_ref, c_eq, **TIGHT)

    # Gradients: autograd through the reference against the hand-derived backward.
    gen = torch.Generator().manual_seed(3)
    dh = torch.randn(h_ref.shape, generator=gen, dtype=F64)
    dc = torch.randn(c_ref.shape, generator=gen, dtype=F64)
    names = ["x", "h", "c"] + [k for k, v in p.items() if v is not None]
    tensors = [s["x"], s["h"], s["c"]] + [v for v in p.values() if v is not None]
    got = dict(zip(names, torch.autograd.grad((h_ref * dh).sum() + (c_ref * dc).sum(), tensors)))
    want = eq_lstm_step_backward(dh, dc, s["x"].detach(), s["h"].detach(), s["c"].detach(),
                                 *[None if v is None else v.detach() for v in p.values()], coupled)
    pairs = {"x": "dx", "h": "dh", "c": "dc", "w_ih": "dw_ih", "w_hh": "dw_hh", "b_ih": "db", "b_hh": "db",
             "w_ch": "dw_ch", "w_hr": "dw_hr"}
    for name in names:
        assert_close(f"grad {name}", got[name], want[pairs[name]], **TIGHT)


@pytest.mark.parametrize("variant", ["peephole", "peephole_coupled"])
def test_peephole_vector_gradient_by_finite_differences(variant):
    """The peephole vector's gradient in the reference, against finite
    differences (an oracle that shares no code with either forward)."""
    coupled = variant == "peephole_coupled"
    p, s = _lstm_params(True, coupled, False, True)

    def f(w_ch):
        return reference.lstm_cell(s["x"].detach(), s["h"].detach(), s["c"].detach(), p["w_ih"].detach(),
                                   p["w_hh"].detach(), p["b_ih"].detach(), p["b_hh"].detach(), w_ch,
                                   coupled=coupled)

    assert torch.autograd.gradcheck(f, (p["w_ch"],))


def test_zero_peepholes_are_the_plain_lstm():
    p, s = _lstm_params(True, False, False, True)
    zero = torch.zeros_like(p["w_ch"])
    with_zero = reference.lstm_cell(s["x"], s["h"], s["c"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], zero)
    plain = reference.lstm_cell(s["x"], s["h"], s["c"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])
    for name, a, b in zip(["h'", "c'"], with_zero, plain):
        assert_close(name, a, b, atol=0.0)


def test_coupled_lstm_is_a_plain_lstm_with_input_gate_one_minus_forget():
    """A coupled cell equals a plain cell whose input gate is forced to 1 - f:
    the plain cell's i pre-activation set to -(f pre-activation) gives
    σ(-a) = 1 - σ(a)."""
    gen = torch.Generator().manual_seed(2)
    w_ih = torch.randn(3 * H, C, generator=gen, dtype=F64)
    w_hh = torch.randn(3 * H, H, generator=gen, dtype=F64)
    b = torch.randn(3 * H, generator=gen, dtype=F64)
    x, h, c = (torch.randn(N, k, generator=gen, dtype=F64) for k in (C, H, H))
    f_rows = slice(0, H)
    plain_w_ih = torch.cat([-w_ih[f_rows], w_ih])
    plain_w_hh = torch.cat([-w_hh[f_rows], w_hh])
    plain_b = torch.cat([-b[f_rows], b])
    got = reference.lstm_cell(x, h, c, w_ih, w_hh, b, None, coupled=True)
    want = reference.lstm_cell(x, h, c, plain_w_ih, plain_w_hh, plain_b, None)
    for name, a, b_ in zip(["h'", "c'"], got, want):
        assert_close(name, a, b_, **TIGHT)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
def test_gru_cell_reference_matches_equations(reset_after, bias):
    gen = torch.Generator().manual_seed(4)

    def r(*s):
        return torch.randn(*s, generator=gen, dtype=F64).requires_grad_()

    x, h = r(N, C), r(N, H)
    w_ih, w_hh = r(3 * H, C), r(3 * H, H)
    b_ih, b_hh = (r(3 * H), r(3 * H)) if bias else (None, None)
    got = reference.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh, reset_after)
    want = eq_gru_step(x, h, w_ih, w_hh, b_ih, b_hh, reset_after)
    assert_close("h'", got, want, **TIGHT)
    tensors = [t for t in (x, h, w_ih, w_hh, b_ih, b_hh) if t is not None]
    dh = torch.randn(got.shape, generator=gen, dtype=F64)
    g_got = torch.autograd.grad((got * dh).sum(), tensors)
    g_want = torch.autograd.grad((want * dh).sum(), tensors)
    for name, a, b in zip(["x", "h", "w_ih", "w_hh", "b_ih", "b_hh"], g_got, g_want):
        assert_close(f"grad {name}", a, b, **TIGHT)


def test_reset_before_differs_from_reset_after():
    """The two GRU placements are different functions (the flag is not ignored)."""
    gen = torch.Generator().manual_seed(8)
    x, h = torch.randn(N, C, generator=gen, dtype=F64), torch.randn(N, H, generator=gen, dtype=F64)
    w_ih, w_hh = torch.randn(3 * H, C, generator=gen, dtype=F64), torch.randn(3 * H, H, generator=gen, dtype=F64)
    a = reference.gru_cell(x, h, w_ih, w_hh, reset_after=True)
    b = reference.gru_cell(x, h, w_ih, w_hh, reset_after=False)
    diff = (a - b).abs().max().item()
    print(f"reset_after vs reset_before: max difference {diff:.3e}")
    assert diff > 1e-3


# --------------------------------- variant modules: whole sequences, packed


def _eq_sequence(module, seqs, h0, c0):
    """The module's variant computed sequence by sequence (batch of one, no
    packing), layer by layer and direction by direction with the equations
    above. seqs: list of [L_i, C]; h0/c0: [L*D, B, .]. Returns (outputs as a
    list of [L_i, D*P], h_n, c_n)."""
    lstm = isinstance(module, fusedrnn.LSTM)
    D = 2 if module.bidirectional else 1
    outputs, h_last, c_last = [], [], []
    for b, seq in enumerate(seqs):
        layer_in = seq
        hs, cs = [], []
        for layer in range(module.num_layers):
            dir_outs = []
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w = {n: getattr(module, n + sfx, None) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                                                  "weight_ch", "weight_hr")}
                k = layer * D + d
                h = h0[k, b : b + 1]
                c = c0[k, b : b + 1] if lstm else None
                steps = range(len(seq) - 1, -1, -1) if d else range(len(seq))
                ys = [None] * len(seq)
                for t in steps:
                    x_t = layer_in[t : t + 1]
                    if lstm:
                        h, c = eq_lstm_step(x_t, h, c, w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"],
                                            w["weight_ch"], w["weight_hr"], module.coupled_gates)
                    else:
                        h = eq_gru_step(x_t, h, w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"],
                                        module.reset_after)
                    ys[t] = h
                dir_outs.append(torch.cat(ys))
                hs.append(h)
                cs.append(c)
            layer_in = torch.cat(dir_outs, dim=-1)
        outputs.append(layer_in)
        h_last.append(torch.cat(hs))
        if lstm:
            c_last.append(torch.cat(cs))
    h_n = torch.stack(h_last, dim=1)
    c_n = torch.stack(c_last, dim=1) if lstm else None
    return outputs, h_n, c_n


SEQ_VARIANTS = {
    "lstm_peephole": (fusedrnn.LSTM, {"peephole": True}),
    "lstm_coupled": (fusedrnn.LSTM, {"coupled_gates": True}),
    "lstm_peephole_coupled": (fusedrnn.LSTM, {"peephole": True, "coupled_gates": True}),
    "lstm_peephole_coupled_proj": (fusedrnn.LSTM, {"peephole": True, "coupled_gates": True, "proj_size": P}),
    "lstm_peephole_proj": (fusedrnn.LSTM, {"peephole": True, "proj_size": P}),
    "gru_reset_before": (fusedrnn.GRU, {"reset_after": False}),
}


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)], ids=["L1", "L2bi"])
@pytest.mark.parametrize("variant", list(SEQ_VARIANTS))
def test_variant_sequence_reference_matches_equations(variant, layers, bidirectional):
    """reference.forward on a variant module (packed, unsorted lengths) against
    the equations run one sequence at a time: pins the reference's packing,
    directions, layer stacking and parameter lookup (weight_ch_l{k}_reverse) for
    the variants that torch.nn cannot check; gradients of every parameter, the
    inputs and the initial states included."""
    cls, kw = SEQ_VARIANTS[variant]
    torch.manual_seed(0)
    m = cls(C, H, num_layers=layers, bidirectional=bidirectional, **kw).to(F64)
    lstm = cls is fusedrnn.LSTM
    D = 2 if bidirectional else 1
    Pp = kw.get("proj_size", 0) or H
    gen = torch.Generator().manual_seed(9)
    seqs = [torch.randn(L, C, generator=gen, dtype=F64, requires_grad=True) for L in LENGTHS]
    h0 = torch.randn(layers * D, N, Pp, generator=gen, dtype=F64, requires_grad=True)
    c0 = torch.randn(layers * D, N, H, generator=gen, dtype=F64, requires_grad=True) if lstm else None
    hx = (h0, c0) if lstm else h0

    out, hidden = reference.forward(m, pack_sequence(seqs, enforce_sorted=False), hx)
    padded, lens = pad_packed_sequence(out)
    got_outs = [padded[: int(L), b] for b, L in enumerate(lens)]
    got_h, got_c = hidden if lstm else (hidden, None)
    want_outs, want_h, want_c = _eq_sequence(m, seqs, h0, c0)

    for b in range(N):
        assert_close(f"output of sequence {b}", got_outs[b], want_outs[b], **TIGHT)
    assert_close("h_n", got_h, want_h, **TIGHT)
    if lstm:
        assert_close("c_n", got_c, want_c, **TIGHT)

    gen = torch.Generator().manual_seed(10)
    cot_outs = [torch.randn(o.shape, generator=gen, dtype=F64) for o in want_outs]
    cot_h = torch.randn(want_h.shape, generator=gen, dtype=F64)
    cot_c = torch.randn(want_h.shape[:2] + (H,), generator=gen, dtype=F64) if lstm else None

    def loss(outs, h, c):
        total = sum((o * g).sum() for o, g in zip(outs, cot_outs)) + (h * cot_h).sum()
        return total + ((c * cot_c).sum() if lstm else 0)

    names = [f"x{b}" for b in range(N)] + ["h0"] + (["c0"] if lstm else []) + [n for n, _ in m.named_parameters()]
    wrt = seqs + [h0] + ([c0] if lstm else []) + list(m.parameters())
    g_got = torch.autograd.grad(loss(got_outs, got_h, got_c), wrt)
    g_want = torch.autograd.grad(loss(want_outs, want_h, want_c), wrt)
    for name, a, b in zip(names, g_got, g_want):
        assert_close(f"grad {name}", a, b, **TIGHT)


def _bad_sequence_calls():
    x = torch.randn(T, N, C)
    h = torch.randn(1, N, H)
    return {
        "input 4-D": (nn.GRU(C, H), torch.randn(T, N, C, 1), None),
        "input 1-D": (nn.RNN(C, H), torch.randn(C), None),
        "input size": (nn.LSTM(C, H), torch.randn(T, N, C + 1), None),
        "hx batch": (nn.GRU(C, H), x, torch.randn(1, N - 1, H)),
        "hx batch 1": (nn.GRU(C, H), x, torch.randn(1, 1, H)),
        "hx layers": (nn.RNN(C, H), x, torch.randn(2, N, H)),
        "hx hidden": (nn.RNN(C, H), x, torch.randn(1, N, H + 1)),
        "hx 2-D for 3-D input": (nn.GRU(C, H), x, torch.randn(N, H)),
        "hx 3-D for 2-D input": (nn.GRU(C, H), x[:, 0], h),
        "lstm h batch": (nn.LSTM(C, H), x, (h, torch.randn(1, N + 1, H))),
        "lstm proj h size": (nn.LSTM(C, H, proj_size=P), x, (h, h)),
        "lstm c 2-D": (nn.LSTM(C, H), x, (h, h[0])),
        "lstm bidirectional layers": (nn.LSTM(C, H, bidirectional=True), x, (h, h)),
        "packed hx batch": (nn.GRU(C, H), pack_sequence([torch.randn(n, C) for n in sorted(LENGTHS, reverse=True)]),
                            torch.randn(1, N + 1, H)),
        "unsorted packed hx batch": (nn.GRU(C, H),
                                     pack_sequence([torch.randn(n, C) for n in LENGTHS], enforce_sorted=False),
                                     torch.randn(1, N - 1, H)),
    }


def _bad_cell_calls():
    x = torch.randn(N, C)
    return {
        "input 3-D": (nn.GRUCell(C, H), torch.randn(2, N, C), None),
        "input size": (nn.RNNCell(C, H), torch.randn(N, C + 1), None),
        "hx batch": (nn.GRUCell(C, H), x, torch.randn(N + 1, H)),
        "hx hidden": (nn.RNNCell(C, H), x, torch.randn(N, H + 1)),
        "hx 3-D": (nn.GRUCell(C, H), x, torch.randn(1, N, H)),
        "lstm c hidden": (nn.LSTMCell(C, H), x, (torch.randn(N, H), torch.randn(N, H + 1))),
        "lstm hx[0] 3-D": (nn.LSTMCell(C, H), x, (torch.randn(1, N, H), torch.randn(N, H))),
    }


@pytest.mark.parametrize("kind, case", [("sequence", c) for c in _bad_sequence_calls()]
                         + [("cell", c) for c in _bad_cell_calls()])
def test_reference_refuses_what_torch_nn_refuses(kind, case):
    """The oracle must not accept a call that the module under test would
    refuse (a wrong state silently broadcast or ignored would hide the bug):
    the same exception as torch.nn, in torch.nn's words."""
    module, x, hx = (_bad_sequence_calls() if kind == "sequence" else _bad_cell_calls())[case]
    with pytest.raises(Exception) as nn_error:
        module(x, hx)
    with pytest.raises(nn_error.type) as ref_error:
        (reference.forward if kind == "sequence" else reference.cell_forward)(module, x, hx)
    assert str(ref_error.value) == str(nn_error.value)


@pytest.mark.parametrize("module, x, hx, call, words", [
    (nn.GRUCell(C, H), torch.randn(T, N, C), None, "forward", "use reference.cell_forward"),
    (nn.GRU(C, H), torch.randn(N, C), None, "cell_forward", "use reference.forward"),
    (nn.LSTM(C, H), torch.randn(T, N, C), torch.randn(1, N, H), "forward", "hx must be a pair of Tensors (h, c)"),
    (nn.GRU(C, H), torch.randn(T, N, C), (torch.randn(1, N, H),), "forward", "hx must be a Tensor"),
    (nn.LSTMCell(C, H), torch.randn(N, C), torch.randn(N, H), "cell_forward", "hx must be a pair of Tensors (h, c)"),
    (nn.GRU(C, H), [[0.0] * C], None, "forward", "input must be a Tensor or a PackedSequence"),
    (nn.GRUCell(C, H), torch.randn(N, C), torch.randn(H), "cell_forward", "both be batched (2D) or both unbatched"),
])
def test_reference_names_a_wrong_kind_of_argument(module, x, hx, call, words):
    with pytest.raises((TypeError, RuntimeError), match=re.escape(words)):
        getattr(reference, call)(module, x, hx)
