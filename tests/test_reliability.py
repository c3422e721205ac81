"""Reliability: random configurations agree with the reference, numerics hold at
the edges, memory stays flat, results are deterministic and thread-safe.

The fuzz test runs a bounded number of examples in CI (FUSEDRNN_FUZZ_EXAMPLES
raises it for a long run).
"""

import gc
import io
import os
import threading
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import fusedrnn
from helpers import held_bytes

FUZZ_EXAMPLES = int(os.environ.get("FUSEDRNN_FUZZ_EXAMPLES", "60"))

CELLS = [
    ("LSTM", {}),
    ("LSTM", {"peephole": True}),
    ("LSTM", {"coupled_gates": True}),
    ("LSTM", {"peephole": True, "coupled_gates": True}),
    ("GRU", {}),
    ("GRU", {"reset_after": False}),
    ("RNN", {"nonlinearity": "tanh"}),
    ("RNN", {"nonlinearity": "relu"}),
]


@st.composite
def configs(draw):
    mode, variant = draw(st.sampled_from(CELLS))
    C = draw(st.integers(1, 24))
    H = draw(st.integers(1, 40))
    kw = dict(variant)
    kw["num_layers"] = draw(st.integers(1, 2))
    kw["bidirectional"] = draw(st.booleans())
    kw["bias"] = draw(st.booleans())
    kw["batch_first"] = draw(st.booleans())
    if mode == "LSTM" and H > 1 and draw(st.booleans()):
        kw["proj_size"] = draw(st.integers(1, H - 1))
    N = draw(st.integers(1, 9))
    packed = draw(st.booleans())
    lengths = draw(st.lists(st.integers(1, 12), min_size=N, max_size=N)) if packed else None
    T = draw(st.integers(1, 12))
    dtype = draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16]))
    pack = draw(st.sampled_from(["auto", "always", "never"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return mode, C, H, kw, N, T, lengths, dtype, pack, seed


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_fuzz_against_reference(cfg):
    mode, C, H, kw, N, T, lengths, dtype, pack, seed = cfg
    torch.manual_seed(seed)
    old = os.environ.get("FUSEDRNN_CPU_PACK")
    os.environ["FUSEDRNN_CPU_PACK"] = pack
    try:
        m = getattr(fusedrnn, mode)(C, H, **kw).to(dtype)
        if lengths is not None:
            inp = pack_sequence([torch.randn(n, C, dtype=dtype) for n in lengths], enforce_sorted=False)
        elif kw["batch_first"]:
            inp = torch.randn(N, T, C, dtype=dtype)
        else:
            inp = torch.randn(T, N, C, dtype=dtype)
        # relu's derivative jumps at 0: in 16-bit types a pre-activation within
        # rounding distance of 0 may take either side in the kernel and in the
        # float64 reference, and the gradients then differ by O(1) on that unit
        # (seen: 2 of 950 outputs). The outputs themselves are continuous.
        kink = kw.get("nonlinearity") == "relu" and dtype in (torch.bfloat16, torch.float16)
        print(mode, C, H, kw, N, T, lengths, dtype, pack, "outputs only" if kink else "")
        fusedrnn.testing.assert_matches_reference(m, inp, check_grads=not kink)
    finally:
        if old is None:
            os.environ.pop("FUSEDRNN_CPU_PACK", None)
        else:
            os.environ["FUSEDRNN_CPU_PACK"] = old


# -------------------------------------------- products beside the BPTT

# Long enough (60 x 24 = 1440 rows) for the backward to run dX and the weight
# gradients beside a BPTT on one thread (fewer than 128 hidden units), in three
# chunks of steps (BackwardProducts in csrc/kernels/cpu/rnn_cpu_impl.h); two
# directions, so that the reverse layout's chunks are checked too. Every cell
# and variant: GRU with reset_after=False and the LSTM with a projection
# complete a step's dG in the third of its four phases, the others in their one.
BESIDE = [("LSTM", {}), ("LSTM", dict(peephole=True, coupled_gates=True)), ("LSTM", dict(proj_size=8)),
          ("GRU", {}), ("GRU", dict(reset_after=False)), ("RNN", {}), ("RNN", dict(nonlinearity="relu"))]
# Which gradients are wanted: the input's, the parameters', both.
WANTS = {"all": (True, True), "input_only": (True, False), "weights_only": (False, True)}


def _beside_case(mode, kw, packed, dtype, wants, C=12, H=24):
    torch.manual_seed(5)
    T, N = 60, 24
    m = getattr(fusedrnn, mode)(C, H, bidirectional=True, bias="nonlinearity" not in kw, **kw).to(dtype)
    x_grad, w_grad = WANTS[wants]
    for p in m.parameters():
        p.requires_grad_(w_grad)
    if packed:
        lengths = [T - 2 * i for i in range(N)]
        x = pack_sequence([torch.randn(n, C, dtype=dtype) for n in lengths])
        x = x._replace(data=x.data.requires_grad_(x_grad))
    else:
        x = torch.randn(T, N, C, dtype=dtype, requires_grad=x_grad)
    return m, x


def _grads(out, m, x):
    y = out[0].data if hasattr(out[0], "batch_sizes") else out[0]
    h = out[1][0] if isinstance(out[1], tuple) else out[1]
    wrt = [t for t in [x.data if hasattr(x, "batch_sizes") else x, *m.parameters()] if t.requires_grad]
    torch.manual_seed(6)
    return torch.autograd.grad((y * torch.randn_like(y)).sum() + h.square().sum(), wrt)


@pytest.mark.parametrize("overlap", ["auto", "always"])
@pytest.mark.parametrize("wants", list(WANTS))
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("mode,kw", BESIDE)
def test_products_beside_the_bptt_match_the_reference(mode, kw, packed, wants, overlap, monkeypatch):
    """auto: 24 units, a BPTT on one thread anyway; always
    (FUSEDRNN_CPU_OVERLAP): 130 units, whose BPTT would take threads."""
    monkeypatch.setenv("FUSEDRNN_CPU_OVERLAP", overlap)
    m, x = _beside_case(mode, kw, packed, torch.float64, wants, H=24 if overlap == "auto" else 130)
    got = _grads(m(x), m, x)
    want = _grads(fusedrnn.reference.forward(m, x), m, x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("overlap", ["auto", "always"])
@pytest.mark.parametrize("wants", list(WANTS))
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("mode,kw", BESIDE)
def test_products_beside_the_bptt_give_the_bits_of_one_thread(mode, kw, packed, wants, overlap, monkeypatch):
    monkeypatch.setenv("FUSEDRNN_CPU_OVERLAP", overlap)
    # The directions in turn, each on both threads: at once, each would run
    # its products after its BPTT on its one thread.
    monkeypatch.setenv("FUSEDRNN_CPU_DIRECTIONS_AT_ONCE", "never")
    # A narrow input and 100 units (130 where forced): the BPTT, not the
    # products, sets the pace, and the products wait for it.
    H = 100 if overlap == "auto" else 130
    m, x = _beside_case(mode, kw, packed, torch.float32, wants, C=2, H=H)
    m2, x2 = _beside_case(mode, kw, packed, torch.float32, wants, C=2, H=H)
    with torch.no_grad():
        for p in m2.parameters():
            p.mul_(-1.5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = _grads(m(x), m, x)
        torch.set_num_threads(2)
        # The kernels keep their scratch between calls: a call on other weights
        # first, so that a product that read a chunk's dG before the BPTT wrote
        # it would read that call's, not this one's.
        _grads(m2(x2), m2, x2)
        got = _grads(m(x), m, x)
    finally:
        torch.set_num_threads(before)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_a_bad_overlap_switch_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_CPU_OVERLAP", "sometimes")
    m = fusedrnn.GRU(3, 4)
    y = m(torch.randn(5, 2, 3, requires_grad=True))[0]
    with pytest.raises(RuntimeError, match="FUSEDRNN_CPU_OVERLAP must be auto, always or never, got 'sometimes'"):
        y.sum().backward()


# ------------------------------------------------------------------ numerics

@pytest.mark.parametrize("mode,variant", CELLS)
def test_saturated_preactivations_stay_finite(mode, variant):
    torch.manual_seed(0)
    m = getattr(fusedrnn, mode)(6, 10, **variant).double()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(200.0)
    x = (torch.randn(7, 3, 6, dtype=torch.float64) * 300).requires_grad_()
    y, h = m(x)
    y.sum().backward()
    h = h if isinstance(h, torch.Tensor) else torch.cat(h, -1)
    bad = [n for n, p in m.named_parameters() if not torch.isfinite(p.grad).all()]
    print("max |y|", y.abs().max().item(), "non-finite grads:", bad)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    assert torch.isfinite(x.grad).all() and not bad
    # every cell but the relu RNN keeps |h| <= 1
    if not (mode == "RNN" and variant.get("nonlinearity") == "relu"):
        assert y.abs().max() <= 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_huge_preactivations_saturate_as_in_nn(mode, dtype):
    """Pre-activations far beyond where the gates saturate (up to 1e37, both
    signs) give what torch.nn gives: the float kernels' exp must clamp its
    argument before the range reduction, which fails beyond about 1e14."""
    gen = torch.Generator().manual_seed(17)
    ref = getattr(torch.nn, mode)(2, 3).to(dtype)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    fused = getattr(fusedrnn, mode).from_torch(ref)
    mags = torch.tensor([1e3, 1e14, 1e15, 1e16, 1e20, 1e30, 1e37]).repeat(2)
    signs = torch.randint(0, 2, mags.shape, generator=gen) * 2 - 1
    x = (mags * signs).to(dtype)[:, None].expand(-1, 2)
    if not mode.endswith("Cell"):
        x = x.reshape(7, 2, 2)
    with torch.backends.mkldnn.flags(enabled=False), torch.no_grad():
        want, got = ref(x), fused(x)
    want = want[0] if isinstance(want, tuple) else want
    got = got[0] if isinstance(got, tuple) else got
    print(mode, dtype, got.flatten()[:8], want.flatten()[:8])
    torch.testing.assert_close(got, want)


def test_gates_closed_to_a_subnormal_or_zero_as_in_nn():
    """sigmoid(x) = 1 / (1 + e^-x) is a subnormal for x in [-88.7, -87.3] and 0
    below, where e^-x overflows, as torch's: it shows against a cell state of
    1e38 (c' = f c + i g with i = f = sigmoid(x)). float32's default tolerance
    (rtol 1.3e-6) holds it: the least subnormal, 2^-149, is 3.8e-7 of the gate
    at -88.5, an exp of a few ulp adds about as much, and the measured
    differences from torch.nn are at most 7.5e-8."""
    ref = nn.LSTMCell(1, 1)
    with torch.no_grad():
        ref.weight_ih.copy_(torch.tensor([[1.0], [1.0], [0.0], [0.0]]))
        ref.weight_hh.zero_()
        ref.bias_ih.copy_(torch.tensor([0.0, 0.0, 1.0, 30.0]))
        ref.bias_hh.zero_()
    fused = fusedrnn.LSTMCell.from_torch(ref)
    x = torch.tensor([-1e30, -200, -98, -90, -88.8, -88.5, -88, -87.5, -87, -60, 0, 60, 89, 100, 1e30])[:, None]
    hx = (torch.zeros(len(x), 1), torch.full((len(x), 1), 1e38))
    with torch.no_grad():
        (h_want, c_want), (h_got, c_got) = ref(x, hx), fused(x, hx)
    print(torch.cat([x, c_want, c_got], 1))
    assert (c_want[:5] == 0).all() and (c_want[5:] > 0.1).all()
    torch.testing.assert_close(c_got, c_want, rtol=1.3e-6, atol=0)
    torch.testing.assert_close(h_got, h_want, rtol=1.3e-6, atol=0)


@pytest.mark.parametrize("mode,variant", CELLS)
def test_nan_stays_in_its_sequence(mode, variant):
    torch.manual_seed(0)
    m = getattr(fusedrnn, mode)(5, 8, num_layers=2, bidirectional=True, **variant)
    x = torch.randn(6, 4, 5)
    x[3, 1, 2] = float("nan")
    y, _ = m(x)
    nan_rows = torch.isnan(y).any(-1)  # [T, N]
    print(nan_rows)
    assert nan_rows[:, 1].any(), "the NaN must show in its own sequence"
    assert not nan_rows[:, [0, 2, 3]].any(), "the NaN leaked into other sequences"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["RNN", "RNNCell"])
def test_relu_passes_the_gradient_through_nan_as_nn_does(mode, dtype):
    """relu's gradient is 0 only where the pre-activation is <= 0 (torch's
    threshold_backward): where it is NaN, the gradient passes, as in torch.nn."""
    torch.manual_seed(0)
    ref = getattr(nn, mode)(3, 4, nonlinearity="relu").to(dtype)
    fused = getattr(fusedrnn, mode)(3, 4, nonlinearity="relu").to(dtype)
    fused.load_state_dict(ref.state_dict())
    cell = mode.endswith("Cell")
    x = torch.randn((3, 3) if cell else (2, 3, 3), dtype=dtype)
    h0 = torch.randn((3, 4) if cell else (1, 3, 4), dtype=dtype)
    h0[..., 1, 2] = float("nan")
    grads = []
    for m in (ref, fused):
        xi, hi = x.clone().requires_grad_(), h0.clone().requires_grad_()
        y = m(xi, hi) if cell else m(xi, hi)[0]
        grads.append(torch.autograd.grad(y.sum(), [xi, hi, *m.parameters()]))
    want, got = grads
    assert torch.isfinite(want[0][0]).all() and want[0][0].abs().sum() > 0
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("mode", ["RNN", "RNNCell"])
def test_relu_drops_an_infinite_gradient_at_an_inactive_unit_as_nn_does(mode, dtype):
    """Where relu's output is 0 its backward gives 0 whatever comes down, an
    infinite or NaN gradient too (a loss with sqrt or log of the output sends
    inf there): selected, not multiplied by a 0/1 mask, which would give NaN
    and spread it to every gradient."""
    torch.manual_seed(0)
    ref = getattr(nn, mode)(3, 8, nonlinearity="relu").to(dtype)
    fused = getattr(fusedrnn, mode).from_torch(ref)
    cell = mode.endswith("Cell")
    x = torch.randn((4, 3) if cell else (5, 4, 3), dtype=dtype)
    y = ref(x) if cell else ref(x)[0]
    inactive = y == 0
    assert inactive.any() and (y > 0).any()
    dy = torch.randn_like(y)
    dy[inactive] = float("inf")
    dy[inactive & (inactive.cumsum(-1) == 2)] = float("nan")
    grads = []
    for m in (ref, fused):
        xi = x.clone().requires_grad_()
        y = m(xi) if cell else m(xi)[0]
        grads.append(torch.autograd.grad(y, [xi, *m.parameters()], dy))
    want, got = grads
    for w, g in zip(want, got):
        assert torch.isfinite(w).all() and torch.isfinite(g).all()
        if dtype != torch.bfloat16:  # bfloat16: the products round differently from torch.nn's
            torch.testing.assert_close(g, w)


@pytest.mark.parametrize("mode,variant", CELLS)
def test_repeated_runs_are_bitwise_identical(mode, variant):
    torch.manual_seed(0)
    m = getattr(fusedrnn, mode)(20, 70, num_layers=2, bidirectional=True, **variant)
    x = torch.randn(9, 40, 20, requires_grad=True)
    results = []
    for _ in range(3):
        y, _ = m(x)
        grads = torch.autograd.grad(y.square().sum(), [x, *m.parameters()])
        results.append([y.detach(), *grads])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rss_growth(step, warmup, steps):
    """Bytes the resident set grew by over `steps` calls of step, after `warmup` calls."""
    for _ in range(warmup):
        step()
    gc.collect()
    before = _rss_bytes()
    for _ in range(steps):
        step()
    gc.collect()
    return _rss_bytes() - before


def test_long_sequence_matches_reference_in_memory_proportional_to_T():
    torch.manual_seed(0)
    T = 10_000
    # float32, so that the oracle measures the reference's own error against
    # float64 (in float64 there is no wider reference to measure against).
    m = fusedrnn.LSTM(4, 8)
    x = torch.randn(T, 2, 4)
    fusedrnn.testing.assert_matches_reference(m, x)
    # Memory of a training forward: what autograd keeps is O(T) (the saved
    # gates and states), compared with a sequence 10x shorter.
    m32 = fusedrnn.LSTM(4, 8)

    def saved_bytes(t):
        total = 0

        def pack(tensor):
            nonlocal total
            total += tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m32(torch.randn(t, 2, 4, requires_grad=True))
        return total

    small, large = saved_bytes(T // 10), saved_bytes(T)
    print("saved bytes", small, large)
    assert 8 * small <= large <= 12 * small


# ------------------------------------------------------------------- memory

MODULES = [
    lambda: fusedrnn.LSTM(8, 16, num_layers=2, bidirectional=True, peephole=True),
    lambda: fusedrnn.GRU(8, 16, num_layers=2, reset_after=False),
    lambda: fusedrnn.RNN(8, 16, bidirectional=True),
    lambda: fusedrnn.LSTMCell(8, 16),
    lambda: fusedrnn.GRUCell(8, 16),
    lambda: fusedrnn.RNNCell(8, 16),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_activation_memory_at_or_below_torch_nn(mode, dtype):
    # A training forward with hx=None holds no more than torch.nn's native path
    # (oneDNN's LSTM holds a larger workspace): the saved output, gates and
    # states, and for the zero initial states one broadcast element each. One
    # layer: the bfloat16 LSTM's saved tensors are as large as torch.nn's, so
    # full N x H zero states would be over.
    torch.manual_seed(0)
    fused = getattr(fusedrnn, mode)(24, 40).to(dtype)
    ref = getattr(nn, mode)(24, 40).to(dtype)
    x = torch.randn(30, 6, 24, dtype=dtype, requires_grad=True)
    states = 2 if mode == "LSTM" else 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the mkldnn switch warns about TF32 on Intel GPUs
        with torch.backends.mkldnn.flags(enabled=False):
            native = held_bytes(ref, x)
    assert held_bytes(fused, x) <= native + states * x.element_size()


@pytest.mark.parametrize("make", MODULES, ids=["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_no_leak_over_2000_iterations(make):
    torch.manual_seed(0)
    m = make()
    cell = "Cell" in type(m).__name__
    x = torch.randn(4, 8) if cell else torch.randn(6, 4, 8)

    def step():
        out = m(x)
        y = out[0] if isinstance(out, tuple) else out
        y.sum().backward()

    grown = _rss_growth(step, warmup=200, steps=2000)
    print(f"resident set grew by {grown / 2**20:.2f} MiB over 2000 iterations")
    assert grown < 4 * 2**20


@pytest.mark.parametrize("make", MODULES, ids=["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_autograd_graph_freed_without_garbage_collection(make):
    # The graph holds the input (saved for backward); once the outputs go, the
    # input must go too, by reference counting alone: no reference cycle.
    import weakref

    m = make()
    cell = "Cell" in type(m).__name__

    def run():
        x = torch.randn(4, 8, requires_grad=True) if cell else torch.randn(6, 4, 8, requires_grad=True)
        return weakref.ref(x), m(x)

    gc.disable()
    try:
        ref, out = run()
        assert ref() is not None, "the graph should keep the input alive"
        del out
        assert ref() is None, "the input outlived its graph: a reference cycle"
    finally:
        gc.enable()


def _thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return None


def _thp_eligible(address):
    """THPeligible of the mapping of /proc/self/smaps that holds address; None where the
    kernel does not report it (before Linux 5.0)."""
    mapped, inside, found, reported = False, False, None, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= address < hi
                mapped = mapped or inside
            elif head == "THPeligible:":
                reported = True
                if inside:
                    found = line.split()[1] == "1"
    assert mapped, f"no mapping holds {address:#x}"
    return found if reported else None


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_large_cpu_tensors_are_ordinary_tensors_in_huge_pages(mode):
    # Output, input gradient and saved tensors of a long sequence of more than
    # 32 MiB each come from fusedrnn's allocator for large blocks, in memory
    # that the kernel may back by 2 MiB pages, and behave as any CPU tensor.
    torch.manual_seed(0)
    T, N, H = 2100, 256, 16  # output and input gradient 34 MB, saved gates 138 MB
    m = getattr(fusedrnn, mode)(H, H)
    ref = getattr(torch.nn, mode)(H, H)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(T, N, H, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    y, _ = m(x)
    yr, _ = ref(xr)
    dy = torch.randn_like(y)
    y.backward(dy)
    yr.backward(dy)
    torch.testing.assert_close(y, yr, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(x.grad, xr.grad, rtol=2e-5, atol=2e-5)

    for name, t in (("output", y), ("input gradient", x.grad)):
        # glibc's own large blocks start 16 bytes into a page, never on 2 MiB.
        assert t.data_ptr() % (2 << 20) == 0, f"the {name} is not in a 2 MiB-aligned block"
        if _thp_mode() == "madvise" and _thp_eligible(t.data_ptr()) is not None:
            # only madvised memory is eligible
            assert _thp_eligible(t.data_ptr()), f"the {name} is not offered huge pages"

    with torch.no_grad():
        torch.use_deterministic_algorithms(True)
        try:  # at::empty's NaN fill comes before the kernels write
            assert torch.equal(m(x)[0], y)
        finally:
            torch.use_deterministic_algorithms(False)

    expected = y.detach().clone()
    buf = io.BytesIO()
    torch.save(y.detach(), buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf), expected)
    z = y.detach()
    assert z.untyped_storage().resizable()
    z.resize_(T + 1, N, H)  # grows the storage: the allocator's own reallocation
    assert torch.equal(z[:T], expected)
    s = x.grad.clone()
    x.grad.share_memory_()
    assert x.grad.is_shared() and torch.equal(x.grad, s)
    del y, yr, z, expected, s

    def step():
        out, _ = m(x)
        out.backward(dy)

    grown = _rss_growth(step, warmup=4, steps=12)
    print(f"resident set grew by {grown / 2**20:.2f} MiB over 12 steps of about 250 MB")
    assert grown < 8 * 2**20


# -------------------------------------------------------------- concurrency

def test_two_threads_give_the_results_of_one():
    torch.manual_seed(0)
    a = fusedrnn.LSTM(16, 40, num_layers=2, bidirectional=True)
    b = fusedrnn.GRU(16, 40, reset_after=False)
    xa, xb = torch.randn(12, 8, 16), torch.randn(12, 8, 16)

    def run(m, x):
        y, _ = m(x)
        g = torch.autograd.grad(y.square().sum(), list(m.parameters()))
        return [y.detach(), *g]

    expected = [run(a, xa), run(b, xb)]
    results = [None, None]
    errors = []

    def worker(i, m, x):
        try:
            for _ in range(20):
                out = run(m, x)
                if results[i] is None:
                    results[i] = out
                for p, q in zip(out, expected[i]):
                    assert torch.equal(p, q)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(0, a, xa)), threading.Thread(target=worker, args=(1, b, xb))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("T,N", [(7, 600), (20, 1200)])
@pytest.mark.parametrize("seed", range(3))
def test_weight_gradients_over_many_rows_match_reference(T, N, seed):
    """A weight gradient sums over every row of the sequence (T*N rows, far more
    than the fuzz test draws). Summed in one float32 chain its error grew with
    T*N, to 3-10x that of the float32 reference's per-step sums at T*N >= 4200."""
    torch.manual_seed(seed)
    m = fusedrnn.LSTM(6, 10)
    x = torch.randn(T, N, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()
    fusedrnn.testing.assert_matches_reference(m, x)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("hidden", [15, 16, 17, 32])
def test_wide_batches_stay_inside_their_scratch(hidden, threads):
    """A wide batch with a packed input weight: the input projection's second pass
    took more scratch than its sizing pass counted, and with two threads its
    claims ran past the block (heap corruption, or ASan's heap-buffer-overflow
    under `make sanitize`)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        m = fusedrnn.LSTM(6, hidden)
        fusedrnn.testing.assert_matches_reference(m, torch.randn(7, 600, 6))
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("make", [
    lambda: fusedrnn.LSTM(272, 272),
    lambda: fusedrnn.GRU(304, 304),
    lambda: fusedrnn.RNN(544, 544),
    lambda: fusedrnn.LSTM(272, 300, proj_size=136),
    lambda: fusedrnn.GRU(368, 368, reset_after=False),
], ids=["lstm", "gru", "rnn", "lstm-proj", "gru-reset-before"])
def test_weights_beyond_l2_match_reference(make, threads):
    """Packed weights of more than 1 MiB (kPrefetchMinBytes in gemm.h): their products
    run in copies of their own that prefetch the weight (LSTM H=272: W_hh packed in
    17 panels of 272 x 64 floats, 1.18 MB; GRU H=304 1.11 MB; RNN H=544 1.18 MB): the
    input, recurrent and backward products, with rows that are not whole tiles (N=13)
    and, with AVX-512, GRU and RNN weights that are not whole panels. The projection
    case covers the input product alone (its W_hh, 0.66 MB, stays below); the GRU with
    the reset before the product packs the r and z rows of W_hh apart from the n rows,
    1.08 MB of them at H=368. T*N = 104
    rows, so that the weights are packed rather than read in place (kPackReuse)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        m = make()
        fusedrnn.testing.assert_matches_reference(m, torch.randn(8, 13, m.input_size))
    finally:
        torch.set_num_threads(saved)
