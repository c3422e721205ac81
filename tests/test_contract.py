"""The drop-in contract with torch.nn: state dicts, parameter order and
initialisation, sharing with from_torch/to_torch, convert() on nested models
with an optimizer built before, serialisation, and the variants' extra
parameters. The oracle is torch.nn."""

import copy
import io
import math
import warnings

import pytest
import torch
import torch.nn.utils.prune
from torch import nn

import fusedrnn

CONFIGS = [
    ("LSTM", dict(num_layers=2, bidirectional=True, bias=True)),
    ("LSTM", dict(num_layers=3, bias=False, proj_size=3)),
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=2, batch_first=True)),
    ("GRU", dict(num_layers=2, bidirectional=True)),
    ("GRU", dict(num_layers=1, bias=False)),
    ("RNN", dict(num_layers=2, nonlinearity="relu", bidirectional=True)),
    ("RNN", dict(num_layers=1, bias=False)),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in CONFIGS]


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_parameters_match_torch_nn_in_name_shape_and_order(name, kw):
    ref = getattr(nn, name)(5, 4, **kw)
    fused = getattr(fusedrnn, name)(5, 4, **kw)
    assert [(n, tuple(p.shape)) for n, p in fused.named_parameters()] == \
        [(n, tuple(p.shape)) for n, p in ref.named_parameters()]
    assert list(fused.state_dict()) == list(ref.state_dict())
    assert repr(fused).split("(", 1)[1] == repr(ref).split("(", 1)[1]


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_state_dict_round_trips_both_ways_strict(name, kw):
    torch.manual_seed(0)
    ref = getattr(nn, name)(5, 4, **kw)
    fused = getattr(fusedrnn, name)(5, 4, **kw)
    fused.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 6, 5) if kw.get("batch_first") else torch.randn(6, 3, 5)
    torch.testing.assert_close(fused(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)
    back = getattr(nn, name)(5, 4, **kw)
    back.load_state_dict(fused.state_dict(), strict=True)
    for (n, a), (_, b) in zip(back.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_initialisation_is_uniform_in_plus_minus_one_over_sqrt_hidden(name):
    torch.manual_seed(0)
    H = 64
    m = getattr(fusedrnn, name)(32, H)
    bound = 1.0 / math.sqrt(H)
    for n, p in m.named_parameters():
        p = p.detach().double()
        k = p.numel()
        assert p.abs().max() <= bound, n
        # uniform(-b, b): mean 0 and variance b^2 / 3; the sample mean and
        # variance must lie within 5 standard errors (variance of the sample
        # variance: (b^4 / 5 - b^4 / 9) / k).
        assert abs(p.mean().item()) < 5 * bound / math.sqrt(3 * k), n
        assert abs(p.var().item() - bound**2 / 3) < 5 * bound**2 * math.sqrt(1 / 5 - 1 / 9) / math.sqrt(k), n
        assert p.unique().numel() > k // 2, n


def test_variant_parameters_are_registered_after_each_layer():
    m = fusedrnn.LSTM(5, 4, num_layers=2, bidirectional=True, peephole=True, coupled_gates=True, proj_size=2)
    names = [n for n, _ in m.named_parameters()]
    per_dir = ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_ch"]
    want = [f"{p}_l{k}{s}" for k in range(2) for s in ("", "_reverse") for p in per_dir]
    assert sorted(names) == sorted(want)
    # every layer's parameters stay together, peepholes right after the others
    for k in range(2):
        for s in ("", "_reverse"):
            block = [n for n in names if n.endswith(f"_l{k}{s}")]
            i = names.index(block[0])
            assert names[i : i + len(block)] == block
            assert block[-1] == f"weight_ch_l{k}{s}"
    assert m.weight_ih_l0.shape == (3 * 4, 5)  # coupled: gate blocks f, g, o
    assert m.weight_ch_l0.shape == (2 * 4,)  # peepholes of f and o
    gru = fusedrnn.GRU(5, 4, reset_after=False)
    assert [n for n, _ in gru.named_parameters()] == [n for n, _ in nn.GRU(5, 4).named_parameters()]
    assert "reset_after=False" in repr(gru)


def test_from_torch_and_to_torch_share_parameters():
    ref = nn.LSTM(5, 4, num_layers=2)
    fused = fusedrnn.LSTM.from_torch(ref)
    assert all(a is b for a, b in zip(fused.parameters(), ref.parameters()))
    with torch.no_grad():
        fused.weight_hh_l1.add_(1.0)
    assert torch.equal(ref.weight_hh_l1, fused.weight_hh_l1)
    back = fused.to_torch()
    assert type(back) is nn.LSTM and all(a is b for a, b in zip(back.parameters(), ref.parameters()))
    with pytest.raises(ValueError, match="no equivalent"):
        fusedrnn.LSTM(5, 4, peephole=True).to_torch()


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(3, 5), nn.ModuleList([nn.GRU(5, 6, batch_first=True)]))
        self.blocks = nn.ModuleDict({"lstm": nn.LSTM(6, 4, num_layers=2, bidirectional=True, batch_first=True)})
        self.cell = nn.RNNCell(8, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        h = self.encoder[0](x)
        h, _ = self.encoder[1][0](h)
        h, _ = self.blocks["lstm"](h)
        s = None
        for t in range(h.shape[1]):
            s = self.cell(h[:, t], s)
        return self.head(s)


def test_convert_swaps_nested_modules_and_keeps_the_optimizer_working():
    torch.manual_seed(0)
    ref = Nested()
    model = copy.deepcopy(ref)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    before = list(model.parameters())
    model.train(False)
    out = fusedrnn.convert(model)
    assert out is model and not model.training
    assert type(model.encoder[1][0]) is fusedrnn.GRU
    assert type(model.blocks["lstm"]) is fusedrnn.LSTM
    assert type(model.cell) is fusedrnn.RNNCell
    assert all(a is b for a, b in zip(model.parameters(), before))
    model.train()
    x = torch.randn(2, 7, 3)
    for _ in range(3):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    for (n, a), (_, b) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    assert fusedrnn.convert(nn.GRUCell(3, 4)).__class__ is fusedrnn.GRUCell


def test_convert_keeps_a_shared_module_one_module():
    """A recurrent module held in two places (tied attributes; listed twice in a
    Sequential) becomes one twin held in both, so the model runs fused
    everywhere, computes what it did, and keeps the tie."""
    torch.manual_seed(0)
    lstm, gru = nn.LSTM(3, 3), nn.GRU(3, 3)
    model = nn.Module()
    model.a, model.b = lstm, lstm
    model.seq = nn.Sequential(gru, gru)
    x = torch.randn(5, 2, 3)

    def run(m):
        h = x
        for layer in (m.a, m.b):
            h, _ = layer(h)
        for layer in m.seq:
            h, _ = layer(h)
        return h

    want = run(model)
    fusedrnn.convert(model)
    assert type(model.a) is fusedrnn.LSTM and model.b is model.a
    assert type(model.seq[0]) is fusedrnn.GRU and model.seq[1] is model.seq[0]
    assert len(list(model.parameters())) == len(list(lstm.parameters())) + len(list(gru.parameters()))
    torch.testing.assert_close(run(model), want, rtol=1e-5, atol=1e-6)
    cyclic = nn.Module()
    cyclic.rnn, cyclic.me = nn.RNN(3, 3), cyclic
    assert fusedrnn.convert(cyclic) is cyclic and type(cyclic.rnn) is fusedrnn.RNN and cyclic.me is cyclic


def _prune(m, name):
    torch.nn.utils.prune.l1_unstructured(m, name, amount=0.5)


def _weight_norm(m, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the hook-based form is deprecated
        torch.nn.utils.weight_norm(m, name)


def _spectral_norm(m, name):
    torch.nn.utils.spectral_norm(m, name)


WRAPPED = [
    ("LSTM", "weight_hh_l0", _prune),
    ("GRU", "weight_ih_l0", _weight_norm),
    ("RNN", "weight_hh_l0", _spectral_norm),
    ("LSTMCell", "weight_hh", _spectral_norm),
    ("GRUCell", "bias_hh", _prune),
    ("RNNCell", "weight_ih", _weight_norm),
]


@pytest.mark.parametrize("name,weight,wrap", WRAPPED, ids=[f"{n}-{w.__name__[1:]}" for n, _, w in WRAPPED])
def test_convert_keeps_hook_based_reparametrisations(name, weight, wrap):
    """Pruning and the hook-based weight_norm and spectral_norm replace a
    parameter by a tensor that a forward pre-hook recomputes from other
    parameters and buffers: the converted module keeps all of them and computes
    what torch.nn computes, gradients of the underlying parameters included;
    a forward hook of the user's is kept too."""
    calls = []

    def make():
        torch.manual_seed(0)
        m = getattr(nn, name)(3, 4).double()
        wrap(m, weight)
        m.eval()  # spectral_norm: no power iteration, so the two runs see the same weight
        m.register_forward_hook(lambda mod, inp, out: calls.append(type(mod).__module__))
        return m

    ref = make()
    model = fusedrnn.convert(nn.Sequential(make()))
    assert type(model[0]) is getattr(fusedrnn, name)
    x = torch.randn(5, 2, 3, dtype=torch.float64) if "Cell" not in name else torch.randn(2, 3, dtype=torch.float64)
    outs = []
    for m in (ref, model[0]):
        y = m(x)
        y = y[0] if isinstance(y, tuple) else y
        y.square().sum().backward()
        outs.append((y, {n: p.grad for n, p in m.named_parameters()}))
    (want, want_grads), (got, got_grads) = outs
    torch.testing.assert_close(got, want)
    assert got_grads.keys() == want_grads.keys() and any(n.startswith(weight + "_") for n in got_grads)
    for n in want_grads:
        torch.testing.assert_close(got_grads[n], want_grads[n], msg=n)
    assert calls == ["torch.nn.modules.rnn", "fusedrnn.modules"]


class _CountingParametrization(nn.Module):
    def __init__(self):
        super().__init__()
        self.runs = 0

    def forward(self, w):
        self.runs += 1
        return w * 1.5


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell"])
def test_a_parametrized_weight_is_computed_once_a_forward(name):
    """README: fusedrnn's modules run a parametrization once a forward, where
    torch.nn's stacked modules run it at least twice (its cells once), and give
    torch.nn's results with it."""
    torch.manual_seed(0)
    cell = name.endswith("Cell")
    weight = "weight_hh" if cell else "weight_hh_l0"
    ref = getattr(nn, name)(4, 5)
    fused = getattr(fusedrnn, name).from_torch(copy.deepcopy(ref))
    x = torch.randn(2, 4) if cell else torch.randn(3, 2, 4)
    counts = {}
    for label, m in (("nn", ref), ("fused", fused)):
        p = _CountingParametrization()
        torch.nn.utils.parametrize.register_parametrization(m, weight, p)
        p.runs = 0
        out = m(x)
        counts[label] = p.runs
        if label == "nn":
            want = out
    assert counts["fused"] == 1
    assert counts["nn"] == 1 if cell else counts["nn"] >= 2
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_serialisation_copy_and_dtype_conversion(name):
    torch.manual_seed(0)
    kw = {"peephole": True} if name in ("LSTM", "LSTMCell") else {}
    m = getattr(fusedrnn, name)(3, 4, **kw)
    x = torch.randn(5, 2, 3) if "Cell" not in name else torch.randn(2, 3)
    want = m(x)
    want = want[0] if isinstance(want, tuple) else want
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    for other in (torch.load(buf, weights_only=False), copy.deepcopy(m)):
        got = other(x)
        got = got[0] if isinstance(got, tuple) else got
        assert torch.equal(got, want)
    d = copy.deepcopy(m).double()
    assert all(p.dtype == torch.float64 for p in d.parameters())
    got = d(x.double())
    got = got[0] if isinstance(got, tuple) else got
    torch.testing.assert_close(got.float(), want, rtol=1e-5, atol=1e-6)


def test_flatten_parameters_is_a_no_op():
    m = fusedrnn.LSTM(3, 4)
    before = [p.data_ptr() for p in m.parameters()]
    assert m.flatten_parameters() is None
    assert [p.data_ptr() for p in m.parameters()] == before


def test_a_weight_swapped_then_init_flat_weights_runs_as_in_torch_nn():
    """Code written for torch.nn replaces a weight and calls _init_flat_weights()
    (torch.nn's rebuild of its weight list); the twin runs on the new weight."""
    torch.manual_seed(0)
    ref = nn.GRU(4, 8)
    fused = fusedrnn.GRU.from_torch(ref)
    x = torch.randn(3, 2, 4)
    w = nn.Parameter(torch.randn(24, 8))
    for m in (ref, fused):
        del m.weight_hh_l0
        m.register_parameter("weight_hh_l0", w)
        assert m._init_flat_weights() is None
    torch.testing.assert_close(fused(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("how", ["convert", "from_torch", "to_torch"])
def test_conversion_keeps_each_child_s_own_mode(how):
    """The twin takes the module's training flag; a child module attached to it
    keeps its own (train() would set the children's too)."""
    m = nn.LSTM(3, 4) if how != "to_torch" else fusedrnn.LSTM(3, 4)
    m.adapter = nn.Dropout(0.5)
    m.adapter.eval()
    twin = {"convert": fusedrnn.convert, "from_torch": fusedrnn.LSTM.from_torch,
            "to_torch": lambda t: t.to_torch()}[how](m)
    assert type(twin) is not type(m)
    assert twin.training and not twin.adapter.training
    m.eval()
    m.adapter.train()
    twin = {"convert": fusedrnn.convert, "from_torch": fusedrnn.LSTM.from_torch,
            "to_torch": lambda t: t.to_torch()}[how](m)
    assert not twin.training and twin.adapter.training


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_permute_hidden_matches_torch_nn(name, kw):
    ref = getattr(nn, name)(5, 4, **kw)
    fused = getattr(fusedrnn, name).from_torch(ref)
    D = 2 if kw.get("bidirectional") else 1
    h = torch.randn(kw.get("num_layers", 1) * D, 3, kw.get("proj_size") or 4)
    hx = (h, torch.randn(h.size(0), 3, 4)) if name == "LSTM" else h
    perm = torch.tensor([2, 0, 1])
    for want, got in zip(ref.permute_hidden(hx, perm), fused.permute_hidden(hx, perm)):
        assert torch.equal(got, want)
    assert fused.permute_hidden(hx, None) is hx


def _weight_drop(module, name, scale):
    """What weight-drop wrappers (AWD-LSTM and its descendants) do: the
    parameter becomes `<name>_raw`, the module gets a plain tensor computed from
    it under the original name, and the flat list is assigned."""
    raw = module._parameters.pop(name)
    module.register_parameter(name + "_raw", raw)
    setattr(module, name, raw * scale)
    module._flat_weights = [getattr(module, n) for n in module._flat_weights_names]
    module._update_flat_weights()


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_weight_drop_style_reassignment_matches_torch_nn(name, kw):
    torch.manual_seed(0)
    ref = getattr(nn, name)(5, 4, **kw)
    fused = getattr(fusedrnn, name)(5, 4, **kw)
    fused.load_state_dict(ref.state_dict())
    for m in (ref, fused):
        _weight_drop(m, "weight_hh_l0", 0.5)
    x = torch.randn(6, 3, 5).transpose(0, 1) if kw.get("batch_first") else torch.randn(6, 3, 5)
    want, got = ref(x)[0], fused(x)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    want.sum().backward()
    got.sum().backward()
    torch.testing.assert_close(fused.weight_hh_l0_raw.grad, ref.weight_hh_l0_raw.grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        fused._flat_weights = fused._flat_weights[:-1]


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_flat_weights_item_assignment_matches_torch_nn(name, kw):
    # Weight-drop wrappers that write into the list: fastai's WeightDropout
    # puts the dropped weight in _parameters and the list item; others assign
    # the item alone. torch.nn's forward runs on its list, and keeps the item
    # through _update_flat_weights (no attribute changed).
    def fastai_drop(m, name):
        raw = m._parameters.pop(name)
        m.register_parameter(name + "_raw", raw)
        m._parameters[name] = torch.nn.functional.dropout(raw, 0.5)
        m._flat_weights[m._flat_weights_names.index(name)] = m._parameters[name]

    def item_half(m, name):
        i = m._flat_weights_names.index(name)
        m._flat_weights[i] = m._flat_weights[i] * 0.5

    x = torch.randn(6, 3, 5, dtype=torch.float64)
    x = x.transpose(0, 1) if kw.get("batch_first") else x
    for drop in (fastai_drop, item_half):
        torch.manual_seed(0)
        ref = getattr(nn, name)(5, 4, **kw).double()
        fused = getattr(fusedrnn, name)(5, 4, **kw).double()
        fused.load_state_dict(ref.state_dict())
        plain = ref(x)[0].detach()
        outs = []
        for m in (ref, fused):
            torch.manual_seed(1)
            drop(m, "weight_hh_l0")
            out = m(x)[0]
            (out * out).sum().backward()
            m._update_flat_weights()
            outs.append((out, m(x)[0], {n: p.grad for n, p in m.named_parameters() if p.is_leaf}))
        (want, want_again, want_grads), (got, got_again, got_grads) = outs
        assert not torch.equal(want, plain), drop.__name__
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got_again, want_again)
        for n in want_grads:
            torch.testing.assert_close(got_grads[n], want_grads[n], msg=n)


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_flat_weights_assigned_over_held_parameters_match_torch_nn(name, kw):
    # Recurrent DropConnect as subclasses of torch.nn's modules write it: the
    # list is assigned with dropout applied to weight_hh_l*, while the module
    # still holds the parameters, and the original list is assigned back after
    # the forward. torch.nn's forward runs on that list, and the gradients reach
    # the parameters through the dropout.
    def recurrent_drop_forward(m, x):
        held = m._flat_weights
        m._flat_weights = [torch.nn.functional.dropout(w, 0.5) if n.startswith("weight_hh_") else w
                           for w, n in zip(held, m._flat_weights_names)]
        out = m(x)[0]
        m._flat_weights = held
        return out

    def half_weight_hh_l0(m):
        return [w * 0.5 if n == "weight_hh_l0" else w for w, n in zip(m._flat_weights, m._flat_weights_names)]

    torch.manual_seed(0)
    ref = getattr(nn, name)(5, 4, **kw).double()
    fused = getattr(fusedrnn, name)(5, 4, **kw).double()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    outs = []
    for m in (ref, fused):
        torch.manual_seed(1)
        out = recurrent_drop_forward(m, x)
        (out * out).sum().backward()
        outs.append((out, {n: p.grad for n, p in m.named_parameters()}))
    torch.testing.assert_close(outs[1][0], outs[0][0])
    for n in outs[0][1]:
        torch.testing.assert_close(outs[1][1][n], outs[0][1][n], msg=n)
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert all(isinstance(getattr(fused, n), nn.Parameter) for n in fused._flat_weights_names)
    # The original list back: the parameters run again.
    torch.testing.assert_close(fused(x)[0], ref(x)[0])
    # A list that is left assigned runs until a weight is replaced, or until the
    # module is converted (.to(), .double()), as torch.nn's.
    for m in (ref, fused):
        m._flat_weights = half_weight_hh_l0(m)
    want = ref(x)[0]
    assert not torch.allclose(want, fused.to_torch()(x)[0])
    torch.testing.assert_close(fused(x)[0], want)
    for m in (ref, fused):
        m.double()
    torch.testing.assert_close(fused(x)[0], ref(x)[0])
    for m in (ref, fused):
        m._flat_weights = half_weight_hh_l0(m)
        m.weight_ih_l0 = nn.Parameter(m.weight_ih_l0.detach() * 2)
    torch.testing.assert_close(fused(x)[0], ref(x)[0])


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_runs_its_mode_like_torch_nn(nonlinearity):
    # torch.nn.RNN's forward reads `mode` (set from `nonlinearity` at
    # construction); changing either attribute afterwards acts as it does there.
    torch.manual_seed(0)
    ref = nn.RNN(5, 4, nonlinearity=nonlinearity)
    fused = fusedrnn.RNN.from_torch(ref)
    other = "relu" if nonlinearity == "tanh" else "tanh"
    x = torch.randn(6, 3, 5)
    for m in (ref, fused):
        m.nonlinearity = other
    torch.testing.assert_close(fused(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)
    for m in (ref, fused):
        m.mode = "RNN_RELU" if nonlinearity == "tanh" else "RNN_TANH"
    torch.testing.assert_close(fused(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fusedrnn.RNN.from_torch(ref)(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.to_torch()(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)


def test_conversion_carries_module_state_both_ways():
    """from_torch/convert and to_torch take over what a module holds besides its
    parameters: children, full backward hooks, load_state_dict pre-hooks (bound
    to the new module), and hook handles taken before keep working; what the
    class defines (forward, Module.compile()'s compiled call) is the new one's."""
    torch.manual_seed(0)
    m = nn.GRU(3, 4)
    calls = []
    m.adapter = nn.Linear(4, 4)
    m.register_full_backward_hook(lambda mod, gi, go: calls.append("full backward"))
    m.register_load_state_dict_pre_hook(lambda mod, *args: calls.append(type(mod).__module__))
    handle = m.register_forward_hook(lambda mod, inp, out: calls.append("forward hook"))
    m.compile()
    twin = fusedrnn.convert(m)
    assert type(twin) is fusedrnn.GRU and twin.adapter is m.adapter
    assert "adapter.weight" in twin.state_dict()
    x = torch.randn(5, 2, 3, requires_grad=True)
    spy = []
    orig = torch.ops.fusedrnn.gru_forward

    class Spy:
        def __call__(self, *a):
            spy.append(1)
            return orig(*a)

    try:
        fusedrnn.functional.ops.gru_forward = Spy()
        twin(x)[0].sum().backward()
    finally:
        fusedrnn.functional.ops.gru_forward = orig
    assert spy, "the converted module ran torch.nn's compiled forward, not the fused operator"
    assert calls == ["forward hook", "full backward"]
    handle.remove()
    twin.load_state_dict(twin.state_dict())
    assert calls[-1] == "fusedrnn.modules"
    calls.clear()
    twin(x)
    assert calls == []

    back = fusedrnn.GRUCell.from_torch(nn.GRUCell(3, 4))
    torch.nn.utils.prune.l1_unstructured(back, "weight_hh", amount=0.5)
    ref = back.to_torch()
    assert type(ref) is nn.GRUCell and hasattr(ref, "weight_hh_mask")
    torch.testing.assert_close(ref(x[0]), back(x[0]))
    lstm = fusedrnn.LSTM(3, 4)
    torch.nn.utils.prune.l1_unstructured(lstm, "weight_hh_l0", amount=0.5)
    ref = lstm.to_torch()
    torch.testing.assert_close(ref(x)[0], lstm(x)[0])
