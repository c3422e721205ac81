"""What ``torch.jit.script`` compiles for the modules' forward.

TorchScript compiles a forward from its source, and the eager forward of
fusedrnn.modules is Python it cannot compile (closures, the composite and ONNX
paths, reading weights by computed names). Each module's forward therefore
starts with ``if not _is_scripting()`` (torch.jit.is_scripting, which compiles
to True), which sends eager calls to the eager forward, and, compiled, runs
these functions instead: the same operators, torch.nn's input handling
(batch_first, unbatched inputs, PackedSequence, zero initial states, dropout
between layers) and its checks of sizes, dimensions and devices, in its words.
A dtype mismatch is left to the operators, whose autocast kernels cast under
autocast (which TorchScript cannot query on the CPU). TorchScript has no getattr by computed name, so a
stacked module hands over its weights as one list in registration order
(``_script_weights``, taken by ``__prepare_scriptable__``).

The autograd of the operators is C++ (csrc/torch/autograd.cpp): a scripted
module trains. What the eager forward adds beyond that (functorch transforms
through fusedrnn._composite, the ONNX nodes) is not compiled.
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor


def _needs_grad(states: List[Tensor], weights: List[Tensor]) -> bool:
    if not torch.is_grad_enabled():
        return False
    for t in states:
        if t.requires_grad:
            return True
    for w in weights:
        if w.requires_grad:
            return True
    return False


def _direction_weights(weights: List[Tensor], k: int, stride: int, bias: bool, proj: bool, peephole: bool
                       ) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor],
                                  Optional[Tensor]]:
    """(w_ih, w_hh, b_ih, b_hh, w_ch, w_hr) of layer-direction k in the flat list."""
    i = k * stride
    w_ih, w_hh = weights[i], weights[i + 1]
    i += 2
    b_ih: Optional[Tensor] = None
    b_hh: Optional[Tensor] = None
    w_hr: Optional[Tensor] = None
    w_ch: Optional[Tensor] = None
    if bias:
        b_ih, b_hh = weights[i], weights[i + 1]
        i += 2
    if proj:
        w_hr = weights[i]
        i += 1
    if peephole:
        w_ch = weights[i]
    return w_ih, w_hh, b_ih, b_hh, w_ch, w_hr


def stack(mode: str, x: Tensor, batch_sizes: Optional[Tensor], h0: Tensor, c0: Optional[Tensor],
          weights: List[Tensor], num_layers: int, bidirectional: bool, bias: bool, proj: bool, peephole: bool,
          coupled: bool, reset_after: bool, dropout: float, train: bool
          ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """The layers and directions of fusedrnn.functional's _lstm, _gru and _rnn:
    (output, h_n, c_n or None). A bidirectional layer is one operator, as there."""
    D = 2 if bidirectional else 1
    stride = 2 + (2 if bias else 0) + (1 if proj else 0) + (1 if peephole else 0)
    states = [x, h0]
    if c0 is not None:
        states.append(c0)
    training = _needs_grad(states, weights)
    h_n: List[Tensor] = []
    c_n: List[Tensor] = []
    for layer in range(num_layers):
        k = layer * D
        w_ih, w_hh, b_ih, b_hh, w_ch, w_hr = _direction_weights(weights, k, stride, bias, proj, peephole)
        if D == 2:
            w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_ch_r, w_hr_r = _direction_weights(
                weights, k + 1, stride, bias, proj, peephole)
            if c0 is not None:
                x, h, c, _, _, _, _, _, _ = torch.ops.fusedrnn.lstm_bidirectional_forward(
                    x, batch_sizes, h0[k:k + 2], c0[k:k + 2], w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, w_ih_r, w_hh_r,
                    b_ih_r, b_hh_r, w_ch_r, w_hr_r, coupled, training
                )
                c_n.append(c[0])
                c_n.append(c[1])
            elif mode == "GRU":
                x, h, _, _, _, _ = torch.ops.fusedrnn.gru_bidirectional_forward(
                    x, batch_sizes, h0[k:k + 2], w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r,
                    reset_after, training
                )
            else:
                x, h = torch.ops.fusedrnn.rnn_bidirectional_forward(
                    x, batch_sizes, h0[k:k + 2], w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r,
                    mode == "RNN_RELU"
                )
            h_n.append(h[0])
            h_n.append(h[1])
        else:
            if c0 is not None:
                x, h, c, _, _, _ = torch.ops.fusedrnn.lstm_forward(
                    x, batch_sizes, h0[k], c0[k], w_ih, w_hh, b_ih, b_hh, w_ch, w_hr, coupled, False, training
                )
                c_n.append(c)
            elif mode == "GRU":
                x, h, _, _ = torch.ops.fusedrnn.gru_forward(
                    x, batch_sizes, h0[k], w_ih, w_hh, b_ih, b_hh, reset_after, False, training
                )
            else:
                x, h = torch.ops.fusedrnn.rnn_forward(
                    x, batch_sizes, h0[k], w_ih, w_hh, b_ih, b_hh, mode == "RNN_RELU", False
                )
            h_n.append(h)
        if dropout != 0 and train and layer < num_layers - 1:
            x = torch.dropout(x, dropout, True)
    return x, torch.stack(h_n), torch.stack(c_n) if c0 is not None else None


def _check_size(h: Tensor, expected: Tuple[int, int, int], what: str) -> None:
    if h.size() != list(expected):
        raise RuntimeError("Expected {} size {}, got {}".format(what, expected, list(h.size())))


def _permute(h: Optional[Tensor], permutation: Optional[Tensor]) -> Optional[Tensor]:
    if h is None or permutation is None:
        return h
    return h.index_select(1, permutation)


def forward(mode: str, input: Tensor, batch_sizes: Optional[Tensor], sorted_indices: Optional[Tensor],
            unsorted_indices: Optional[Tensor], h0: Optional[Tensor], c0: Optional[Tensor],
            weights: List[Tensor], input_size: int, hidden_size: int, proj_size: int, num_layers: int,
            bias: bool, batch_first: bool, dropout: float, training: bool, bidirectional: bool, peephole: bool,
            coupled: bool, reset_after: bool) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """A stacked module's forward (fusedrnn.modules.RNNBase._forward) on its
    input (the data of a PackedSequence with its batch_sizes and indices) and
    initial states (both or neither of an LSTM's): (output, h_n, c_n or None)."""
    lstm = mode == "LSTM"
    name = "LSTM" if lstm else ("GRU" if mode == "GRU" else "RNN")
    D = 2 if bidirectional else 1
    real_hidden_size = proj_size if proj_size > 0 else hidden_size
    is_batched = True
    if batch_sizes is not None:
        max_batch_size = int(batch_sizes[0])
        h0 = _permute(h0, sorted_indices)
        c0 = _permute(c0, sorted_indices)
    else:
        if input.dim() != 2 and input.dim() != 3:
            tensor = " tensor" if name == "RNN" else ""
            raise ValueError("{}: Expected input to be 2D or 3D, got {}D{} instead".format(name, input.dim(), tensor))
        is_batched = input.dim() == 3
        batch_dim = 0 if batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        want = 3 if is_batched else 2
        if lstm and h0 is not None and c0 is not None:
            if h0.dim() != want or c0.dim() != want:
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError("For {} input, hx and cx should also be {}-D but got ({}-D, {}-D) tensors".format(
                    kind, want, h0.dim(), c0.dim()))
        elif h0 is not None and h0.dim() != want:
            kind = "batched 3-D" if is_batched else "unbatched 2-D"
            raise RuntimeError("For {} input, hx should also be {}-D but got {}-D tensor".format(kind, want, h0.dim()))
        if not is_batched:
            h0 = None if h0 is None else h0.unsqueeze(1)
            c0 = None if c0 is None else c0.unsqueeze(1)
        max_batch_size = input.size(0) if batch_first else input.size(1)
    expected_dim = 2 if batch_sizes is not None else 3
    if input.dim() != expected_dim:
        raise RuntimeError("input must have {} dimensions, got {}".format(expected_dim, input.dim()))
    if input.size(-1) != input_size:
        raise RuntimeError("input.size(-1) must be equal to input_size. Expected {}, got {}".format(
            input_size, input.size(-1)))
    if input.device != weights[0].device:
        raise RuntimeError("Input and parameter tensors are not at the same device, found input tensor at "
                           "{} and parameter tensor at {}".format(input.device, weights[0].device))
    if h0 is None:
        h0 = torch.zeros((), dtype=input.dtype, device=input.device).expand(
            num_layers * D, max_batch_size, real_hidden_size)
        if lstm:
            c0 = torch.zeros((), dtype=input.dtype, device=input.device).expand(
                num_layers * D, max_batch_size, hidden_size)
    _check_size(h0, (num_layers * D, max_batch_size, real_hidden_size), "hidden[0]" if lstm else "hidden")
    if c0 is not None:
        _check_size(c0, (num_layers * D, max_batch_size, hidden_size), "hidden[1]")
    for h in [h0] if c0 is None else [h0, c0]:
        if h.device != input.device:
            raise RuntimeError("Input and hidden tensors are not at the same device, found input tensor at "
                               "{} and hidden tensor at {}".format(input.device, h.device))
    if batch_sizes is None and input.size(1 if batch_first else 0) == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

    x = input.transpose(0, 1) if batch_sizes is None and batch_first else input
    output, h_n, c_n = stack(mode, x, batch_sizes, h0, c0, weights, num_layers, bidirectional, bias,
                             proj_size > 0, peephole, coupled, reset_after, dropout, training)
    if batch_sizes is not None:
        h_n = h_n if unsorted_indices is None else h_n.index_select(1, unsorted_indices)
        c_n = _permute(c_n, unsorted_indices)
        return output, h_n, c_n
    if batch_first:
        output = output.transpose(0, 1)
    if not is_batched:
        output = output.squeeze(0 if batch_first else 1)
        h_n = h_n.squeeze(1)
        c_n = None if c_n is None else c_n.squeeze(1)
    return output, h_n, c_n


def cell_states(name: str, input: Tensor, h: Optional[Tensor], c: Optional[Tensor], lstm: bool,
                input_size: int, hidden_size: int) -> Tuple[Tensor, Tensor, Tensor, bool]:
    """A cell's input and states, batched, with torch.nn's checks of dimensions
    and sizes (and ATen's, which its cells meet next): (input, h, c (h again
    for one state), batched)."""
    if input.dim() != 1 and input.dim() != 2:
        raise ValueError("{}: Expected input to be 1D or 2D, got {}D instead".format(name, input.dim()))
    states: List[Tensor] = []
    if h is not None:
        states.append(h)
    if c is not None:
        states.append(c)
    for i, s in enumerate(states):
        if s.dim() != 1 and s.dim() != 2:
            what = "hx[{}]".format(i) if lstm else "hidden"
            raise ValueError("{}: Expected {} to be 1D or 2D, got {}D instead".format(name, what, s.dim()))
    is_batched = input.dim() == 2
    if not is_batched:
        input = input.unsqueeze(0)
        states = [s.unsqueeze(0) for s in states]
    if len(states) == 0:
        zeros = torch.zeros(input.size(0), hidden_size, dtype=input.dtype, device=input.device)
        states = [zeros, zeros] if lstm else [zeros]
    if input.size(1) != input_size:
        raise RuntimeError("input has inconsistent input_size: got {} expected {}".format(input.size(1), input_size))
    for i, s in enumerate(states):
        if input.size(0) != s.size(0):
            raise RuntimeError("Input batch size {} doesn't match hidden{} batch size {}".format(
                input.size(0), i, s.size(0)))
        if s.size(1) != hidden_size:
            raise RuntimeError("hidden{} has inconsistent hidden_size: got {}, expected {}".format(
                i, s.size(1), hidden_size))
    return input, states[0], states[-1], is_batched


def cell_needs_grad(input: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                    b_hh: Optional[Tensor], w_ch: Optional[Tensor]) -> bool:
    tensors = [w_ih, w_hh]
    for t in [b_ih, b_hh, w_ch]:
        if t is not None:
            tensors.append(t)
    return _needs_grad([input, h, c], tensors)
