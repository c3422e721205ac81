"""Bad input at both doors.

Modules: the oracle is torch.nn itself. Each case builds the nn module and its
fused twin with the same arguments, calls both with the same bad input, and
requires the same exception type and the same message.

Operators: a table of bad calls to every torch.ops.fusedrnn operator; each must
raise RuntimeError with a message that names the operator, the argument and
the values it got. None may crash the process.
"""

import re

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

ops = torch.ops.fusedrnn


def _raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return type(e), str(e)
    return None, None


def assert_same_error(nn_call, fused_call):
    want_type, want_msg = _raised(nn_call)
    assert want_type is not None, "the oracle (torch.nn) accepted the input: not a bad-input case"
    got_type, got_msg = _raised(fused_call)
    print(f"nn: {want_type.__name__}: {want_msg}\nfused: {got_type and got_type.__name__}: {got_msg}")
    assert got_type is want_type, f"fused raised {got_type}, torch.nn raised {want_type}"
    assert got_msg == want_msg


# ------------------------------------------------------------ module construction

CTOR_CASES = [
    ("LSTM", (4, 8), dict(proj_size=8)),
    ("LSTM", (4, 8), dict(proj_size=9)),
    ("LSTM", (4, 8), dict(proj_size=-1)),
    ("LSTM", (4, 8), dict(dropout=1.5)),
    ("LSTM", (4, 8), dict(dropout=-0.1)),
    ("LSTM", (4, 8), dict(num_layers=0)),
    ("LSTM", (4, 0), {}),
    ("LSTM", (4, -2), {}),
    ("LSTM", (4, 8), dict(num_layers=1.5)),
    ("GRU", (4, 8), dict(proj_size=2)),
    ("GRU", (4, 8), dict(dropout=2.0)),
    ("GRU", (4, 8), dict(num_layers=-1)),
    ("RNN", (4, 8), dict(nonlinearity="sigmoid")),
    ("RNN", (4, 8), dict(proj_size=2)),
    # A misspelt keyword: Python's words, which name the class whose __init__ refused it.
    ("LSTM", (4, 8), dict(batchfirst=True)),
    ("GRU", (4, 8), dict(batchfirst=True)),
    ("RNN", (4, 8), dict(batchfirst=True)),
    ("LSTMCell", (4, 8), dict(batchfirst=True)),
    ("GRUCell", (4, 8), dict(batchfirst=True)),
    ("RNNCell", (4, 8), dict(batchfirst=True)),
    # One positional argument too many.
    ("LSTM", (4, 8, 1, True, False, 0.0, False, 0, None, None, 5), {}),
    ("GRU", (4, 8, 1, True, False, 0.0, False, 0, None, None, 5), {}),
    ("LSTMCell", (4, 8, True, None, None, 5), {}),
]


@pytest.mark.parametrize("name,args,kwargs", CTOR_CASES, ids=[f"{c[0]}-{c[2]}-{c[1][1]}-{len(c[1])}" for c in CTOR_CASES])
def test_constructor_errors_match_torch_nn(name, args, kwargs):
    assert_same_error(lambda: getattr(nn, name)(*args, **kwargs), lambda: getattr(fusedrnn, name)(*args, **kwargs))


# ------------------------------------------------------------------ module forward

def _pair(name, *args, **kwargs):
    torch.manual_seed(0)
    ref = getattr(nn, name)(*args, **kwargs)
    return ref, getattr(fusedrnn, name).from_torch(ref)


def _hx(name, layers, N, H, P=None):
    h = torch.zeros(layers, N, P or H)
    return (h, torch.zeros(layers, N, H)) if name == "LSTM" else h


SEQ = ["LSTM", "GRU", "RNN"]
FORWARD_CASES = {
    "4-D input": lambda name: (torch.randn(2, 3, 4, 5), None),
    "1-D input": lambda name: (torch.randn(5), None),
    "wrong input size": lambda name: (torch.randn(6, 3, 5), None),
    "hx batch mismatch": lambda name: (torch.randn(6, 3, 4), _hx(name, 1, 2, 8)),
    "hx hidden size": lambda name: (torch.randn(6, 3, 4), _hx(name, 1, 3, 7)),
    "hx layers": lambda name: (torch.randn(6, 3, 4), _hx(name, 2, 3, 8)),
    "unbatched input, batched hx": lambda name: (torch.randn(6, 4), _hx(name, 1, 3, 8)),
    "batched input, unbatched hx": lambda name: (
        torch.randn(6, 3, 4), (torch.zeros(1, 8), torch.zeros(1, 8)) if name == "LSTM" else torch.zeros(1, 8)),
    "input dtype": lambda name: (torch.randn(6, 3, 4, dtype=torch.float64), None),
    "integer input": lambda name: (torch.ones(6, 3, 4, dtype=torch.int64), None),
}


@pytest.mark.parametrize("case", list(FORWARD_CASES))
@pytest.mark.parametrize("name", SEQ)
def test_forward_errors_match_torch_nn(name, case):
    ref, fused = _pair(name, 4, 8)
    x, hx = FORWARD_CASES[case](name)
    assert_same_error(lambda: ref(x, hx), lambda: fused(x, hx))


@pytest.mark.parametrize("name", SEQ)
def test_hx_dtype_mismatch_is_a_clear_error(name):
    # torch.nn raises too, but with words from deep inside its kernels
    # ("get_mkldnn_dtype: unsupported data type", "mat1 and mat2 must have the
    # same dtype"); fused names the state and both dtypes.
    ref, fused = _pair(name, 4, 8)
    x = torch.randn(6, 3, 4)
    h = torch.zeros(1, 3, 8, dtype=torch.float64)
    hx = (h, torch.zeros(1, 3, 8)) if name == "LSTM" else h
    assert _raised(lambda: ref(x, hx))[0] is RuntimeError
    with pytest.raises(RuntimeError, match=r"h0 must have the dtype of input \(Float\), got Double"):
        fused(x, hx)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                                   torch.complex64], ids=["f64", "f16", "bf16", "i64", "i32", "c64"])
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_hx_dtype_mismatch_matches_torch_nn(name, dtype, bias):
    """ATen words a dtype mismatch as addmm does with biases, as mm does without."""
    ref, fused = _pair(name, 4, 8, bias=bias)
    x = torch.randn(3, 4)
    h = torch.zeros(3, 8, dtype=dtype)
    hx = (h, torch.zeros(3, 8)) if name == "LSTMCell" else h
    assert_same_error(lambda: ref(x, hx), lambda: fused(x, hx))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int64], ids=["f64", "f16", "i64"])
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_input_dtype_mismatch_matches_torch_nn(name, dtype, bias):
    ref, fused = _pair(name, 4, 8, bias=bias)
    x = torch.ones(3, 4, dtype=dtype)
    assert_same_error(lambda: ref(x), lambda: fused(x))


def test_lstm_projection_hx_errors_match_torch_nn():
    ref, fused = _pair("LSTM", 4, 8, proj_size=3)
    x = torch.randn(5, 2, 4)
    for hx in [(torch.zeros(1, 2, 8), torch.zeros(1, 2, 8)), (torch.zeros(1, 2, 3), torch.zeros(1, 2, 3))]:
        assert_same_error(lambda: ref(x, hx), lambda: fused(x, hx))


def test_packed_hx_batch_mismatch_matches_torch_nn():
    ref, fused = _pair("GRU", 4, 8)
    x = pack_padded_sequence(torch.randn(5, 3, 4), torch.tensor([5, 3, 2]))
    hx = torch.zeros(1, 2, 8)
    assert_same_error(lambda: ref(x, hx), lambda: fused(x, hx))


CELL_CASES = {
    "3-D input": lambda name: (torch.randn(2, 3, 4), None),
    "wrong input size": lambda name: (torch.randn(3, 5), None),
    "hx batch mismatch": lambda name: (
        torch.randn(3, 4), (torch.zeros(2, 8), torch.zeros(2, 8)) if name == "LSTMCell" else torch.zeros(2, 8)),
    "hx hidden size": lambda name: (
        torch.randn(3, 4), (torch.zeros(3, 7), torch.zeros(3, 7)) if name == "LSTMCell" else torch.zeros(3, 7)),
    "3-D hx": lambda name: (
        torch.randn(3, 4), (torch.zeros(1, 3, 8), torch.zeros(1, 3, 8)) if name == "LSTMCell"
        else torch.zeros(1, 3, 8)),
    "input dtype": lambda name: (torch.randn(3, 4, dtype=torch.float64), None),
}


@pytest.mark.parametrize("case", list(CELL_CASES))
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_errors_match_torch_nn(name, case):
    ref, fused = _pair(name, 4, 8)
    x, hx = CELL_CASES[case](name)
    assert_same_error(lambda: ref(x, hx), lambda: fused(x, hx))
    # The cells put torch.nn's words on what their operator rejected: the
    # user is shown that error alone, not chained to the operator's.
    with pytest.raises(Exception) as raised:
        fused(x, hx)
    assert raised.value.__context__ is None or raised.value.__suppress_context__


@pytest.mark.parametrize("case", ["wrong input size", "hx batch mismatch", "hx hidden size", "input dtype"])
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_errors_under_compile_match_torch_nn(name, case):
    """torch.compile traces a cell's operator without running it: the checks
    that otherwise wait for the operator to raise run before it there."""
    ref, fused = _pair(name, 4, 8)
    x, hx = CELL_CASES[case](name)
    compiled = torch.compile(fused, backend="eager")
    try:
        assert_same_error(lambda: ref(x, hx), lambda: compiled(x, hx))
    finally:
        torch._dynamo.reset()


LSTM_STATE_CASES = {
    "three states": lambda N: (torch.zeros(1, N, 8),) * 3,
    "one state": lambda N: (torch.zeros(1, N, 8),),
    "stacked tensor": lambda N: torch.zeros(2, 1, N, 8),
}


@pytest.mark.parametrize("case", list(LSTM_STATE_CASES))
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_lstm_hidden_state_count_matches_torch_nn(case, packed):
    ref, fused = _pair("LSTM", 4, 8)
    x = torch.randn(5, 3, 4)
    if packed:
        x = pack_padded_sequence(x, torch.tensor([5, 3, 2]))
    hx = LSTM_STATE_CASES[case](3)
    want_type, want_msg = _raised(lambda: ref(x, hx))
    if want_type is TypeError:
        # torch.nn's words list every overload of _VF.lstm; fused names the argument.
        with pytest.raises(TypeError, match=r"lstm\(\): argument 'hx' \(position 2\) must be tuple of Tensors, not Tensor"):
            fused(x, hx)
    else:
        assert_same_error(lambda: ref(x, hx), lambda: fused(x, hx))


@pytest.mark.parametrize("hx", [
    (torch.zeros(3, 8),) * 3, (torch.zeros(3, 8),), torch.zeros(2, 3, 8),
], ids=["three states", "one state", "stacked tensor"])
def test_lstm_cell_hidden_state_count_matches_torch_nn(hx):
    ref, fused = _pair("LSTMCell", 4, 8)
    x = torch.randn(3, 4)
    assert_same_error(lambda: ref(x, hx), lambda: fused(x, hx))


@pytest.mark.parametrize("name", ["GRUCell", "RNNCell"])
def test_cell_integer_input_matches_torch_nn(name):
    ref, fused = _pair(name, 4, 8)
    x = torch.ones(3, 4, dtype=torch.int64)
    assert_same_error(lambda: ref(x), lambda: fused(x))


@pytest.mark.parametrize("case", ["parameters", "LSTM hx", "GRU hx"])
def test_device_mismatch_matches_torch_nn(case):
    """Meta tensors stand in for another device here: nn raises ATen's device
    check; fused must too, not run the meta (shape-only) kernels and return
    uninitialised memory."""
    x = torch.randn(4, 1, 2)
    if case == "parameters":
        ref, fused = nn.LSTM(2, 3, device="meta"), fusedrnn.LSTM(2, 3, device="meta")
        assert_same_error(lambda: ref(x), lambda: fused(x))
        return
    mode = case.split()[0]
    ref, fused = _pair(mode, 2, 3)
    h = torch.zeros(1, 1, 3, device="meta")
    hx = (h, h) if mode == "LSTM" else h
    assert_same_error(lambda: ref(x, hx), lambda: fused(x, hx))


@pytest.mark.parametrize("name, kw, attr", [
    ("LSTM", dict(num_layers=2), "bias_hh_l1"),
    ("LSTM", dict(proj_size=2, bidirectional=True), "weight_hr_l0_reverse"),
    ("GRU", dict(bias=False), "weight_hh_l0"),
    ("RNN", {}, "bias_ih_l0"),
])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_a_weight_set_to_none_matches_torch_nn(name, kw, attr, packed):
    """A module whose configuration has a weight, set to None: torch.nn's error,
    not a forward without it."""
    ref = getattr(nn, name)(3, 4, **kw)
    fused = getattr(fusedrnn, name).from_torch(ref)
    for m in (ref, fused):
        setattr(m, attr, None)
    x = torch.randn(5, 2, 3)
    if packed:
        x = pack_padded_sequence(x, torch.tensor([5, 3]))
    assert_same_error(lambda: ref(x), lambda: fused(x))


@pytest.mark.parametrize("missing", [0, 1])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_lstm_state_none_matches_torch_nn(missing, packed):
    ref = nn.LSTM(3, 4)
    fused = fusedrnn.LSTM.from_torch(ref)
    x = torch.randn(5, 2, 3)
    if packed:
        x = pack_padded_sequence(x, torch.tensor([5, 3]))
    hx = [torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)]
    hx[missing] = None
    assert_same_error(lambda: ref(x, tuple(hx)), lambda: fused(x, tuple(hx)))


def test_lstm_hx_as_a_list_works_as_in_torch_nn():
    ref, fused = _pair("LSTM", 3, 4)
    x, h = torch.randn(5, 2, 3), torch.randn(1, 2, 4)
    for a, b in zip(ref(x, [h, h])[1], fused(x, [h, h])[1]):
        torch.testing.assert_close(b, a)


def test_lstm_hx_as_a_list_with_an_unsorted_packed_sequence_works_as_in_torch_nn():
    """The states of an unsorted PackedSequence are permuted into its sorted
    order and back: a list (h0, c0) as well as a tuple."""
    from torch.nn.utils.rnn import pack_sequence

    ref, fused = _pair("LSTM", 3, 4)
    x = pack_sequence([torch.randn(2, 3), torch.randn(4, 3), torch.randn(3, 3)], enforce_sorted=False)
    hx = [torch.randn(1, 3, 4), torch.randn(1, 3, 4)]
    (want_out, want_hc), (got_out, got_hc) = ref(x, hx), fused(x, hx)
    torch.testing.assert_close(got_out.data, want_out.data)
    for a, b in zip(want_hc, got_hc):
        torch.testing.assert_close(b, a)
    perm = torch.tensor([2, 0, 1])
    for a, b in zip(ref.permute_hidden(hx, perm), fused.permute_hidden(hx, perm)):
        assert torch.equal(b, a)


@pytest.mark.parametrize("kind", [tuple, list])
@pytest.mark.parametrize("name", ["GRU", "RNN"])
def test_two_states_for_a_one_state_module_with_an_unsorted_packed_sequence_match_torch_nn(name, kind):
    from torch.nn.utils.rnn import pack_sequence

    ref, fused = _pair(name, 3, 4)
    x = pack_sequence([torch.randn(2, 3), torch.randn(4, 3), torch.randn(3, 3)], enforce_sorted=False)
    hx = kind([torch.randn(1, 3, 4), torch.randn(1, 3, 4)])
    assert_same_error(lambda: ref(x, hx), lambda: fused(x, hx))
    assert_same_error(lambda: ref.permute_hidden(hx, torch.tensor([2, 0, 1])),
                      lambda: fused.permute_hidden(hx, torch.tensor([2, 0, 1])))


@pytest.mark.parametrize("p", [-0.5, 1.5])
@pytest.mark.parametrize("name", SEQ)
def test_dropout_set_out_of_range_after_construction_matches_torch_nn(name, p):
    """torch.nn checks the probability where it applies dropout, between the
    layers of a stack in training; in eval mode it runs. Scripted, the stack
    raises the same words."""
    from helpers import script, script_holder

    ref, fused = _pair(name, 3, 4, num_layers=2)
    ref.dropout = fused.dropout = p
    x = torch.randn(5, 2, 3)
    assert_same_error(lambda: ref(x), lambda: fused(x))
    with pytest.raises(RuntimeError, match=f"dropout probability has to be between 0 and 1, but got {p}"):
        script(script_holder(fused, False))(x)
    ref.eval()
    fused.eval()
    torch.testing.assert_close(fused(x)[0], ref(x)[0])


STRUCTURE_CHANGES = [("LSTM", "num_layers", 3), ("LSTM", "num_layers", 1), ("LSTM", "bias", False),
                     ("LSTM", "bidirectional", True), ("LSTM", "proj_size", 2), ("LSTM", "peephole", True),
                     ("LSTM", "coupled_gates", True), ("GRU", "num_layers", 1), ("GRU", "bias", False),
                     ("RNN", "bidirectional", True), ("RNN", "num_layers", 3)]


@pytest.mark.parametrize("scripted", [False, True], ids=["eager", "script"])
@pytest.mark.parametrize("name,attr,value", STRUCTURE_CHANGES, ids=[f"{n}-{a}-{v}" for n, a, v in STRUCTURE_CHANGES])
def test_structure_set_after_construction_is_refused(name, attr, value, scripted):
    """The attributes that decide which weights a module has cannot change
    after it is built: torch.nn raises its own errors for some and runs on its
    weight list for others; fusedrnn refuses them all by name, when called and
    when scripted."""
    from helpers import script, script_holder

    m = getattr(fusedrnn, name)(3, 4, num_layers=2)
    before = getattr(m, attr)
    setattr(m, attr, value)
    with pytest.raises(RuntimeError) as info:
        if scripted:
            script(script_holder(m, False))
        else:
            m(torch.randn(5, 2, 3))
    assert str(info.value) == (f"{name}: its weights were made for {attr}={before!r} (now {value!r}); these "
                               "attributes cannot change after construction, build a new module instead")


def test_structure_check_survives_pickling_and_stays_out_of_torch_twins():
    """A module saved and loaded keeps the record its attributes are checked
    against; its torch.nn twin does not take the record over."""
    import io

    m = fusedrnn.LSTM(3, 4, num_layers=2)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    loaded.num_layers = 1
    with pytest.raises(RuntimeError, match="its weights were made for num_layers=2"):
        loaded(torch.randn(5, 2, 3))
    state = dict(m.__dict__)
    del state["_structure"]
    old = fusedrnn.LSTM.__new__(fusedrnn.LSTM)
    old.__setstate__(state)
    old.bias = False
    with pytest.raises(RuntimeError, match="its weights were made for bias=True"):
        old(torch.randn(5, 2, 3))
    assert "_structure" not in m.to_torch().__dict__


def test_reset_after_may_change_after_construction():
    """Both GRU variants have the same weights: switching one module between
    them runs the other equations (checked against the reference)."""
    m = fusedrnn.GRU(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    m.reset_after = False
    want = fusedrnn.reference.forward(m, x)[0]
    torch.testing.assert_close(m(x)[0], want)


@pytest.mark.parametrize("name,flag", [("LSTM", "peephole"), ("LSTM", "coupled_gates"), ("GRU", "reset_after"),
                                       ("LSTMCell", "peephole"), ("LSTMCell", "coupled_gates"),
                                       ("GRUCell", "reset_after")])
@pytest.mark.parametrize("value", [None, "False", 1])
def test_variant_flags_must_be_bool(name, flag, value):
    """As torch.nn checks bias and batch_first: a None or a string would
    otherwise select a variant silently."""
    with pytest.raises(TypeError) as info:
        getattr(fusedrnn, name)(3, 4, **{flag: value})
    assert str(info.value) == f"{flag} should be of type bool, got: {type(value).__name__}"


def test_rnn_cell_bad_nonlinearity_matches_torch_nn():
    ref, fused = _pair("RNNCell", 4, 8)
    ref.nonlinearity = fused.nonlinearity = "gelu"
    x = torch.randn(3, 4)
    assert_same_error(lambda: ref(x), lambda: fused(x))


# ----------------------------------------------------------------- operators

H, C, N, T = 4, 3, 2, 5


def _lstm(x=None, bs=None, h0=None, c0=None, w_ih=None, w_hh=None, b_ih=None, b_hh=None, w_ch=None,
          w_hr=None, coupled=False):
    G = 3 if coupled else 4
    x = torch.randn(T, N, C) if x is None else x
    h0 = torch.zeros(N, H) if h0 is None else h0
    c0 = torch.zeros(N, H) if c0 is None else c0
    w_ih = torch.randn(G * H, C) if w_ih is None else w_ih
    w_hh = torch.randn(G * H, H) if w_hh is None else w_hh
    return lambda: ops.lstm_forward(x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled, False, True)


def _gru(x=None, bs=None, h0=None, w_ih=None, w_hh=None, b_ih=None):
    x = torch.randn(T, N, C) if x is None else x
    h0 = torch.zeros(N, H) if h0 is None else h0
    w_ih = torch.randn(3 * H, C) if w_ih is None else w_ih
    w_hh = torch.randn(3 * H, H) if w_hh is None else w_hh
    return lambda: ops.gru_forward(x, bs, h0, w_ih, w_hh, b_ih, None, True, False, True)


def _rnn(x=None, bs=None, h0=None, w_ih=None, w_hh=None):
    x = torch.randn(T, N, C) if x is None else x
    h0 = torch.zeros(N, H) if h0 is None else h0
    w_ih = torch.randn(H, C) if w_ih is None else w_ih
    w_hh = torch.randn(H, H) if w_hh is None else w_hh
    return lambda: ops.rnn_forward(x, bs, h0, w_ih, w_hh, None, None, False, False)


def _cells():
    x, h = torch.randn(N, C), torch.zeros(N, H)
    return {
        "lstm_cell": lambda **k: (lambda: ops.lstm_cell_forward(
            k.get("x", x), k.get("h", h), k.get("c", h), k.get("w_ih", torch.randn(4 * H, C)),
            torch.randn(4 * H, H), None, None, None, False, True)),
        "gru_cell": lambda **k: (lambda: ops.gru_cell_forward(
            k.get("x", x), k.get("h", h), k.get("w_ih", torch.randn(3 * H, C)), torch.randn(3 * H, H),
            None, None, True, True)),
        "rnn_cell": lambda **k: (lambda: ops.rnn_cell_forward(
            k.get("x", x), k.get("h", h), k.get("w_ih", torch.randn(H, C)), torch.randn(H, H), None, None,
            False)),
    }


def _backward_call(op, **bad):
    """A valid backward call of `op` (from a real forward), with `bad` replacing arguments."""
    x, h0 = torch.randn(T, N, C), torch.zeros(N, H)
    if op in ("gru_cell", "rnn_cell"):
        G = 3 if op == "gru_cell" else 1
        w_ih, w_hh = torch.randn(G * H, C), torch.randn(G * H, H)
        x1 = x[0]
        if op == "gru_cell":
            h, gates, states = ops.gru_cell_forward(x1, h0, w_ih, w_hh, None, None, True, True)
            extra = dict(h=h, gates=gates, states=states, reset_after=True)
        else:
            h = ops.rnn_cell_forward(x1, h0, w_ih, w_hh, None, None, False)
            extra = dict(h=h, relu=False)
        a = dict(grad_h=torch.ones_like(h), input=x1, hx=h0, w_ih=w_ih, w_hh=w_hh, b_ih=None, b_hh=None, **extra,
                 need_input_grad=True, need_weight_grads=True)
        a.update(bad)
        return lambda: getattr(ops, f"{op}_backward")(*a.values())
    if op == "lstm":
        w_ih, w_hh = torch.randn(4 * H, C), torch.randn(4 * H, H)
        c0 = torch.zeros(N, H)
        y, hn, cn, gates, states, proj_in = ops.lstm_forward(x, None, h0, c0, w_ih, w_hh, None, None, None, None,
                                                             False, False, True)
        a = dict(grad_output=torch.ones_like(y), grad_h_n=None, grad_c_n=None, input=x, batch_sizes=None, h0=h0,
                 c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=None, b_hh=None, w_ch=None, w_hr=None, output=y, gates=gates,
                 states=states, proj_in=proj_in, coupled=False, reverse=False, need_input_grad=True,
                 need_weight_grads=True)
        a.update(bad)
        return lambda: ops.lstm_backward(*a.values())
    if op == "lstm_cell":
        w_ih, w_hh = torch.randn(4 * H, C), torch.randn(4 * H, H)
        x1, c0 = x[0], torch.zeros(N, H)
        h, c, gates = ops.lstm_cell_forward(x1, h0, c0, w_ih, w_hh, None, None, None, False, True)
        a = dict(grad_h=torch.ones_like(h), grad_c=None, input=x1, hx=h0, cx=c0, w_ih=w_ih, w_hh=w_hh, b_ih=None,
                 b_hh=None, w_ch=None, h=h, c=c, gates=gates, coupled=False, need_input_grad=True,
                 need_weight_grads=True)
        a.update(bad)
        return lambda: ops.lstm_cell_backward(*a.values())
    if op == "gru":
        w_ih, w_hh = torch.randn(3 * H, C), torch.randn(3 * H, H)
        y, hn, gates, states = ops.gru_forward(x, None, h0, w_ih, w_hh, None, None, True, False, True)
        a = dict(grad_output=torch.ones_like(y), grad_h_n=None, input=x, batch_sizes=None, h0=h0, w_ih=w_ih,
                 w_hh=w_hh, b_ih=None, b_hh=None, output=y, gates=gates, states=states, reset_after=True,
                 reverse=False, need_input_grad=True, need_weight_grads=True)
        a.update(bad)
        return lambda: ops.gru_backward(*a.values())
    w_ih, w_hh = torch.randn(H, C), torch.randn(H, H)
    y, hn = ops.rnn_forward(x, None, h0, w_ih, w_hh, None, None, False, False)
    a = dict(grad_output=torch.ones_like(y), grad_h_n=None, input=x, batch_sizes=None, h0=h0, w_ih=w_ih, w_hh=w_hh,
             b_ih=None, b_hh=None, output=y, relu=False, reverse=False, need_input_grad=True, need_weight_grads=True)
    a.update(bad)
    return lambda: ops.rnn_backward(*a.values())


cells = _cells()
BAD_CALLS = [
    # (id, call, words the message must contain)
    ("lstm int input", _lstm(x=torch.ones(T, N, C, dtype=torch.int64)), ["input", "float32", "Long"]),
    ("lstm 2-D input without batch_sizes", _lstm(x=torch.randn(T, C)), ["input", "3 dimensions", "[5, 3]"]),
    ("lstm 3-D input with batch_sizes", _lstm(bs=torch.tensor([2, 2, 1])), ["input", "2 dimensions", "[5, 2, 3]"]),
    ("lstm float batch_sizes", _lstm(x=torch.randn(5, C), bs=torch.tensor([3.0, 2.0]), h0=torch.zeros(3, H),
                                     c0=torch.zeros(3, H)), ["batch_sizes", "int64", "Float"]),
    ("lstm increasing batch_sizes", _lstm(x=torch.randn(5, C), bs=torch.tensor([2, 3])),
     ["batch_sizes", "non-increasing", "2 then 3"]),
    ("lstm batch_sizes sum", _lstm(x=torch.randn(6, C), bs=torch.tensor([3, 2]), h0=torch.zeros(3, H),
                                   c0=torch.zeros(3, H)), ["batch_sizes sum to 5", "6 rows"]),
    ("lstm zero batch size", _lstm(x=torch.randn(3, C), bs=torch.tensor([3, 0]), h0=torch.zeros(3, H),
                                   c0=torch.zeros(3, H)), ["batch_sizes", "positive", "got 0"]),
    ("lstm empty batch_sizes", _lstm(x=torch.randn(0, C), bs=torch.tensor([], dtype=torch.int64)),
     ["batch_sizes", "non-empty", "[0]"]),
    ("lstm 2-D batch_sizes", _lstm(x=torch.randn(2, C), bs=torch.tensor([[2]])), ["batch_sizes", "1-D", "[1, 1]"]),
    ("lstm w_ih rows", _lstm(w_ih=torch.randn(4 * H + 1, C)), ["w_ih", "multiple of 4", "[17, 3]"]),
    ("lstm w_ih columns", _lstm(w_ih=torch.randn(4 * H, C + 1)), ["w_ih", "[16, 3]", "[16, 4]"]),
    ("lstm w_ih 3-D", _lstm(w_ih=torch.randn(1, 4 * H, C)), ["w_ih", "2-D", "[1, 16, 3]"]),
    ("lstm w_hh shape", _lstm(w_hh=torch.randn(4 * H, H + 1)), ["w_hh", "[16, 4]", "[16, 5]"]),
    ("lstm h0 shape", _lstm(h0=torch.zeros(N + 1, H)), ["h0", "[2, 4]", "[3, 4]"]),
    ("lstm c0 shape", _lstm(c0=torch.zeros(N, H + 1)), ["c0", "[2, 4]", "[2, 5]"]),
    ("lstm bias shape", _lstm(b_ih=torch.zeros(4 * H + 1)), ["b_ih", "[16]", "[17]"]),
    ("lstm dtype mismatch", _lstm(w_hh=torch.randn(4 * H, H, dtype=torch.float64)), ["w_hh", "Float", "Double"]),
    ("lstm h0 dtype", _lstm(h0=torch.zeros(N, H, dtype=torch.float64)), ["h0", "Float", "Double"]),
    ("lstm peephole shape", _lstm(w_ch=torch.zeros(3 * H + 1)), ["w_ch", "[12]", "[13]"]),
    ("lstm coupled peephole shape", _lstm(w_ch=torch.zeros(3 * H), coupled=True), ["w_ch", "[8]", "[12]"]),
    ("lstm projection shape", _lstm(w_hr=torch.zeros(2, H + 1)), ["w_hr", "[2, 4]", "[2, 5]"]),
    ("lstm projection h0", _lstm(w_hr=torch.zeros(2, H)), ["w_hh", "[16, 2]", "[16, 4]"]),
    ("lstm sizes overflow", _lstm(x=torch.randn(1, 1, C).expand(2**31, 2**30, C), h0=torch.zeros(1, H).expand(2**30, H),
                                  c0=torch.zeros(1, H).expand(2**30, H)), ["overflow"]),
    ("gru w_ih rows", _gru(w_ih=torch.randn(4 * H, C)), ["gru_forward", "w_ih", "[16, 3]"]),
    ("gru bias shape", _gru(b_ih=torch.zeros(3 * H - 1)), ["gru_forward", "b_ih", "[12]", "[11]"]),
    ("gru h0 shape", _gru(h0=torch.zeros(N, H + 2)), ["gru_forward", "h0", "[2, 4]", "[2, 6]"]),
    ("gru increasing batch_sizes", _gru(x=torch.randn(4, C), bs=torch.tensor([1, 3])),
     ["gru_forward", "non-increasing", "1 then 3"]),
    ("rnn half-empty w_ih", _rnn(w_ih=torch.randn(0, C)), ["rnn_forward", "w_ih", "[0, 3]"]),
    ("rnn w_hh shape", _rnn(w_hh=torch.randn(H, H + 1)), ["rnn_forward", "w_hh", "[4, 5]"]),
    ("rnn input 4-D", _rnn(x=torch.randn(T, N, C, 1)), ["rnn_forward", "3 dimensions", "[5, 2, 3, 1]"]),
    ("lstm_cell wrong input size", cells["lstm_cell"](x=torch.randn(N, C + 1)),
     ["lstm_cell_forward", "w_ih", "[16, 4]", "[16, 3]"]),
    ("lstm_cell hx shape", cells["lstm_cell"](h=torch.zeros(N + 1, H)), ["lstm_cell_forward", "hx", "[3, 4]"]),
    ("lstm_cell cx shape", cells["lstm_cell"](c=torch.zeros(N, H + 1)), ["lstm_cell_forward", "cx", "[2, 5]"]),
    ("lstm_cell 1-D input", cells["lstm_cell"](x=torch.randn(C)), ["lstm_cell_forward", "input", "2 dimensions",
                                                                     "[N, C]", "[3]"]),
    ("gru_cell 3-D hx", cells["gru_cell"](h=torch.zeros(1, N, H)), ["gru_cell_forward", "hx", "2 dimensions",
                                                                     "[1, 2, 4]"]),
    ("lstm batch_sizes sum overflow", _lstm(x=torch.randn(5, C), bs=torch.tensor([2**62, 2**62, 5])),
     ["batch_sizes", "overflows int64", "step 1"]),
    ("gru_cell w_ih shape", cells["gru_cell"](w_ih=torch.randn(3 * H, C + 2)), ["gru_cell_forward", "w_ih", "[12, 5]"]),
    ("rnn_cell int input", cells["rnn_cell"](x=torch.ones(N, C, dtype=torch.int32)), ["rnn_cell_forward", "Int"]),
    ("lstm_backward grad_output shape", _backward_call("lstm", grad_output=torch.ones(T, N, H + 1)),
     ["lstm_backward", "grad_output", "[5, 2, 4]", "[5, 2, 5]"]),
    ("lstm_backward gates shape", _backward_call("lstm", gates=torch.zeros(3, 3)),
     ["lstm_backward", "gates", "[3, 3]"]),
    ("lstm_backward grad_c_n shape", _backward_call("lstm", grad_c_n=torch.zeros(N, H + 3)),
     ["lstm_backward", "grad_c_n", "[2, 7]"]),
    ("gru_backward states dtype", _backward_call("gru", states=torch.zeros(T * N, H, dtype=torch.float64)),
     ["gru_backward", "states", "Double"]),
    ("lstm_backward states dtype", _backward_call("lstm", states=torch.zeros(T * N, H, dtype=torch.float64)),
     ["lstm_backward", "states must have the dtype of input (Float), got Double"]),
    ("lstm_cell_backward c dtype", _backward_call("lstm_cell", c=torch.zeros(N, H, dtype=torch.float64)),
     ["lstm_cell_backward", "c must have the dtype of input (Float), got Double"]),
    ("lstm_cell_backward c shape", _backward_call("lstm_cell", c=torch.zeros(N, H + 1)),
     ["lstm_cell_backward", "c must have shape [2, 4], got [2, 5]"]),
    ("gru_backward output shape", _backward_call("gru", output=torch.zeros(T, N + 1, H)),
     ["gru_backward", "output", "[5, 3, 4]"]),
    ("rnn_backward grad_h_n shape", _backward_call("rnn", grad_h_n=torch.zeros(N + 1, H)),
     ["rnn_backward", "grad_h_n", "[3, 4]"]),
    ("packed_batch_size float", lambda: ops.packed_batch_size(torch.tensor([2.0])), ["batch_sizes"]),
    ("lstm weight on meta", _lstm(w_hh=torch.randn(4 * H, H, device="meta")), ["w_hh", "meta", "cpu"]),
    ("rnn batch_sizes on meta", _rnn(x=torch.randn(5, C), bs=torch.tensor([3, 2], device="meta"),
                                     h0=torch.zeros(3, H)), ["batch_sizes", "CPU", "meta"]),
    ("gru_cell hx on meta", cells["gru_cell"](h=torch.zeros(N, H, device="meta")), ["gru_cell_forward", "hx", "meta"]),
    ("lstm_backward input on meta", _backward_call("lstm", input=torch.randn(T, N, C, device="meta")),
     ["lstm_backward", "meta"]),
    ("rnn_cell_backward grad_h batch", _backward_call("rnn_cell", grad_h=torch.ones(N + 1, H)),
     ["rnn_cell_backward: grad_h must have shape [2, 4], got [3, 4]"]),
    ("gru_cell_backward h shape", _backward_call("gru_cell", h=torch.ones(N, H + 1)),
     ["gru_cell_backward: h must have shape [2, 4], got [2, 5]"]),
    ("lstm_cell_backward 3-D input", _backward_call("lstm_cell", input=torch.randn(1, N, C)),
     ["lstm_cell_backward: input must have 2 dimensions [N, C], got 3 (shape [1, 2, 3])"]),
    ("rnn_cell_backward 1-D grad_h", _backward_call("rnn_cell", grad_h=torch.ones(H)),
     ["rnn_cell_backward: grad_h must have 2 dimensions [N, H], got 1 (shape [4])"]),
    ("gru_cell_backward 3-D h", _backward_call("gru_cell", h=torch.ones(1, N, H)),
     ["gru_cell_backward: h must have 2 dimensions [N, H], got 3"]),
    ("lstm_cell cx None", cells["lstm_cell"](c=None), ["lstm_cell_forward: cx is required (got None)"]),
    ("gru_cell hx None", cells["gru_cell"](h=None), ["gru_cell_forward: hx is required (got None)"]),
    ("rnn_cell input None", cells["rnn_cell"](x=None), ["rnn_cell_forward: input is required (got None)"]),
    ("lstm c0 None", lambda: ops.lstm_forward(torch.randn(T, N, C), None, torch.zeros(N, H), None,
                                             torch.randn(4 * H, C), torch.randn(4 * H, H), None, None, None, None,
                                             False, False, False), ["lstm_forward: c0 is required (got None)"]),
    ("gru_backward states None", _backward_call("gru", states=None), ["gru_backward: states is required (got None)"]),
    ("rnn_backward output None", _backward_call("rnn", output=None), ["rnn_backward: output is required (got None)"]),
    ("lstm_cell_backward grad_h None", _backward_call("lstm_cell", grad_h=None),
     ["lstm_cell_backward: grad_h is required (got None)"]),
]


@pytest.mark.parametrize("call,words", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_operator_rejects_bad_call_with_the_values(call, words):
    with pytest.raises(RuntimeError) as info:
        call()
    msg = str(info.value).splitlines()[0]
    print(msg)
    assert msg.startswith("fusedrnn::"), f"the message must name the operator: {msg}"
    for w in words:
        assert w in msg, f"{w!r} missing from: {msg}"


def test_operators_accept_empty_sequences_like_torch_nn():
    # Zero steps or zero sequences are valid: the final state is the initial state.
    for x, N_ in [(torch.randn(0, 2, C), 2), (torch.randn(4, 0, C), 0)]:
        h0, c0 = torch.randn(N_, H), torch.randn(N_, H)
        y, hn, cn, *_ = ops.lstm_forward(x, None, h0, c0, torch.randn(4 * H, C), torch.randn(4 * H, H), None, None,
                                         None, None, False, False, False)
        assert y.shape == (x.shape[0], N_, H)
        if x.shape[0] == 0:
            assert torch.equal(hn, h0) and torch.equal(cn, c0)


def test_strided_operands_give_the_contiguous_result():
    torch.manual_seed(0)
    x = torch.randn(T, N, 2 * C)[:, :, ::2]
    w_ih = torch.randn(C, 4 * H).t()
    w_hh = torch.randn(4 * H, H)
    h0, c0 = torch.randn(N, H), torch.randn(N, H)
    assert not x.is_contiguous() and not w_ih.is_contiguous()
    got = ops.lstm_forward(x, None, h0, c0, w_ih, w_hh, None, None, None, None, False, False, False)
    want = ops.lstm_forward(x.contiguous(), None, h0, c0, w_ih.contiguous(), w_hh, None, None, None, None, False,
                            False, False)
    for g, w in zip(got[:3], want[:3]):
        assert torch.equal(g, w)


def test_error_messages_name_values_not_placeholders():
    for _, call, _ in BAD_CALLS:
        try:
            call()
        except RuntimeError as e:
            assert not re.search(r"%[sd]|\{\}", str(e)), str(e)


# ---------------------------------------------- the compositions' door

def _under(how, f, x):
    if how == "grad":
        return torch.func.grad(lambda x: f(x).sum())(x)
    if how == "vmap":
        return torch.func.vmap(f)(x.unsqueeze(0))
    with torch.autograd.forward_ad.dual_level():
        return f(torch.autograd.forward_ad.make_dual(x, torch.ones_like(x)))


def _functional_lstm(bad):
    """fusedrnn.functional.lstm with one argument replaced by `bad`."""
    from fusedrnn import functional as F

    a = dict(h0=torch.zeros(1, N, H), c0=torch.zeros(1, N, H), w_ih=torch.randn(4 * H, C),
             w_hh=torch.randn(4 * H, H), b_ih=None, b_hh=None, w_ch=None, w_hr=None, batch_sizes=None)
    a.update(bad)
    weights = [(a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["w_ch"], a["w_hr"])]
    return lambda x: F.lstm(x, (a["h0"], a["c0"]), weights, 1, batch_sizes=a["batch_sizes"])[0]


COMPOSITE_BAD = {
    "b_ih shape": dict(b_ih=torch.zeros(1)),
    "b_hh 2-D": dict(b_hh=torch.zeros(1, 4 * H)),
    "w_ch length": dict(w_ch=torch.zeros(3)),
    "h0 batch": dict(h0=torch.zeros(1, 1, H)),
    "w_ih dtype": dict(w_ih=torch.randn(4 * H, C, dtype=torch.float64)),
}


@pytest.mark.parametrize("how", ["grad", "vmap", "forward_ad"])
@pytest.mark.parametrize("case", list(COMPOSITE_BAD))
def test_compositions_reject_what_the_operators_reject(case, how):
    """Under functorch transforms and forward AD the functions compute through
    the compositions; a bad call must get the operator's own error there too,
    not broadcast or cast its way to an answer."""
    f = _functional_lstm(COMPOSITE_BAD[case])
    x = torch.randn(T, N, C)
    with pytest.raises(RuntimeError) as plain:
        f(x)
    with pytest.raises(RuntimeError) as composed:
        _under(how, f, x)
    print(str(composed.value).splitlines()[0])
    assert str(composed.value).splitlines()[0] == str(plain.value).splitlines()[0]


@pytest.mark.parametrize("how", ["grad", "forward_ad"])
@pytest.mark.parametrize("sizes", [[2, 3], [3, 0], "meta"], ids=["increasing", "zero", "on meta"])
def test_compositions_reject_bad_batch_sizes(sizes, how):
    bs = torch.tensor([3, 2], device="meta") if sizes == "meta" else torch.tensor(sizes)
    f = _functional_lstm(dict(batch_sizes=bs, h0=torch.zeros(1, 3, H), c0=torch.zeros(1, 3, H)))
    x = torch.randn(5, C)
    with pytest.raises(RuntimeError) as plain:
        f(x)
    with pytest.raises(RuntimeError) as composed:
        _under(how, f, x)
    assert "batch_sizes" in str(plain.value)
    assert str(composed.value).splitlines()[0] == str(plain.value).splitlines()[0]


# ------------------------------------------------ fusedrnn.functional

def _functional_bad_calls():
    from fusedrnn import functional as F

    x, h = torch.randn(T, N, C), torch.zeros(1, N, H)
    lstm_w = [(torch.randn(4 * H, C), torch.randn(4 * H, H))]
    gru_w = [(torch.randn(3 * H, C), torch.randn(3 * H, H))]
    rnn_w = [(torch.randn(H, C), torch.randn(H, H))]
    return {
        "rnn nonlinearity": (lambda: F.rnn(x, h, rnn_w, 1, nonlinearity="RELU"), ValueError,
                             "Unknown nonlinearity 'RELU'. Select from 'tanh' or 'relu'."),
        "rnn_cell nonlinearity": (lambda: F.rnn_cell(x[0], h[0], *rnn_w[0], nonlinearity="gelu"), RuntimeError,
                                  "Unknown nonlinearity: gelu"),
        "negative dropout": (lambda: F.gru(x, h, gru_w, 1, dropout=-0.5, train=True), ValueError,
                             "dropout probability has to be between 0 and 1, but got -0.5"),
        "too few weight tuples": (lambda: F.lstm(x, (h, h), lstm_w, 2), ValueError,
                                  "lstm: expected num_layers * directions = 2 weight tuples, got 1"),
        "bidirectional, one tuple": (lambda: F.gru(x, torch.zeros(2, N, H), gru_w, 1, bidirectional=True),
                                     ValueError, "gru: expected num_layers * directions = 2 weight tuples, got 1"),
        "zero layers": (lambda: F.rnn(x, h, [], 0), ValueError, "rnn: num_layers must be at least 1, got 0"),
        "too many weights": (lambda: F.gru(x, h, [gru_w[0] + (None,) * 4], 1), ValueError,
                             "gru: weight tuple 0 must hold 2 to 4 entries, got 6"),
        "hx layers": (lambda: F.lstm(x, (h, h), lstm_w * 2, 2), RuntimeError,
                      "lstm: the initial states must hold num_layers * directions = 2 layers in their first "
                      "dimension, got shape [1, 2, 4]"),
        "lstm hx not a pair": (lambda: F.lstm(x, h, lstm_w, 1), TypeError, "lstm: hx must be a pair (h0, c0), got Tensor"),
        "gru hx None": (lambda: F.gru(x, None, gru_w, 1), TypeError, "gru: hx must be a Tensor h0, got NoneType"),
        "rnn hx a tuple": (lambda: F.rnn(x, (h,), gru_w, 1), TypeError, "rnn: hx must be a Tensor h0, got tuple"),
    }


@pytest.mark.parametrize("case", list(_functional_bad_calls()))
def test_functional_rejects_bad_stacks(case):
    call, exc, words = _functional_bad_calls()[case]
    with pytest.raises(exc) as info:
        call()
    assert str(info.value) == words


def test_functional_weight_tuples_may_omit_trailing_entries():
    """(w_ih, w_hh) alone means no biases (and for LSTM no peepholes or
    projection), as the full tuple with None there does."""
    from fusedrnn import functional as F

    torch.manual_seed(0)
    x, h = torch.randn(T, N, C), torch.zeros(1, N, H)
    w = (torch.randn(4 * H, C), torch.randn(4 * H, H))
    short = F.lstm(x, (h, h), [w], 1)
    full = F.lstm(x, (h, h), [w + (None,) * 4], 1)
    for a, b in zip(short, full):
        assert torch.equal(a, b)


def test_reference_rejects_an_unknown_nonlinearity():
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        fusedrnn.reference.rnn_cell(torch.randn(N, C), torch.zeros(N, H), torch.randn(H, C), torch.randn(H, H),
                                    nonlinearity="gelu")
