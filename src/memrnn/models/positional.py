"""Positional codes appended to a network's inputs, computed from the step index t = 0, 1, ...

A recurrent unit whose gates see only the current input cannot tell step 1 from step 50: a
BMRU's write gate z_t = H(|c_t| - beta_t) depends on x_t alone, so its first layer cannot
"write at the start and hold" or sample a pixel at a chosen position. Appending a code p_t of
the step index to the input gives every gate that information. Three codes:

    "sinusoidal"  p_t = [sin(w_k t), cos(w_k t)]_k,  w_k = base^(-2k/P),  k = 0 .. P/2 - 1
    "learned"     p_t = E[t], a (max_len, P) table initialised with the sinusoidal code;
                  positions t >= max_len raise a ValueError
    "start"       p_t = [t == 0]: one channel, 1 at the first step only

The first two see positions at test time that they never saw in training when a model runs
longer sequences than it was trained on (their values at t = 10^5 are new to the network);
the start flag is 0 at every step after the first, so it generalises to any length.

Args:
    kind: "sinusoidal", "learned" or "start".
    size: P, channels of the sinusoidal and learned codes (even; the start flag has 1).
    max_len: rows of the learned table (default 4096).
    base: the longest sinusoidal period is about 2 pi base^(1 - 2/P) steps (default 10000).

Shapes: positions (B, T) int64 -> codes (B, T, P).

Example:
    >>> code = PositionalCode("sinusoidal", 16)
    >>> p = code(torch.arange(100).expand(4, 100), torch.float32)
    >>> assert p.shape == (4, 100, 16) and code.size == 16
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

POSITIONAL_KINDS = ("none", "sinusoidal", "learned", "start")


def sinusoidal_code(positions: Tensor, size: int, dtype: torch.dtype, base: float = 1e4) -> Tensor:
    """[sin(w_k t), cos(w_k t)] for positions t (...,) -> (..., size); size must be even."""
    k = torch.arange(size // 2, device=positions.device, dtype=dtype)
    freqs = base ** (-2.0 * k / size)  # (P/2,)
    # Elementwise from the integer position, so a step at t gives bit for bit what a whole
    # sequence gives at t (parallel and step outputs agree exactly).
    angles = positions.to(dtype).unsqueeze(-1) * freqs  # (..., P/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class PositionalCode(nn.Module):
    """p_t for step indices t; see the module docstring."""

    def __init__(self, kind: str, size: int = 16, max_len: int = 4096, base: float = 1e4) -> None:
        super().__init__()
        if kind not in POSITIONAL_KINDS[1:]:
            raise ValueError(
                f"PositionalCode: unknown positional {kind!r}; expected one of "
                f"{POSITIONAL_KINDS[1:]}"
            )
        if kind != "start" and (size < 2 or size % 2):
            raise ValueError(
                f"PositionalCode: `positional_size` must be an even int >= 2, got {size!r}"
            )
        self.kind = kind
        self.base = base
        self.max_len = max_len
        self.size = 1 if kind == "start" else size
        if kind == "learned":
            table = sinusoidal_code(torch.arange(max_len), size, torch.get_default_dtype(), base)
            self.table = nn.Parameter(table)  # (max_len, P)

    def forward(self, positions: Tensor, dtype: torch.dtype) -> Tensor:
        """positions (B, T) int64 -> (B, T, P) codes in `dtype`."""
        if self.kind == "start":
            return (positions == 0).to(dtype).unsqueeze(-1)
        if self.kind == "sinusoidal":
            return sinusoidal_code(positions, self.size, dtype, self.base)
        last = int(positions.max())
        if last >= self.max_len:
            raise ValueError(
                f"PositionalCode: step {last} is beyond the learned table's "
                f"`positional_max_len` = {self.max_len}; raise positional_max_len or use "
                "positional='sinusoidal' or 'start'"
            )
        return self.table[positions].to(dtype)

    def extra_repr(self) -> str:
        extra = f", max_len={self.max_len}" if self.kind == "learned" else ""
        return f"kind={self.kind!r}, size={self.size}{extra}"


__all__ = ["POSITIONAL_KINDS", "PositionalCode", "sinusoidal_code"]
