"""The pre-norm residual block that stacks any registered unit.

    x̂ <- [Conv(Norm(x)), p]                  conv and positional code p optional
    u <- Unit(x̂)
    x <- x + γ ⊙ Dropout(σ(W_g x̂ + b_g) ⊙ u)   output gate and residual scale γ optional
    x <- x + Dropout(GLU-MLP(Norm(x)))        (dropped with mlp=False)

The layout follows LRU/S5 stacks. The GLU-MLP is W_2 (SiLU(W_g x) ⊙ W_u x) (a SwiGLU, ours).
The options follow the networks of the MRU papers' lab: an output gate whose bias starts at 4
(σ(4) ≈ 0.98, so the gate starts open and learns where to close), a learnable per-channel
residual scale γ (starts at 1), and a causal depthwise convolution over the last k normalised
inputs, whose last k - 1 inputs are carried in the block state so that `step` and chunked calls
equal one call over the whole sequence.

Args:
    d_model: width of the residual stream.
    unit: a name registered in `memrnn.units.UNITS` (a hybrid is just another unit name).
    hidden_size: the unit's state width (default d_model).
    unit_kwargs: extra constructor arguments of the unit.
    norm: "layer" (LayerNorm, default) or "rms" (RMSNorm).
    mlp: add the GLU-MLP sub-block (default True).
    mlp_ratio: its hidden width as a multiple of d_model (default 2.0).
    dropout: dropout probability on both branches (default 0.0).
    extra_input: channels P of a code appended to the unit's input (default 0, none).
    output_gate: gate the unit's output with σ(W_g x̂ + b_g), b_g = 4 at start (default False).
    residual_scale: scale the unit branch by a learned per-channel γ (default False).
    conv_kernel: k of the causal depthwise convolution before the unit (default 0, off).

Shapes: forward x (B, T, D), p (B, T, P) -> (B, T, D); step x_t (B, D), p_t (B, P) -> (B, D).
The state is the unit's, or `BlockState(unit, conv)` with conv (B, k - 1, D) when k > 0.

Example:
    >>> block = Block(32, "bmru", output_gate=True, conv_kernel=4)
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
from memrnn.units.base import mark_no_weight_decay


def unknown_unit_error(name: str) -> ValueError:
    close = difflib.get_close_matches(str(name), list(UNITS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown unit {name!r}{hint} Registered units: {sorted(UNITS)}")


def build_unit(
    name: str, input_size: int, hidden_size: int, output_size: int | None = None, **kwargs: Any
) -> RecurrentUnit:
    """Builds a registered unit; asks for `output_size` only from units that take it.

    The registry's `example_kwargs` (small values for tests and benchmarks) are not used here:
    a unit with required hyperparameters (the LMU's order and theta) gets them from `kwargs`.
    """
    if name not in UNITS:
        raise unknown_unit_error(name)
    cls = UNITS[name]
    params = inspect.signature(cls.__init__).parameters
    if output_size is not None and "output_size" in params:
        kwargs["output_size"] = output_size
    missing = [
        key
        for key, param in list(params.items())[3:]
        if param.default is inspect.Parameter.empty
        and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
        and key not in kwargs
    ]
    if missing:
        raise ValueError(
            f"unit {name!r} needs {', '.join(missing)} in its unit_kwargs (e.g. "
            f"{cls.example_kwargs or {k: '...' for k in missing}})"
        )
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


class BlockState(NamedTuple):
    """unit: the unit's state; conv: (B, k - 1, D) the last normalised inputs of the conv."""

    unit: Any
    conv: Tensor


OUTPUT_GATE_BIAS = 4.0


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
        extra_input: int = 0,
        output_gate: bool = False,
        residual_scale: bool = False,
        conv_kernel: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(conv_kernel, bool) or not isinstance(conv_kernel, int) or conv_kernel < 0:
            raise ValueError(f"Block: `conv_kernel` must be an int >= 0, got {conv_kernel!r}")
        if isinstance(extra_input, bool) or not isinstance(extra_input, int) or extra_input < 0:
            raise ValueError(f"Block: `extra_input` must be an int >= 0, got {extra_input!r}")
        self.d_model = d_model
        self.unit_name = unit
        self.extra_input = extra_input
        self.conv_kernel = conv_kernel
        self.norm1 = make_norm(norm, d_model)
        unit_in = d_model + extra_input
        self.unit = build_unit(
            unit, unit_in, hidden_size or d_model, d_model, **(unit_kwargs or {})
        )
        # Depthwise: one k-tap causal filter per channel, weight (D, 1, k) as in nn.Conv1d.
        self.conv = (
            nn.Conv1d(d_model, d_model, conv_kernel, groups=d_model) if conv_kernel else None
        )
        self.gate = nn.Linear(unit_in, self.unit.output_size) if output_gate else None
        if self.gate is not None:
            self._init_output_gate()
        # Units that do not take output_size emit their hidden width; project back to d_model.
        self.proj = (
            nn.Identity()
            if self.unit.output_size == d_model
            else nn.Linear(self.unit.output_size, d_model)
        )
        self.scale = nn.Parameter(torch.ones(d_model)) if residual_scale else None
        if self.scale is not None:
            # Weight decay would pull γ, and with it the whole unit branch, towards zero.
            mark_no_weight_decay(self.scale)
        self.drop = nn.Dropout(dropout)
        self.norm2 = make_norm(norm, d_model) if mlp else None
        self.mlp = GLUMLP(d_model, mlp_ratio) if mlp else None

    @torch.no_grad()
    def _init_output_gate(self) -> None:
        # b_g = 4: σ(4) ≈ 0.98, the gate starts open (the lab's initialisation).
        self.gate.bias.fill_(OUTPUT_GATE_BIAS)

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Any:
        unit_state = self.unit.init_state(batch_size, device=device, dtype=dtype)
        if self.conv is None:
            return unit_state
        ref = self.conv.weight
        conv = torch.zeros(
            batch_size,
            self.conv_kernel - 1,
            self.d_model,
            device=ref.device if device is None else device,
            dtype=ref.dtype if dtype is None else dtype,
        )
        return BlockState(unit_state, conv)

    def _split(self, state: Any, batch: int, like: Tensor) -> tuple[Any, Tensor | None]:
        """(unit state, conv buffer (B, k - 1, D) or None) of a block state (None: fresh)."""
        if self.conv is None:
            return state, None
        if state is None:
            # A fresh unit state is the unit's own business (its dtype, its checks, autocast).
            shape = (batch, self.conv_kernel - 1, self.d_model)
            return None, torch.zeros(shape, device=like.device, dtype=like.dtype)
        return state.unit, state.conv

    def _join(self, unit_state: Any, conv: Tensor | None) -> Any:
        return unit_state if conv is None else BlockState(unit_state, conv)

    def _check_code(self, p: Tensor | None, name: str) -> None:
        if (p is None) != (self.extra_input == 0):
            raise ValueError(
                f"Block: built with extra_input={self.extra_input}; "
                f"`{name}` must be {'given' if self.extra_input else 'None'}"
            )

    def _unit_input(self, x_hat: Tensor, p: Tensor | None) -> Tensor:
        return x_hat if p is None else torch.cat([x_hat, p.to(x_hat.dtype)], dim=-1)

    def _unit_branch(self, u: Tensor, x_in: Tensor) -> Tensor:
        if self.gate is not None:
            u = torch.sigmoid(self.gate(x_in)) * u
        u = self.drop(self.proj(u))
        return u if self.scale is None else u * self.scale

    def _mlp_branch(self, x: Tensor) -> Tensor:
        if self.mlp is None:
            return x
        return x + self.drop(self.mlp(self.norm2(x)))

    def forward(
        self,
        x: Tensor,
        state: Any = None,
        p: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, Any]:
        """x (B, T, D), code p (B, T, P) -> (B, T, D); with `lengths` (B,) the returned state
        (unit and conv buffer) is the one after each sequence's last valid step."""
        self._check_code(p, "p")
        if x.dim() == 3 and x.shape[1] == 0:
            raise ValueError("Block: `x` has T = 0 time steps; expected T >= 1")
        unit_state, buf = self._split(state, x.shape[0], x)
        x_hat = self.norm1(x)  # (B, T, D)
        if buf is not None:
            full = torch.cat([buf.to(x_hat.dtype), x_hat], dim=1)  # (B, k - 1 + T, D)
            x_hat = nn.functional.conv1d(
                full.transpose(1, 2), self.conv.weight, self.conv.bias, groups=self.d_model
            ).transpose(1, 2)
            buf = self._last_inputs(full, x.shape[1] if lengths is None else lengths)
        x_in = self._unit_input(x_hat, p)  # (B, T, D + P)
        u, unit_state = self.unit(x_in, unit_state, lengths=lengths)  # (B, T, H)
        x = x + self._unit_branch(u, x_in)
        return self._mlp_branch(x), self._join(unit_state, buf)

    def _last_inputs(self, full: Tensor, ends: int | Tensor) -> Tensor:
        """The k - 1 inputs before each sequence's end from full (B, k - 1 + T, D)."""
        k1 = self.conv_kernel - 1
        if isinstance(ends, int):
            return full[:, ends : ends + k1]
        B, _, D = full.shape
        index = ends.view(B, 1) + torch.arange(k1, device=full.device).view(1, k1)  # (B, k - 1)
        return full.gather(1, index.unsqueeze(-1).expand(B, k1, D))

    def step(self, x_t: Tensor, state: Any = None, p_t: Tensor | None = None) -> tuple[Tensor, Any]:
        self._check_code(p_t, "p_t")
        unit_state, buf = self._split(state, x_t.shape[0], x_t)
        x_hat = self.norm1(x_t)  # (B, D)
        if buf is not None:
            window = torch.cat([buf.to(x_hat.dtype), x_hat.unsqueeze(1)], dim=1)  # (B, k, D)
            weight = self.conv.weight.squeeze(1).transpose(0, 1)  # (k, D)
            x_hat = (window * weight).sum(1) + self.conv.bias
            buf = window[:, 1:]
        x_in = self._unit_input(x_hat, p_t)  # (B, D + P)
        u_t, unit_state = self.unit.step(x_in, unit_state)  # (B, H)
        x_t = x_t + self._unit_branch(u_t, x_in)
        return self._mlp_branch(x_t), self._join(unit_state, buf)

    def extra_repr(self) -> str:
        options = [f"d_model={self.d_model}", f"unit={self.unit_name!r}"]
        if self.extra_input:
            options.append(f"extra_input={self.extra_input}")
        if self.conv_kernel:
            options.append(f"conv_kernel={self.conv_kernel}")
        return ", ".join(options)


__all__ = ["GLUMLP", "Block", "BlockState", "build_unit", "make_norm", "unknown_unit_error"]
