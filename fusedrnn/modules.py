"""Modules that drop in for torch.nn.LSTM, GRU, RNN and their cells.

They copy the ``torch.nn`` contracts: constructor arguments, parameter names,
registration order, shapes and initialisation, forward signatures and return
structure, unbatched inputs, PackedSequence, dropout between layers, and the
error messages. Keyword-only arguments select the variants ``torch.nn`` lacks:
``peephole`` and ``coupled_gates`` (LSTM, LSTMCell), ``reset_after`` (GRU,
GRUCell). Parameters are read at every forward and nothing is cached, so
``functional_call``, DDP and FSDP see the module as they see ``torch.nn``'s.
"""

import copy
import functools
import math
import numbers
import warnings
from typing import Any, List, Optional, Tuple, overload

import torch
from torch import Tensor, nn
from torch.nn.modules.module import _WrappedHook
from torch.nn.parameter import Parameter
from torch.nn.utils.rnn import PackedSequence

from . import _script
from . import functional as F
from ._ops import ops

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "convert"]

# torch.jit.is_scripting, which TorchScript compiles to True: each forward tests
# it first, and the global name saves two attribute lookups of every eager call.
_is_scripting = torch.jit.is_scripting

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_NAME = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}


def _packed_batch(batch_sizes: Tensor):
    """batch_sizes[0]; under torch.compile an operator returning a data-dependent
    size, which fullgraph=True (or capture_dynamic_output_shape_ops) keeps in the
    graph and Dynamo's default breaks the graph at."""
    if torch.compiler.is_compiling():
        return ops.packed_batch_size(batch_sizes)
    return int(batch_sizes[0])


def _flag(name: str, value) -> bool:
    """A variant switch, checked as torch.nn checks ``bias`` and ``batch_first``:
    a None or a string would otherwise select a variant silently."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    return value


def _variants(**flags):
    """The variant flags (name: (value, default)) that differ from their
    defaults, as keywords for RNNBase.__init__: a call with too many positional
    arguments then gets torch.nn's words, which count no keyword-only ones."""
    return {name: value for name, (value, default) in flags.items() if value is not default}


# The attributes of a stacked module that decide which weights it has, in the
# order of RNNBase._structure_now.
_STRUCTURE = ("num_layers", "bidirectional", "bias", "proj_size", "peephole", "coupled_gates")


def _permute(hx, permutation, lstm: bool):
    """hx's batch reordered, as torch.nn's permute_hidden: an LSTM's (h, c) as
    a tuple or list, GRU's and RNN's one tensor (anything else fails as there)."""
    if permutation is None:
        return hx
    if lstm and isinstance(hx, (tuple, list)):
        return tuple(h.index_select(1, permutation) for h in hx)
    return hx.index_select(1, permutation)


class _FlatWeights(list):
    """What a module's ``_flat_weights`` returns: a list whose item assignment
    (``m._flat_weights[i] = w``, as weight-drop wrappers write it) assigns the
    whole list to the module, since torch.nn's forward runs on what its list
    holds."""

    __slots__ = ("_module",)

    def __init__(self, module, weights):
        super().__init__(weights)
        self._module = module

    def __setitem__(self, index, value):
        super().__setitem__(index, value)
        self._module._flat_weights = list(self)


class RNNBase(nn.Module):
    """Shared parts of LSTM, GRU and RNN, following torch.nn.RNNBase."""

    # Constants of the compiled module, as torch.nn.RNNBase's: TorchScript then
    # refuses to set them on it, since its weights were made for these values.
    __constants__ = ["mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                     "bidirectional", "proj_size", "peephole", "coupled_gates", "reset_after"]
    __jit_unused_properties__ = ["all_weights", "_flat_weights"]

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        peephole: bool = False,
        coupled_gates: bool = False,
        reset_after: bool = True,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.peephole = _flag("peephole", peephole)
        self.coupled_gates = _flag("coupled_gates", coupled_gates)
        self.reset_after = _flag("reset_after", reset_after)
        num_directions = 2 if bidirectional else 1

        if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError(
                "dropout should be a number in range [0, 1] "
                "representing the probability of an element being "
                "zeroed"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last "
                "recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and "
                f"num_layers={num_layers}",
                stacklevel=3,
            )
        if not isinstance(bias, bool):
            raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
        if not isinstance(input_size, int):
            raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
        if input_size <= 0:
            raise ValueError("input_size must be greater than zero")
        if not isinstance(hidden_size, int):
            raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        if mode not in _GATES:
            raise ValueError("Unrecognized RNN mode: " + mode)
        if (peephole or coupled_gates) and mode != "LSTM":
            raise ValueError("peephole and coupled_gates are only supported for LSTM")
        if not reset_after and mode != "GRU":
            raise ValueError("reset_after is only supported for GRU")

        gate_size = _GATES[mode] * hidden_size
        if self.coupled_gates:
            gate_size = 3 * hidden_size
        real_hidden_size = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names: List[str] = []
        self._all_weights: List[List[str]] = []
        self._structure = self._structure_now()
        for layer in range(num_layers):
            for direction in range(num_directions):
                layer_input_size = input_size if layer == 0 else real_hidden_size * num_directions
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                params = [
                    ("weight_ih", (gate_size, layer_input_size)),
                    ("weight_hh", (gate_size, real_hidden_size)),
                ]
                if bias:
                    params += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                if proj_size > 0:
                    params += [("weight_hr", (proj_size, hidden_size))]
                if self.peephole:
                    params += [("weight_ch", ((2 if self.coupled_gates else 3) * hidden_size,))]
                names = []
                for base, shape in params:
                    setattr(self, base + suffix, Parameter(torch.empty(shape, **factory_kwargs)))
                    names.append(base + suffix)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """No-op, for compatibility: fusedrnn's kernels read the parameters as they are."""

    @property
    def all_weights(self) -> List[List[Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    @property
    def _flat_weights(self) -> List[Optional[Tensor]]:
        get = self._weight_getter()
        return _FlatWeights(self, [get(name, None) for name in self._flat_weights_names])

    @_flat_weights.setter
    def _flat_weights(self, weights: List[Optional[Tensor]]) -> None:
        # torch.nn keeps this list and runs on it; here each item is set as the
        # attribute it names, which the next forward reads (weight-drop wrappers
        # assign the list after replacing a parameter by a plain tensor). A plain
        # tensor given for a name the module still holds as a Parameter (recurrent
        # DropConnect: the list assigned with dropout applied to weight_hh_l*, the
        # originals assigned back afterwards) cannot be set as that attribute: it
        # stands in for the parameter in the forwards, as torch.nn's list does,
        # until a weight is replaced or the module is converted (.to(), .double()).
        weights = list(weights)
        if len(weights) != len(self._flat_weights_names):
            raise ValueError(
                f"_flat_weights: expected {len(self._flat_weights_names)} tensors, got {len(weights)}"
            )
        stand_ins = {}
        for name, w in zip(self._flat_weights_names, weights):
            if getattr(self, name, None) is w:
                continue
            if (isinstance(w, Tensor) and not isinstance(w, Parameter)
                    and isinstance(self._parameters.get(name), Parameter)):
                stand_ins[name] = w
            else:
                setattr(self, name, w)
        if stand_ins:
            held = [getattr(self, name, None) for name in self._flat_weights_names]
            self.__dict__["_flat_weight_stand_ins_"] = (stand_ins, held)
        else:
            self.__dict__.pop("_flat_weight_stand_ins_", None)

    def _flat_weight_stand_ins(self):
        """The tensors standing in for parameters (see the _flat_weights setter),
        while every weight is still the one held when they were assigned, as
        torch.nn's _update_flat_weights decides; else None."""
        taken = self.__dict__.get("_flat_weight_stand_ins_")
        if taken is None:
            return None
        stand_ins, held = taken
        for name, was in zip(self._flat_weights_names, held):
            if getattr(self, name, None) is not was:
                del self.__dict__["_flat_weight_stand_ins_"]
                return None
        return stand_ins

    def _weight_getter(self):
        """get(name[, default]): the weight a forward runs on, the tensor standing in
        for it where there is one, else the attribute."""
        over = self._flat_weight_stand_ins()
        if not over:
            return functools.partial(getattr, self)
        return lambda name, *default: over[name] if name in over else getattr(self, name, *default)

    def _apply(self, fn, recurse=True):
        # torch.nn's _apply rebuilds its list from the parameters.
        self.__dict__.pop("_flat_weight_stand_ins_", None)
        return super()._apply(fn, recurse)

    def _update_flat_weights(self) -> None:
        """No-op, for compatibility: the weights are read by name at every forward."""

    def _init_flat_weights(self) -> None:
        """No-op, for compatibility (code written for torch.nn calls it after
        replacing a weight): the weights are read by name at every forward."""

    def permute_hidden(self, hx, permutation: Optional[Tensor]):
        """hx (a tensor, or LSTM's (h, c)) with its batch dimension reordered by
        ``permutation``, as torch.nn's ``permute_hidden``."""
        return _permute(hx, permutation, self.mode == "LSTM")

    def _structure_now(self):
        """The attributes that decide which weights the module has, and their shapes."""
        return (self.num_layers, self.bidirectional, self.bias, self.proj_size, self.peephole, self.coupled_gates)

    def __setstate__(self, state):
        super().__setstate__(state)
        # A module pickled without the record: its attributes as unpickled are
        # those its weights were made for.
        if "_structure" not in self.__dict__:
            self._structure = self._structure_now()

    def _check_structure(self) -> None:
        """A module whose num_layers, bidirectional, bias, proj_size, peephole or
        coupled_gates were set after construction does not have the weights they
        describe: a clear error, where torch.nn raises one of its own or runs on
        what its weight list holds."""
        built = self.__dict__.get("_structure")
        now = self._structure_now()
        if built is not None and now != built:
            changed = ", ".join(f"{n}={b!r} (now {c!r})" for n, b, c in zip(_STRUCTURE, built, now) if b != c)
            raise RuntimeError(
                f"{type(self).__name__}: its weights were made for {changed}; these attributes cannot change "
                "after construction, build a new module instead"
            )

    def _layer_weights(self, packed: bool = False):
        """Per layer and direction: (w_ih, w_hh, b_ih, b_hh[, w_ch, w_hr]).

        Only the names the module was built with are looked up (_all_weights:
        weight_ih, weight_hh, then the biases, weight_hr and weight_ch where the
        configuration has them), as torch.nn reads its list: a lookup of an
        absent name costs an AttributeError raised and caught in
        Module.__getattr__, about 1.3 us a name."""
        self._check_structure()
        get = self._weight_getter()
        lstm = self.mode == "LSTM"
        out = []
        for names in self._all_weights:
            w = [get(names[0]), get(names[1])] + [get(name, None) for name in names[2:]]
            for t in w:
                if t is None:
                    self._refuse_missing_weight(packed)
            b_ih, b_hh = (w[2], w[3]) if self.bias else (None, None)
            if not lstm:
                out.append((w[0], w[1], b_ih, b_hh))
                continue
            i = 4 if self.bias else 2
            w_hr = w[i] if self.proj_size > 0 else None
            w_ch = w[-1] if self.peephole else None
            out.append((w[0], w[1], b_ih, b_hh, w_ch, w_hr))
        return out

    def _refuse_missing_weight(self, packed: bool) -> None:
        """A weight or bias of the module's configuration set to None: torch.nn's
        error, which counts the tensors of its weight list (argument 2, or 3 with
        a PackedSequence's batch sizes before it)."""
        get = self._weight_getter()
        flat = [name for names in self._all_weights for name in names]
        k = next(k for k, name in enumerate(flat) if get(name, None) is None)
        raise TypeError(f"expected Tensor as element {k} in argument {3 if packed else 2}, but got NoneType")

    # -- the checks of torch.nn.RNNBase, same words --------------------------

    def check_input(self, input: Tensor, batch_sizes: Optional[Tensor]) -> None:
        w = self.weight_ih_l0
        if input.dtype != w.dtype and not torch.is_autocast_enabled(input.device.type):
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({w.dtype}). "
                f"Convert input: input.to({w.dtype}), or convert model: model.to({input.dtype})"
            )
        expected_input_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_input_dim:
            raise RuntimeError(f"input must have {expected_input_dim} dimensions, got {input.dim()}")
        if self.input_size != input.size(-1):
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {input.size(-1)}"
            )
        if input.device != w.device:  # ATen's words, which torch.nn meets later
            raise RuntimeError(
                "Input and parameter tensors are not at the same device, found input tensor at "
                f"{input.device} and parameter tensor at {w.device}"
            )

    def get_expected_hidden_size(self, input: Tensor, batch_sizes: Optional[Tensor]) -> Tuple[int, int, int]:
        if batch_sizes is not None:
            mini_batch = _packed_batch(batch_sizes)
        else:
            mini_batch = input.size(0) if self.batch_first else input.size(1)
        num_directions = 2 if self.bidirectional else 1
        size = self.proj_size if self.proj_size > 0 else self.hidden_size
        return (self.num_layers * num_directions, mini_batch, size)

    def check_hidden_size(self, hx: Tensor, expected, msg: str = "Expected hidden size {}, got {}") -> None:
        if torch.compiler.is_compiling():
            # Sizes may be data-dependent (packed input): the checks become runtime
            # asserts in the graph (the operators check again with the sizes).
            torch._check(hx.dim() == len(expected))
            for got, want in zip(hx.size(), expected):
                torch._check(got == want)
            return
        if hx.size() != expected:
            raise RuntimeError(msg.format(expected, list(hx.size())))

    def _check_hidden_devices(self, input: Tensor, hx) -> None:
        """ATen's RNN functions check this after torch.nn's checks; same words."""
        device = input.device
        for h in hx if isinstance(hx, (tuple, list)) else (hx,):
            if h.device != device:
                raise RuntimeError(
                    "Input and hidden tensors are not at the same device, found input tensor at "
                    f"{device} and hidden tensor at {h.device}"
                )

    def check_forward_args(self, input: Tensor, hidden: Tensor, batch_sizes: Optional[Tensor]) -> None:
        self.check_input(input, batch_sizes)
        self.check_hidden_size(hidden, self.get_expected_hidden_size(input, batch_sizes))

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        if self.peephole:
            s += ", peephole=True"
        if self.coupled_gates:
            s += ", coupled_gates=True"
        if not self.reset_after:
            s += ", reset_after=False"
        return s.format(**self.__dict__)

    # -- forward, shared by the three families -------------------------------

    def _zeros(self, input: Tensor, max_batch: int, size: int) -> Tensor:
        # One zero broadcast: autograd saves the initial state of every layer for
        # backward, and this way holds one element of storage instead of all of them.
        D = 2 if self.bidirectional else 1
        zero = torch.zeros((), dtype=input.dtype, device=input.device)
        return zero.expand(self.num_layers * D, max_batch, size)

    @torch.jit.unused
    def _forward(self, input: Any, hx: Any) -> Any:
        """The eager forward: input handling of torch.nn's forward, and
        self._run(x, hx, batch_sizes), which does the time-major work and
        returns (output, hidden)."""
        lstm = self.mode == "LSTM"
        name = _NAME[self.mode]
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        orig_input = input
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            # A trace takes the zero states' batch from the tensor, as torch.nn's does,
            # so that it runs at every batch size.
            max_batch_size = batch_sizes[0] if F._tracing() else _packed_batch(batch_sizes)
            if hx is None:
                hx = self._zeros(input, max_batch_size, real_hidden_size)
                if lstm:
                    hx = (hx, self._zeros(input, max_batch_size, self.hidden_size))
            else:
                hx = _permute(hx, sorted_indices, lstm)
            is_batched = True
        else:
            batch_sizes = None
            if input.dim() not in (2, 3):
                tensor = " tensor" if name == "RNN" else ""
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D{tensor} instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if hx is not None:
                if lstm:
                    want = 3 if is_batched else 2
                    if hx[0].dim() != want or hx[1].dim() != want:
                        kind = "batched 3-D" if is_batched else "unbatched 2-D"
                        raise RuntimeError(
                            f"For {kind} input, hx and cx should also be {want}-D but got "
                            f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                        )
                    if not is_batched:
                        hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
                else:
                    if not is_batched and hx.dim() != 2:
                        raise RuntimeError(
                            f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor"
                        )
                    if is_batched and hx.dim() != 3:
                        raise RuntimeError(
                            f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor"
                        )
                    if not is_batched:
                        hx = hx.unsqueeze(1)
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            sorted_indices = unsorted_indices = None
            if hx is None:
                hx = self._zeros(input, max_batch_size, real_hidden_size)
                if lstm:
                    hx = (hx, self._zeros(input, max_batch_size, self.hidden_size))
        if lstm:
            _check_two_states(hx, "lstm")
            if batch_sizes is not None:  # torch.nn.LSTM passes a packed call's states to ATen unchecked
                for k, h in enumerate(hx):
                    if h is None:
                        raise TypeError(f"expected Tensor as element {k} in argument 2, but got NoneType")
        self.check_forward_args(input, hx, batch_sizes)
        self._check_hidden_devices(input, hx)
        if batch_sizes is None and input.size(0 if not self.batch_first else 1) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

        x = input.transpose(0, 1) if (batch_sizes is None and self.batch_first) else input
        output, hidden = self._run(x, hx, batch_sizes)
        if batch_sizes is None and self.batch_first:
            output = output.transpose(0, 1)

        if isinstance(orig_input, PackedSequence):
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), _permute(
                hidden, unsorted_indices, lstm
            )
        if not is_batched:
            output = output.squeeze(0 if self.batch_first else 1)
            hidden = tuple(h.squeeze(1) for h in hidden) if lstm else hidden.squeeze(1)
        return output, hidden

    # -- torch.jit.script (fusedrnn/_script.py) -------------------------------

    def __prepare_scriptable__(self):
        """Called by torch.jit.script before it compiles the module: the compiled
        forward reads the weights from a list, as torch.nn's does (TorchScript
        reads no attribute by a computed name), which this takes now."""
        self._check_structure()
        weights = self._flat_weights
        missing = [n for n, w in zip(self._flat_weights_names, weights) if not isinstance(w, Tensor)]
        if missing:
            raise RuntimeError(
                f"{type(self).__name__}: torch.jit.script needs every weight as a tensor; {', '.join(missing)} "
                "is not one"
            )
        self._script_weights = weights
        return self

    def _script_forward(self, input: Tensor, batch_sizes: Optional[Tensor], sorted_indices: Optional[Tensor],
                        unsorted_indices: Optional[Tensor], h0: Optional[Tensor], c0: Optional[Tensor]
                        ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        return _script.forward(
            self.mode, input, batch_sizes, sorted_indices, unsorted_indices, h0, c0, self._script_weights,
            self.input_size, self.hidden_size, self.proj_size, self.num_layers, self.bias, self.batch_first,
            self.dropout, self.training, self.bidirectional, self.peephole, self.coupled_gates, self.reset_after,
        )

    # -- conversion ----------------------------------------------------------

    @classmethod
    def from_torch(cls, module: nn.Module):
        """The fusedrnn twin of a torch.nn module, sharing its Parameter objects
        (so weights, device, dtype, requires_grad and optimizer state carry over)."""
        if type(module) is not cls._torch_class:
            raise TypeError(f"{cls.__name__}.from_torch expects torch.nn.{cls._torch_class.__name__}, got {type(module).__name__}")
        kwargs = dict(
            num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
            dropout=module.dropout, bidirectional=module.bidirectional, device="meta",
        )
        if cls is LSTM:
            kwargs["proj_size"] = module.proj_size
        if cls is RNN:
            kwargs["nonlinearity"] = _rnn_nonlinearity(module.mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new = cls(module.input_size, module.hidden_size, **kwargs)
        _take_over(new, module)
        return new

    def to_torch(self) -> nn.Module:
        """The torch.nn twin, sharing this module's Parameter objects (and taking
        over its buffers, hooks and attributes, as from_torch does)."""
        if self.peephole or self.coupled_gates or not self.reset_after:
            raise ValueError(f"torch.nn.{self._torch_class.__name__} has no equivalent of {self.extra_repr()}")
        kwargs = dict(
            num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first, dropout=self.dropout,
            bidirectional=self.bidirectional, device="meta",
        )
        if isinstance(self, LSTM):
            kwargs["proj_size"] = self.proj_size
        if isinstance(self, RNN):
            kwargs["nonlinearity"] = _rnn_nonlinearity(self.mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = self._torch_class(self.input_size, self.hidden_size, **kwargs)
        _take_over(m, self)
        m._init_flat_weights()
        return m


class LSTM(RNNBase):
    """Drop-in for torch.nn.LSTM, with ``peephole`` and ``coupled_gates`` variants.

    ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
    peephole=False, coupled_gates=False)``. Peepholes add ``weight_ch_l{k}``
    (``_reverse``): the diagonal vectors of i, f, o (f, o when coupled), shape
    ``(3*hidden_size,)`` or ``(2*hidden_size,)``. Coupled gates use i = 1 - f
    with gate blocks f, g, o (``3*hidden_size`` rows).
    """

    _torch_class = nn.LSTM

    def __init__(self, *args, peephole: bool = False, coupled_gates: bool = False, **kwargs):
        super().__init__("LSTM", *args, **_variants(peephole=(peephole, False), coupled_gates=(coupled_gates, False)),
                         **kwargs)

    def get_expected_cell_size(self, input: Tensor, batch_sizes: Optional[Tensor]) -> Tuple[int, int, int]:
        if batch_sizes is not None:
            mini_batch = _packed_batch(batch_sizes)
        else:
            mini_batch = input.size(0) if self.batch_first else input.size(1)
        num_directions = 2 if self.bidirectional else 1
        return (self.num_layers * num_directions, mini_batch, self.hidden_size)

    def check_forward_args(self, input, hidden, batch_sizes):  # type: ignore[override]
        self.check_input(input, batch_sizes)
        self.check_hidden_size(
            hidden[0], self.get_expected_hidden_size(input, batch_sizes), "Expected hidden[0] size {}, got {}"
        )
        self.check_hidden_size(
            hidden[1], self.get_expected_cell_size(input, batch_sizes), "Expected hidden[1] size {}, got {}"
        )

    @overload
    @torch._jit_internal._overload_method
    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]: ...

    @overload
    @torch._jit_internal._overload_method
    def forward(self, input: PackedSequence, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[PackedSequence, Tuple[Tensor, Tensor]]: ...

    def forward(self, input, hx=None):
        if not _is_scripting():
            return self._forward(input, hx)
        h0: Optional[Tensor] = None
        c0: Optional[Tensor] = None
        if hx is not None:
            h0, c0 = hx
        if isinstance(input, PackedSequence):
            out, h, c = self._script_forward(input.data, input.batch_sizes, input.sorted_indices,
                                             input.unsorted_indices, h0, c0)
            assert c is not None
            return PackedSequence(out, input.batch_sizes, input.sorted_indices, input.unsorted_indices), (h, c)
        out, h, c = self._script_forward(input, None, None, None, h0, c0)
        assert c is not None
        return out, (h, c)

    def _run(self, x, hx, batch_sizes):
        out, h, c = F._lstm(
            x, hx, self._layer_weights(batch_sizes is not None), self.num_layers, self.bidirectional, batch_sizes,
            self.dropout, self.training, self.coupled_gates,
        )
        return out, (h, c)


class GRU(RNNBase):
    """Drop-in for torch.nn.GRU; ``reset_after=False`` selects Cho et al. 2014's
    placement of the reset gate (before the recurrent product)."""

    _torch_class = nn.GRU

    def __init__(self, *args, reset_after: bool = True, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **_variants(reset_after=(reset_after, True)), **kwargs)

    @overload
    @torch._jit_internal._overload_method
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]: ...

    @overload
    @torch._jit_internal._overload_method
    def forward(self, input: PackedSequence, hx: Optional[Tensor] = None) -> Tuple[PackedSequence, Tensor]: ...

    def forward(self, input, hx=None):
        if not _is_scripting():
            return self._forward(input, hx)
        if isinstance(input, PackedSequence):
            out, h, _ = self._script_forward(input.data, input.batch_sizes, input.sorted_indices,
                                             input.unsorted_indices, hx, None)
            return PackedSequence(out, input.batch_sizes, input.sorted_indices, input.unsorted_indices), h
        out, h, _ = self._script_forward(input, None, None, None, hx, None)
        return out, h

    def _run(self, x, hx, batch_sizes):
        return F._gru(
            x, hx, self._layer_weights(batch_sizes is not None), self.num_layers, self.bidirectional, batch_sizes,
            self.dropout, self.training, self.reset_after,
        )


def _rnn_nonlinearity(mode: str) -> str:
    """What torch.nn.RNN's forward runs: ``mode`` (set from ``nonlinearity`` at
    construction) decides, tanh for RNN_TANH and relu otherwise."""
    return "tanh" if mode == "RNN_TANH" else "relu"


def _check_two_states(hx, op: str) -> None:
    """ATen's check of LSTM's hidden state: a tuple of two tensors."""
    if isinstance(hx, Tensor):
        raise TypeError(f"{op}(): argument 'hx' (position 2) must be tuple of Tensors, not Tensor")
    if len(hx) != 2:
        raise RuntimeError(f"{op} expects two hidden states")


class RNN(RNNBase):
    """Drop-in for torch.nn.RNN (``nonlinearity='tanh'`` or ``'relu'``)."""

    _torch_class = nn.RNN

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(mode, *args, **kwargs)

    @overload
    @torch._jit_internal._overload_method
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]: ...

    @overload
    @torch._jit_internal._overload_method
    def forward(self, input: PackedSequence, hx: Optional[Tensor] = None) -> Tuple[PackedSequence, Tensor]: ...

    def forward(self, input, hx=None):
        if not _is_scripting():
            return self._forward(input, hx)
        if isinstance(input, PackedSequence):
            out, h, _ = self._script_forward(input.data, input.batch_sizes, input.sorted_indices,
                                             input.unsorted_indices, hx, None)
            return PackedSequence(out, input.batch_sizes, input.sorted_indices, input.unsorted_indices), h
        out, h, _ = self._script_forward(input, None, None, None, hx, None)
        return out, h

    def _run(self, x, hx, batch_sizes):
        return F._rnn(
            x, hx, self._layer_weights(batch_sizes is not None), self.num_layers, self.bidirectional, batch_sizes,
            self.dropout, self.training, _rnn_nonlinearity(self.mode),
        )


# ------------------------------------------------------------------ cells

class _CellBase(nn.Module):
    """Shared parts of the cells, following torch.nn.RNNCellBase."""

    __constants__ = ["input_size", "hidden_size", "bias"]

    def __init__(self, input_size, hidden_size, bias, num_chunks, device=None, dtype=None, peephole_chunks=0):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.weight_ih = Parameter(torch.empty((num_chunks * hidden_size, input_size), **factory_kwargs))
        self.weight_hh = Parameter(torch.empty((num_chunks * hidden_size, hidden_size), **factory_kwargs))
        if bias:
            self.bias_ih = Parameter(torch.empty(num_chunks * hidden_size, **factory_kwargs))
            self.bias_hh = Parameter(torch.empty(num_chunks * hidden_size, **factory_kwargs))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        if peephole_chunks:
            self.weight_ch = Parameter(torch.empty(peephole_chunks * hidden_size, **factory_kwargs))
        self.reset_parameters()

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if "bias" in self.__dict__ and self.bias is not True:
            s += ", bias={bias}"
        if "nonlinearity" in self.__dict__ and self.nonlinearity != "tanh":
            s += ", nonlinearity={nonlinearity}"
        if getattr(self, "peephole", False):
            s += ", peephole=True"
        if getattr(self, "coupled_gates", False):
            s += ", coupled_gates=True"
        if not getattr(self, "reset_after", True):
            s += ", reset_after=False"
        return s.format(**self.__dict__)

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def _check(self, input: Tensor, hx: Tuple[Tensor, ...]) -> None:
        """The checks of ATen's cell functions, same words."""
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}")
        w_dtype = self.weight_ih.dtype
        if input.dtype != w_dtype and not torch.is_autocast_enabled(input.device.type):
            raise RuntimeError(_product_dtypes_error(input.dtype, w_dtype, self.bias_ih is not None))
        for i, h in enumerate(hx):
            if input.size(0) != h.size(0):
                raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{i} batch size {h.size(0)}")
            if h.size(1) != self.hidden_size:
                raise RuntimeError(
                    f"hidden{i} has inconsistent hidden_size: got {h.size(1)}, expected {self.hidden_size}"
                )
        if hx[0].dtype != w_dtype and not torch.is_autocast_enabled(input.device.type):  # ATen: in hx W_hh^T
            raise RuntimeError(_product_dtypes_error(hx[0].dtype, w_dtype, self.bias_hh is not None))

    @classmethod
    def from_torch(cls, module: nn.Module):
        """The fusedrnn twin of a torch.nn cell, sharing its Parameter objects."""
        if type(module) is not cls._torch_class:
            raise TypeError(f"{cls.__name__}.from_torch expects torch.nn.{cls._torch_class.__name__}, got {type(module).__name__}")
        kwargs = {"nonlinearity": module.nonlinearity} if cls is RNNCell else {}
        new = cls(module.input_size, module.hidden_size, module.bias, device="meta", **kwargs)
        _take_over(new, module)
        return new

    def to_torch(self) -> nn.Module:
        """The torch.nn twin, sharing this module's Parameter objects (and taking
        over its buffers, hooks and attributes, as from_torch does)."""
        if getattr(self, "peephole", False) or getattr(self, "coupled_gates", False) or not getattr(self, "reset_after", True):
            raise ValueError(f"torch.nn.{self._torch_class.__name__} has no equivalent of {self.extra_repr()}")
        kwargs = {"nonlinearity": self.nonlinearity} if isinstance(self, RNNCell) else {}
        m = self._torch_class(self.input_size, self.hidden_size, self.bias, device="meta", **kwargs)
        _take_over(m, self)
        return m


def _product_dtypes_error(a, b, bias: bool = True) -> str:
    """ATen's words for a product of two dtypes: addmm's (its scalar type names)
    where the cell has biases, mm's (its C++ type names) where it has none."""
    if not bias:
        return f"expected m1 and m2 to have the same dtype, but got: {_dtype_name(a, True)} != {_dtype_name(b, True)}"
    return f"mat1 and mat2 must have the same dtype, but got {_dtype_name(a)} and {_dtype_name(b)}"


# dtype: (ATen's scalar type name, its C++ type name).
_DTYPE_NAMES = {
    torch.float32: ("Float", "float"), torch.float64: ("Double", "double"), torch.float16: ("Half", "c10::Half"),
    torch.bfloat16: ("BFloat16", "c10::BFloat16"), torch.int64: ("Long", "long int"), torch.int32: ("Int", "int"),
    torch.int16: ("Short", "short int"), torch.int8: ("Char", "signed char"), torch.uint8: ("Byte", "unsigned char"),
    torch.bool: ("Bool", "bool"), torch.complex64: ("ComplexFloat", "c10::complex<float>"),
    torch.complex128: ("ComplexDouble", "c10::complex<double>"),
}


def _dtype_name(dtype, cpp: bool = False) -> str:
    names = _DTYPE_NAMES.get(dtype)
    return names[cpp] if names else str(dtype).replace("torch.", "")


class LSTMCell(_CellBase):
    """Drop-in for torch.nn.LSTMCell, with ``peephole`` and ``coupled_gates``."""

    _torch_class = nn.LSTMCell
    __constants__ = _CellBase.__constants__ + ["peephole", "coupled_gates"]

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, peephole=False, coupled_gates=False):
        self.peephole = _flag("peephole", peephole)
        self.coupled_gates = _flag("coupled_gates", coupled_gates)
        super().__init__(
            input_size, hidden_size, bias, 3 if coupled_gates else 4, device, dtype,
            peephole_chunks=(2 if coupled_gates else 3) if peephole else 0,
        )

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        if not _is_scripting():
            return self._eager_forward(input, hx)
        h0: Optional[Tensor] = None
        c0: Optional[Tensor] = None
        if hx is not None:
            h0, c0 = hx
        x, h, c, is_batched = _script.cell_states(
            "LSTMCell", input, h0, c0, True, self.input_size, self.hidden_size)
        w_ch: Optional[Tensor] = None
        if hasattr(self, "weight_ch"):
            w_ch = self.weight_ch
        training = _script.cell_needs_grad(x, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, w_ch)
        h, c, _ = torch.ops.fusedrnn.lstm_cell_forward(
            x, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, w_ch, self.coupled_gates, training)
        if not is_batched:
            return h.squeeze(0), c.squeeze(0)
        return h, c

    @torch.jit.unused
    def _eager_forward(self, input: Any, hx: Any) -> Any:
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros)
        else:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0)) if not is_batched else hx
        _check_two_states(hx, "lstm_cell")
        h, c = _checked_step(
            self, input, hx, F.lstm_cell, input, hx[0], hx[1], self.weight_ih, self.weight_hh,
            self.bias_ih, self.bias_hh, getattr(self, "weight_ch", None) if self.peephole else None,
            self.coupled_gates,
        )
        if not is_batched:
            return h.squeeze(0), c.squeeze(0)
        return h, c


class GRUCell(_CellBase):
    """Drop-in for torch.nn.GRUCell; ``reset_after=False`` is Cho et al. 2014."""

    _torch_class = nn.GRUCell
    __constants__ = _CellBase.__constants__ + ["reset_after"]

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, reset_after=True):
        self.reset_after = _flag("reset_after", reset_after)
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if not _is_scripting():
            return self._eager_forward(input, hx)
        x, h, _, is_batched = _script.cell_states(
            "GRUCell", input, hx, None, False, self.input_size, self.hidden_size)
        training = _script.cell_needs_grad(x, h, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, None)
        h = torch.ops.fusedrnn.gru_cell_forward(
            x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.reset_after, training)[0]
        return h if is_batched else h.squeeze(0)

    @torch.jit.unused
    def _eager_forward(self, input: Any, hx: Any) -> Any:
        return _single_state_cell(self, "GRUCell", input, hx, lambda x, h: F.gru_cell(
            x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.reset_after))


class RNNCell(_CellBase):
    """Drop-in for torch.nn.RNNCell (``nonlinearity='tanh'`` or ``'relu'``)."""

    _torch_class = nn.RNNCell

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 1, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if not _is_scripting():
            return self._eager_forward(input, hx)
        if self.nonlinearity != "tanh" and self.nonlinearity != "relu":
            raise RuntimeError("Unknown nonlinearity: {}".format(self.nonlinearity))
        x, h, _, is_batched = _script.cell_states(
            "RNNCell", input, hx, None, False, self.input_size, self.hidden_size)
        h = torch.ops.fusedrnn.rnn_cell_forward(
            x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.nonlinearity == "relu")
        return h if is_batched else h.squeeze(0)

    @torch.jit.unused
    def _eager_forward(self, input: Any, hx: Any) -> Any:
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return _single_state_cell(self, "RNNCell", input, hx, lambda x, h: F.rnn_cell(
            x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.nonlinearity))


def _single_state_cell(cell, name, input, hx, step):
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    if hx is not None and hx.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
    is_batched = input.dim() == 2
    if not is_batched:
        input = input.unsqueeze(0)
    if hx is None:
        hx = torch.zeros(input.size(0), cell.hidden_size, dtype=input.dtype, device=input.device)
    else:
        hx = hx.unsqueeze(0) if not is_batched else hx
    h = _checked_step(cell, input, (hx,), step, input, hx)
    return h if is_batched else h.squeeze(0)


def _checked_step(cell, input, hx, step, *args):
    """step(*args), whose operator checks its arguments, with torch.nn's words for
    what it rejects. cell._check runs only once the operator has raised: a
    cell runs once per time step, and run first its checks took 13% of a call
    at N=1, H=64. Under torch.compile, which traces the operator without
    running it, they run first."""
    if torch.compiler.is_compiling():
        cell._check(input, hx)
        return step(*args)
    try:
        return step(*args)
    except Exception:
        try:
            cell._check(input, hx)
        except RuntimeError as nn_error:
            raise nn_error from None
        raise


# ---------------------------------------------------------------- convert

_TWINS = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell, nn.RNNCell: RNNCell}


# What a module holds besides its configuration. The twin takes copies of the
# first group and the hook dictionaries themselves, so that a handle taken
# before the conversion still removes its hook.
_MODULE_STATE = ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules")
_MODULE_HOOKS = (
    "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook", "_forward_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)
# The variants' configuration, which a torch.nn twin has no use for.
_VARIANT_FLAGS = ("peephole", "coupled_gates", "reset_after")


def _take_over(new: nn.Module, module: nn.Module) -> None:
    """Gives the twin `new` the module's parameters (the same objects), buffers,
    children, hooks and training mode, and the instance attributes it lacks: a
    parameter that pruning, the hook-based weight_norm and spectral_norm or a
    weight-drop wrapper replaced by a tensor which a forward pre-hook recomputes
    keeps working, and so do the user's hooks and attributes."""
    for key in _MODULE_STATE:
        new.__dict__[key] = copy.copy(module.__dict__[key])
    for key in _MODULE_HOOKS:
        if key in module.__dict__:
            new.__dict__[key] = module.__dict__[key]
    # Load pre-hooks hold a weak reference to their module: rebound to the twin.
    new._load_state_dict_pre_hooks = type(module._load_state_dict_pre_hooks)(
        (k, _WrappedHook(h.hook, new) if isinstance(h, _WrappedHook) and h.with_module else h)
        for k, h in module._load_state_dict_pre_hooks.items()
    )
    for key, value in module.__dict__.items():
        # Not what the class defines (forward, the compiled call of
        # Module.compile(): methods of the old module), nor the weight lists of
        # torch.nn's RNNBase (_flat_weights*) and of torch.jit.script
        # (_script_weights): the twin reads the weights by name; nor the
        # structure a fusedrnn module checks its attributes against.
        if (key not in new.__dict__ and not hasattr(type(new), key) and not key.startswith("_flat_weight")
                and key not in _VARIANT_FLAGS and key not in ("_script_weights", "_structure")):
            new.__dict__[key] = value
    # Not train(), which would also set the mode of the children taken over.
    new.training = module.training


def convert(model: nn.Module) -> nn.Module:
    """Replaces, recursively and in place, every torch.nn LSTM, GRU, RNN,
    LSTMCell, GRUCell and RNNCell in ``model`` with its fusedrnn twin and
    returns the model.

    The twins share the original Parameter objects, so weights, device,
    dtype, requires_grad and an optimizer built before the conversion all keep
    working; training mode, buffers, hooks (pruning, the hook-based weight_norm
    and spectral_norm) and other attributes are taken over. A model that is itself one of those
    modules is returned as its twin. A module held in several places (tied,
    or listed twice) becomes one twin held in all of them.
    """
    return _convert(model, {})


def _convert(model: nn.Module, done: dict) -> nn.Module:
    """convert(), with `done` mapping id(module) to what it became (every
    reference to a module, not only the first that named_children yields)."""
    if id(model) in done:
        return done[id(model)]
    twin = _TWINS.get(type(model))
    new_model = twin.from_torch(model) if twin is not None else model
    done[id(model)] = new_model
    if twin is None:
        for name, child in list(model._modules.items()):
            if child is None:
                continue
            new = _convert(child, done)
            if new is not child:
                setattr(model, name, new)
    return new_model
