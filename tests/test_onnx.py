"""ONNX export: every module and variant exports through both of torch.onnx's
exporters to standard ONNX LSTM, GRU and RNN nodes, and ONNX Runtime running
the exported model agrees with the reference."""

import warnings

import pytest
import torch

import fusedrnn
from fusedrnn import reference

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # the dynamo exporter's

EXPORTERS = [pytest.param(True, id="dynamo"), pytest.param(False, id="torchscript")]

LAYERS = {
    "lstm_2layer_bidir": lambda: fusedrnn.LSTM(5, 7, num_layers=2, bidirectional=True),
    "lstm_peephole": lambda: fusedrnn.LSTM(5, 7, peephole=True),
    "lstm_coupled": lambda: fusedrnn.LSTM(5, 7, coupled_gates=True),
    "lstm_peephole_coupled_bidir": lambda: fusedrnn.LSTM(5, 7, bidirectional=True, peephole=True, coupled_gates=True),
    "lstm_batch_first_no_bias": lambda: fusedrnn.LSTM(5, 7, batch_first=True, bias=False),
    "gru_2layer_bidir": lambda: fusedrnn.GRU(5, 7, num_layers=2, bidirectional=True),
    "gru_reset_before": lambda: fusedrnn.GRU(5, 7, reset_after=False),
    "rnn_tanh_bidir": lambda: fusedrnn.RNN(5, 7, bidirectional=True),
    "rnn_relu_no_bias_batch_first": lambda: fusedrnn.RNN(5, 7, nonlinearity="relu", bias=False, batch_first=True),
}

CELLS = {
    "lstm_cell": lambda: fusedrnn.LSTMCell(5, 7),
    "lstm_cell_peephole_coupled": lambda: fusedrnn.LSTMCell(5, 7, peephole=True, coupled_gates=True),
    "gru_cell": lambda: fusedrnn.GRUCell(5, 7),
    "gru_cell_reset_before_no_bias": lambda: fusedrnn.GRUCell(5, 7, reset_after=False, bias=False),
    "rnn_cell_tanh": lambda: fusedrnn.RNNCell(5, 7),
    "rnn_cell_relu": lambda: fusedrnn.RNNCell(5, 7, nonlinearity="relu"),
}


def _module(make):
    torch.manual_seed(0)
    m = make().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.6, 0.6)  # large enough that a gate in the wrong place shows
    return m


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _export(m, args, path, dynamo, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, args, str(path), dynamo=dynamo, **kwargs)
    return onnx.load(str(path)), ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, *tensors):
    return [torch.from_numpy(a) for a in session.run(None, {
        i.name: t.numpy() for i, t in zip(session.get_inputs(), tensors)})]


def _assert_matches(got, reference_out):
    """The ONNX Runtime outputs against the reference's (outputs, states)."""
    want = _flat(reference_out)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def _node_types(model):
    return sorted({n.op_type for n in model.graph.node})


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_export_to_standard_nodes_that_match_the_reference(name, dynamo, tmp_path):
    m = _module(LAYERS[name])
    lstm = isinstance(m, fusedrnn.LSTM)
    D, L = (2 if m.bidirectional else 1), m.num_layers
    x = torch.randn(3, 6, 5) if m.batch_first else torch.randn(6, 3, 5)
    h0 = torch.randn(L * D, 3, 7)
    hx = (h0, torch.randn(L * D, 3, 7)) if lstm else h0
    model, session = _export(m, (x, hx), tmp_path / "m.onnx", dynamo)
    node = "LSTM" if lstm else ("GRU" if isinstance(m, fusedrnn.GRU) else "RNN")
    assert node in _node_types(model)
    assert sum(n.op_type == node for n in model.graph.node) == L * D
    assert not any(n.domain not in ("", "ai.onnx") for n in model.graph.node)
    _assert_matches(_run(session, x, *_flat(hx)), reference.forward(m, x, hx))


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("name", list(CELLS))
def test_cells_export_to_one_step_nodes_that_match_the_reference(name, dynamo, tmp_path):
    m = _module(CELLS[name])
    x, h, c = torch.randn(4, 5), torch.randn(4, 7), torch.randn(4, 7)
    hx = (h, c) if isinstance(m, fusedrnn.LSTMCell) else h
    model, session = _export(m, (x, hx), tmp_path / "c.onnx", dynamo)
    assert {"LSTM", "GRU", "RNN"} & set(_node_types(model))
    _assert_matches(_run(session, x, *_flat(hx)), reference.cell_forward(m, x, hx))


@pytest.mark.parametrize("dynamo,opset", [(True, 17), (True, 18), (False, 14), (False, 17)])
def test_export_at_other_opsets(dynamo, opset, tmp_path):
    m = _module(lambda: fusedrnn.LSTM(5, 7, bidirectional=True, peephole=True, coupled_gates=True))
    x = torch.randn(6, 3, 5)
    model, session = _export(m, (x,), tmp_path / "o.onnx", dynamo, opset_version=opset)
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {opset}
    _assert_matches(_run(session, x), reference.forward(m, x))


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_export_with_dynamic_batch_and_length(dynamo, tmp_path):
    m = _module(lambda: fusedrnn.LSTM(5, 7, num_layers=2, bidirectional=True, batch_first=True, peephole=True))
    x, h, c = torch.randn(3, 6, 5), torch.randn(4, 3, 7), torch.randn(4, 3, 7)
    names = dict(input_names=["x", "h", "c"])
    if dynamo:
        B, T = torch.export.Dim("B"), torch.export.Dim("T")
        kwargs = dict(dynamic_shapes={"input": {0: B, 1: T}, "hx": ({1: B}, {1: B})})
    else:
        kwargs = dict(dynamic_axes={"x": {0: "B", 1: "T"}, "h": {1: "B"}, "c": {1: "B"}})
    _, session = _export(m, (x, (h, c)), tmp_path / "d.onnx", dynamo, **names, **kwargs)
    for n, t in ((2, 9), (5, 1)):
        x, h, c = torch.randn(n, t, 5), torch.randn(4, n, 7), torch.randn(4, n, 7)
        _assert_matches(_run(session, x, h, c), reference.forward(m, x, (h, c)))


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_export_of_a_model_with_default_states_and_unbatched_input(dynamo, tmp_path):
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = fusedrnn.GRU(5, 7, reset_after=False)
            self.cell = fusedrnn.LSTMCell(7, 4, coupled_gates=True)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            y, _ = self.gru(x)
            h, _ = self.cell(y[-1])
            return self.head(h)

    m = _module(Model)
    x = torch.randn(6, 5)
    _, session = _export(m, (x,), tmp_path / "u.onnx", dynamo)
    y, _ = reference.forward(m.gru, x)
    h, _ = reference.cell_forward(m.cell, y[-1])
    torch.testing.assert_close(_run(session, x)[0], m.head(h), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["lstm_peephole_coupled_bidir", "gru_2layer_bidir", "rnn_relu_no_bias_batch_first",
                                  "lstm_cell_peephole_coupled", "gru_cell_reset_before_no_bias", "rnn_cell_tanh"])
def test_a_program_captured_before_exports_with_the_translation_table(name, tmp_path):
    cell = name in CELLS
    m = _module(CELLS[name] if cell else LAYERS[name])
    x = torch.randn(4, 5) if cell else (torch.randn(3, 6, 5) if m.batch_first else torch.randn(6, 3, 5))
    with torch.no_grad():
        program = torch.export.export(m, (x,))
    assert any("fusedrnn" in str(n.target) for n in program.graph.nodes)
    model, session = _export(program, (x,), tmp_path / "p.onnx", True,
                             custom_translation_table=fusedrnn.onnx_translation_table())
    assert not any(n.domain not in ("", "ai.onnx") for n in model.graph.node)
    want = (reference.cell_forward if cell else reference.forward)(m, x)
    _assert_matches(_run(session, x), want)


def _message_chain(error):
    text = []
    while error is not None:
        text.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(text)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_export_refuses_what_onnx_cannot_express(dynamo, tmp_path):
    # Both exporters pass fusedrnn's error on (the dynamo exporter retries a
    # refused non-strict capture with a strict one, which refuses too).
    class Packed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = fusedrnn.GRU(5, 7)

        def forward(self, x, lengths):
            packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
            return self.gru(packed)[1]

    cases = [
        (fusedrnn.LSTM(5, 7, proj_size=3).eval(), (torch.randn(4, 2, 5),), "projection", "lstm_forward"),
        (Packed().eval(), (torch.randn(4, 2, 5), torch.tensor([4, 3])), "PackedSequence", "gru_forward"),
    ]
    for m, args, words, op in cases:
        with pytest.raises(Exception) as raised:
            _export(m, args, tmp_path / "r.onnx", dynamo)
        message = _message_chain(raised.value)
        assert words in message and f"fusedrnn.{op}" not in message, message


def test_eager_calls_take_the_fused_operators_after_an_export(tmp_path):
    m = _module(lambda: fusedrnn.LSTM(5, 7))
    _export(m, (torch.randn(4, 2, 5),), tmp_path / "e.onnx", True)
    from fusedrnn import _onnx

    assert not _onnx.exporting()
    x = torch.randn(4, 2, 5)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], reference.forward(m, x)[0], rtol=1e-5, atol=1e-5)
