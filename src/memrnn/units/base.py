"""The contract every recurrent unit follows, and the unit registry.

A unit is an `nn.Module` with
    forward(x, state=None, lengths=None) -> (y, state)     x: (B, T, D)  -> y: (B, T, H)
    step(x_t, state)       -> (y_t, state)   x_t: (B, D)   -> y_t: (B, H)
    init_state(batch_size, device=None, dtype=None) -> State (a NamedTuple)
and, where its math allows, `mode="parallel" | "recurrent"`; every unit takes `backend="auto"`,
the implementation of its op (`memrnn.ops.dispatch.BACKENDS`). `RecurrentUnit` implements the
input and state checks, the mode switch and the step-by-step forward once, so that a unit only
writes `init_state`, `step` and (when it has one) `_forward_parallel`.

Variable lengths: `forward(x, state, lengths)` with `lengths` (B,) in [1, T] returns, for each
sequence, the state at its last valid step; outputs past a sequence's length are unspecified.
By default a recurrent step loop keeps each finished sequence's state with `torch.where`, and
any other forward (fused kernels, convolutions) runs over the segments between consecutive
distinct lengths, carrying the state and dropping the sequences that have ended: each segment
is an ordinary chunked call, which every unit is tested to compute exactly. Units that can
freeze their state by masking (the MRUs: write gate shut) override `_forward_lengths`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from memrnn.ops.dispatch import check_backend

# Parameters carrying this attribute (set to True) are excluded from weight decay.
NO_WEIGHT_DECAY = "_memrnn_no_weight_decay"

UNITS: dict[str, type[RecurrentUnit]] = {}


def register_unit(
    name: str, **example_kwargs: Any
) -> Callable[[type[RecurrentUnit]], type[RecurrentUnit]]:
    """Class decorator adding a unit to the registry read by models, tests and benchmarks.

    `example_kwargs` are the extra constructor arguments (beyond input_size, hidden_size) that
    registry-driven tests and benchmarks pass, for units with required hyperparameters.
    """

    def decorate(cls: type[RecurrentUnit]) -> type[RecurrentUnit]:
        if name in UNITS and UNITS[name] is not cls:
            raise ValueError(f"unit name {name!r} is already registered by {UNITS[name].__name__}")
        UNITS[name] = cls
        cls.registry_name = name
        cls.example_kwargs = dict(example_kwargs)
        return cls

    return decorate


def mark_no_weight_decay(*params: nn.Parameter) -> None:
    """Marks recurrence parameters (decays, thresholds, ...) that must not be weight-decayed."""
    for p in params:
        setattr(p, NO_WEIGHT_DECAY, True)


def is_no_weight_decay(param: Tensor) -> bool:
    return bool(getattr(param, NO_WEIGHT_DECAY, False))


def check_positive_int(name: str, value: Any, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: `{name}` must be a positive int, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...], owner: str) -> str:
    if value not in choices:
        raise ValueError(f"{owner}: unknown {name} {value!r}; expected one of {choices}")
    return value


def _recurrence_in_float32(method: Callable[..., Any]) -> Callable[..., Any]:
    """Under autocast, runs a unit's forward/step with autocast off and half inputs upcast.

    Mixed precision speeds up the projections around a unit, but decays, gates, thresholds and
    scan accumulation must stay in float32 (docs/units/lru.md): a bfloat16 decay of 0.999
    rounds to 1.0. Applied to `forward` and `step` of every RecurrentUnit subclass, so a unit
    called from any code, not only the training loop, keeps its recurrence in float32.
    """

    @functools.wraps(method)
    def wrapper(self: RecurrentUnit, x: Any, state: Any = None, **kwargs: Any) -> Any:
        if isinstance(x, Tensor) and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                if x.dtype in (torch.float16, torch.bfloat16):
                    x = x.float()
                return method(self, x, state, **kwargs)
        return method(self, x, state, **kwargs)

    wrapper.__recurrence_in_float32__ = True  # type: ignore[attr-defined]
    return wrapper


class RecurrentUnit(nn.Module):
    """Base class: shared checks, the mode switch, and a step-by-step forward.

    Subclasses set `modes` (the first is the default) and implement `init_state` (returning
    their State NamedTuple), `_step` (the unchecked step) and, if "parallel" is among their
    modes, `_forward_parallel`. `forward` and `step` check their arguments, then dispatch.
    """

    modes: tuple[str, ...] = ("parallel", "recurrent")
    registry_name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Subclasses that override forward or step get the same float32 guard as the base.
        for name in ("forward", "step"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "__recurrence_in_float32__", False):
                setattr(cls, name, _recurrence_in_float32(method))

    example_kwargs: dict[str, Any] = {}  # noqa: RUF012 - replaced per class by register_unit

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int | None = None,
        mode: str | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.backend = backend
        self.input_size = check_positive_int("input_size", input_size, owner)
        self.hidden_size = check_positive_int("hidden_size", hidden_size, owner)
        self.output_size = (
            hidden_size
            if output_size is None
            else check_positive_int("output_size", output_size, owner)
        )
        self._mode = self.modes[0]
        self.mode = self.modes[0] if mode is None else mode

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in self.modes:
            only = (
                f" ({type(self).__name__} is recurrent-only)"
                if self.modes == ("recurrent",)
                else ""
            )
            raise ValueError(
                f"{type(self).__name__}: unknown mode {value!r}; expected one of {self.modes}{only}"
            )
        self._mode = value

    @property
    def backend(self) -> str:
        """The backend of the unit's op: "auto", "naive", "torch", "numba" or "triton"."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = check_backend(value, type(self).__name__)

    # -- to implement -------------------------------------------------------------------------
    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> NamedTuple:
        """The state a sequence starts from, for `batch_size` sequences."""
        raise NotImplementedError

    def _forward_parallel(self, x: Tensor, state: NamedTuple) -> tuple[Tensor, NamedTuple]:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def _param_dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    def _param_device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def _check_dtype(self, x: Tensor, name: str) -> None:
        """x's dtype must be one of the parameters' floating dtypes (outside autocast)."""
        if torch.is_autocast_enabled(x.device.type):
            return
        dtypes = {p.dtype for p in self.parameters() if p.is_floating_point()}
        if dtypes and x.dtype not in dtypes:
            expected = ", ".join(sorted(str(d) for d in dtypes))
            raise TypeError(
                f"{type(self).__name__}: `{name}` has dtype {x.dtype} but the parameters are "
                f"{expected}; convert one of them (module.to({x.dtype}) or {name}.to(...))"
            )

    def check_input(self, x: Any, name: str = "x") -> Tensor:
        """x must be a floating (B, T, input_size) tensor."""
        owner = type(self).__name__
        if isinstance(x, PackedSequence):
            raise TypeError(
                f"{owner}: `{name}` is a PackedSequence; pad it with "
                "torch.nn.utils.rnn.pad_packed_sequence(x, batch_first=True), which returns "
                "(padded, lengths), and call forward(padded, lengths=lengths)"
            )
        if not isinstance(x, Tensor):
            raise TypeError(f"{owner}: `{name}` must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"{owner}: `{name}` must have shape (B, T, {self.input_size}); got {tuple(x.shape)}"
            )
        if x.shape[1] == 0:
            raise ValueError(f"{owner}: `{name}` has T = 0 time steps; expected T >= 1")
        if not x.is_floating_point():
            raise TypeError(f"{owner}: `{name}` must be floating point, got {x.dtype}")
        self._check_dtype(x, name)
        return x

    def check_step_input(self, x_t: Any, name: str = "x_t") -> Tensor:
        """x_t must be a floating (B, input_size) tensor."""
        owner = type(self).__name__
        if not isinstance(x_t, Tensor):
            raise TypeError(f"{owner}: `{name}` must be a torch.Tensor, got {type(x_t).__name__}")
        if x_t.dim() != 2 or x_t.shape[-1] != self.input_size:
            raise ValueError(
                f"{owner}: `{name}` must have shape (B, {self.input_size}); got {tuple(x_t.shape)}"
            )
        if not x_t.is_floating_point():
            raise TypeError(f"{owner}: `{name}` must be floating point, got {x_t.dtype}")
        self._check_dtype(x_t, name)
        return x_t

    def check_state(
        self,
        state: Any,
        batch_size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> NamedTuple:
        """state must be this unit's State NamedTuple with the shapes init_state gives, and,
        when given, the dtypes init_state gives for input dtype `dtype` and `device`."""
        owner = type(self).__name__
        expected = self.init_state(batch_size, device="meta", dtype=dtype)
        if not isinstance(state, type(expected)):
            raise TypeError(
                f"{owner}: `state` must be a {type(expected).__name__} (from init_state or a "
                f"previous call), got {type(state).__name__}"
            )
        for field, ref, got in zip(expected._fields, expected, state, strict=True):
            ref_shape = getattr(ref, "shape", None)
            got_shape = getattr(got, "shape", None)
            if ref_shape != got_shape:
                got_str = None if got_shape is None else tuple(got_shape)
                ref_str = None if ref_shape is None else tuple(ref_shape)
                raise ValueError(f"{owner}: state.{field} has shape {got_str}; expected {ref_str}")
            if not isinstance(got, Tensor):
                continue
            if dtype is not None and got.dtype != ref.dtype:
                raise ValueError(
                    f"{owner}: `state`.{field} has dtype {got.dtype}; expected {ref.dtype} for "
                    f"{dtype} inputs (init_state(..., dtype={dtype}) or a previous call)"
                )
            if device is not None and got.device != device:
                raise ValueError(
                    f"{owner}: `state`.{field} is on {got.device} but the input is on {device}; "
                    "move one of them"
                )
        return state

    def check_lengths(self, lengths: Any, x: Tensor) -> Tensor | None:
        """`lengths` must be None or a (B,) integer tensor with values in [1, T].

        Returns it as int64 on x's device, or None when every sequence has all T steps.
        """
        owner = type(self).__name__
        if lengths is None:
            return None
        B, T = x.shape[:2]
        if (
            not isinstance(lengths, Tensor)
            or lengths.shape != (B,)
            or lengths.is_floating_point()
            or lengths.is_complex()
            or lengths.dtype == torch.bool
        ):
            got = tuple(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
            raise ValueError(f"{owner}: `lengths` must be a ({B},) integer tensor, got {got}")
        lengths = lengths.to(device=x.device, dtype=torch.long)
        if bool((lengths < 1).any()) or bool((lengths > T).any()):
            raise ValueError(
                f"{owner}: `lengths` must lie in [1, {T}] (T = x.shape[1]), got "
                f"min {int(lengths.min())}, max {int(lengths.max())}"
            )
        return None if bool((lengths == T).all()) else lengths

    @_recurrence_in_float32
    def forward(
        self, x: Tensor, state: NamedTuple | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, NamedTuple]:
        """Runs the unit over a sequence in its current mode.

        Args:
            x: (B, T, input_size) inputs.
            state: the state to start from (None: `init_state`).
            lengths: (B,) integer valid length of each sequence, in [1, T] (None: all T).
                Outputs past a sequence's length are unspecified; the returned state is the
                state at its last valid step, in every mode.

        Returns:
            y (B, T, output_size) and the final state.
        """
        x = self.check_input(x)
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        else:
            state = self.check_state(state, x.shape[0], dtype=x.dtype, device=x.device)
        lengths = self.check_lengths(lengths, x)
        if lengths is not None:
            return self._forward_lengths(x, state, lengths)
        # An empty batch (B = 0) takes the step loop: it does no work, and the parallel
        # kernels divide work by B.
        if self.mode == "parallel" and x.shape[0] > 0:
            return self._forward_parallel(x, state)
        return self._forward_recurrent(x, state)

    # -- variable lengths ---------------------------------------------------------------------
    def _last_step_only(self) -> bool:
        """Whether forward returns only the last step's output, (B, 1, H)."""
        return False

    def _forward_lengths(
        self, x: Tensor, state: NamedTuple, lengths: Tensor
    ) -> tuple[Tensor, NamedTuple]:
        """forward with some sequences shorter than T (`lengths` checked, not all T)."""
        plain_loop = type(self)._forward_recurrent is RecurrentUnit._forward_recurrent
        if self.mode == "recurrent" and plain_loop:
            ys = []
            for t, x_t in enumerate(x.unbind(1)):
                y_t, new = self._step(x_t, state)
                state = where_state(t < lengths, new, state)
                ys.append(y_t)
            y = torch.stack(ys, dim=1)  # (B, T, H)
            return (last_valid(y, lengths) if self._last_step_only() else y), state
        return self._forward_segments(x, state, lengths)

    def _forward_segments(
        self, x: Tensor, state: NamedTuple, lengths: Tensor
    ) -> tuple[Tensor, NamedTuple]:
        """Runs forward over [0, l1), [l1, l2), ... (the sorted distinct lengths) with the
        state carried, each segment on the sequences not yet ended; padded outputs are 0."""
        B = x.shape[0]
        pieces, last, start = [], None, 0
        for end in sorted(set(lengths.tolist())):
            rows = torch.nonzero(lengths > start).squeeze(1)  # sequences still running
            y_seg, new = self.forward(x[rows, start:end], index_state(state, rows))
            state = scatter_state(state, rows, new)
            if self._last_step_only():
                # Keep the output of the sequences that end in this segment.
                ending = (lengths[rows] == end).view(-1, 1, 1)
                full = y_seg.new_zeros(B, *y_seg.shape[1:]).index_copy(0, rows, y_seg)
                mask = torch.zeros(B, 1, 1, dtype=torch.bool, device=x.device)
                mask[rows] = ending
                last = full if last is None else torch.where(mask, full, last)
            else:
                pieces.append(y_seg.new_zeros(B, *y_seg.shape[1:]).index_copy(0, rows, y_seg))
            start = end
        if self._last_step_only():
            return last, state
        y = torch.cat(pieces, dim=1)  # (B, max(lengths), H)
        if y.shape[1] < x.shape[1]:
            y = torch.cat([y, y.new_zeros(B, x.shape[1] - y.shape[1], *y.shape[2:])], dim=1)
        return y, state

    def _forward_recurrent(self, x: Tensor, state: NamedTuple) -> tuple[Tensor, NamedTuple]:
        ys = []
        for x_t in x.unbind(1):
            y_t, state = self._step(x_t, state)
            ys.append(y_t)
        return torch.stack(ys, dim=1), state

    def _step(self, x_t: Tensor, state: NamedTuple) -> tuple[Tensor, NamedTuple]:
        """The unchecked step; `step` checks its arguments and calls this."""
        raise NotImplementedError

    @_recurrence_in_float32
    def step(self, x_t: Tensor, state: NamedTuple | None = None) -> tuple[Tensor, NamedTuple]:
        """One step: x_t (B, input_size) and a state -> (y_t (B, output_size), new state)."""
        x_t = self.check_step_input(x_t)
        if state is None:
            state = self.init_state(x_t.shape[0], device=x_t.device, dtype=x_t.dtype)
        else:
            state = self.check_state(state, x_t.shape[0], dtype=x_t.dtype, device=x_t.device)
        return self._step(x_t, state)

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"output_size={self.output_size}, mode={self.mode!r}, backend={self.backend!r}"
        )


def set_backend(model: nn.Module, backend: str) -> None:
    """Sets `backend` on every recurrent unit inside `model` (itself included)."""
    check_backend(backend, "set_backend")
    for module in model.modules():
        if isinstance(module, RecurrentUnit):
            module.backend = backend


def _map_state(fn: Callable[..., Tensor], *states: Any) -> Any:
    """Applies fn leafwise to (nested) NamedTuple states of tensors."""
    first = states[0]
    if isinstance(first, Tensor):
        return fn(*states)
    return type(first)(*(_map_state(fn, *parts) for parts in zip(*states, strict=True)))


def where_state(keep: Tensor, new: Any, old: Any) -> Any:
    """Per sequence, `new` where keep (B,) is True, else `old` (nested states of (B, ...))."""

    def pick(n: Tensor, o: Tensor) -> Tensor:
        return torch.where(keep.view(-1, *([1] * (n.dim() - 1))), n, o)

    return _map_state(pick, new, old)


def index_state(state: Any, rows: Tensor) -> Any:
    """The states of the sequences `rows`."""
    return _map_state(lambda t: t[rows], state)


def scatter_state(state: Any, rows: Tensor, new: Any) -> Any:
    """`state` with the sequences `rows` replaced by `new` (out of place, differentiable)."""
    return _map_state(lambda t, n: t.index_copy(0, rows, n.to(t.dtype)), state, new)


def last_valid(y: Tensor, lengths: Tensor) -> Tensor:
    """The output at each sequence's last valid step: (B, T, H) -> (B, 1, H)."""
    index = (lengths - 1).view(-1, 1, *([1] * (y.dim() - 2))).expand(-1, 1, *y.shape[2:])
    return y.gather(1, index)


__all__ = [
    "NO_WEIGHT_DECAY",
    "UNITS",
    "RecurrentUnit",
    "check_choice",
    "check_positive_int",
    "is_no_weight_decay",
    "mark_no_weight_decay",
    "register_unit",
    "index_state",
    "last_valid",
    "scatter_state",
    "set_backend",
    "where_state",
]
