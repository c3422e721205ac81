"""Derivatives beyond the first reverse-mode gradient: double backward
(create_graph=True) and higher orders, functorch transforms (torch.func.grad,
vjp, jvp, jacrev, hessian, vmap) and forward-mode AD.

The oracles: torch.nn's native CPU path (oneDNN off), whose recurrences are
compositions of differentiable operations; finite differences of the first
derivatives (gradgradcheck) for the variants torch.nn lacks; and the fused
first-order gradients themselves.

Legend: T steps, N batch, C input size, H hidden size, P projection size.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import fusedrnn
from fusedrnn import testing
from helpers import CELL_VARIANTS, TIGHT, assert_all_close, assert_close, assert_within_ratio, penalty_grads

F64 = torch.float64
T, N, C, H, P = 4, 3, 3, 4, 2

# (torch.nn class, constructor keywords) with an nn counterpart, and the input kind.
NN_CASES = {
    "lstm_L2_bi": (torch.nn.LSTM, dict(num_layers=2, bidirectional=True), "padded"),
    "lstm_proj_packed": (torch.nn.LSTM, dict(proj_size=P, bidirectional=True), "packed"),
    "gru_L2_bi": (torch.nn.GRU, dict(num_layers=2, bidirectional=True), "padded"),
    "gru_packed_nobias": (torch.nn.GRU, dict(bias=False), "packed"),
    "rnn_tanh_bi": (torch.nn.RNN, dict(bidirectional=True), "padded"),
    "rnn_relu_packed": (torch.nn.RNN, dict(nonlinearity="relu"), "packed"),
    "lstm_cell": (torch.nn.LSTMCell, {}, "cell"),
    "gru_cell": (torch.nn.GRUCell, {}, "cell"),
    "rnn_cell_tanh": (torch.nn.RNNCell, {}, "cell"),
    "rnn_cell_relu": (torch.nn.RNNCell, dict(nonlinearity="relu"), "cell"),
}


def _pair(name, dtype=F64):
    """A torch.nn module and the fusedrnn module with the same parameters."""
    cls, kw, _ = NN_CASES[name]
    ref = cls(C, H, **kw).to(dtype)
    return ref, getattr(fusedrnn, cls.__name__).from_torch(ref)


def _input(kind, gen, dtype=F64):
    if kind == "cell":
        return torch.randn(N, C, generator=gen, dtype=dtype)
    if kind == "packed":
        return pack_sequence([torch.randn(L, C, generator=gen, dtype=dtype) for L in (2, T, 1)], enforce_sorted=False)
    return torch.randn(T, N, C, generator=gen, dtype=dtype)


def _leaf(x):
    """x as a leaf that requires grad (for a PackedSequence, its data), and a
    function rebuilding the module input from such a tensor."""
    if isinstance(x, PackedSequence):
        return x.data.clone().requires_grad_(), lambda d: PackedSequence(d, x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    return x.clone().requires_grad_(), lambda d: d


def _first(out):
    """The output sequence (its data when packed), or a cell's h."""
    y = out[0] if isinstance(out, tuple) else out
    return y.data if isinstance(y, PackedSequence) else y


def _all_outputs(out):
    """Every differentiable output: the sequence (a PackedSequence where packed)
    and the final states, or a cell's h (and c)."""
    if isinstance(out, torch.Tensor):
        return [out]
    y, hidden = out
    return [y] + (list(hidden) if isinstance(hidden, tuple) else [hidden])


def _assert_penalty_grads_match_nn(name, x, hx=None):
    ref, fused = _pair(name)
    hr = hf = None
    if hx is not None:  # the same tensor as h0 and as c0
        hr, hf = hx.clone().requires_grad_(), hx.clone().requires_grad_()
        hr, hf = (hr, hr), (hf, hf)
    with torch.backends.mkldnn.flags(enabled=False):
        want = penalty_grads(ref, x, hr)
    got = penalty_grads(fused, x, hf)
    assert_all_close(got, want, **TIGHT)


@pytest.mark.parametrize("name", list(NN_CASES))
def test_double_backward_matches_nn(name):
    gen = torch.Generator().manual_seed(1)
    _assert_penalty_grads_match_nn(name, _input(NN_CASES[name][2], gen))


@pytest.mark.parametrize("name", ["lstm_L2_bi", "lstm_cell"])
def test_double_backward_with_h0_is_c0(name):
    """hx given and requiring grad, the same tensor as h0 and as c0 (a cell
    passes it to the operator twice as it is): each place gets its own
    gradient, and autograd sums them, as for torch.nn."""
    gen = torch.Generator().manual_seed(2)
    kind = NN_CASES[name][2]
    x = _input(kind, gen)
    h = torch.randn(*(() if kind == "cell" else (4,)), N, H, generator=gen, dtype=F64)
    _assert_penalty_grads_match_nn(name, x, h)


@pytest.mark.parametrize("name", ["lstm_proj_packed", "gru_cell"])
def test_batched_double_backward_matches_nn(name):
    """A batch of cotangents at once (is_grads_batched=True, as jacobian and
    hessian with vectorize=True use it) under create_graph=True."""
    gen = torch.Generator().manual_seed(13)
    ref, fused = _pair(name)
    x = _input(NN_CASES[name][2], gen)
    results = []
    for m in (ref, fused):
        d, rebuild = _leaf(x)
        with torch.backends.mkldnn.flags(enabled=False):
            y = _first(m(rebuild(d)))
            v = torch.randn(3, *y.shape, generator=torch.Generator().manual_seed(14), dtype=F64)
            (g,) = torch.autograd.grad(y, d, v, is_grads_batched=True, create_graph=True)
            (gg,) = torch.autograd.grad(g.sin().sum(), d)
            jac = torch.autograd.functional.jacobian(
                lambda t: _first(m(rebuild(t))).sum(0), d, create_graph=True, vectorize=True)
        results.append({"batched vjp": g, "its gradient": gg, "jacobian": jac})
    for k in results[0]:
        assert_close(k, results[1][k], results[0][k], **TIGHT)


def _third_derivative(module, x):
    """d^3/dx^3 of sum(sin(output)), contracted with ones at each order."""
    d = x.clone().requires_grad_()
    loss = _first(module(d)).sin().sum()
    (g1,) = torch.autograd.grad(loss, d, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), d, create_graph=True)
    (g3,) = torch.autograd.grad(g2.sum(), d)
    return g3


@pytest.mark.parametrize("name", ["lstm_L2_bi", "gru_cell"])
def test_third_derivative_matches_nn(name):
    gen = torch.Generator().manual_seed(3)
    ref, fused = _pair(name)
    x = _input(NN_CASES[name][2], gen)
    with torch.backends.mkldnn.flags(enabled=False):
        want = _third_derivative(ref, x)
    assert_close("d3/dx3", _third_derivative(fused, x), want, **TIGHT)


SEQ_VARIANTS = {
    "lstm_peephole_coupled_proj": (fusedrnn.LSTM, {"peephole": True, "coupled_gates": True, "proj_size": 1}),
    "lstm_peephole": (fusedrnn.LSTM, {"peephole": True}),
    "gru_reset_before": (fusedrnn.GRU, {"reset_after": False}),
}


@pytest.mark.parametrize("kind", ["packed_bi", "padded_L2"])
@pytest.mark.parametrize("variant", list(SEQ_VARIANTS))
def test_gradgradcheck_variants(variant, kind):
    """The variants torch.nn lacks: second derivatives against finite
    differences of the first."""
    cls, kw = SEQ_VARIANTS[variant]
    gen = torch.Generator().manual_seed(4)
    if kind == "packed_bi":
        m = cls(2, 2, bidirectional=True, **kw)
        x = pack_sequence([torch.randn(L, 2, generator=gen, dtype=F64) for L in (3, 1)], enforce_sorted=False)
    else:
        m = cls(2, 2, num_layers=2, **kw)
        x = torch.randn(3, 2, 2, generator=gen, dtype=F64)
    assert testing.gradgradcheck(m, x)


@pytest.mark.parametrize("variant", list(CELL_VARIANTS))
def test_gradgradcheck_cells(variant):
    cls, kw = CELL_VARIANTS[variant]
    gen = torch.Generator().manual_seed(5)
    cell = cls(3, 2, **kw)
    x = torch.randn(2, 3, generator=gen, dtype=F64)
    h = torch.randn(2, 2, generator=gen, dtype=F64)
    hx = (h, torch.randn(2, 2, generator=gen, dtype=F64)) if cls is fusedrnn.LSTMCell else h
    assert testing.gradgradcheck(cell, x, hx)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["lstm_proj_packed", "gru_L2_bi", "rnn_tanh_bi", "lstm_cell"])
def test_create_graph_gradients_equal_the_fused_ones(name, dtype):
    """Under create_graph=True the gradients come from the composition; they
    are the fused backward's, up to the order of floating-point sums."""
    gen = torch.Generator().manual_seed(6)
    _, fused = _pair(name, dtype)
    x = _input(NN_CASES[name][2], gen, dtype)
    grads = []
    for create_graph in (False, True):
        d, rebuild = _leaf(x)
        outs = _all_outputs(fused(rebuild(d)))
        loss = sum((o.data if isinstance(o, PackedSequence) else o).cos().sum() for o in outs)
        grads.append(torch.autograd.grad(loss, [d, *fused.parameters()], create_graph=create_graph))
    # Both sum the same products over at most 2H = 8 terms and 4 steps, in other
    # orders: the error bound of a sum of n terms is about n eps of its
    # magnitude, and 64 covers n = 8 + 4 + 8 through two layers.
    eps = torch.finfo(dtype).eps
    for n, g, w in zip(["input"] + [n for n, _ in fused.named_parameters()], grads[1], grads[0]):
        assert g.requires_grad and not w.requires_grad
        assert_close(n, g, w, atol=64 * eps, rtol=64 * eps)


def test_half_precision_double_backward():
    """bfloat16, by the error-ratio oracle of DESIGN.md: the gradient penalty's
    gradients against float64 (torch.nn, the same bfloat16-representable
    values) may err at most twice as much as torch.nn computing in bfloat16
    itself, plus the floor. Returned in bfloat16."""
    gen = torch.Generator().manual_seed(7)
    ref64, _ = _pair("gru_L2_bi")
    with torch.no_grad():
        for p in ref64.parameters():
            p.copy_(p.bfloat16())
    ref16 = copy.deepcopy(ref64).to(torch.bfloat16)
    fused16 = fusedrnn.GRU.from_torch(copy.deepcopy(ref16))
    x16 = _input("padded", gen, torch.bfloat16)
    got = penalty_grads(fused16, x16)
    with torch.backends.mkldnn.flags(enabled=False):
        want = penalty_grads(ref64, x16.double())
        low = penalty_grads(ref16, x16)
    assert all(g.dtype == torch.bfloat16 for g in got.values())
    assert_within_ratio(got, want, low, factor=2.0)
    # The compositions compute in float32: on bfloat16 arguments a layer gives
    # exactly its float32 result on the same values, rounded once.
    args = (x16, None, torch.zeros(N, H, dtype=torch.bfloat16), ref16.weight_ih_l0, ref16.weight_hh_l0,
            ref16.bias_ih_l0, ref16.bias_hh_l0)
    with torch.no_grad():
        low_precision = fusedrnn._composite.gru(*args, True, False)
        rounded = [t.bfloat16() for t in fusedrnn._composite.gru(
            *(None if a is None else a.float() for a in args), True, False)]
    for n, g, w in zip(["output", "h_n"], low_precision, rounded):
        assert torch.equal(g, w), f"{n}: not the float32 result rounded to bfloat16"


# ------------------------------------------------------------------ functorch


def _loss_of(module):
    def loss(params, x):
        return _first(functional_call(module, params, (x,))).sin().sum()

    return loss


def _params(module):
    return {k: v.detach() for k, v in module.named_parameters()}


@pytest.mark.parametrize("name", [n for n, (_, _, kind) in NN_CASES.items() if kind != "packed"])
def test_torch_func_transforms_match_nn(name):
    gen = torch.Generator().manual_seed(8)
    ref, fused = _pair(name)
    x = _input(NN_CASES[name][2], gen)
    t = torch.randn(x.shape, generator=gen, dtype=F64)
    results = []
    for m in (ref, fused):
        loss, p = _loss_of(m), _params(m)
        with torch.backends.mkldnn.flags(enabled=False):
            g_p, g_x = torch.func.grad(loss, argnums=(0, 1))(p, x)
            _, tangent = torch.func.jvp(lambda x: loss(p, x), (x,), (t,))
            jac = torch.func.jacrev(lambda x: _first(functional_call(m, p, (x,))))(x)
            hess = torch.func.hessian(lambda x: loss(p, x))(x)
        results.append({"grad x": g_x, **{f"grad {k}": v for k, v in g_p.items()}, "jvp": tangent,
                        "jacrev": jac, "hessian": hess})
    for k in results[0]:
        assert_close(k, results[1][k], results[0][k], **TIGHT)


@pytest.mark.parametrize("name", [n for n, (_, _, kind) in NN_CASES.items() if kind != "cell"])
def test_vmap_equals_a_loop(name):
    """torch.nn.LSTM/GRU/RNN have no batching rule; fusedrnn's modules run
    under vmap, and give what one call per batch element gives."""
    gen = torch.Generator().manual_seed(9)
    _, fused = _pair(name)
    loss, p = _loss_of(fused), _params(fused)
    if NN_CASES[name][2] == "packed":
        xs = torch.stack([_input("packed", torch.Generator().manual_seed(s)).data for s in range(3)])
        sizes = _input("packed", gen)

        def f(d):
            return loss(p, PackedSequence(d, sizes.batch_sizes, sizes.sorted_indices, sizes.unsorted_indices))
    else:
        xs = torch.randn(3, T, N, C, generator=gen, dtype=F64)

        def f(d):
            return loss(p, d)

    got = torch.func.vmap(f)(xs)
    want = torch.stack([f(xi) for xi in xs])
    assert_close("vmap", got, want, **TIGHT)


@pytest.mark.parametrize("name", ["lstm_L2_bi", "gru_cell"])
def test_per_sample_gradients(name):
    """vmap(grad(loss)) over a batch of single samples, as for per-sample
    gradients (differential privacy), against one fused backward per sample."""
    gen = torch.Generator().manual_seed(12)
    _, fused = _pair(name)
    loss, p = _loss_of(fused), _params(fused)
    cell = NN_CASES[name][2] == "cell"
    xs = torch.randn(5, *((1, C) if cell else (T, 1, C)), generator=gen, dtype=F64)
    got = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(p, xs)
    for i, xi in enumerate(xs):
        fused.zero_grad(set_to_none=True)
        _first(fused(xi)).sin().sum().backward()
        for k, prm in fused.named_parameters():
            assert_close(f"sample {i} {k}", got[k][i], prm.grad, **TIGHT)


@pytest.mark.parametrize("no_grad", [False, True], ids=["grad", "no_grad"])
@pytest.mark.parametrize("name", ["lstm_proj_packed", "gru_L2_bi", "rnn_relu_packed", "lstm_cell", "gru_cell", "rnn_cell_tanh"])
def test_forward_ad_matches_nn(name, no_grad):
    """Dual tensors (torch.autograd.forward_ad), also under no_grad, where the
    fused operators would otherwise run without a tangent."""
    gen = torch.Generator().manual_seed(10)
    ref, fused = _pair(name)
    x = _input(NN_CASES[name][2], gen)
    data = x.data if isinstance(x, PackedSequence) else x
    t = torch.randn(data.shape, generator=gen, dtype=F64)
    tangents = []
    for m in (ref, fused):
        with torch.backends.mkldnn.flags(enabled=False), fwAD.dual_level(), torch.set_grad_enabled(not no_grad):
            d = fwAD.make_dual(data, t)
            if isinstance(x, PackedSequence):
                d = PackedSequence(d, x.batch_sizes, x.sorted_indices, x.unsorted_indices)
            outs = _all_outputs(m(d))
            tangents.append([fwAD.unpack_dual(o.data if isinstance(o, PackedSequence) else o).tangent for o in outs])
    for i, (g, w) in enumerate(zip(tangents[1], tangents[0])):
        assert g is not None, f"output {i} has no tangent"
        assert_close(f"tangent of output {i}", g, w, **TIGHT)


def test_composition_under_autocast_gives_the_autocast_dtype():
    """The composition (here under jvp) returns what the fused operators return
    under autocast: the autocast dtype, from float32 computation on inputs
    rounded to it."""
    gen = torch.Generator().manual_seed(15)
    _, fused = _pair("lstm_cell", torch.float32)
    x = torch.randn(N, C, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = fused(x)
        got, tangent = torch.func.jvp(lambda x: fused(x), (x,), (torch.ones_like(x),))
    for n, g, w in zip(["h", "c"], got, want):
        assert g.dtype == w.dtype == torch.bfloat16
        # Both are float32 computations on the same bfloat16 values, apart only by
        # float32 rounding, each rounded once to bfloat16: equal, or neighbours.
        _, e = torch.frexp(w.float())
        one_ulp = torch.ldexp(torch.ones_like(w, dtype=torch.float32), e - 8)
        diff = (g.float() - w.float()).abs()
        print(f"{n}: {int((diff > 0).sum())} of {diff.numel()} elements one bfloat16 ulp apart")
        assert (diff <= one_ulp).all(), f"{n}: more than one bfloat16 ulp apart"
    assert all(t.dtype == torch.bfloat16 for t in tangent)


@pytest.mark.parametrize("how", ["grad", "jvp"])
@pytest.mark.parametrize("name", ["lstm_L2_bi", "gru_L2_bi", "lstm_cell"])
def test_compositions_under_autocast_accept_what_the_operators_accept(name, how):
    """Under autocast the operators cast their float32 arguments to the autocast
    dtype before checking them: a second layer's bfloat16 input meets float32
    weights. The compositions' checks must see the same dtypes."""
    gen = torch.Generator().manual_seed(18)
    _, fused = _pair(name, torch.float32)
    x = _input(NN_CASES[name][2], gen, torch.float32)
    loss, p = _loss_of(fused), _params(fused)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = loss(p, x)
        if how == "grad":
            got = torch.func.grad_and_value(loss)(p, x)[1]
        else:
            got = torch.func.jvp(lambda x: loss(p, x), (x,), (torch.ones_like(x),))[0]
    # The same bfloat16 values computed in float32 by the kernels and by the
    # composition, rounded to bfloat16 at each layer: torch's bfloat16 tolerance.
    torch.testing.assert_close(got, want)


def test_functionalize_keeps_the_fused_operator():
    """functionalize neither differentiates nor batches: the trace keeps the
    fused operator."""
    from torch.fx.experimental.proxy_tensor import make_fx

    _, fused = _pair("lstm_cell", torch.float32)
    graph = make_fx(torch.func.functionalize(lambda x: fused(x)[0]))(torch.randn(N, C)).graph
    targets = {str(n.target) for n in graph.nodes if n.op == "call_function"}
    assert "fusedrnn.lstm_cell_forward.default" in targets, targets


@pytest.mark.parametrize("name", ["lstm_L2_bi", "gru_cell"])
def test_transforms_beneath_functionalize_match_nn(name, monkeypatch):
    """grad and vmap with functionalize above them: the operators sit under a
    transform that differentiates or batches, so they take the composition.
    Against torch.nn: grad through it, vmap (which torch.nn's sequence modules
    do not support) by one call per batch element."""
    gen = torch.Generator().manual_seed(16)
    ref, fused = _pair(name)
    x = _input(NN_CASES[name][2], gen)
    xs = torch.stack([x, torch.randn(x.shape, generator=gen, dtype=F64)])
    loss_ref, p_ref = _loss_of(ref), _params(ref)
    loss, p = _loss_of(fused), _params(fused)
    with torch.backends.mkldnn.flags(enabled=False):
        want = dict(zip(["params", "x"], torch.func.grad(loss_ref, argnums=(0, 1))(p_ref, x)))
        want_per_x = torch.stack([loss_ref(p_ref, xi) for xi in xs])
    got = dict(zip(["params", "x"], torch.func.grad(torch.func.functionalize(loss), argnums=(0, 1))(p, x)))
    assert_close("grad x", got["x"], want["x"], **TIGHT)
    for k in want["params"]:
        assert_close(f"grad {k}", got["params"][k], want["params"][k], **TIGHT)
    composed = []
    for fn in ("lstm", "gru_cell"):
        real = getattr(fusedrnn._composite, fn)
        monkeypatch.setattr(fusedrnn._composite, fn, lambda *a, _real=real: composed.append(1) or _real(*a))
    per_x = torch.func.vmap(torch.func.functionalize(lambda x: loss(p, x)))(xs)
    assert composed, "vmap beneath functionalize must take the composition, not the batching fallback"
    assert_close("vmap", per_x, want_per_x, **TIGHT)


@pytest.mark.parametrize("op", ["rnn_cell", "lstm"])
@pytest.mark.parametrize("how", ["jvp", "forward_ad_no_grad", "forward_ad_weight_tangent"])
def test_operators_called_directly_refuse_tangents(how, op):
    """The operators have no forward-mode derivative: called directly with a
    tangent they say so, instead of returning an output without one (a zero
    tangent)."""
    gen = torch.Generator().manual_seed(11)
    x, h = torch.randn(N, C, generator=gen), torch.randn(N, H, generator=gen)
    w_ih, w_hh = torch.randn(H, C, generator=gen), torch.randn(H, H, generator=gen)

    def step(x, w_hh=w_hh):
        if op == "rnn_cell":
            return torch.ops.fusedrnn.rnn_cell_forward(x, h, w_ih, w_hh, None, None, False)
        return torch.ops.fusedrnn.lstm_forward(x[None], None, h, h, w_ih.repeat(4, 1), w_hh.repeat(4, 1),
                                               None, None, None, None, False, False, False)[0]

    with pytest.raises(RuntimeError, match="the operators have no forward-mode derivative"):
        if how == "jvp":
            torch.func.jvp(step, (x,), (torch.ones_like(x),))
        else:
            with fwAD.dual_level(), torch.set_grad_enabled(how != "forward_ad_no_grad"):
                if how == "forward_ad_no_grad":
                    step(fwAD.make_dual(x, torch.ones_like(x)))
                else:
                    step(x, fwAD.make_dual(w_hh, torch.ones_like(w_hh)))


@pytest.mark.parametrize("cell", ["lstm_proj", "gru", "rnn"])
def test_transforms_of_an_empty_sequence_pass_the_state_through(cell):
    """Zero steps through fusedrnn.functional: the final state is the initial one
    (h_n = h0: a first derivative of 1, a second of 0) and the output is empty, in
    every transform, as in the fused forward and its first-order backward."""
    import fusedrnn.functional as FF

    torch.manual_seed(0)
    G = {"lstm_proj": 4, "gru": 3, "rnn": 1}[cell]
    Hout = P if cell == "lstm_proj" else H
    w = (torch.randn(G * H, C, dtype=F64), torch.randn(G * H, Hout, dtype=F64))
    x = torch.randn(0, N, C, dtype=F64)
    c0 = torch.randn(1, N, H, dtype=F64)
    w_hr = torch.randn(P, H, dtype=F64)

    def run(x, h0):
        if cell == "lstm_proj":
            y, h, _ = FF.lstm(x, (h0, c0), [(*w, None, None, None, w_hr)], 1)
        else:
            y, h = getattr(FF, cell)(x, h0, [w], 1)
        return y, h

    h0 = torch.randn(1, N, Hout, dtype=F64, requires_grad=True)
    y, h = run(x, h0)
    assert y.shape == (0, N, Hout) and torch.equal(h, h0)
    (g,) = torch.autograd.grad(run(x, h0)[1].pow(2).sum(), h0, create_graph=True)
    assert_close("d h_n^2 / d h0", g, 2 * h0, **TIGHT)
    (gg,) = torch.autograd.grad(g.sum(), h0)
    assert_close("second derivative", gg, torch.full_like(h0, 2.0), **TIGHT)
    v = torch.randn_like(h0)
    out, tangent = torch.func.jvp(lambda h: run(x, h)[1], (h0.detach(),), (v,))
    assert torch.equal(out, h0.detach()) and torch.equal(tangent, v)
    with fwAD.dual_level():
        _, dual = run(x, fwAD.make_dual(h0.detach(), v))
        assert torch.equal(fwAD.unpack_dual(dual).tangent, v)
    ys, hs = torch.func.vmap(lambda xx: run(xx, h0.detach()))(torch.randn(2, 0, N, C, dtype=F64))
    assert ys.shape == (2, 0, N, Hout) and torch.equal(hs, h0.detach().expand(2, -1, -1, -1))
