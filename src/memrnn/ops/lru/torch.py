"""The LRU layer in batched torch ops: one GEMM, one complex `linear_scan`, one GEMM."""

from __future__ import annotations

import torch
from torch import Tensor

from memrnn.ops.scan import linear_scan


def lru_layer(
    u: Tensor, w_in: Tensor, lam: Tensor, gamma: Tensor, h0: Tensor, w_out: Tensor, d: Tensor
) -> tuple[Tensor, Tensor]:
    """(y (B, T, H), h_T (B, 2N)); see `memrnn.ops.lru.lru_layer` for the layout."""
    N = w_in.shape[0] // 2
    p = u @ w_in.T  # (B, T, 2N)
    drive = gamma * torch.complex(p[..., :N], p[..., N:])  # (B, T, N)
    decay = torch.complex(lam[0], lam[1]).reshape(1, 1, N)
    h, h_last = linear_scan(decay, drive, torch.complex(h0[:, :N], h0[:, N:]), backend="torch")
    y = torch.cat([h.real, h.imag], dim=-1) @ w_out.T + d * u
    return y, torch.cat([h_last.real, h_last.imag], dim=-1)


__all__ = ["lru_layer"]
