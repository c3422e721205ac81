"""Export a model with fusedrnn modules to ONNX and run it in ONNX Runtime.

A tagger built on a peephole LSTM with coupled gates (a variant torch.nn lacks)
and a GRU cell is exported with dynamic batch and length. Each recurrent layer
becomes a standard ONNX LSTM or GRU node, so any ONNX runtime runs the model.
The script checks ONNX Runtime's outputs against the PyTorch model at other
batch sizes and lengths than the one exported with.

    python examples/export_onnx.py            # needs onnx, onnxscript, onnxruntime
    python examples/export_onnx.py --torchscript
"""

import argparse
import collections
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn

import fusedrnn


class Tagger(nn.Module):
    def __init__(self, n_in=16, hidden=32, n_out=5):
        super().__init__()
        self.encoder = fusedrnn.LSTM(n_in, hidden, num_layers=2, batch_first=True, bidirectional=True,
                                     peephole=True, coupled_gates=True)
        self.refine = fusedrnn.GRUCell(2 * hidden, hidden)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x):
        y, _ = self.encoder(x)
        h = self.refine(y[:, -1])
        return self.head(h)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torchscript", action="store_true", help="the TorchScript exporter (dynamo=False)")
    p.add_argument("--out", type=Path, help="where to write the .onnx file (default: a temporary folder)")
    args = p.parse_args(argv)

    import onnx
    import onnxruntime

    torch.manual_seed(0)
    model = Tagger().eval()
    x = torch.randn(4, 12, 16)
    out = args.out or Path(tempfile.mkdtemp()) / "tagger.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.torchscript:
            torch.onnx.export(model, (x,), str(out), dynamo=False, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch", 1: "length"}})
        else:
            dims = {"x": {0: torch.export.Dim("batch"), 1: torch.export.Dim("length")}}
            torch.onnx.export(model, (x,), str(out), input_names=["x"], output_names=["y"],
                              dynamic_shapes=dims)
    nodes = collections.Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    print(f"wrote {out}: {dict(nodes)}")

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch, length in ((1, 5), (7, 30)):
        x = torch.randn(batch, length, 16)
        got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
        with torch.no_grad():
            want = model(x)
        err = (got - want).abs().max().item()
        print(f"batch {batch}, length {length}: max |onnxruntime - torch| = {err:.2e}")
        if err > 1e-5:
            raise SystemExit(f"ONNX Runtime disagrees with the model by {err:.2e}")


if __name__ == "__main__":
    main()
