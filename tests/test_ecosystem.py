"""fusedrnn where PyTorch users work: torch.compile, torch.export, autocast,
DDP and FSDP2, packaging, and the examples."""

import copy
import os
import re
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_sequence
from torch.utils import _pytree as pytree

import fusedrnn

ROOT = Path(__file__).resolve().parents[1]


class AllModules(nn.Module):
    """Every fusedrnn module in one model, so one compilation covers them all."""

    def __init__(self):
        super().__init__()
        self.lstm = fusedrnn.LSTM(6, 8, num_layers=2, bidirectional=True, proj_size=5, peephole=True)
        self.gru = fusedrnn.GRU(10, 7, reset_after=False, batch_first=False)
        self.rnn = fusedrnn.RNN(7, 6, nonlinearity="relu")
        self.lstm_cell = fusedrnn.LSTMCell(6, 5, coupled_gates=True)
        self.gru_cell = fusedrnn.GRUCell(5, 4)
        self.rnn_cell = fusedrnn.RNNCell(4, 3)

    def forward(self, x):
        packed = isinstance(x, torch.nn.utils.rnn.PackedSequence)
        y, (h, c) = self.lstm(x)
        y, h2 = self.gru(y)
        y, h3 = self.rnn(y)
        data = y.data if packed else y[-1]
        h_cell, c_cell = self.lstm_cell(x.data[: data.shape[0]] if packed else x[-1])
        g = self.gru_cell(h_cell)
        r = self.rnn_cell(g)
        return data.sum() + h.sum() + c.sum() + h2.sum() + h3.sum() + r.sum() + c_cell.sum()


def _inputs(packed):
    if packed:
        return pack_sequence([torch.randn(n, 6) for n in (4, 6, 3)], enforce_sorted=False)
    return torch.randn(5, 3, 6)


def _grads(model, x):
    model.zero_grad()
    loss = model(x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_compile_fullgraph_training_matches_eager(packed):
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = AllModules()
    x = _inputs(packed)
    compiled = torch.compile(model, fullgraph=True)
    loss_c, grads_c = _grads(compiled, x)
    loss_e, grads_e = _grads(model, x)
    print("loss", loss_c.item(), loss_e.item())
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b)


def test_compile_dynamic_shapes_training_matches_eager():
    # Symbolic T and N: AOTAutograd traces each layer's forward and backward
    # operators through their fake kernels, the saved gates and states in the
    # input's dtype.
    torch.manual_seed(0)
    torch._dynamo.reset()
    lstm, gru = fusedrnn.LSTM(4, 6, peephole=True), fusedrnn.GRU(4, 6, reset_after=False)
    compiled = torch.compile(lambda x: lstm(x)[0].sum() + gru(x)[0].sum(), dynamic=True, fullgraph=True)
    for T, N in ((5, 3), (9, 2)):
        x = torch.randn(T, N, 4)
        got = _grads_of(lambda: compiled(x), lstm, gru)
        want = _grads_of(lambda: lstm(x)[0].sum() + gru(x)[0].sum(), lstm, gru)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


def _grads_of(loss, *modules):
    params = [p for m in modules for p in m.parameters()]
    return torch.autograd.grad(loss(), params)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_compile_fullgraph_inference_matches_eager(packed):
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = AllModules().eval()
    x = _inputs(packed)
    with torch.no_grad():
        out_c = torch.compile(model, fullgraph=True)(x)
        out_e = model(x)
    torch.testing.assert_close(out_c, out_e)


def test_export_shows_fusedrnn_operators():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = fusedrnn.LSTM(6, 8, batch_first=True)
            self.gru = fusedrnn.GRU(8, 8, batch_first=True)

        def forward(self, x):
            return self.gru(self.lstm(x)[0])[0]

    model = Tagger().eval()
    x = torch.randn(2, 5, 6)
    ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    print(sorted(targets))
    assert any("fusedrnn.lstm_forward" in t for t in targets)
    assert any("fusedrnn.gru_forward" in t for t in targets)
    torch.testing.assert_close(ep.module()(x), model(x))


ALL_MODULES = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]


def _module_and_input(name):
    """A seeded module of each kind, 6 -> 8, and an input for it."""
    torch.manual_seed(0)
    m = getattr(fusedrnn, name)(6, 8)
    return m, torch.randn(4, 6) if name.endswith("Cell") else torch.randn(5, 4, 6)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", ALL_MODULES)
def test_jit_trace_matches_eager_and_trains(name):
    # torch.jit.trace checks its trace by running it again; a trace taken under
    # no_grad must still train. The oracle is the eager module.
    m, x = _module_and_input(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning, and trace is deprecated in torch 2.13
        checked = torch.jit.trace(m, (x,))
        with torch.no_grad():
            traced = torch.jit.trace(m, (x,), check_trace=False)
    torch.testing.assert_close(_first(checked(x)), _first(m(x)), rtol=0, atol=0)
    xt, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    _first(traced(xt)).sum().backward()
    want = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    _first(m(xe)).sum().backward()
    torch.testing.assert_close(xt.grad, xe.grad, rtol=0, atol=0)
    for p, g in zip(m.parameters(), want):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=0)


def _grads_by_name(module, x, run=None):
    """The gradients of the input and of each parameter (by name) of module of
    the sum of the first output of run (the module itself by default)."""
    x = x.clone().requires_grad_()
    module.zero_grad()
    _first((module if run is None else run)(x)).sum().backward()
    return {"input": x.grad, **{n: p.grad for n, p in module.named_parameters()}}


@pytest.mark.parametrize("name", ALL_MODULES)
def test_program_exported_under_no_grad_trains_and_compiles(name):
    # An export for inference (under no_grad) holds the operators' flags as
    # constants; torch.nn's exported program still trains, and so must this one:
    # the eager module's gradients, directly and through torch.compile.
    m, x = _module_and_input(name)
    with torch.no_grad():
        program = torch.export.export(m, (x,)).module()
    want = _grads_by_name(m, x)
    got = _grads_by_name(program, x)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    torch._dynamo.reset()
    compiled = _grads_by_name(program, x, torch.compile(program, backend="aot_eager"))
    for key in want:
        torch.testing.assert_close(compiled[key], want[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", ["LSTM", "GRUCell"])
def test_compiled_inference_takes_the_operator_that_saves_nothing(name):
    # Only an export is taken saving under no_grad; torch.compile specialises on
    # grad mode, so its no_grad graph keeps the operator that saves nothing.
    m, x = _module_and_input(name)
    flags = []

    def backend(gm, example_inputs):
        flags.extend(n.args[-1] for n in gm.graph.nodes
                     if n.op == "call_function" and str(n.target).startswith("fusedrnn."))
        return gm

    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(m, backend=backend, fullgraph=True)(x)
        want = m(x)
    assert flags == [False]
    torch.testing.assert_close(_first(got), _first(want), rtol=0, atol=0)


class _Packing(nn.Module):
    """Packs its padded batch (unsorted lengths) and runs the RNN without h0."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, lengths):
        y, h = self.rnn(torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False))
        return torch.nn.utils.rnn.pad_packed_sequence(y, total_length=x.size(0))[0], h


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_jit_trace_of_packing_model_runs_at_every_batch_size(name):
    # The zero initial states take their batch from batch_sizes in the trace, as
    # torch.nn's do; the oracle is the eager model at each batch size.
    torch.manual_seed(0)
    model = _Packing(getattr(fusedrnn, name)(6, 8, bidirectional=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning, and trace is deprecated in torch 2.13
        traced = torch.jit.trace(model, (torch.randn(7, 3, 6), torch.tensor([7, 2, 5])), check_trace=False)
    for lengths in ([4, 6], [7, 1, 3, 7, 2], [5]):
        x = torch.randn(7, len(lengths), 6)
        got, want = traced(x, torch.tensor(lengths)), model(x, torch.tensor(lengths))
        torch.testing.assert_close(got, want, rtol=0, atol=0)


class _LeafTracer(torch.fx.Tracer):
    """The Tracer subclass the README gives for torch.fx.symbolic_trace."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, (fusedrnn.LSTM, fusedrnn.GRU, fusedrnn.RNN, fusedrnn.LSTMCell, fusedrnn.GRUCell,
                              fusedrnn.RNNCell)) or super().is_leaf_module(m, qualname)


@pytest.mark.parametrize("name", ALL_MODULES)
def test_fx_trace_with_the_modules_as_leaves(name):
    m, x = _module_and_input(name)
    model = nn.Sequential(nn.Linear(6, 6), m)
    graph = _LeafTracer().trace(model)
    assert any(n.op == "call_module" and n.target == "1" for n in graph.nodes)
    traced = torch.fx.GraphModule(model, graph)
    torch.testing.assert_close(_first(traced(x)), _first(model(x)), rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL_MODULES)
def test_autocast_cpu_bfloat16(name):
    m, x = _module_and_input(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _first(m(x))
    assert y.dtype == torch.bfloat16
    # the same as running the module converted to bfloat16
    ref = getattr(fusedrnn, name)(6, 8).to(torch.bfloat16)
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(y, _first(ref(x.bfloat16())))
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters())


@pytest.mark.parametrize("name,kwargs", [("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}), ("RNN", {})])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_autocast_cpu_every_output_in_bfloat16(name, kwargs, packed):
    """Every output, the states included, comes out in the autocast dtype, for a
    PackedSequence as for a padded batch (README: where torch.nn's do not), with
    the values of the module converted to bfloat16."""
    torch.manual_seed(0)
    m = getattr(fusedrnn, name)(6, 8, **kwargs)
    x = torch.randn(5, 3, 6)
    inp = nn.utils.rnn.pack_padded_sequence(x, [5, 4, 2]) if packed else x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, h = m(inp)
    ref = getattr(fusedrnn, name)(6, 8, **kwargs).to(torch.bfloat16)
    ref.load_state_dict(m.state_dict())
    y_ref, h_ref = ref(nn.utils.rnn.pack_padded_sequence(x.bfloat16(), [5, 4, 2]) if packed else x.bfloat16())
    outs = [y.data if packed else y] + list(h if isinstance(h, tuple) else (h,))
    refs = [y_ref.data if packed else y_ref] + list(h_ref if isinstance(h_ref, tuple) else (h_ref,))
    for out, expected in zip(outs, refs, strict=True):
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    "name,kwargs",
    [("LSTM", {"batch_first": True}), ("LSTM", {"num_layers": 2, "bidirectional": True, "proj_size": 3}),
     ("GRU", {}), ("GRU", {"bidirectional": True, "batch_first": True}), ("RNN", {"batch_first": True}),
     ("LSTM", {"num_layers": 2, "bidirectional": True, "packed": True}), ("GRU", {"packed": True}),
     ("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {})],
)
def test_trains_on_inputs_made_under_inference_mode(name, kwargs):
    """Features of a frozen model, made under torch.inference_mode, train a module
    in grad mode: the input and the initial state made there are saved for
    backward as copies. Gradients as torch.nn's for the same values in ordinary
    tensors, in float64 (where the two differ by rounding far below the tolerance)."""
    torch.manual_seed(0)
    kwargs = dict(kwargs)
    packed = kwargs.pop("packed", False)
    ref = getattr(nn, name)(6, 8, dtype=torch.float64, **kwargs)
    fused = getattr(fusedrnn, name).from_torch(copy.deepcopy(ref))
    if name.endswith("Cell"):
        shapes = [(4, 6), (4, 8), (4, 8)] if name == "LSTMCell" else [(4, 6), (4, 8)]
    else:
        layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
        x_shape = (3, 5, 6) if kwargs.get("batch_first") else (5, 3, 6)
        shapes = [x_shape, (layers, 3, kwargs.get("proj_size") or 8)]
        if name == "LSTM":
            shapes.append((layers, 3, 8))
    with torch.inference_mode():
        made = [torch.randn(s, dtype=torch.float64) for s in shapes]
    plain = [t.clone() for t in made]
    assert all(t.is_inference() for t in made) and not any(t.is_inference() for t in plain)

    def run(m, tensors):
        x, *state = tensors
        if packed:  # a PackedSequence built under inference_mode: its data and batch_sizes are inference tensors
            with torch.inference_mode(x.is_inference()):
                x = nn.utils.rnn.pack_padded_sequence(x, [5, 4, 2])
        out = m(x, tuple(state) if len(state) == 2 else state[0])
        return sum(t.sum() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point())

    run(fused, made).backward()
    run(ref, plain).backward()
    for (n, p), q in zip(fused.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_autocast_training_with_grad_scaler():
    torch.manual_seed(0)
    model = nn.Sequential()
    rnn = fusedrnn.LSTM(6, 16, num_layers=2)
    head = nn.Linear(16, 3)
    opt = torch.optim.SGD(list(rnn.parameters()) + list(head.parameters()), lr=0.5)
    scaler = torch.amp.GradScaler("cpu")
    x = torch.randn(10, 8, 6)
    target = torch.randint(0, 3, (8,))
    losses = []
    for _ in range(15):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, _ = rnn(x)
            loss = nn.functional.cross_entropy(head(y[-1]).float(), target)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    print(losses)
    assert losses[-1] < losses[0]


# -------------------------------------------------------------- distributed

def _dist_worker(rank, world, port, kind, result_path):
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = _dist_model()
    x, y = _dist_data()
    lo, hi = rank * x.shape[1] // world, (rank + 1) * x.shape[1] // world
    if kind == "ddp":
        wrapped = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for sub in (model.rnn, model.cell):
            fully_shard(sub, mesh=mesh)
        wrapped = fully_shard(model, mesh=mesh)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    loss = _dist_loss(wrapped, x[:, lo:hi], y[lo:hi])
    loss.backward()
    opt.step()
    state = {}
    for name, p in wrapped.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        state[name.replace("module.", "")] = full.detach().clone()
    if rank == 0:
        torch.save(state, result_path)
    dist.destroy_process_group()
    # Leave without interpreter shutdown: gloo's worker thread may still be
    # releasing the last all-reduce, whose captured thread-local state holds a
    # Python object; taking the GIL for it while Python finalizes ends the thread
    # with std::terminate (SIGABRT, "terminate called without an active
    # exception") in about one run in three on 2 cores, after the work is done.
    os._exit(0)


class _DistModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = fusedrnn.LSTM(5, 12, num_layers=2, bidirectional=True)
        self.cell = fusedrnn.GRUCell(24, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(self.cell(y[-1]))


def _dist_model():
    return _DistModel()


def _dist_data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(7, 8, 5, generator=g), torch.randint(0, 2, (8,), generator=g)


def _dist_loss(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_distributed_training_equals_single_process(kind, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = tmp_path / "state.pt"
    mp.spawn(_dist_worker, args=(2, port, kind, str(result)), nprocs=2, join=True)
    got = torch.load(result)

    torch.manual_seed(0)
    model = _dist_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _dist_data()
    _dist_loss(model, x, y).backward()
    opt.step()
    for name, p in model.named_parameters():
        diff = (got[name] - p.detach()).abs().max().item()
        print(name, diff)
        torch.testing.assert_close(got[name], p.detach(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- packaging

def test_version_and_backend_info():
    assert isinstance(fusedrnn.__version__, str) and fusedrnn.__version__.count(".") >= 2
    info = fusedrnn.backend_info()
    print(info)
    assert info["cpu_isa"] in info["cpu_isas_compiled"]
    # A build runs on any CPU (the baseline is in it) unless it was made for the
    # machine that built it (FUSEDRNN_CPU_ISAS, the sanitizer's): that one's only.
    assert "DEFAULT" in info["cpu_isas_compiled"] or info["cpu_isas_compiled"] == [info["cpu_isa"]]
    assert info["cuda_available"] == torch.cuda.is_available()
    assert info["torch_built"].split(".")[:2] == torch.__version__.split("+")[0].split(".")[:2]


def _cpu_vendor():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_tile_switch_is_refused_where_the_kernels_cannot_take_tiles():
    # Kernels without AVX-512 (ATEN_CPU_CAPABILITY=default) take no bfloat16
    # products at all: asked for the tiles, they say so, as FUSEDRNN_CPU_AMX=always does.
    script = ("import torch, fusedrnn\n"
              "assert fusedrnn.backend_info()['cpu_isa'] == 'DEFAULT'\n"
              "fusedrnn.LSTM(3, 4).to(torch.bfloat16)(torch.randn(2, 1, 3, dtype=torch.bfloat16))\n")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default", FUSEDRNN_CPU_AMX_TILES="always", PYTHONPATH=str(ROOT))
    env.pop("FUSEDRNN_CPU_AMX", None)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert ("FUSEDRNN_CPU_AMX_TILES=always, but this CPU, its OS or the kernels' instruction set (DEFAULT) "
            "cannot run AMX tiles") in run.stderr, run.stderr


def test_bfloat16_products_follow_the_switch_and_the_machine(monkeypatch):
    monkeypatch.delenv("FUSEDRNN_CPU_AMX", raising=False)
    monkeypatch.delenv("FUSEDRNN_CPU_AMX_TILES", raising=False)
    avx512 = fusedrnn.backend_info()["cpu_isa"] == "AVX512"
    dot = "avx512_bf16" in _cpu_flags() and avx512
    tiles = dot and {"amx_tile", "amx_bf16"} <= _cpu_flags()

    def products():
        return fusedrnn.backend_info()["cpu_bfloat16_products"]

    assert products() == ("amx" if tiles else "avx512-bf16" if dot else "float32")
    lstm = fusedrnn.LSTM(3, 4).to(torch.bfloat16)
    x = torch.randn(2, 1, 3, dtype=torch.bfloat16)
    monkeypatch.setenv("FUSEDRNN_CPU_AMX_TILES", "never")
    assert products() == ("avx512-bf16" if dot else "float32")
    lstm(x)
    monkeypatch.setenv("FUSEDRNN_CPU_AMX_TILES", "always")
    if not tiles:
        with pytest.raises(RuntimeError, match=r"FUSEDRNN_CPU_AMX_TILES=always, but this CPU, its OS or the "
                                               r"kernels' instruction set \(\w+\) cannot run AMX tiles"):
            lstm(x)
    else:
        lstm(x)
    monkeypatch.delenv("FUSEDRNN_CPU_AMX_TILES")
    monkeypatch.setenv("FUSEDRNN_CPU_AMX", "never")
    assert products() == "float32"
    monkeypatch.setenv("FUSEDRNN_CPU_AMX", "sometimes")
    lstm = fusedrnn.LSTM(3, 4).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="FUSEDRNN_CPU_AMX must be auto, always or never, got 'sometimes'"):
        lstm(torch.randn(2, 1, 3, dtype=torch.bfloat16))


def test_single_step_products_follow_the_switch_and_the_machine(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_CPU_BLAS", "always")
    assert fusedrnn.backend_info()["cpu_single_step_products"] == "blas"
    monkeypatch.setenv("FUSEDRNN_CPU_BLAS", "never")
    assert fusedrnn.backend_info()["cpu_single_step_products"] == "own"
    monkeypatch.delenv("FUSEDRNN_CPU_BLAS")
    mkl_on_intel = torch.backends.mkl.is_available() and _cpu_vendor() == "GenuineIntel"
    assert fusedrnn.backend_info()["cpu_single_step_products"] == ("blas by shape" if mkl_on_intel else "own")
    monkeypatch.setenv("FUSEDRNN_CPU_BLAS", "sometimes")
    cell = fusedrnn.RNNCell(3, 4)
    with pytest.raises(RuntimeError, match="FUSEDRNN_CPU_BLAS must be auto, always or never, got 'sometimes'"):
        cell(torch.randn(2, 3))


def test_build_against_another_torch_is_a_clear_error():
    from fusedrnn import _ops

    _ops._check_build({"torch_version": torch.__version__.split("+")[0]}, torch.__version__)
    with pytest.raises(ImportError, match="built against torch 1.0.0 but torch .* is installed; rebuild"):
        _ops._check_build({"torch_version": "1.0.0"}, torch.__version__)


# The instruction sets below the one this machine picks: those a build compiled.
LOWER_ISAS = [isa for isa in ("DEFAULT", "AVX2") if isa in fusedrnn.backend_info()["cpu_isas_compiled"]]


@pytest.mark.parametrize("isa", LOWER_ISAS)
def test_every_compiled_instruction_set_matches(isa):
    code = (
        "import torch, fusedrnn\n"
        f"assert fusedrnn.backend_info()['cpu_isa'] == '{isa}', fusedrnn.backend_info()\n"
        "for cls in (fusedrnn.LSTM, fusedrnn.GRU, fusedrnn.RNN):\n"
        "    m = cls(5, 21, num_layers=2, bidirectional=True).double()\n"
        "    fusedrnn.testing.assert_matches_reference(m, torch.randn(6, 4, 5, dtype=torch.float64))\n"
        "    fusedrnn.testing.assert_matches_reference(m.float(), torch.randn(6, 40, 5))\n"
        "print('ok')\n"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa.lower(), PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    print(r.stdout, r.stderr[-2000:])
    assert r.returncode == 0 and "ok" in r.stdout


@pytest.mark.parametrize("isa", LOWER_ISAS)
def test_every_compiled_instruction_set_saturates_as_torch(isa):
    """Each instruction set's own exp and tanh at the ends of the float range
    (huge, infinite and subnormal-making pre-activations) and relu's backward at
    an infinite gradient: the edge tests of test_reliability, run under it."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa.lower(), PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_reliability.py"),
         "-k", "huge_preactivations or subnormal or inactive_unit or saturated or relu_passes", "-c", "/dev/null",
         "--rootdir", str(ROOT / "tests")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    print(r.stdout[-3000:], r.stderr[-2000:])
    assert r.returncode == 0 and re.search(r"\b[1-9][0-9]* passed", r.stdout) and "failed" not in r.stdout


@pytest.mark.parametrize("isa", LOWER_ISAS)
def test_every_compiled_instruction_set_rounds_bfloat16_as_torch(isa):
    # The kernels of a bfloat16 call store and load its output and saved gates
    # in bfloat16 with each instruction set's own conversion: the bit-for-bit
    # test of test_modules, run under this one.
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa.lower(), PYTHONPATH=str(ROOT))
    check = f"import fusedrnn; assert fusedrnn.backend_info()['cpu_isa'] == '{isa}'"
    assert subprocess.run([sys.executable, "-c", check], env=env, timeout=600).returncode == 0
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_modules.py"),
         "-k", "test_bfloat16_call_is_the_float32_call_rounded"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    print(r.stdout[-3000:], r.stderr[-2000:])
    assert r.returncode == 0 and re.search(r"\b[1-9][0-9]* passed", r.stdout) and "failed" not in r.stdout


# The sdist must hold every file under csrc/ (the build compiles the .cpp and
# .cu files and they include the headers), the package, the tests with their
# helpers, the build files, the licence and the README; the oracle is the
# source tree itself.
def test_the_source_distribution_holds_every_file_the_build_reads(tmp_path):
    # A fresh egg-info: sdist otherwise goes by the file list of an earlier one.
    egg_base, dist = tmp_path / "egg", tmp_path / "dist"
    egg_base.mkdir()
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(egg_base),
                    "sdist", "-d", str(dist)], cwd=ROOT, check=True, capture_output=True)
    (archive,) = dist.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        held = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").rglob("*") if p.is_file()}
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fusedrnn").glob("*.py")}
    assert any(s.endswith(".h") for s in sources) and any(s.endswith(".cu") for s in sources)
    tests = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts}
    wanted = sources | package | tests | {"setup.py", "pyproject.toml", "LICENSE", "README.md"}
    missing = sorted(wanted - held)
    assert not missing, f"the sdist lacks {missing} (MANIFEST.in)"


def test_a_build_without_torch_says_how_to_build(tmp_path):
    """pip's default isolated build has no torch: setup.py says so instead of a
    traceback, and still makes an sdist, which compiles nothing."""

    def without_torch(*args):
        code = ("import sys, runpy; sys.modules['torch'] = None; "
                f"sys.argv = ['setup.py', *{list(args)!r}]; runpy.run_path('setup.py', run_name='__main__')")
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)

    r = without_torch("build_ext")
    assert r.returncode != 0
    assert "install torch first, then build with `pip install --no-build-isolation" in r.stderr
    assert "Traceback" not in r.stderr
    (tmp_path / "egg").mkdir()
    r = without_torch("-q", "egg_info", "--egg-base", str(tmp_path / "egg"), "sdist", "-d", str(tmp_path / "dist"))
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "dist").glob("fusedrnn-*.tar.gz"))


@pytest.mark.slow
def test_pip_wheel_builds(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=1800,
    )
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0
    assert list(tmp_path.glob("fusedrnn-*.whl"))


# ----------------------------------------------------------------- examples

@pytest.mark.parametrize(
    "script,args",
    [
        ("char_lm.py", ["--steps", "30", "--hidden", "32", "--sample-len", "20"]),
        ("char_lm.py", ["--cell", "gru", "--steps", "30", "--hidden", "32", "--sample-len", "20"]),
        ("classify_packed.py", ["--steps", "30", "--hidden", "16"]),
        ("convert_existing.py", ["--steps", "2", "--timed", "1"]),
    ],
)
def test_examples_run(script, args):
    _run_example(script, args)


@pytest.mark.parametrize("args", [[], ["--torchscript"]])
def test_onnx_example_runs(args):
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)
    out = _run_example("export_onnx.py", args)
    assert "LSTM" in out and "GRU" in out  # the script checks ONNX Runtime against the model itself


def _run_example(script, args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], env=env,
                       capture_output=True, text=True, timeout=300)
    print(r.stdout[-2000:], r.stderr[-2000:])
    assert r.returncode == 0
    return r.stdout
