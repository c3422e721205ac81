"""fusedrnn.testing must fail on wrong modules, not only pass on right ones.

Each wrong module is a fused module with one deliberate defect of the kind a
kernel bug produces: a gradient off by a small factor, an output nudged, a
bias gradient dropped, the state of one sequence leaking into another.
"""

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


def test_explicit_tolerances_are_applied():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 5)
    m = _wrong(fusedrnn.LSTM, "output nudged by 1e-3")(5, 7)
    assert_matches_reference(m, x, rtol=0.0, atol=2e-3)
    with pytest.raises(AssertionError):
        assert_matches_reference(m, x, rtol=0.0, atol=5e-4)


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
