"""Hybrid MRU + SSM layers: persistent memory next to transient dynamics.

De Geeter, Lambrechts, Ernst, Drion, "Parallelizable memory recurrent units",
arXiv 2601.09495 (2026), https://arxiv.org/abs/2601.09495: hybrid networks of MRUs and SSMs
"are parallelizable and have transient dynamics as well as persistent memory".

Two arrangements. Parallel branches, this module: both units read the same
input and their outputs are combined,

    y_t = y^mru_t + y^ssm_t          (combine="sum")
    y_t = W [y^mru_t ; y^ssm_t] + b  (combine="concat")

and alternating layers, described by `alternating(["bmru", "lru"], n_layers)` for the model
builder. Both branches are linear scans in parallel mode, so the hybrid is too.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from memrnn.units.base import UNITS, RecurrentUnit, check_choice, check_positive_int, register_unit

COMBINES = ("sum", "concat")


class HybridState(NamedTuple):
    mru: NamedTuple  # the MRU branch's state
    ssm: NamedTuple  # the SSM branch's state


def _registry() -> dict[str, type[RecurrentUnit]]:
    # Importing the package registers every unit module (the hybrid may name any of them).
    import memrnn.units  # noqa: F401

    return UNITS


def _build_part(
    role: str,
    spec: str | RecurrentUnit,
    input_size: int,
    hidden_size: int,
    output_size: int | None,
    kwargs: dict[str, Any] | None,
    factory: dict[str, Any],
) -> RecurrentUnit:
    if isinstance(spec, RecurrentUnit):
        if kwargs:
            raise ValueError(
                f"Hybrid: `{role}_kwargs` apply to a unit name, not to a built {role} unit"
            )
        if spec.input_size != input_size:
            raise ValueError(
                f"Hybrid: the {role} unit reads {spec.input_size} features; "
                f"expected input_size={input_size}"
            )
        return spec
    units = _registry()
    if not isinstance(spec, str) or spec not in units:
        raise ValueError(
            f"Hybrid: unknown {role} unit {spec!r}; expected one of {tuple(sorted(units))}"
        )
    extra = dict(kwargs or {})
    if output_size is not None:
        extra["output_size"] = output_size
    return units[spec](input_size, hidden_size, **extra, **factory)


@register_unit("hybrid")
class Hybrid(RecurrentUnit):
    """An MRU and an SSM on the same input, outputs summed or concatenated and projected.

    Args:
        input_size: D, features of x.
        hidden_size: width of each branch.
        output_size: features of y (default: hidden_size).
        mru: the memory branch, a registered unit name or a built unit (default "bmru").
        ssm: the transient branch, a registered unit name or a built unit (default "lru").
        combine: "sum" (default) or "concat" (then a linear projection to output_size).
        mru_kwargs, ssm_kwargs: extra constructor arguments for branches given by name.
        mode: "parallel" or "recurrent"; setting it sets it on both branches. Parallel is
            available when both branches have it.
        backend: the backend of the branches' ops (default "auto"); setting it sets it on
            both branches.

    Shapes:
        x: (B, T, D) -> y: (B, T, output_size); state: HybridState(mru=..., ssm=...).

    Example:
        >>> layer = Hybrid(3, 8, mru="bmru", ssm="lru", combine="concat")
        >>> y, state = layer(torch.randn(2, 5, 3))
        >>> assert y.shape == (2, 5, 8) and isinstance(state, HybridState)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int | None = None,
        mru: str | RecurrentUnit = "bmru",
        ssm: str | RecurrentUnit = "lru",
        combine: str = "sum",
        mru_kwargs: dict[str, Any] | None = None,
        ssm_kwargs: dict[str, Any] | None = None,
        mode: str | None = None,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, output_size, None, backend)
        self.combine = check_choice("combine", combine, COMBINES, "Hybrid")
        factory = {"device": device, "dtype": dtype}
        # Summed branches must each produce y's width; concatenated ones keep their own.
        part_out = self.output_size if combine == "sum" else None
        self.mru = _build_part("mru", mru, input_size, hidden_size, part_out, mru_kwargs, factory)
        self.ssm = _build_part("ssm", ssm, input_size, hidden_size, part_out, ssm_kwargs, factory)
        if combine == "sum":
            for role, part in (("mru", self.mru), ("ssm", self.ssm)):
                if part.output_size != self.output_size:
                    raise ValueError(
                        f"Hybrid: combine='sum' needs both branches to output {self.output_size} "
                        f"features; the {role} branch outputs {part.output_size}"
                    )
            self.proj = None
        else:
            width = self.mru.output_size + self.ssm.output_size
            self.proj = nn.Linear(width, self.output_size, **factory)
        self.modes = tuple(m for m in self.mru.modes if m in self.ssm.modes)
        self.mode = self.modes[0] if mode is None else mode
        if backend != "auto":
            self.backend = backend

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        RecurrentUnit.mode.fset(self, value)
        self._set_on_parts("mode", value)

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        RecurrentUnit.backend.fset(self, value)
        self._set_on_parts("backend", value)

    def _set_on_parts(self, name: str, value: str) -> None:
        # During RecurrentUnit.__init__ the branches do not exist yet.
        for part in (self._modules.get("mru"), self._modules.get("ssm")):
            if part is not None:
                setattr(part, name, value)

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> HybridState:
        return HybridState(
            self.mru.init_state(batch_size, device=device, dtype=dtype),
            self.ssm.init_state(batch_size, device=device, dtype=dtype),
        )

    def check_state(
        self,
        state: Any,
        batch_size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> HybridState:
        if not isinstance(state, HybridState):
            raise TypeError(
                f"Hybrid: `state` must be a HybridState (from init_state or a previous call), "
                f"got {type(state).__name__}"
            )
        return HybridState(
            self.mru.check_state(state.mru, batch_size, dtype, device),
            self.ssm.check_state(state.ssm, batch_size, dtype, device),
        )

    def _combine(self, y_mru: Tensor, y_ssm: Tensor) -> Tensor:
        if self.proj is None:
            return y_mru + y_ssm
        return self.proj(torch.cat([y_mru, y_ssm], dim=-1))

    def _forward_parallel(self, x: Tensor, state: HybridState) -> tuple[Tensor, HybridState]:
        y_mru, s_mru = self.mru._forward_parallel(x, state.mru)
        y_ssm, s_ssm = self.ssm._forward_parallel(x, state.ssm)
        return self._combine(y_mru, y_ssm), HybridState(s_mru, s_ssm)

    def _forward_recurrent(self, x: Tensor, state: HybridState) -> tuple[Tensor, HybridState]:
        # Each branch runs its own recurrent forward (some have a fused sequence loop).
        y_mru, s_mru = self.mru._forward_recurrent(x, state.mru)
        y_ssm, s_ssm = self.ssm._forward_recurrent(x, state.ssm)
        return self._combine(y_mru, y_ssm), HybridState(s_mru, s_ssm)

    def _forward_lengths(
        self, x: Tensor, state: HybridState, lengths: Tensor
    ) -> tuple[Tensor, HybridState]:
        # Each branch freezes its own state past the lengths, in its own way.
        y_mru, s_mru = self.mru._forward_lengths(x, state.mru, lengths)
        y_ssm, s_ssm = self.ssm._forward_lengths(x, state.ssm, lengths)
        return self._combine(y_mru, y_ssm), HybridState(s_mru, s_ssm)

    def _step(self, x_t: Tensor, state: HybridState) -> tuple[Tensor, HybridState]:
        y_mru, s_mru = self.mru._step(x_t, state.mru)
        y_ssm, s_ssm = self.ssm._step(x_t, state.ssm)
        return self._combine(y_mru, y_ssm), HybridState(s_mru, s_ssm)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, combine={self.combine!r}"


def alternating(units: list[str] | tuple[str, ...], n_layers: int) -> list[str]:
    """Unit names per layer for an alternating stack: units[0], units[1], ..., repeated.

    Example:
        >>> assert alternating(["bmru", "lru"], 3) == ["bmru", "lru", "bmru"]
    """
    check_positive_int("n_layers", n_layers, "alternating")
    if isinstance(units, str) or not units:
        raise ValueError(
            f"alternating: `units` must be a non-empty list of unit names, got {units!r}"
        )
    registry = _registry()
    for name in units:
        if name not in registry:
            raise ValueError(
                f"alternating: unknown unit {name!r}; expected one of {tuple(sorted(registry))}"
            )
    return [units[i % len(units)] for i in range(n_layers)]


__all__ = ["COMBINES", "Hybrid", "HybridState", "alternating"]
