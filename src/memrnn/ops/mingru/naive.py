"""Ground-truth minGRU layer: the projection, then a plain loop over time.

[z_pre | h̃] = x Wᵀ + b,   z = σ(z_pre),   h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def mingru_layer(x: Tensor, weight: Tensor, bias: Tensor | None, h0: Tensor) -> Tensor:
    """h (B, T, H) for x (B, T, D), weight (2H, D), bias (2H,) or None, h0 (B, H)."""
    z_pre, candidate = F.linear(x, weight, bias).chunk(2, dim=-1)  # (B, T, H) each
    z = torch.sigmoid(z_pre)
    h, hs = h0, []
    for t in range(x.shape[1]):
        h = (1 - z[:, t]) * h + z[:, t] * candidate[:, t]
        hs.append(h)
    return torch.stack(hs, dim=1)


__all__ = ["mingru_layer"]
