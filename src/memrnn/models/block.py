"""The pre-norm residual block that stacks any registered unit (SPEC §2.4).

    x <- x + Dropout(Unit(Norm(x)))
    x <- x + Dropout(GLU-MLP(Norm(x)))        (dropped with mlp=False)

The layout follows LRU/S5 stacks. The GLU-MLP is W_2 (SiLU(W_g x) ⊙ W_u x) (a SwiGLU, ours).

Args:
    d_model: width of the residual stream.
    unit: a name registered in `memrnn.units.UNITS` (a hybrid is just another unit name).
    hidden_size: the unit's state width (default d_model).
    unit_kwargs: extra constructor arguments of the unit.
    norm: "layer" (LayerNorm, default) or "rms" (RMSNorm).
    mlp: add the GLU-MLP sub-block (default True).
    mlp_ratio: its hidden width as a multiple of d_model (default 2.0).
    dropout: dropout probability on both branches (default 0.0).

Shapes: forward x (B, T, D) -> (B, T, D); step x_t (B, D) -> (B, D); the state is the unit's.

Example:
    >>> block = Block(32, "bmru")
    >>> y, state = block(torch.randn(4, 100, 32))
    >>> y_t, state = block.step(torch.randn(4, 32), state)
    >>> assert y.shape == (4, 100, 32) and y_t.shape == (4, 32)
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from memrnn.units import UNITS, RecurrentUnit


def unknown_unit_error(name: str) -> ValueError:
    close = difflib.get_close_matches(str(name), list(UNITS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown unit {name!r}{hint} Registered units: {sorted(UNITS)}")


def build_unit(
    name: str, input_size: int, hidden_size: int, output_size: int | None = None, **kwargs: Any
) -> RecurrentUnit:
    """Builds a registered unit; asks for `output_size` only from units that take it."""
    if name not in UNITS:
        raise unknown_unit_error(name)
    cls = UNITS[name]
    kwargs = {**cls.example_kwargs, **kwargs}
    if output_size is not None and "output_size" in inspect.signature(cls.__init__).parameters:
        kwargs["output_size"] = output_size
    return cls(input_size, hidden_size, **kwargs)


def make_norm(kind: str, d_model: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(d_model)
    if kind == "rms":
        return nn.RMSNorm(d_model)
    raise ValueError(f"unknown norm {kind!r}; expected one of ('layer', 'rms')")


class GLUMLP(nn.Module):
    """W_2 (SiLU(W_g x) ⊙ W_u x): a gated MLP on the last dimension."""

    def __init__(self, d_model: int, ratio: float = 2.0) -> None:
        super().__init__()
        hidden = max(1, round(d_model * ratio))
        self.gate_up = nn.Linear(d_model, 2 * hidden)
        self.down = nn.Linear(hidden, d_model)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(nn.functional.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm residual block around one recurrent unit (see the module docstring)."""

    def __init__(
        self,
        d_model: int,
        unit: str,
        hidden_size: int | None = None,
        unit_kwargs: dict[str, Any] | None = None,
        norm: str = "layer",
        mlp: bool = True,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.unit_name = unit
        self.norm1 = make_norm(norm, d_model)
        self.unit = build_unit(
            unit, d_model, hidden_size or d_model, d_model, **(unit_kwargs or {})
        )
        # Units that do not take output_size emit their hidden width; project back to d_model.
        self.proj = (
            nn.Identity()
            if self.unit.output_size == d_model
            else nn.Linear(self.unit.output_size, d_model)
        )
        self.drop = nn.Dropout(dropout)
        self.norm2 = make_norm(norm, d_model) if mlp else None
        self.mlp = GLUMLP(d_model, mlp_ratio) if mlp else None

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> NamedTuple:
        return self.unit.init_state(batch_size, device=device, dtype=dtype)

    def _mlp_branch(self, x: Tensor) -> Tensor:
        if self.mlp is None:
            return x
        return x + self.drop(self.mlp(self.norm2(x)))

    def forward(
        self, x: Tensor, state: NamedTuple | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, NamedTuple]:
        u, state = self.unit(self.norm1(x), state, lengths=lengths)  # (B, T, H)
        x = x + self.drop(self.proj(u))
        return self._mlp_branch(x), state

    def step(self, x_t: Tensor, state: NamedTuple | None = None) -> tuple[Tensor, NamedTuple]:
        u_t, state = self.unit.step(self.norm1(x_t), state)  # (B, H)
        x_t = x_t + self.drop(self.proj(u_t))
        return self._mlp_branch(x_t), state

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, unit={self.unit_name!r}"


__all__ = ["GLUMLP", "Block", "build_unit", "make_norm", "unknown_unit_error"]
