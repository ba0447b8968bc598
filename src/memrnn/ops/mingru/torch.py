"""The minGRU layer in batched torch ops: one GEMM, the gates, one linear scan (any device)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from memrnn.ops.scan import linear_scan


def mingru_layer(x: Tensor, weight: Tensor, bias: Tensor | None, h0: Tensor) -> Tensor:
    """h (B, T, H): the scan h_t = a_t h_{t−1} + b_t with a = 1 − z, b = z ⊙ h̃."""
    z_pre, candidate = F.linear(x, weight, bias).chunk(2, dim=-1)
    z = torch.sigmoid(z_pre)
    h, _ = linear_scan(1 - z, z * candidate, h0, backend="torch")
    return h


__all__ = ["mingru_layer"]
