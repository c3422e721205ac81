"""The CUDA standard path: every cell, variant and dtype against the float64
reference (error-ratio oracle), against torch.nn (cuDNN, TF32 off), the saved
tensors against the CPU path, and what a GPU adds: streams, CUDA graphs, device
indices. Marked ``cuda``; skipped where there is no GPU.

``FUSEDRNN_CUDA_EMULATION=1`` (set by tools/cuda_emulate.sh) runs the same tests
on the CPU against a build in which CPU tensors take the CUDA path (the torch
layer and the kernels compiled for the host); the tests that need a real device
skip there.

Legend: T steps, N batch, C input size, H hidden size, P projection size.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Dict, List

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn
from helpers import CELL_VARIANTS, held_bytes, penalty_grads, script, script_holder
from fusedrnn.testing import assert_matches_reference

EMULATION = os.environ.get("FUSEDRNN_CUDA_EMULATION") == "1"
DEVICE = torch.device("cpu") if EMULATION else torch.device("cuda")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not EMULATION and not torch.cuda.is_available(), reason="needs a CUDA device"),
]
real_gpu = pytest.mark.skipif(EMULATION, reason="needs a real CUDA device")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
T, N, C, H, P = 7, 5, 6, 10, 4  # odd sizes on purpose
AUTO_T = 20  # steps enough for FUSEDRNN_CUDA_PATH=auto to take the persistent path at these sizes

SEQ_VARIANTS = {
    "lstm": (fusedrnn.LSTM, {}),
    "lstm_nobias": (fusedrnn.LSTM, {"bias": False}),
    "lstm_peephole": (fusedrnn.LSTM, {"peephole": True}),
    "lstm_coupled": (fusedrnn.LSTM, {"coupled_gates": True}),
    "lstm_peephole_coupled": (fusedrnn.LSTM, {"peephole": True, "coupled_gates": True}),
    "lstm_proj": (fusedrnn.LSTM, {"proj_size": P}),
    "lstm_peephole_coupled_proj": (fusedrnn.LSTM, {"peephole": True, "coupled_gates": True, "proj_size": P}),
    "gru": (fusedrnn.GRU, {}),
    "gru_nobias": (fusedrnn.GRU, {"bias": False}),
    "gru_reset_before": (fusedrnn.GRU, {"reset_after": False}),
    "rnn_tanh": (fusedrnn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (fusedrnn.RNN, {"nonlinearity": "relu"}),
}



@pytest.fixture(scope="module", autouse=True)
def _cuda_build():
    info = fusedrnn.backend_info()
    if EMULATION:
        assert info["cpu_isa"] == "CUDA-EMULATION", "FUSEDRNN_CUDA_EMULATION=1 needs the build of tools/cuda_emulate.sh"
    else:
        assert info["cuda_compiled"], (
            "a GPU is present but fusedrnn._C was built without CUDA; rebuild with a CUDA torch and nvcc"
        )


@pytest.fixture(autouse=True)
def _no_tf32():
    """float32 means float32 here: the oracle and torch.nn comparisons assume it."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(autouse=True)
def _workspace_starts_as_nan():
    """Under the emulation, every at::empty (the torch layer's workspace, outputs and
    saved tensors) comes filled with NaN, torch's fill of uninitialized memory in
    deterministic mode, as a GPU's memory holds what earlier kernels left: a kernel
    that reads memory before anything wrote it gives NaN here, where on a GPU
    compute-sanitizer's initcheck would report it."""
    if not EMULATION:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.utils.deterministic.fill_uninitialized_memory = saved[2]


# ------------------------------------------------------------------ helpers


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, gen, dtype=torch.float32, device=DEVICE, scale=1.0) -> torch.Tensor:
    """Drawn on the CPU (the same numbers on every device), then moved."""
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def _make(cls, kwargs, dtype, device=DEVICE, seed=0, **extra):
    torch.manual_seed(seed)
    return cls(C, H, **kwargs, **extra).to(device=device, dtype=dtype)


def _is_lstm(module) -> bool:
    return "LSTM" in type(module).__name__


def _random_hx(module, batch, gen, dtype, device=DEVICE):
    if isinstance(module, (fusedrnn.LSTMCell, fusedrnn.GRUCell, fusedrnn.RNNCell, nn.RNNCellBase)):
        h = _randn(batch, module.hidden_size, gen=gen, dtype=dtype, device=device, scale=0.5)
        if _is_lstm(module):
            return h, _randn(batch, module.hidden_size, gen=gen, dtype=dtype, device=device, scale=0.5)
        return h
    layers = module.num_layers * (2 if module.bidirectional else 1)
    out = getattr(module, "proj_size", 0) or module.hidden_size
    h = _randn(layers, batch, out, gen=gen, dtype=dtype, device=device, scale=0.5)
    if _is_lstm(module):
        return h, _randn(layers, batch, module.hidden_size, gen=gen, dtype=dtype, device=device, scale=0.5)
    return h


def _packed(lengths: List[int], gen, dtype, device=DEVICE, batch_first=False) -> PackedSequence:
    """Lengths deliberately unsorted (enforce_sorted=False exercises the permutation)."""
    x = _randn(max(lengths), len(lengths), C, gen=gen, dtype=dtype, device=device)
    if batch_first:
        x = x.transpose(0, 1)
    return pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)


def _report(name: str, got: torch.Tensor, want: torch.Tensor) -> tuple:
    diff = (got.double() - want.double()).abs()
    err = diff.max().item() if diff.numel() else 0.0
    mean = diff.mean().item() if diff.numel() else 0.0
    scale = max(1.0, want.double().abs().max().item() if want.numel() else 0.0)
    print(f"{name}: max error {err:.3e}, mean error {mean:.3e}, scale {scale:.3e}")
    return err, scale


def _assert_close(name: str, got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    """max |got - want| <= rel * max(1, max |want|), reported before asserting."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    err, scale = _report(name, got.to(want.device), want)
    assert err <= rel * scale, f"{name}: max error {err:.3e} exceeds {rel:.1e} x {scale:.3e}"


def _flatten_out(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, PackedSequence):
        return [out.data]
    res = []
    for o in out:
        res += _flatten_out(o)
    return res


def _run(module, x, hx, cotangent_seed: int = 1) -> Dict[str, torch.Tensor]:
    """Forward and backward with fixed random cotangents; returns the outputs and
    the gradients of the input data, hx and every parameter, by name."""
    packed = isinstance(x, PackedSequence)
    data = (x.data if packed else x).detach().clone().requires_grad_()
    xin = PackedSequence(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices) if packed else data
    hs = None
    if hx is not None:
        if isinstance(hx, tuple):
            hs = tuple(h.detach().clone().requires_grad_() for h in hx)
        else:
            hs = hx.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    outs = _flatten_out(module(xin, hs))
    gen = _seeded(cotangent_seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)).sum() for o in outs)
    loss.backward()
    res = {f"out{i}": o.detach() for i, o in enumerate(outs)}
    res["grad input"] = data.grad
    if hs is not None:
        for i, h in enumerate(hs if isinstance(hs, tuple) else (hs,)):
            res[f"grad hx{i}"] = h.grad
    for n, p in module.named_parameters():
        res[f"grad {n}"] = p.grad
    return res


# ------------------------------------------------- against the reference


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", list(SEQ_VARIANTS))
def test_sequence_matches_reference(variant, dtype):
    cls, kwargs = SEQ_VARIANTS[variant]
    m = _make(cls, kwargs, dtype)
    gen = _seeded()
    x = _randn(T, N, C, gen=gen, dtype=dtype)
    assert_matches_reference(m, x, _random_hx(m, N, gen, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", list(CELL_VARIANTS))
def test_cell_matches_reference(variant, dtype):
    cls, kwargs = CELL_VARIANTS[variant]
    m = _make(cls, kwargs, dtype)
    gen = _seeded()
    x = _randn(N, C, gen=gen, dtype=dtype)
    assert_matches_reference(m, x, _random_hx(m, N, gen, dtype))
    assert_matches_reference(m, x)  # hx=None: zeros


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "variant", ["lstm", "lstm_peephole_coupled_proj", "gru", "gru_reset_before", "rnn_tanh", "rnn_relu"]
)
def test_multilayer_bidirectional_matches_reference(variant, dtype):
    cls, kwargs = SEQ_VARIANTS[variant]
    m = _make(cls, kwargs, dtype, num_layers=3, bidirectional=True, batch_first=True)
    gen = _seeded()
    x = _randn(N, T, C, gen=gen, dtype=dtype)
    assert_matches_reference(m, x, _random_hx(m, N, gen, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize(
    "variant", ["lstm", "lstm_peephole_coupled_proj", "gru", "gru_reset_before", "rnn_tanh"]
)
def test_packed_sequence_matches_reference(variant, bidirectional, dtype):
    cls, kwargs = SEQ_VARIANTS[variant]
    m = _make(cls, kwargs, dtype, num_layers=2, bidirectional=bidirectional)
    gen = _seeded()
    x = _packed([3, 7, 1, 5, 7, 2], gen, dtype)
    assert_matches_reference(m, x, _random_hx(m, 6, gen, dtype))
    assert_matches_reference(m, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_wide_hidden_and_long_sequence(dtype):
    """H above one block of units (grid.x > 1, H not a multiple of 32) and T
    long enough that the input GEMM runs over several steps at once."""
    torch.manual_seed(0)
    m = fusedrnn.LSTM(C, 300, proj_size=37, peephole=True).to(DEVICE, dtype)
    gen = _seeded()
    x = _randn(40, 3, C, gen=gen, dtype=dtype)
    assert_matches_reference(m, x)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("variant", ["lstm", "lstm_proj", "gru_reset_before", "rnn_tanh"])
@pytest.mark.parametrize("steps,batch", [(7, 600), (20, 600)])
def test_weight_gradients_over_many_rows_match_reference(steps, batch, variant, packed, monkeypatch):
    """A weight gradient sums over every row of the sequence (T*N). One float32
    GEMM over all of them (one chain per output on the host BLAS, and on cuBLAS
    kernels without split-K) had 3-10x the float32 reference's error at
    T*N >= 4200."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "standard")
    cls, kwargs = SEQ_VARIANTS[variant]
    m = _make(cls, kwargs, torch.float32)
    gen = _seeded()
    if packed:
        x = _packed([steps - (i % 3) for i in range(batch)], gen, torch.float32)
    else:
        x = _randn(steps, batch, C, gen=gen)
    assert_matches_reference(m, x)


@pytest.mark.parametrize("chunk_bytes", ["1", "3000"])
@pytest.mark.parametrize("variant", ["lstm_peephole_coupled_proj", "gru_reset_before", "rnn_tanh"])
def test_input_gemm_in_chunks(variant, chunk_bytes, monkeypatch):
    """Gx = X W_ih^T computed a few steps at a time (one step per chunk with 1
    byte): every chunk boundary, both directions, packed."""
    cls, kwargs = SEQ_VARIANTS[variant]
    m = _make(cls, kwargs, torch.float32, num_layers=2, bidirectional=True)
    x = _packed([3, 7, 6, 1, 7], _seeded(), torch.float32)
    want = _run(m, x, None)
    monkeypatch.setenv("FUSEDRNN_CUDA_GX_CHUNK_BYTES", chunk_bytes)
    got = _run(m, x, None)
    _compare_runs(got, want, 1e-6)
    assert_matches_reference(m, x)


def test_rows_beyond_one_grid():
    """More rows than one grid covers (gridDim.y is capped at 65535 blocks of 8
    rows for H <= 32): the row loop must stride."""
    torch.manual_seed(0)
    m = fusedrnn.LSTMCell(3, 5).to(DEVICE)
    gen = _seeded()
    x = _randn(600_000, 3, gen=gen)
    assert_matches_reference(m, x, _random_hx(m, 600_000, gen, torch.float32))


# -------------------------------------------------- against torch.nn (cuDNN)

NN_MODULES = {
    "lstm": lambda: nn.LSTM(C, H, num_layers=2, bidirectional=True),
    "lstm_proj": lambda: nn.LSTM(C, H, num_layers=2, proj_size=P, bidirectional=True, batch_first=True),
    "gru": lambda: nn.GRU(C, H, num_layers=2, bidirectional=True),
    "rnn_tanh": lambda: nn.RNN(C, H, num_layers=2),
    "rnn_relu": lambda: nn.RNN(C, H, nonlinearity="relu", bidirectional=True),
}
NN_CELLS = {
    "lstm_cell": lambda: nn.LSTMCell(C, H),
    "gru_cell": lambda: nn.GRUCell(C, H),
    "rnn_cell_tanh": lambda: nn.RNNCell(C, H),
    "rnn_cell_relu": lambda: nn.RNNCell(C, H, nonlinearity="relu"),
}
NN_REL = {torch.float32: 2e-5, torch.float64: 1e-11}


def _compare_runs(got: Dict[str, torch.Tensor], want: Dict[str, torch.Tensor], rel: float) -> None:
    assert got.keys() == want.keys()
    for name in want:
        if want[name] is None:
            assert got[name] is None, f"{name}: unexpected gradient"
            continue
        assert got[name] is not None, f"{name}: missing gradient"
        _assert_close(name, got[name], want[name], rel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("name", list(NN_MODULES))
def test_sequence_matches_torch_nn(name, packed, dtype):
    torch.manual_seed(0)
    ref = NN_MODULES[name]().to(DEVICE, dtype)
    ours = fusedrnn.convert(copy.deepcopy(ref))
    assert type(ours).__module__.startswith("fusedrnn")
    gen = _seeded()
    if packed:
        x = _packed([4, 7, 2, 7, 1], gen, dtype, batch_first=ref.batch_first)
        batch = 5
    else:
        x = _randn(N, T, C, gen=gen, dtype=dtype) if ref.batch_first else _randn(T, N, C, gen=gen, dtype=dtype)
        batch = N
    hx = _random_hx(ref, batch, gen, dtype)
    _compare_runs(_run(ours, x, hx), _run(ref, x, hx), NN_REL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("path", ["standard", "persistent", "cell"])
def test_relu_drops_an_infinite_gradient_at_an_inactive_unit(path, dtype, monkeypatch):
    """Where relu's output is 0 its backward gives 0 whatever comes down (an
    infinite or NaN gradient from sqrt or log of the output): as torch.nn."""
    torch.manual_seed(0)
    cell = path == "cell"
    if not cell:
        monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
    ref = (nn.RNNCell(C, H, nonlinearity="relu") if cell else nn.RNN(C, H, nonlinearity="relu")).to(DEVICE, dtype)
    ours = fusedrnn.convert(copy.deepcopy(ref))
    x = _randn(*((N, C) if cell else (T, N, C)), gen=_seeded(), dtype=dtype)
    y = ref(x) if cell else ref(x)[0]
    inactive = y == 0
    assert inactive.any() and (y > 0).any()
    dy = _randn(*y.shape, gen=_seeded(1), dtype=dtype)
    dy[inactive] = float("inf")
    dy[inactive & (inactive.cumsum(-1) == 2)] = float("nan")
    grads = {}
    for name, m in (("ref", ref), ("ours", ours)):
        xi = x.clone().requires_grad_()
        out = m(xi) if cell else m(xi)[0]
        grads[name] = dict(zip(["input", *(n for n, _ in m.named_parameters())],
                               torch.autograd.grad(out, [xi, *m.parameters()], dy)))
    for name, want in grads["ref"].items():
        assert torch.isfinite(want).all(), name
        _assert_close(name, grads["ours"][name], want, NN_REL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", list(NN_CELLS))
def test_cell_matches_torch_nn(name, dtype):
    torch.manual_seed(0)
    ref = NN_CELLS[name]().to(DEVICE, dtype)
    ours = fusedrnn.convert(copy.deepcopy(ref))
    gen = _seeded()
    x = _randn(N, C, gen=gen, dtype=dtype)
    hx = _random_hx(ref, N, gen, dtype)
    _compare_runs(_run(ours, x, hx), _run(ref, x, hx), NN_REL[dtype])


@pytest.mark.parametrize(
    "name,packed",
    [("lstm_proj", False), ("lstm_proj", True), ("gru", False), ("gru", True), ("rnn_relu", False),
     ("rnn_relu", True), ("lstm_cell", False), ("gru_cell", False)],
    ids=lambda v: {False: "padded", True: "packed"}.get(v, v) if isinstance(v, bool) else v,
)
def test_double_backward_matches_torch_nn_on_cpu(name, packed):
    """A gradient penalty through the modules on the device (the fused forward,
    then the composition of fusedrnn/_composite.py); torch.nn's native CPU path
    is the oracle, as cuDNN has no double backward."""
    torch.manual_seed(0)
    factory = NN_CELLS.get(name) or NN_MODULES[name]
    ref = factory().double()
    ours = fusedrnn.convert(copy.deepcopy(ref)).to(DEVICE)
    gen = _seeded()
    if name.endswith("_cell"):
        x, batch = _randn(N, C, gen=gen, dtype=torch.float64, device="cpu"), N
    elif packed:
        x, batch = _packed([4, 7, 2], gen, torch.float64, device="cpu", batch_first=ref.batch_first), 3
    else:
        x, batch = _randn(T, N, C, gen=gen, dtype=torch.float64, device="cpu"), N
        if ref.batch_first:
            x = x.transpose(0, 1)
    hx = _random_hx(ref, batch, gen, torch.float64, device="cpu")

    def leaves(device):
        if isinstance(hx, tuple):
            return tuple(h.to(device).clone().requires_grad_() for h in hx)
        return hx.to(device).clone().requires_grad_()

    with torch.backends.mkldnn.flags(enabled=False):
        want = penalty_grads(ref, x, leaves("cpu"))
    got = penalty_grads(ours, x.to(DEVICE), leaves(DEVICE))
    for k in want:
        _assert_close(k, got[k], want[k], NN_REL[torch.float64])


@real_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode,layers,directions", [
    (mode, L, D) for mode in ("LSTM", "GRU", "RNN") for L, D in ((1, 1), (1, 2), (2, 1), (2, 2))
], ids=lambda v: str(v))
def test_activation_memory_at_or_below_cudnn(mode, layers, directions, dtype):
    """What a training forward leaves autograd holding (parameters and input
    excepted) is at most what cuDNN's holds: its reserve space and output. A
    16-bit LSTM saves its gates, c and y in the input dtype, 12 bytes a unit and
    step as cuDNN's; a float32 c would be 14. A bidirectional layer saves its
    output once (the *_bidirectional_forward operators), which the next layer
    saves as its input, as cuDNN holds it once."""
    torch.manual_seed(0)
    ref = getattr(nn, mode)(64, 128, num_layers=layers, bidirectional=directions == 2).to(DEVICE, dtype)
    ours = fusedrnn.convert(copy.deepcopy(ref))
    x = torch.randn(64, 16, 64, device=DEVICE, dtype=dtype, requires_grad=True)
    with torch.backends.cudnn.flags(enabled=True):
        cudnn = held_bytes(ref, x)
    assert held_bytes(ours, x) <= cudnn


# ------------------------------------- the operators: saved tensors, layouts

# Tolerance of CUDA against CPU, relative to the largest value: 16-bit GEMMs run
# in the input dtype on CUDA and in float32 on the CPU, so they differ by
# rounding of that dtype, compounded over the steps.
CPU_REL = {torch.float32: 2e-5, torch.float64: 1e-11, torch.float16: 2e-2, torch.bfloat16: 8e-2}


def _op_args(op: str, packed: bool, reverse: bool, dtype, gen, proj: int = P):
    """Arguments of torch.ops.fusedrnn.<family>_forward (on the CPU) and the
    cotangents of its outputs for the matching backward; `proj` is the
    projection size of the *_proj LSTM ops."""
    lengths = [6, 6, 4, 3, 1]
    steps, batch = 6, len(lengths)
    if packed:
        bs = torch.tensor([sum(l > t for l in lengths) for t in range(steps)], dtype=torch.int64)
        x = _randn(int(bs.sum()), C, gen=gen, dtype=dtype, device="cpu")
    else:
        bs = None
        x = _randn(steps, batch, C, gen=gen, dtype=dtype, device="cpu")

    def w(*shape):
        return _randn(*shape, gen=gen, dtype=dtype, device="cpu", scale=0.4)

    if op.startswith("lstm"):
        coupled = "coupled" in op
        G = 3 if coupled else 4
        out = proj if "proj" in op else H
        w_ch = w((G - 1) * H) if "peephole" in op else None
        w_hr = w(proj, H) if "proj" in op else None
        return [x, bs, w(batch, out), w(batch, H), w(G * H, C), w(G * H, out), w(G * H), w(G * H), w_ch, w_hr,
                coupled, reverse, True]
    if op.startswith("gru"):
        return [x, bs, w(batch, H), w(3 * H, C), w(3 * H, H), w(3 * H), w(3 * H), op == "gru", reverse, True]
    return [x, bs, w(batch, H), w(H, C), w(H, H), w(H), w(H), op == "rnn_relu", reverse]


def _to(args, device):
    # batch_sizes stays on the CPU, whatever the device of the data.
    return [a.to(device) if isinstance(a, torch.Tensor) and i != 1 else a for i, a in enumerate(args)]


def _forward_op(op: str, args) -> List[torch.Tensor]:
    fwd = getattr(torch.ops.fusedrnn, f"{op.split('_')[0]}_forward")(*args)
    return list(fwd) if isinstance(fwd, (tuple, list)) else [fwd]


def _backward_op(op: str, args, fwd: List[torch.Tensor], gen_seed: int) -> List[torch.Tensor]:
    """The matching backward operator on `fwd` (output and saved tensors), with
    random cotangents drawn the same on every device."""
    ops = torch.ops.fusedrnn
    family = op.split("_")[0]
    gen = _seeded(gen_seed)
    dy = _randn(*fwd[0].shape, gen=gen, dtype=fwd[0].dtype, device="cpu").to(fwd[0].device)
    dh = _randn(*fwd[1].shape, gen=gen, dtype=fwd[1].dtype, device="cpu").to(fwd[1].device)
    x, bs = args[0], args[1]
    if family == "lstm":
        dc = _randn(*fwd[2].shape, gen=gen, dtype=fwd[2].dtype, device="cpu").to(fwd[2].device)
        bwd = ops.lstm_backward(dy, dh, dc, x, bs, *args[2:10], fwd[0], fwd[3], fwd[4], fwd[5], args[10], args[11],
                                True, True)
    elif family == "gru":
        bwd = ops.gru_backward(dy, dh, x, bs, *args[2:7], fwd[0], fwd[2], fwd[3], args[7], args[8], True, True)
    else:
        bwd = ops.rnn_backward(dy, dh, x, bs, *args[2:7], fwd[0], args[7], args[8], True, True)
    return list(bwd)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize(
    "op", ["lstm", "lstm_peephole_coupled_proj", "lstm_peephole_proj", "gru", "gru_reset_before", "rnn_tanh",
           "rnn_relu"]
)
def test_operators_match_cpu(op, packed, reverse, dtype):
    """The CUDA operators return what the CPU ones return, saved tensors
    included (same layout, same dtypes): the autograd code and the fake kernels
    are shared, so a CUDA forward must be able to feed a CPU backward and back."""
    _check_operators_match_cpu(op, packed, reverse, dtype)


def _check_operators_match_cpu(op, packed, reverse, dtype, proj=P):
    args = _op_args(op, packed, reverse, dtype, _seeded(3), proj)
    dev_args = _to(args, DEVICE)
    cpu_fwd = _forward_op(op, args)
    cpu_bwd = _backward_op(op, args, cpu_fwd, 4)
    dev_fwd = _forward_op(op, dev_args)
    dev_bwd = _backward_op(op, dev_args, dev_fwd, 4)
    names = {"lstm": ["output", "h_n", "c_n", "gates", "states", "proj_in"],
             "gru": ["output", "h_n", "gates", "states"], "rnn": ["output", "h_n"]}[op.split("_")[0]]
    for name, got, want in zip(names, dev_fwd, cpu_fwd):
        assert got.device.type == DEVICE.type
        assert got.dtype == dtype, f"{name}: dtype {got.dtype}"
        _assert_close(name, got.cpu(), want, CPU_REL[dtype])
    for i, (got, want) in enumerate(zip(dev_bwd, cpu_bwd)):
        _assert_close(f"grad {i}", got.cpu(), want, CPU_REL[dtype])
    # The CPU backward runs on what the device forward saved, and the other way.
    crossed = _backward_op(op, args, [t.cpu() for t in dev_fwd], 4)
    for i, (got, want) in enumerate(zip(crossed, cpu_bwd)):
        _assert_close(f"grad {i}, CPU backward of the device forward", got, want, CPU_REL[dtype])
    crossed = _backward_op(op, dev_args, [t.to(DEVICE) for t in cpu_fwd], 4)
    for i, (got, want) in enumerate(zip(crossed, cpu_bwd)):
        _assert_close(f"grad {i}, device backward of the CPU forward", got.cpu(), want, CPU_REL[dtype])


@pytest.mark.parametrize("op", ["lstm_cell", "gru_cell", "gru_cell_reset_before", "rnn_cell"])
def test_cell_operators_match_cpu(op):
    gen = _seeded(5)
    dtype = torch.float64
    x, h, c = (_randn(N, C, gen=gen, dtype=dtype, device="cpu"), _randn(N, H, gen=gen, dtype=dtype, device="cpu"),
               _randn(N, H, gen=gen, dtype=dtype, device="cpu"))
    G = {"lstm_cell": 4, "rnn_cell": 1}.get(op, 3)
    w_ih, w_hh, b_ih, b_hh = (_randn(G * H, C, gen=gen, dtype=dtype, device="cpu"),
                              _randn(G * H, H, gen=gen, dtype=dtype, device="cpu"),
                              _randn(G * H, gen=gen, dtype=dtype, device="cpu"),
                              _randn(G * H, gen=gen, dtype=dtype, device="cpu"))
    ops = torch.ops.fusedrnn
    results = []
    for dev in ("cpu", DEVICE):
        a = [t.to(dev) for t in (x, h, c, w_ih, w_hh, b_ih, b_hh)]
        if op == "lstm_cell":
            hn, cn, gates = ops.lstm_cell_forward(a[0], a[1], a[2], *a[3:], None, False, True)
            grads = ops.lstm_cell_backward(hn, cn, a[0], a[1], a[2], *a[3:], None, hn, cn, gates, False, True, True)
            results.append([hn, cn, gates, *grads])
        elif op.startswith("gru"):
            ra = op == "gru_cell"
            hn, gates, states = ops.gru_cell_forward(a[0], a[1], *a[3:], ra, True)
            grads = ops.gru_cell_backward(hn, a[0], a[1], *a[3:], hn, gates, states, ra, True, True)
            results.append([hn, gates, states, *grads])
        else:
            hn = ops.rnn_cell_forward(a[0], a[1], *a[3:], False)
            grads = ops.rnn_cell_backward(hn, a[0], a[1], *a[3:], hn, False, True, True)
            results.append([hn, *grads])
    for i, (want, got) in enumerate(zip(*results)):
        _assert_close(f"{op} result {i}", got.cpu(), want, CPU_REL[dtype])


@pytest.mark.parametrize("op", ["lstm", "gru", "rnn"])
def test_opcheck(op):
    """Schema, fake kernel and autograd registration agree with the CUDA kernels."""
    args = _to(_op_args(op if op != "rnn" else "rnn_tanh", True, True, torch.float32, _seeded(6)), DEVICE)
    for i in (0, 2, 3, 4, 5):  # input, h0, (c0 or weights)
        if isinstance(args[i], torch.Tensor) and args[i].dtype.is_floating_point:
            args[i] = args[i].requires_grad_()
    torch.library.opcheck(getattr(torch.ops.fusedrnn, f"{op}_forward").default, tuple(args))


# ------------------------------------------------- inputs and environment


def test_non_contiguous_inputs():
    """Strided input, hidden state and weights give what their contiguous
    copies give."""
    gen = _seeded()
    L, D = 2, 2
    x = _randn(N, T, C, gen=gen).transpose(0, 1)  # [T, N, C] batch-major in memory
    h0 = _randn(N, L * D, P, gen=gen).transpose(0, 1)
    c0 = _randn(N, L * D, H, gen=gen).transpose(0, 1)
    assert not (x.is_contiguous() or h0.is_contiguous() or c0.is_contiguous())
    torch.manual_seed(0)
    m = fusedrnn.LSTM(C, H, num_layers=L, bidirectional=D == 2, proj_size=P, peephole=True).to(DEVICE)
    got = _run(m, x, (h0, c0))
    want = _run(m, x.contiguous(), (h0.contiguous(), c0.contiguous()))
    _compare_runs(got, want, 1e-6)

    # Non-contiguous weights through the operator itself.
    args = _to(_op_args("gru", False, False, torch.float32, _seeded(7)), DEVICE)
    strided = list(args)
    strided[3] = args[3].t().contiguous().t()
    strided[4] = args[4].t().contiguous().t()
    wide = torch.zeros(*args[0].shape[:-1], 2 * C, dtype=args[0].dtype, device=DEVICE)
    wide[..., ::2] = args[0]
    strided[0] = wide[..., ::2]  # gaps between elements
    assert not strided[3].is_contiguous() and not strided[0].is_contiguous()
    for name, got, want in zip(["output", "h_n", "gates", "states"], torch.ops.fusedrnn.gru_forward(*strided),
                               torch.ops.fusedrnn.gru_forward(*args)):
        _assert_close(name, got, want, 1e-6)


@pytest.mark.parametrize("variant", ["lstm_peephole_coupled_proj", "gru_reset_before", "rnn_relu"])
def test_inference_equals_training_forward(variant):
    """The forward without autograd (saves nothing) computes the same outputs."""
    cls, kwargs = SEQ_VARIANTS[variant]
    for dtype in (torch.float32, torch.bfloat16):
        m = _make(cls, kwargs, dtype, num_layers=2)
        x = _randn(T, N, C, gen=_seeded(), dtype=dtype)
        with torch.no_grad():
            inf = _flatten_out(m(x))
        train = _flatten_out(m(x.clone().requires_grad_()))
        for i, (a, b) in enumerate(zip(inf, train)):
            _assert_close(f"{dtype} out{i}", a, b.detach(), 1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("variant", ["lstm_peephole_coupled_proj", "gru_reset_before", "rnn_tanh"])
def test_autocast(variant):
    """Under autocast the layers run in the low precision, as torch.nn's do, and
    the float32 parameters get float32 gradients."""
    low = torch.bfloat16 if EMULATION else torch.float16  # the CPU autocasts to bfloat16
    cls, kwargs = SEQ_VARIANTS[variant]
    m = _make(cls, kwargs, torch.float32, num_layers=2)
    x = _randn(T, N, C, gen=_seeded())
    with torch.autocast(DEVICE.type, dtype=low):
        got = _flatten_out(m(x))
    assert all(t.dtype == low for t in got), [t.dtype for t in got]
    want = _flatten_out(copy.deepcopy(m).to(low)(x.to(low)))
    for i, (a, b) in enumerate(zip(got, want)):
        _assert_close(f"out{i}", a.detach(), b.detach(), 1e-2)
    sum(t.float().sum() for t in got).backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, n
        assert torch.isfinite(p.grad).all(), n


def test_backward_is_deterministic():
    """No floating-point atomics: two backward passes agree bit for bit."""
    torch.manual_seed(0)
    m = fusedrnn.LSTM(C, H, num_layers=2, bidirectional=True, peephole=True).to(DEVICE)
    x = _packed([5, 7, 7, 2, 3], _seeded(), torch.float32)
    a, b = _run(m, x, None), _run(m, x, None)
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs between two identical runs"


@real_gpu
@pytest.mark.parametrize("path", ["standard", "persistent"])
@pytest.mark.parametrize("variant", ["lstm_peephole_coupled_proj", "gru_reset_before", "rnn_tanh"])
def test_non_default_stream(variant, path, monkeypatch):
    """Everything runs on the current stream: with the side stream busy (a sleep
    queued first), a kernel launched on another stream would read unfinished
    GEMM results. The persistent path is deterministic: the same bits."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
    cls, kwargs = SEQ_VARIANTS[variant]
    m = _make(cls, kwargs, torch.float32, num_layers=2, bidirectional=True)
    x = _packed([3, 7, 6, 1], _seeded(), torch.float32)
    want = _run(m, x, None)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.cuda._sleep(50_000_000)
        got = _run(m, x, None)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    _compare_runs(got, want, 0.0 if path == "persistent" else 1e-6)


GRAPH_CASES = [("lstm_peephole_coupled_proj", False), ("lstm", True), ("gru", False), ("gru_reset_before", True),
               ("rnn_relu", False)]


@real_gpu
@pytest.mark.parametrize(
    "variant,packed,path,steps",
    [(v, p, "standard", T) for v, p in GRAPH_CASES] + [(v, p, "persistent", T) for v, p in GRAPH_CASES if not p]
    + [("rnn_relu", False, "auto", AUTO_T), ("lstm", True, "auto", AUTO_T)],
)
def test_cuda_graph_capture_and_replay(variant, packed, path, steps, monkeypatch):
    """Forward and backward captured in a CUDA graph (static shapes), replayed on
    new data, match an eager run on that data (the persistent path: padded
    input; it refuses a packed one inside capture, see below, where auto runs
    the standard path)."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
    cls, kwargs = SEQ_VARIANTS[variant]
    model = _make(cls, kwargs, torch.float32, num_layers=2, bidirectional=True)
    gen = _seeded()
    lengths = [steps, 4, 6, 2]
    static = _packed(lengths, gen, torch.float32) if packed else _randn(steps, N, C, gen=gen)
    static_data = static.data if packed else static

    def loss_of(out):
        y = out[0].data if packed else out[0]
        return (y * y).sum()

    # Warm up on a side stream (cuBLAS workspaces, the caching allocator), as
    # torch.cuda.graph's documentation asks.
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            loss_of(model(static)).backward()
    torch.cuda.current_stream().wait_stream(s)

    graph = torch.cuda.CUDAGraph()
    model.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_out = model(static)
        loss_of(static_out).backward()

    eager = copy.deepcopy(model)
    if path == "auto" and packed:
        monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "standard")  # what auto ran inside capture
    for seed in (11, 12):
        new = _randn(*static_data.shape, gen=_seeded(seed))
        static_data.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        eager.zero_grad(set_to_none=True)
        x = PackedSequence(new, static.batch_sizes, static.sorted_indices, static.unsorted_indices) if packed else new
        eager_out = eager(x)
        loss_of(eager_out).backward()
        for i, (a, b) in enumerate(zip(_flatten_out(static_out), _flatten_out(eager_out))):
            _assert_close(f"replay {seed} out{i}", a, b.detach(), 1e-6)
        for (n, p), (_, q) in zip(model.named_parameters(), eager.named_parameters()):
            _assert_close(f"replay {seed} grad {n}", p.grad, q.grad, 1e-6)


@real_gpu
def test_cell_loop_in_cuda_graph():
    """A user loop of cells, captured whole."""
    torch.manual_seed(0)
    cell = fusedrnn.GRUCell(C, H, reset_after=False).to(DEVICE)
    xs = _randn(T, N, C, gen=_seeded())
    h0 = torch.zeros(N, H, device=DEVICE)

    def run(inp):
        h = h0
        for t in range(T):
            h = cell(inp[t], h)
        return h

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        for _ in range(2):
            run(xs)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        out = run(xs)
    new = _randn(T, N, C, gen=_seeded(9))
    xs.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    with torch.no_grad():
        _assert_close("h", out, run(new), 1e-6)


@real_gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("variant", ["lstm_peephole_coupled_proj", "gru", "rnn_relu"])
def test_non_zero_device_index(variant):
    """On cuda:1 while cuda:0 is current: the device guard puts every kernel and
    buffer on the input's device."""
    cls, kwargs = SEQ_VARIANTS[variant]
    torch.cuda.set_device(0)
    m0 = _make(cls, kwargs, torch.float32, num_layers=2, bidirectional=True)
    m1 = copy.deepcopy(m0).to("cuda:1")
    x = _packed([4, 7, 3], _seeded(), torch.float32)
    x1 = PackedSequence(x.data.to("cuda:1"), x.batch_sizes, x.sorted_indices.to("cuda:1"),
                        x.unsorted_indices.to("cuda:1"))
    want = _run(m0, x, None)
    got = _run(m1, x1, None)
    for name in want:
        assert got[name].device == torch.device("cuda:1"), f"{name} is on {got[name].device}"
    _compare_runs({k: v.to("cuda:0") for k, v in got.items()}, want, 1e-6)
    assert_matches_reference(m1, x1)


@pytest.mark.parametrize("variant", ["lstm_peephole_coupled_proj", "gru_reset_before", "rnn_relu"])
def test_scripted_module_runs_the_eager_kernels(variant):
    """torch.jit.script's forward (fusedrnn/_script.py) calls the operators the
    eager forward calls, with the same arguments: the same outputs and
    gradients, bit for bit (the eager module is checked against the reference
    above)."""
    cls, kwargs = SEQ_VARIANTS[variant]
    m = _make(cls, kwargs, torch.float32, num_layers=2, bidirectional=True)
    x = _packed([4, 7, 3], _seeded(), torch.float32)
    hx = _random_hx(m, 3, _seeded(2), torch.float32)
    want = _run(m, x, hx)
    scripted = script(script_holder(m, packed=True))
    assert isinstance(scripted, torch.jit.ScriptModule)
    got = _run(scripted, x, hx)
    assert len(got) == len(want)
    for (name, g), w in zip(got.items(), want.values()):
        torch.testing.assert_close(g, w, rtol=0, atol=0, msg=name)


# ------------------------------------------------------ the persistent path
#
# FUSEDRNN_CUDA_PATH=persistent runs every layer through the persistent kernels
# (one cooperative launch per layer, direction and chunk of steps) or raises
# with the reason; under tools/cuda_emulate.sh every thread of those launches
# runs as a fiber with real block and grid barriers.

PERSISTENT_VARIANTS = list(SEQ_VARIANTS)
PERSISTENT_OPS = ["lstm", "lstm_peephole_coupled", "lstm_peephole_proj", "lstm_peephole_coupled_proj", "gru",
                  "gru_reset_before", "rnn_tanh", "rnn_relu"]


@pytest.fixture(params=["auto", "many"], ids=["grid-auto", "grid-many"])
def persistent(request, monkeypatch):
    """The persistent path forced, its plan as chosen (auto: at these small sizes
    mostly one block with block barriers) or in slices of units over many blocks
    (many; grid barriers wherever that is more than one block)."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "persistent")
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_GRID", request.param)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", PERSISTENT_VARIANTS)
def test_persistent_matches_reference(variant, dtype, persistent):
    cls, kwargs = SEQ_VARIANTS[variant]
    m = _make(cls, kwargs, dtype)
    gen = _seeded()
    x = _randn(T, N, C, gen=gen, dtype=dtype)
    assert_matches_reference(m, x, _random_hx(m, N, gen, dtype))
    assert_matches_reference(m, x)


@pytest.mark.parametrize("grid", ["one", "many"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("variant", PERSISTENT_VARIANTS)
def test_persistent_packed_multilayer_bidirectional(variant, dtype, grid, monkeypatch):
    """Rows that end early (forward direction) and start late (reverse), two
    layers, both directions; every unit in one block (block barriers, the state
    in shared memory on CUDA cores) and in slices over many blocks."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "persistent")
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_GRID", grid)
    cls, kwargs = SEQ_VARIANTS[variant]
    m = _make(cls, kwargs, dtype, num_layers=2, bidirectional=True)
    gen = _seeded()
    x = _packed([3, 7, 1, 5, 7, 2], gen, dtype)
    assert_matches_reference(m, x, _random_hx(m, 6, gen, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", ["lstm_peephole_coupled", "gru", "gru_reset_before", "rnn_relu"])
@pytest.mark.parametrize("batch,hidden", [(1, 1), (1, 33), (3, 70), (16, 200)], ids=lambda v: str(v))
def test_persistent_hidden_and_batch_sizes(batch, hidden, variant, dtype, persistent):
    """Hidden sizes that fill no block evenly (units per block 1 to 16, the last
    block partly empty), batch 1 and odd, and (16, 200): several warps' worth of
    rows and units."""
    _check_size(variant, 5, batch, hidden, dtype)


def test_persistent_shared_memory_beyond_the_default_limit(persistent):
    """A weight slice above the 48 KiB of dynamic shared memory a kernel may use
    until it is raised (under the emulation, 16 blocks: LSTM float32 at H=256 is
    16 units a block, 64 weight rows of 257 floats): the plan raises the kernel's
    limit before the launch, and keeps it raised for a smaller plan after it."""
    for hidden in (256, 8, 256):
        _check_size("lstm", 3, 2, hidden, torch.float32)


@pytest.mark.parametrize("variant", ["rnn_tanh", "rnn_relu"])
def test_persistent_staged_passes(variant, monkeypatch):
    """float64 on CUDA cores at 64 rows and 500 units: the previous h or dG (64 x
    500 doubles, 256 KB) does not fit a block's shared memory, so the product
    stages it in passes of 16 columns, the last one of 4."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "persistent")
    _check_size(variant, 3, 64, 500, torch.float64)


def _check_size(variant, steps, batch, hidden, dtype):
    """A one-layer module of `variant` with this hidden size against the reference."""
    cls, kwargs = SEQ_VARIANTS[variant]
    torch.manual_seed(0)
    m = cls(C, hidden, **kwargs).to(DEVICE, dtype)
    gen = _seeded()
    x = _randn(steps, batch, C, gen=gen, dtype=dtype)
    assert_matches_reference(m, x, _random_hx(m, batch, gen, dtype))


TENSOR_CORE_CASES = (
    [(33, 71, v, d) for d in (torch.float16, torch.bfloat16)
     for v in ("lstm", "lstm_proj", "gru", "gru_reset_before", "rnn_tanh")]
    + [(65, 136, v, torch.float16) for v in ("lstm", "lstm_proj", "gru")]
)


@pytest.mark.parametrize("batch,hidden,variant,dtype", TENSOR_CORE_CASES, ids=str)
def test_persistent_tensor_core_tiles(batch, hidden, variant, dtype, persistent):
    """The tensor-core product over several 16-row tiles of the batch and 8-row
    tiles of the weights: warps that split K, warps with no task, an odd hidden
    size (rows of dG not 4-byte aligned), and (65 rows, 16 units a block: five row
    tiles by two groups of weight tiles) warps with two tasks."""
    _check_size(variant, 4, batch, hidden, dtype)


# (batch, hidden, variant, dtype, whether the plan stages): lstm_proj stages the projection's
# input (H = 72) but not h (P = 4 columns, not a 16-byte piece); gru at H = 33
# in float32 stages nothing.
STAGE_CASES = [(33, 72, "lstm_proj", torch.float16, True), (17, 40, "gru_reset_before", torch.bfloat16, True),
               (5, 24, "rnn_tanh", torch.float16, True), (9, 32, "lstm_peephole_coupled", torch.float32, True),
               (3, 33, "gru", torch.float32, False)]


@pytest.mark.parametrize("batch,hidden,variant,dtype,plan_stages", STAGE_CASES, ids=str)
def test_persistent_staged_operand(batch, hidden, variant, dtype, plan_stages, persistent, monkeypatch):
    """The tensor-core product with its other operand (h, r*h, the projection's
    input, dG) staged in shared memory in 16-byte pieces
    (FUSEDRNN_PERSISTENT_STAGE=1, the default, where the plan has room and the
    rows are whole pieces) and loaded from global memory (0): the same bits,
    both within the reference's bounds, and the trace says which the plan did
    (float32 through TF32)."""
    from fusedrnn import _C
    if dtype == torch.float32:
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    cls, kwargs = SEQ_VARIANTS[variant]
    torch.manual_seed(0)
    m = cls(C, hidden, **kwargs).to(DEVICE, dtype)
    gen = _seeded()
    x, hx = _randn(4, batch, C, gen=gen, dtype=dtype), _random_hx(m, batch, gen, dtype)
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_TRACE", "1")
    runs, staged = {}, {}
    for stage in ("1", "0"):
        monkeypatch.setenv("FUSEDRNN_PERSISTENT_STAGE", stage)
        _C._persistent_traces()
        runs[stage] = _run(m, x, hx)
        records = _C._persistent_traces()["records"]
        assert len(records) == 2 and all(r["tensor_cores"] for r in records)
        staged[stage] = [r["staged"] for r in records]
    assert staged == {"1": [plan_stages] * 2, "0": [False, False]}
    for name in runs["1"]:
        assert torch.equal(runs["1"][name], runs["0"][name]), f"{name}: staged and direct differ"
    if dtype != torch.float32:
        monkeypatch.delenv("FUSEDRNN_PERSISTENT_TRACE")
        assert_matches_reference(m, x, hx)


def test_persistent_staging_where_it_does_not_fit(monkeypatch):
    """dG of 256 rows and 4 x 128 columns in float16 (260 KiB padded) is more
    than a block's shared memory: the backward loads it from global memory while
    the forward (h: 68 KiB) stages it, and both match the reference."""
    from fusedrnn import _C
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "persistent")
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_TRACE", "1")
    _C._persistent_traces()
    _check_size("lstm", 2, 256, 128, torch.float16)
    records = _C._persistent_traces()["records"]
    assert [(r["kernel"], r["staged"]) for r in records][-2:] == [
        ("lstm_persistent_forward_kernel", True), ("lstm_persistent_backward_kernel", False)]


@pytest.mark.parametrize("batch,hidden,variant,dtype",
                         [(3, 100, "lstm_peephole", torch.float32), (2, 40, "gru_reset_before", torch.float64),
                          (17, 70, "lstm_proj", torch.float16), (5, 200, "rnn_tanh", torch.bfloat16),
                          (1, 33, "gru", torch.float32), (1, 20, "rnn_relu", torch.float64)], ids=str)
def test_persistent_one_block_many_units(batch, hidden, variant, dtype, monkeypatch):
    """One block of up to 256 units: the CUDA-core product with several outputs
    per thread or several threads per output, the tensor-core product with
    several weight-tile groups per warp, a thread's rows two apart at 128 units
    and one thread per unit at 256, units past the hidden size."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "persistent")
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_GRID", "one")
    _check_size(variant, 4, batch, hidden, dtype)


def test_persistent_grid_choice(monkeypatch):
    """auto runs a small layer in one block: the same bits as one block forced,
    and not those of slices over many blocks (the CUDA-core product sums in
    another order there)."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "persistent")
    m = _make(fusedrnn.LSTM, {}, torch.float32)
    x = _randn(T, N, C, gen=_seeded())
    runs = {}
    for grid in ("auto", "one", "many"):
        monkeypatch.setenv("FUSEDRNN_PERSISTENT_GRID", grid)
        runs[grid] = _run(m, x, None)
    for name in runs["one"]:
        assert torch.equal(runs["auto"][name], runs["one"][name]), f"{name}: auto is not one block here"
    assert any(not torch.equal(runs["many"][k], runs["one"][k]) for k in runs["one"]), \
        "one block and many blocks gave the same bits: this test cannot tell them apart"


def test_persistent_one_block_refusal(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "persistent")
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_GRID", "one")
    m = fusedrnn.LSTM(C, 300).to(DEVICE)
    with pytest.raises(RuntimeError, match=r"one block \(FUSEDRNN_PERSISTENT_GRID=one\) holds at most 256 "
                                           r"hidden units"):
        m(_randn(2, 3, C, gen=_seeded()))
    m = fusedrnn.LSTM(C, H).to(DEVICE)
    with pytest.raises(RuntimeError, match=r"one block \(FUSEDRNN_PERSISTENT_GRID=one\) of this many rows and "
                                           r"units has more than the 2048 outputs"):
        m(_randn(2, 600, C, gen=_seeded()))


@pytest.mark.parametrize("units", ["2", "4", "16"])
@pytest.mark.parametrize("variant", ["lstm_peephole_coupled", "gru_reset_before", "rnn_relu"])
def test_persistent_units_per_block(variant, units, monkeypatch):
    """FUSEDRNN_PERSISTENT_GRID=<units>: that many units a block (H=10: 5, 3 and 1
    blocks, the last partly empty), packed, two layers, both directions."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "persistent")
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_GRID", units)
    cls, kwargs = SEQ_VARIANTS[variant]
    m = _make(cls, kwargs, torch.float32, num_layers=2, bidirectional=True)
    gen = _seeded()
    x = _packed([4, 6, 1, 6], gen, torch.float32)
    assert_matches_reference(m, x, _random_hx(m, 4, gen, torch.float32))


def test_persistent_units_per_block_refusal(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "persistent")
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_GRID", "2")
    m = fusedrnn.LSTM(C, H).to(DEVICE)
    with pytest.raises(RuntimeError, match=r"\(a batch of 300 rows, hidden size 10\): the units per block that "
                                           r"FUSEDRNN_PERSISTENT_GRID asks for give the CUDA-core product more"):
        m(_randn(2, 300, C, gen=_seeded()))


def test_persistent_units_per_block_refusal_names_the_batch_sized_buffers(monkeypatch):
    """256 units a block asked for a layer of 9: the weights are small, the
    buffers of batch x gates x 256 units are what do not fit; the same layer runs
    at a small batch."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "persistent")
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_GRID", "256")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    m = fusedrnn.GRU(5, 9).to(DEVICE)
    m(_randn(3, 8, 5, gen=_seeded()))
    with pytest.raises(RuntimeError, match="the weights and the batch-sized buffers of the units per block that "
                                           "FUSEDRNN_PERSISTENT_GRID asks for do not fit in a block's shared memory "
                                           "at this batch"):
        m(_randn(3, 64, 5, gen=_seeded()))


@pytest.mark.parametrize("path", ["persistent", "standard"])
@pytest.mark.parametrize("value", ["two", "3", "512", "0", "-4", "16x"])
def test_grid_variable_is_checked(value, path, monkeypatch):
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_GRID", value)
    m = fusedrnn.GRU(C, H).to(DEVICE)
    with pytest.raises(RuntimeError, match=f"FUSEDRNN_PERSISTENT_GRID must be 'auto', 'one', 'many' or a power of two "
                                           f"from 1 to 256 \\(hidden units per block\\), got '{value}'"):
        m(_randn(T, N, C, gen=_seeded()))


def test_grid_barrier_probe():
    """The barrier-latency probe of bench/persistent_floor.py runs, and refuses
    what it cannot launch with a clear error."""
    from fusedrnn import _C
    _C._grid_barrier_probe(4, 3)
    _C._grid_barrier_probe(1, 0)
    with pytest.raises(RuntimeError, match="grid_barrier_probe: blocks must be between 1 and"):
        _C._grid_barrier_probe(0, 1)
    with pytest.raises(RuntimeError, match="grid_barrier_probe: blocks must be between 1 and"):
        _C._grid_barrier_probe(100000, 1)
    with pytest.raises(RuntimeError, match="grid_barrier_probe: steps must be >= 0"):
        _C._grid_barrier_probe(1, -1)


# The step trace (FUSEDRNN_PERSISTENT_TRACE=1; TracePoint in rnn_cuda.h): block
# 0's clock at four points of every step of every persistent launch, read by
# bench/persistent_trace.py.

TRACE_FAMILY = {"lstm": "lstm", "lstm_peephole_coupled_proj": "lstm", "gru": "gru", "gru_reset_before": "gru",
                "rnn_relu": "rnn"}


def _check_trace(record, kernel, first_step, end_step, reverse=False):
    assert record["kernel"] == kernel and record["reverse"] == reverse
    assert (record["first_step"], record["end_step"]) == (first_step, end_step)
    assert record["blocks"] >= 1 and record["units"] >= 1
    header, points, values = record["header"], record["points"], record["values"]
    assert (header, points) == (4, 4)
    assert len(values) == header + (end_step - first_step) * points
    start_ns, start_clock, end_ns, end_clock = values[:header]
    assert 0 < start_ns <= end_ns
    # Every mark written, in the order processed, between the kernel's start and end.
    clocks = [start_clock] + values[header:] + [end_clock]
    assert all(a <= b for a, b in zip(clocks, clocks[1:])), f"{kernel}: trace clocks out of order: {clocks}"


@pytest.mark.parametrize("chunked", [False, True], ids=["one-launch", "launch-per-step"])
@pytest.mark.parametrize("variant", list(TRACE_FAMILY))
def test_persistent_step_trace(variant, chunked, persistent, monkeypatch):
    """Each persistent launch of a training call (the forward's, one per chunk of
    its input GEMM, then the backward's) leaves one record of its kernel, steps
    and plan with every step's four clocks in time order inside the launch; the
    results are those of the same call without the trace, and a call without it
    records nothing."""
    from fusedrnn import _C
    if chunked:
        monkeypatch.setenv("FUSEDRNN_CUDA_GX_CHUNK_BYTES", "1")  # one step of Gx a chunk
    cls, kwargs = SEQ_VARIANTS[variant]
    m = _make(cls, kwargs, torch.float32)
    gen = _seeded()
    x, hx = _randn(T, N, C, gen=gen), _random_hx(m, N, gen, torch.float32)
    _C._persistent_traces()
    want = _run(m, x, hx)
    assert _C._persistent_traces()["records"] == []
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_TRACE", "1")
    got = _run(m, x, hx)
    records = _C._persistent_traces()["records"]
    assert _C._persistent_traces()["records"] == []
    for name in want:
        assert torch.equal(got[name], want[name]), f"{name} differs with the trace on"
    family = TRACE_FAMILY[variant]
    forward = [(s, s + 1) for s in range(T)] if chunked else [(0, T)]
    assert len(records) == len(forward) + 1
    for record, (s0, s1) in zip(records, forward):
        _check_trace(record, f"{family}_persistent_forward_kernel", s0, s1)
    _check_trace(records[-1], f"{family}_persistent_backward_kernel", 0, T)


def test_persistent_step_trace_of_every_layer_and_direction(persistent, monkeypatch):
    """Two layers, both directions, a packed batch: a record per launch, each
    with its direction, forward and backward."""
    from fusedrnn import _C
    m = _make(fusedrnn.LSTM, {}, torch.float32, num_layers=2, bidirectional=True)
    x = _packed([5, 7, 2], _seeded(), torch.float32)
    _C._persistent_traces()
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_TRACE", "1")
    _run(m, x, None)
    records = _C._persistent_traces()["records"]
    for kind in ("forward", "backward"):
        mine = [r for r in records if r["kernel"] == f"lstm_persistent_{kind}_kernel"]
        assert sorted(r["reverse"] for r in mine) == [False, False, True, True]
        for r in mine:
            _check_trace(r, r["kernel"], 0, 7, r["reverse"])
    assert len(records) == 8


@pytest.mark.parametrize("path,trace,steps", [("standard", "1", T), ("auto", "1", T), ("persistent", "0", T)],
                         ids=["standard-path", "auto-on-standard", "trace-off"])
def test_trace_records_only_traced_persistent_launches(path, trace, steps, monkeypatch):
    """Nothing is recorded by the standard path (forced, or auto's pick for a
    sequence under 16 steps) or with FUSEDRNN_PERSISTENT_TRACE=0."""
    from fusedrnn import _C
    m = _make(fusedrnn.GRU, {}, torch.float32)
    assert not _pays(m, steps, N, torch.float32)
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_TRACE", trace)
    _C._persistent_traces()
    _run(m, _randn(steps, N, C, gen=_seeded()), None)
    assert _C._persistent_traces()["records"] == []


def test_trace_keeps_the_last_256_launches(monkeypatch):
    """258 launches (a chunk of Gx a step) without taking the traces: the last
    256 are kept, and the two older ones are counted as dropped."""
    from fusedrnn import _C
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "persistent")
    monkeypatch.setenv("FUSEDRNN_CUDA_GX_CHUNK_BYTES", "1")
    m = _make(fusedrnn.RNN, {}, torch.float32)
    x = _randn(258, 2, C, gen=_seeded())
    _C._persistent_traces()
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_TRACE", "1")
    with torch.no_grad():
        m(x)
    taken = _C._persistent_traces()
    assert taken["dropped"] == 2
    assert [(r["first_step"], r["end_step"]) for r in taken["records"]] == [(s, s + 1) for s in range(2, 258)]
    assert _C._persistent_traces() == {"records": [], "dropped": 0}


@pytest.mark.parametrize("variable", ["FUSEDRNN_PERSISTENT_TRACE", "FUSEDRNN_PERSISTENT_STAGE"])
@pytest.mark.parametrize("path", ["standard", "persistent"])
def test_switch_variables_are_checked(path, variable, monkeypatch):
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
    monkeypatch.setenv(variable, "yes")
    m = fusedrnn.GRU(C, H).to(DEVICE)
    with pytest.raises(RuntimeError, match=f"{variable} must be '0' or '1', got 'yes'"):
        m(_randn(T, N, C, gen=_seeded()))


@pytest.mark.parametrize("value", ["0", "-4", " 3", "3 ", "+3", "3k", "9223372036854775808"])
@pytest.mark.parametrize("path", ["standard", "persistent"])
def test_chunk_variable_is_checked(path, value, monkeypatch):
    """Only a plain decimal count of bytes that fits in 64 bits: no sign, space or
    suffix, and no overflow taken as the largest value; the largest is taken (one
    chunk, as by default here: the same computation)."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
    m = fusedrnn.GRU(C, H).to(DEVICE)
    x = _randn(T, N, C, gen=_seeded())
    want = m(x)[0]
    monkeypatch.setenv("FUSEDRNN_CUDA_GX_CHUNK_BYTES", value)
    with pytest.raises(RuntimeError, match=f"FUSEDRNN_CUDA_GX_CHUNK_BYTES must be a positive integer below "
                                           rf"2\^63, got '{re.escape(value)}'"):
        m(x)
    monkeypatch.setenv("FUSEDRNN_CUDA_GX_CHUNK_BYTES", "9223372036854775807")
    torch.testing.assert_close(m(x)[0], want, rtol=0, atol=0)


@real_gpu
def test_trace_inside_graph_capture(persistent, monkeypatch):
    """The trace does not record inside capture (a launch's trace is allocated
    per call): a forced persistent path raises; auto, where it would take the
    persistent path, and the standard path capture the standard path as ever."""
    from fusedrnn import _C
    m = fusedrnn.GRU(C, H).to(DEVICE)
    x = _randn(AUTO_T, N, C, gen=_seeded())
    assert _pays(m, AUTO_T, N, torch.float32, training=False)
    m(x)
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_TRACE", "1")
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="FUSEDRNN_PERSISTENT_TRACE=1 does not record inside CUDA graph capture"):
        with torch.cuda.graph(graph):
            m(x)
    _C._persistent_traces()
    for path in ("auto", "standard"):
        monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
        with monkeypatch.context() as mp:
            mp.setenv("FUSEDRNN_CUDA_PATH", "standard")
            mp.setenv("FUSEDRNN_PERSISTENT_TRACE", "0")
            want = m(x)[0]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = m(x)[0]
        graph.replay()
        torch.testing.assert_close(y, want, rtol=0, atol=0)
    assert _C._persistent_traces()["records"] == []


class _Reference(torch.nn.Module):
    """fusedrnn.reference in `dtype` on the parameters of `module`."""

    def __init__(self, module, dtype):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x, hx):
        return fusedrnn.reference.forward(self.module, x, hx, dtype=self.dtype)


@pytest.mark.parametrize("variant", ["lstm_peephole", "gru", "gru_reset_before", "rnn_tanh"])
def test_persistent_tf32_where_allowed(variant, persistent, monkeypatch):
    """float32 with torch.backends.cuda.matmul.allow_tf32: the product in TF32 on
    tensor cores, so the result changes, and stays within twice the error of the
    reference computed wholly in float16 (TF32's 10-bit mantissa, here only in
    the products) for outputs and every gradient. The same bits where TF32 is
    allowed through torch.backends.cuda.matmul.fp32_precision instead (torch's
    newer API, whose state the legacy getter refuses to read)."""
    cls, kwargs = SEQ_VARIANTS[variant]
    torch.manual_seed(0)
    m = cls(C, 40, **kwargs).to(DEVICE)
    gen = _seeded()
    x = _randn(T, 17, C, gen=gen)
    hx = _random_hx(m, 17, gen, torch.float32)
    exact = _run(m, x, hx)
    with monkeypatch.context() as mp:
        mp.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
        got = _run(m, x, hx)
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        with monkeypatch.context() as mp:
            mp.setattr(torch.backends.cuda.matmul, "fp32_precision", "tf32")
            new_api = _run(m, x, hx)
        for name in got:
            assert torch.equal(new_api[name], got[name]), f"{name}: fp32_precision='tf32' is not allow_tf32"
    ref64 = _run(_Reference(m, torch.float64), x, hx)
    ref16 = _run(_Reference(m, torch.float16), x, hx)
    assert any(not torch.equal(got[k], exact[k]) for k in exact), "allow_tf32 changed nothing"
    for name, want in ref64.items():
        key = name.replace("grad module.", "grad ")
        err = (got[key].double() - want.double()).abs().max().item()
        bound = 2 * (ref16[name].double() - want.double()).abs().max().item()
        assert err <= bound, f"{key}: TF32 error {err:.3e} exceeds twice the float16 reference's {bound / 2:.3e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("op", PERSISTENT_OPS)
def test_persistent_operators_match_cpu(op, packed, reverse, dtype, persistent):
    """Outputs, saved tensors and gradients as the CPU operators give them, and
    either path's backward on the other's forward."""
    _check_operators_match_cpu(op, packed, reverse, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_persistent_projection_wider_than_hidden(packed, dtype, persistent):
    """The operators take a projection wider than the hidden size (torch.nn does
    not): W_hh rows and the projection's outputs per block exceed H."""
    _check_operators_match_cpu("lstm_peephole_proj", packed, False, dtype, proj=3 * H + 1)


@pytest.mark.parametrize("dtype,stage", [(torch.float32, "1"), (torch.float16, "0")], ids=str)
@pytest.mark.parametrize("chunk_bytes", ["1", "3000"])
@pytest.mark.parametrize("variant", ["lstm_peephole_coupled", "gru_reset_before", "rnn_tanh"])
def test_persistent_steps_across_launches(variant, chunk_bytes, dtype, stage, persistent, monkeypatch):
    """One launch per chunk of steps of the input GEMM: the state carries over. In
    float16, each launch's first tensor-core product reads, from global memory, the
    h that the launch before it left."""
    monkeypatch.setenv("FUSEDRNN_CUDA_GX_CHUNK_BYTES", chunk_bytes)
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_STAGE", stage)
    cls, kwargs = SEQ_VARIANTS[variant]
    m = _make(cls, kwargs, dtype, num_layers=2, bidirectional=True)
    gen = _seeded()
    x = _packed([9, 4, 8, 1, 6], gen, dtype)
    assert_matches_reference(m, x, _random_hx(m, 5, gen, dtype))


def test_persistent_is_deterministic(persistent):
    torch.manual_seed(0)
    m = fusedrnn.GRU(C, H, num_layers=2, bidirectional=True, reset_after=False).to(DEVICE)
    x = _packed([5, 7, 7, 2, 3], _seeded(), torch.float32)
    a, b = _run(m, x, None), _run(m, x, None)
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs between two identical runs"


THREAD_ORDERS = ["reverse", "shuffle:5", "blocks", "blocks-reverse"]


@pytest.mark.skipif(not EMULATION, reason="the order of threads is the emulation's (FRNN_EMUL_ORDER)")
@pytest.mark.parametrize("path,grid", [("persistent", "many"), ("persistent", "one"), ("standard", "auto")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("variant", ["lstm", "lstm_peephole_coupled_proj", "gru", "gru_reset_before", "rnn_relu"])
def test_results_do_not_depend_on_the_order_of_threads(variant, dtype, path, grid, monkeypatch):
    """The same bits whichever order the emulation runs the threads in
    (tools/cuda_emulation/shim.h): within a barrier interval, in reverse or
    shuffled, and a persistent launch's blocks one at a time up to the grid
    barrier. Two threads that touch the same memory between two barriers, one
    of them writing, give results that depend on the order: a barrier missing.
    24 units, two layers, both directions, packed; in slices over several
    blocks (grid many) 17 rows, two row tiles on tensor cores in float16; in
    one block 9 rows, which fit its CUDA-core product in float32."""
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_GRID", grid)
    cls, kwargs = SEQ_VARIANTS[variant]
    torch.manual_seed(0)
    m = cls(C, 24, num_layers=2, bidirectional=True, **kwargs).to(DEVICE, dtype)
    gen = _seeded()
    lengths = [4, 1, 3, 4, 2, 4, 3, 1, 4, 2, 4, 4, 3, 1, 2, 4, 4][: 9 if grid == "one" else 17]
    x = _packed(lengths, gen, dtype)
    hx = _random_hx(m, len(lengths), gen, dtype)
    monkeypatch.delenv("FRNN_EMUL_ORDER", raising=False)
    want = _run(m, x, hx)
    for order in THREAD_ORDERS:
        monkeypatch.setenv("FRNN_EMUL_ORDER", order)
        got = _run(m, x, hx)
        for name in want:
            assert torch.equal(got[name], want[name]), f"{name} differs with the threads in order {order}"


def test_persistent_refusal_names_the_reason(persistent):
    """float32 products on CUDA cores hold at most 2048 outputs per block: 600 rows
    of 4 gates do not fit."""
    m = fusedrnn.LSTM(C, H).to(DEVICE)
    with pytest.raises(RuntimeError, match=r"FUSEDRNN_CUDA_PATH=persistent, but the persistent path does not run "
                                           r"this layer \(a batch of 600 rows, hidden size 10\): a batch of this many rows on "
                                           r"CUDA cores"):
        m(_randn(2, 600, C, gen=_seeded()))


def test_path_variable_is_checked(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "fast")
    m = fusedrnn.GRU(C, H).to(DEVICE)
    with pytest.raises(RuntimeError, match="FUSEDRNN_CUDA_PATH must be 'auto', 'standard' or 'persistent', "
                                           "got 'fast'"):
        m(_randn(T, N, C, gen=_seeded()))


@pytest.mark.parametrize("path", ["auto", "standard"])
def test_standard_paths_run_what_persistent_refuses(path, monkeypatch):
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
    m = _make(fusedrnn.LSTM, {"proj_size": P}, torch.float32)
    assert_matches_reference(m, _randn(T, N, C, gen=_seeded()))


@real_gpu
def test_persistent_refuses_packed_capture(persistent):
    m = fusedrnn.GRU(C, H).to(DEVICE)
    x = _packed([3, 7, 6, 1], _seeded(), torch.float32)
    m(x)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="a packed sequence inside CUDA graph capture"):
        with torch.cuda.graph(graph):
            m(x)


# ------------------------------------------------------ the automatic choice
#
# FUSEDRNN_CUDA_PATH=auto (the default) takes the persistent path where
# fusedrnn._C._persistent_pays says it is the faster one (tests/test_path_choice.py
# holds the rule to the measurements) and its plan takes the layer.


def _pays(module, steps, batch, dtype, training=True):
    gates = {"LSTM": 3 if getattr(module, "coupled_gates", False) else 4, "GRU": 3, "RNN": 1}[type(module).__name__]
    proj = bool(getattr(module, "proj_size", 0))
    return fusedrnn._C._persistent_pays(steps, batch, gates, module.hidden_size, proj,
                                        torch.empty((), dtype=dtype).element_size(), True, training)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("variant", ["lstm_peephole_coupled", "gru_reset_before", "rnn_relu"])
def test_auto_takes_the_persistent_path_where_it_pays(variant, dtype, monkeypatch):
    """The same bits as the persistent path forced (it is deterministic), and the
    reference's values."""
    cls, kwargs = SEQ_VARIANTS[variant]
    m = _make(cls, kwargs, dtype, num_layers=2)
    assert _pays(m, AUTO_T, N, dtype)
    x = _randn(AUTO_T, N, C, gen=_seeded(), dtype=dtype)
    hx = _random_hx(m, N, _seeded(1), dtype)
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "persistent")
    want = _run(m, x, hx)
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "auto")
    got = _run(m, x, hx)
    for name in want:
        assert torch.equal(got[name], want[name]), f"{name}: auto is not the persistent path here"
    assert_matches_reference(m, x, hx)


def test_auto_runs_the_standard_path_where_the_plan_declines(monkeypatch):
    """600 rows of 4 float32 gates do not fit a block of the persistent kernel
    (test_persistent_refusal_names_the_reason); auto runs them on the standard
    path, forward and backward, instead of raising."""
    m = _make(fusedrnn.LSTM, {}, torch.float32)
    assert _pays(m, AUTO_T, 600, torch.float32)
    x = _randn(AUTO_T, 600, C, gen=_seeded())
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "standard")
    want = _run(m, x, None)
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "auto")
    _compare_runs(_run(m, x, None), want, 1e-6)


# FRNN_EMUL_COOP_BLOCKS=n makes the emulated device a context that runs at most n
# blocks at once while it reports 16 multiprocessors: a cooperative launch of
# more blocks fails as the driver's does, with cudaErrorCooperativeLaunchTooLarge.
# A real device refuses only beyond the limit the plan reads, so it cannot be
# made to do that.
context_smaller_than_device = pytest.mark.skipif(
    not EMULATION, reason="the context smaller than its device is the emulation's (FRNN_EMUL_COOP_BLOCKS)")


@context_smaller_than_device
@pytest.mark.parametrize("chunked", [False, True], ids=["one-launch", "launch-per-step"])
@pytest.mark.parametrize("variant", ["lstm_peephole_coupled", "gru_reset_before", "rnn_relu"])
def test_auto_runs_the_standard_path_where_the_device_refuses_the_launch(variant, chunked, monkeypatch):
    """Every persistent launch refused for its size: auto runs each layer, forward
    and backward, on the standard path (the same bits as FUSEDRNN_CUDA_PATH=standard,
    no persistent launch recorded), and a later launch on the same thread reports
    no stale error. Forced, the refusal is an error that says why. Where the
    context holds the plan's blocks, auto still takes the persistent path."""
    from fusedrnn import _C
    if chunked:
        monkeypatch.setenv("FUSEDRNN_CUDA_GX_CHUNK_BYTES", "1")  # one step of Gx a chunk
    cls, kwargs = SEQ_VARIANTS[variant]
    m = _make(cls, kwargs, torch.float32, num_layers=2, bidirectional=True)
    assert _pays(m, AUTO_T, N, torch.float32)
    x = _randn(AUTO_T, N, C, gen=_seeded())
    hx = _random_hx(m, N, _seeded(1), torch.float32)
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "standard")
    standard = _run(m, x, hx)
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "persistent")
    persistent = _run(m, x, hx)
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_TRACE", "1")
    _C._persistent_traces()

    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "auto")
    monkeypatch.setenv("FRNN_EMUL_COOP_BLOCKS", "0")
    got = _run(m, x, hx)
    assert _C._persistent_traces()["records"] == []
    for name in standard:
        assert torch.equal(got[name], standard[name]), f"{name}: auto is not the standard path here"

    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "persistent")
    with pytest.raises(RuntimeError, match=r"FUSEDRNN_CUDA_PATH=persistent, but the device refused the cooperative "
                                           r"launch of 1 blocks of [a-z]+_persistent_forward_kernel "
                                           r"\(cudaErrorCooperativeLaunchTooLarge\): it runs fewer at once than the "
                                           r"plan counted from its multiprocessor count and the kernel's occupancy"):
        m(x, hx)

    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "auto")
    monkeypatch.setenv("FRNN_EMUL_COOP_BLOCKS", "1")
    got = _run(m, x, hx)
    records = _C._persistent_traces()["records"]
    assert records and all(r["blocks"] == 1 for r in records)
    for name in persistent:
        assert torch.equal(got[name], persistent[name]), f"{name}: auto is not the persistent path here"


@context_smaller_than_device
def test_refused_launch_warns_once():
    """The fall back to the standard path is said once a process (torch's warning
    of a custom operator: on stderr), naming the kernel and why."""
    import subprocess
    import sys
    script = (
        "import torch, fusedrnn\n"
        "assert fusedrnn.backend_info()['cpu_isa'] == 'CUDA-EMULATION'\n"
        "m = fusedrnn.GRU(6, 10, num_layers=2)\n"
        "x = torch.randn(20, 5, 6)\n"
        "for _ in range(3):\n"
        "    m(x)[0].sum().backward()\n"
    )
    env = dict(os.environ, FUSEDRNN_CUDA_PATH="auto", FRNN_EMUL_COOP_BLOCKS="0")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    warning = ("Warning: fusedrnn: the device refused the cooperative launch of 1 blocks of "
               "gru_persistent_forward_kernel (cudaErrorCooperativeLaunchTooLarge): it runs fewer at once than the "
               "plan counted from its multiprocessor count and the kernel's occupancy; such layers run on the "
               "standard path")
    assert run.stderr.count(warning) == 1, run.stderr
    assert run.stderr.count("fusedrnn: the device refused") == 1, run.stderr


@context_smaller_than_device
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("variant", ["lstm_peephole_coupled", "gru", "gru_reset_before", "rnn_relu"])
def test_backward_refused_after_a_persistent_forward(variant, dtype, monkeypatch):
    """A persistent forward whose backward launch is refused: the standard
    backward takes the persistent forward's saved tensors, the same bits as that
    forward followed by FUSEDRNN_CUDA_PATH=standard's backward."""
    cls, kwargs = SEQ_VARIANTS[variant]
    m = _make(cls, kwargs, dtype, num_layers=2)
    assert _pays(m, AUTO_T, N, dtype)
    x = _randn(AUTO_T, N, C, gen=_seeded(), dtype=dtype)
    cot = _randn(AUTO_T, N, m.hidden_size, gen=_seeded(2), dtype=dtype)

    def grads(backward_env):
        for p in m.parameters():
            p.grad = None
        xin = x.clone().requires_grad_()
        monkeypatch.setenv("FUSEDRNN_CUDA_PATH", "auto")
        monkeypatch.delenv("FRNN_EMUL_COOP_BLOCKS", raising=False)
        out = m(xin)[0]
        for name, value in backward_env.items():
            monkeypatch.setenv(name, value)
        out.backward(cot)
        return [xin.grad] + [p.grad for p in m.parameters()]

    want = grads({"FUSEDRNN_CUDA_PATH": "standard"})
    got = grads({"FRNN_EMUL_COOP_BLOCKS": "0"})
    for k, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a, b), f"gradient {k} differs"
