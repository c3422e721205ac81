"""fusedrnn.testing must fail on wrong modules, not only pass on right ones.

Each wrong module is a fused module with one deliberate defect of the kind a
kernel bug produces: a gradient off by a small factor, an output nudged, a
bias gradient dropped, the state of one sequence leaking into another.
"""

import re
import warnings

import pytest
import torch

import fusedrnn
from fusedrnn.testing import assert_matches_reference, gradcheck, gradgradcheck


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, factor):
        ctx.factor = factor
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


class _DropGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g):
        return torch.zeros_like(g)


def _wrong(base, defect):
    class Wrong(base):
        def forward(self, input, hx=None):
            if defect == "grad of input x1.001":
                input = _ScaleGrad.apply(input, 1.001)
            if defect == "grad of bias dropped":
                saved = self.bias_hh_l0
                self._parameters["bias_hh_l0"] = _DropGrad.apply(saved)
                try:
                    return super().forward(input, hx)
                finally:
                    self._parameters["bias_hh_l0"] = saved
            out, h = super().forward(input, hx)
            if defect == "output nudged by 1e-3":
                out = out + 1e-3 * out.detach().sign()
            if defect == "sequences mixed":
                out = out + 1e-2 * out.roll(1, dims=1)
            if defect == "output doubled":
                out = out * 2
            if defect in ("one output NaN", "one output inf"):
                bad = torch.zeros_like(out)
                bad.view(-1)[0] = float("nan" if defect == "one output NaN" else "inf")
                out = out + bad.detach()
            return out, h

    return Wrong


DEFECTS = ["grad of input x1.001", "grad of bias dropped", "output nudged by 1e-3", "sequences mixed"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("defect", DEFECTS)
@pytest.mark.parametrize("base", [fusedrnn.LSTM, fusedrnn.GRU], ids=["LSTM", "GRU"])
def test_assert_matches_reference_catches_a_wrong_module(base, defect, dtype):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 5, dtype=dtype)
    right = base(5, 7, num_layers=2).to(dtype)
    assert_matches_reference(right, x)
    wrong = _wrong(base, defect)(5, 7, num_layers=2).to(dtype)
    wrong.load_state_dict(right.state_dict())
    with pytest.raises(AssertionError) as info:
        assert_matches_reference(wrong, x)
    print(info.value)
    assert "max error" in str(info.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["f16", "f32"])
def test_assert_matches_reference_catches_a_wrong_module_with_small_outputs(dtype):
    """Outputs of at most about 0.03 (weights of at most 0.01), doubled: an error
    as large as the outputs, beyond the rounding floor of 8 units of 1.0 in float16
    (0.0078) and float32. (In bfloat16 that floor, 0.0625, hides it: docs/testing.md.)"""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 5, dtype=dtype)
    right = fusedrnn.GRU(5, 7).to(dtype)
    with torch.no_grad():
        for p in right.parameters():
            p.mul_(0.01 / p.abs().max())
    wrong = _wrong(fusedrnn.GRU, "output doubled")(5, 7).to(dtype)
    wrong.load_state_dict(right.state_dict())
    assert_matches_reference(right, x, check_grads=False)
    with pytest.raises(AssertionError, match="output: max error"):
        assert_matches_reference(wrong, x, check_grads=False)


@pytest.mark.parametrize("defect", ["grad of input x1.001", "grad of bias dropped"])
def test_gradcheck_catches_a_wrong_gradient(defect):
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    right = fusedrnn.GRU(4, 3)
    assert gradcheck(right, x)
    wrong = _wrong(fusedrnn.GRU, defect)(4, 3)
    wrong.load_state_dict(right.state_dict())
    with pytest.raises(AssertionError, match=r"gradcheck: gradient of .* with respect to (input|bias_hh_l0) is wrong"):
        gradcheck(wrong, x)


class _CubicNoSecond(torch.autograd.Function):
    """y + y^3 / 30 with the right first derivative, computed from a detached y:
    its second derivative is lost."""

    @staticmethod
    def forward(ctx, y):
        ctx.save_for_backward(y)
        return y + y.pow(3) / 30

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 + y.detach().pow(2) / 10)


def test_gradgradcheck_catches_a_wrong_second_derivative():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, dtype=torch.float64)

    class Wrong(fusedrnn.GRU):
        def forward(self, input, hx=None):
            out, h = super().forward(input, hx)
            return _CubicNoSecond.apply(out), h

    right = fusedrnn.GRU(4, 3)
    assert gradgradcheck(right, x)
    wrong = Wrong(4, 3)
    wrong.load_state_dict(right.state_dict())
    assert gradcheck(wrong, x)
    with pytest.raises(AssertionError, match=r"gradgradcheck: derivative of the gradient of \S+ with respect to \S+ is wrong"):
        gradgradcheck(wrong, x)


def test_helpers_work_on_torch_nn_modules_and_cells():
    torch.manual_seed(0)
    assert gradcheck(torch.nn.LSTM(3, 4, bidirectional=True), torch.randn(3, 2, 3, dtype=torch.float64))
    assert_matches_reference(torch.nn.GRU(3, 4, num_layers=2), torch.randn(5, 2, 3))
    assert_matches_reference(fusedrnn.LSTMCell(3, 4, peephole=True), torch.randn(2, 3))
    assert gradcheck(fusedrnn.RNNCell(3, 4), torch.randn(2, 3, dtype=torch.float64))
    assert gradgradcheck(torch.nn.GRUCell(3, 2), torch.randn(2, 3, dtype=torch.float64))


class _Encoder(torch.nn.LSTM):
    pass


class _MyCell(torch.nn.LSTMCell):
    pass


class _MyGRUCell(torch.nn.GRUCell):
    pass


class _PeepEncoder(fusedrnn.LSTM):
    pass


class _Half(torch.nn.Module):
    def forward(self, w):
        return w / 2


def test_helpers_and_the_reference_take_subclasses():
    """Modules are told apart by class, not by name: subclasses named freely, and
    the classes torch.nn.utils.parametrize makes, with the hx of their kind (an
    LSTM's given as (h, h): one tensor for both states)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    h = torch.randn(1, 3, 4, dtype=torch.float64)
    enc, peep = _Encoder(3, 4).double(), _PeepEncoder(3, 4, peephole=True).double()
    for m in (enc, peep):
        assert gradcheck(m, x, (h, h))
        assert_matches_reference(m, x, (h, h))
    xc, hc = x[0], h[0]
    cell = _MyCell(3, 4).double()
    torch.testing.assert_close(fusedrnn.reference.cell_forward(cell, xc, (hc, hc)), cell(xc, (hc, hc)))
    assert gradcheck(cell, xc, (hc, hc))
    assert_matches_reference(cell, xc, (hc, hc))
    gru_cell = _MyGRUCell(3, 4).double()
    torch.testing.assert_close(fusedrnn.reference.cell_forward(gru_cell, xc, hc), gru_cell(xc, hc))
    assert gradcheck(gru_cell, xc, hc)
    parametrized = ((torch.nn.RNNCell(3, 4), "weight_hh", xc), (torch.nn.GRU(3, 4), "weight_hh_l0", x))
    for m, weight, inp in parametrized:
        torch.nn.utils.parametrize.register_parametrization(m.double(), weight, _Half())
        assert type(m).__name__.startswith("Parametrized")
        assert gradcheck(m, inp)
        assert_matches_reference(m, inp)


def test_the_reference_and_the_helpers_take_compiled_and_scripted_modules():
    """torch.compile's wrapper and torch.jit.script's modules are told apart by
    what they wrap or were compiled from."""
    torch.manual_seed(0)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    stacked = (torch.nn.GRU(3, 5), fusedrnn.LSTM(3, 5, peephole=True),
               torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True))
    for m in stacked:
        m = m.double()
        compiled, scripted = torch.compile(m, backend="eager"), torch.jit.script(m)
        for wrapped in (compiled, scripted):
            torch.testing.assert_close(fusedrnn.reference.forward(wrapped, x), fusedrnn.reference.forward(m, x))
        assert_matches_reference(compiled, x)
    for m in (torch.nn.LSTMCell(3, 5), fusedrnn.GRUCell(3, 5), torch.nn.RNNCell(3, 5, nonlinearity="relu")):
        m = m.double()
        scripted = torch.jit.script(m)
        torch.testing.assert_close(fusedrnn.reference.cell_forward(scripted, x[0]), m(x[0]))
        assert_matches_reference(torch.compile(m, backend="eager"), x[0])


def test_gradcheck_copies_a_module_holding_weights_its_forward_computed():
    """torch.nn's flat weights under a parametrization, and the weight of the
    hook-based weight_norm, are tensors with a graph after a forward, which
    copy.deepcopy refuses; gradcheck copies them detached."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    param = torch.nn.GRU(3, 4).double()
    torch.nn.utils.parametrizations.weight_norm(param, "weight_hh_l0")
    hooked = fusedrnn.GRU(3, 4).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.nn.utils.weight_norm(hooked, "weight_hh_l0")
    for m in (param, hooked):
        m(x)
        assert gradcheck(m, x)
    assert_matches_reference(param, x)


@pytest.mark.parametrize("helper", [gradcheck, assert_matches_reference], ids=["gradcheck", "assert_matches_reference"])
def test_helpers_reject_what_is_not_a_recurrent_module_or_an_input(helper):
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="expected a recurrent module of fusedrnn or torch.nn .*, got Linear"):
        helper(torch.nn.Linear(4, 5), x)
    with pytest.raises(TypeError, match="input must be a Tensor or a PackedSequence, got list"):
        helper(fusedrnn.GRU(4, 5), x.tolist())


def test_explicit_tolerances_are_applied():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 5)
    m = _wrong(fusedrnn.LSTM, "output nudged by 1e-3")(5, 7)
    assert_matches_reference(m, x, rtol=0.0, atol=2e-3)
    with pytest.raises(AssertionError):
        assert_matches_reference(m, x, rtol=0.0, atol=5e-4)


@pytest.mark.parametrize("tolerances, error, words", [
    (dict(rtol=-1.0), ValueError, "rtol must be non-negative, got -1.0"),
    (dict(atol=float("nan")), ValueError, "atol must be non-negative, got nan"),
    (dict(rtol="1e-3"), TypeError, "rtol must be a number or None, got str"),
    (dict(atol=True), TypeError, "atol must be a number or None, got bool"),
])
def test_a_bad_tolerance_is_refused_not_blamed_on_the_module(tolerances, error, words):
    with pytest.raises(error, match=re.escape(words)):
        assert_matches_reference(fusedrnn.GRU(3, 4), torch.randn(5, 2, 3), **tolerances)


@pytest.mark.parametrize("tolerances", [{}, dict(rtol=1e-3, atol=1e-5), dict(atol=1e-4)],
                         ids=["error ratio", "rtol and atol", "atol"])
@pytest.mark.parametrize("defect", ["one output NaN", "one output inf"])
def test_a_nan_where_the_reference_has_none_fails(tolerances, defect):
    """A NaN or an infinity compares as an infinite error, not as an error that
    no bound exceeds or as the largest float."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 5)
    m = _wrong(fusedrnn.LSTM, defect)(5, 7)
    with pytest.raises(AssertionError, match="output: max error inf"):
        assert_matches_reference(m, x, check_grads=False, **tolerances)


@pytest.mark.parametrize("tolerances", [{}, dict(rtol=1e-3, atol=1e-5)], ids=["error ratio", "rtol and atol"])
def test_nan_where_the_reference_has_it_too_passes(tolerances):
    """A NaN in the input gives NaN in the same places in the module and in the
    reference: a match, as torch.testing's equal_nan has it."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 5)
    x[2, 1, 0] = float("nan")
    assert_matches_reference(fusedrnn.GRU(5, 7), x, **tolerances)


@pytest.mark.parametrize("helper", [gradcheck, assert_matches_reference], ids=["gradcheck", "assert_matches_reference"])
def test_helpers_reject_a_malformed_call(helper):
    """An LSTM's hx must be a pair, another module's a tensor, and the input a
    floating-point tensor (the module itself would refuse an integer one)."""
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    h = torch.zeros(1, 2, 5, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"hx of LSTM must be a pair \(h, c\), got Tensor"):
        helper(fusedrnn.LSTM(4, 5), x, h)
    with pytest.raises(TypeError, match="hx of GRU must be a Tensor, got tuple"):
        helper(fusedrnn.GRU(4, 5), x, (h, h))
    if helper is gradcheck:
        with pytest.raises(TypeError, match="input must be a floating-point tensor, got torch.int64"):
            helper(fusedrnn.GRU(4, 5), torch.ones(3, 2, 4, dtype=torch.int64))
