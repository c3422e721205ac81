"""The bidirectional operators (torch.ops.fusedrnn.*_bidirectional_forward): one
layer, both directions, against the two one-direction operators they stand for;
what a bidirectional stack saves for backward; their errors.

Legend: T steps, N batch, C input size, H hidden size, P projection size, R
packed rows, L layers.
"""

import pytest
import torch

import fusedrnn
from helpers import held_bytes, script, script_holder

ops = torch.ops.fusedrnn
T, N, C, H, P = 7, 5, 6, 8, 3
BATCH_SIZES = [5, 5, 4, 2, 2, 1]


def one_direction_args(family, gen, dtype, packed, reverse, proj, peephole, flag):
    """Arguments of fusedrnn::<family>_forward with training=True."""
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    G = {"lstm": 3 if flag else 4, "gru": 3, "rnn": 1}[family]
    Pp = P if proj else H
    x = r(sum(BATCH_SIZES), C) if packed else r(T, N, C)
    bs = torch.tensor(BATCH_SIZES) if packed else None
    if family == "lstm":
        return [x, bs, r(N, Pp), r(N, H), r(G * H, C), r(G * H, Pp), r(G * H), r(G * H),
                r((G - 1) * H) if peephole else None, r(P, H) if proj else None, flag, reverse, True]
    if family == "gru":
        return [x, bs, r(N, H), r(G * H, C), r(G * H, H), r(G * H), r(G * H), flag, reverse, True]
    return [x, bs, r(N, H), r(H, C), r(H, H), r(H), r(H), flag, reverse]


CONFIGS = [
    ("lstm", dict()), ("lstm", dict(flag=True, peephole=True)), ("lstm", dict(proj=True)),
    ("gru", dict(flag=True)), ("gru", dict(flag=False)), ("rnn", dict(flag=False)), ("rnn", dict(flag=True)),
]


def _both_directions(family, kw, dtype, packed):
    """The one-direction forward arguments of each direction (training=True) and
    those of the bidirectional forward operator over the same tensors."""
    gen = torch.Generator().manual_seed(0)
    kw = dict(dict(proj=False, peephole=False, flag=False), **kw)
    fwd = one_direction_args(family, gen, dtype, packed, False, **kw)
    rev = one_direction_args(family, gen, dtype, packed, True, **kw)
    rev[0] = fwd[0]
    states = 2 if family == "lstm" else 1
    params = 6 if family == "lstm" else 4
    stacked = [torch.stack([a, b]) for a, b in zip(fwd[2:2 + states], rev[2:2 + states])]
    tail = [fwd[2 + states + params]] + ([True] if family != "rnn" else [])
    args = [fwd[0], fwd[1], *stacked, *fwd[2 + states:2 + states + params],
            *rev[2 + states:2 + states + params], *tail]
    return fwd, rev, args


# How the CPU runs the two directions: on one thread; on two, as it chooses,
# in turn or at once (FUSEDRNN_CPU_DIRECTIONS_AT_ONCE: either whatever the sizes).
SCHEDULES = {"one_thread": (1, "auto"), "two_threads": (2, "auto"), "in_turn": (2, "never"),
             "at_once": (2, "always")}


def _scheduled(schedule, f, monkeypatch):
    threads, switch = SCHEDULES[schedule]
    monkeypatch.setenv("FUSEDRNN_CPU_DIRECTIONS_AT_ONCE", switch)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return f()
    finally:
        torch.set_num_threads(before)



@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("family,kw", CONFIGS)
def test_equals_the_two_one_direction_operators(family, kw, packed, dtype, schedule, monkeypatch):
    """Output = the directions' outputs side by side, h_n and c_n stacked, and
    each direction's saved tensors: the same bits, whether the directions run
    one after the other or at once."""
    fwd, rev, args = _both_directions(family, kw, dtype, packed)
    one = getattr(ops, f"{family}_forward")
    got = _scheduled(schedule, lambda: getattr(ops, f"{family}_bidirectional_forward")(*args), monkeypatch)
    want_f, want_r = one(*fwd), one(*rev)
    assert torch.equal(got[0], torch.cat([want_f[0], want_r[0]], -1))
    assert torch.equal(got[1], torch.stack([want_f[1], want_r[1]]))
    if family == "lstm":
        assert torch.equal(got[2], torch.stack([want_f[2], want_r[2]]))
        saved_f, saved_r, n = want_f[3:], want_r[3:], 3
    else:
        saved_f, saved_r, n = want_f[2:], want_r[2:], len(want_f) - 2
    base = len(got) - 2 * n
    for i in range(n):
        assert torch.equal(got[base + i], saved_f[i]), f"saved tensor {i}, forward direction"
        assert torch.equal(got[base + n + i], saved_r[i]), f"saved tensor {i}, reverse direction"


# What a backward call asks for: grad_input, the forward direction's weight
# gradients, the reverse's; and whether h_n (and c_n) have gradients.
NEEDS = {"all": (True, True, True, True), "input_only": (True, False, False, True),
         "forward_weights": (False, True, False, True), "reverse_weights": (False, False, True, True),
         "no_state_grads": (True, True, True, False)}


@pytest.mark.parametrize("needs", list(NEEDS))
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("family,kw", CONFIGS)
def test_backward_equals_the_two_one_direction_backward_operators(family, kw, packed, dtype, schedule, needs,
                                                                  monkeypatch):
    """grad_input = the sum of the directions' (in the dtype, as their sum), the
    initial states' gradients stacked and each direction's weight gradients:
    the same bits as the one-direction backward operators give, whether the
    directions run one after the other or at once."""
    need_x, need_wf, need_wr, state_grads = NEEDS[needs]
    fwd, rev, args = _both_directions(family, kw, dtype, packed)
    one = getattr(ops, f"{family}_forward")
    out = [one(*fwd), one(*rev)]
    states = 2 if family == "lstm" else 1
    params = 6 if family == "lstm" else 4
    P_ = out[0][0].shape[-1]
    y = torch.cat([out[0][0], out[1][0]], -1)
    gen = torch.Generator().manual_seed(1)
    r = lambda t: torch.randn(t.shape, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    dy = r(y)
    dstates = [r(torch.stack([out[0][1 + i], out[1][1 + i]])) for i in range(states)]
    if not state_grads:
        dstates = [None] * states

    def one_backward(d, d_args, need_w):
        flag, reverse = d_args[2 + states + params], d_args[3 + states + params]
        return getattr(ops, f"{family}_backward")(
            dy[..., d * P_:(d + 1) * P_], *[g[d] if g is not None else None for g in dstates], d_args[0],
            d_args[1], *d_args[2:2 + states], *d_args[2 + states:2 + states + params], out[d][0],
            *out[d][1 + states:], flag, reverse, need_x, need_w)

    want_f, want_r = one_backward(0, fwd, need_wf), one_backward(1, rev, need_wr)
    saved = [t for o in out for t in o[1 + states:]]
    flag = fwd[2 + states + params]
    got = _scheduled(schedule, lambda: getattr(ops, f"{family}_bidirectional_backward")(
        dy, *dstates, *args[:2 + states + 2 * params], y, *saved, flag, need_x, need_wf, need_wr), monkeypatch)
    assert len(got) == 1 + states + 2 * params
    if need_x:
        assert torch.equal(got[0], want_f[0] + want_r[0])
    else:
        assert got[0].numel() == want_f[0].numel() == 0
    for i in range(1, 1 + states):
        assert torch.equal(got[i], torch.stack([want_f[i], want_r[i]])), f"state gradient {i}"
    for i in range(params):
        assert torch.equal(got[1 + states + i], want_f[1 + states + i]), f"parameter {i}, forward direction"
        assert torch.equal(got[1 + states + params + i], want_r[1 + states + i]), f"parameter {i}, reverse"


@pytest.mark.parametrize("schedule", ["two_threads", "in_turn", "at_once"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("H_", [8, 256], ids=["small_steps", "threaded_steps"])
def test_modules_give_the_same_bits_on_one_and_two_threads(H_, dtype, schedule, monkeypatch):
    """On two threads the directions run at once or in turn, sharing the
    threads step by step (the automatic choice, or either forced). Either way
    the results are those of one thread, forward and backward."""
    torch.manual_seed(1)
    m = fusedrnn.LSTM(C, H_, num_layers=2, bidirectional=True).to(dtype)
    x = torch.randn(T, 16, C, dtype=dtype, requires_grad=True)

    def run():
        m.zero_grad()
        x.grad = None
        y, (h, c) = m(x)
        (y.square().sum() + h.sum() + c.sum()).backward()
        return [y, h, c, x.grad] + [p.grad for p in m.parameters()]

    want = [t.clone() for t in _scheduled("one_thread", run, monkeypatch)]
    got = _scheduled(schedule, run, monkeypatch)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def _saved_bytes_per_layer(mode, H_, elem):
    """What backward needs of one bidirectional layer, per row (T*N): the
    output once (2H), and per direction the gates (4H LSTM, 4H GRU with
    reset_after: r, z, n and W_hn h + b_hn) and the LSTM's c (H)."""
    per_direction = {"LSTM": 4 * H_ + H_, "GRU": 4 * H_, "RNN": 0}[mode]
    return (2 * H_ + 2 * per_direction) * elem


@pytest.mark.parametrize("scripted", [False, True], ids=["eager", "scripted"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_a_bidirectional_stack_saves_each_output_once(mode, dtype, scripted):
    """Each layer's output is held once: the layer saves its output, which the
    next layer saves as its input (the same storage), besides the gates and
    states and the initial states. Two one-direction operators and a
    concatenation held each direction's output twice."""
    torch.manual_seed(2)
    L, H_ = 3, 16
    m = getattr(fusedrnn, mode)(C, H_, num_layers=L, bidirectional=True).to(dtype)
    if scripted:
        m = script(script_holder(m, packed=False))
    x = torch.randn(T, N, C, dtype=dtype, requires_grad=True)
    h0 = torch.randn(2 * L, N, H_, dtype=dtype)
    hx = (h0, torch.randn(2 * L, N, H_, dtype=dtype)) if mode == "LSTM" else h0
    elem = torch.finfo(dtype).bits // 8
    states = (2 if mode == "LSTM" else 1) * 2 * L * N * H_ * elem
    want = L * T * N * _saved_bytes_per_layer(mode, H_, elem) + states
    assert held_bytes(m, x, hx) == want


def _lstm_args(h0_shape=(2, N, H), c0_shape=(2, N, H), reverse_H=H):
    r = lambda *s: torch.randn(*s)  # noqa: E731
    return [r(T, N, C), None, r(*h0_shape), r(*c0_shape), r(4 * H, C), r(4 * H, H), None, None, None, None,
            r(4 * reverse_H, C), r(4 * reverse_H, reverse_H), None, None, None, None, False, False]


@pytest.mark.parametrize("args,message", [
    (_lstm_args(h0_shape=(N, H)), r"lstm_bidirectional_forward: h0 must have shape \[2, N, P\], one state per "
                                  r"direction, got \[5, 8\]"),
    (_lstm_args(c0_shape=(1, N, H)), r"c0 must have shape \[2, N, H\], one state per direction, got \[1, 5, 8\]"),
    (_lstm_args(h0_shape=(2, N + 1, H), c0_shape=(2, N + 1, H)),
     r"lstm_bidirectional_forward \(forward direction\): h0 must have shape \[5, 8\], got \[6, 8\]"),
    (_lstm_args(reverse_H=4), r"lstm_bidirectional_forward \(reverse direction: the \*_reverse arguments\): h0 must "
                              r"have shape \[5, 4\], got \[5, 8\]"),
], ids=["h0_per_direction", "c0_per_direction", "batch", "reverse_size"])
def test_errors_name_the_argument(args, message):
    with pytest.raises(RuntimeError, match=message):
        ops.lstm_bidirectional_forward(*args)


def _lstm_backward_args(dy_width=2 * H, dh_shape=(2, N, H), reverse_gates_rows=0):
    fwd, rev, args = _both_directions("lstm", {}, torch.float32, False)
    y, h_n, c_n, *saved = ops.lstm_bidirectional_forward(*args)
    if reverse_gates_rows:
        saved[3] = saved[3][:reverse_gates_rows]
    return [torch.randn(T, N, dy_width), torch.randn(*dh_shape), torch.randn_like(c_n), *args[:16], y,
            *saved, False, True, True, True]


@pytest.mark.parametrize("args,message", [
    (lambda: _lstm_backward_args(dy_width=H),
     r"lstm_bidirectional_backward: grad_output must have shape \[7, 5, 16\], got \[7, 5, 8\]"),
    (lambda: _lstm_backward_args(dh_shape=(N, H)),
     r"lstm_bidirectional_backward: grad_h_n must have shape \[2, 5, 8\], got \[5, 8\]"),
    (lambda: _lstm_backward_args(reverse_gates_rows=T * N - 1),
     r"lstm_bidirectional_backward \(reverse direction: the \*_reverse arguments\): gates must have shape "
     r"\[35, 32\], got \[34, 32\]"),
], ids=["grad_output_width", "grad_h_n_per_direction", "reverse_saved"])
@pytest.mark.parametrize("schedule", ["in_turn", "at_once"])
def test_backward_errors_name_the_argument(args, message, schedule, monkeypatch):
    with pytest.raises(RuntimeError, match=message):
        _scheduled(schedule, lambda: ops.lstm_bidirectional_backward(*args()), monkeypatch)


@pytest.mark.parametrize("family", ["lstm", "gru", "rnn"])
def test_the_backward_operators_have_no_derivative(family):
    """Called on tensors that require grad, a backward operator says that it
    has no derivative (create_graph=True goes through the compositions)."""
    fwd, rev, args = _both_directions(family, {}, torch.float64, False)
    out = getattr(ops, f"{family}_bidirectional_forward")(*args)
    states = 2 if family == "lstm" else 1
    params = 12 if family == "lstm" else 8
    w = args[2 + states].clone().requires_grad_()
    inputs = [*args[:2 + states], w, *args[3 + states:2 + states + params]]
    grads = [torch.ones_like(o) for o in out[:1 + states]]
    got = getattr(ops, f"{family}_bidirectional_backward")(
        *grads, *inputs, out[0], *out[1 + states:], args[2 + states + params], True, True, True)
    with pytest.raises(RuntimeError, match=f"derivative for fusedrnn::{family}_bidirectional_backward is not "
                                           "implemented"):
        sum(g.sum() for g in got).backward()


def test_a_bad_directions_switch_is_a_clear_error(monkeypatch):
    m = fusedrnn.GRU(C, H, bidirectional=True)
    monkeypatch.setitem(SCHEDULES, "bad_switch", (2, "sometimes"))
    with pytest.raises(RuntimeError, match="FUSEDRNN_CPU_DIRECTIONS_AT_ONCE must be auto, always or never, "
                                           "got 'sometimes'"):
        _scheduled("bad_switch", lambda: m(torch.randn(T, N, C)), monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_directions_at_once_keep_the_callers_inference_mode(mode, dtype):
    """On two threads the directions of a small layer run on two threads; the
    16-bit conversions there write into results made under the caller's
    torch.inference_mode, which must hold on both threads (it raised "Inplace
    update to inference tensor outside InferenceMode" without it)."""
    torch.manual_seed(3)
    m = getattr(fusedrnn, mode)(C, H, num_layers=2, bidirectional=True).to(dtype)
    x = torch.randn(T, N, C, dtype=dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            y, _ = m(x)
        with torch.no_grad():
            want, _ = m(x)
    finally:
        torch.set_num_threads(before)
    assert y.is_inference()
    assert torch.equal(y, want)


@pytest.mark.parametrize("create_graph", [False, True], ids=["grad", "create_graph"])
def test_a_direction_whose_gradients_are_not_wanted_does_not_run(create_graph):
    """torch.autograd.grad asking for one direction's weight only (the other's
    gradients are not wanted): the same gradient as the reference, also with
    create_graph=True, where the unwanted direction's composition would have
    had nothing to differentiate; and only the wanted direction's backward runs."""
    torch.manual_seed(4)
    m = fusedrnn.LSTM(C, H, num_layers=2, bidirectional=True).double()
    x = torch.randn(T, N, C, dtype=torch.float64, requires_grad=True)
    for w in (m.weight_hh_l1, m.weight_hh_l1_reverse):
        got = torch.autograd.grad(m(x)[0].square().sum(), [w], create_graph=create_graph)[0]
        want = torch.autograd.grad(fusedrnn.reference.forward(m, x)[0].square().sum(), [w])[0]
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        if create_graph:
            assert got.requires_grad


def test_an_unwanted_direction_costs_no_flops():
    from torch.utils.flop_counter import FlopCounterMode

    m = fusedrnn.LSTM(C, H, bidirectional=True)
    x = torch.randn(T, N, C)
    y = m(x)[0]
    with FlopCounterMode(display=False) as mode:
        torch.autograd.grad(y.sum(), [m.weight_hh_l0])
    ih, hh = T * N * 4 * H * C, T * N * 4 * H * H
    # One direction: dh through every step and its weight gradients, no dx.
    assert mode.get_total_flops() == 2 * (hh + ih + hh)


def test_a_direction_with_frozen_weights_counts_no_weight_gradient_flops():
    """Both directions run (the input's gradient is wanted), the reverse's
    without its weight gradients."""
    from torch.utils.flop_counter import FlopCounterMode

    m = fusedrnn.LSTM(C, H, bidirectional=True)
    m.weight_ih_l0_reverse.requires_grad_(False)
    m.weight_hh_l0_reverse.requires_grad_(False)
    m.bias_ih_l0_reverse.requires_grad_(False)
    m.bias_hh_l0_reverse.requires_grad_(False)
    x = torch.randn(T, N, C, requires_grad=True)
    y = m(x)[0]
    with FlopCounterMode(display=False) as mode:
        y.sum().backward()
    ih, hh = T * N * 4 * H * C, T * N * 4 * H * H
    # Each direction: dh through every step and dx; the forward's weight gradients.
    assert mode.get_total_flops() == 2 * (2 * (hh + ih) + ih + hh)
    assert set(mode.get_flop_counts()["Global"]) == {torch.ops.fusedrnn.lstm_bidirectional_backward}
    assert m.weight_hh_l0.grad is not None and m.weight_hh_l0_reverse.grad is None


def test_the_fake_kernel_checks_the_states_per_direction():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        args = _lstm_args(h0_shape=(N, H))
        with pytest.raises(RuntimeError, match=r"h0 must have shape \[2, N, P\], one state per direction"):
            ops.lstm_bidirectional_forward(*args)
