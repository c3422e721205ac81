"""torch.jit.script: the modules compile, alone and inside a model, and the
compiled forward matches the float64 reference (outputs and gradients), takes
every input form torch.nn's scripted forward takes, raises torch.nn's words,
trains, and saves and loads with its weights.

torch.jit.script is deprecated in torch 2.13 (it warns); it still compiles
torch.nn's recurrent modules, and models holding fusedrnn's do too.
"""

import copy
import io
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn
from fusedrnn import reference
from helpers import (CELL_VARIANTS, F64, TIGHT, assert_all_close, cell_build, cell_leaves, run, script, seq_builder,
                     seq_leaves, seq_variants)
from helpers import script_holder as holder

T, N, C, H, P = 9, 5, 6, 7, 4
LENGTHS = [6, 9, 2, 9, 4]

SEQ_ALL = seq_variants(P)
# layout: the stack's shape and the input form.
LAYOUTS = {
    "strided": dict(num_layers=2, bidirectional=True),
    "packed": dict(num_layers=2, bidirectional=True),
    "batch_first_no_hx_no_bias": dict(num_layers=2, batch_first=True, bias=False),
    "unbatched": dict(bidirectional=True),
}


def _unbatched_leaves(m):
    gen = torch.Generator().manual_seed(3)
    D = 2 if m.bidirectional else 1
    Pm = getattr(m, "proj_size", 0) or H
    leaves = {"x": torch.randn(T, C, generator=gen, dtype=F64),
              "h0": torch.randn(m.num_layers * D, Pm, generator=gen, dtype=F64)}
    if isinstance(m, fusedrnn.LSTM):
        leaves["c0"] = torch.randn(m.num_layers * D, H, generator=gen, dtype=F64)
    return leaves


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("variant", list(SEQ_ALL))
def test_scripted_module_matches_reference(variant, layout):
    mode, vkw = SEQ_ALL[variant]
    torch.manual_seed(0)
    m = getattr(fusedrnn, mode)(C, H, **vkw, **LAYOUTS[layout]).double()
    packed = layout == "packed"
    scripted = script(holder(m, packed))
    assert all(a is b for a, b in zip(scripted.parameters(), m.parameters()))
    if layout == "unbatched":
        leaves = _unbatched_leaves(m)
        build = seq_builder(m, C)
    else:
        leaves = seq_leaves(m, T, N, C, hx=layout != "batch_first_no_hx_no_bias")
        build = seq_builder(m, C, lengths=LENGTHS if packed else None)
    got = run(m, build, leaves, fn=scripted)
    want = run(m, build, leaves, fn=lambda x, hx: reference.forward(m, x, hx))
    assert_all_close(got, want, **TIGHT)
    assert_all_close(got, run(m, build, leaves), rtol=0, atol=0)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("variant", list(CELL_VARIANTS))
def test_scripted_cell_matches_reference(variant, with_hx, batched):
    cls, kw = CELL_VARIANTS[variant]
    torch.manual_seed(0)
    m = cls(C, H, **kw).double()
    scripted = script(m)
    lstm = cls is fusedrnn.LSTMCell
    leaves = cell_leaves(lstm, N if batched else None, with_hx, C, H)
    got = run(m, cell_build, leaves, cell=True, fn=scripted)
    want = run(m, cell_build, leaves, cell=True, fn=lambda *a: reference.cell_forward(m, *a))
    assert_all_close(got, want, **TIGHT)


def _error(fn, *args):
    """The last line of the error: its type and words (TorchScript prefixes the
    type of an exception raised in compiled code with 'builtins.', and ATen's
    errors come without it)."""
    with pytest.raises((RuntimeError, ValueError, torch.jit.Error)) as info:
        fn(*args)
    return str(info.value).strip().splitlines()[-1].removeprefix("builtins.")


SEQ_ERRORS = {
    "input_size": lambda L: (torch.randn(T, N, C + 1), None),
    "4d_input": lambda L: (torch.randn(T, N, C, 1), None),
    "hidden_batch": lambda L: (torch.randn(T, N, C), (torch.zeros(1, N + 1, H),) * (2 if L else 1)),
    "cell_batch": lambda L: (torch.randn(T, N, C), (torch.zeros(1, N, H), torch.zeros(1, N - 1, H)) if L else None),
    "unbatched_3d_hx": lambda L: (torch.randn(T, C), (torch.zeros(1, N, H),) * (2 if L else 1)),
    "empty_sequence": lambda L: (torch.randn(0, N, C), None),
}


@pytest.mark.parametrize("name, case", [
    (name, case) for name in ("LSTM", "GRU", "RNN") for case in SEQ_ERRORS if name == "LSTM" or case != "cell_batch"
])
def test_scripted_module_errors_are_torch_nns(name, case):
    # The oracle: torch.nn's module, scripted the same way.
    torch.manual_seed(0)
    ours = script(holder(getattr(fusedrnn, name)(C, H), packed=False))
    theirs = script(holder(getattr(nn, name)(C, H), packed=False))
    x, hx = SEQ_ERRORS[case](name == "LSTM")
    if hx is not None and name != "LSTM":
        hx = hx[0]
    want = _error(theirs, x, hx)
    assert _error(ours, x, hx) == want


CELL_ERRORS = {
    "input_size": lambda L: (torch.randn(N, C + 1), None),
    "3d_input": lambda L: (torch.randn(N, C, 1), None),
    "hidden_batch": lambda L: (torch.randn(N, C), (torch.zeros(N + 1, H),) * (2 if L else 1)),
    "hidden_size": lambda L: (torch.randn(N, C), (torch.zeros(N, H + 1),) * (2 if L else 1)),
    "3d_hidden": lambda L: (torch.randn(N, C), (torch.zeros(1, N, H),) * (2 if L else 1)),
}


@pytest.mark.parametrize("case", list(CELL_ERRORS))
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_scripted_cell_errors_are_torch_nns(name, case):
    torch.manual_seed(0)
    ours, theirs = script(getattr(fusedrnn, name)(C, H)), script(getattr(nn, name)(C, H))
    x, hx = CELL_ERRORS[case](name == "LSTMCell")
    if hx is not None and name != "LSTMCell":
        hx = hx[0]
    assert _error(ours, x, hx) == _error(theirs, x, hx)


def _set_error(module, name, value):
    try:
        setattr(module, name, value)
    except RuntimeError as e:
        return str(e)
    return None


@pytest.mark.parametrize("name, attribute, value", [
    (name, attribute, value)
    for name in ("LSTM", "GRU", "RNN")
    for attribute, value in [("input_size", C + 1), ("hidden_size", H + 1), ("num_layers", 2), ("bias", False),
                             ("batch_first", True), ("dropout", 0.5), ("bidirectional", True)]
] + [("LSTM", "proj_size", P)])
def test_scripted_module_refuses_a_new_structure_as_torch_nns(name, attribute, value):
    # The oracle: torch.nn's scripted module, whose attributes are constants.
    ours = script(holder(getattr(fusedrnn, name)(C, H), packed=False))
    theirs = script(holder(getattr(nn, name)(C, H), packed=False))
    want = _set_error(theirs.m, attribute, value)
    assert want is not None and f"Can't set constant '{attribute}'" in want
    assert _set_error(ours.m, attribute, value) == want


@pytest.mark.parametrize("name, kwargs, attribute", [
    ("LSTM", {}, "peephole"), ("LSTM", {}, "coupled_gates"), ("GRU", {}, "reset_after"),
    ("LSTMCell", {}, "peephole"), ("LSTMCell", {}, "coupled_gates"), ("GRUCell", {}, "reset_after"),
])
def test_scripted_variant_flags_cannot_change(name, kwargs, attribute):
    m = getattr(fusedrnn, name)(C, H, **kwargs)
    compiled = script(holder(m, packed=False) if "Cell" not in name else m)
    target = compiled if "Cell" in name else compiled.m
    before = getattr(m, attribute)
    assert _set_error(target, attribute, not before) == (
        f"Can't set constant '{attribute}' which has value:{before}")
    x = torch.randn(N, C) if "Cell" in name else torch.randn(T, N, C)
    torch.testing.assert_close(compiled(x), m(x))


@pytest.mark.parametrize("name, attribute, value", [
    (name, attribute, value) for name in ("LSTMCell", "GRUCell", "RNNCell")
    for attribute, value in [("input_size", C + 1), ("hidden_size", H + 1), ("bias", False)]
])
def test_scripted_cell_refuses_a_new_structure_as_torch_nns(name, attribute, value):
    ours, theirs = script(getattr(fusedrnn, name)(C, H)), script(getattr(nn, name)(C, H))
    want = _set_error(theirs, attribute, value)
    assert want is not None and f"Can't set constant '{attribute}'" in want
    assert _set_error(ours, attribute, value) == want


class Tagger(nn.Module):
    """A model of the kind people script: an embedding, a two-layer
    bidirectional LSTM with dropout, a GRU cell and a linear head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, C)
        self.rnn = fusedrnn.LSTM(C, H, num_layers=2, bidirectional=True, dropout=0.25, peephole=True)
        self.cell = fusedrnn.GRUCell(2 * H, H, reset_after=False)
        self.head = nn.Linear(H, 3)
        self.hidden_size = H

    def forward(self, tokens: Tensor) -> Tensor:
        y, (h, c) = self.rnn(self.embed(tokens))
        state = torch.zeros(tokens.size(1), self.hidden_size, dtype=y.dtype)
        for t in range(y.size(0)):
            state = self.cell(y[t], state)
        return self.head(state)


def test_scripted_model_trains_like_the_eager_one_and_saves_and_loads():
    torch.manual_seed(0)
    eager = Tagger().double()
    scripted = script(copy.deepcopy(eager))
    tokens = torch.randint(0, 20, (T, N))
    target = torch.randint(0, 3, (N,))
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (eager, scripted)]
    for step in range(3):
        for m, opt, seed in zip((eager, scripted), opts, (step, step)):
            torch.manual_seed(seed)  # the same dropout masks
            opt.zero_grad()
            nn.functional.cross_entropy(m(tokens), target).backward()
            opt.step()
    for (name, a), (_, b) in zip(eager.named_parameters(), scripted.named_parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    eager.eval()
    scripted.eval()
    with torch.no_grad():
        want = eager(tokens)
        torch.testing.assert_close(scripted(tokens), want, rtol=0, atol=0)

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(scripted, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), want, rtol=0, atol=0)
        # Loading other weights into the loaded module reaches the operators.
        other = Tagger().double().eval()
        loaded.load_state_dict(other.state_dict())
        torch.testing.assert_close(loaded(tokens), other(tokens), rtol=0, atol=0)
        loaded.float()
        torch.testing.assert_close(loaded(tokens), other.float()(tokens), rtol=0, atol=0)


def test_scripted_dropout_is_random_in_training_and_off_in_eval():
    torch.manual_seed(0)
    m = fusedrnn.GRU(C, H, num_layers=3, dropout=0.5)
    scripted = script(holder(m, packed=False))
    x = torch.randn(T, N, C)
    with torch.no_grad():
        a, b = scripted(x)[0], scripted(x)[0]
        assert not torch.equal(a, b)
        m.eval()
        scripted.eval()
        torch.testing.assert_close(scripted(x)[0], reference.forward(m, x)[0], rtol=1e-5, atol=1e-6)


def test_script_refuses_a_weight_that_is_not_a_tensor():
    m = fusedrnn.LSTM(C, H)
    m.weight_hh_l0 = None
    with pytest.raises(RuntimeError, match="LSTM: torch.jit.script needs every weight as a tensor; weight_hh_l0"):
        script(holder(m, packed=False))


def test_scripted_packed_input_keeps_the_batch_order():
    # Unsorted lengths: the compiled forward sorts the initial states and
    # unsorts the final ones, as the eager one does.
    torch.manual_seed(0)
    m = fusedrnn.LSTM(C, H)
    x = pack_padded_sequence(torch.randn(T, N, C), torch.tensor(LENGTHS), enforce_sorted=False)
    hx = (torch.randn(1, N, H), torch.randn(1, N, H))
    y, (h, c) = script(holder(m, packed=True))(x, hx)
    want_y, (want_h, want_c) = m(x, hx)
    assert isinstance(want_y, PackedSequence)
    for got, want in ((y, want_y.data), (h, want_h), (c, want_c)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_scripted_dtypes_cast_under_autocast_and_are_refused_without(name):
    # The compiled forward leaves dtypes to the operators: their autocast
    # kernels cast, and without autocast they refuse a mismatch in their words.
    torch.manual_seed(0)
    m = getattr(fusedrnn, name)(C, H)
    cell = name.endswith("Cell")
    scripted = script(m if cell else holder(m, packed=False))
    x = torch.randn(N, C) if cell else torch.randn(T, N, C)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = scripted(x)
        want = m(x)
    got = out[0] if isinstance(out, tuple) else out
    want = want[0] if isinstance(want, tuple) else want
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    op = {"LSTM": "lstm_forward", "GRU": "gru_forward", "RNN": "rnn_forward", "LSTMCell": "lstm_cell_forward",
          "GRUCell": "gru_cell_forward", "RNNCell": "rnn_cell_forward"}[name]
    with pytest.raises(RuntimeError, match=f"fusedrnn::{op}: w_ih must have the dtype of input \\(Double\\), got Float"):
        scripted(x.double())


def test_scripting_leaves_the_eager_module_reading_its_weights_by_name():
    torch.manual_seed(0)
    m = fusedrnn.GRU(C, H)
    script(holder(m, packed=False))
    x = torch.randn(T, N, C)
    with torch.no_grad():
        m.weight_hh_l0 = nn.Parameter(torch.zeros_like(m.weight_hh_l0))
        torch.testing.assert_close(m(x)[0], reference.forward(m, x)[0], rtol=1e-5, atol=1e-6)
        twin = m.to_torch()
    assert "_script_weights" not in twin.__dict__
    torch.testing.assert_close(twin(x)[0], m(x)[0], rtol=1e-5, atol=1e-6)
