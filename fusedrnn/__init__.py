"""fusedrnn: fused recurrent-network kernels for PyTorch.

Drop-in modules for torch.nn.LSTM, GRU, RNN and their cells (plus peephole and
coupled-gate LSTM and reset-before GRU), the operators under torch.ops.fusedrnn,
a plain-PyTorch reference and test helpers.
"""

from . import _ops  # loads the compiled operators and their fake kernels
from . import _flops  # their FLOP counts for torch.utils.flop_counter
from . import functional, reference, testing
from ._onnx import translation_table as onnx_translation_table
from ._ops import backend_info
from ._version import __version__
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, convert

__all__ = [
    "LSTM",
    "GRU",
    "RNN",
    "LSTMCell",
    "GRUCell",
    "RNNCell",
    "convert",
    "functional",
    "reference",
    "testing",
    "backend_info",
    "onnx_translation_table",
    "__version__",
]
